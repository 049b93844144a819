//! The admin listener, on its own thread: `/healthz`, `/readyz` (no token; "degraded" while
//! audit writes fail, 503 when `on_error = "refuse"` refuses calls meanwhile); `GET /metrics`,
//! `GET /v1/requests` (`?shadow=1`: report-mode rule hits), `GET /v1/telemetry`,
//! `GET /v1/audit/head` (the latest checkpoint), `GET /v1/budgets` (each budget's window) and
//! `POST /v1/reload` (bearer `admin_token`; `/metrics` also takes the read-only `metrics_token`,
//! and appends `ops_metrics`). Same
//! strict head parser as the data plane. Audit reads (`/v1/requests`, `/v1/telemetry`) run on
//! a two-thread blocking pool attached to the admin runtime.
use crate::config::Role;
use crate::http::head::{self, RequestHead};
use crate::http::io::{read_append, write_all};
use crate::http::write::push_u64;
use crate::net::agent_io::{AgentIo, accept_tls};
use crate::server::admin_auth;
use crate::server::control::Control;
use monoio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub fn start(addr: SocketAddr, control: Arc<Control>) -> std::io::Result<()> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("portcullis-admin".into())
        .spawn(move || {
            // audit queries read files: they run on this small pool, not on the admin loop
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(2)))
                .build();
            let Ok(mut rt) = rt else {
                tracing::error!("admin: cannot start runtime");
                return;
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin: cannot use listener");
                        return;
                    }
                };
                loop {
                    if let Ok((s, peer)) = listener.accept().await {
                        monoio::spawn(accept(s, peer, control.clone()));
                    }
                }
            });
        })?;
    Ok(())
}

/// `[server] admin_tls` (read from the current config, so a reload re-reads the certificate):
/// the handshake first, bounded like a head.
async fn accept(s: TcpStream, peer: SocketAddr, control: Arc<Control>) {
    let tls = control.current().server.admin_tls.clone();
    match tls {
        None => serve(AgentIo::Plain(s), control, peer, false).await,
        Some(cfg) => match accept_tls(s, cfg, Duration::from_secs(10)).await {
            Ok((io, _)) => serve(io, control, peer, true).await,
            Err(e) => tracing::info!(%peer, reason = %e, "admin TLS handshake failed"),
        },
    }
}

