//! One audit record: the in-memory form built on the data plane ([`AuditRecord`]), its JSON line
//! encoding with the hash chain (hand-written, allocation-free apart from the output buffer), and
//! the parsed-back form read by `verify`, `query`, the CLI and the admin API ([`StoredRecord`]).
//!
//! # Line format
//!
//! (The user's reference for every member is `docs/audit.md`; keep it in step.)
//!
//! Every line is one JSON object with a fixed member order, ending in `prev` and `hash`:
//!
//! ```text
//! {"ts":"2026-11-24T09:59:27.123456Z","id":"…","trace_id":"<32 hex>","agent":"support-bot","proxy":"crm","method":"GET",
//!  "path":"/v1/accounts/42","status":200,"decision":"allow","code":null,"rule":0,"scanner":null,
//!  "redactions":0,"bytes_in":0,"bytes_out":512,"upstream_status":200,"upstream_us":812,
//!  "total_us":990,"client":"10.0.0.7:51234","shadow":null,"prev":"<64 hex>","hash":"<64 hex>"}
//! {"ts":"…","kind":"gap","dropped":12,"reason":"queue_full","from":"…","to":"…","prev":"…","hash":"…"}
//! {"ts":"…","kind":"checkpoint","records":1000,"key":"<64 hex>","sig":"<128 hex>","prev":"…","hash":"…"}
//! {"ts":"…","kind":"anchor","first":"<64 hex>","file":"audit-….jsonl","removed":2,"prev":"…","hash":"…"}
//! {"ts":"…","kind":"completion","id":"…","bytes_out":5120,"redactions":0,"total_us":1830,"prev":"…","hash":"…"}
//! ```
//!
//! A call record has no `kind` member. Its `id` is always the gateway's; the agent's own
//! `X-Request-Id`, when it sent a valid one, follows as `agent_request_id` (absent otherwise),
//! then `trace_id` (32 lower-case hex), the call's W3C trace id — the agent's, from a valid
//! `traceparent`, or the one the gateway started under `[telemetry] otlp` (absent when the
//! call had none). `client` is the agent's address as the gateway saw it (`IP:port` of the TCP
//! peer); behind a proxy listed in `[server] trusted_proxies`, `client` is the address its
//! `X-Forwarded-For` named (`IP`, no port) and `peer` (present only then, right after `client`)
//! is the TCP peer;
//! `secret_reflected` (after `redactions`, present only when not 0) counts the injected
//! secrets the upstream reflected in the response, masked before they reached the agent.
//! `metered` (after `redactions`/`secret_reflected`, present only when some budget read a
//! value) is `{"<budget>":N,...}`: the whole units each `[[proxies.budgets]]` charged for the
//! call (on a completion line too, since the value is known when the body has ended).
//! `shadow` is `{"rule":N,"decision":"deny"}` when a report-mode rule would have decided the call
//! differently had it been enforced (the rule that would have won, and its decision).
//!
//! A gap record (`"kind":"gap"`) stands where records were lost, `dropped` of them, received
//! between `from` and `to` (`reason`: `queue_full` — the ring was full; `backlog_full` — the
//! writer's pending buffer overflowed during a disk error; `write_failed` — the disk still
//! refused writes when the gateway stopped, so the records it held were lost (written from the
//! reserve, see `writer.rs`); `torn_tail` — a line torn by a crash was cut off at restart).
//!
//! Under `fsync = "always"` + `on_error = "refuse"` a call's record is committed when its
//! response head is released (so `bytes_out`/`total_us` stop there); a completion line
//! (`"kind":"completion"`, same `ts` and `id`) follows once the body was sent, with the final
//! `bytes_out`, `redactions` and `total_us`. It is not awaited: a crash mid-body loses it.
//!
//! A checkpoint (`"kind":"checkpoint"`) is written every N records or T seconds: `records` calls
//! since the previous one, and, with `[audit] signing_key`, the Ed25519 public key and the
//! signature over [`checkpoint_message`] (its time, `prev` and `records`), so the chain up to it
//! is vouched for by the key holder. An anchor (`"kind":"anchor"`) is written by retention after
//! deleting the oldest files: `first` is the hash of the first line that remains, so `verify`
//! accepts a log that no longer starts at genesis exactly where retention cut it.
//!
//! # Hash chain
//!
//! `hash = SHA-256(prev_hex || body)` where `prev_hex` is the 64 ASCII hex digits of the previous
//! record's hash (64 `0`s for the first record ever, the *genesis*) and `body` is the exact line
//! bytes with the `,"hash":"…"` member removed, i.e. `{…,"prev":"<prev_hex>"}` (no newline).
//! Verification works on the bytes on disk; it never re-serialises. A third party can check one
//! line with `printf '%s%s' "$prev" "$body" | sha256sum`.
#![forbid(unsafe_code)]

use crate::util::hex;
use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A SHA-256 chain hash.
pub type Hash = [u8; 32];

/// The `prev` of the very first record.
pub const GENESIS: Hash = [0u8; 32];

/// A short string kept inline up to `N` bytes (no allocation), on the heap beyond.
#[derive(Clone, PartialEq, Eq)]
pub enum SmallStr<const N: usize> {
    Inline { len: u8, buf: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> SmallStr<N> {
    pub fn new(s: &str) -> Self {
        if s.len() <= N && N <= u8::MAX as usize {
            let mut buf = [0u8; N];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            SmallStr::Inline {
                len: s.len() as u8,
                buf,
            }
        } else {
            SmallStr::Heap(s.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // built from a &str cut at its end, so always valid UTF-8
            SmallStr::Inline { len, buf } => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or("")
            }
            SmallStr::Heap(s) => s,
        }
    }
}

impl<const N: usize> Default for SmallStr<N> {
    fn default() -> Self {
        SmallStr::Inline {
            len: 0,
            buf: [0u8; N],
        }
    }
}

impl<const N: usize> std::fmt::Debug for SmallStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The decision recorded for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Decision {
    Allow,
    #[default]
    Deny,
    Approve,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Approve => "approve",
        }
    }
}

