//! The TOML as written: serde structs with `deny_unknown_fields` and spans, so that `compile()`
//! can point at the line of any value it rejects. Nothing here is used on the hot path.
use crate::policy::authz::Effect;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Spanned<RawServer>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub demo: Option<Spanned<RawDemo>>,
    #[serde(default)]
    pub vault: Option<Spanned<RawVault>>,
    /// `[secrets.kv]`: the OpenBao / Vault KV v2 server behind `kv:PATH#FIELD` references.
    #[serde(default)]
    pub secrets: Option<Spanned<RawSecrets>>,
    #[serde(default)]
    pub audit: Option<Spanned<RawAudit>>,
    #[serde(default)]
    pub agents: Vec<Spanned<RawAgentEntry>>,
    #[serde(default)]
    pub jwt: Vec<Spanned<crate::identity::jwt::RawJwt>>,
    #[serde(default)]
    pub proxies: Vec<Spanned<RawProxy>>,
    /// `[meters]`: cluster-wide meters through Redis.
    #[serde(default)]
    pub meters: Option<Spanned<RawMeters>>,
    /// `[state]`: the durable state store (approvals; later managed agents, tool pins).
    #[serde(default)]
    pub state: Option<Spanned<RawState>>,
    /// `[approvals]`: human approval of calls that `approve` rules hold.
    #[serde(default)]
    pub approvals: Option<Spanned<RawApprovals>>,
    /// `[[admins]]`: named admin identities (approvers and others).
    #[serde(default)]
    pub admins: Vec<Spanned<RawAdmin>>,
    /// `[telemetry]`: OpenTelemetry traces of the calls.
    #[serde(default)]
    pub telemetry: Option<Spanned<RawTelemetry>>,
    /// `[log]`: the process log.
    #[serde(default)]
    pub log: Option<Spanned<RawLog>>,
    /// `[forward]`: forward-proxy mode (`CONNECT`): the interception CA and the blind-tunnel
    /// allow-list.
    #[serde(default)]
    pub forward: Option<Spanned<RawForward>>,
}

/// `[forward]`: `CONNECT host:port` is served only when this table exists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// `ca = { cert = "file:...", key = "file:...|vault:..." }`: the interception CA
    /// (`portcullis ca init`); leaves for intercepted hosts are minted from it.
    #[serde(default)]
    pub ca: Option<Spanned<RawForwardCa>>,
    /// Blind tunnels: `"host:port"` or `{ host, agents, roles, allow_private }` (checked by
    /// the compiler: a string, or a table with those keys).
    #[serde(default)]
    pub tunnel: Option<Spanned<Vec<Spanned<toml::Value>>>>,
}

/// `[forward] ca`: secret references to PEM text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardCa {
    pub cert: String,
    pub key: String,
}

/// `[telemetry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// `otlp = { url = "http://127.0.0.1:4318/v1/traces", sample = 0.1 }`.
    #[serde(default)]
    pub otlp: Option<Spanned<RawOtlp>>,
}

/// `[telemetry] otlp`: where the calls' spans go (OTLP/HTTP, protobuf).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's traces endpoint (`https://…`; `http://` for loopback only).
    pub url: Spanned<String>,
    /// Ratio of new traces recorded, 0 … 1 (default 1); an agent's `sampled` flag decides for
    /// the traces it continues.
    #[serde(default)]
    pub sample: Option<Spanned<toml::Value>>,
    /// The collector's credential: as `[[audit.sinks]] auth` (bearer / header / basic).
    #[serde(default)]
    pub auth: Option<Spanned<crate::siem::config::RawAuth>>,
    /// Extra CA certificates (PEM) for an `https://` url.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// One export attempt (default `10s`).
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// Spans per export (default 512).
    #[serde(default)]
    pub batch: Option<Spanned<i64>>,
    /// Spans waiting for the exporter before new ones are dropped (default 8192).
    #[serde(default)]
    pub queue: Option<Spanned<i64>>,
}

/// `[log]`: `format = "text" | "json"` (`PORTCULLIS_LOG_FORMAT` overrides it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub format: Option<Spanned<String>>,
}

/// `[state]`: `dir = "..."` (embedded, one crash-safe file) or `redis = "redis://..."`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    #[serde(default)]
    pub dir: Option<Spanned<String>>,
    #[serde(default)]
    pub redis: Option<Spanned<String>>,
    #[serde(default)]
    pub key_prefix: Option<Spanned<String>>,
}

