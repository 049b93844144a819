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
use super::route::Route;
use super::{Scratch, Stop, Worker};
use crate::config::Proxy;
use crate::error::Refusal;
use crate::identity::Caller;
use crate::observe::audit::record::ApprovalNote;
use crate::observe::call::CallLog;
use crate::state::{Claim, HoldAnswer, HoldRequest, Outcome};
use std::sync::Arc;
use std::time::Duration;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Holds the call until its approval is decided (or the hold is over).
pub(super) async fn hold(
    w: &Worker,
    proxy: &Proxy,
    s: &Scratch,
    route: &Route,
    caller: &Caller<'_>,
    log: &mut CallLog<'_>,
) -> Result<(), Stop> {
    let Some(store) = w.state.as_ref() else {
        tracing::error!(proxy = %proxy.name, "an approve rule matched but no approval store runs (was [approvals] added by a reload? it needs a restart)");
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
            return Ok(());
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
    let outcome = match monoio::time::timeout(h.hold, rx.recv_async()).await {
        Err(_) => return Err(pending(id).into()),
        Ok(Err(_)) => return Err(Refusal::ApprovalUnavailable.into()),
        Ok(Ok(o)) => o,
    };
    let lost = match outcome {
        Outcome::Approved => match store.claim(id.clone(), log.id.as_str().to_string()).await {
            Claim::Granted => return Ok(()),
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
