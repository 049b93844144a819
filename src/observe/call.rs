//! The per-call context: request id, timings and the outcome, filled in as the call moves down
//! the pipeline. Its `Drop` emits the call's one record: a structured `access` log event at
//! debug level, one update of the worker's metric shard (`metrics.rs`) and, with `[audit]`, one
//! record pushed into the audit ring.
//!
//! Two hooks serve `[audit] on_error = "refuse"` (the pipeline calls them, the logic lives in
//! `audit/gate.rs`): [`CallLog::audit_gate`] before anything goes upstream, and
//! [`CallLog::durable`] just before the response head is released — with `fsync = "always"`
//! it commits the record early and waits for its `fdatasync`.
use crate::error::Refusal;
use crate::observe::audit::{AuditRecord, AuditRing, Decision, SmallStr};
use crate::observe::metrics::{CallSample, WorkerMetrics};
use crate::observe::trace::{CallTrace, SpanData, Stage, Tracer};
use crate::util::clock;
use crate::util::hex;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Instant;

/// Longest `X-Request-Id` accepted from an agent.
pub const MAX_REQUEST_ID: usize = 128;

/// A request id kept inline (no allocation per request).
#[derive(Clone)]
pub struct RequestId {
    buf: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        // only ASCII is ever stored (checked on the way in)
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("-")
    }

    /// An agent-supplied id, if it is 1..=128 characters of `[A-Za-z0-9._:-]`.
    pub fn from_agent(v: &[u8]) -> Option<RequestId> {
        if v.is_empty()
            || v.len() > MAX_REQUEST_ID
            || !v
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return None;
        }
        let mut buf = [0u8; MAX_REQUEST_ID];
        buf[..v.len()].copy_from_slice(v);
        Some(RequestId {
            buf,
            len: v.len() as u8,
        })
    }
}

/// Per-worker generator: 32 hex digits, a random per-process-and-worker prefix and a counter.
pub struct IdGen {
    prefix: u64,
    counter: u64,
}

impl IdGen {
    pub fn new(worker: usize) -> Self {
        let seed = RandomState::new().hash_one((worker, clock::unix_now().as_nanos()));
        IdGen {
            prefix: seed,
            counter: 0,
        }
    }

    pub fn next_id(&mut self) -> RequestId {
        self.counter = self.counter.wrapping_add(1);
        let mut buf = [0u8; MAX_REQUEST_ID];
        hex16(self.prefix, &mut buf[..16]);
        hex16(self.counter, &mut buf[16..32]);
        RequestId { buf, len: 32 }
    }
}

