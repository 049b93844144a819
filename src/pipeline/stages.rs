//! The stages' adapters: each takes what it needs of the call's state (`Scratch`, the proxy,
//! the worker's view) and calls its stage in its own module (`http`, `identity`, `policy`,
//! `scan`, `upstream`), returning `Result<_, Stop>`. Each says when it runs and what it may
//! change; none calls an earlier stage.
use super::route::Route;
use super::state::McpRefusal;
use super::state::{BodyBudget, BodyLease};
use super::{Scratch, Stop, View, Worker};
use crate::config::{Limits, Proxy};
use crate::error::Refusal;
use crate::http::body;
use crate::http::body::Reserve;
use crate::http::head::{self, BodyKind, HeadError, RequestHead, find_header};
use crate::http::io::{IoFail, read_append, write_all, write_range};
use crate::http::write::{self, CONTINUE_100};
use crate::identity::{self, Caller};
use crate::net::agent_io::AgentIo;
use crate::observe::audit::Decision;
use crate::observe::audit::record::AuthVia;
use crate::observe::call::{CallLog, RequestId};
use crate::policy::authz::Effect;
use crate::policy::meter::Verdict;
use crate::upstream::conn::UpConn;
use crate::upstream::response::{self, HeadFail};
use crate::util::clock;
use std::rc::Rc;
use std::sync::Arc;

/// Stage 1: reads one request head into `s.rbuf` (which may already hold pipelined bytes).
pub(super) async fn read_head(
    client: &mut AgentIo,
    s: &mut Scratch,
    lim: &Limits,
) -> Result<(), Stop> {
    let limits = head::Limits {
        max_head: lim.max_head,
        max_headers: lim.max_headers,
    };
    let bad = |why| Err(Stop::Refuse(Refusal::BadRequest(why)));
    let deadline = clock::now() + lim.head_timeout;
    loop {
        if !s.rbuf.is_empty() {
            match head::parse_request(&s.rbuf, &limits, &mut s.head) {
                Ok(true)
                    if s.head.underscore_names
                        && lim.underscore_headers == crate::http::hop::Underscores::Refuse =>
                {
                    return bad("header name holds an underscore");
                }
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
            Err(IoFail::Timeout) | Err(IoFail::Io) => return Err(Stop::Quiet),
        }
    }
}

/// The agent's `X-Request-Id`, if it sent a usable one.
pub(super) fn agent_request_id(head: &RequestHead, src: &[u8]) -> Option<RequestId> {
    find_header(&head.headers, src, b"x-request-id").and_then(RequestId::from_agent)
}

/// The agent's `traceparent`: `None` when absent; a repeated field is not a valid trace
/// context (W3C: one value), so it comes back as an empty (invalid) value and the call starts
/// a new trace.
pub(super) fn traceparent<'a>(head: &RequestHead, src: &'a [u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for h in &head.headers {
        if h.name.get(src).eq_ignore_ascii_case(b"traceparent") {
            if found.is_some() {
                return Some(b"");
            }
            found = Some(h.value.get(src));
        }
    }
    found
}

/// The client behind `[server] trusted_proxies`: only when the TCP peer is trusted is
/// `X-Forwarded-For` read (`http::forwarded`); `None` when the peer is the client (no trusted
/// peer, no header, a malformed header, or the header names the peer itself).
pub(super) fn forwarded_client(
    trusted: &[crate::http::forwarded::Cidr],
    peer: Option<std::net::SocketAddr>,
    head: &RequestHead,
    src: &[u8],
) -> Option<std::net::IpAddr> {
    use crate::http::forwarded;
    let peer = peer?;
    if trusted.is_empty() || !forwarded::trusted(trusted, peer.ip()) {
        return None;
    }
    let lines = head
        .headers
        .iter()
        .filter(|h| h.name.get(src).eq_ignore_ascii_case(b"x-forwarded-for"))
        .map(|h| h.value.get(src));
    match forwarded::resolve(lines, trusted) {
        Ok(Some(ip)) if ip != peer.ip().to_canonical() => Some(ip),
        Ok(_) => None,
        Err(why) => {
            tracing::debug!(peer = %peer, ?why, "x-forwarded-for ignored: the peer address stands");
            None
        }
    }
}

/// Stage 3: who is calling (this worker's JWT verifiers, with their token caches), and how
/// it was identified (the record's `auth`). Inside an intercepted tunnel the credential is the
/// one its CONNECT carried (the requests inside carry the upstream's, which is stripped).
pub(super) fn authenticate<'v>(
    view: &'v View,
    managed: Option<&crate::state::agents::Local>,
    s: &Scratch,
    now_unix: i64,
) -> Result<(Caller<'v>, Option<AuthVia>), Stop> {
    // mTLS listener: a verified client certificate that names an agent identifies the call
    // (proxy credentials are then not consulted)
    if let Some(p) = s.tls_peer.as_deref()
        && let Some(found) = view.cfg.identity.agents.by_certificate(
            p.cert_subject.as_deref(),
            p.spiffe_id.as_deref(),
            now_unix,
        )
    {
        return Ok((Caller::Key(found?), Some(AuthVia::Mtls)));
    }
    let mut verifiers = view.jwt.borrow_mut();
    let src = &s.rbuf;
    // forward-proxy form (absolute-form target, CONNECT's authority-form, or a request inside
    // an intercepted tunnel): a failure is 407
    let proxy_mode = s.tunnel.is_some() || s.head.target.get(src).first() != Some(&b'/');
    let now_us = u64::try_from(crate::util::clock::unix_now().as_micros()).unwrap_or(u64::MAX);
    let more = managed.map(|m| crate::state::agents::LocalAt(m, now_us));
    let more = more.as_ref().map(|m| m as &dyn identity::MoreKeys);
    let basic;
    let result = match s.tunnel.as_deref() {
        Some(t) => {
            let lines = t.credentials();
            basic = lines.clone().any(|(_, v)| is_basic(v));
            identity::authenticate_with(&view.cfg.identity, more, &mut verifiers, lines, now_unix)
        }
        None => {
            let headers = s
                .head
                .headers
                .iter()
                .map(|h| (h.name.get(src), h.value.get(src)));
            basic = headers
                .clone()
                .any(|(n, v)| identity::is_credential_header(n, None, true) && is_basic(v));
            identity::authenticate_with(&view.cfg.identity, more, &mut verifiers, headers, now_unix)
        }
    };
    let caller =
        result.map_err(|r| Stop::Refuse(if proxy_mode { r.in_proxy_mode() } else { r }))?;
    let via = match &caller {
        Caller::Anonymous => None,
        _ if basic => Some(AuthVia::ProxyBasic),
        Caller::Jwt(_) => Some(AuthVia::Jwt),
        Caller::Key(_) | Caller::Managed(_) => Some(AuthVia::Key),
    };
    Ok((caller, via))
}