async fn serve(mut s: AgentIo, control: Arc<Control>, peer: SocketAddr, tls: bool) {
    let mut buf = Vec::with_capacity(8192);
    let mut head = RequestHead::default();
    let limits = head::Limits {
        max_head: 8192,
        max_headers: 64,
    };
    let deadline = crate::util::clock::now() + Duration::from_secs(10);
    loop {
        match head::parse_request(&buf, &limits, &mut head) {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => {
                return respond(&mut s, Reply::error(400, "bad_request", "bad request")).await;
            }
        }
        match read_append(&mut s, &mut buf, 8192, deadline).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
    if head.target.get(&buf).starts_with(b"/v1/approvals") {
        let reply = crate::server::approvals::handle(&mut s, &head, &mut buf, &control).await;
        return respond(&mut s, reply).await;
    }
    if head.target.get(&buf).starts_with(b"/v1/agents") {
        let reply = crate::server::agents_api::handle(&mut s, &head, &mut buf, &control).await;
        return respond(&mut s, reply).await;
    }
    if head.target.get(&buf).starts_with(b"/v1/mcp/pins") {
        let reply = crate::server::pins_api::handle(&head, &buf, &control);
        return respond(&mut s, reply).await;
    }
    if head.target.get(&buf) == b"/v1/config/check" && head.method.get(&buf) == b"POST" {
        let reply = config_check(&mut s, &head, &mut buf, &control).await;
        return respond(&mut s, reply).await;
    }
    // the web console (pages, assets, sign-in)
    let t = head.target.get(&buf);
    if t == b"/ui" || t.starts_with(b"/ui/") || t.starts_with(b"/ui?") {
        return crate::server::console::handle(&mut s, &head, &mut buf, &control, peer.ip(), tls)
            .await;
    }
    let method = head.method.get(&buf);
    let target = head.target.get(&buf);
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    // the live audit tail the console's Calls page follows (server-sent events)
    if path == b"/v1/requests/tail" {
        let allowed = authorized(&head, &buf, &control, Role::Viewer)
            .and_then(|who| scoped_proxy(&who, query));
        let reply = match (method, allowed) {
            (b"GET", Ok(())) => {
                let query = query.to_vec();
                match crate::server::console::tail(&mut s, &control, &query).await {
                    Some(r) => r,
                    None => return,
                }
            }
            (b"GET", Err(r)) => r,
            _ => Reply::error(
                405,
                "method_not_allowed",
                "this admin endpoint does not take that method",
            ),
        };
        return respond(&mut s, reply).await;
    }
    let reply = match (method, path) {
        (b"GET", b"/healthz") => Reply::json(200, r#"{"status":"ok"}"#.to_string()),
        (b"GET", b"/readyz") if !control.is_ready() => {
            Reply::json(503, r#"{"status":"not ready"}"#.to_string())
        }
        // audit writes failing: "degraded"; not ready when calls are refused meanwhile
        (b"GET", b"/readyz") => match control.audit.as_ref().filter(|a| a.degraded()) {
            Some(a) if a.refusing() => Reply::json(
                503,
                r#"{"status":"degraded","audit":"failing","calls":"refused"}"#.to_string(),
            ),
            Some(_) => Reply::json(
                200,
                r#"{"status":"degraded","audit":"failing","calls":"served"}"#.to_string(),
            ),
            None => Reply::json(200, r#"{"status":"ready"}"#.to_string()),
        },
        (b"GET", b"/v1/config") => match authorized(&head, &buf, &control, Role::Viewer) {
            Err(r) => r,
            Ok(_) => crate::server::config_api::show(&control),
        },
        (b"GET", b"/v1/audit/head") => match authorized(&head, &buf, &control, Role::Viewer) {
            Err(r) => r,
            Ok(_) => match control.audit.as_ref() {
                None => audit_disabled(),
                Some(a) => match a.head() {
                    Some(h) => Reply::json(200, h),
                    None => Reply::error(
                        404,
                        "no_checkpoint",
                        "no checkpoint yet (they need [audit] signing_key or head_file, and calls)",
                    ),
                },
            },
        },
        (b"GET", b"/metrics") => {
            match admin_auth::identify_metrics(&head, &buf, &control.current()) {
                Err(r) => r,
                Ok(_) => {
                    let audit = control.audit.as_ref().map(|a| a.snapshot());
                    let mut body = control.metrics.render(audit.as_ref());
                    if let Some(a) = control.audit.as_ref() {
                        crate::siem::render_metrics(&a.sinks, &mut body);
                    }
                    if let Some(st) = control.state.get() {
                        st.stats.render(&mut body);
                    }
                    if let Some(t) = control.traces.get() {
                        crate::siem::traces::render_metrics(t, &mut body);
                    }
                    crate::server::ops_metrics::render(&control, &mut body);
                    let cfg = control.current();
                    crate::policy::budget::render_metrics(
                        &mut body,
                        &budget_ledgers(&cfg),
                        unix_secs(),
                    );
                    Reply {
                        status: 200,
                        content_type: PROMETHEUS_TEXT,
                        body,
                    }
                }
            }
        }
        (b"GET", b"/v1/requests") => match authorized(&head, &buf, &control, Role::Viewer) {
            Err(r) => r,
            Ok(who) => match scoped_proxy(&who, query) {
                Err(r) => r,
                Ok(()) => requests(&control, query).await,
            },
        },
        (b"GET", b"/v1/budgets") => match authorized(&head, &buf, &control, Role::Viewer) {
            Err(r) => r,
            Ok(who) => {
                let cfg = control.current();
                let ledgers: Vec<_> = budget_ledgers(&cfg)
                    .into_iter()
                    .filter(|l| who.may_see(&l.key.proxy))
                    .collect();
                let list = crate::policy::budget::listing(&ledgers, unix_secs());
                Reply::json(200, list.to_string())
            }
        },
        (b"GET", b"/v1/telemetry") => match authorized(&head, &buf, &control, Role::Viewer) {
            Err(r) => r,
            Ok(who) => match scoped_proxy(&who, query) {
                Err(r) => r,
                Ok(()) => telemetry(&control, query).await,
            },
        },
        (b"POST", b"/v1/reload") => match authorized(&head, &buf, &control, Role::Operator) {
            Err(r) => r,
            Ok(who) => {
                let reply = reload(&control);
                admin_auth::audit(&control, &who, "config.reload", None, reply.status);
                reply
            }
        },
        (
            _,
            b"/healthz" | b"/readyz" | b"/metrics" | b"/v1/requests" | b"/v1/telemetry"
            | b"/v1/audit/head" | b"/v1/budgets" | b"/v1/config" | b"/v1/config/check",
        )
        | (_, b"/v1/reload") => Reply::error(
            405,
            "method_not_allowed",
            "this admin endpoint does not take that method",
        ),
        _ => Reply::error(404, "not_found", "no such admin endpoint"),
    };
    respond(&mut s, reply).await;
}

/// `POST /v1/reload`.
fn reload(control: &Control) -> Reply {
    match control.reload_noting("POST /v1/reload") {
        Ok(r) => Reply::json(
            200,
            serde_json::json!({
                "reloaded": true,
                "generation": r.generation,
                "restart_required": r.restart_required,
            })
            .to_string(),
        ),
        Err(e) => Reply::error(400, "reload_failed", &e.to_string()),
    }
}

/// A scoped identity (`[[admins]] proxies`) reads the log and telemetry of its proxies only:
/// it names one of them with `?proxy=`.
fn scoped_proxy(who: &admin_auth::Who<'_>, query: &[u8]) -> Result<(), Reply> {
    if who.proxies.is_none() {
        return Ok(());
    }
    let proxy = crate::http::query::pairs(query)
        .find(|(k, _)| *k == b"proxy")
        .and_then(|(_, v)| pct_decode(v));
    match proxy {
        Some(p) if !p.is_empty() && who.may_see(&p) => Ok(()),
        _ => Err(Reply::error(
            403,
            "out_of_scope",
            "this admin identity is limited to some proxies: name one of them with ?proxy=",
        )),
    }
}

/// `POST /v1/config/check` (operator): reads the candidate, checks it, records the action.
async fn config_check(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    control: &Control,
) -> Reply {
    let who = match authorized(head, buf, control, Role::Operator) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let cfg = control.current();
    let reply = match crate::server::approvals::read_body_max(
        s,
        head,
        buf,
        crate::server::config_api::MAX_CONFIG,
    )
    .await
    {
        Ok(body) => crate::server::config_api::check(control, body).await,
        Err(r) => r,
    };
    drop(cfg);
    admin_auth::audit(control, &who, "config.check", None, reply.status);
    reply
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An admin answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// `{"error":{"code":..,"message":..}}`, the shape of the gateway's own errors.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
        )
    }
}

/// Largest `limit` of `GET /v1/requests`.
pub const MAX_REQUESTS_LIMIT: usize = 10_000;

/// The budgets of the running config, in config order.
fn budget_ledgers(cfg: &crate::config::Compiled) -> Vec<&crate::policy::budget::Ledger> {
    cfg.proxies
        .iter()
        .flat_map(|p| p.budgets.iter().map(|b| &*b.ledger))
        .collect()
}

fn unix_secs() -> u64 {
    crate::util::clock::unix_now().as_secs()
}

fn now_us() -> u64 {
    u64::try_from(crate::util::clock::unix_now().as_micros()).unwrap_or(u64::MAX)
}

/// `GET /v1/requests`: audit records, newest first. The file reads run on the admin thread's
/// blocking pool so probes stay answered meanwhile.
async fn requests(control: &Control, query: &[u8]) -> Reply {
    let Some(audit) = control.audit.as_ref() else {
        return audit_disabled();
    };
    let q = match requests_query(query, now_us()) {
        Ok(q) => q,
        Err(m) => return Reply::error(400, "bad_request", &m),
    };
    let dir = audit.dir.clone();
    match monoio::spawn_blocking(move || crate::observe::audit::query(&dir, &q)).await {
        Ok(Ok(res)) => {
            #[derive(serde::Serialize)]
            struct Out<'a> {
                records: &'a [crate::observe::audit::StoredRecord],
            }
            match serde_json::to_string(&Out {
                records: &res.records,
            }) {
                Ok(body) => Reply::json(200, body),
                Err(e) => Reply::error(500, "internal", &e.to_string()),
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "admin: audit query failed");
            Reply::error(500, "audit_unreadable", &e.to_string())
        }
        Err(_) => Reply::error(500, "internal", "the query task failed"),
    }
}

/// `GET /v1/telemetry`: aggregates of the audit records in a window (see `audit::telemetry`).
async fn telemetry(control: &Control, query: &[u8]) -> Reply {
    let Some(audit) = control.audit.as_ref() else {
        return audit_disabled();
    };
    let (proxy, since, until) = match telemetry_params(query, now_us()) {
        Ok(p) => p,
        Err(m) => return Reply::error(400, "bad_request", &m),
    };
    let dir = audit.dir.clone();
    let job = move || {
        crate::observe::audit::telemetry::compute(
            &dir,
            proxy.as_deref(),
            since,
            until,
            crate::observe::audit::telemetry::MAX_RECORDS,
        )
    };
    let want_proxy = telemetry_params(query, now_us()).ok().and_then(|p| p.0);
    match monoio::spawn_blocking(job).await {
        Ok(Ok(rep)) => match serde_json::to_value(&rep) {
            Ok(mut body) => {
                // each budget's state now (spent and remaining per key), beside the window's
                // aggregates
                let cfg = control.current();
                let ledgers: Vec<&crate::policy::budget::Ledger> = budget_ledgers(&cfg)
                    .into_iter()
                    .filter(|l| want_proxy.as_deref().is_none_or(|p| *l.key.proxy == *p))
                    .collect();
                if !ledgers.is_empty() {
                    body["budgets"] =
                        crate::policy::budget::listing(&ledgers, unix_secs())["budgets"].take();
                }
                Reply::json(200, body.to_string())
            }
            Err(e) => Reply::error(500, "internal", &e.to_string()),
        },
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "admin: telemetry query failed");
            Reply::error(500, "audit_unreadable", &e.to_string())
        }
        Err(_) => Reply::error(500, "internal", "the telemetry task failed"),
    }
}

