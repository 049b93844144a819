//! The managed-agents API on the admin listener (issue 16):
//!
//! - `GET /v1/agents` (viewer and up): the config file's agents (`source: "config"`,
//!   `read_only: true`) and the managed ones, with created / expires / last seen / revoked.
//! - `POST /v1/agents` `{"id","roles","expires_at"}` (operator): a new agent; its `pcs_` key
//!   is in the answer once, only its SHA-256 is stored.
//! - `POST /v1/agents/{id}/rotate` `{"grace":"10m"}` (operator): a new key; the old one keeps
//!   working until `grace_until` (default: not at all).
//! - `DELETE /v1/agents/{id}` (operator): revokes every key of the agent. Every worker refuses
//!   them with its next call; with `[state] redis` every replica within 250 ms.
//!
//! Each change is an audit record naming the admin (`kind: "admin"`).
// Control plane: the admin thread.
#![allow(clippy::disallowed_types)]
use super::admin::Reply;
use super::admin_auth::{self, Who};
use super::control::Control;
use crate::config::Role;
use crate::http::head::RequestHead;
use crate::net::agent_io::AgentIo;
use crate::state::{AgentError, Cmd, ManagedAgent};

/// Largest request body (an id, roles and a date).
const MAX_BODY: usize = 16 * 1024;
/// Most roles of one agent.
const MAX_ROLES: usize = 64;

fn json(status: u16, v: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: v.to_string(),
    }
}

fn ts_us(us: u64) -> serde_json::Value {
    crate::util::datetime::format_rfc3339(i64::try_from(us / 1_000_000).unwrap_or(i64::MAX)).into()
}

fn ts_s(s: i64) -> serde_json::Value {
    crate::util::datetime::format_rfc3339(s).into()
}

fn now_us() -> u64 {
    u64::try_from(crate::util::clock::unix_now().as_micros()).unwrap_or(u64::MAX)
}

fn unavailable(e: impl std::fmt::Display) -> Reply {
    tracing::warn!(error = %e, "admin: the state store failed");
    Reply::error(503, "state_unavailable", "the state store is unavailable")
}

fn not_found() -> Reply {
    Reply::error(404, "not_found", "no such agent")
}

/// Managed agent ids: as config agent ids, without `/` (they appear in the path).
fn valid_managed_id(id: &str) -> bool {
    crate::identity::valid_agent_id(id) && !id.contains('/')
}

/// Handles `/v1/agents…` (the caller matched the prefix).
pub async fn handle(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    control: &Control,
) -> Reply {
    let method = head.method.get(buf).to_vec();
    let target = head.target.get(buf).to_vec();
    let path = match memchr::memchr(b'?', &target) {
        Some(i) => &target[..i],
        None => &target[..],
    };
    let rest = &path[b"/v1/agents".len()..];
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return Reply::error(404, "not_found", "no such admin endpoint");
    }
    let parts: Vec<&[u8]> = rest.split(|b| *b == b'/').skip(1).collect();
    let cfg = control.current();
    let who = match admin_auth::identify(head, buf, &cfg) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let need = if method == b"GET" {
        Role::Viewer
    } else {
        Role::Operator
    };
    if let Err(r) = who.require(need) {
        return r;
    }
    let Some(store) = control.state.get() else {
        return Reply::error(
            404,
            "state_disabled",
            "managed agents need a state store: add [state] dir or redis (and restart)",
        );
    };
    // the id in the path: raw bytes, valid or no such agent
    let id_of = |raw: &[u8]| -> Option<String> {
        std::str::from_utf8(raw)
            .ok()
            .filter(|s| valid_managed_id(s))
            .map(str::to_string)
    };
    match (method.as_slice(), parts.as_slice()) {
        (b"GET", []) => list(store, &cfg).await,
        (b"POST", []) => {
            let body = match super::approvals::read_body_max(s, head, buf, MAX_BODY).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (reply, target) = create(store, &cfg, &who, &body).await;
            admin_auth::audit(
                control,
                &who,
                "agent.create",
                target.as_deref(),
                reply.status,
            );
            reply
        }
        (b"POST", [id, b"rotate"]) => {
            let body = match super::approvals::read_body_max(s, head, buf, MAX_BODY).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let reply = match id_of(id) {
                None => not_found(),
                Some(id) => rotate(store, &cfg, &id, &body).await,
            };
            let t = String::from_utf8_lossy(id);
            admin_auth::audit(control, &who, "agent.rotate", Some(&t), reply.status);
            reply
        }
        (b"DELETE", [id]) => {
            let reply = match id_of(id) {
                None => not_found(),
                Some(id) => revoke(store, &cfg, &id).await,
            };
            let t = String::from_utf8_lossy(id);
            admin_auth::audit(control, &who, "agent.revoke", Some(&t), reply.status);
            reply
        }
        (_, [] | [_] | [_, b"rotate"]) => Reply::error(
            405,
            "method_not_allowed",
            "this admin endpoint does not take that method",
        ),
        _ => Reply::error(404, "not_found", "no such admin endpoint"),
    }
}

