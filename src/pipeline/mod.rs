//! The one place where the order of a call lives:
//! head → canonical path → route → authentication → authorization → meter → body → scanners →
//! outbound request (target credential) → upstream → response (redacted while it streams) →
//! agent; the `Exchange` drop guard writes the audit record whatever path the call took.
//! Each stage is a plain function in its own module; a `Refusal` jumps straight to the writer.
pub mod route;
use crate::config::{Compiled, Effect, Limits};
use crate::error::Refusal;
use crate::http::body::{self, BodyFail};
use crate::http::head::{self, BodyKind, HeadError, RequestHead, ResponseHead, Version};
use crate::http::io::{IoFail, read_append, write_all};
use crate::http::write::{self, CONTINUE_100, Framing};
use crate::identity;
use crate::observe::call::{Exchange, RequestId};
use crate::policy::meter::Verdict;
use crate::redact;
use crate::server::worker::Worker;
use crate::upstream::conn::UpConn;
use crate::upstream::request;
use crate::upstream::response::{self, HeadFail, StreamEnd, StreamIo};
use monoio::net::TcpStream;
use std::sync::Arc;

/// Per-request working memory, pooled per worker so a call allocates nothing on the way.
#[derive(Default)]
pub struct Scratch {
    /// Bytes read from the agent: the head, then (after the call) any pipelined bytes.
    pub rbuf: Vec<u8>,
    /// Bytes read from the upstream.
    pub ubuf: Vec<u8>,
    /// Bytes being written: the outbound request head, then the agent's response head.
    pub out: Vec<u8>,
    /// The request body.
    pub body: Vec<u8>,
    pub head: RequestHead,
    pub resp: ResponseHead,
    /// The canonical path.
    pub path: String,
    /// Header lines the gateway adds to its answer (`RateLimit-*`).
    pub extra: Vec<u8>,
}

/// Bodies up to this size are copied behind the outbound head and sent in one write.
const COALESCE_BODY: usize = 16 * 1024;

