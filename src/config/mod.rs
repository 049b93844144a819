//! The compiled config snapshot. Built once by `compile` (for `check`, `run` and every reload)
//! and shared read-only by the workers as an `Arc<Compiled>`; the hot path does no string work
//! on config.
pub mod compile;
pub mod raw;

pub use crate::identity::Identity;
pub use crate::policy::authz::Effect;
pub use compile::approvals::{Admin, Role};
pub use compile::{CompileOptions, ConfigErrors, compile_file, compile_file_with, compile_str};

use crate::secrets::Secret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The embedded quickstart config (`portcullis run` without `-c`).
pub const QUICKSTART: &str = include_str!("../../configs/quickstart.toml");

pub struct Compiled {
    /// The file this was compiled from (for logs).
    pub source: String,
    /// The text it was compiled from (`GET /v1/config` shows it, secrets as references).
    pub source_text: Arc<str>,
    /// `[log] format`: read before the logger starts (`log_format_of`), so a reload that
    /// changes it takes effect on restart only.
    pub log_format: LogFormat,
    pub server: Server,
    pub limits: Limits,
    /// Address of the built-in demo upstream, if `[demo]` is configured.
    pub demo: Option<SocketAddr>,
    pub proxies: Vec<Proxy>,
    pub identity: Identity,
    /// `[audit]`, if configured (read at start; a reload cannot move the trail).
    pub audit: Option<crate::observe::audit::AuditConfig>,
    /// `[[audit.sinks]]` (read at start, like `[audit]`).
    pub sinks: Vec<Arc<crate::siem::SinkConfig>>,
    /// `[telemetry] otlp`: the trace exporter and sampling (read at start, like the sinks).
    pub telemetry: Option<Arc<crate::siem::traces::TraceConfig>>,
    by_name: HashMap<String, usize>,
    /// Non-fatal findings, printed by `check` and logged by `run`.
    pub warnings: Vec<String>,
    /// Every `kv:` entry this config uses and the client it reads through (`kv::commit`).
    pub kv: Vec<(
        Arc<crate::secrets::kv::KvEntry>,
        Arc<crate::secrets::kv::KvClient>,
    )>,
    /// References not looked up (`check --offline`): `file:line: key: reference`.
    pub skipped: Vec<String>,
    /// `[state]` (or `[approvals] dir | redis`): where the durable state lives (read at
    /// start; a reload cannot move it).
    pub state: Option<crate::state::Location>,
    /// `[approvals]`, if configured (with a store location).
    pub approvals: Option<crate::state::ApprovalsConfig>,
    /// `[[admins]]`: named admin identities.
    pub admins: Vec<Admin>,
    /// `[forward]`: `CONNECT` is served (intercepted or tunnelled) only when it exists.
    pub forward: Option<Forward>,
}

/// `[forward]`, compiled.
pub struct Forward {
    /// The interception CA (`[forward] ca`); without it nothing is intercepted.
    pub ca: Option<Arc<crate::net::mint::InterceptCa>>,
    /// `[forward] tunnel`: blind-tunnel allow-list, config order.
    pub tunnels: Vec<TunnelRule>,
}

/// One `[forward] tunnel` entry.
#[derive(Clone)]
pub struct TunnelRule {
    /// Lower-cased host, IP literal (IPv6 in brackets), or `*.suffix` (any name below the
    /// suffix, not the suffix itself).
    pub host: String,
    pub port: u16,
    /// Agents it is open to (empty, with `roles` empty: every authenticated agent).
    pub agents: Vec<String>,
    pub roles: Vec<String>,
    /// Private, loopback and link-local destinations allowed (metadata addresses never are).
    pub allow_private: bool,
    /// `meter = { rate, per, burst }`: tunnels opened, per agent (kept across reloads, like a
    /// proxy's meter, under the name `tunnel:HOST:PORT`).
    pub meter: Option<Arc<crate::policy::meter::ProxyMeter>>,
}