/// `[approvals]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// The store location when `[state]` is absent (`[state]` wins; both set is an error).
    #[serde(default)]
    pub dir: Option<Spanned<String>>,
    #[serde(default)]
    pub redis: Option<Spanned<String>>,
    #[serde(default)]
    pub max_pending: Option<Spanned<i64>>,
    #[serde(default)]
    pub retention: Option<Spanned<String>>,
    #[serde(default)]
    pub console_url: Option<Spanned<String>>,
    #[serde(default)]
    pub notify: Option<Spanned<RawNotify>>,
}

/// `notify = { url = "...", format = "json" | "slack" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub url: Spanned<String>,
    #[serde(default)]
    pub format: Option<Spanned<String>>,
}

/// `[[admins]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub id: Spanned<String>,
    pub key_sha256: Spanned<String>,
    pub role: Spanned<String>,
    #[serde(default)]
    pub proxies: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub totp_secret: Option<Spanned<String>>,
}

/// `[meters]`: when present, every proxy meter is shared by all gateway processes through Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeters {
    /// `redis://host:port/db` (no password in it).
    pub redis: Spanned<String>,
    /// The Redis password as a `vault:`/`env:`/`file:` reference.
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    #[serde(default)]
    pub key_prefix: Option<Spanned<String>>,
    /// Tokens fetched per round trip: a number or `"auto"`.
    #[serde(default)]
    pub batch: Option<Spanned<BatchRaw>>,
    #[serde(default)]
    pub on_redis_down: Option<Spanned<OnRedisDownRaw>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BatchRaw {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisDownRaw {
    Closed,
    Open,
    OpenReads,
}

/// `[audit]`: where and how the audit trail is written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub dir: Spanned<String>,
    #[serde(default)]
    pub rotate: Option<Spanned<SizeOrInt>>,
    #[serde(default)]
    pub fsync: Option<Spanned<String>>,
    #[serde(default)]
    pub on_full: Option<Spanned<String>>,
    #[serde(default)]
    pub queue: Option<Spanned<i64>>,
    /// Records held in memory while the disk refuses writes.
    #[serde(default)]
    pub backlog: Option<Spanned<i64>>,
    /// `"continue"` | `"refuse"`.
    #[serde(default)]
    pub on_error: Option<Spanned<String>>,
    /// Ed25519 key for checkpoints, as a `vault:`/`env:`/`file:` reference.
    #[serde(default)]
    pub signing_key: Option<Spanned<String>>,
    #[serde(default)]
    pub checkpoint_records: Option<Spanned<i64>>,
    #[serde(default)]
    pub checkpoint_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub head_file: Option<Spanned<String>>,
    #[serde(default)]
    pub retain_files: Option<Spanned<i64>>,
    #[serde(default)]
    pub retain: Option<Spanned<String>>,
    /// `[[audit.sinks]]`: where the records are delivered (SIEM, collector).
    #[serde(default)]
    pub sinks: Vec<Spanned<crate::siem::RawSink>>,
}

/// `[secrets]`: external secret stores.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    #[serde(default)]
    pub kv: Option<Spanned<RawKv>>,
}

/// `[secrets.kv]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKv {
    pub addr: Spanned<String>,
    #[serde(default)]
    pub mount: Option<Spanned<String>>,
    #[serde(default)]
    pub token: Option<Spanned<String>>,
    #[serde(default)]
    pub approle: Option<Spanned<RawAppRole>>,
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub max_stale: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

/// `approle = { role_id = "...", secret_id = "file:..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppRole {
    pub role_id: Spanned<String>,
    pub secret_id: Spanned<String>,
}