enum HeadRead {
    Ok,
    /// Nothing to answer: the agent closed, stalled or the read failed.
    Quiet,
    Bad(&'static str),
}

/// Serves one call on `client`. Returns whether the agent connection stays open; `s.rbuf`
/// then holds only the bytes of the next (pipelined) request.
pub async fn exchange(w: &Worker, client: &mut TcpStream, s: &mut Scratch) -> bool {
    let cfg = w.config();
    let lim = &cfg.limits;

    s.extra.clear();
    // 1. head
    match read_head(client, s, lim).await {
        HeadRead::Ok => {}
        HeadRead::Quiet => return false,
        HeadRead::Bad(why) => {
            let mut ex = Exchange::new(w.next_id(), w.audit.as_deref(), Some(&w.metrics));
            return refuse(
                client,
                s,
                &mut ex,
                Refusal::BadRequest(why),
                false,
                Version::Http11,
                lim,
            )
            .await;
        }
    }
    let id = agent_request_id(&s.head, &s.rbuf).unwrap_or_else(|| w.next_id());
    let mut ex = Exchange::new(id, w.audit.as_deref(), Some(&w.metrics));
    ex.method = crate::observe::audit::SmallStr::new(
        std::str::from_utf8(s.head.method.get(&s.rbuf)).unwrap_or("?"),
    );
    let version = s.head.version;
    let head_len = s.head.head_len;
    // a refusal before the body is read keeps the connection only if there is no body
    let keep = s.head.keep_alive && !w.draining.get();
    let keep_if_no_body = keep && matches!(s.head.body, BodyKind::None | BodyKind::Length(0));

    // 2. canonical path and route
    let route = match route::resolve(&cfg, s.head.target.get(&s.rbuf), &mut s.path) {
        Ok(r) => r,
        Err(r) => {
            // a malformed target closes the connection, like every other 400
            let keep = keep_if_no_body && !matches!(r, Refusal::BadRequest(_));
            return refuse(client, s, &mut ex, r, keep, version, lim).await;
        }
    };
    ex.proxy = Some(route.proxy);
    ex.metrics_slot = w.metrics.slot(&cfg, route.proxy);
    let proxy = &cfg.proxies[route.proxy];
    if w.audit.is_some() {
        ex.proxy_name = Some(proxy.name_arc.clone());
        ex.path.push_str(&s.path);
    }

    // 3. authentication
    let authenticated = {
        let mut verifiers = w.jwt_verifiers(&cfg);
        let src = &s.rbuf;
        let headers = s
            .head
            .headers
            .iter()
            .map(|h| (h.name.get(src), h.value.get(src)));
        let now = crate::util::clock::unix_now().as_secs() as i64;
        identity::authenticate(&cfg.identity, &mut verifiers, headers, now)
    };
    let caller = match authenticated {
        Ok(c) => c,
        Err(r) => return refuse(client, s, &mut ex, r, keep_if_no_body, version, lim).await,
    };
    if w.audit.is_some() {
        ex.agent = caller.id().map(Arc::from);
    }

    // 4. authorization: the rule trie over the canonical path below the proxy
    let decision = {
        let src = &s.rbuf;
        let rest = &s.path[route.rest_start..];
        let rest = if rest.is_empty() { "/" } else { rest };
        let target = s.head.target.get(src);
        let query = target
            .get(route.query.0..route.query.1)
            .unwrap_or(b"")
            .strip_prefix(b"?")
            .unwrap_or(b"");
        let roles: Vec<&str> = caller.roles().iter().map(String::as_str).collect();
        let headers = &s.head.headers;
        proxy.rules.decide(
            s.head.method.get(src),
            rest,
            caller.id(),
            &roles,
            query,
            |name: &str| {
                headers
                    .iter()
                    .find(|h| h.name.get(src).eq_ignore_ascii_case(name.as_bytes()))
                    .map(|h| h.value.get(src))
            },
        )
    };
    ex.rule = decision.rule.and_then(|r| u32::try_from(r).ok());
    for r in &decision.report_hits {
        tracing::info!(target: "shadow", id = ex.id.as_str(), proxy = %proxy.name, rule = r,
            "a report-mode rule would have changed this decision");
    }
    let refusal = match decision.effect {
        Effect::Allow => None,
        Effect::Deny if decision.rule.is_some() => Some(Refusal::DeniedByRule),
        Effect::Deny => Some(Refusal::NoRuleMatched),
        Effect::Approve => {
            ex.decision = crate::observe::audit::Decision::Approve;
            Some(Refusal::ApprovalRequired)
        }
    };
    if let Some(r) = refusal {
        return refuse(client, s, &mut ex, r, keep_if_no_body, version, lim).await;
    }
    ex.decision = crate::observe::audit::Decision::Allow;

    // 5. meter (in cluster mode it may wait for a refill from Redis, at most 50 ms)
    if let Some(m) = &proxy.meter {
        let read = matches!(s.head.method.get(&s.rbuf), b"GET" | b"HEAD" | b"OPTIONS");
        let verdict = if m.cluster().is_some() {
            m.check_wait(caller.id(), read).await
        } else {
            m.check(caller.id(), crate::util::clock::mono_ns())
        };
        match verdict {
            Verdict::Allowed(snap) => write::rate_limit_headers(
                &mut s.extra,
                snap.limit,
                snap.remaining,
                snap.reset_secs(),
            ),
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
                return refuse(
                    client,
                    s,
                    &mut ex,
                    Refusal::RateLimited { retry_after },
                    keep_if_no_body,
                    version,
                    lim,
                )
                .await;
            }
            Verdict::Pending | Verdict::Unavailable => {
                return refuse(
                    client,
                    s,
                    &mut ex,
                    Refusal::MeterUnavailable,
                    keep_if_no_body,
                    version,
                    lim,
                )
                .await;
            }
        }
    }

    // 6. body, read whole before anything goes upstream
    if let BodyKind::Length(n) = s.head.body {
        if n > lim.max_body {
            return refuse(
                client,
                s,
                &mut ex,
                Refusal::BodyTooLarge,
                false,
                version,
                lim,
            )
            .await;
        }
        if s.head.expect_continue && n > 0 && s.rbuf.len() == head_len {
            s.out.clear();
            s.out.extend_from_slice(CONTINUE_100);
            if write_all(client, &mut s.out, lim.idle_timeout)
                .await
                .is_err()
            {
                return false;
            }
        }
    } else if s.head.body == BodyKind::Chunked && s.head.expect_continue && s.rbuf.len() == head_len
    {
        s.out.clear();
        s.out.extend_from_slice(CONTINUE_100);
        if write_all(client, &mut s.out, lim.idle_timeout)
            .await
            .is_err()
        {
            return false;
        }
    }
    let kind = s.head.body;
    let body_end = match body::read(
        client,
        &mut s.rbuf,
        head_len,
        kind,
        lim.max_body,
        &mut s.body,
        lim.idle_timeout,
    )
    .await
    {
        Ok(end) => end,
        Err(BodyFail::Gone) => return false,
        Err(BodyFail::TooLarge) => {
            return refuse(
                client,
                s,
                &mut ex,
                Refusal::BodyTooLarge,
                false,
                version,
                lim,
            )
            .await;
        }
        Err(BodyFail::Bad(why)) => {
            return refuse(
                client,
                s,
                &mut ex,
                Refusal::BadRequest(why),
                false,
                version,
                lim,
            )
            .await;
        }
    };
    ex.bytes_in = (head_len + s.body.len()) as u64;