fn audit_disabled() -> Reply {
    Reply::error(
        404,
        "audit_disabled",
        "no [audit] section in the running config: there are no records to read",
    )
}

/// Splits a query string into decoded `(name, value)` pairs. Values are percent-decoded
/// (`%3A` → `:`); `+` stays a plus (RFC 3339 offsets), so a space must be sent as `%20`.
/// Names must be in `allowed` and appear once; an empty value counts as absent.
pub fn parse_query_string(
    qs: &[u8],
    allowed: &[&str],
) -> Result<Vec<(&'static str, String)>, String> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for (k, v) in crate::http::query::pairs(qs) {
        let k = pct_decode(k).ok_or("malformed percent-encoding in the query")?;
        let v = pct_decode(v).ok_or("malformed percent-encoding in the query")?;
        let Some(name) = PARAMS.iter().find(|n| **n == k && allowed.contains(n)) else {
            return Err(format!(
                "unknown parameter '{}' (expected {})",
                k.chars().take(64).collect::<String>(),
                allowed.join(", ")
            ));
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("parameter '{name}' given twice"));
        }
        if !v.is_empty() {
            out.push((name, v));
        }
    }
    Ok(out)
}

const PARAMS: [&str; 10] = [
    "proxy",
    "agent",
    "status",
    "since",
    "until",
    "shadow",
    "limit",
    "decision",
    "tool",
    "mcp_method",
];