/// `[vault]`: the encrypted secrets file and the reference to its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVault {
    pub file: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[[agents]]` as written (`expires_at` may be a TOML datetime or a string).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentEntry {
    pub id: Spanned<String>,
    /// Optional only when `cert_subject` identifies the agent (mTLS).
    #[serde(default)]
    pub key_sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub cert_subject: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub workers: Option<Spanned<i64>>,
    #[serde(default)]
    pub admin_listen: Option<Spanned<String>>,
    #[serde(default)]
    pub admin_token: Option<Spanned<String>>,
    /// A read-only bearer token for `GET /metrics` only (Prometheus need not hold the admin token).
    #[serde(default)]
    pub metrics_token: Option<Spanned<String>>,
    /// Proxy for paths whose first segment names no proxy (the whole path is forwarded).
    #[serde(default)]
    pub default_proxy: Option<Spanned<String>>,
    /// Request header fields whose name holds `_`: "drop" (default), "refuse" or "pass".
    #[serde(default)]
    pub underscore_headers: Option<Spanned<String>>,
    /// TLS on the agent listeners (issue 17).
    #[serde(default)]
    pub tls: Option<Spanned<RawListenerTls>>,
    /// TLS on the admin listener.
    #[serde(default)]
    pub admin_tls: Option<Spanned<RawListenerTls>>,
    /// Peers (CIDRs) whose `X-Forwarded-For` names the client.
    #[serde(default)]
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `tls = { cert = "file:...", key = "vault:...", client_ca = "file:..." }`: secret
/// references to PEM text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_head: Option<Spanned<SizeOrInt>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_request_body: Option<Spanned<SizeOrInt>>,
    pub max_body_memory: Option<Spanned<SizeOrInt>>,
    pub head_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub upstream_connect_timeout: Option<Spanned<String>>,
    pub upstream_timeout: Option<Spanned<String>>,
    pub upstream_idle_timeout: Option<Spanned<String>>,
    pub upstream_stream_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
}

/// A size written as `"16KiB"` or as a plain number of bytes.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a size: a whole number of bytes (16384) or a string with a unit (\"16KiB\", \"1MiB\")"
)]
pub enum SizeOrInt {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    pub listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub name: Spanned<String>,
    pub upstream: Spanned<String>,
    /// `CONNECT` to this proxy's upstream origin is intercepted (TLS terminated with a minted
    /// leaf, every request inside run through the pipeline); default true for an `https://`
    /// upstream once `[forward] ca` exists.
    #[serde(default)]
    pub intercept: Option<Spanned<bool>>,
    #[serde(default)]
    pub default_effect: Option<Spanned<Effect>>,
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// `meter = { rate = 50, per = "1s", burst = 100, by = "agent" }`
    #[serde(default)]
    pub meter: Option<Spanned<RawMeter>>,
    /// `quota = { limit = 20000, per = "1d" }`: a longer allowance beside the rate.
    #[serde(default)]
    pub quota: Option<Spanned<RawQuota>>,
    /// The target credential injected into every forwarded call.
    #[serde(default)]
    pub auth: Option<Spanned<crate::credentials::RawAuth>>,
    /// Forward the agent's `Cookie` header (stripped by default, like every credential).
    #[serde(default)]
    pub forward_cookies: Option<bool>,
    /// A `;` in a path segment: "refuse" (default, 400) or "strip" (cut as Tomcat does).
    #[serde(default)]
    pub path_params: Option<Spanned<String>>,
    /// `[[proxies.redact]]`: JSON paths removed or masked in responses.
    #[serde(default)]
    pub redact: Vec<Spanned<RawRedact>>,
    /// `[[proxies.rules]]`: allow / deny / approve by method and path.
    #[serde(default)]
    pub rules: Vec<Spanned<crate::policy::authz::RawRule>>,
    /// `[[proxies.scanners]]`: literals and detectors searched in request bodies.
    #[serde(default)]
    pub scanners: Vec<Spanned<crate::scan::RawScanner>>,
    /// `"http"` (default) or `"mcp"`: JSON-RPC bodies decided per message by MCP rules.
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
    /// `[[proxies.tools]]`: tags per MCP tool, for `tool_tags` rules.
    #[serde(default)]
    pub tools: Vec<Spanned<RawTool>>,
    /// MCP: the most bytes of one list answer (a JSON body or one SSE event) the gateway holds
    /// to filter it; a larger one is refused with a JSON-RPC error (default 4 MiB).
    #[serde(default)]
    pub mcp_max_list: Option<Spanned<SizeOrInt>>,
    /// MCP: tags from the tools' annotations (`readOnlyHint` → `read`, `destructiveHint` →
    /// `destructive`), as their list entries said (the server's claim).
    #[serde(default)]
    pub tags_from_annotations: Option<Spanned<bool>>,
    /// MCP: pin each tool's definition when first listed and hide/refuse it once it changes
    /// (rug-pull protection; default true on an MCP proxy).
    #[serde(default)]
    pub pin_tools: Option<Spanned<bool>>,
    /// `[[proxies.budgets]]`: meters on a value the response says (LLM tokens, cost).
    #[serde(default)]
    pub budgets: Vec<Spanned<RawBudget>>,
}