/// One call, as built on the data plane (by `CallLog`'s drop) and pushed into the ring.
///
/// Cost on the data plane: `id` and `method` are inline (generated 32-hex ids never allocate);
/// `agent`, `proxy` and `scanner` are `Arc<str>` clones of names from the compiled config (one
/// atomic increment each; a JWT-derived agent id costs one allocation per call unless authn
/// interns it); `path` is an owned `String` — one allocation, avoidable by moving the
/// canonicaliser's buffer in rather than copying it. `prev`/`hash` are added by the writer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AuditRecord {
    /// When the call was received, microseconds since the Unix epoch (UTC).
    pub ts_us: u64,
    pub id: SmallStr<32>,
    /// The agent's own `X-Request-Id` (the record's `id` is always the gateway's); written
    /// only when the agent sent one. A thin pointer (one allocation, only then) so the
    /// record keeps within its ring slot.
    pub agent_request_id: Option<Arc<String>>,
    pub agent: Option<Arc<str>>,
    pub proxy: Option<Arc<str>>,
    pub method: SmallStr<15>,
    /// Canonical path, without the query.
    pub path: String,
    pub status: u16,
    pub decision: Decision,
    /// The spec error code (`no_rule_matched`, ...), if the gateway answered itself.
    pub code: Option<&'static str>,
    /// Index of the rule that decided, if one did.
    pub rule: Option<u32>,
    pub scanner: Option<Arc<str>>,
    pub redactions: u32,
    /// Injected secrets the upstream reflected in the response (masked); written only when
    /// not 0.
    pub secret_reflected: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_status: Option<u16>,
    /// Microseconds until the upstream's response head (saturating: a head is due within
    /// `upstream_timeout`, far below the ~71 minutes a `u32` holds; 4 bytes keep the record
    /// within its ring slot).
    pub upstream_us: Option<u32>,
    pub total_us: u64,
    /// The agent's address (the TCP peer): IP and port (kept apart from `SocketAddr` to fit
    /// the slot).
    pub client: Option<(std::net::IpAddr, u16)>,
    /// The client a trusted proxy named (`X-Forwarded-For`), when it differs from the peer:
    /// then the line's `client` is this address and `peer` the TCP peer.
    pub forwarded_for: Option<std::net::IpAddr>,
    /// A report-mode rule that would have decided differently: its index and decision.
    pub shadow: Option<(u32, Decision)>,
    /// Not a call record but the completion of one committed early (durable mode): only
    /// `ts_us`, `id`, `bytes_out`, `redactions` and `total_us` are written.
    pub completion: bool,
    /// On a call: the approval it executed (`approval_id`). With an `event`: not a call but
    /// an approval's event (`kind: "approval"`), written by the state store's thread.
    pub approval: Option<Arc<ApprovalNote>>,
    /// The call's W3C trace id (the agent's, continued, or the one the gateway started); all
    /// zero when there is none (written only when set). Inline: 16 bytes, no allocation.
    pub trace_id: [u8; 16],
    /// Budgets charged for the call (`metered`): budget name and units. Behind one pointer,
    /// set only on calls that read a budget value.
    pub metered: Option<Box<Metered>>,
    /// Not a call but an admin action (`kind: "admin"`, issue 16): who did what to what.
    pub admin: Option<Arc<AdminNote>>,
    /// How the agent was identified (`auth`); written only when it was.
    pub auth: Option<AuthVia>,
    /// A call made through a `CONNECT` (`tunnel`): `intercept` for each call inside an
    /// intercepted tunnel, `blind` for a blind tunnel's one record (its `path` is `host:port`,
    /// `bytes_in`/`bytes_out` the bytes up/down, `total_us` its duration).
    pub tunnel: Option<TunnelKind>,
    /// MCP calls (`protocol = "mcp"` proxies): the JSON-RPC method, what it named and the
    /// session. Behind one pointer, set only on MCP POSTs.
    pub mcp: Option<Box<McpNote>>,
}

/// An admin action (see [`AuditRecord::admin`]); the record's `status` is the answer's.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AdminNote {
    /// The admin identity (`[[admins]] id`, or `admin_token`).
    pub admin: String,
    /// `viewer` | `approver` | `operator`.
    pub role: &'static str,
    /// `agent.create` | `agent.rotate` | `agent.revoke` | `config.reload` | `config.check`.
    pub action: &'static str,
    /// What it acted on (an agent id), if anything.
    pub target: Option<String>,
}

/// How the agent was identified (the record's `auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthVia {
    /// An agent key (`Authorization: Bearer`, `Proxy-Authorization: Bearer`, `x-api-key`).
    Key,
    /// The agent key or JWT as the password of `Proxy-Authorization: Basic` (or
    /// `Authorization: Basic`): the HTTP(S)_PROXY form.
    ProxyBasic,
    /// A JWT from a `[[jwt]]` issuer.
    Jwt,
    /// The client certificate of an mTLS listener.
    Mtls,
}

impl AuthVia {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthVia::Key => "key",
            AuthVia::ProxyBasic => "proxy_basic",
            AuthVia::Jwt => "jwt",
            AuthVia::Mtls => "mtls",
        }
    }
}

/// The kind of `CONNECT` a call came through (the record's `tunnel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    Intercept,
    Blind,
}

impl TunnelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Intercept => "intercept",
            TunnelKind::Blind => "blind",
        }
    }
}

/// `metered`: each budget's name and the units it charged for the call.
pub type Metered = Vec<(Arc<str>, u64)>;

/// The MCP side of a call (see [`AuditRecord::mcp`]): written as `mcp_method`, then `tool`,
/// `resource` or `prompt` (the name or URI the message acted on), then `mcp_session`, each
/// only when known.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct McpNote {
    /// The JSON-RPC method of the message recorded (a batch: the one that decided, else the
    /// first that names something, else the first).
    pub method: String,
    /// `tool` | `resource` | `prompt` with its name or URI.
    pub target: Option<(&'static str, String)>,
    /// The `Mcp-Session-Id` the agent sent.
    pub session: Option<String>,
    /// Messages in the body when it was a batch (written as `mcp_batch`).
    pub batch: Option<u32>,
    /// Entries removed from list answers (`mcp_hidden`, when not 0).
    pub hidden: u32,
    /// List answers replaced by a JSON-RPC error (`mcp_list_refused`, when not 0).
    pub list_refused: u32,
    /// Of `hidden`, tools whose description a scanner matched (`mcp_screened`, when not 0).
    pub screened: u32,
    /// Of `hidden`, tools whose definition changed since it was pinned (`mcp_changed`, when
    /// not 0).
    pub changed: u32,
}

