//! START READING HERE. The one place where the order of a call lives:
//!
//! head → route (canonical path) → identity → authorization → meter → body → scanners →
//! outbound request (target credential) → upstream → response (redacted while it streams).
//!
//! `call` is the story, one stage per line. Each stage returns `Result<_, Stop>` (every stage's
//! error converts with `From`), so a call has one refusal exit: `serve_call` answers it, and
//! whether the agent's connection survives is a function of the refusal and the `Phase` the
//! call had reached (`keep_alive`, table-tested). The `CallLog` drop guard writes the audit
//! record whatever path the call took. No stage calls an earlier one; stages live in their
//! modules, and the few lines that adapt a stage to the call's state live here.
pub mod outbound;
pub mod route;
mod state;
pub use state::{Scratch, View, Worker};

use crate::config::{Limits, Proxy};
use crate::error::Refusal;
use crate::http::body::{self, BodyFail};
use crate::http::head::{self, BodyKind, HeadError, RequestHead, Version, find_header};
use crate::http::io::{IoFail, read_append, write_all, write_range};
use crate::http::write::{self, CONTINUE_100};
use crate::identity::{self, AuthnError, Caller};
use crate::observe::audit::{Decision, SmallStr};
use crate::observe::call::{CallLog, RequestId};
use crate::policy::authz::Effect;
use crate::policy::meter::Verdict;
use crate::scan::ScanError;
use crate::upstream::conn::UpConn;
use crate::upstream::request;
use crate::upstream::response::{self, HeadFail, StreamEnd, StreamIo};
use crate::util::clock;
use monoio::net::TcpStream;
use route::Route;
use std::sync::Arc;

/// Bodies up to this size are copied behind the outbound head and sent in one write.
const COALESCE_BODY: usize = 16 * 1024;

/// How a call stops before its response is relayed.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Nothing to answer: the agent went away or stalled.
    Quiet,
    /// The gateway answers with this refusal.
    Refuse(Refusal),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refuse(r)
    }
}

impl From<AuthnError> for Stop {
    fn from(e: AuthnError) -> Stop {
        Stop::Refuse(e.into())
    }
}

impl From<BodyFail> for Stop {
    fn from(e: BodyFail) -> Stop {
        match e {
            BodyFail::TooLarge => Stop::Refuse(Refusal::BodyTooLarge),
            BodyFail::Bad(why) => Stop::Refuse(Refusal::BadRequest(why)),
            BodyFail::Gone => Stop::Quiet,
        }
    }
}

impl From<ScanError> for Stop {
    fn from(e: ScanError) -> Stop {
        Stop::Refuse(match e {
            ScanError::TooLarge => Refusal::BodyTooLarge,
            ScanError::UnsupportedEncoding => {
                Refusal::BadRequest("the request body's Content-Encoding cannot be scanned")
            }
            ScanError::Corrupt => {
                Refusal::BadRequest("the request body does not decode with its Content-Encoding")
            }
        })
    }
}

impl From<HeadFail> for Stop {
    fn from(e: HeadFail) -> Stop {
        Stop::Refuse(match e {
            HeadFail::ClosedEarly => {
                Refusal::UpstreamUnreachable("upstream closed the connection without a response")
            }
            HeadFail::Refused(r) => r,
        })
    }
}

/// How far a call got: what of the agent's request has been read decides whether its
/// connection can carry another request after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Deciding on the head (route, identity, rules, meter); the body is still unread.
    Decide,
    /// Reading or scanning the body.
    Body,
    /// The request is read whole: building the outbound request, calling the upstream.
    Forward,
    /// The upstream answered; planning the agent's response.
    Respond,
}

/// Whether the agent's connection stays open after `refusal` at `phase` (given the agent
/// asked for keep-alive and the worker is not draining). Before the body is read, only a
/// request without a body leaves the connection in sync, and a malformed request is never
/// trusted to; a refusal while reading or scanning the body leaves unread or unchecked bytes,
/// so the connection closes; once the request is read whole, the connection is in sync; a
/// response that cannot be planned closes it (the upstream's answer was unusable).
pub fn keep_alive(refusal: &Refusal, phase: Phase, bodiless: bool) -> bool {
    match phase {
        Phase::Decide => bodiless && !matches!(refusal, Refusal::BadRequest(_)),
        Phase::Body | Phase::Respond => false,
        Phase::Forward => true,
    }
}