/// `[[proxies.budgets]] name = "tokens", value = "openai_tokens", limit = 100000, per = "1d"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: Spanned<String>,
    /// `"$.usage.total_tokens"`, `"header:X-Cost"`, `"openai_tokens"` or `"anthropic_tokens"`.
    pub value: Spanned<String>,
    /// SSE: `"last"` (default) or `"sum"` of the events' values.
    #[serde(default)]
    pub aggregate: Option<Spanned<String>>,
    /// Presets only: `{ input = 1.0, output = 3.0 }`.
    #[serde(default)]
    pub weights: Option<Spanned<std::collections::BTreeMap<String, f64>>>,
    pub limit: Spanned<i64>,
    pub per: Spanned<String>,
    /// `"agent"` (default), `"proxy"` or `"role"`.
    #[serde(default)]
    pub by: Option<Spanned<String>>,
    /// `"$.max_tokens"`: charged from the request body at admission, settled at the end.
    #[serde(default)]
    pub reserve: Option<Spanned<String>>,
    /// The `name` of one of the proxy's rules: the budget meters only the calls it decides.
    #[serde(default)]
    pub rule: Option<Spanned<String>>,
}

/// `[[proxies.tools]] name = "delete_account", tags = ["write", "crm"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `"sha256:<64 hex>"`: the tool's definition digest, pinned by config (takes precedence
    /// over the pin recorded at first sight).
    #[serde(default)]
    pub pin: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedact {
    pub paths: Spanned<Vec<String>>,
    #[serde(default)]
    pub action: Option<Spanned<String>>,
    /// What to do with a body that is not valid JSON: "block" (cut the response; default) or
    /// "pass" (send the rest unmodified).
    #[serde(default)]
    pub on_invalid: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeter {
    pub rate: Spanned<i64>,
    #[serde(default)]
    pub per: Option<Spanned<String>>,
    #[serde(default)]
    pub burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub by: Option<Spanned<MeterByRaw>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub limit: Spanned<i64>,
    pub per: Spanned<String>,
    #[serde(default)]
    pub by: Option<Spanned<MeterByRaw>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterByRaw {
    Proxy,
    Agent,
}

#[cfg(test)]
mod reference_tests {
    /// The table a `Raw*` struct of this file is (in the reference, keys are written
    /// `table.key`). A new struct needs a line here, and its keys a row in docs/config.md.
    const TABLES: &[(&str, &str)] = &[
        ("RawConfig", ""),
        ("RawMeters", "meters."),
        ("RawAudit", "audit."),
        ("RawSecrets", "secrets."),
        ("RawKv", "secrets.kv."),
        ("RawAppRole", "secrets.kv.approle."),
        ("RawVault", "vault."),
        ("RawAgentEntry", "agents."),
        ("RawServer", "server."),
        ("RawLimits", "limits."),
        ("RawDemo", "demo."),
        ("RawProxy", "proxies."),
        ("RawRedact", "proxies.redact."),
        ("RawMeter", "proxies.meter."),
        ("RawQuota", "proxies.quota."),
        ("RawTool", "proxies.tools."),
        ("RawBudget", "proxies.budgets."),
        ("RawState", "state."),
        ("RawApprovals", "approvals."),
        ("RawNotify", "approvals.notify."),
        ("RawAdmin", "admins."),
        ("RawListenerTls", "server.tls."),
        ("RawTelemetry", "telemetry."),
        ("RawOtlp", "telemetry.otlp."),
        ("RawLog", "log."),
        ("RawForward", "forward."),
        ("RawForwardCa", "forward.ca."),
    ];

    #[test]
    fn every_config_key_is_in_the_reference() {
        let src = include_str!("raw.rs");
        let doc = include_str!("../../docs/config.md");
        let mut current: Option<&str> = None;
        let mut checked = 0;
        let mut missing = Vec::new();
        for line in src.lines() {
            if line.starts_with("#[cfg(test)]") {
                break;
            }
            if let Some(rest) = line.strip_prefix("pub struct ") {
                let name = rest.split([' ', '{', '<']).next().unwrap_or("");
                let table = TABLES.iter().find(|(s, _)| *s == name).map(|(_, t)| *t);
                assert!(
                    table.is_some(),
                    "struct {name} in config/raw.rs: add it to TABLES and its keys to docs/config.md"
                );
                current = table;
                continue;
            }
            if line.starts_with('}') {
                current = None;
                continue;
            }
            let (Some(prefix), Some(field)) = (current, line.trim().strip_prefix("pub ")) else {
                continue;
            };
            let Some((key, _)) = field.split_once(':') else {
                continue;
            };
            let key = format!("{prefix}{key}");
            checked += 1;
            if !doc.contains(&format!("`{key}`")) {
                missing.push(key);
            }
        }
        assert!(
            checked > 60,
            "only {checked} keys found: is the parser still right?"
        );
        assert!(
            missing.is_empty(),
            "config keys missing from docs/config.md: {missing:?}"
        );
    }
}