/// An approval named by an audit record (see [`AuditRecord::approval`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ApprovalNote {
    pub id: String,
    /// `requested` | `approved` | `denied` | `expired`; `None` on the call that executed it.
    pub event: Option<&'static str>,
    /// The admin identity that decided.
    pub approver: Option<String>,
    pub reason: Option<String>,
    /// SHA-256 (hex) of the body as held.
    pub body_sha256: Option<String>,
}

// A ring slot holds one record inline: keep it within 320 bytes (65,536 slots ≈ 20 MiB). Rare,
// larger fields go behind one pointer (`approval`), so a new field needs a reason to be inline.
const _: () = assert!(std::mem::size_of::<AuditRecord>() <= 320);

/// Why a gap record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The ring was full (records counted by its drop counter).
    QueueFull,
    /// The writer's pending buffer overflowed while the disk refused writes.
    BacklogFull,
    /// A line torn by a crash was cut from the end of the newest file at restart.
    TornTail,
    /// The disk refused writes until shutdown: the records held in memory were lost.
    WriteFailed,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::QueueFull => "queue_full",
            GapReason::BacklogFull => "backlog_full",
            GapReason::TornTail => "torn_tail",
            GapReason::WriteFailed => "write_failed",
        }
    }
}

/// What the writer puts on one line.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    Call(&'a AuditRecord),
    /// A call record's completion (see [`AuditRecord::completion`]).
    Completion(&'a AuditRecord),
    Gap {
        ts_us: u64,
        dropped: u64,
        reason: GapReason,
        /// Receive times of the first and last lost record (or when the drops were seen).
        window: Option<(u64, u64)>,
    },
    Checkpoint {
        ts_us: u64,
        records: u64,
        /// Public key and signature, with a signing key.
        signed: Option<(&'a [u8; 32], &'a [u8; 64])>,
    },
    Anchor {
        ts_us: u64,
        first: &'a Hash,
        file: &'a str,
        removed: u64,
    },
}

/// The bytes a checkpoint's signature covers: its timestamp (as written), the hash of the line
/// before it (the chain head it vouches for) and its record count.
pub fn checkpoint_message(ts: &str, prev_hex: &str, records: u64) -> Vec<u8> {
    format!("portcullis audit checkpoint v1\nts={ts}\nprev={prev_hex}\nrecords={records}\n")
        .into_bytes()
}

/// `{"ts":"` — every line starts with it, and the 27-byte timestamp follows.
pub const TS_PREFIX: &[u8] = b"{\"ts\":\"";
/// Length of `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub const TS_LEN: usize = 27;
/// `,"prev":"<64>","hash":"<64>"}` — the fixed-size tail of every line.
pub const TAIL_LEN: usize = 9 + 64 + 10 + 64 + 2;

/// Appends one complete line (with `\n`) for `entry` chained after `prev`; returns its hash.
pub fn encode_line(out: &mut Vec<u8>, entry: &Entry<'_>, prev: &Hash) -> Hash {
    let start = out.len();
    match entry {
        Entry::Call(r) => encode_call(out, r),
        Entry::Completion(r) => {
            out.extend_from_slice(TS_PREFIX);
            push_ts(out, r.ts_us);
            out.extend_from_slice(b"\",\"kind\":\"completion\",\"id\":");
            push_json_str(out, r.id.as_str());
            out.extend_from_slice(b",\"bytes_out\":");
            push_u64(out, r.bytes_out);
            out.extend_from_slice(b",\"redactions\":");
            push_u64(out, r.redactions as u64);
            push_secret_reflected(out, r.secret_reflected);
            push_metered(out, r.metered.as_deref());
            out.extend_from_slice(b",\"total_us\":");
            push_u64(out, r.total_us);
        }
        Entry::Gap {
            ts_us,
            dropped,
            reason,
            window,
        } => {
            out.extend_from_slice(TS_PREFIX);
            push_ts(out, *ts_us);
            out.extend_from_slice(b"\",\"kind\":\"gap\",\"dropped\":");
            push_u64(out, *dropped);
            out.extend_from_slice(b",\"reason\":\"");
            out.extend_from_slice(reason.as_str().as_bytes());
            out.push(b'"');
            if let Some((from, to)) = window {
                out.extend_from_slice(b",\"from\":\"");
                push_ts(out, *from);
                out.extend_from_slice(b"\",\"to\":\"");
                push_ts(out, *to);
                out.push(b'"');
            }
        }
        Entry::Checkpoint {
            ts_us,
            records,
            signed,
        } => {
            out.extend_from_slice(TS_PREFIX);
            push_ts(out, *ts_us);
            out.extend_from_slice(b"\",\"kind\":\"checkpoint\",\"records\":");
            push_u64(out, *records);
            match signed {
                Some((key, sig)) => {
                    out.extend_from_slice(b",\"key\":\"");
                    out.extend_from_slice(hex::encode(&key[..]).as_bytes());
                    out.extend_from_slice(b"\",\"sig\":\"");
                    out.extend_from_slice(hex::encode(&sig[..]).as_bytes());
                    out.push(b'"');
                }
                None => out.extend_from_slice(b",\"key\":null,\"sig\":null"),
            }
        }
        Entry::Anchor {
            ts_us,
            first,
            file,
            removed,
        } => {
            out.extend_from_slice(TS_PREFIX);
            push_ts(out, *ts_us);
            out.extend_from_slice(b"\",\"kind\":\"anchor\",\"first\":\"");
            let mut fh = [0u8; 64];
            hex_encode(first, &mut fh);
            out.extend_from_slice(&fh);
            out.extend_from_slice(b"\",\"file\":");
            push_json_str(out, file);
            out.extend_from_slice(b",\"removed\":");
            push_u64(out, *removed);
        }
    }
    let mut prev_hex = [0u8; 64];
    hex_encode(prev, &mut prev_hex);
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(&prev_hex);
    out.push(b'"');
    let hash = chain_hash(&prev_hex, &out[start..]);
    let mut hash_hex = [0u8; 64];
    hex_encode(&hash, &mut hash_hex);
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(&hash_hex);
    out.extend_from_slice(b"\"}\n");
    hash
}