async fn ask<T>(
    store: &crate::state::Store,
    cmd: impl FnOnce(flume::Sender<T>) -> Cmd,
) -> Result<T, Reply> {
    let (tx, rx) = flume::bounded(1);
    if !store.send(cmd(tx)) {
        return Err(unavailable("the store queue is full"));
    }
    rx.recv_async().await.map_err(unavailable)
}

async fn list(store: &crate::state::Store, cfg: &crate::config::Compiled) -> Reply {
    let managed = match ask(store, |reply| Cmd::AgentList { reply }).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return unavailable(e),
        Err(r) => return r,
    };
    let mut out: Vec<serde_json::Value> = cfg
        .identity
        .agents
        .iter()
        .map(|a| {
            serde_json::json!({
                "id": a.id,
                "roles": a.roles,
                "source": "config",
                "read_only": true,
                "created_at": null,
                "expires_at": a.expires_at.map(ts_s),
                "last_seen": null,
                "revoked_at": null,
            })
        })
        .collect();
    for (a, seen) in managed {
        out.push(serde_json::json!({
            "id": a.id,
            "roles": a.roles,
            "source": "managed",
            "read_only": false,
            "created_at": ts_us(a.created_us),
            "expires_at": a.expires_us.map(ts_us),
            "last_seen": seen.map(|s| ts_s(i64::try_from(s).unwrap_or(i64::MAX))),
            "revoked_at": a.revoked_us.map(ts_us),
            "grace_until": a.prev_until_us.filter(|u| *u > now_us()).map(ts_us),
            "created_by": a.created_by,
        }));
    }
    json(200, serde_json::json!({ "agents": out }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

fn bad(msg: &str) -> Reply {
    Reply::error(400, "bad_request", msg)
}

/// Returns the answer and the agent id it was about (for the audit record).
async fn create(
    store: &crate::state::Store,
    cfg: &crate::config::Compiled,
    who: &Who<'_>,
    body: &[u8],
) -> (Reply, Option<String>) {
    let b: CreateBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return (
                bad(&format!(
                    "expected {{\"id\": \"bot-1\", \"roles\": [\"support\"], \"expires_at\": \"2027-01-01T00:00:00Z\" | null}}: {e}"
                )),
                None,
            );
        }
    };
    if !valid_managed_id(&b.id) {
        return (bad("id: 1-128 characters of A-Z a-z 0-9 . _ - @ :"), None);
    }
    let target = Some(b.id.clone());
    if b.roles.len() > MAX_ROLES {
        return (bad(&format!("roles: at most {MAX_ROLES}")), target);
    }
    if b.roles
        .iter()
        .any(|r| r.is_empty() || r.len() > 128 || r.chars().any(char::is_whitespace))
    {
        return (
            bad("roles: each role is 1-128 characters without whitespace"),
            target,
        );
    }
    let now = now_us();
    let expires_us = match b.expires_at.as_deref() {
        None => None,
        Some(t) => match crate::util::datetime::parse_rfc3339(t) {
            Some(secs) if secs > 0 => {
                let us = u64::try_from(secs).unwrap_or(0).saturating_mul(1_000_000);
                if us <= now {
                    return (bad("expires_at: in the past"), target);
                }
                Some(us)
            }
            _ => {
                return (
                    bad("expires_at: expected an RFC 3339 date-time like 2027-01-01T00:00:00Z"),
                    target,
                );
            }
        },
    };
    if cfg.identity.agents.by_id(&b.id).is_some() {
        return (exists(&b.id), target);
    }
    let key = crate::identity::generate_key();
    let agent = ManagedAgent {
        id: b.id.clone(),
        key_sha256: crate::identity::key_sha256_hex(&key),
        roles: b.roles,
        created_us: now,
        expires_us,
        revoked_us: None,
        prev_key_sha256: None,
        prev_until_us: None,
        created_by: Some(who.id.clone()),
    };
    let reply = match ask(store, |reply| Cmd::AgentCreate { agent, reply }).await {
        Ok(Ok(a)) => json(
            201,
            serde_json::json!({
                "id": a.id,
                "key": key,
                "roles": a.roles,
                "created_at": ts_us(a.created_us),
                "expires_at": a.expires_us.map(ts_us),
            }),
        ),
        Ok(Err(e)) => agent_error(e, &b.id),
        Err(r) => r,
    };
    (reply, target)
}

