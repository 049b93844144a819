//! The approvals API on the admin listener (issue 14), for named admin identities
//! (`[[admins]]`, bearer key checked by its SHA-256):
//!
//! - `GET /v1/approvals?status=pending|approved|denied|expired&limit=N&offset=M` (viewer and
//!   up; scoped identities see their proxies only): newest first, without headers and body;
//!   `more` says whether a next page exists.
//! - `GET /v1/approvals/{id}`: the approval with the forwarded headers (credentials removed)
//!   and the body as held (`body` when UTF-8, else `body_base64`).
//! - `POST /v1/approvals/{id}/approve` and `/deny` with `{"reason": "...", "totp": "123456"}`
//!   (approver or operator, within its `proxies`; the current RFC 6238 code when the identity
//!   has a `totp_secret`, each code once).
//!
//! The shared `server.admin_token` may read approvals (it is an operator) but never decide
//! them: a decision names a person. An agent key is not an admin key (`check` refuses one
//! configured as both), so it gets 401.
// Control plane: the admin thread.
#![allow(clippy::disallowed_types)]
use super::admin::Reply;
use super::admin_auth::{Who, identify};
use super::control::Control;
use crate::config::Role;
use crate::http::head::{BodyKind, RequestHead};
use crate::http::io::read_append;
use crate::net::agent_io::AgentIo;
use crate::state::{Approval, Cmd, DecideError, Status};
use base64::Engine as _;
use std::time::Duration;

/// Largest decision body (a reason and a code).
const MAX_BODY: usize = 16 * 1024;
/// Largest `limit`.
const MAX_LIMIT: usize = 1000;
/// Largest `offset` (paging through a long queue).
const MAX_OFFSET: usize = 100_000;

/// Handles `/v1/approvals…`; reads a request body when one is announced.
pub async fn handle(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    control: &Control,
) -> Reply {
    let method = head.method.get(buf).to_vec();
    let target = head.target.get(buf).to_vec();
    let (path, query) = match memchr::memchr(b'?', &target) {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (&target[..], &b""[..]),
    };
    let cfg = control.current();
    let who = match identify(head, buf, &cfg) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(store) = control.state.get() else {
        return Reply::error(
            404,
            "approvals_disabled",
            "no [approvals] section in the running config (it needs a restart to start)",
        );
    };
    let rest = &path[b"/v1/approvals".len()..];
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return Reply::error(404, "not_found", "no such admin endpoint");
    }
    let parts: Vec<&[u8]> = rest.split(|b| *b == b'/').skip(1).collect();
    match (method.as_slice(), parts.as_slice()) {
        (b"GET", []) => list(store, &who, query).await,
        (b"GET", [id]) => match valid_id(id) {
            Some(id) => show(store, &who, id).await,
            None => not_found(),
        },
        (b"POST", [id, verb @ (b"approve" | b"deny")]) => {
            let Some(id) = valid_id(id) else {
                return not_found();
            };
            let body = match read_body(s, head, buf).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            decide(store, &who, id, *verb == b"approve", &body).await
        }
        (_, [] | [_] | [_, b"approve" | b"deny"]) => Reply::error(
            405,
            "method_not_allowed",
            "this admin endpoint does not take that method",
        ),
        _ => Reply::error(404, "not_found", "no such admin endpoint"),
    }
}

fn json(status: u16, body: String) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body,
    }
}

fn not_found() -> Reply {
    Reply::error(404, "not_found", "no such approval")
}

/// Approval ids are `apr_` + 24 hex digits; anything else is no approval.
fn valid_id(id: &[u8]) -> Option<String> {
    let hex = id.strip_prefix(b"apr_")?;
    (hex.len() == 24 && hex.iter().all(u8::is_ascii_hexdigit))
        .then(|| String::from_utf8_lossy(id).into_owned())
}