/// `SHA-256(prev_hex || body_open || "}")`, where `body_open` is the line up to and including the
/// closing quote of `prev` (the body without its final brace).
pub fn chain_hash(prev_hex: &[u8], body_open: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev_hex);
    ctx.update(body_open);
    ctx.update(b"}");
    let d = ctx.finish();
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// The chain members of one line (without its `\n`), found by position.
pub struct LineTail<'a> {
    /// The line up to and including the closing quote of `prev`.
    pub body_open: &'a [u8],
    pub prev_hex: &'a [u8],
    pub hash_hex: &'a [u8],
}

/// Splits a line into body / prev / hash, or `None` if its tail is not
/// `,"prev":"<64 hex>","hash":"<64 hex>"}`.
pub fn split_tail(line: &[u8]) -> Option<LineTail<'_>> {
    if line.len() < TAIL_LEN + 2 || line[0] != b'{' {
        return None;
    }
    let t = line.len() - TAIL_LEN;
    let tail = &line[t..];
    if &tail[..9] != b",\"prev\":\"" || &tail[73..83] != b"\",\"hash\":\"" || &tail[147..] != b"\"}"
    {
        return None;
    }
    let prev_hex = &tail[9..73];
    let hash_hex = &tail[83..147];
    if !is_lower_hex(prev_hex) || !is_lower_hex(hash_hex) {
        return None;
    }
    Some(LineTail {
        body_open: &line[..t + 74],
        prev_hex,
        hash_hex,
    })
}

fn is_lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// An approval's event: `kind: "approval"`, the event, the approval id, who made the call and
/// what it was, the decision's approver and reason, and the held body's SHA-256.
fn encode_approval(out: &mut Vec<u8>, r: &AuditRecord, n: &ApprovalNote, event: &str) {
    out.extend_from_slice(TS_PREFIX);
    push_ts(out, r.ts_us);
    out.extend_from_slice(b"\",\"kind\":\"approval\",\"event\":");
    push_json_str(out, event);
    out.extend_from_slice(b",\"approval_id\":");
    push_json_str(out, &n.id);
    out.extend_from_slice(b",\"agent\":");
    push_opt_str(out, r.agent.as_deref());
    out.extend_from_slice(b",\"proxy\":");
    push_opt_str(out, r.proxy.as_deref());
    out.extend_from_slice(b",\"method\":");
    push_json_str(out, r.method.as_str());
    out.extend_from_slice(b",\"path\":");
    push_json_str(out, &r.path);
    out.extend_from_slice(b",\"rule\":");
    push_opt_u64(out, r.rule.map(u64::from));
    out.extend_from_slice(b",\"approver\":");
    push_opt_str(out, n.approver.as_deref());
    out.extend_from_slice(b",\"reason\":");
    push_opt_str(out, n.reason.as_deref());
    out.extend_from_slice(b",\"body_sha256\":");
    push_opt_str(out, n.body_sha256.as_deref());
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, r.bytes_in);
}

/// An admin action: `kind: "admin"`, the action, the admin identity and its role, the target
/// and the answer's status.
fn encode_admin(out: &mut Vec<u8>, r: &AuditRecord, n: &AdminNote) {
    out.extend_from_slice(TS_PREFIX);
    push_ts(out, r.ts_us);
    out.extend_from_slice(b"\",\"kind\":\"admin\",\"id\":");
    push_json_str(out, r.id.as_str());
    out.extend_from_slice(b",\"action\":");
    push_json_str(out, n.action);
    out.extend_from_slice(b",\"admin\":");
    push_json_str(out, &n.admin);
    out.extend_from_slice(b",\"role\":");
    push_json_str(out, n.role);
    out.extend_from_slice(b",\"target\":");
    push_opt_str(out, n.target.as_deref());
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(r.status));
}