fn hex16(mut v: u64, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = hex::LOWER[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// What happened to one call. Its `Drop` writes exactly one audit record (allowed or refused,
/// whatever path the call took) into the worker's ring, and one `access` debug line.
pub struct CallLog<'w> {
    /// The gateway's id for the call (never the agent's).
    pub id: RequestId,
    /// The agent's own `X-Request-Id`, if it sent a valid one (1-128 of `[A-Za-z0-9._:-]`).
    pub agent_request_id: Option<RequestId>,
    pub started: Instant,
    /// When the call was received (µs since the Unix epoch).
    pub ts_us: u64,
    pub proxy: Option<usize>,
    pub proxy_name: Option<Arc<str>>,
    pub agent: Option<Arc<str>>,
    pub method: SmallStr<15>,
    /// The canonical path (no query).
    pub path: String,
    pub decision: Decision,
    pub rule: Option<u32>,
    pub scanner: Option<Arc<str>>,
    pub status: u16,
    pub code: Option<&'static str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_status: Option<u16>,
    pub upstream_started: Option<Instant>,
    pub upstream_us: Option<u64>,
    /// Values removed or masked from the response.
    pub redactions: u64,
    /// Injected secrets the upstream reflected in the response (masked).
    pub secret_reflected: u64,
    /// Budgets charged for the call (`metered`).
    pub metered: Option<Box<crate::observe::audit::record::Metered>>,
    /// MCP calls: method, target, session (`mcp_method`, `tool`, ...).
    pub mcp: Option<Box<crate::observe::audit::record::McpNote>>,
    /// The proxy's slot in the worker's metric shard (`pipeline::View::slots`).
    pub metrics_slot: Option<u16>,
    /// The TCP peer's address.
    pub client: Option<std::net::SocketAddr>,
    /// The client a trusted proxy named in `X-Forwarded-For` (`[server] trusted_proxies`),
    /// when it differs from the peer.
    pub forwarded_for: Option<std::net::IpAddr>,
    /// A report-mode rule that would have decided differently: its index and decision.
    pub shadow: Option<(u32, Decision)>,
    /// The approval this call was held for (and, if it went upstream, executed).
    pub approval: Option<Arc<crate::observe::audit::record::ApprovalNote>>,
    /// The call's W3C trace context (and, when sampled, its stage marks).
    pub trace: CallTrace,
    /// How the agent was identified.
    pub auth: Option<crate::observe::audit::record::AuthVia>,
    /// The `CONNECT` the call came through.
    pub tunnel: Option<crate::observe::audit::record::TunnelKind>,
    /// No record, no metric sample: the call continues as another (a CONNECT that became a
    /// tunnel: the tunnel's calls, or its one blind record, stand for it).
    disarmed: bool,
    /// The worker's tracer (`[telemetry] otlp`): a sampled call's span goes to it on drop.
    tracer: Option<&'w Tracer>,
    /// The record was already pushed ([`CallLog::durable`]); `Drop` does not push again.
    committed: bool,
    /// The `access` log is on (debug level for target `access`).
    access: bool,
    ring: Option<&'w AuditRing>,
    metrics: Option<&'w WorkerMetrics>,
}

impl<'w> CallLog<'w> {
    pub fn new(
        id: RequestId,
        ring: Option<&'w AuditRing>,
        metrics: Option<&'w WorkerMetrics>,
    ) -> Self {
        CallLog {
            id,
            agent_request_id: None,
            started: clock::now(),
            ts_us: u64::try_from(clock::unix_now().as_micros()).unwrap_or(0),
            proxy: None,
            proxy_name: None,
            agent: None,
            method: SmallStr::default(),
            path: String::new(),
            decision: Decision::Deny,
            rule: None,
            scanner: None,
            status: 0,
            code: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream_status: None,
            upstream_started: None,
            upstream_us: None,
            redactions: 0,
            secret_reflected: 0,
            metered: None,
            mcp: None,
            metrics_slot: None,
            client: None,
            forwarded_for: None,
            shadow: None,
            approval: None,
            trace: CallTrace::default(),
            auth: None,
            tunnel: None,
            disarmed: false,
            tracer: None,
            committed: false,
            access: tracing::enabled!(target: "access", tracing::Level::DEBUG),
            ring,
            metrics,
        }
    }

    /// Starts the call's trace from the agent's `traceparent` (if any): with a tracer, the
    /// gateway takes part (continues or starts the trace, decides sampling); without one, only
    /// the agent's trace id is kept for the audit record.
    pub fn start_trace(&mut self, tracer: Option<&'w Tracer>, traceparent: Option<&[u8]>) {
        match tracer {
            Some(t) => {
                self.trace = t.start(traceparent);
                self.tracer = Some(t);
            }
            None if traceparent.is_some() => self.trace = CallTrace::passive(traceparent),
            None => {}
        }
    }

    /// The end of a stage, for a sampled call's span (one branch otherwise).
    #[inline]
    pub fn mark(&mut self, stage: Stage) {
        if self.trace.sampled {
            let ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.trace.marks[stage as usize] = ns.max(1);
        }
    }

    /// Whether the call's names (proxy, agent, path) are kept: for the audit record, the
    /// access log or the span.
    #[inline]
    pub fn keeps_names(&self) -> bool {
        self.detailed() || (self.trace.sampled && self.tracer.is_some())
    }

    /// A sampled call's span, handed to the exporter (before the record takes the names).
    fn finish_span(&self, total_ns: u64) {
        let Some(tracer) = self.tracer.filter(|_| self.trace.sampled) else {
            return;
        };
        let t = &self.trace;
        tracer.finish(Box::new(SpanData {
            trace_id: t.trace_id,
            span_id: t.span_id,
            parent_id: t.parent_id,
            start_unix_ns: self.ts_us.saturating_mul(1000),
            duration_ns: total_ns,
            stages: crate::observe::trace::stage_spans(&t.marks),
            request_id: SmallStr::new(self.id.as_str()),
            agent: self.agent.clone(),
            proxy: self.proxy_name.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            status: self.status,
            decision: self.decision,
            code: self.code,
            rule: self.rule,
            scanner: self.scanner.clone(),
            upstream_status: self.upstream_status,
        }));
    }

    /// Under `[audit] on_error = "refuse"`: `Err(AuditUnavailable)` while records cannot be
    /// written or the queue is full. Call before anything is sent upstream.
    pub fn audit_gate(&self) -> Result<(), Refusal> {
        match self.ring {
            Some(r) if !r.accepting() => Err(Refusal::AuditUnavailable),
            _ => Ok(()),
        }
    }

    /// Under `fsync = "always"` + `on_error = "refuse"`: pushes the record now (as the call
    /// stands: `bytes_out` and `total_us` up to here) and waits until it is on disk. Call just
    /// before the response head is written; `Err(AuditUnavailable)` if it cannot be made
    /// durable within `timeout` (the response must then not be released). A no-op otherwise.
    pub async fn durable(&mut self, timeout: std::time::Duration) -> Result<(), Refusal> {
        let Some(ring) = self.ring.filter(|r| r.durable()) else {
            return Ok(());
        };
        if self.committed {
            return Ok(());
        }
        let rec = self.record(self.started.elapsed().as_micros() as u64, true);
        self.committed = true;
        let ticket = ring.push_record(rec);
        if ring.wait_durable(ticket, timeout).await {
            Ok(())
        } else {
            Err(Refusal::AuditUnavailable)
        }
    }

    /// The call's audit record. `keep`: the call goes on (its record is taken early, under
    /// durable audit), so its fields are cloned; otherwise (the drop) they are moved out.
    fn record(&mut self, total_us: u64, keep: bool) -> AuditRecord {
        fn pick<T: Default + Clone>(v: &mut T, keep: bool) -> T {
            if keep { v.clone() } else { std::mem::take(v) }
        }
        AuditRecord {
            ts_us: self.ts_us,
            id: SmallStr::new(self.id.as_str()),
            agent_request_id: self
                .agent_request_id
                .as_ref()
                .map(|a| Arc::new(a.as_str().to_string())),
            agent: pick(&mut self.agent, keep),
            proxy: pick(&mut self.proxy_name, keep),
            method: self.method.clone(),
            path: pick(&mut self.path, keep),
            status: self.status,
            decision: self.decision,
            code: self.code,
            rule: self.rule,
            scanner: pick(&mut self.scanner, keep),
            redactions: u32::try_from(self.redactions).unwrap_or(u32::MAX),
            secret_reflected: u16::try_from(self.secret_reflected).unwrap_or(u16::MAX),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            upstream_status: self.upstream_status,
            upstream_us: self
                .upstream_us
                .map(|u| u32::try_from(u).unwrap_or(u32::MAX)),
            total_us,
            client: self.client.map(|a| (a.ip(), a.port())),
            forwarded_for: self.forwarded_for,
            shadow: self.shadow,
            completion: false,
            approval: pick(&mut self.approval, keep),
            trace_id: self.trace.trace_id,
            metered: pick(&mut self.metered, keep),
            admin: None,
            auth: self.auth,
            tunnel: self.tunnel,
            mcp: pick(&mut self.mcp, keep),
        }
    }
}

impl CallLog<'_> {
    /// This log writes nothing when dropped (see `disarmed`).
    pub fn disarm(&mut self) {
        self.disarmed = true;
    }

    /// Notes that budget `name` charged `units` for the call (the record's `metered`).
    pub fn add_metered(&mut self, name: &Arc<str>, units: u64) {
        self.metered
            .get_or_insert_with(Default::default)
            .push((name.clone(), units));
    }

    /// Whether the call's proxy, path and agent are wanted: it goes to the audit trail, or
    /// the `access` log is on (the copies are skipped otherwise: an `Arc` clone touches a
    /// cache line every worker shares).
    #[inline]
    pub fn detailed(&self) -> bool {
        self.ring.is_some() || self.access
    }
}

