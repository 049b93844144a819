//! Stage 7b, for calls an `approve` rule decided: the call is held for a human decision.
//!
//! The request (head fields, credentials removed, and the body, already read whole and
//! scanned) becomes a durable approval record in the state store, bound to the agent, method,
//! canonical path, query and body digest; the agent's connection waits up to the rule's
//! `hold` on the approval's waker (a one-slot channel the store thread fires). Approved →
//! the call goes on (it is claimed first: one execution per approval); denied → 403
//! `approval_denied`; no decision within the hold → 403 `approval_pending` (with the id, so an
//! identical retry finds it). The worker never blocks: every store round trip is a channel
//! send and an awaited reply.
//!
//! While it waits, a held call:
//! - keeps only what it needs to go on: the read buffer shrunk to the head (and any pipelined
//!   bytes), the body shrunk to its length; the upstream and output buffers are given back
//!   (`park`), and grow again on release;
//! - watches the agent's connection (plain TCP): an EOF or a reset ends the hold at once (the
//!   approval stays in the store for a retry; the record says `client_closed`, 499), and bytes
//!   that arrive (a pipelined request) are kept in the read buffer for the next call;
//! - once approved and claimed, waits under `[audit] fsync = "always"` until the decision's
//!   audit record is on disk before the call goes upstream (`decision_durable`).
use super::route::Route;
use super::{Scratch, Stop, Worker};
use crate::config::Proxy;
use crate::error::Refusal;
use crate::http::io::{IoFail, read_append};
use crate::identity::Caller;
use crate::net::agent_io::AgentIo;
use crate::observe::audit::OnError;
use crate::observe::audit::record::ApprovalNote;
use crate::observe::call::CallLog;
use crate::state::{Claim, HoldAnswer, HoldRequest, Outcome};
use crate::util::clock;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Holds the call until its approval is decided (or the hold is over).
#[allow(clippy::too_many_arguments)]
pub(super) async fn hold(
    w: &Worker,
    proxy: &Proxy,
    client: &mut AgentIo,
    s: &mut Scratch,
    route: &Route,
    caller: &Caller<'_>,
    log: &mut CallLog<'_>,
    durable_timeout: Duration,
) -> Result<(), Stop> {
    let Some(store) = w.state() else {
        tracing::error!(proxy = %proxy.name, "an approve rule matched but no approval store runs");
        return Err(Refusal::ApprovalUnavailable.into());
    };
    let h = proxy.hold_of(log.rule);
    let src = &s.rbuf;
    let method = s.head.method.get(src);
    let rest = route.rel_path(&s.path);
    let query = route.query_str(s.head.target.get(src));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &s.body);
    let mut body_sha = [0u8; 32];
    body_sha.copy_from_slice(digest.as_ref());
    let binding = crate::state::binding(caller.id(), &proxy.name, method, rest, query, &body_sha);
    let headers = s
        .head
        .headers
        .iter()
        .filter(|f| {
            let name = f.name.get(src).to_ascii_lowercase();
            !proxy.request_filter.contains(&name)
        })
        .map(|f| (lossy(f.name.get(src)), lossy(f.value.get(src))))
        .collect();
    let req = HoldRequest {
        binding,
        agent: caller.id().map(str::to_string),
        proxy: proxy.name.clone(),
        method: lossy(method),
        path: rest.to_string(),
        query: lossy(query),
        headers,
        body: s.body.clone(),
        body_sha256: crate::util::hex::encode(&body_sha),
        rule: log.rule,
        ttl: h.ttl,
        request_id: log.id.as_str().to_string(),
    };
    let retry_after = h.hold.as_secs().clamp(5, 60);
    let answer = store.hold(req).await;
    let note = |log: &mut CallLog<'_>, id: &str| {
        log.approval = Some(Arc::new(ApprovalNote {
            id: id.to_string(),
            ..ApprovalNote::default()
        }));
    };
    let pending = |id: String| Refusal::ApprovalPending { id, retry_after };
    let (id, rx) = match answer {
        HoldAnswer::Execute(id) => {
            note(log, &id);
            return decision_durable(w, durable_timeout).await;
        }
        HoldAnswer::Pending(id, rx) => (id, rx),
        HoldAnswer::Denied(id, reason) => {
            note(log, &id);
            return Err(Refusal::ApprovalDenied { id, reason }.into());
        }
        HoldAnswer::Expired(id) => {
            note(log, &id);
            return Err(Refusal::ApprovalExpired { id }.into());
        }
        HoldAnswer::QueueFull => return Err(Refusal::ApprovalQueueFull.into()),
        HoldAnswer::Unavailable => return Err(Refusal::ApprovalUnavailable.into()),
    };
    note(log, &id);
    if h.hold == Duration::ZERO {
        return Err(pending(id).into());
    }
    park(s);
    let held = HeldGauge::new(&w.metrics);
    let waited = wait(client, s, &rx, clock::now() + h.hold).await;
    drop(held);
    let outcome = match waited {
        Waited::Over => return Err(pending(id).into()),
        Waited::StoreGone => return Err(Refusal::ApprovalUnavailable.into()),
        Waited::AgentGone => {
            w.metrics.held_abandoned();
            let gone = Refusal::ClientClosed;
            log.status = gone.status();
            log.code = Some(gone.code());
            tracing::info!(request_id = log.id.as_str(), approval = %id,
                "the agent closed its connection while its call was held; the approval stays");
            return Err(Stop::Quiet);
        }
        Waited::Decided(o) => o,
    };
    let lost = match outcome {
        Outcome::Approved => match store.claim(id.clone(), log.id.as_str().to_string()).await {
            Claim::Granted => return decision_durable(w, durable_timeout).await,
            Claim::Lost(o) => o,
            Claim::Unavailable => return Err(Refusal::ApprovalUnavailable.into()),
        },
        o => o,
    };
    Err(match lost {
        Outcome::Denied(reason) => Refusal::ApprovalDenied { id, reason },
        // expired, or executed by an identical call first (single use)
        Outcome::Expired | Outcome::Approved => Refusal::ApprovalExpired { id },
    }
    .into())
}