    // 7. scanners: the whole body, before any connection to the upstream is opened
    if let Some(scanners) = &proxy.scanners {
        let src = &s.rbuf;
        // every field line: the scanner combines repeated Content-Encoding lines (RFC 9110)
        // and reads Content-Type for its decoded views
        let fields = s
            .head
            .headers
            .iter()
            .map(|h| (h.name.get(src), h.value.get(src)));
        let max_decoded = usize::try_from(lim.max_body).unwrap_or(usize::MAX);
        let refusal = match scanners.scan_request(&s.body, fields, max_decoded) {
            Ok(outcome) => {
                for h in &outcome.reports {
                    tracing::info!(target: "shadow", id = ex.id.as_str(), proxy = %proxy.name,
                        scanner = h.scanner, "a report-mode scanner matched the request body");
                }
                if let Some(hit) = &outcome.blocked {
                    ex.scanner = Some(Arc::from(hit.scanner));
                    Some(Refusal::PayloadBlocked {
                        scanner: hit.scanner.to_string(),
                    })
                } else {
                    if let Some(h) = outcome.reports.first() {
                        ex.scanner = Some(Arc::from(h.scanner));
                    }
                    None
                }
            }
            Err(crate::scan::ScanError::TooLarge) => Some(Refusal::BodyTooLarge),
            Err(crate::scan::ScanError::UnsupportedEncoding) => Some(Refusal::BadRequest(
                "the request body's Content-Encoding cannot be scanned",
            )),
            Err(crate::scan::ScanError::Corrupt) => Some(Refusal::BadRequest(
                "the request body does not decode with its Content-Encoding",
            )),
        };
        if let Some(r) = refusal {
            ex.decision = crate::observe::audit::Decision::Deny;
            // the body is still in the read buffer: close rather than resynchronise
            return refuse(client, s, &mut ex, r, false, version, lim).await;
        }
    }

    // 8. outbound request
    s.out.clear();
    let target = s.head.target.get(&s.rbuf);
    let query = &target[route.query.0..route.query.1];
    let rest_path = &s.path[route.rest_start..];
    let mut auth_headers = Vec::new();
    let mut auth_query = zeroize::Zeroizing::new(String::new());
    // when the credential was read (a 401/403 to it asks for one re-read of its kv: secrets)
    let mut credential_read_ns = 0;
    if let Some(auth) = &proxy.auth {
        // a kv: secret being re-read after an upstream rejected it: wait (bounded) for it
        if auth.kv_entries().next().is_some() {
            crate::secrets::kv::settle(auth, lim.connect_timeout).await;
            credential_read_ns = crate::util::clock::mono_ns();
        }
        // an OAuth2 proxy's access token: waits (bounded) for the first one
        let token = match &proxy.oauth {
            None => None,
            Some(b) => {
                match crate::credentials::token_source::token(&b.source, lim.connect_timeout).await
                {
                    Ok(t) => Some(t),
                    Err(why) => {
                        tracing::warn!(proxy = %proxy.name, reason = why, "no OAuth2 access token for the call");
                        return refuse(
                            client,
                            s,
                            &mut ex,
                            Refusal::UpstreamAuthFailed(why),
                            keep,
                            version,
                            lim,
                        )
                        .await;
                    }
                }
            }
        };
        let now = crate::util::clock::unix_now().as_secs() as i64;
        if let Err(e) = request::credential(
            auth,
            &s.rbuf,
            &s.head,
            proxy,
            rest_path,
            query,
            &s.body,
            now,
            token
                .as_deref()
                .map(crate::credentials::token_source::Token::secret),
            &mut auth_headers,
            &mut auth_query,
        ) {
            tracing::warn!(proxy = %proxy.name, error = %e, "cannot produce the target credential");
            let r = match e {
                crate::credentials::AuthApplyError::SecretUnavailable(why) => {
                    Refusal::SecretUnavailable(why)
                }
                _ => Refusal::UpstreamAuthFailed(request::credential_failure(&e)),
            };
            return refuse(client, s, &mut ex, r, false, version, lim).await;
        }
    }
    request::build(
        &mut s.out,
        &s.rbuf,
        &s.head,
        proxy,
        rest_path,
        query,
        ex.id.as_str(),
        s.body.len() as u64,
        &auth_headers,
        &auth_query,
    );
    drop(auth_headers);
    drop(auth_query);
    let method_is_head = s.head.method.get(&s.rbuf) == b"HEAD";
    let idempotent = request::idempotent(s.head.method.get(&s.rbuf));
    // the request is consumed; what follows it (pipelined bytes) stays for the next call
    body::consume(&mut s.rbuf, body_end);
    s.head.head_len = 0;
    if s.body.len() <= COALESCE_BODY {
        s.out.extend_from_slice(&s.body);
        s.body.clear();
    }