fn pct_decode(s: &[u8]) -> Option<String> {
    String::from_utf8(crate::http::query::pct_decode_strict(s)?).ok()
}

fn time_param(name: &str, v: &str, now_us: u64) -> Result<u64, String> {
    crate::observe::audit::query::parse_time_arg(v, now_us).ok_or_else(|| {
        format!("{name}: expected RFC 3339 (2026-01-01T00:00:00Z) or a duration ago (15m, 2h, 7d)")
    })
}

/// The query of `GET /v1/requests?proxy=&agent=&status=&since=&until=&limit=`.
pub fn requests_query(qs: &[u8], now_us: u64) -> Result<crate::observe::audit::Query, String> {
    let mut q = crate::observe::audit::Query::default();
    for (k, v) in parse_query_string(qs, &PARAMS)? {
        match k {
            "proxy" => q.proxy = Some(v),
            "agent" => q.agent = Some(v),
            "decision" => q.decision = Some(v),
            "tool" => q.tool = Some(v),
            "mcp_method" => q.mcp_method = Some(v),
            "status" => {
                q.status = Some(
                    crate::observe::audit::StatusFilter::parse(&v)
                        .ok_or("status: expected a status (403) or a class (4xx)")?,
                )
            }
            "since" => q.since = Some(time_param(k, &v, now_us)?),
            "until" => q.until = Some(time_param(k, &v, now_us)?),
            "shadow" => {
                q.shadow = match v.as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err("shadow: expected 1 or 0".into()),
                }
            }
            _ => {
                q.limit = match v.parse::<usize>() {
                    Ok(n @ 1..=MAX_REQUESTS_LIMIT) => n,
                    _ => return Err(format!("limit: expected 1 to {MAX_REQUESTS_LIMIT}")),
                }
            }
        }
    }
    if let (Some(s), Some(u)) = (q.since, q.until)
        && s > u
    {
        return Err("since is after until".into());
    }
    Ok(q)
}

