//! Metrics: per-worker counter shards written only by their worker, merged when `/metrics` is
//! scraped. One call per request ([`WorkerMetrics::record`], from `CallLog`'s drop).
//!
//! ```text
//!  worker 0: WorkerMetrics ─ Arc<Shard> ─┐
//!  worker 1: WorkerMetrics ─ Arc<Shard> ─┼─► Metrics (admin thread) ─► render(): sum by proxy name
//!  worker N: WorkerMetrics ─ Arc<Shard> ─┘
//! ```
//!
//! # Cost on the data plane
//!
//! A shard's counters are `AtomicU64`s written by one thread only, so an update is a relaxed
//! load and store (no locked read-modify-write, no cache line shared with another worker); the
//! scraper reads them relaxed and may see a call half-counted (one counter bumped, the next not
//! yet), which Prometheus tolerates. A call's proxy maps to a *slot* of its worker's shard
//! ([`WorkerMetrics::slots_for`]): a vector index computed when the worker builds its view of a
//! compiled config, so the name is looked up once per proxy per worker per reload, not per call. Slots are never
//! reused: a proxy removed by a reload keeps its (frozen) counters, and a re-added one its old
//! slot. At most [`MAX_PROXY_SLOTS`] proxy names get their own slot per worker; calls of later
//! names are counted under `proxy="_other"`. Calls that never reached a proxy (bad request,
//! unknown proxy) count under `proxy=""`.
//!
//! # Exported (Prometheus text format 0.0.4, hand-written: no registry, no dependency)
//!
//! - `portcullis_requests_total{proxy,decision,status}` — `status` is the class (`2xx`…`5xx`,
//!   `none` when no status was sent: the agent vanished first);
//! - `portcullis_refusals_total{proxy,code}` — the gateway's own answers by error code;
//! - `portcullis_request_duration_seconds{proxy}` — histogram of `total_us`;
//! - `portcullis_shadow_hits_total{proxy,decision}` — report-mode rules that would have
//!   decided the call differently, by the decision they would have made;
//! - `portcullis_meter_rejections_total{proxy}`, `portcullis_scanner_hits_total{proxy}`,
//!   `portcullis_redactions_total{proxy}`, `portcullis_secret_masked_total{proxy}` (injected
//!   secrets an upstream reflected, masked), `portcullis_request_bytes_total{proxy}`,
//!   `portcullis_response_bytes_total{proxy}`;
//! - `portcullis_agent_tls_handshake_errors_total` — failed TLS handshakes on the agent
//!   listeners (`[server] tls`);
//! - `portcullis_upstream_pool_idle_connections{worker}` — sampled by each worker's pool sweeper
//!   (once a second);
//! - `portcullis_body_memory_reserved_bytes{worker}` (request bodies in flight, reserved against
//!   `max_body_memory`) and `portcullis_body_memory_refused_total` (503 `overloaded`);
//! - `portcullis_approvals_held_calls{worker}` (agent connections waiting on an approval) and
//!   `portcullis_approvals_abandoned_total` (held calls whose agent went away);
//! - `portcullis_mcp_list_hidden_total` (MCP list entries removed for the caller),
//!   `portcullis_mcp_tools_screened_total` (tools removed because a scanner matched their
//!   description), `portcullis_mcp_tools_changed_total` (tools removed because their
//!   definition changed since it was pinned) and `portcullis_mcp_lists_refused_total` (list answers replaced by an error);
//! - `portcullis_audit_*` — from the audit writer's [`StatsSnapshot`](crate::observe::audit::StatsSnapshot).
#![forbid(unsafe_code)]

use crate::observe::audit::{Decision, StatsSnapshot};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Proxy names with their own slot in one worker's shard.
pub const MAX_PROXY_SLOTS: usize = 1024;

/// Upper bounds of the latency histogram, in µs (`+Inf` is implicit).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const NB: usize = LATENCY_BUCKETS_US.len() + 1;

/// The gateway's own error codes (`Refusal::code`), in export order.
pub const CODES: [&str; 21] = [
    "unauthenticated",
    "credential_expired",
    "no_rule_matched",
    "denied_by_rule",
    "approval_pending",
    "approval_denied",
    "approval_expired",
    "approval_queue_full",
    "approval_unavailable",
    "payload_blocked",
    "unknown_proxy",
    "unknown_origin",
    "rate_limited",
    "body_too_large",
    "bad_request",
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_auth_failed",
    "audit_unavailable",
    "overloaded",
    "client_closed",
];