fn encode_call(out: &mut Vec<u8>, r: &AuditRecord) {
    if let Some(n) = &r.admin {
        return encode_admin(out, r, n);
    }
    if let Some(n) = &r.approval
        && let Some(event) = n.event
    {
        return encode_approval(out, r, n, event);
    }
    out.extend_from_slice(TS_PREFIX);
    push_ts(out, r.ts_us);
    out.extend_from_slice(b"\",\"id\":");
    push_json_str(out, r.id.as_str());
    if let Some(a) = &r.agent_request_id {
        out.extend_from_slice(b",\"agent_request_id\":");
        push_json_str(out, a);
    }
    if r.trace_id != [0; 16] {
        let mut t = [0u8; 32];
        hex::encode_into(&r.trace_id, &mut t);
        out.extend_from_slice(b",\"trace_id\":\"");
        out.extend_from_slice(&t);
        out.push(b'"');
    }
    out.extend_from_slice(b",\"agent\":");
    push_opt_str(out, r.agent.as_deref());
    if let Some(a) = r.auth {
        out.extend_from_slice(b",\"auth\":\"");
        out.extend_from_slice(a.as_str().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"proxy\":");
    push_opt_str(out, r.proxy.as_deref());
    out.extend_from_slice(b",\"method\":");
    push_json_str(out, r.method.as_str());
    out.extend_from_slice(b",\"path\":");
    push_json_str(out, &r.path);
    if let Some(t) = r.tunnel {
        out.extend_from_slice(b",\"tunnel\":\"");
        out.extend_from_slice(t.as_str().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"status\":");
    push_u64(out, r.status as u64);
    out.extend_from_slice(b",\"decision\":\"");
    out.extend_from_slice(r.decision.as_str().as_bytes());
    out.extend_from_slice(b"\",\"code\":");
    push_opt_str(out, r.code);
    out.extend_from_slice(b",\"rule\":");
    push_opt_u64(out, r.rule.map(u64::from));
    out.extend_from_slice(b",\"scanner\":");
    push_opt_str(out, r.scanner.as_deref());
    out.extend_from_slice(b",\"redactions\":");
    push_u64(out, r.redactions as u64);
    push_secret_reflected(out, r.secret_reflected);
    push_metered(out, r.metered.as_deref());
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, r.bytes_out);
    out.extend_from_slice(b",\"upstream_status\":");
    push_opt_u64(out, r.upstream_status.map(u64::from));
    out.extend_from_slice(b",\"upstream_us\":");
    push_opt_u64(out, r.upstream_us.map(u64::from));
    out.extend_from_slice(b",\"total_us\":");
    push_u64(out, r.total_us);
    out.extend_from_slice(b",\"client\":");
    let peer = |out: &mut Vec<u8>| match r.client {
        Some((ip, port)) => {
            use std::io::Write as _;
            out.push(b'"');
            let _ = write!(out, "{}", std::net::SocketAddr::new(ip, port));
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    };
    match r.forwarded_for {
        Some(ip) => {
            use std::io::Write as _;
            out.push(b'"');
            let _ = write!(out, "{ip}");
            out.push(b'"');
            out.extend_from_slice(b",\"peer\":");
            peer(out);
        }
        None => peer(out),
    }
    out.extend_from_slice(b",\"shadow\":");
    match r.shadow {
        Some((rule, d)) => {
            out.extend_from_slice(b"{\"rule\":");
            push_u64(out, rule as u64);
            out.extend_from_slice(b",\"decision\":\"");
            out.extend_from_slice(d.as_str().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        None => out.extend_from_slice(b"null"),
    }
    if let Some(n) = &r.approval {
        out.extend_from_slice(b",\"approval_id\":");
        push_json_str(out, &n.id);
    }
    push_mcp(out, r.mcp.as_deref());
}

/// `,"mcp_method":M[,"tool"|"resource"|"prompt":N][,"mcp_session":S][,"mcp_batch":N]`, only on
/// MCP calls.
fn push_mcp(out: &mut Vec<u8>, m: Option<&McpNote>) {
    let Some(m) = m else { return };
    out.extend_from_slice(b",\"mcp_method\":");
    push_json_str(out, &m.method);
    if let Some((kind, name)) = &m.target {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\":");
        push_json_str(out, name);
    }
    if let Some(sid) = &m.session {
        out.extend_from_slice(b",\"mcp_session\":");
        push_json_str(out, sid);
    }
    if let Some(n) = m.batch {
        out.extend_from_slice(b",\"mcp_batch\":");
        push_u64(out, n as u64);
    }
    if m.hidden > 0 {
        out.extend_from_slice(b",\"mcp_hidden\":");
        push_u64(out, m.hidden as u64);
    }
    if m.list_refused > 0 {
        out.extend_from_slice(b",\"mcp_list_refused\":");
        push_u64(out, m.list_refused as u64);
    }
    if m.screened > 0 {
        out.extend_from_slice(b",\"mcp_screened\":");
        push_u64(out, m.screened as u64);
    }
    if m.changed > 0 {
        out.extend_from_slice(b",\"mcp_changed\":");
        push_u64(out, m.changed as u64);
    }
}

/// `,"secret_reflected":N` after `redactions`, only when an injected secret was masked.
fn push_secret_reflected(out: &mut Vec<u8>, n: u16) {
    if n > 0 {
        out.extend_from_slice(b",\"secret_reflected\":");
        push_u64(out, n as u64);
    }
}

/// `,"metered":{"name":N,...}`, only when some budget read a value.
fn push_metered(out: &mut Vec<u8>, m: Option<&Metered>) {
    let Some(m) = m.filter(|m| !m.is_empty()) else {
        return;
    };
    out.extend_from_slice(b",\"metered\":{");
    for (k, (name, n)) in m.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        push_json_str(out, name);
        out.push(b':');
        push_u64(out, *n);
    }
    out.push(b'}');
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

fn push_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => push_u64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// 0 = copy as is; otherwise the byte needs an escape.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[0x7f] = b'u';
    t
};

/// Appends `s` as a JSON string literal (quotes included). Control characters and DEL are
/// `\u00XX`-escaped; everything else (valid UTF-8 by type) is copied.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let e = ESCAPE[c as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&b[run..i]);
        run = i + 1;
        if e == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(e);
        }
    }
    out.extend_from_slice(&b[run..]);
    out.push(b'"');
}

/// Lower-case hex of a hash.
pub fn hex_encode(h: &Hash, out: &mut [u8; 64]) {
    hex::encode_into(h, out);
}

pub fn hex_string(h: &Hash) -> String {
    let mut out = [0u8; 64];
    hex_encode(h, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses 64 hex digits.
pub fn hex_decode(s: &[u8]) -> Option<Hash> {
    hex::decode32(s)
}

// ---- time -------------------------------------------------------------------------------------

/// Largest timestamp formatted (9999-12-31T23:59:59.999999Z); later ones are clamped.
pub const MAX_TS_US: u64 = 253_402_300_799_999_999;

/// Appends `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always 27 bytes) for µs since the epoch.
pub fn push_ts(out: &mut Vec<u8>, ts_us: u64) {
    let ts = ts_us.min(MAX_TS_US);
    let secs = ts / 1_000_000;
    let micros = ts % 1_000_000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut b = [0u8; TS_LEN];
    put_digits(&mut b[0..4], y as u64);
    b[4] = b'-';
    put_digits(&mut b[5..7], m as u64);
    b[7] = b'-';
    put_digits(&mut b[8..10], d as u64);
    b[10] = b'T';
    put_digits(&mut b[11..13], sod / 3600);
    b[13] = b':';
    put_digits(&mut b[14..16], (sod / 60) % 60);
    b[16] = b':';
    put_digits(&mut b[17..19], sod % 60);
    b[19] = b'.';
    put_digits(&mut b[20..26], micros);
    b[26] = b'Z';
    out.extend_from_slice(&b);
}

/// RFC 3339 string for µs since the epoch.
pub fn format_ts(ts_us: u64) -> String {
    let mut v = Vec::with_capacity(TS_LEN);
    push_ts(&mut v, ts_us);
    String::from_utf8_lossy(&v).into_owned()
}

fn put_digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

// calendar arithmetic is shared with the rest of the crate
use crate::util::datetime::{civil_from_days, days_from_civil};

fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |a, &c| a * 10 + (c - b'0') as u64))
}