/// What `serve_call` needs to answer a refusal.
struct Progress {
    phase: Phase,
    /// Bytes of `s.rbuf` that belong to this request (dropped before a kept connection reads
    /// the next one).
    consumed: usize,
}

/// Serves one call on `client`. Returns whether the agent connection stays open; `s.rbuf`
/// then holds only the bytes of the next (pipelined) request.
pub async fn serve_call(w: &Worker, client: &mut TcpStream, s: &mut Scratch) -> bool {
    let view = w.view();
    let lim = &view.cfg.limits;
    s.extra.clear();
    // 1. head
    match read_head(client, s, lim).await {
        Ok(()) => {}
        Err(Stop::Quiet) => return false,
        Err(Stop::Refuse(r)) => {
            let mut log = CallLog::new(w.next_id(), w.audit.as_deref(), Some(&w.metrics));
            return refuse(client, s, &mut log, r, None, Version::Http11, lim).await;
        }
    }
    let id = agent_request_id(&s.head, &s.rbuf).unwrap_or_else(|| w.next_id());
    let mut log = CallLog::new(id, w.audit.as_deref(), Some(&w.metrics));
    log.method = SmallStr::new(std::str::from_utf8(s.head.method.get(&s.rbuf)).unwrap_or("?"));
    let version = s.head.version;
    let wants_keep = s.head.keep_alive && !w.draining.get();
    let bodiless = matches!(s.head.body, BodyKind::None | BodyKind::Length(0));
    let mut at = Progress {
        phase: Phase::Decide,
        consumed: s.head.head_len,
    };
    match call(w, &view, client, s, &mut log, &mut at, wants_keep).await {
        Ok(keep) => keep,
        Err(Stop::Quiet) => false,
        Err(Stop::Refuse(r)) => {
            let keep = wants_keep && keep_alive(&r, at.phase, bodiless);
            let consumed = keep.then_some(at.consumed);
            refuse(client, s, &mut log, r, consumed, version, lim).await
        }
    }
}