/// `(proxy, since, until)` of `GET /v1/telemetry?proxy=&since=&until=`; the window defaults
/// to the last hour.
pub fn telemetry_params(qs: &[u8], now_us: u64) -> Result<(Option<String>, u64, u64), String> {
    let mut proxy = None;
    let mut since = None;
    let mut until = now_us;
    for (k, v) in parse_query_string(qs, &["proxy", "since", "until"])? {
        match k {
            "proxy" => proxy = Some(v),
            "since" => since = Some(time_param(k, &v, now_us)?),
            _ => until = time_param(k, &v, now_us)?,
        }
    }
    let since = since.unwrap_or_else(|| {
        until.saturating_sub(crate::observe::audit::telemetry::DEFAULT_WINDOW.as_micros() as u64)
    });
    if since > until {
        return Err("since is after until".into());
    }
    Ok((proxy, since, until))
}

/// Authenticates an admin request (`admin_auth::identify`) and checks its role.
fn authorized(
    head: &RequestHead,
    buf: &[u8],
    control: &Control,
    role: Role,
) -> Result<admin_auth::Who<'static>, Reply> {
    let cfg = control.current();
    let who = admin_auth::identify(head, buf, &cfg)?;
    who.require(role)?;
    Ok(admin_auth::Who {
        id: who.id,
        role: who.role,
        proxies: who.proxies,
        admin: None,
    })
}

async fn respond(s: &mut AgentIo, reply: Reply) {
    let Reply {
        status,
        content_type,
        body,
    } = reply;
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(crate::error::reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\nContent-Length: ");
    push_u64(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    let _ = write_all(s, &mut out, Duration::from_secs(10)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::audit::StatusFilter;

    const NOW: u64 = 1_795_600_000_000_000;

    #[test]
    fn requests_params() {
        let q = requests_query(b"", NOW).unwrap();
        assert_eq!(q, crate::observe::audit::Query::default());
        let q = requests_query(
            b"proxy=crm&agent=support%2Dbot&status=4xx&since=2026-11-24T09%3A00%3A00Z&until=15m&limit=7",
            NOW,
        )
        .unwrap();
        assert_eq!(q.proxy.as_deref(), Some("crm"));
        assert_eq!(q.agent.as_deref(), Some("support-bot"));
        assert_eq!(q.status, Some(StatusFilter::Class(4)));
        let m = requests_query(b"tool=delete%5Faccount&mcp_method=tools%2Fcall", NOW).unwrap();
        assert_eq!(m.tool.as_deref(), Some("delete_account"));
        assert_eq!(m.mcp_method.as_deref(), Some("tools/call"));
        assert!(requests_query(b"tool=a&tool=b", NOW).is_err());
        assert_eq!(
            q.since,
            crate::observe::audit::record::parse_rfc3339("2026-11-24T09:00:00Z")
        );
        assert_eq!(q.until, Some(NOW - 15 * 60 * 1_000_000));
        assert_eq!(q.limit, 7);
        // empty values are absent (`?proxy=&agent=`)
        let q = requests_query(b"proxy=&agent=&limit=10000", NOW).unwrap();
        assert_eq!((q.proxy, q.agent, q.limit), (None, None, 10_000));
        for bad in [
            &b"limit=0"[..],
            b"limit=10001",
            b"limit=x",
            b"status=42",
            b"since=yesterday",
            b"nope=1",
            b"proxy=a&proxy=b",
            b"proxy=%zz",
            b"proxy=%ff",
            b"since=1h&until=2h",
        ] {
            assert!(
                requests_query(bad, NOW).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn telemetry_window_defaults_to_the_last_hour() {
        let (p, s, u) = telemetry_params(b"", NOW).unwrap();
        assert_eq!((p, s, u), (None, NOW - 3_600_000_000, NOW));
        let (p, s, u) = telemetry_params(b"proxy=crm&since=2h&until=1h", NOW).unwrap();
        assert_eq!(p.as_deref(), Some("crm"));
        assert_eq!(u - s, 3_600_000_000);
        assert!(telemetry_params(b"limit=3", NOW).is_err());
        assert!(telemetry_params(b"since=1h&until=2h", NOW).is_err());
    }
}
