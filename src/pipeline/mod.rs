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
//! modules, and the few lines that adapt each to the call's state live in `stages.rs` (and
//! `outbound.rs` for the target credential). `state.rs` holds the worker and its view of the
//! config; `stop.rs` the refusal exit's rules.
pub mod connect;
mod hold;
pub mod outbound;
pub mod route;
mod stages;
mod state;
mod stop;
use stages::{
    admit, agent_request_id, authenticate, authorize, charge_budgets, check_budgets,
    forwarded_client, mcp_policy, read_body, read_head, reserve_budgets, scan, send_request,
    traceparent,
};
pub use state::{Scratch, View, Worker};
pub use stop::{Phase, Stop, keep_alive};

use crate::config::Limits;
use crate::error::Refusal;
use crate::http::body;
use crate::http::head::{BodyKind, Version};
use crate::http::io::write_all;
use crate::http::write;
use crate::net::agent_io::AgentIo;
use crate::observe::audit::SmallStr;
use crate::observe::call::CallLog;
use crate::observe::trace::Stage;
use crate::redact::mask::Masker;
use crate::upstream::request;
use crate::upstream::response::{self, StreamEnd, StreamIo};
use crate::util::clock;
use std::sync::Arc;

/// Bodies up to this size are copied behind the outbound head and sent in one write.
const COALESCE_BODY: usize = 16 * 1024;

/// What `serve_call` needs to answer a refusal.
struct Progress {
    phase: Phase,
    /// Bytes of `s.rbuf` that belong to this request (dropped before a kept connection reads
    /// the next one).
    consumed: usize,
}

