//! `[approvals] notify`: each new pending approval is posted to a webhook (`format = "json"`,
//! or `"slack"` for an incoming-webhook text) from this thread, never from the request path:
//! the store thread hands it an event over a bounded channel (full → the event is dropped and
//! logged, the approval itself is unaffected). Each event is tried up to [`ATTEMPTS`] times
//! with doubling backoff (1 s, 2 s, 4 s, 8 s); only a 2xx answer counts as delivered.
//!
//! What is sent: the approval id, agent, proxy, method, canonical path, times and the link
//! `console_url/approvals/ID` — never the body, the query, a header or any secret.
// Control plane: its own thread, blocking HTTP and backoff sleeps.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
use super::{Approval, Notify};
use crate::net::fetch;
use std::time::Duration;

pub const ATTEMPTS: u32 = 5;
const QUEUE: usize = 1024;

/// The handle the store thread posts events through.
pub struct Notifier {
    tx: flume::Sender<serde_json::Value>,
}

impl Notifier {
    pub fn start(n: &Notify, console_url: Option<String>) -> Result<Notifier, String> {
        let url = crate::net::url::Url::parse(&n.url)?;
        let slack = n.slack;
        let (tx, rx) = flume::bounded::<serde_json::Value>(QUEUE);
        std::thread::Builder::new()
            .name("portcullis-notify".into())
            .spawn(move || {
                for ev in rx.iter() {
                    deliver(&url, slack, console_url.as_deref(), &ev);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Notifier { tx })
    }

    /// Queues the event of a new pending approval (never waits).
    pub fn pending(&self, a: &Approval) {
        let ts = crate::observe::audit::record::format_ts;
        let ev = serde_json::json!({
            "event": "approval_requested",
            "id": a.id,
            "agent": a.agent,
            "proxy": a.proxy,
            "method": a.method,
            "path": a.path,
            "created": ts(a.created_us),
            "expires": ts(a.expires_us),
        });
        if self.tx.try_send(ev).is_err() {
            tracing::warn!(approval = %a.id, "approvals: the notification queue is full; event dropped");
        }
    }
}

/// The request body for one event.
pub fn payload(slack: bool, console_url: Option<&str>, ev: &serde_json::Value) -> Vec<u8> {
    let id = ev["id"].as_str().unwrap_or("");
    let link = console_url.map(|c| format!("{c}/approvals/{id}"));
    let v = if slack {
        let s = |k: &str| ev[k].as_str().unwrap_or("-").to_string();
        let mut text = format!(
            "Approval needed: {} → {} {} {} ({id})",
            s("agent"),
            s("proxy"),
            s("method"),
            s("path")
        );
        if let Some(l) = &link {
            text.push_str(&format!(" <{l}|review>"));
        }
        serde_json::json!({ "text": text })
    } else {
        let mut v = ev.clone();
        v["link"] = link.into();
        v
    };
    v.to_string().into_bytes()
}

fn deliver(
    url: &crate::net::url::Url,
    slack: bool,
    console_url: Option<&str>,
    ev: &serde_json::Value,
) {
    let body = payload(slack, console_url, ev);
    let id = ev["id"].as_str().unwrap_or("-");
    let t = fetch::Timeouts {
        connect: Duration::from_secs(3),
        io: Duration::from_secs(5),
        total: Duration::from_secs(10),
    };
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let r = fetch::request(
            url,
            None,
            "POST",
            &[("Content-Type", b"application/json")],
            &body,
            &t,
        );
        match r {
            Ok(resp) if (200..300).contains(&resp.status) => {
                tracing::info!(approval = id, attempt, "approvals: notification delivered");
                return;
            }
            Ok(resp) => {
                tracing::warn!(
                    approval = id,
                    attempt,
                    status = resp.status,
                    "approvals: the notification endpoint refused the event"
                )
            }
            Err(e) => {
                tracing::warn!(approval = id, attempt, error = %e, "approvals: cannot deliver the notification")
            }
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(backoff);
            backoff *= 2;
        }
    }
    tracing::error!(
        approval = id,
        attempts = ATTEMPTS,
        "approvals: notification given up"
    );
}