const DECISIONS: [Decision; 3] = [Decision::Allow, Decision::Deny, Decision::Approve];
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

fn decision_index(d: Decision) -> usize {
    match d {
        Decision::Allow => 0,
        Decision::Deny => 1,
        Decision::Approve => 2,
    }
}

fn class_index(status: u16) -> usize {
    match status / 100 {
        c @ 1..=5 => c as usize,
        _ => 0,
    }
}

/// Single-writer increment: a relaxed load and store (only the owning worker writes).
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[inline]
fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// What one call contributes (filled from the `CallLog` as it drops).
#[derive(Clone, Copy, Debug, Default)]
pub struct CallSample {
    pub slot: Option<u16>,
    pub decision: Decision,
    pub status: u16,
    pub code: Option<&'static str>,
    pub scanner_hit: bool,
    /// The decision a report-mode rule would have made instead.
    pub shadow: Option<Decision>,
    pub redactions: u64,
    /// Injected secrets masked in the response.
    pub secret_masked: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total_us: u64,
}

/// The counters of one proxy in one worker.
pub struct ProxyCounters {
    requests: [[AtomicU64; 6]; 3],
    refusals: [AtomicU64; CODES.len()],
    latency: [AtomicU64; NB],
    latency_sum_us: AtomicU64,
    meter_rejections: AtomicU64,
    scanner_hits: AtomicU64,
    shadow_hits: [AtomicU64; 3],
    redactions: AtomicU64,
    secret_masked: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Default for ProxyCounters {
    fn default() -> Self {
        ProxyCounters {
            requests: Default::default(),
            refusals: Default::default(),
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            meter_rejections: AtomicU64::new(0),
            scanner_hits: AtomicU64::new(0),
            shadow_hits: Default::default(),
            redactions: AtomicU64::new(0),
            secret_masked: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

impl ProxyCounters {
    fn record(&self, c: &CallSample) {
        bump(
            &self.requests[decision_index(c.decision)][class_index(c.status)],
            1,
        );
        if let Some(code) = c.code {
            if let Some(i) = CODES.iter().position(|k| *k == code) {
                bump(&self.refusals[i], 1);
            }
            if code == "rate_limited" {
                bump(&self.meter_rejections, 1);
            }
        }
        let b = LATENCY_BUCKETS_US
            .iter()
            .position(|le| c.total_us <= *le)
            .unwrap_or(NB - 1);
        bump(&self.latency[b], 1);
        bump(&self.latency_sum_us, c.total_us);
        if c.scanner_hit {
            bump(&self.scanner_hits, 1);
        }
        if let Some(d) = c.shadow {
            bump(&self.shadow_hits[decision_index(d)], 1);
        }
        if c.redactions > 0 {
            bump(&self.redactions, c.redactions);
        }
        if c.secret_masked > 0 {
            bump(&self.secret_masked, c.secret_masked);
        }
        bump(&self.bytes_in, c.bytes_in);
        bump(&self.bytes_out, c.bytes_out);
    }
}

/// A proxy slot: the name it counts for and its counters.
struct Slot {
    name: Arc<str>,
    counters: ProxyCounters,
}

/// One worker's counters. Written by that worker only; read by the scraper.
pub struct Shard {
    pub worker: usize,
    /// Calls that never reached a proxy.
    unrouted: ProxyCounters,
    /// Calls of proxies beyond [`MAX_PROXY_SLOTS`].
    other: ProxyCounters,
    /// Boxed: an unused slot costs a pointer, not a counter set.
    slots: Box<[OnceLock<Box<Slot>>]>,
    /// Idle upstream connections in this worker's pool (sampled by the sweeper).
    pool_idle: AtomicU64,
    /// Bytes of request bodies in flight reserved against `max_body_memory` (gauge).
    body_reserved: AtomicU64,
    /// Request bodies refused because `max_body_memory` was reached.
    body_refused: AtomicU64,
    /// Calls currently held for an approval on this worker (gauge).
    held: AtomicU64,
    /// Held calls whose agent closed the connection while waiting.
    held_abandoned: AtomicU64,
    mcp_hidden: AtomicU64,
    mcp_screened: AtomicU64,
    mcp_changed: AtomicU64,
    mcp_lists_refused: AtomicU64,
}

impl Shard {
    fn new(worker: usize) -> Self {
        Shard {
            worker,
            unrouted: ProxyCounters::default(),
            other: ProxyCounters::default(),
            slots: (0..MAX_PROXY_SLOTS).map(|_| OnceLock::new()).collect(),
            pool_idle: AtomicU64::new(0),
            body_reserved: AtomicU64::new(0),
            body_refused: AtomicU64::new(0),
            held: AtomicU64::new(0),
            held_abandoned: AtomicU64::new(0),
            mcp_hidden: AtomicU64::new(0),
            mcp_screened: AtomicU64::new(0),
            mcp_changed: AtomicU64::new(0),
            mcp_lists_refused: AtomicU64::new(0),
        }
    }
}

/// One of a shard's per-worker gauges or counters.
type ShardField = fn(&Shard) -> &AtomicU64;

/// Slot value meaning "counted under `_other`".
const OTHER_SLOT: u16 = u16::MAX;

#[derive(Default)]
struct Local {
    by_name: HashMap<Arc<str>, u16>,
    used: usize,
}

/// The worker's handle on its shard, with the worker-local proxy → slot cache.
pub struct WorkerMetrics {
    shard: Arc<Shard>,
    local: RefCell<Local>,
}

impl WorkerMetrics {
    pub fn new(shard: Arc<Shard>) -> Self {
        WorkerMetrics {
            shard,
            local: RefCell::new(Local::default()),
        }
    }

    /// A worker without a registry (tests, benches).
    pub fn detached(worker: usize) -> Self {
        Self::new(Arc::new(Shard::new(worker)))
    }

    /// The slot of each of a config's proxies, in order (built with the worker's view of the
    /// config, so a call only indexes a vector).
    pub fn slots_for<'a>(&self, names: impl Iterator<Item = &'a Arc<str>>) -> Vec<u16> {
        names.map(|n| self.slot_of(n)).collect()
    }

    fn slot_of(&self, name: &Arc<str>) -> u16 {
        let mut l = self.local.borrow_mut();
        if let Some(s) = l.by_name.get(name) {
            return *s;
        }
        if l.used >= MAX_PROXY_SLOTS {
            return OTHER_SLOT;
        }
        let s = l.used;
        // only this worker initialises its slots, each once
        let _ = self.shard.slots[s].set(Box::new(Slot {
            name: name.clone(),
            counters: ProxyCounters::default(),
        }));
        l.used += 1;
        let s = s as u16;
        l.by_name.insert(name.clone(), s);
        s
    }

    /// Counts one call. The one metrics call per request.
    #[inline]
    pub fn record(&self, c: &CallSample) {
        let counters = match c.slot {
            None => &self.shard.unrouted,
            Some(OTHER_SLOT) => &self.shard.other,
            Some(s) => match self.shard.slots.get(s as usize).and_then(|x| x.get()) {
                Some(slot) => &slot.counters,
                None => &self.shard.other,
            },
        };
        counters.record(c);
    }

    /// Samples the pool gauge (from the worker's sweeper).
    pub fn set_pool_idle(&self, n: usize) {
        self.shard.pool_idle.store(n as u64, Ordering::Relaxed);
    }

    /// A handle on the body-memory gauge and counter (kept by the worker's body budget).
    pub fn body_gauge(&self) -> BodyGauge {
        BodyGauge(self.shard.clone())
    }

    /// One more (`true`) or one fewer call held for an approval.
    pub fn held(&self, more: bool) {
        let h = &self.shard.held;
        h.store(
            if more {
                get(h) + 1
            } else {
                get(h).saturating_sub(1)
            },
            Ordering::Relaxed,
        );
    }

    /// A held call whose agent went away.
    pub fn held_abandoned(&self) {
        bump(&self.shard.held_abandoned, 1);
    }

    /// An MCP list answer filtered: entries hidden, of them screened and changed (pinned
    /// definition moved), answers refused.
    pub fn mcp_lists(&self, hidden: u64, screened: u64, changed: u64, refused: u64) {
        bump(&self.shard.mcp_hidden, hidden);
        bump(&self.shard.mcp_screened, screened);
        bump(&self.shard.mcp_changed, changed);
        bump(&self.shard.mcp_lists_refused, refused);
    }
}

/// The worker's body-memory gauge and refusal counter (single writer: the worker).
pub struct BodyGauge(Arc<Shard>);

impl BodyGauge {
    pub fn set_reserved(&self, bytes: u64) {
        self.0.body_reserved.store(bytes, Ordering::Relaxed);
    }
    pub fn refused(&self) {
        bump(&self.0.body_refused, 1);
    }
}

/// The registry the admin thread scrapes: every worker's shard.
pub struct Metrics {
    shards: Vec<Arc<Shard>>,
}

impl Metrics {
    /// A registry with one shard per worker; hand `worker_metrics(i)` to worker `i`.
    pub fn new(workers: usize) -> Self {
        Metrics {
            shards: (0..workers).map(|i| Arc::new(Shard::new(i))).collect(),
        }
    }

    pub fn worker_metrics(&self, worker: usize) -> WorkerMetrics {
        match self.shards.get(worker) {
            Some(s) => WorkerMetrics::new(s.clone()),
            None => WorkerMetrics::detached(worker),
        }
    }

    /// Sums the shards by proxy name.
    pub fn merged(&self) -> Vec<(String, Totals)> {
        let mut by: Vec<(String, Totals)> = Vec::new();
        let mut idx: HashMap<String, usize> = HashMap::new();
        let mut add = |name: &str, c: &ProxyCounters| {
            let i = *idx.entry(name.to_string()).or_insert_with(|| {
                by.push((name.to_string(), Totals::default()));
                by.len() - 1
            });
            by[i].1.add(c);
        };
        for sh in &self.shards {
            add("", &sh.unrouted);
            add("_other", &sh.other);
            for s in sh.slots.iter() {
                match s.get() {
                    Some(slot) => add(&slot.name, &slot.counters),
                    // slots fill in order
                    None => break,
                }
            }
        }
        by.retain(|(_, t)| t.calls() > 0);
        by.sort_by(|a, b| a.0.cmp(&b.0));
        by
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, audit: Option<&StatsSnapshot>) -> String {
        let merged = self.merged();
        let mut o = String::with_capacity(8192);
        header(
            &mut o,
            "portcullis_requests_total",
            "counter",
            "Calls by proxy, decision and status class.",
        );
        for (p, t) in &merged {
            for (di, d) in DECISIONS.iter().enumerate() {
                for (ci, c) in CLASSES.iter().enumerate() {
                    let v = t.requests[di][ci];
                    if v > 0 {
                        let _ = writeln!(
                            o,
                            "portcullis_requests_total{{proxy=\"{}\",decision=\"{}\",status=\"{c}\"}} {v}",
                            esc(p),
                            d.as_str()
                        );
                    }
                }
            }
        }
        header(
            &mut o,
            "portcullis_refusals_total",
            "counter",
            "The gateway's own error answers by proxy and code.",
        );
        for (p, t) in &merged {
            for (i, code) in CODES.iter().enumerate() {
                if t.refusals[i] > 0 {
                    let _ = writeln!(
                        o,
                        "portcullis_refusals_total{{proxy=\"{}\",code=\"{code}\"}} {}",
                        esc(p),
                        t.refusals[i]
                    );
                }
            }
        }
        header(
            &mut o,
            "portcullis_request_duration_seconds",
            "histogram",
            "Call latency (total_us of the audit record), received to last byte sent.",
        );
        for (p, t) in &merged {
            let mut cum = 0;
            for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
                cum += t.latency[i];
                let _ = writeln!(
                    o,
                    "portcullis_request_duration_seconds_bucket{{proxy=\"{}\",le=\"{}\"}} {cum}",
                    esc(p),
                    secs(*le)
                );
            }
            cum += t.latency[NB - 1];
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_bucket{{proxy=\"{}\",le=\"+Inf\"}} {cum}",
                esc(p)
            );
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_sum{{proxy=\"{}\"}} {}",
                esc(p),
                secs(t.latency_sum_us)
            );
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_count{{proxy=\"{}\"}} {cum}",
                esc(p)
            );
        }
        let simple: [SimpleCounter; 6] = [
            (
                "portcullis_meter_rejections_total",
                "Calls refused by a meter (rate_limited).",
                |t| t.meter_rejections,
            ),
            (
                "portcullis_scanner_hits_total",
                "Calls whose body matched a scanner (blocking or report mode).",
                |t| t.scanner_hits,
            ),
            (
                "portcullis_redactions_total",
                "Values removed or masked from responses.",
                |t| t.redactions,
            ),
            (
                "portcullis_secret_masked_total",
                "Injected secrets an upstream reflected in a response, masked.",
                |t| t.secret_masked,
            ),
            (
                "portcullis_request_bytes_total",
                "Request bytes read from agents (head and body).",
                |t| t.bytes_in,
            ),
            (
                "portcullis_response_bytes_total",
                "Response bytes sent to agents.",
                |t| t.bytes_out,
            ),
        ];
        for (name, help, f) in simple {
            header(&mut o, name, "counter", help);
            for (p, t) in &merged {
                let _ = writeln!(o, "{name}{{proxy=\"{}\"}} {}", esc(p), f(t));
            }
        }
        header(
            &mut o,
            "portcullis_shadow_hits_total",
            "counter",
            "Calls a report-mode rule would have decided differently, by the decision it would have made.",
        );
        for (p, t) in &merged {
            for (di, d) in DECISIONS.iter().enumerate() {
                if t.shadow_hits[di] > 0 {
                    let _ = writeln!(
                        o,
                        "portcullis_shadow_hits_total{{proxy=\"{}\",decision=\"{}\"}} {}",
                        esc(p),
                        d.as_str(),
                        t.shadow_hits[di]
                    );
                }
            }
        }
        for (name, help, v) in [
            (
                "portcullis_upstream_connect_errors_total",
                "Upstream connections that could not be opened (resolution, refusal, timeout).",
                UPSTREAM_CONNECT_ERRORS.load(Ordering::Relaxed),
            ),
            (
                "portcullis_upstream_tls_handshake_errors_total",
                "Upstream TLS handshakes that failed (certificate, protocol, timeout).",
                TLS_HANDSHAKE_ERRORS.load(Ordering::Relaxed),
            ),
            (
                "portcullis_agent_tls_handshake_errors_total",
                "TLS handshakes on the agent listeners that failed (client certificate, protocol, timeout).",
                AGENT_TLS_HANDSHAKE_ERRORS.load(Ordering::Relaxed),
            ),
            (
                "portcullis_intercept_handshake_errors_total",
                "Intercepted CONNECTs whose TLS handshake with the agent failed (not TLS, bad ClientHello, timeout, CA not trusted).",
                INTERCEPT_HANDSHAKE_ERRORS.load(Ordering::Relaxed),
            ),
            (
                "portcullis_tunnel_bytes_total",
                "Bytes carried by blind CONNECT tunnels, both directions (counted when a tunnel ends).",
                TUNNEL_BYTES.load(Ordering::Relaxed),
            ),
            (
                "portcullis_intercept_leaves_minted_total",
                "Leaf certificates minted for intercepted CONNECT hosts (a cached leaf is reused).",
                INTERCEPT_LEAVES_MINTED.load(Ordering::Relaxed),
            ),
            (
                "portcullis_upstream_stray_bytes_total",
                "Idle upstream connections closed because bytes arrived on them (never reused).",
                UPSTREAM_STRAY_BYTES.load(Ordering::Relaxed),
            ),
        ] {
            header(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        header(
            &mut o,
            "portcullis_upstream_pool_idle_connections",
            "gauge",
            "Idle keep-alive upstream connections per worker (sampled every second).",
        );
        for sh in &self.shards {
            let _ = writeln!(
                o,
                "portcullis_upstream_pool_idle_connections{{worker=\"{}\"}} {}",
                sh.worker,
                get(&sh.pool_idle)
            );
        }
        let per_worker: [(&str, &str, &str, ShardField); 2] = [
            (
                "portcullis_body_memory_reserved_bytes",
                "gauge",
                "Bytes of request bodies in flight reserved against max_body_memory, per worker.",
                |sh| &sh.body_reserved,
            ),
            (
                "portcullis_approvals_held_calls",
                "gauge",
                "Agent connections waiting on an approval (held calls), per worker.",
                |sh| &sh.held,
            ),
        ];
        for (name, kind, help, field) in per_worker {
            header(&mut o, name, kind, help);
            for sh in &self.shards {
                let _ = writeln!(o, "{name}{{worker=\"{}\"}} {}", sh.worker, get(field(sh)));
            }
        }
        for (name, help, field) in [
            (
                "portcullis_body_memory_refused_total",
                "Request bodies refused (503 overloaded) because max_body_memory was reached.",
                (|sh| &sh.body_refused) as ShardField,
            ),
            (
                "portcullis_approvals_abandoned_total",
                "Held calls whose agent closed the connection before the approval was decided.",
                |sh| &sh.held_abandoned,
            ),
            (
                "portcullis_mcp_list_hidden_total",
                "MCP list entries removed from an answer (not callable by the caller, malformed, or screened).",
                |sh| &sh.mcp_hidden,
            ),
            (
                "portcullis_mcp_tools_screened_total",
                "MCP tools removed from a list answer because a scanner matched their description.",
                |sh| &sh.mcp_screened,
            ),
            (
                "portcullis_mcp_tools_changed_total",
                "MCP tools removed from a list answer because their definition changed since it was pinned.",
                |sh| &sh.mcp_changed,
            ),
            (
                "portcullis_mcp_lists_refused_total",
                "MCP list answers replaced by a JSON-RPC error (too large or unreadable to filter).",
                |sh| &sh.mcp_lists_refused,
            ),
        ] {
            header(&mut o, name, "counter", help);
            let v: u64 = self.shards.iter().map(|sh| get(field(sh))).sum();
            let _ = writeln!(o, "{name} {v}");
        }
        if let Some(a) = audit {
            let gauges: [(&str, &str, &str, u64); 11] = [
                (
                    "portcullis_audit_degraded",
                    "gauge",
                    "1 while audit writes fail (records are held, or refused under on_error = \"refuse\").",
                    u64::from(a.degraded),
                ),
                (
                    "portcullis_audit_checkpoints_total",
                    "counter",
                    "Checkpoint records written.",
                    a.checkpoints,
                ),
                (
                    "portcullis_audit_files_removed_total",
                    "counter",
                    "Audit log files deleted by retention.",
                    a.files_removed,
                ),
                (
                    "portcullis_audit_queue_depth",
                    "gauge",
                    "Records waiting to be written (ring + writer backlog).",
                    a.queue_depth,
                ),
                (
                    "portcullis_audit_written_total",
                    "counter",
                    "Call records written to the audit log.",
                    a.written,
                ),
                (
                    "portcullis_audit_synced_total",
                    "counter",
                    "Call records covered by an fdatasync.",
                    a.synced,
                ),
                (
                    "portcullis_audit_gap_records_total",
                    "counter",
                    "Gap records written in place of dropped records.",
                    a.gap_records,
                ),
                (
                    "portcullis_audit_write_errors_total",
                    "counter",
                    "Failed audit writes (each retried).",
                    a.write_errors,
                ),
                (
                    "portcullis_audit_fsync_errors_total",
                    "counter",
                    "Failed audit fsyncs.",
                    a.fsync_errors,
                ),
                (
                    "portcullis_audit_bytes_total",
                    "counter",
                    "Bytes appended to the audit log.",
                    a.bytes,
                ),
                (
                    "portcullis_audit_files_opened_total",
                    "counter",
                    "Audit log files opened.",
                    a.files_opened,
                ),
            ];
            for (name, kind, help, v) in gauges {
                header(&mut o, name, kind, help);
                let _ = writeln!(o, "{name} {v}");
            }
            header(
                &mut o,
                "portcullis_audit_dropped_total",
                "counter",
                "Audit records dropped (queue: ring full; backlog: writer buffer full; write_failed: the disk refused writes until shutdown).",
            );
            let _ = writeln!(
                o,
                "portcullis_audit_dropped_total{{reason=\"queue\"}} {}",
                a.dropped_queue
            );
            let _ = writeln!(
                o,
                "portcullis_audit_dropped_total{{reason=\"backlog\"}} {}",
                a.dropped_backlog
            );
            let _ = writeln!(
                o,
                "portcullis_audit_dropped_total{{reason=\"write_failed\"}} {}",
                a.dropped_write
            );
        }
        o
    }
}

/// Name, help and value of a per-proxy counter.
type SimpleCounter = (&'static str, &'static str, fn(&Totals) -> u64);

/// Merged counters of one proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: [[u64; 6]; 3],
    pub refusals: [u64; CODES.len()],
    pub latency: [u64; NB],
    pub latency_sum_us: u64,
    pub meter_rejections: u64,
    pub scanner_hits: u64,
    /// Report-mode rule hits by the decision they would have made.
    pub shadow_hits: [u64; 3],
    pub redactions: u64,
    pub secret_masked: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Totals {
    fn add(&mut self, c: &ProxyCounters) {
        for (d, row) in self.requests.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v += get(&c.requests[d][k]);
            }
        }
        for (i, v) in self.refusals.iter_mut().enumerate() {
            *v += get(&c.refusals[i]);
        }
        for (i, v) in self.latency.iter_mut().enumerate() {
            *v += get(&c.latency[i]);
        }
        self.latency_sum_us += get(&c.latency_sum_us);
        self.meter_rejections += get(&c.meter_rejections);
        self.scanner_hits += get(&c.scanner_hits);
        for (i, v) in self.shadow_hits.iter_mut().enumerate() {
            *v += get(&c.shadow_hits[i]);
        }
        self.redactions += get(&c.redactions);
        self.secret_masked += get(&c.secret_masked);
        self.bytes_in += get(&c.bytes_in);
        self.bytes_out += get(&c.bytes_out);
    }

    pub fn calls(&self) -> u64 {
        self.requests.iter().flatten().sum()
    }
}

/// Upstream connection failures. Process-wide atomics are fine here: they only move on a failed
/// connect, never on the per-call hot path.
pub static UPSTREAM_CONNECT_ERRORS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
/// Failed upstream TLS handshakes.
pub static TLS_HANDSHAKE_ERRORS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
/// Failed TLS handshakes on the agent listeners (bad client certificate, protocol, timeout).
pub static AGENT_TLS_HANDSHAKE_ERRORS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
/// Intercepted CONNECTs whose TLS handshake failed (not TLS, a bad ClientHello, too slow, the
/// agent does not trust the CA).
pub static INTERCEPT_HANDSHAKE_ERRORS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
/// Leaf certificates minted for intercepted hosts (`net::mint`).
pub static INTERCEPT_LEAVES_MINTED: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
/// Bytes carried by blind tunnels, both ways (added when a tunnel ends).
pub static TUNNEL_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Idle upstream connections on which bytes arrived (closed, never reused).
pub static UPSTREAM_STRAY_BYTES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// The `# HELP` and `# TYPE` lines of one family (also used by the families other units
/// render: `server::ops_metrics`, `policy::budget`).
pub(crate) fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// µs as seconds, exactly (`2500` → `0.0025`).
fn secs(us: u64) -> String {
    let whole = us / 1_000_000;
    let frac = us % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:06}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// A label value escaped for the text format.
pub(crate) fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    push_label(&mut s, v);
    s
}

/// Appends a label value escaped for the text format (`\`, `"`, newline).
pub(crate) fn push_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot of proxy `index` of `cfg`, as a worker's view gets it (one name at a time, so
    /// the order of first sight decides the numbering).
    fn slot(w: &WorkerMetrics, cfg: &crate::config::Compiled, index: usize) -> Option<u16> {
        let name = cfg.proxies.get(index).map(|p| &p.name_arc);
        w.slots_for(name.into_iter()).first().copied()
    }

    fn cfg(names: &[&str]) -> crate::config::Compiled {
        let mut t = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\n");
        for n in names {
            t.push_str(&format!(
                "[[proxies]]\nname = \"{n}\"\nupstream = \"http://127.0.0.1:9\"\n"
            ));
        }
        crate::config::compile_str("t.toml", &t, std::path::Path::new(".")).unwrap()
    }

    fn sample(slot: Option<u16>, status: u16, code: Option<&'static str>, us: u64) -> CallSample {
        CallSample {
            slot,
            decision: if code.is_some() {
                Decision::Deny
            } else {
                Decision::Allow
            },
            status,
            code,
            total_us: us,
            bytes_in: 10,
            bytes_out: 20,
            ..Default::default()
        }
    }

    #[test]
    fn shards_merge_by_proxy_name_across_workers_and_reloads() {
        let m = Metrics::new(2);
        let w0 = m.worker_metrics(0);
        let w1 = m.worker_metrics(1);
        let a = cfg(&["crm", "pay"]);
        let s_crm0 = slot(&w0, &a, 0);
        let s_pay1 = slot(&w1, &a, 1);
        assert_eq!(s_crm0, Some(0));
        assert_eq!(s_pay1, Some(0), "slots are per worker");
        w0.record(&sample(s_crm0, 200, None, 700));
        w0.record(&sample(s_crm0, 403, Some("denied_by_rule"), 100));
        w1.record(&sample(s_pay1, 429, Some("rate_limited"), 3_000_000));
        w1.record(&sample(None, 404, Some("unknown_proxy"), 50));
        // a reload that reorders the proxies: same names keep their slots
        let b = cfg(&["pay", "crm"]);
        assert_eq!(slot(&w0, &b, 1), s_crm0);
        assert_eq!(slot(&w0, &b, 0), Some(1));
        w1.record(&sample(slot(&w1, &b, 1), 200, None, 10));
        assert_eq!(slot(&w1, &b, 9), None);

        let merged = m.merged();
        let names: Vec<&str> = merged.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["", "crm", "pay"]);
        let crm = &merged[1].1;
        assert_eq!(crm.calls(), 3);
        assert_eq!(crm.requests[0][2], 2);
        assert_eq!(crm.requests[1][4], 1);
        assert_eq!(crm.refusals[3], 1);
        assert_eq!(crm.latency_sum_us, 810);
        assert_eq!(merged[2].1.meter_rejections, 1);

        let text = m.render(Some(&StatsSnapshot {
            written: 5,
            dropped_queue: 2,
            queue_depth: 1,
            ..Default::default()
        }));
        for want in [
            "portcullis_requests_total{proxy=\"crm\",decision=\"allow\",status=\"2xx\"} 2",
            "portcullis_requests_total{proxy=\"crm\",decision=\"deny\",status=\"4xx\"} 1",
            "portcullis_requests_total{proxy=\"\",decision=\"deny\",status=\"4xx\"} 1",
            "portcullis_refusals_total{proxy=\"pay\",code=\"rate_limited\"} 1",
            "portcullis_meter_rejections_total{proxy=\"pay\"} 1",
            "portcullis_request_duration_seconds_bucket{proxy=\"crm\",le=\"0.0005\"} 2",
            "portcullis_request_duration_seconds_bucket{proxy=\"crm\",le=\"0.001\"} 3",
            "portcullis_request_duration_seconds_bucket{proxy=\"pay\",le=\"2.5\"} 0",
            "portcullis_request_duration_seconds_bucket{proxy=\"pay\",le=\"5\"} 1",
            "portcullis_request_duration_seconds_bucket{proxy=\"pay\",le=\"+Inf\"} 1",
            "portcullis_request_duration_seconds_sum{proxy=\"crm\"} 0.00081",
            "portcullis_request_duration_seconds_count{proxy=\"crm\"} 3",
            "portcullis_request_bytes_total{proxy=\"crm\"} 30",
            "portcullis_upstream_pool_idle_connections{worker=\"1\"} 0",
            "portcullis_audit_written_total 5",
            "portcullis_audit_queue_depth 1",
            "portcullis_audit_dropped_total{reason=\"queue\"} 2",
            "# TYPE portcullis_request_duration_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
        // every sample line is `name{labels} value` or `name value`
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn slots_overflow_into_other() {
        let m = Metrics::new(1);
        let w = m.worker_metrics(0);
        let names: Vec<String> = (0..MAX_PROXY_SLOTS + 2).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = cfg(&refs);
        for i in 0..names.len() {
            let s = slot(&w, &c, i);
            w.record(&sample(s, 200, None, 1));
        }
        let merged = m.merged();
        let other = merged.iter().find(|(n, _)| n == "_other").unwrap();
        assert_eq!(other.1.calls(), 2);
        assert_eq!(merged.len(), MAX_PROXY_SLOTS + 1);
    }

    #[test]
    fn label_escaping_and_seconds() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(secs(2_500), "0.0025");
        assert_eq!(secs(60_000_000), "60");
        assert_eq!(secs(1_500_000), "1.5");
    }
}