fn is_basic(v: &[u8]) -> bool {
    v.len() > 6 && v[..6].eq_ignore_ascii_case(b"basic ")
}

/// Stage 4: may this caller make this call. Records the deciding rule and the decision.
/// `Ok(true)`: an `approve` rule decided, so the call is held for a human (stage 7b).
pub(super) fn authorize(
    proxy: &Proxy,
    s: &Scratch,
    route: &Route,
    caller: &Caller<'_>,
    log: &mut CallLog<'_>,
) -> Result<bool, Stop> {
    let src = &s.rbuf;
    let rest = route.rel_path(&s.path);
    let query = route.query_str(s.head.target.get(src));
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
    log.shadow = proxy
        .rules
        .shadow(&decision)
        .and_then(|(r, e)| Some((u32::try_from(r).ok()?, Decision::from(e))));
    for r in &decision.report_hits {
        tracing::info!(target: "shadow", id = log.id.as_str(), proxy = %proxy.name, rule = r,
            "a report-mode rule would have changed this decision");
    }
    match decision.effect {
        Effect::Allow => {
            log.decision = Decision::Allow;
            Ok(false)
        }
        Effect::Deny if decision.rule.is_some() => Err(Refusal::DeniedByRule.into()),
        Effect::Deny => Err(Refusal::NoRuleMatched.into()),
        Effect::Approve => {
            log.decision = Decision::Approve;
            Ok(true)
        }
    }
}