/// The client as logged: the forwarded address if a trusted proxy named one, else the peer.
struct Client(Option<std::net::IpAddr>, Option<std::net::SocketAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0, self.1) {
            (Some(ip), _) => write!(f, "{ip}"),
            (None, Some(a)) => write!(f, "{a}"),
            (None, None) => f.write_str("-"),
        }
    }
}

/// A number, or `-` when there is none (not Rust's `Some(..)`/`None`).
struct OrDash(Option<u64>);

impl std::fmt::Display for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("-"),
        }
    }
}

/// A string, or `-` when it is empty (a call refused before its path was known).
struct Dash<'a>(&'a str);

impl std::fmt::Display for Dash<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "-" } else { self.0 })
    }
}

impl Drop for CallLog<'_> {
    fn drop(&mut self) {
        if self.disarmed {
            return;
        }
        let total_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let total_us = total_ns / 1000;
        self.finish_span(total_ns);
        tracing::debug!(
            target: "access",
            id = self.id.as_str(),
            agent_request_id = self.agent_request_id.as_ref().map_or("-", RequestId::as_str),
            client = %Client(self.forwarded_for, self.client),
            peer = %Client(None, self.client),
            proxy = self.proxy_name.as_deref().unwrap_or("-"),
            agent = self.agent.as_deref().unwrap_or("-"),
            method = self.method.as_str(),
            path = %Dash(&self.path),
            status = self.status,
            code = self.code.unwrap_or("-"),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            upstream_status = %OrDash(self.upstream_status.map(u64::from)),
            upstream_us = %OrDash(self.upstream_us),
            total_us,
        );
        if let Some(m) = self.metrics {
            m.record(&CallSample {
                slot: self.metrics_slot,
                decision: self.decision,
                status: self.status,
                code: self.code,
                scanner_hit: self.scanner.is_some(),
                shadow: self.shadow.map(|(_, d)| d),
                redactions: self.redactions,
                secret_masked: self.secret_reflected,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                total_us,
            });
        }
        let Some(ring) = self.ring else { return };
        if self.committed {
            // committed when the head was released: the body's totals follow as a completion
            let _ = ring.push(AuditRecord {
                ts_us: self.ts_us,
                id: SmallStr::new(self.id.as_str()),
                bytes_out: self.bytes_out,
                redactions: u32::try_from(self.redactions).unwrap_or(u32::MAX),
                secret_reflected: u16::try_from(self.secret_reflected).unwrap_or(u16::MAX),
                total_us,
                completion: true,
                metered: self.metered.take(),
                ..AuditRecord::default()
            });
            return;
        }
        let rec = self.record(total_us, false);
        // a full ring counts the drop (and the writer records a gap); never blocks unbounded
        let _ = ring.push(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let mut g = IdGen::new(3);
        let a = g.next_id();
        let b = g.next_id();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            RequestId::from_agent(b"abc-1.2:x_y").unwrap().as_str(),
            "abc-1.2:x_y"
        );
        assert!(RequestId::from_agent(b"").is_none());
        assert!(RequestId::from_agent(b"a b").is_none());
        assert!(RequestId::from_agent(b"a\"b").is_none());
        assert!(RequestId::from_agent(&[b'a'; 129]).is_none());
        assert!(RequestId::from_agent(&[b'a'; 128]).is_some());
    }
}