impl TunnelRule {
    /// Whether `host:port` (host lower-cased, IPv6 in brackets) falls under this entry.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            None => self.host == host,
        }
    }

    /// Whether an agent with this id and these roles may use it.
    pub fn admits(&self, agent: Option<&str>, roles: &[String]) -> bool {
        if self.agents.is_empty() && self.roles.is_empty() {
            return true;
        }
        agent.is_some_and(|a| self.agents.iter().any(|x| x == a))
            || roles.iter().any(|r| self.roles.contains(r))
    }
}

impl Compiled {
    /// `CONNECT host:port`: the proxy whose `https://` upstream is this origin and which
    /// intercepts (the first in config order; requests inside are routed by path).
    pub fn intercepting(&self, host: &str, port: u16) -> Option<usize> {
        self.forward.as_ref()?.ca.as_ref()?;
        self.proxies.iter().position(|p| {
            p.intercept
                && p.upstream.https
                && p.upstream.port == port
                && p.upstream.host.eq_ignore_ascii_case(host)
        })
    }
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn from_name(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The `[log] format` a config file asks for, read without compiling it (the logger starts
/// before the config is compiled). `None`: unreadable, not TOML, or no valid `[log] format`
/// (the compile that follows reports what is wrong).
pub fn log_format_of(text: &str) -> Option<LogFormat> {
    #[derive(serde::Deserialize)]
    struct Peek {
        log: Option<PeekLog>,
    }
    #[derive(serde::Deserialize)]
    struct PeekLog {
        format: Option<String>,
    }
    let p: Peek = toml::from_str(text).ok()?;
    LogFormat::from_name(&p.log?.format?)
}

pub struct Server {
    pub listen: Vec<SocketAddr>,
    /// 0 = one worker per available core.
    pub workers: usize,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<Arc<Secret>>,
    /// `[server] metrics_token`: accepted by `GET /metrics` only.
    pub metrics_token: Option<Arc<Secret>>,
    /// Index of the proxy that takes paths whose first segment names no proxy.
    pub default_proxy: Option<usize>,
    /// `[server] tls`: the agent listeners speak TLS (rebuilt, so re-read, on every reload).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `[server] admin_tls`: the admin listener speaks TLS.
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// `[server] trusted_proxies`: peers whose `X-Forwarded-For` is believed (empty: none).
    pub trusted_proxies: Vec<crate::http::forwarded::Cidr>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head: usize,
    pub max_headers: usize,
    pub max_body: u64,
    /// Bytes of request bodies one worker may hold in flight (reserved as each body's length
    /// is known, released when its buffer is freed); beyond it a body is refused, 503
    /// `overloaded`.
    pub max_body_memory: u64,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long the upstream may take to send its response head.
    pub upstream_timeout: Duration,
    /// How long the upstream may pause between two reads of a response body (an LLM
    /// thinking, gaps in an SSE stream); longer than `upstream_timeout` by default.
    pub upstream_stream_timeout: Duration,
    /// How long the agent may take to send a whole request body (a body dribbled a byte at a
    /// time is cut at this deadline even though each read arrives within `idle_timeout`).
    pub body_timeout: Duration,
    /// How long an idle upstream keep-alive connection stays pooled (kept below the usual
    /// upstream keep-alive timeouts so the gateway rarely reuses a connection being closed).
    pub upstream_idle_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    pub drain_timeout: Duration,
    /// `server.underscore_headers`: request fields whose name holds `_` (checked on the head).
    pub underscore_headers: crate::http::hop::Underscores,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_headers: 100,
            max_body: 1 << 20,
            max_body_memory: 256 << 20,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(4),
            upstream_stream_timeout: Duration::from_secs(300),
            body_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            underscore_headers: crate::http::hop::Underscores::Drop,
        }
    }
}

pub struct Proxy {
    pub name: String,
    /// `intercept`: `CONNECT` to this upstream's origin is terminated and inspected.
    pub intercept: bool,
    /// The name as shared by audit records (no allocation per call).
    pub name_arc: Arc<str>,
    pub upstream: Upstream,
    pub default_effect: Effect,
    /// Token buckets (`meter`, `quota`), shared by every worker and kept across reloads.
    pub meter: Option<Arc<crate::policy::meter::ProxyMeter>>,
    /// The target credential (`auth = {...}`); secrets resolved at compile time, except `kv:`
    /// ones, whose current value is read per call.
    pub auth: Option<crate::credentials::OutboundAuth>,
    /// For `auth = { scheme = "oauth2" }`: the process-wide token source.
    pub oauth: Option<crate::credentials::token_source::Binding>,
    pub forward_cookies: bool,
    /// The agent's request fields that stop here: hop-by-hop and gateway-owned fields, every
    /// header that can carry the agent's credential (and `Cookie` unless `forward_cookies`), the
    /// headers the target credential sets, and `Accept-Encoding` when responses are redacted.
    pub request_filter: crate::http::hop::HeaderFilter,
    /// `path_params`: what a `;` in a path segment means for this proxy (`http::canon`).
    pub path_params: crate::http::canon::PathParams,
    /// `server.underscore_headers`, for the outbound header filter.
    pub underscore_headers: crate::http::hop::Underscores,
    /// Response redaction (`[[proxies.redact]]`), if any; it also reads the budgets' values
    /// (`Action::Capture`), so a proxy with budgets has one even without redact tables.
    pub redact: Option<Redaction>,
    /// `[[proxies.budgets]]`: meters on what the response says.
    pub budgets: Vec<crate::policy::budget::Budget>,
    /// The compiled rule trie (with `default_effect`).
    pub rules: crate::policy::authz::RuleSet,
    /// Request-body scanners, if any.
    pub scanners: Option<crate::scan::ScanSet>,
    /// `hold` and `ttl` of each rule (by rule index; used for `approve` rules only).
    pub holds: Vec<crate::state::Hold>,
    /// `protocol = "mcp"`: POST bodies are JSON-RPC, decided per message.
    pub mcp: Option<McpProxy>,
}

/// What an MCP proxy knows of its tools.
#[derive(Debug, Default)]
pub struct McpProxy {
    /// `[[proxies.tools]]` tags by tool name.
    pub tags: std::collections::HashMap<Box<str>, Box<[Box<str>]>>,
    /// `mcp_max_list`: the most bytes of one list answer held to filter it.
    pub max_list: usize,
    /// `tags_from_annotations`: a tool's `readOnlyHint` / `destructiveHint` (as its list entry
    /// said) add the tags `read` / `destructive`.
    pub tags_from_annotations: bool,
    /// `pin_tools` (default true): tool definitions are pinned (`state::pins`).
    pub pin_tools: bool,
    /// `[[proxies.tools]] pin`: config pins (lowercase hex SHA-256) by tool name.
    pub pins: std::collections::HashMap<Box<str>, Box<str>>,
    /// What the gateway learned of each tool from list answers (shared by the workers: one
    /// `Compiled` serves them all; a reload starts afresh and the next list refills it).
    pub learned: dashmap::DashMap<Box<str>, Learned>,
}

/// Most tools remembered per proxy from list answers (a screened tool is remembered even
/// beyond it, so that its calls stay refused).
pub const MAX_LEARNED_TOOLS: usize = 65_536;

/// One tool as its last list entry described it.
#[derive(Debug, Default, Clone)]
pub struct Learned {
    /// Tags from its annotations (`tags_from_annotations`).
    pub tags: Vec<Box<str>>,
    /// The scanner its description matched (its calls are refused: `tool_screened`).
    pub screened: Option<Box<str>>,
}

impl McpProxy {
    /// The tags of `tool` (empty when it has none).
    pub fn tags_of(&self, tool: &str) -> &[Box<str>] {
        self.tags.get(tool).map(|t| &t[..]).unwrap_or(&[])
    }