    // 9. upstream: send, then the response head
    ex.upstream_started = Some(crate::util::clock::now());
    let mut conn = match send_request(w, &cfg, route.proxy, s, idempotent, method_is_head).await {
        Ok(c) => c,
        Err(r) => return refuse(client, s, &mut ex, r, keep, version, lim).await,
    };
    ex.upstream_us = ex.upstream_started.map(|t| t.elapsed().as_micros() as u64);
    ex.upstream_status = Some(s.resp.status);

    // 10. response to the agent (redacted on the way when the proxy asks for it)
    let status = s.resp.status;
    if matches!(status, 401 | 403)
        && credential_read_ns != 0
        && let Some(auth) = &proxy.auth
    {
        // the upstream refused a kv: secret: maybe it was rotated; re-read it once
        for e in auth.kv_entries() {
            e.upstream_rejected(credential_read_ns, status);
        }
    }
    let no_body = method_is_head || status == 204 || status == 304;
    let mut redactor = None;
    let mut drop_encoding = false;
    if let Some(r) = &proxy.redact
        && !no_body
        && let Some(bt) = response::header(&s.resp, &s.ubuf, b"content-type")
            .and_then(redact::response::body_type)
    {
        let Some(enc) =
            redact::response::encoding(response::header(&s.resp, &s.ubuf, b"content-encoding"))
        else {
            tracing::warn!(proxy = %proxy.name, "upstream response has an encoding the redactor cannot undo");
            return refuse(
                client,
                s,
                &mut ex,
                Refusal::UpstreamUnreachable(
                    "the upstream response is encoded in a way that cannot be redacted",
                ),
                false,
                version,
                lim,
            )
            .await;
        };
        drop_encoding = enc != redact::response::Encoding::Identity;
        redactor = Some(redact::response::ResponseRedactor::new(
            &r.program,
            bt,
            enc,
            r.on_invalid,
        ));
    }
    let framing = match s.resp.body {
        _ if redactor.is_some() && version == Version::Http11 => Framing::Chunked,
        _ if redactor.is_some() => Framing::Close,
        _ if no_body => Framing::NoBody(if status == 204 {
            None
        } else {
            response::content_length(&s.resp, &s.ubuf)
        }),
        BodyKind::None => Framing::Length(0),
        BodyKind::Length(n) => Framing::Length(n),
        BodyKind::Chunked | BodyKind::CloseDelimited if version == Version::Http11 => {
            Framing::Chunked
        }
        BodyKind::Chunked | BodyKind::CloseDelimited => Framing::Close,
    };
    let keep = keep && framing != Framing::Close;
    s.out.clear();
    write::response_head(
        &mut s.out,
        status,
        s.resp.reason.get(&s.ubuf),
        &s.ubuf,
        &s.resp.headers,
        s.resp.connection.map(|c| c.get(&s.ubuf)),
        ex.id.as_str(),
        &s.extra,
        framing,
        keep,
        version,
        drop_encoding,
    );
    ex.status = status;
    let resp_head_len = s.resp.head_len;
    let upstream_keep = s.resp.keep_alive;
    let io = StreamIo {
        conn: &mut conn,
        client,
        ubuf: &mut s.ubuf,
        out: &mut s.out,
        read_timeout: lim.upstream_timeout,
        write_timeout: lim.idle_timeout,
        bytes_out: &mut ex.bytes_out,
    };
    let kind = if no_body { BodyKind::None } else { s.resp.body };
    let end = match &mut redactor {
        None => response::stream_body(io, resp_head_len, kind, framing).await,
        Some(r) => {
            let end = response::stream_redacted(io, resp_head_len, kind, framing, r).await;
            ex.redactions = r.redactions();
            end
        }
    };
    match end {
        StreamEnd::Reusable if upstream_keep && !w.draining.get() => {
            w.pool.put(cfg.proxies[route.proxy].upstream.pool_key, conn);
            keep
        }
        StreamEnd::Reusable | StreamEnd::Complete => keep,
        StreamEnd::UpstreamFailed => {
            tracing::warn!(
                request_id = ex.id.as_str(),
                "upstream failed mid-response; closing the agent connection"
            );
            false
        }
        StreamEnd::AgentGone => false,
    }
}

