//! Who is calling the admin API, and what they may do: the one place every admin endpoint
//! authenticates (issue 16). A bearer key is looked up by its SHA-256 among the named
//! `[[admins]]` (role `viewer` < `approver` < `operator`, optional `proxies` scope); the shared
//! `server.admin_token` is an operator (it may not decide approvals: a decision names a
//! person). `server.metrics_token` reads `GET /metrics` only ([`identify_metrics`]).
//!
//! A request without `Authorization` may instead carry a web console session (`console.rs`):
//! it is then that admin, and a non-GET request must carry the session's CSRF token.
//!
//! No or a wrong credential: 401 `unauthenticated`; a role below the endpoint's: 403
//! `forbidden`; neither `[[admins]]` nor `admin_token` configured: 403 `admin_disabled`.
//! Every admin action is recorded in the audit trail naming the admin ([`audit`]).
// Control plane: the admin thread.
#![allow(clippy::disallowed_types)]
use super::admin::Reply;
use super::control::Control;
use crate::config::{Admin, Compiled, Role};
use crate::http::head::RequestHead;

/// The identity behind an admin request.
pub struct Who<'c> {
    /// `[[admins]] id`, `admin_token` or `metrics_token`.
    pub id: String,
    pub role: Role,
    /// The proxies this identity is limited to (`None`: all).
    pub proxies: Option<Vec<String>>,
    /// `None`: the shared `admin_token` (or `metrics_token`), not a named identity.
    pub admin: Option<&'c Admin>,
}

impl Who<'_> {
    /// Whether this identity may see (or act on) `proxy`.
    pub fn may_see(&self, proxy: &str) -> bool {
        match &self.proxies {
            Some(list) => list.iter().any(|p| p == proxy),
            None => true,
        }
    }

    /// 403 `forbidden` unless this identity has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), Reply> {
        if self.role >= role {
            return Ok(());
        }
        Err(Reply::error(
            403,
            "forbidden",
            &format!(
                "this needs the {} role; '{}' is {}",
                role_name(role),
                self.id,
                role_name(self.role)
            ),
        ))
    }
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Approver => "approver",
        Role::Operator => "operator",
    }
}

/// The bearer token the request presents, if any.
pub fn bearer<'b>(head: &RequestHead, buf: &'b [u8]) -> Option<&'b [u8]> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(b"authorization"))
        .and_then(|h| {
            let v = h.value.get(buf);
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
        })
}

pub fn unauthenticated() -> Reply {
    Reply::error(
        401,
        "unauthenticated",
        "a valid admin bearer key is required",
    )
}

/// Equality of two digests without an early exit.
fn ct_eq32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Authenticates an admin request: a named `[[admins]]` key or the shared `admin_token`.
pub fn identify<'c>(head: &RequestHead, buf: &[u8], cfg: &'c Compiled) -> Result<Who<'c>, Reply> {
    if cfg.admins.is_empty() && cfg.server.admin_token.is_none() {
        return Err(Reply::error(
            403,
            "admin_disabled",
            "set server.admin_token or [[admins]] to use this endpoint",
        ));
    }
    let Some(key) = bearer(head, buf) else {
        // a web console session (cookie `pcs_session`; a non-GET request also carries the
        // session's CSRF token, else 403 `csrf`) stands for its admin, with that admin's role
        // and scope under the running config
        let (id, key) = super::console::session_admin(head, buf, crate::util::clock::now())?
            .ok_or_else(unauthenticated)?;
        return match super::console::lookup(cfg, &id, &key) {
            Some((role, admin)) => Ok(Who {
                id,
                role,
                proxies: admin.and_then(|a| a.proxies.clone()),
                admin,
            }),
            None => Err(Reply::error(
                401,
                "unauthenticated",
                "the session's admin identity or its key is no longer configured: sign in again",
            )),
        };
    };
    let h = crate::identity::key_sha256(key);
    // every identity compared (no early exit on a match position)
    let mut found = None;
    for a in &cfg.admins {
        if ct_eq32(&a.key_sha256, &h) {
            found = Some(a);
        }
    }
    if let Some(a) = found {
        return Ok(Who {
            id: a.id.clone(),
            role: a.role,
            proxies: a.proxies.clone(),
            admin: Some(a),
        });
    }
    match &cfg.server.admin_token {
        Some(t) if t.ct_eq(key) => Ok(Who {
            id: "admin_token".into(),
            role: Role::Operator,
            proxies: None,
            admin: None,
        }),
        _ => Err(unauthenticated()),
    }
}

/// `GET /metrics`: any admin identity, or the read-only `server.metrics_token`.
pub fn identify_metrics<'c>(
    head: &RequestHead,
    buf: &[u8],
    cfg: &'c Compiled,
) -> Result<Who<'c>, Reply> {
    if let Some(m) = &cfg.server.metrics_token
        && bearer(head, buf).is_some_and(|p| m.ct_eq(p))
    {
        return Ok(Who {
            id: "metrics_token".into(),
            role: Role::Viewer,
            proxies: None,
            admin: None,
        });
    }
    match identify(head, buf, cfg) {
        Err(r) if r.status == 403 && cfg.server.metrics_token.is_some() => Err(unauthenticated()),
        other => other,
    }
}

/// One audit record of an admin action (`kind: "admin"`), naming the admin; `status` is the
/// answer's. Without `[audit]` it is only logged.
pub fn audit(
    control: &Control,
    who: &Who<'_>,
    action: &'static str,
    target: Option<&str>,
    status: u16,
) {
    tracing::info!(admin = %who.id, action, target = target.unwrap_or("-"), status, "admin action");
    let Some(a) = control.audit.as_ref() else {
        return;
    };
    let mut id = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut id).is_err() {
        id[..8].copy_from_slice(&crate::util::clock::unix_now().as_nanos().to_le_bytes()[..8]);
    }
    let rec = crate::observe::audit::AuditRecord {
        ts_us: u64::try_from(crate::util::clock::unix_now().as_micros()).unwrap_or(u64::MAX),
        id: crate::observe::audit::SmallStr::new(&crate::util::hex::encode(&id)),
        status,
        admin: Some(std::sync::Arc::new(
            crate::observe::audit::record::AdminNote {
                admin: who.id.clone(),
                role: role_name(who.role),
                action,
                target: target.map(str::to_string),
            },
        )),
        ..Default::default()
    };
    if a.ring().push_record(rec).is_none() {
        tracing::warn!(
            action,
            "audit: the admin action's record was dropped (queue full)"
        );
    }
}