/// The story of one call after its head has been read.
async fn call(
    w: &Worker,
    view: &View,
    client: &mut TcpStream,
    s: &mut Scratch,
    log: &mut CallLog<'_>,
    at: &mut Progress,
    wants_keep: bool,
) -> Result<bool, Stop> {
    let cfg = &*view.cfg;
    let lim = &cfg.limits;
    let now_unix = clock::unix_now().as_secs() as i64;

    // 2. canonical path and route
    let route = route::resolve(cfg, s.head.target.get(&s.rbuf), &mut s.path)?;
    let proxy = &cfg.proxies[route.proxy];
    log.proxy = Some(route.proxy);
    log.metrics_slot = view.slots.get(route.proxy).copied();
    if log.audited() {
        log.proxy_name = Some(proxy.name_arc.clone());
        log.path.push_str(&s.path);
    }

    // 3. identity
    let caller = authenticate(view, s, now_unix)?;
    if log.audited() {
        log.agent = caller.id().map(Arc::from);
    }

    // 4. authorization: the rule trie over the canonical path below the proxy
    authorize(proxy, s, &route, &caller, log)?;

    // 5. meter (in cluster mode it may wait for a refill from Redis, at most 50 ms)
    admit(proxy, s, &caller).await?;

    // 6. body, read whole before anything goes upstream
    at.phase = Phase::Body;
    at.consumed = read_body(client, s, lim).await?;
    log.bytes_in = (s.head.head_len + s.body.len()) as u64;

    // 7. scanners: the whole body, before any connection to the upstream is opened
    scan(proxy, s, lim, log)?;

    // 8. outbound request: one head, signed as it is sent
    at.phase = Phase::Forward;
    let credential_read_ns = outbound::prepare(proxy, lim, s, &route, log.id.as_str()).await?;
    let method = s.head.method.get(&s.rbuf);
    let method_is_head = method == b"HEAD";
    let idempotent = request::idempotent(method);
    // the request is consumed; what follows it (pipelined bytes) stays for the next call
    body::consume(&mut s.rbuf, at.consumed);
    at.consumed = 0;
    if s.body.len() <= COALESCE_BODY {
        s.out.extend_from_slice(&s.body);
        s.body.clear();
    }

    // 9. upstream: send, then the response head
    log.upstream_started = Some(clock::now());
    let mut conn = send_request(w, proxy, lim, s, idempotent, method_is_head).await?;
    log.upstream_us = log.upstream_started.map(|t| t.elapsed().as_micros() as u64);
    log.upstream_status = Some(s.resp.status);
    if let Some(auth) = &proxy.auth {
        // a 401/403 to a kv: secret asks for one re-read of it (maybe it was rotated)
        auth.on_upstream_status(s.resp.status, credential_read_ns);
    }

    // 10. response to the agent (redacted on the way when the proxy asks for it)
    at.phase = Phase::Respond;
    let version = s.head.version;
    let mut plan = response::plan(
        &s.resp,
        &s.ubuf,
        proxy.redact.as_ref(),
        method_is_head,
        version,
    )
    .inspect_err(|_| {
        tracing::warn!(proxy = %proxy.name, "upstream response has an encoding the redactor cannot undo");
    })?;
    let keep = wants_keep && plan.framing != write::Framing::Close;
    let status = s.resp.status;
    s.out.clear();
    write::response_head(
        &mut s.out,
        status,
        s.resp.reason.get(&s.ubuf),
        &s.ubuf,
        &s.resp.headers,
        s.resp.connection.map(|c| c.get(&s.ubuf)),
        log.id.as_str(),
        &s.extra,
        plan.framing,
        keep,
        version,
        plan.drop_encoding,
    );
    log.status = status;
    let resp_head_len = s.resp.head_len;
    let upstream_keep = s.resp.keep_alive;
    let io = StreamIo {
        conn: &mut conn,
        client,
        ubuf: &mut s.ubuf,
        out: &mut s.out,
        read_timeout: lim.upstream_timeout,
        write_timeout: lim.idle_timeout,
        bytes_out: &mut log.bytes_out,
    };
    let end = response::relay(
        io,
        resp_head_len,
        plan.kind,
        plan.framing,
        plan.redactor.as_mut(),
    )
    .await;
    if let Some(r) = &plan.redactor {
        log.redactions = r.redactions();
    }
    Ok(match end {
        StreamEnd::Reusable if upstream_keep && !w.draining.get() => {
            w.pool.put(proxy.upstream.pool_key, conn);
            keep
        }
        StreamEnd::Reusable | StreamEnd::Complete => keep,
        StreamEnd::UpstreamFailed => {
            tracing::warn!(
                request_id = log.id.as_str(),
                "upstream failed mid-response; closing the agent connection"
            );
            false
        }
        StreamEnd::AgentGone => false,
    })
}

/// Stage 1: reads one request head into `s.rbuf` (which may already hold pipelined bytes).
async fn read_head(client: &mut TcpStream, s: &mut Scratch, lim: &Limits) -> Result<(), Stop> {
    let limits = head::Limits {
        max_head: lim.max_head,
        max_headers: lim.max_headers,
    };
    let bad = |why| Err(Stop::Refuse(Refusal::BadRequest(why)));
    let deadline = clock::now() + lim.head_timeout;
    loop {
        if !s.rbuf.is_empty() {
            match head::parse_request(&s.rbuf, &limits, &mut s.head) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(HeadError::TooLarge) => return bad("request head too large"),
                Err(HeadError::TooManyHeaders) => return bad("too many header fields"),
                Err(e @ HeadError::Invalid(_)) => return bad(e.message()),
            }
        }
        let room = (lim.max_head + 1).saturating_sub(s.rbuf.len()).max(1);
        match read_append(client, &mut s.rbuf, room, deadline).await {
            Ok(0) if s.rbuf.is_empty() => return Err(Stop::Quiet),
            Ok(0) => return bad("connection closed mid-head"),
            Ok(_) => {}
            Err(IoFail::Timeout) | Err(IoFail::Io(_)) => return Err(Stop::Quiet),
        }
    }
}