/// Serves one call on `client`. Returns whether the agent connection stays open; `s.rbuf`
/// then holds only the bytes of the next (pipelined) request.
pub async fn serve_call(w: &Worker, client: &mut AgentIo, s: &mut Scratch) -> bool {
    let view = w.view();
    let lim = &view.cfg.limits;
    s.extra.clear();
    release_body(s);
    // 1. head
    match read_head(client, s, lim).await {
        Ok(()) => {}
        Err(Stop::Quiet) => return false,
        Err(Stop::Refuse(r)) => {
            let mut log = CallLog::new(w.next_id(), w.audit.as_deref(), Some(&w.metrics));
            log.client = s.peer;
            return refuse(client, s, &mut log, r, None, Version::Http11, lim).await;
        }
    }
    // the record's id is always the gateway's: an agent cannot forge or collide audit ids; its
    // own X-Request-Id (checked, bounded) is kept beside it
    let mut log = CallLog::new(w.next_id(), w.audit.as_deref(), Some(&w.metrics));
    log.agent_request_id = agent_request_id(&s.head, &s.rbuf);
    // W3C trace context: continued or started (`[telemetry] otlp`), else only noted
    log.start_trace(w.tracer.as_ref(), traceparent(&s.head, &s.rbuf));
    log.client = s.peer;
    log.forwarded_for =
        forwarded_client(&view.cfg.server.trusted_proxies, s.peer, &s.head, &s.rbuf);
    log.method = SmallStr::new(std::str::from_utf8(s.head.method.get(&s.rbuf)).unwrap_or("?"));
    let version = s.head.version;
    let wants_keep = s.head.keep_alive && !w.draining.get();
    let bodiless = matches!(s.head.body, BodyKind::None | BodyKind::Length(0));
    if s.head.method.get(&s.rbuf) == b"CONNECT" {
        return connect(w, &view, client, s, &mut log).await;
    }
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
    client: &mut AgentIo,
    s: &mut Scratch,
    log: &mut CallLog<'_>,
    at: &mut Progress,
    wants_keep: bool,
) -> Result<bool, Stop> {
    let cfg = &*view.cfg;
    let lim = &cfg.limits;
    let now_unix = clock::unix_now().as_secs() as i64;

    // 2. canonical path and route (inside an intercepted tunnel: by the CONNECT's origin)
    let target = s.head.target.get(&s.rbuf);
    let route = match s.tunnel.as_deref() {
        None => route::resolve(cfg, target, &mut s.path)?,
        Some(t) => {
            log.tunnel = Some(crate::observe::audit::record::TunnelKind::Intercept);
            let host = s.head.host.map(|h| h.get(&s.rbuf));
            route::resolve_in_tunnel(cfg, (&t.host, t.port), host, target, &mut s.path)?
        }
    };
    let proxy = &cfg.proxies[route.proxy];
    log.proxy = Some(route.proxy);
    log.metrics_slot = view.slots.get(route.proxy).copied();
    if log.keeps_names() {
        log.proxy_name = Some(proxy.name_arc.clone());
        log.path.push_str(&s.path);
    }

    // 3. identity
    let managed = w.managed();
    let (caller, via) = authenticate(view, managed.as_deref(), s, now_unix)?;
    log.auth = via;
    if log.keeps_names() {
        log.agent = caller.id().map(Arc::from);
    }
    log.mark(Stage::Authn);

    // 4. authorization: the rule trie over the canonical path below the proxy (`held`: an
    // approve rule decided)
    let held = authorize(proxy, s, &route, &caller, log)?;
    log.mark(Stage::Authz);

    // 5. meter (in cluster mode it may wait for a refill from Redis, at most 50 ms)
    admit(proxy, s, &caller).await?;
    log.mark(Stage::Meter);

    // 6. body, read whole before anything goes upstream
    at.phase = Phase::Body;
    at.consumed = read_body(client, s, lim, &w.bodies).await?;
    log.bytes_in = (s.head.head_len + s.body.len()) as u64;

    // 7. scanners: the whole body, before any connection to the upstream is opened
    scan(proxy, s, lim, log)?;

    // 7c. MCP: each JSON-RPC message decided by the rules that name MCP methods, tools,
    // resources or prompts (`protocol = "mcp"` proxies only)
    let (held, list_req) = mcp_policy(proxy, s, &route, &caller, log, held)?;
    log.mark(Stage::BodyScan);

    // 7d. budgets: the call starts only while each of its budgets (those of the rule that
    // decided it, and the proxy's) has something left
    check_budgets(proxy, &caller, log.rule, now_unix.max(0) as u64)?;

    // 8. outbound request: one head, signed as it is sent (under `[audit] on_error =
    // "refuse"`, only if the call can be recorded)
    at.phase = Phase::Forward;
    log.audit_gate()?;

    // 7b. approval: a held call waits for a human decision, and goes on only if approved
    if held {
        hold::hold(
            w,
            proxy,
            client,
            s,
            &route,
            &caller,
            log,
            lim.upstream_timeout,
        )
        .await?;
        log.mark(Stage::Approval);
    }
    // 8b. budgets with `reserve`: the request's number (e.g. max_tokens) charged now, settled
    // after the response (refunded if the call ends before one)
    let mut reserved = reserve_budgets(proxy, &caller, log.rule, &s.body, &mut s.ubuf);
    // the gateway's own `traceparent` replaces the agent's when it takes part in the trace
    let tp = log.trace.outbound();
    let credential_read_ns =
        outbound::prepare(proxy, lim, s, &route, log.id.as_str(), tp.as_ref()).await?;
    log.mark(Stage::Credential);
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
    let sent = send_request(w, proxy, lim, s, idempotent, method_is_head, log).await;
    // the body is upstream (or the call failed): its memory and reservation go now, not when
    // the response has streamed
    release_body(s);
    let mut conn = sent?;
    log.mark(Stage::FirstByte);
    log.upstream_us = log.upstream_started.map(|t| t.elapsed().as_micros() as u64);
    log.upstream_status = Some(s.resp.status);
    if let Some(auth) = &proxy.auth {
        // a 401/403 to a kv: secret asks for one re-read of it (maybe it was rotated)
        auth.on_upstream_status(s.resp.status, credential_read_ns);
    }

    // 10. response to the agent (redacted on the way when the proxy asks for it)
    at.phase = Phase::Respond;
    let version = s.head.version;
    // the secrets the credential injected are masked in what comes back (none: no masker)
    let mut masker = Masker::new(s.marks.iter().map(|m| m.as_slice()));
    let mut plan = response::plan(
        &s.resp,
        &s.ubuf,
        proxy.redact.as_ref(),
        method_is_head,
        version,
        masker.is_some(),
        list_req.is_some(),
    )
    .inspect_err(|_| {
        tracing::warn!(proxy = %proxy.name, "upstream response has an encoding the gateway cannot undo");
    })?;
    if let Some(m) = masker.as_mut() {
        log.secret_reflected = response::mask_head(&s.resp, &mut s.ubuf, m);
    }
    let keep = wants_keep && plan.framing != write::Framing::Close;
    let status = s.resp.status;
    log.status = status;
    // fsync = "always" + on_error = "refuse": the record is on disk before the response leaves
    log.durable(lim.upstream_timeout).await?;
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
    // the budgets' values: read from the body by the redaction engine as it streams, or
    // from a response header (read now: the relay reuses the buffer)
    let mut readings =
        crate::redact::usage::Readings::new(proxy.budgets.iter().map(|b| match &b.source {
            crate::policy::budget::Source::Body(v) => Some(v),
            crate::policy::budget::Source::Header(_) => None,
        }));
    let header_values: Vec<Option<Option<f64>>> = proxy
        .budgets
        .iter()
        .map(|b| match &b.source {
            crate::policy::budget::Source::Header(h) => {
                response::header(&s.resp, &s.ubuf, h.as_bytes())
                    .map(crate::redact::usage::header_value)
            }
            crate::policy::budget::Source::Body(_) => None,
        })
        .collect();
    // MCP list answers (`tools/list`, ...): filtered per caller while they stream
    let mut lists = list_req.and_then(|r| {
        let mode = match response::header(&s.resp, &s.ubuf, b"content-type")
            .and_then(crate::redact::response::body_type)?
        {
            crate::redact::response::BodyType::Json => crate::mcp::lists::Mode::Json,
            crate::redact::response::BodyType::Sse => crate::mcp::lists::Mode::Sse,
        };
        let max = proxy.mcp.as_ref().map_or(0, |m| m.max_list);
        Some(crate::mcp::lists::ListFilter::new(
            Box::new(r.ctx),
            mode,
            r.lists,
            r.batch,
            max,
            log.id.as_str(),
        ))
    });
    let resp_head_len = s.resp.head_len;
    let upstream_keep = s.resp.keep_alive;
    let io = StreamIo {
        conn: &mut conn,
        client,
        ubuf: &mut s.ubuf,
        out: &mut s.out,
        read_timeout: lim.upstream_stream_timeout,
        write_timeout: lim.idle_timeout,
        bytes_out: &mut log.bytes_out,
    };
    let end = response::relay(
        io,
        resp_head_len,
        plan.kind,
        plan.framing,
        response::BodyRead {
            redactor: plan.redactor.as_mut(),
            observe: plan.observe,
            readings: (!proxy.budgets.is_empty()).then_some(&mut readings),
            lists: lists.as_mut(),
        },
        masker.as_mut(),
    )
    .await;
    // 11. budgets charged what the response said
    if !proxy.budgets.is_empty() {
        charge_budgets(
            proxy,
            &caller,
            &header_values,
            &readings,
            &mut reserved,
            log,
        );
    }
    log.mark(Stage::Relay);
    if let Some(l) = &lists {
        let st = l.stats();
        log.redactions += u64::from(st.masked);
        if let Some(note) = log.mcp.as_deref_mut() {
            note.hidden = st.hidden + st.malformed + st.screened + st.changed;
            note.screened = st.screened;
            note.changed = st.changed;
            note.list_refused = st.refused;
        }
        w.metrics.mcp_lists(
            u64::from(st.hidden + st.malformed + st.screened + st.changed),
            u64::from(st.screened),
            u64::from(st.changed),
            u64::from(st.refused),
        );
        if st.malformed > 0 || st.refused > 0 {
            tracing::warn!(
                proxy = %proxy.name,
                request_id = log.id.as_str(),
                malformed = st.malformed,
                refused = st.refused,
                "MCP list answer: entries removed as malformed, or answers refused"
            );
        }
    }
    if let Some(r) = &plan.redactor {
        // `+=`: masks in MCP tool results were counted just before
        log.redactions += r.redactions();
    }
    if let Some(m) = &masker
        && m.hits() > 0
    {
        log.secret_reflected = m.hits();
        tracing::warn!(
            proxy = %proxy.name,
            request_id = log.id.as_str(),
            masked = m.hits(),
            "the upstream reflected the injected secret: masked"
        );
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

/// A CONNECT (`connect::decide`): refused through the one refusal exit (the connection then
/// closes), or answered 200 with the upgrade left in `s.upgrade` for the worker's connection
/// loop. The CONNECT's own log writes no record once accepted: an intercepted tunnel's calls
/// are recorded one by one, a blind tunnel by `connect::splice` when it ends.
async fn connect(
    w: &Worker,
    view: &View,
    client: &mut AgentIo,
    s: &mut Scratch,
    log: &mut CallLog<'_>,
) -> bool {
    let lim = &view.cfg.limits;
    let version = s.head.version;
    match connect::decide(view, w, s, log).await {
        Ok(mut up) => {
            log.disarm();
            body::consume(&mut s.rbuf, s.head.head_len);
            up.set_early(std::mem::take(&mut s.rbuf));
            s.out.clear();
            s.out
                .extend_from_slice(b"HTTP/1.1 200 Connection Established\r\n\r\n");
            if write_all(client, &mut s.out, lim.idle_timeout)
                .await
                .is_err()
            {
                return false;
            }
            s.upgrade = Some(up);
            true
        }
        Err(Stop::Quiet) => false,
        Err(Stop::Refuse(r)) => refuse(client, s, log, r, None, version, lim).await,
    }
}

/// Frees the request body's buffer (a large one; a small one stays for reuse) and gives its
/// reservation back to the worker's `max_body_memory`.
fn release_body(s: &mut Scratch) {
    s.body.clear();
    if s.body.capacity() > MAX_KEPT_BODY {
        s.body = Vec::new();
    }
    s.body_lease = None;
}

/// A body buffer up to this capacity is kept with the call's scratch set after it is sent.
const MAX_KEPT_BODY: usize = 64 * 1024;

/// The one refusal exit: writes the gateway's own answer. `consumed` is how much of `s.rbuf`
/// the refused request took when the connection stays open (`None`: it closes). Returns
/// whether the connection stays open.
async fn refuse(
    client: &mut AgentIo,
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
    release_body(s);
    log.status = refusal.status();
    log.code = Some(refusal.code());
    // fsync = "always" + on_error = "refuse": the refusal's record is on disk first too (if it
    // cannot be, the refusal goes out anyway: nothing was released upstream)
    let _ = log.durable(lim.upstream_timeout).await;
    s.out.clear();
    match s.mcp_refused.take() {
        // an MCP call its policy refused: JSON-RPC errors, one per request, that the agent's
        // model reads as the tool's answer
        Some(m) => {
            log.status = 200;
            let body = crate::mcp::answer::body(m.batch, &m.items, log.id.as_str());
            write::json_answer(&mut s.out, &body, log.id.as_str(), &s.extra, keep, version);
        }
        None => write::error_response(
            &mut s.out,
            &refusal,
            log.id.as_str(),
            &s.extra,
            keep,
            version,
        ),
    }
    log.bytes_out = s.out.len() as u64;
    write_all(client, &mut s.out, lim.idle_timeout)
        .await
        .is_ok()
        && keep
}