async fn read_body(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, Reply> {
    read_body_max(s, head, buf, MAX_BODY).await
}

/// Reads an admin request's body (Content-Length, at most `max` bytes: larger is 413
/// `body_too_large`, unread).
pub(super) async fn read_body_max(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, Reply> {
    let n = match head.body {
        BodyKind::None => return Ok(Vec::new()),
        BodyKind::Length(n) => usize::try_from(n).unwrap_or(usize::MAX),
        _ => {
            return Err(Reply::error(
                400,
                "bad_request",
                "send the body with Content-Length",
            ));
        }
    };
    if n > max {
        return Err(Reply::error(
            413,
            "body_too_large",
            &format!("the request body is larger than {max} bytes"),
        ));
    }
    let start = head.head_len;
    let deadline = crate::util::clock::now() + Duration::from_secs(10);
    while buf.len() < start + n {
        match read_append(s, buf, start + n - buf.len(), deadline).await {
            Ok(k) if k > 0 => {}
            _ => {
                return Err(Reply::error(400, "bad_request", "the body ended early"));
            }
        }
    }
    Ok(buf[start..start + n].to_vec())
}

fn summary(a: &Approval, full: Option<&[u8]>) -> serde_json::Value {
    let ts = |us: u64| crate::observe::audit::record::format_ts(us);
    let mut v = serde_json::json!({
        "id": a.id,
        "status": a.status.as_str(),
        "agent": a.agent,
        "proxy": a.proxy,
        "method": a.method,
        "path": a.path,
        "query": a.query,
        "rule": a.rule,
        "body_sha256": a.body_sha256,
        "body_len": a.body_len,
        "created": ts(a.created_us),
        "expires": ts(a.expires_us),
        "decided": a.decided_us.map(ts),
        "approver": a.approver,
        "reason": a.reason,
        "executed": a.executed_us.map(ts),
        "executed_by": a.executed_by,
    });
    if let Some(body) = full {
        v["headers"] = a
            .headers
            .iter()
            .map(|(n, val)| serde_json::json!([n, val]))
            .collect();
        match std::str::from_utf8(body) {
            Ok(t) => v["body"] = t.into(),
            Err(_) => {
                v["body_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(body)
                    .into()
            }
        }
    }
    v
}

fn unavailable(e: impl std::fmt::Display) -> Reply {
    tracing::warn!(error = %e, "admin: the state store failed");
    Reply::error(503, "state_unavailable", "the state store is unavailable")
}

async fn list(store: &crate::state::Store, who: &Who<'_>, query: &[u8]) -> Reply {
    let mut status = None;
    let mut limit = 100;
    let mut offset = 0;
    for (k, v) in crate::http::query::pairs(query) {
        match (k, std::str::from_utf8(v).ok()) {
            (b"status", Some(v)) if !v.is_empty() => match Status::parse(v) {
                Some(s) => status = Some(s),
                None => {
                    return Reply::error(
                        400,
                        "bad_request",
                        "status: expected pending, approved, denied or expired",
                    );
                }
            },
            (b"status", Some("")) => {}
            (b"limit", Some(v)) => match v.parse::<usize>() {
                Ok(n @ 1..=MAX_LIMIT) => limit = n,
                _ => {
                    return Reply::error(
                        400,
                        "bad_request",
                        &format!("limit: expected 1 to {MAX_LIMIT}"),
                    );
                }
            },
            // paging (the console's): skip the first `offset` of the list
            (b"offset", Some(v)) => match v.parse::<usize>() {
                Ok(n @ 0..=MAX_OFFSET) => offset = n,
                _ => {
                    return Reply::error(
                        400,
                        "bad_request",
                        &format!("offset: expected 0 to {MAX_OFFSET}"),
                    );
                }
            },
            _ => {
                return Reply::error(
                    400,
                    "bad_request",
                    "unknown parameter (expected status, limit, offset)",
                );
            }
        }
    }
    let (reply, rx) = flume::bounded(1);
    // one more than the page tells whether there is a next page; a scoped identity's list is
    // filtered after the store's limit is taken: ask for the most
    let want = offset + limit + 1;
    let ask = if who.proxies.is_some() {
        want.max(MAX_LIMIT * 10)
    } else {
        want
    };
    if !store.send(Cmd::List {
        status,
        limit: ask,
        reply,
    }) {
        return unavailable("the store queue is full");
    }
    match rx.recv_async().await {
        Ok(Ok(all)) => {
            let mut visible = all.iter().filter(|a| who.may_see(&a.proxy)).skip(offset);
            let items: Vec<_> = visible
                .by_ref()
                .take(limit)
                .map(|a| summary(a, None))
                .collect();
            let more = visible.next().is_some();
            json(
                200,
                serde_json::json!({ "approvals": items, "more": more }).to_string(),
            )
        }
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}

async fn fetch(
    store: &crate::state::Store,
    id: &str,
) -> Result<Option<(Approval, Vec<u8>)>, Reply> {
    let (reply, rx) = flume::bounded(1);
    if !store.send(Cmd::Get {
        id: id.to_string(),
        reply,
    }) {
        return Err(unavailable("the store queue is full"));
    }
    match rx.recv_async().await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(e) => Err(unavailable(e)),
    }
}

fn out_of_scope() -> Reply {
    Reply::error(
        403,
        "out_of_scope",
        "this approval is for a proxy outside your admin identity's proxies",
    )
}

async fn show(store: &crate::state::Store, who: &Who<'_>, id: String) -> Reply {
    match fetch(store, &id).await {
        Err(r) => r,
        Ok(None) => not_found(),
        Ok(Some((a, _))) if !who.may_see(&a.proxy) => out_of_scope(),
        Ok(Some((a, body))) => json(
            200,
            serde_json::json!({ "approval": summary(&a, Some(&body)) }).to_string(),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    totp: Option<String>,
}

async fn decide(
    store: &crate::state::Store,
    who: &Who<'_>,
    id: String,
    approve: bool,
    body: &[u8],
) -> Reply {
    let Some(admin) = who.admin else {
        return Reply::error(
            403,
            "named_admin_required",
            "approvals are decided by a named [[admins]] identity, never the shared admin_token",
        );
    };
    if who.role < Role::Approver {
        return Reply::error(
            403,
            "forbidden_role",
            "deciding approvals needs the approver or operator role",
        );
    }
    let d: Decision = if body.iter().all(u8::is_ascii_whitespace) {
        Decision {
            reason: None,
            totp: None,
        }
    } else {
        match serde_json::from_slice(body) {
            Ok(d) => d,
            Err(e) => {
                return Reply::error(
                    400,
                    "bad_request",
                    &format!("expected {{\"reason\": \"...\", \"totp\": \"123456\"}}: {e}"),
                );
            }
        }
    };
    if d.reason.as_ref().is_some_and(|r| r.chars().count() > 1024) {
        return Reply::error(400, "bad_request", "reason: at most 1024 characters");
    }
    // scope before anything else is revealed or spent
    match fetch(store, &id).await {
        Err(r) => return r,
        Ok(None) => return not_found(),
        Ok(Some((a, _))) if !who.may_see(&a.proxy) => return out_of_scope(),
        // an identity never decides a call made under its own name
        Ok(Some((a, _))) if a.agent.as_deref() == Some(who.id.as_str()) => {
            return Reply::error(
                403,
                "self_approval",
                "an approval is never decided by the identity that made the call",
            );
        }
        Ok(Some(_)) => {}
    }
    let totp_step = match &admin.totp {
        None => None,
        Some(secret) => {
            let Some(code) = d.totp.as_deref() else {
                return Reply::error(
                    403,
                    "totp_required",
                    "this identity decides with its current TOTP code (\"totp\")",
                );
            };
            let now = crate::util::clock::unix_now().as_secs();
            match crate::util::totp::verify(secret.expose(), code, now) {
                Some(step) => Some(step),
                None => {
                    tracing::warn!(admin = %who.id, approval = %id, "admin: wrong TOTP code");
                    return Reply::error(403, "totp_invalid", "the TOTP code is not valid now");
                }
            }
        }
    };
    let (reply, rx) = flume::bounded(1);
    if !store.send(Cmd::Decide {
        id,
        approve,
        approver: who.id.clone(),
        reason: d.reason,
        totp_step,
        reply,
    }) {
        return unavailable("the store queue is full");
    }
    match rx.recv_async().await {
        Ok(Ok(a)) => json(
            200,
            serde_json::json!({ "approval": summary(&a, None) }).to_string(),
        ),
        Ok(Err(DecideError::NotFound)) => not_found(),
        Ok(Err(DecideError::NotPending(st))) => json(
            409,
            serde_json::json!({"error": {"code": "not_pending",
                "message": format!("the approval is {} already", st.as_str()),
                "status": st.as_str()}})
            .to_string(),
        ),
        Ok(Err(DecideError::TotpReplayed)) => {
            tracing::warn!(admin = %who.id, "admin: a TOTP code was replayed");
            Reply::error(
                403,
                "totp_replayed",
                "this TOTP code was already used; wait for the next one",
            )
        }
        Ok(Err(DecideError::Unavailable(e))) => unavailable(e),
        Err(e) => unavailable(e),
    }
}