/// The agent's `X-Request-Id`, if it sent a usable one.
fn agent_request_id(head: &RequestHead, src: &[u8]) -> Option<RequestId> {
    find_header(&head.headers, src, b"x-request-id").and_then(RequestId::from_agent)
}

/// Stage 3: who is calling (this worker's JWT verifiers, with their token caches).
fn authenticate<'v>(view: &'v View, s: &Scratch, now_unix: i64) -> Result<Caller<'v>, Stop> {
    let mut verifiers = view.jwt.borrow_mut();
    let src = &s.rbuf;
    let headers = s
        .head
        .headers
        .iter()
        .map(|h| (h.name.get(src), h.value.get(src)));
    Ok(identity::authenticate(
        &view.cfg.identity,
        &mut verifiers,
        headers,
        now_unix,
    )?)
}

/// Stage 4: may this caller make this call. Records the deciding rule and the decision.
fn authorize(
    proxy: &Proxy,
    s: &Scratch,
    route: &Route,
    caller: &Caller<'_>,
    log: &mut CallLog<'_>,
) -> Result<(), Stop> {
    let src = &s.rbuf;
    let rest = &s.path[route.rest_start..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let query = s
        .head
        .target
        .get(src)
        .get(route.query.0..route.query.1)
        .unwrap_or(b"")
        .strip_prefix(b"?")
        .unwrap_or(b"");
    let roles: Vec<&str> = caller.roles().iter().map(String::as_str).collect();
    let headers = &s.head.headers;
    let decision = proxy.rules.decide(
        s.head.method.get(src),
        rest,
        caller.id(),
        &roles,
        query,
        |name: &str| find_header(headers, src, name.as_bytes()),
    );
    log.rule = decision.rule.and_then(|r| u32::try_from(r).ok());
    for r in &decision.report_hits {
        tracing::info!(target: "shadow", id = log.id.as_str(), proxy = %proxy.name, rule = r,
            "a report-mode rule would have changed this decision");
    }
    match decision.effect {
        Effect::Allow => {
            log.decision = Decision::Allow;
            Ok(())
        }
        Effect::Deny if decision.rule.is_some() => Err(Refusal::DeniedByRule.into()),
        Effect::Deny => Err(Refusal::NoRuleMatched.into()),
        Effect::Approve => {
            log.decision = Decision::Approve;
            Err(Refusal::ApprovalRequired.into())
        }
    }
}

/// Stage 5: how often. Adds the `RateLimit-*` fields to the answer either way.
async fn admit(proxy: &Proxy, s: &mut Scratch, caller: &Caller<'_>) -> Result<(), Stop> {
    let Some(m) = &proxy.meter else {
        return Ok(());
    };
    let read = matches!(s.head.method.get(&s.rbuf), b"GET" | b"HEAD" | b"OPTIONS");
    match m.admit(caller.id(), read).await {
        Verdict::Allowed(snap) => {
            write::rate_limit_headers(&mut s.extra, snap.limit, snap.remaining, snap.reset_secs());
            Ok(())
        }
        Verdict::Limited {
            snapshot,
            retry_after_ns,
            ..
        } => {
            write::rate_limit_headers(
                &mut s.extra,
                snapshot.limit,
                snapshot.remaining,
                snapshot.reset_secs(),
            );
            let retry_after = Verdict::retry_after_secs(retry_after_ns);
            Err(Refusal::RateLimited { retry_after }.into())
        }
        Verdict::Pending | Verdict::Unavailable => Err(Refusal::MeterUnavailable.into()),
    }
}

/// Stage 6: the body, read whole (answering `Expect: 100-continue` first). Returns where the
/// request ends in `s.rbuf`.
async fn read_body(client: &mut TcpStream, s: &mut Scratch, lim: &Limits) -> Result<usize, Stop> {
    let head_len = s.head.head_len;
    let kind = s.head.body;
    if let BodyKind::Length(n) = kind
        && n > lim.max_body
    {
        return Err(Refusal::BodyTooLarge.into());
    }
    let announced = match kind {
        BodyKind::Length(n) => n > 0,
        BodyKind::Chunked => true,
        BodyKind::None | BodyKind::CloseDelimited => false,
    };
    if s.head.expect_continue && announced && s.rbuf.len() == head_len {
        s.out.clear();
        s.out.extend_from_slice(CONTINUE_100);
        write_all(client, &mut s.out, lim.idle_timeout)
            .await
            .map_err(|_| Stop::Quiet)?;
    }
    let end = body::read(
        client,
        &mut s.rbuf,
        head_len,
        kind,
        lim.max_body,
        &mut s.body,
        lim.idle_timeout,
    )
    .await?;
    Ok(end)
}

/// Stage 7: the scanners over the whole (decoded) body.
fn scan(proxy: &Proxy, s: &Scratch, lim: &Limits, log: &mut CallLog<'_>) -> Result<(), Stop> {
    let Some(scanners) = &proxy.scanners else {
        return Ok(());
    };
    let encoding = find_header(&s.head.headers, &s.rbuf, b"content-encoding");
    let max_decoded = usize::try_from(lim.max_body).unwrap_or(usize::MAX);
    let outcome = scanners
        .scan_encoded(&s.body, encoding, max_decoded)
        .inspect_err(|_| log.decision = Decision::Deny)?;
    for h in &outcome.reports {
        tracing::info!(target: "shadow", id = log.id.as_str(), proxy = %proxy.name,
            scanner = h.scanner, "a report-mode scanner matched the request body");
    }
    if let Some(hit) = &outcome.blocked {
        log.scanner = Some(Arc::from(hit.scanner));
        log.decision = Decision::Deny;
        return Err(Refusal::PayloadBlocked {
            scanner: hit.scanner.to_string(),
        }
        .into());
    }
    if let Some(h) = outcome.reports.first() {
        log.scanner = Some(Arc::from(h.scanner));
    }
    Ok(())
}

/// Stage 9: sends `s.out` (+ `s.body`) upstream and reads the response head into
/// `s.ubuf`/`s.resp`. A pooled connection that turns out to be dead is replaced once by a
/// fresh one for idempotent methods.
async fn send_request(
    w: &Worker,
    proxy: &Proxy,
    lim: &Limits,
    s: &mut Scratch,
    idempotent: bool,
    method_is_head: bool,
) -> Result<UpConn, Stop> {
    let up = &proxy.upstream;
    let mut retried = false;
    loop {
        let (mut conn, reused) = match w.pool.take(up.pool_key, lim.upstream_idle_timeout) {
            Some(c) => (c, true),
            None => (w.pool.connect(up, lim.connect_timeout).await?, false),
        };
        let deadline = clock::now() + lim.upstream_timeout;
        let out_len = s.out.len();
        let mut sent = write_range(&mut conn, &mut s.out, 0..out_len, lim.upstream_timeout).await;
        if sent.is_ok() && !s.body.is_empty() {
            let body_len = s.body.len();
            sent = write_range(&mut conn, &mut s.body, 0..body_len, lim.upstream_timeout).await;
        }
        let res = match sent {
            Ok(()) => {
                response::read_head(
                    &mut conn,
                    &mut s.ubuf,
                    &mut s.resp,
                    method_is_head,
                    deadline,
                )
                .await
            }
            Err(IoFail::Timeout) => Err(HeadFail::Refused(Refusal::UpstreamTimeout)),
            Err(IoFail::Io(_)) => Err(HeadFail::ClosedEarly),
        };
        match res {
            Ok(()) => return Ok(conn),
            Err(HeadFail::ClosedEarly) if reused && idempotent && !retried => retried = true,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The one refusal exit: writes the gateway's own answer. `consumed` is how much of `s.rbuf`
/// the refused request took when the connection stays open (`None`: it closes). Returns
/// whether the connection stays open.
async fn refuse(
    client: &mut TcpStream,
    s: &mut Scratch,
    log: &mut CallLog<'_>,
    refusal: Refusal,
    consumed: Option<usize>,
    version: Version,
    lim: &Limits,
) -> bool {
    match consumed {
        // what follows the refused request (pipelined bytes) stays for the next call
        Some(n) => body::consume(&mut s.rbuf, n),
        None => s.rbuf.clear(),
    }
    let keep = consumed.is_some();
    log.status = refusal.status();
    log.code = Some(refusal.code());
    s.out.clear();
    write::error_response(
        &mut s.out,
        &refusal,
        log.id.as_str(),
        &s.extra,
        keep,
        version,
    );
    log.bytes_out = s.out.len() as u64;
    write_all(client, &mut s.out, lim.idle_timeout)
        .await
        .is_ok()
        && keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_after_a_refusal_is_a_function_of_the_phase() {
        use Phase::*;
        let denied = Refusal::DeniedByRule;
        let bad = Refusal::BadRequest("x");
        let cases: &[(&str, &Refusal, Phase, bool, bool)] = &[
            ("denied, no body: in sync", &denied, Decide, true, true),
            (
                "denied, unread body: out of sync",
                &denied,
                Decide,
                false,
                false,
            ),
            ("malformed target: never trusted", &bad, Decide, true, false),
            (
                "unknown proxy, no body",
                &Refusal::UnknownProxy,
                Decide,
                true,
                true,
            ),
            (
                "rate limited, no body",
                &Refusal::RateLimited { retry_after: 1 },
                Decide,
                true,
                true,
            ),
            (
                "body too large: unread",
                &Refusal::BodyTooLarge,
                Body,
                true,
                false,
            ),
            ("bad chunked body", &bad, Body, false, false),
            (
                "scanner hit",
                &Refusal::PayloadBlocked {
                    scanner: "s".into(),
                },
                Body,
                false,
                false,
            ),
            (
                "no OAuth2 token: request read",
                &Refusal::UpstreamAuthFailed("t"),
                Forward,
                false,
                true,
            ),
            (
                "secret unavailable: request read",
                &Refusal::SecretUnavailable("s"),
                Forward,
                false,
                true,
            ),
            (
                "upstream down: request read",
                &Refusal::UpstreamUnreachable("u"),
                Forward,
                true,
                true,
            ),
            (
                "upstream timeout",
                &Refusal::UpstreamTimeout,
                Forward,
                false,
                true,
            ),
            (
                "unredactable response",
                &Refusal::UpstreamUnreachable("r"),
                Respond,
                false,
                false,
            ),
        ];
        for (name, r, phase, bodiless, want) in cases {
            assert_eq!(keep_alive(r, *phase, *bodiless), *want, "{name}");
        }
    }

    #[test]
    fn stage_errors_convert_to_one_stop() {
        let cases: &[(&str, Stop, Stop)] = &[
            ("body gone", BodyFail::Gone.into(), Stop::Quiet),
            (
                "body too large",
                BodyFail::TooLarge.into(),
                Stop::Refuse(Refusal::BodyTooLarge),
            ),
            (
                "body bad",
                BodyFail::Bad("b").into(),
                Stop::Refuse(Refusal::BadRequest("b")),
            ),
            (
                "scan too large",
                ScanError::TooLarge.into(),
                Stop::Refuse(Refusal::BodyTooLarge),
            ),
            (
                "authn expired",
                AuthnError::CredentialExpired.into(),
                Stop::Refuse(Refusal::CredentialExpired),
            ),
            (
                "upstream closed early",
                HeadFail::ClosedEarly.into(),
                Stop::Refuse(Refusal::UpstreamUnreachable(
                    "upstream closed the connection without a response",
                )),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
        assert!(matches!(
            Stop::from(ScanError::UnsupportedEncoding),
            Stop::Refuse(Refusal::BadRequest(_))
        ));
    }
}