/// Gives back what a held call does not need while it waits: the upstream and output buffers
/// (empty at this point; a pooled scratch set may carry large ones from earlier calls), and the
/// slack of the read buffer (which keeps the head and any pipelined bytes: the head's offsets
/// point into it) and of the body. They grow again as the released call needs them.
fn park(s: &mut Scratch) {
    s.ubuf = Vec::new();
    s.out = Vec::new();
    s.rbuf.shrink_to_fit();
    s.body.shrink_to_fit();
    s.path.shrink_to_fit();
}

/// Counts the call in `portcullis_approvals_held_calls` while it lives.
struct HeldGauge<'a>(&'a crate::observe::metrics::WorkerMetrics);

impl<'a> HeldGauge<'a> {
    fn new(m: &'a crate::observe::metrics::WorkerMetrics) -> Self {
        m.held(true);
        HeldGauge(m)
    }
}

impl Drop for HeldGauge<'_> {
    fn drop(&mut self) {
        self.0.held(false);
    }
}

/// How a held call's wait ended.
enum Waited {
    Decided(Outcome),
    /// The hold is over without a decision.
    Over,
    /// The store thread is gone.
    StoreGone,
    /// The agent closed or reset its connection.
    AgentGone,
}

/// Waits for the approval's outcome until `deadline`, watching a plain TCP agent connection
/// for EOF or a reset meanwhile. Readiness is awaited without a buffer (a `PollAdd`, dropped
/// harmlessly when the decision comes first); only once the socket is readable are its bytes
/// read, appended to `s.rbuf` after the held request (a pipelined request stays for the next
/// call; the watch then stops). TLS connections are not watched (a readable socket may hold
/// only part of a TLS record, and a TLS read cannot be abandoned safely): their hold ends with
/// a decision or the deadline.
async fn wait(
    client: &mut AgentIo,
    s: &mut Scratch,
    rx: &flume::Receiver<Outcome>,
    deadline: Instant,
) -> Waited {
    let mut watching = matches!(client, AgentIo::Plain(_));
    loop {
        let now = clock::now();
        if now >= deadline {
            return Waited::Over;
        }
        let decided = async {
            match rx.recv_async().await {
                Ok(o) => Waited::Decided(o),
                Err(_) => Waited::StoreGone,
            }
        };
        let readable = match (&*client, watching) {
            (AgentIo::Plain(tcp), true) => {
                monoio::select! {
                    r = decided => return r,
                    r = tcp.readable(false) => r.is_ok(),
                    _ = monoio::time::sleep(deadline - now) => return Waited::Over,
                }
            }
            _ => {
                return match monoio::time::timeout(deadline - now, decided).await {
                    Ok(r) => r,
                    Err(_) => Waited::Over,
                };
            }
        };
        if !readable {
            return Waited::AgentGone;
        }
        // readable: EOF, a reset, or bytes (a pipelined request). The read completes at once;
        // its deadline only guards against a spurious wake-up (a timed-out read loses its
        // buffer, so it reads into its own and the connection is given up if it ever fires).
        let mut got = Vec::new();
        match read_append(
            client,
            &mut got,
            4096,
            clock::now() + Duration::from_secs(1),
        )
        .await
        {
            Ok(0) | Err(IoFail::Io) | Err(IoFail::Timeout) => return Waited::AgentGone,
            Ok(_) => {
                s.rbuf.extend_from_slice(&got);
                watching = false;
            }
        }
    }
}

/// Under `[audit] fsync = "always"`: waits until every audit record pushed so far (the
/// approval's decision among them: the store thread pushed it before it woke this call) is on
/// disk. With `on_error = "refuse"` a record that cannot be made durable refuses the call
/// (503 `audit_unavailable`, nothing sent); with `"continue"` the call goes on, logged.
async fn decision_durable(w: &Worker, timeout: Duration) -> Result<(), Stop> {
    let Some(ring) = w.audit.as_deref().filter(|r| r.fsync_always()) else {
        return Ok(());
    };
    let Some(ticket) = ring.ticket_now() else {
        return Ok(());
    };
    if ring.wait_durable(Some(ticket), timeout).await {
        return Ok(());
    }
    if ring.on_error() == OnError::Refuse {
        return Err(Refusal::AuditUnavailable.into());
    }
    tracing::warn!(
        "audit: the approval's decision record is not on disk yet; the approved call goes on (on_error = \"continue\")"
    );
    Ok(())
}