/// Stage 7c (`protocol = "mcp"` proxies): every JSON-RPC message of a POST body, read with a
/// real JSON parser (`mcp::jsonrpc`), decided by the rules that name MCP things. Messages that
/// act on a tool, resource or prompt need such a rule (deny by default); session housekeeping
/// (`initialize`, `ping`, notifications, the list methods) was admitted with the POST itself
/// unless a rule names its method. A refused call is answered as JSON-RPC errors
/// (`Scratch::mcp_refused`); `held` comes back true when an `approve` rule matched.
pub(super) fn mcp_policy<'v>(
    proxy: &'v Proxy,
    s: &mut Scratch,
    route: &Route,
    caller: &Caller<'_>,
    log: &mut CallLog<'_>,
    held: bool,
) -> Result<(bool, Option<ListReq<'v>>), Stop> {
    use crate::mcp::answer::Refused;
    use crate::mcp::jsonrpc::{self, McpError, Target};
    use crate::policy::authz::McpCall;
    let Some(mcp) = &proxy.mcp else {
        return Ok((held, None));
    };
    let src = &s.rbuf;
    let method = s.head.method.get(src);
    if method != b"POST" {
        // the GET stream and DELETE (end of session): the HTTP decision stands
        return Ok((held, None));
    }
    let headers = &s.head.headers;
    let body = jsonrpc::parse_body(&s.body, MCP_MAX_BATCH)
        .and_then(|b| {
            jsonrpc::check_headers(
                &b,
                find_header(headers, src, b"mcp-method"),
                find_header(headers, src, b"mcp-name"),
            )?;
            Ok(b)
        })
        .map_err(|e| {
            tracing::debug!(id = log.id.as_str(), proxy = %proxy.name, "MCP body refused: {e}");
            Refusal::BadRequest(match e {
                McpError::Json(_) => "the MCP body is not valid JSON (or repeats a key)",
                McpError::NotJsonRpc(_) => "the MCP body is not a JSON-RPC 2.0 message",
                McpError::EmptyBatch => "empty JSON-RPC batch",
                McpError::BatchTooLarge(_) => "JSON-RPC batch too large",
                McpError::Header(_) => "Mcp-Method / Mcp-Name disagree with the body",
            })
        })?;
    if log.detailed() {
        log.mcp = Some(Box::new(mcp_note(
            &body,
            find_header(headers, src, b"mcp-session-id"),
        )));
    }
    let rest = route.rel_path(&s.path);
    let query = route.query_str(s.head.target.get(src));
    let roles: Vec<&str> = caller.roles().iter().map(String::as_str).collect();
    let agent = caller.id();
    let mut held = held;
    let mut refused: Vec<Option<(&'static str, String)>> = Vec::with_capacity(body.messages.len());
    let mut first_refusal = None;
    for m in &body.messages {
        let Some(name) = m.method() else {
            // a response to a server-initiated request: nothing to decide
            refused.push(None);
            continue;
        };
        let target = m.target();
        let tags = match target {
            Target::Tool(t) => mcp.tags_for(t),
            _ => Vec::new(),
        };
        if let Target::Tool(t) = target
            && let Some(scanner) = mcp.screened(t)
        {
            // its description matched a scanner in a list answer: refused for every caller
            let refusal = Refusal::ToolScreened {
                scanner: scanner.to_string(),
            };
            let code = refusal.code();
            refused.push(Some((
                code,
                format!(
                    "portcullis: tool {t} refused: its description matched scanner '{scanner}' ({code})"
                ),
            )));
            if first_refusal.is_none()
                && let Some(note) = log.mcp.as_deref_mut()
            {
                note.method = name.to_string();
                note.target = target_of(target);
            }
            log.scanner = Some(Arc::from(&*scanner));
            first_refusal.get_or_insert(refusal);
            continue;
        }
        if let Target::Tool(t) = target
            && mcp.pin_tools
            && crate::state::pins::registry().changed(&proxy.name, t)
        {
            // its definition changed since it was pinned: refused until an operator accepts it
            let refusal = Refusal::ToolChanged {
                tool: t.to_string(),
            };
            let code = refusal.code();
            refused.push(Some((
                code,
                format!(
                    "portcullis: tool {t} refused: its definition changed since it was pinned; an operator must accept it ({code})"
                ),
            )));
            if first_refusal.is_none()
                && let Some(note) = log.mcp.as_deref_mut()
            {
                note.method = name.to_string();
                note.target = target_of(target);
            }
            first_refusal.get_or_insert(refusal);
            continue;
        }
        let call = McpCall {
            method: name,
            target,
            tags: &tags,
        };
        let d = proxy.rules.decide_mcp(
            method,
            rest,
            agent,
            &roles,
            query,
            |n: &str| find_header(headers, src, n.as_bytes()),
            &call,
        );
        if d.rule.is_none() && matches!(target, Target::None) {
            // housekeeping no MCP rule names: admitted with the POST
            refused.push(None);
            continue;
        }
        if let Some(r) = d.rule.and_then(|r| u32::try_from(r).ok()) {
            log.rule = Some(r);
        }
        match d.effect {
            Effect::Allow => refused.push(None),
            Effect::Approve => {
                log.decision = Decision::Approve;
                held = true;
                refused.push(None);
            }
            Effect::Deny => {
                let refusal = if d.rule.is_some() {
                    Refusal::DeniedByRule
                } else {
                    Refusal::NoRuleMatched
                };
                let what = match target {
                    Target::Tool(t) => format!("tool {t}"),
                    Target::Resource(u) => format!("resource {u}"),
                    Target::Prompt(p) => format!("prompt {p}"),
                    Target::None => format!("method {name}"),
                };
                let who = agent.unwrap_or("anonymous");
                let code = refusal.code();
                refused.push(Some((
                    code,
                    format!("portcullis: {what} not allowed for agent {who} ({code})"),
                )));
                if first_refusal.is_none()
                    && let Some(note) = log.mcp.as_deref_mut()
                {
                    // the record names the message that was refused
                    note.method = name.to_string();
                    note.target = target_of(target);
                }
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    let Some(refusal) = first_refusal else {
        // list requests: their answers are filtered per caller (`mcp::lists`), by the same
        // rules, with what the request carried (the head is consumed before the answer comes)
        // tools/call answers too, when the proxy has scanners: their hits are masked (DLP)
        let dlp = proxy.scanners.as_ref().is_some_and(|s| !s.is_empty());
        let lists: Vec<_> = body
            .messages
            .iter()
            .filter_map(|m| match m {
                jsonrpc::Message::Request { id, method, .. } => {
                    match crate::mcp::lists::ListKind::of_method(method) {
                        Some(k) => Some((id.clone(), k)),
                        None if dlp && method == "tools/call" => {
                            Some((id.clone(), crate::mcp::lists::ListKind::CallResult))
                        }
                        None => None,
                    }
                }
                _ => None,
            })
            .collect();
        if lists.is_empty() {
            return Ok((held, None));
        }
        let head_len = s.head.head_len.min(src.len());
        return Ok((
            held,
            Some(ListReq {
                ctx: ListCtx {
                    proxy,
                    mcp,
                    head: src[..head_len].to_vec(),
                    headers: s.head.headers.clone(),
                    rest: rest.to_string(),
                    query: query.to_vec(),
                    agent: agent.map(str::to_string),
                    roles: caller.roles().to_vec(),
                },
                lists,
                batch: body.batch,
            }),
        ));
    };
    // Answer every request of the call: the refused ones with their reason, the others (in a
    // batch) as not sent; notifications get no answer.
    let items: Vec<Refused> = body
        .messages
        .iter()
        .zip(refused)
        .filter_map(|(m, r)| {
            let id = match m {
                jsonrpc::Message::Request { id, .. } => id.clone(),
                _ => return None,
            };
            Some(match r {
                Some((code, message)) => Refused { id, code, message },
                None => Refused {
                    id,
                    code: "batch_refused",
                    message: "portcullis: not sent, another message of this batch was refused"
                        .into(),
                },
            })
        })
        .collect();
    if !items.is_empty() {
        s.mcp_refused = Some(McpRefusal {
            batch: body.batch,
            items,
        });
    }
    Err(refusal.into())
}

/// The list requests of an MCP call and what deciding their entries needs.
pub(super) struct ListReq<'v> {
    pub ctx: ListCtx<'v>,
    pub lists: Vec<(crate::mcp::jsonrpc::Id, crate::mcp::lists::ListKind)>,
    pub batch: bool,
}

/// Decides a list entry as a call to it would be decided: `tools/call` of the tool (with its
/// tags), `resources/read` of the resource (or template), `prompts/get` of the prompt, by the
/// same rules, caller and request. Allowed and approve-held entries stay listed.
pub(super) struct ListCtx<'v> {
    proxy: &'v Proxy,
    mcp: &'v crate::config::McpProxy,
    head: Vec<u8>,
    headers: Vec<head::HeaderSpan>,
    rest: String,
    query: Vec<u8>,
    agent: Option<String>,
    roles: Vec<String>,
}

impl crate::mcp::lists::ListPolicy for ListCtx<'_> {
    fn keep(
        &mut self,
        kind: crate::mcp::lists::ListKind,
        name: &str,
        entry: &serde_json::Map<String, serde_json::Value>,
    ) -> crate::mcp::lists::Keep {
        use crate::mcp::jsonrpc::Target;
        use crate::mcp::lists::{Keep, ListKind};
        if kind == ListKind::Tools {
            let learned = learn_tool(self.proxy, self.mcp, name, entry);
            let screened = learned.screened.is_some();
            self.mcp.learn(name, learned);
            if screened {
                return Keep::Screened;
            }
            if self.mcp.pin_tools {
                let digest = crate::mcp::pins::definition_sha256(entry);
                let config = self.mcp.pins.get(name).map(|p| &**p);
                if !crate::state::pins::registry().observe(&self.proxy.name, name, &digest, config)
                {
                    return Keep::Changed;
                }
            }
        }
        let (method, target) = match kind {
            ListKind::Tools => ("tools/call", Target::Tool(name.to_string())),
            ListKind::Resources | ListKind::ResourceTemplates => {
                ("resources/read", Target::Resource(name.to_string()))
            }
            ListKind::Prompts => ("prompts/get", Target::Prompt(name.to_string())),
            // a tool result is masked, never asked to keep entries
            ListKind::CallResult => return Keep::Yes,
        };
        let tags = match kind {
            ListKind::Tools => self.mcp.tags_for(name),
            _ => Vec::new(),
        };
        let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        let (head, headers) = (&self.head, &self.headers);
        let d = self.proxy.rules.decide_mcp(
            b"POST",
            &self.rest,
            self.agent.as_deref(),
            &roles,
            &self.query,
            |n: &str| find_header(headers, head, n.as_bytes()),
            &crate::policy::authz::McpCall {
                method,
                target: &target,
                tags: &tags,
            },
        );
        if matches!(d.effect, Effect::Allow | Effect::Approve) {
            Keep::Yes
        } else {
            Keep::Hidden
        }
    }

    fn mask(&mut self, text: &str) -> Option<(String, u32)> {
        mask_text(self.proxy.scanners.as_ref()?, text)
    }
}

/// DLP on MCP tool results: every hit of the proxy's scanners (detectors and literals, either
/// mode) in `text`, its ASCII bytes replaced by `*`, until none is left (bounded).
fn mask_text(scanners: &crate::scan::ScanSet, text: &str) -> Option<(String, u32)> {
    let mut bytes = text.as_bytes().to_vec();
    let mut hits = 0u32;
    for _ in 0..1024 {
        let o = scanners.scan(&bytes);
        let mut changed = false;
        for h in o.blocked.iter().chain(o.reports.iter()) {
            let end = (h.offset + h.len).min(bytes.len());
            let mut any = false;
            for b in bytes.get_mut(h.offset..end).into_iter().flatten() {
                if b.is_ascii() && *b != b'*' {
                    *b = b'*';
                    any = true;
                }
            }
            if any {
                hits += 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // only ASCII bytes were replaced by ASCII: still UTF-8
    (hits > 0).then(|| (String::from_utf8_lossy(&bytes).into_owned(), hits))
}

/// What a tool's list entry tells: tags from its annotations (`tags_from_annotations`; the
/// server's claim), and whether the proxy's scanners match its description or title (the
/// unescaped text: an escape cannot hide a literal). A blocking hit screens the tool out; a
/// report-mode hit is logged only.
fn learn_tool(
    proxy: &Proxy,
    mcp: &crate::config::McpProxy,
    name: &str,
    entry: &serde_json::Map<String, serde_json::Value>,
) -> crate::config::Learned {
    let mut out = crate::config::Learned::default();
    if mcp.tags_from_annotations
        && let Some(a) = entry.get("annotations").and_then(|a| a.as_object())
    {
        if a.get("readOnlyHint") == Some(&serde_json::Value::Bool(true)) {
            out.tags.push("read".into());
        }
        if a.get("destructiveHint") == Some(&serde_json::Value::Bool(true)) {
            out.tags.push("destructive".into());
        }
    }
    if let Some(scanners) = &proxy.scanners {
        for key in ["description", "title"] {
            let Some(text) = entry.get(key).and_then(|d| d.as_str()) else {
                continue;
            };
            let o = scanners.scan(text.as_bytes());
            if let Some(hit) = o.blocked {
                tracing::warn!(
                    proxy = %proxy.name,
                    tool = name,
                    scanner = hit.scanner,
                    "MCP tool screened out: its {key} matched a scanner; removed from lists, calls refused"
                );
                out.screened = Some(hit.scanner.into());
                break;
            }
            for r in &o.reports {
                tracing::warn!(
                    proxy = %proxy.name,
                    tool = name,
                    scanner = r.scanner,
                    "MCP tool {key} matched a report-mode scanner"
                );
            }
        }
    }
    out
}

/// The audit record's MCP members: the first message that names a tool, resource or prompt
/// (else the first request or notification), and the agent's `Mcp-Session-Id` (visible ASCII,
/// at most 128 bytes; otherwise not recorded).
fn mcp_note(
    body: &crate::mcp::jsonrpc::Body,
    session: Option<&[u8]>,
) -> crate::observe::audit::record::McpNote {
    let pick = body
        .messages
        .iter()
        .find(|m| m.target().name().is_some())
        .or_else(|| body.messages.iter().find(|m| m.method().is_some()));
    crate::observe::audit::record::McpNote {
        method: pick.and_then(|m| m.method()).unwrap_or("").to_string(),
        target: pick.and_then(|m| target_of(m.target())),
        session: session
            .filter(|v| {
                !v.is_empty() && v.len() <= 128 && v.iter().all(|b| (0x21..0x7f).contains(b))
            })
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        batch: body
            .batch
            .then(|| u32::try_from(body.messages.len()).unwrap_or(u32::MAX)),
        hidden: 0,
        list_refused: 0,
        screened: 0,
        changed: 0,
    }
}

fn target_of(t: &crate::mcp::jsonrpc::Target) -> Option<(&'static str, String)> {
    use crate::mcp::jsonrpc::Target;
    match t {
        Target::None => None,
        Target::Tool(n) => Some(("tool", n.clone())),
        Target::Resource(u) => Some(("resource", u.clone())),
        Target::Prompt(p) => Some(("prompt", p.clone())),
    }
}

/// Most JSON-RPC messages one MCP POST may carry.
const MCP_MAX_BATCH: usize = crate::mcp::jsonrpc::DEFAULT_MAX_BATCH;

/// Stage 5: how often. Adds the `RateLimit-*` fields to the answer either way.
pub(super) async fn admit(proxy: &Proxy, s: &mut Scratch, caller: &Caller<'_>) -> Result<(), Stop> {
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

/// Stage 7d: budgets (after the rules and MCP policy decided: a budget may belong to a rule).
/// A call starts only while each of its budgets has something left for
/// each of its keys (agent, proxy or roles); nothing is charged yet (the value is in the
/// response).
pub(super) fn check_budgets(
    proxy: &Proxy,
    caller: &Caller<'_>,
    rule: Option<u32>,
    now_unix: u64,
) -> Result<(), Stop> {
    for b in proxy.budgets.iter().filter(|b| b.applies(rule)) {
        let l = &b.ledger;
        for key in crate::policy::budget::keys(l.key.by, caller.id(), caller.roles()) {
            l.touch(key);
            let st = l.state(key, now_unix);
            if st.remaining() == 0 {
                l.exhausted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Refusal::BudgetExhausted {
                    budget: l.key.name.to_string(),
                    limit: l.key.limit,
                    per_secs: l.key.per_secs,
                    retry_after: st.reset_secs.max(1),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The reservations of one call (`reserve = "$.max_tokens"`), per budget: charged before the
/// call goes upstream, settled by [`charge_budgets`]; a call that ends before a response
/// (refused later, upstream unreachable) refunds them when this guard drops.
pub(super) struct Reserved<'a, 'c> {
    proxy: &'a Proxy,
    caller: &'a Caller<'c>,
    /// Units reserved per budget (0: none).
    amounts: Vec<u64>,
    at_unix: u64,
    settled: bool,
}

impl Drop for Reserved<'_, '_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        for (b, &n) in self.proxy.budgets.iter().zip(&self.amounts) {
            if n == 0 {
                continue;
            }
            let l = &b.ledger;
            for key in crate::policy::budget::keys(l.key.by, self.caller.id(), self.caller.roles())
            {
                l.charge(key, -i64::try_from(n).unwrap_or(i64::MAX), self.at_unix);
            }
        }
    }
}

/// Stage 8b: budgets with `reserve` charge the request body's number (e.g. `max_tokens`, read
/// by the redaction engine; a body that is not JSON or has no such number reserves nothing).
pub(super) fn reserve_budgets<'a, 'c>(
    proxy: &'a Proxy,
    caller: &'a Caller<'c>,
    rule: Option<u32>,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Reserved<'a, 'c> {
    use crate::redact::{JsonRedactor, Limits, OnInvalid};
    let at_unix = crate::util::clock::unix_now().as_secs();
    let mut amounts = Vec::new();
    if proxy.budgets.iter().any(|b| b.reserve.is_some()) {
        let mut caps = Vec::new();
        for b in &proxy.budgets {
            let Some(prog) = b.reserve.as_ref().filter(|_| b.applies(rule)) else {
                amounts.push(0);
                continue;
            };
            // the engine only reads here (no rewrite): its output, bounded per piece, is dropped
            let mut r = JsonRedactor::new(prog, Limits::default(), OnInvalid::Pass);
            for piece in body.chunks(16 * 1024) {
                scratch.clear();
                let _ = r.feed(piece, scratch);
            }
            scratch.clear();
            let _ = r.finish(scratch);
            scratch.clear();
            caps.clear();
            r.take_captures(&mut caps);
            let n = caps
                .iter()
                .filter_map(|c| c.value)
                .filter(|v| *v >= 0.0)
                .fold(0.0f64, f64::max);
            let n = crate::redact::usage::units(n).min(crate::policy::budget::MAX_LIMIT);
            if n > 0 {
                let l = &b.ledger;
                for key in crate::policy::budget::keys(l.key.by, caller.id(), caller.roles()) {
                    l.charge(key, i64::try_from(n).unwrap_or(i64::MAX), at_unix);
                }
            }
            amounts.push(n);
        }
    }
    Reserved {
        proxy,
        caller,
        amounts,
        at_unix,
        settled: false,
    }
}

/// After the response: each budget charged what the response said (read from the body while
/// it streamed, or from a header), less what the call reserved; the values go into the audit
/// record. A response that said nothing readable is charged nothing (or keeps its
/// reservation).
pub(super) fn charge_budgets(
    proxy: &Proxy,
    caller: &Caller<'_>,
    header_values: &[Option<Option<f64>>],
    readings: &crate::redact::usage::Readings<'_>,
    reserved: &mut Reserved<'_, '_>,
    log: &mut CallLog<'_>,
) {
    use crate::redact::usage::units;
    reserved.settled = true;
    let now_unix = crate::util::clock::unix_now().as_secs();
    let per_window = |b: &crate::policy::budget::Budget, t: u64| t / b.ledger.key.per_secs.max(1);
    for (k, b) in proxy.budgets.iter().enumerate() {
        if !b.applies(log.rule) {
            continue;
        }
        let (value, invalid) = match readings.outcome(k) {
            Some(o) => (o.value, o.invalid),
            None => match header_values.get(k).copied().flatten() {
                Some(Some(v)) => (Some(v), false),
                Some(None) => (None, true),
                None => (None, false),
            },
        };
        let l = &b.ledger;
        if invalid {
            l.unreadable
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                proxy = %proxy.name,
                budget = %l.key.name,
                request_id = log.id.as_str(),
                "the response's budget value is not a non-negative number: not counted"
            );
        }
        let held = reserved.amounts.get(k).copied().unwrap_or(0);
        let Some(v) = value else {
            if held > 0 {
                log.add_metered(&l.key.name, held);
            }
            continue;
        };
        let n = units(v);
        log.add_metered(&l.key.name, n);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        // settled in the reservation's window; if that window has ended, the new one is
        // charged in full
        let charge = if held > 0 && per_window(b, reserved.at_unix) == per_window(b, now_unix) {
            n.saturating_sub(i64::try_from(held).unwrap_or(i64::MAX))
        } else {
            n
        };
        for key in crate::policy::budget::keys(l.key.by, caller.id(), caller.roles()) {
            l.charge(key, charge, now_unix);
        }
    }
}

/// Stage 6: the body, read whole (answering `Expect: 100-continue` first). Returns where the
/// request ends in `s.rbuf`.
pub(super) async fn read_body(
    client: &mut AgentIo,
    s: &mut Scratch,
    lim: &Limits,
    bodies: &Rc<BodyBudget>,
) -> Result<usize, Stop> {
    let head_len = s.head.head_len;
    let kind = s.head.body;
    if let BodyKind::Length(n) = kind
        && n > lim.max_body
    {
        return Err(Refusal::BodyTooLarge.into());
    }
    // the body's memory is reserved before a byte of it is read (and before `100 Continue`
    // invites it): beyond the worker's `max_body_memory`, 503 `overloaded`
    let mut lease = BodyLease::new(bodies, lim.max_body_memory);
    if let BodyKind::Length(n) = kind
        && !lease.grow_to(n)
    {
        return Err(Refusal::Overloaded.into());
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
        &mut lease,
        &mut s.body,
        lim.idle_timeout,
        clock::now() + lim.body_timeout,
    )
    .await?;
    // held with the body until it is sent upstream (or the call ends)
    s.body_lease = Some(lease);
    Ok(end)
}

/// Stage 7: the scanners over the whole (decoded) body.
pub(super) fn scan(
    proxy: &Proxy,
    s: &Scratch,
    lim: &Limits,
    log: &mut CallLog<'_>,
) -> Result<(), Stop> {
    let Some(scanners) = &proxy.scanners else {
        return Ok(());
    };
    // every field line: the scanner combines repeated Content-Encoding lines (RFC 9110) and
    // reads Content-Type for its decoded views
    let src = &s.rbuf;
    let fields = s
        .head
        .headers
        .iter()
        .map(|h| (h.name.get(src), h.value.get(src)));
    let max_decoded = usize::try_from(lim.max_body).unwrap_or(usize::MAX);
    let outcome = scanners
        .scan_request(&s.body, fields, max_decoded)
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
/// `s.ubuf`/`s.resp`. A pooled connection is reused only if nothing arrived on it while idle
/// (`Pool::take`); one that still turns out dead is replaced once by a fresh one for
/// idempotent methods, and one that answers 408 is replaced once for any method.
pub(super) async fn send_request(
    w: &Worker,
    proxy: &Proxy,
    lim: &Limits,
    s: &mut Scratch,
    idempotent: bool,
    method_is_head: bool,
    log: &mut CallLog<'_>,
) -> Result<UpConn, Stop> {
    let up = &proxy.upstream;
    let mut retried = false;
    loop {
        let (mut conn, reused) = match w.pool.take(up.pool_key, lim.upstream_idle_timeout) {
            Some(c) => (c, true),
            None => (w.pool.connect(up, lim.connect_timeout).await?, false),
        };
        log.mark(crate::observe::trace::Stage::Connect);
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
            Err(IoFail::Io) => Err(HeadFail::ClosedEarly),
        };
        match res {
            // a 408 on a pooled connection is the upstream's idle timeout racing our request
            // (it closed without reading it): ignored, as mature clients do, and the request
            // goes again on a fresh connection, whatever its method
            Ok(()) if reused && s.resp.status == 408 && !retried => retried = true,
            Ok(()) => return Ok(conn),
            Err(HeadFail::ClosedEarly) if reused && idempotent && !retried => retried = true,
            Err(e) => return Err(e.into()),
        }
    }
}