/// Reads one request head into `s.rbuf` (which may already hold pipelined bytes).
async fn read_head(client: &mut TcpStream, s: &mut Scratch, lim: &Limits) -> HeadRead {
    let limits = head::Limits {
        max_head: lim.max_head,
        max_headers: lim.max_headers,
    };
    let deadline = crate::util::clock::now() + lim.head_timeout;
    loop {
        if !s.rbuf.is_empty() {
            match head::parse_request(&s.rbuf, &limits, &mut s.head) {
                Ok(true)
                    if s.head.underscore_names
                        && lim.underscore_headers == crate::http::hop::Underscores::Refuse =>
                {
                    return HeadRead::Bad("header name holds an underscore");
                }
                Ok(true) => return HeadRead::Ok,
                Ok(false) => {}
                Err(HeadError::TooLarge) => return HeadRead::Bad("request head too large"),
                Err(HeadError::TooManyHeaders) => return HeadRead::Bad("too many header fields"),
                Err(e @ HeadError::Invalid(_)) => return HeadRead::Bad(e.message()),
            }
        }
        let room = (lim.max_head + 1).saturating_sub(s.rbuf.len()).max(1);
        match read_append(client, &mut s.rbuf, room, deadline).await {
            Ok(0) if s.rbuf.is_empty() => return HeadRead::Quiet,
            Ok(0) => return HeadRead::Bad("connection closed mid-head"),
            Ok(_) => {}
            Err(IoFail::Timeout) | Err(IoFail::Io(_)) => return HeadRead::Quiet,
        }
    }
}

/// The agent's `X-Request-Id`, if it sent a usable one.
fn agent_request_id(head: &RequestHead, src: &[u8]) -> Option<RequestId> {
    head.headers
        .iter()
        .find(|h| h.name.get(src).eq_ignore_ascii_case(b"x-request-id"))
        .and_then(|h| RequestId::from_agent(h.value.get(src)))
}

/// Sends `s.out` (+ `s.body`) upstream and reads the response head into `s.ubuf`/`s.resp`.
/// A pooled connection that turns out to be dead is replaced once by a fresh one for
/// idempotent methods.
async fn send_request(
    w: &Worker,
    cfg: &Compiled,
    proxy: usize,
    s: &mut Scratch,
    idempotent: bool,
    method_is_head: bool,
) -> Result<UpConn, Refusal> {
    let up = &cfg.proxies[proxy].upstream;
    let lim = &cfg.limits;
    let mut retried = false;
    loop {
        let (mut conn, reused) = match w.pool.take(up.pool_key, lim.upstream_idle_timeout) {
            Some(c) => (c, true),
            None => (w.pool.connect(up, lim.connect_timeout).await?, false),
        };
        let deadline = crate::util::clock::now() + lim.upstream_timeout;
        let out_len = s.out.len();
        let mut sent =
            crate::http::io::write_range(&mut conn, &mut s.out, 0..out_len, lim.upstream_timeout)
                .await;
        if sent.is_ok() && !s.body.is_empty() {
            let body_len = s.body.len();
            sent = crate::http::io::write_range(
                &mut conn,
                &mut s.body,
                0..body_len,
                lim.upstream_timeout,
            )
            .await;
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
            Err(HeadFail::ClosedEarly) if reused && idempotent && !retried => {
                retried = true;
                continue;
            }
            Err(HeadFail::ClosedEarly) => {
                return Err(Refusal::UpstreamUnreachable(
                    "upstream closed the connection without a response",
                ));
            }
            Err(HeadFail::Refused(r)) => return Err(r),
        }
    }
}

/// Writes the gateway's own answer. Returns whether the connection stays open.
async fn refuse(
    client: &mut TcpStream,
    s: &mut Scratch,
    ex: &mut Exchange<'_>,
    refusal: Refusal,
    keep: bool,
    version: Version,
    lim: &Limits,
) -> bool {
    if !keep {
        s.rbuf.clear();
    } else {
        // a refused request without a body: drop its head (zero once consumed), keep
        // pipelined bytes
        body::consume(&mut s.rbuf, s.head.head_len);
    }
    ex.status = refusal.status();
    ex.code = Some(refusal.code());
    s.out.clear();
    write::error_response(
        &mut s.out,
        &refusal,
        ex.id.as_str(),
        &s.extra,
        keep,
        version,
    );
    ex.bytes_out = s.out.len() as u64;
    write_all(client, &mut s.out, lim.idle_timeout)
        .await
        .is_ok()
        && keep
}