    /// The tags of `tool`: `[[proxies.tools]]` ones, and (`tags_from_annotations`) those its
    /// last list entry's annotations gave.
    pub fn tags_for(&self, tool: &str) -> Vec<Box<str>> {
        let mut t = self.tags_of(tool).to_vec();
        if self.tags_from_annotations
            && let Some(l) = self.learned.get(tool)
        {
            t.extend(l.tags.iter().cloned());
        }
        t
    }

    /// The scanner that screened `tool`'s description out, if one did.
    pub fn screened(&self, tool: &str) -> Option<Box<str>> {
        self.learned.get(tool).and_then(|l| l.screened.clone())
    }

    /// Notes what a list entry said of `tool`.
    pub fn learn(&self, tool: &str, learned: Learned) {
        if self.learned.len() >= MAX_LEARNED_TOOLS
            && learned.screened.is_none()
            && !self.learned.contains_key(tool)
        {
            return;
        }
        self.learned.insert(tool.into(), learned);
    }
}

impl Proxy {
    /// The hold and ttl of the rule that decided (`None`: the default effect).
    pub fn hold_of(&self, rule: Option<u32>) -> crate::state::Hold {
        rule.and_then(|r| self.holds.get(r as usize))
            .copied()
            .unwrap_or_default()
    }
}

pub struct Redaction {
    pub program: crate::redact::RedactProgram,
    pub on_invalid: crate::redact::OnInvalid,
}

pub struct Upstream {
    pub https: bool,
    /// Lower-cased host name or IP literal (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    /// Whether the URL named the port (then it is part of `authority`).
    pub explicit_port: bool,
    /// The `Host` header value sent upstream.
    pub authority: String,
    /// Canonical base path without trailing slash; "" for the root.
    pub base_path: String,
    /// Set when the host is an IP literal (no resolution needed).
    pub addr: Option<SocketAddr>,
    pub tls: Option<TlsTarget>,
    /// Identifies interchangeable upstream connections across reloads.
    pub pool_key: u64,
}

pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl Compiled {
    /// The proxy named by the first path segment.
    #[inline]
    pub fn proxy_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Absolute-form routing: the proxy whose upstream host and port match, and whose base path
    /// contains `path` on a segment boundary; the longest base path wins, whatever the config
    /// order. A target without a port matches an upstream on its scheme's default port whatever
    /// the scheme, so `GET http://api.example.com/...` reaches an `https://api.example.com`
    /// upstream over TLS. Two proxies that match equally well (same host and base path: the
    /// same upstream named twice, or `http://` and `https://` twins for a port-less target) make
    /// the target ambiguous: it is refused rather than given to whichever comes first.
    pub fn proxy_for_origin(
        &self,
        host: &str,
        port: Option<u16>,
        path: &str,
    ) -> Result<usize, OriginMiss> {
        let mut best: Option<(usize, usize)> = None;
        let mut tie = None;
        for (i, p) in self.proxies.iter().enumerate() {
            let u = &p.upstream;
            if !u.host.eq_ignore_ascii_case(host) {
                continue;
            }
            let port_ok = match port {
                Some(port) => port == u.port,
                None => !u.explicit_port || u.port == if u.https { 443 } else { 80 },
            };
            if !port_ok {
                continue;
            }
            let base = u.base_path.as_str();
            let under = path.starts_with(base)
                && (path.len() == base.len() || path.as_bytes().get(base.len()) == Some(&b'/'));
            if !under {
                continue;
            }
            match best {
                Some((j, len)) if base.len() == len => tie = Some((j, i)),
                Some((_, len)) if base.len() < len => {}
                _ => {
                    best = Some((i, base.len()));
                    tie = None;
                }
            }
        }
        match (best, tie) {
            (None, _) => Err(OriginMiss::Unknown),
            (Some(_), Some((a, b))) => Err(OriginMiss::Ambiguous(a, b)),
            (Some((i, _)), None) => Ok(i),
        }
    }
}

/// Why an absolute-form target names no proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginMiss {
    /// No proxy has that upstream origin and a base path above the path.
    Unknown,
    /// These two proxies (config order) match equally well.
    Ambiguous(usize, usize),
}