/// Parses RFC 3339 (`2026-11-24T09:59:27Z`, `…27.123456Z`, `…27+02:00`; `t`/space separator and
/// lower-case `z` accepted) or a bare date (`2026-11-24`, midnight UTC) into µs since the epoch.
/// Fractions beyond µs are truncated. `None` for anything else or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let mo = digits(&b[5..7])? as u32;
    let d = digits(&b[8..10])? as u32;
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let mut secs = days.checked_mul(86_400)?;
    let mut micros = 0u64;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 20 || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let h = digits(&b[11..13])? as i64;
        let mi = digits(&b[14..16])? as i64;
        let se = digits(&b[17..19])? as i64;
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + se;
        let mut rest = &b[19..];
        if rest.first() == Some(&b'.') {
            let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            for (i, c) in rest[1..=n].iter().enumerate() {
                if i < 6 {
                    micros = micros * 10 + (c - b'0') as u64;
                }
            }
            for _ in n..6 {
                micros *= 10;
            }
            rest = &rest[n + 1..];
        }
        match rest {
            [b'Z' | b'z'] => {}
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let oh = digits(&[*h1, *h2])? as i64;
                let om = digits(&[*m1, *m2])? as i64;
                if oh > 23 || om > 59 {
                    return None;
                }
                let off = oh * 3600 + om * 60;
                secs = if *sign == b'+' {
                    secs - off
                } else {
                    secs + off
                };
            }
            _ => return None,
        }
    }
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The timestamp of a line, read by position (every line starts with `{"ts":"<27 bytes>"`).
pub fn line_ts(line: &[u8]) -> Option<u64> {
    if line.len() < TS_PREFIX.len() + TS_LEN + 1
        || &line[..TS_PREFIX.len()] != TS_PREFIX
        || line[TS_PREFIX.len() + TS_LEN] != b'"'
    {
        return None;
    }
    let t = &line[TS_PREFIX.len()..TS_PREFIX.len() + TS_LEN];
    std::str::from_utf8(t).ok().and_then(parse_rfc3339)
}

// ---- parsed back ------------------------------------------------------------------------------