fn exists(id: &str) -> Reply {
    Reply::error(
        409,
        "agent_exists",
        &format!("an agent with id '{id}' exists already"),
    )
}

fn read_only() -> Reply {
    Reply::error(
        409,
        "read_only",
        "this agent is defined in the config file: change it there (and reload)",
    )
}

fn agent_error(e: AgentError, id: &str) -> Reply {
    match e {
        AgentError::Exists => exists(id),
        AgentError::NotFound => not_found(),
        AgentError::Revoked => Reply::error(
            409,
            "revoked",
            "this agent is revoked: issue a new one instead",
        ),
        AgentError::Unavailable(e) => unavailable(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace: Option<String>,
}

/// Longest rotation grace.
const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

async fn rotate(
    store: &crate::state::Store,
    cfg: &crate::config::Compiled,
    id: &str,
    body: &[u8],
) -> Reply {
    if cfg.identity.agents.by_id(id).is_some() {
        return read_only();
    }
    let b: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody { grace: None }
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return bad(&format!("expected {{\"grace\": \"10m\"}}: {e}")),
        }
    };
    let grace = match b.grace.as_deref() {
        None => std::time::Duration::ZERO,
        Some(g) => match crate::util::units::parse_duration(g) {
            Ok(d) if d <= MAX_GRACE => d,
            Ok(_) => return bad("grace: at most 30d"),
            Err(e) => return bad(&format!("grace: {e}")),
        },
    };
    let now = now_us();
    let grace_until_us = now.saturating_add(u64::try_from(grace.as_micros()).unwrap_or(u64::MAX));
    let key = crate::identity::generate_key();
    let key_sha256 = crate::identity::key_sha256_hex(&key);
    match ask(store, |reply| Cmd::AgentRotate {
        id: id.to_string(),
        key_sha256,
        grace_until_us,
        reply,
    })
    .await
    {
        Ok(Ok(a)) => json(
            200,
            serde_json::json!({
                "id": a.id,
                "key": key,
                "grace_until": a.prev_until_us.map(ts_us),
            }),
        ),
        Ok(Err(e)) => agent_error(e, id),
        Err(r) => r,
    }
}

async fn revoke(store: &crate::state::Store, cfg: &crate::config::Compiled, id: &str) -> Reply {
    if cfg.identity.agents.by_id(id).is_some() {
        return read_only();
    }
    match ask(store, |reply| Cmd::AgentRevoke {
        id: id.to_string(),
        reply,
    })
    .await
    {
        Ok(Ok(a)) => json(
            200,
            serde_json::json!({
                "id": a.id,
                "revoked_at": a.revoked_us.map(ts_us),
            }),
        ),
        Ok(Err(e)) => agent_error(e, id),
        Err(r) => r,
    }
}