/// A line read back from disk (calls and gaps alike; call-only members are `None` on a gap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub ts: String,
    /// `Some("gap")` for a gap record; absent on calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The agent's own `X-Request-Id`; absent when it sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_request_id: Option<String>,
    /// The call's W3C trace id (32 lower-case hex); absent when the call had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    /// How the agent was identified: `key`, `proxy_basic`, `jwt`, `mtls`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// `intercept` or `blind` for calls through a `CONNECT`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    #[serde(default)]
    pub proxy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub rule: Option<u32>,
    #[serde(default)]
    pub scanner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redactions: Option<u32>,
    /// Injected secrets the upstream reflected (masked); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_reflected: Option<u32>,
    /// Units each budget charged for the call; absent when none read a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metered: Option<std::collections::BTreeMap<String, u64>>,
    /// MCP calls: the JSON-RPC method, the tool / resource / prompt it named, the session and
    /// the batch size; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_batch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_hidden: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_list_refused: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_screened: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_changed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default)]
    pub upstream_status: Option<u16>,
    #[serde(default)]
    pub upstream_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The TCP peer (`IP:port`), present only when a trusted proxy named another `client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Gap: receive time of the first and the last lost record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Checkpoint: call records since the previous checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Checkpoint: the Ed25519 public key (hex) and signature (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// Anchor: the hash of the first remaining line, its file, and how many files were removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<u64>,
    /// A call that executed an approval, or an approval event (`kind: "approval"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Approval event: `requested` | `approved` | `denied` | `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// Admin action (`kind: "admin"`): the action, the admin identity, its role, the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub prev: String,
    pub hash: String,
}

/// The `shadow` member of a call record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadow {
    pub rule: u32,
    pub decision: String,
}

impl StoredRecord {
    pub fn parse(line: &[u8]) -> Result<StoredRecord, serde_json::Error> {
        serde_json::from_slice(line)
    }

    pub fn is_gap(&self) -> bool {
        self.kind.as_deref() == Some("gap")
    }

    /// A call record (not a gap, checkpoint or anchor).
    pub fn is_call(&self) -> bool {
        self.kind.is_none()
    }

    pub fn ts_us(&self) -> Option<u64> {
        parse_rfc3339(&self.ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> AuditRecord {
        AuditRecord {
            ts_us: 1_795_600_767_123_456,
            id: SmallStr::new("0123456789abcdef0123456789abcdef"),
            agent_request_id: None,
            agent: Some("support-bot".into()),
            proxy: Some("crm".into()),
            method: SmallStr::new("GET"),
            path: "/v1/accounts/42".into(),
            status: 403,
            decision: Decision::Deny,
            code: Some("denied_by_rule"),
            rule: Some(3),
            scanner: None,
            redactions: 0,
            secret_reflected: 0,
            bytes_in: 10,
            bytes_out: 99,
            upstream_status: None,
            upstream_us: None,
            total_us: 77,
            client: Some(("10.0.0.7".parse().unwrap(), 51234)),
            forwarded_for: None,
            shadow: Some((2, Decision::Deny)),
            completion: false,
            approval: None,
            trace_id: [0; 16],
            metered: None,
            admin: None,
            auth: None,
            tunnel: None,
            mcp: None,
        }
    }

    /// `auth` after `agent` and `tunnel` after `path`: written only when set, read back.
    #[test]
    fn auth_and_tunnel_are_written_when_set_and_read_back() {
        let mut r = sample();
        let mut out = Vec::new();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("\"auth\"") && !text.contains("\"tunnel\""),
            "{text}"
        );
        for (via, kind, a, t) in [
            (
                AuthVia::ProxyBasic,
                TunnelKind::Blind,
                "proxy_basic",
                "blind",
            ),
            (AuthVia::Mtls, TunnelKind::Intercept, "mtls", "intercept"),
            (AuthVia::Key, TunnelKind::Intercept, "key", "intercept"),
            (AuthVia::Jwt, TunnelKind::Blind, "jwt", "blind"),
        ] {
            r.auth = Some(via);
            r.tunnel = Some(kind);
            let mut out = Vec::new();
            encode_line(&mut out, &Entry::Call(&r), &GENESIS);
            let text = std::str::from_utf8(&out).unwrap();
            assert!(
                text.contains(&format!("\"agent\":\"support-bot\",\"auth\":\"{a}\",")),
                "{text}"
            );
            assert!(
                text.contains(&format!("\"path\":\"/v1/accounts/42\",\"tunnel\":\"{t}\",")),
                "{text}"
            );
            let back = StoredRecord::parse(text.trim_end().as_bytes()).unwrap();
            assert_eq!(back.auth.as_deref(), Some(a));
            assert_eq!(back.tunnel.as_deref(), Some(t));
        }
    }

    /// The MCP members: written only on MCP calls, after everything else, and read back.
    #[test]
    fn mcp_members_are_written_and_read_back() {
        let mut r = sample();
        let mut out = Vec::new();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        assert!(!std::str::from_utf8(&out).unwrap().contains("mcp_method"));
        r.mcp = Some(Box::new(McpNote {
            method: "tools/call".into(),
            target: Some(("tool", "del\"ete".into())),
            session: Some("s-1".into()),
            batch: Some(2),
            hidden: 3,
            list_refused: 0,
            screened: 0,
            changed: 0,
        }));
        out.clear();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(
            line.contains(
                ",\"mcp_method\":\"tools/call\",\"tool\":\"del\\\"ete\",\"mcp_session\":\"s-1\",\"mcp_batch\":2,\"mcp_hidden\":3,\"prev\""
            ),
            "{line}"
        );
        let s = StoredRecord::parse(line.trim_end().as_bytes()).unwrap();
        assert_eq!(s.mcp_method.as_deref(), Some("tools/call"));
        assert_eq!(s.tool.as_deref(), Some("del\"ete"));
        assert_eq!(s.mcp_session.as_deref(), Some("s-1"));
        assert_eq!(s.mcp_batch, Some(2));
        assert_eq!(s.resource, None);
    }

    /// `metered`: written only when set (call and completion lines), after `redactions` and
    /// `secret_reflected`, and read back.
    #[test]
    fn metered_is_written_and_read_back() {
        let mut r = sample();
        let mut out = Vec::new();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        assert!(!std::str::from_utf8(&out).unwrap().contains("metered"));
        r.metered = Some(Box::new(vec![("tokens".into(), 42), ("co\"st".into(), 7)]));
        for entry in [Entry::Call(&r), Entry::Completion(&r)] {
            out.clear();
            encode_line(&mut out, &entry, &GENESIS);
            let line = std::str::from_utf8(&out).unwrap();
            assert!(
                line.contains("\"redactions\":0,\"metered\":{\"tokens\":42,\"co\\\"st\":7}"),
                "{line}"
            );
            let s = StoredRecord::parse(line.trim_end().as_bytes()).unwrap();
            let m = s.metered.expect("metered");
            assert_eq!(m.get("tokens"), Some(&42));
            assert_eq!(m.get("co\"st"), Some(&7));
        }
    }

    /// The optional members: written only when set, after `id` and `redactions`, and read back.
    #[test]
    fn agent_request_id_and_secret_reflected() {
        let mut r = sample();
        let mut out = Vec::new();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(!line.contains("agent_request_id") && !line.contains("secret_reflected"));
        r.agent_request_id = Some(Arc::new("agent-\"id\"".into()));
        r.secret_reflected = 3;
        out.clear();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(
            line.contains(
                "\"id\":\"0123456789abcdef0123456789abcdef\",\"agent_request_id\":\"agent-\\\"id\\\"\",\"agent\":"
            ),
            "{line}"
        );
        assert!(line.contains("\"redactions\":0,\"secret_reflected\":3,\"bytes_in\""));
        let s = StoredRecord::parse(line.trim_end().as_bytes()).unwrap();
        assert_eq!(s.agent_request_id.as_deref(), Some("agent-\"id\""));
        assert_eq!(s.secret_reflected, Some(3));
        assert_eq!(s.id.as_deref(), Some("0123456789abcdef0123456789abcdef"));
    }

    /// `trace_id`: 32 lower-case hex after `id` (and `agent_request_id`), only when set.
    #[test]
    fn trace_id_written_when_set_and_read_back() {
        let mut r = sample();
        let mut out = Vec::new();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        assert!(!std::str::from_utf8(&out).unwrap().contains("trace_id"));
        r.trace_id = [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ];
        out.clear();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(
            line.contains(
                "\"id\":\"0123456789abcdef0123456789abcdef\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"agent\":"
            ),
            "{line}"
        );
        let s = StoredRecord::parse(line.trim_end().as_bytes()).unwrap();
        assert_eq!(
            s.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    /// Behind a trusted proxy: `client` is the forwarded address, `peer` the TCP peer.
    #[test]
    fn forwarded_client_and_peer() {
        let mut r = sample();
        r.forwarded_for = Some("2001:db8::7".parse().unwrap());
        let mut out = Vec::new();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(
            line.contains("\"client\":\"2001:db8::7\",\"peer\":\"10.0.0.7:51234\",\"shadow\""),
            "{line}"
        );
        let s = StoredRecord::parse(line.trim_end().as_bytes()).unwrap();
        assert_eq!(s.client.as_deref(), Some("2001:db8::7"));
        assert_eq!(s.peer.as_deref(), Some("10.0.0.7:51234"));
        r.forwarded_for = None;
        out.clear();
        encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(!line.contains("\"peer\""), "{line}");
    }

    #[test]
    fn line_shape_and_parse_back() {
        let r = sample();
        let mut out = Vec::new();
        let h = encode_line(&mut out, &Entry::Call(&r), &GENESIS);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(line.ends_with("\"}\n"));
        assert_eq!(
            &line[..97],
            "{\"ts\":\"2026-11-25T09:59:27.123456Z\",\"id\":\"0123456789abcdef0123456789abcdef\",\"agent\":\"support-bot\""
        );
        let s = StoredRecord::parse(line.trim_end().as_bytes()).unwrap();
        assert_eq!(s.ts_us(), Some(r.ts_us));
        assert_eq!(s.status, Some(403));
        assert_eq!(s.code.as_deref(), Some("denied_by_rule"));
        assert_eq!(s.rule, Some(3));
        assert_eq!(s.upstream_status, None);
        assert_eq!(s.client.as_deref(), Some("10.0.0.7:51234"));
        assert_eq!(
            s.shadow,
            Some(Shadow {
                rule: 2,
                decision: "deny".into()
            })
        );
        assert_eq!(s.prev, "0".repeat(64));
        assert_eq!(s.hash, hex_string(&h));
        assert!(!s.is_gap());
        // the chain members are found by position and recompute to the same hash
        let body = &out[..out.len() - 1];
        let t = split_tail(body).unwrap();
        assert_eq!(chain_hash(t.prev_hex, t.body_open), h);
        assert_eq!(line_ts(body), Some(r.ts_us));
    }

    #[test]
    fn approval_event_and_executed_call_lines() {
        let mut ev = sample();
        ev.approval = Some(Arc::new(ApprovalNote {
            id: "apr_0123456789abcdef01234567".into(),
            event: Some("approved"),
            approver: Some("alice".into()),
            reason: Some("ok \"ticket\" 7".into()),
            body_sha256: Some("ab".repeat(32)),
        }));
        let mut out = Vec::new();
        let h = encode_line(&mut out, &Entry::Call(&ev), &GENESIS);
        let s = StoredRecord::parse(out.trim_ascii_end()).unwrap();
        assert_eq!(s.kind.as_deref(), Some("approval"));
        assert_eq!(s.event.as_deref(), Some("approved"));
        assert_eq!(
            s.approval_id.as_deref(),
            Some("apr_0123456789abcdef01234567")
        );
        assert_eq!(s.approver.as_deref(), Some("alice"));
        assert_eq!(s.reason.as_deref(), Some("ok \"ticket\" 7"));
        assert_eq!(s.body_sha256, Some("ab".repeat(32)));
        assert_eq!(s.agent.as_deref(), Some("support-bot"));
        assert!(!s.is_call());
        let t = split_tail(&out[..out.len() - 1]).unwrap();
        assert_eq!(chain_hash(t.prev_hex, t.body_open), h);
        // the call that executed it carries the id
        let mut call = sample();
        call.approval = Some(Arc::new(ApprovalNote {
            id: "apr_0123456789abcdef01234567".into(),
            ..ApprovalNote::default()
        }));
        let mut out = Vec::new();
        encode_line(&mut out, &Entry::Call(&call), &GENESIS);
        let s = StoredRecord::parse(out.trim_ascii_end()).unwrap();
        assert!(s.is_call());
        assert_eq!(
            s.approval_id.as_deref(),
            Some("apr_0123456789abcdef01234567")
        );
        assert_eq!(s.status, Some(403));
    }

    #[test]
    fn gap_line() {
        let mut out = Vec::new();
        let g = Entry::Gap {
            ts_us: 0,
            dropped: 12,
            reason: GapReason::QueueFull,
            window: Some((1_000_000, 2_000_000)),
        };
        encode_line(&mut out, &g, &[7u8; 32]);
        let s = StoredRecord::parse(&out).unwrap();
        assert!(s.is_gap());
        assert_eq!(s.dropped, Some(12));
        assert_eq!(s.reason.as_deref(), Some("queue_full"));
        assert_eq!(s.ts, "1970-01-01T00:00:00.000000Z");
        assert_eq!(s.prev, "07".repeat(32));
        assert_eq!(s.from.as_deref(), Some("1970-01-01T00:00:01.000000Z"));
        assert_eq!(s.to.as_deref(), Some("1970-01-01T00:00:02.000000Z"));
    }

    #[test]
    fn escaping() {
        let cases: &[(&str, &str)] = &[
            ("plain", "\"plain\""),
            ("a\"b", "\"a\\\"b\""),
            ("a\\b", "\"a\\\\b\""),
            ("\n\r\t\u{8}\u{c}", "\"\\n\\r\\t\\b\\f\""),
            ("\u{1}\u{1f}\u{7f}", "\"\\u0001\\u001f\\u007f\""),
            ("é✓😀", "\"é✓😀\""),
            ("", "\"\""),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            push_json_str(&mut out, input);
            assert_eq!(std::str::from_utf8(&out).unwrap(), *want, "{input:?}");
        }
    }

    #[test]
    fn timestamps() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1970-01-01T00:00:00.000001Z", Some(1)),
            ("2000-02-29T12:00:00.5Z", Some(951_825_600_500_000)),
            ("2000-02-29T14:00:00.5+02:00", Some(951_825_600_500_000)),
            ("2000-02-29t11:00:00.5-01:00", Some(951_825_600_500_000)),
            ("2000-02-29", Some(951_782_400_000_000)),
            ("2000-02-29T12:00:00.123456789Z", Some(951_825_600_123_456)),
            ("2001-02-29T00:00:00Z", None),
            ("2001-13-01T00:00:00Z", None),
            ("2001-01-01T24:00:00Z", None),
            ("2001-01-01T00:00:00", None),
            ("2001-01-01T00:00:00.Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("yesterday", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339(s), *want, "{s}");
        }
        assert_eq!(
            format_ts(951_825_600_500_000),
            "2000-02-29T12:00:00.500000Z"
        );
        assert_eq!(format_ts(u64::MAX), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn small_str() {
        let s: SmallStr<4> = SmallStr::new("abcd");
        assert!(matches!(s, SmallStr::Inline { .. }));
        assert_eq!(s.as_str(), "abcd");
        let s: SmallStr<4> = SmallStr::new("abcde");
        assert!(matches!(s, SmallStr::Heap(_)));
        assert_eq!(s.as_str(), "abcde");
    }

    proptest! {
        #[test]
        fn ts_roundtrip(ts in 0u64..=MAX_TS_US) {
            prop_assert_eq!(parse_rfc3339(&format_ts(ts)), Some(ts));
        }

        #[test]
        fn any_strings_roundtrip(path in ".*", agent in ".*", method in "[A-Z]{1,20}") {
            let mut r = sample();
            r.path = path.clone();
            r.agent = Some(agent.as_str().into());
            r.method = SmallStr::new(&method);
            let mut out = Vec::new();
            let h = encode_line(&mut out, &Entry::Call(&r), &GENESIS);
            prop_assert_eq!(memchr::memchr(b'\n', &out), Some(out.len() - 1));
            let s = StoredRecord::parse(&out).unwrap();
            prop_assert_eq!(s.path.as_deref(), Some(path.as_str()));
            prop_assert_eq!(s.agent.as_deref(), Some(agent.as_str()));
            prop_assert_eq!(s.method.as_deref(), Some(method.as_str()));
            let t = split_tail(&out[..out.len() - 1]).unwrap();
            prop_assert_eq!(chain_hash(t.prev_hex, t.body_open), h);
        }
    }
}
