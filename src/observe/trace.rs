//! W3C trace context (<https://www.w3.org/TR/trace-context/>) and the call's span.
//!
//! - [`parse`] / [`format`]: the `traceparent` header, sans-io (named table tests, a property
//!   test and the `traceparent` fuzz target). An invalid header is treated as absent: the call
//!   starts a new trace.
//! - [`Tracer`]: one per worker (`[telemetry] otlp` only): fresh ids from a per-worker
//!   generator, the sampling decision taken when the call starts (parent-based: the agent's
//!   `sampled` flag when it sent a valid `traceparent`, else the `sample` ratio), and the bounded,
//!   non-blocking hand-off of finished spans to the exporter thread (`siem::traces`); a full
//!   queue drops the span and counts it.
//! - [`CallTrace`]: the call's ids and, when sampled, the end of each stage (nanoseconds after
//!   the call started) — a non-sampled call pays one branch per stage and allocates nothing.
//!
//! Hand-written (not the `opentelemetry` SDK): the SDK's span objects allocate and lock per span
//! and bring an async runtime for export; here a span is one boxed struct sent through a channel.
#![forbid(unsafe_code)]

use super::audit::{Decision, Ring, SmallStr};
use crate::util::hex;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `sampled` bit of trace-flags.
pub const SAMPLED: u8 = 0x01;

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// Longest `traceparent` value looked at (a future version may append fields; anything longer
/// is refused as garbage rather than scanned).
pub const MAX_TRACEPARENT: usize = 512;

/// A valid `traceparent` as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// Lower-case hex digits only (the spec's HEXDIGLC).
fn lower_hex(src: &[u8], out: &mut [u8]) -> Option<()> {
    if src.len() != out.len() * 2 {
        return None;
    }
    for (pair, o) in src.chunks_exact(2).zip(out.iter_mut()) {
        let d = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        *o = (d(pair[0])? << 4) | d(pair[1])?;
    }
    Some(())
}

/// Parses a `traceparent` value (the header parser already removed the surrounding OWS).
///
/// Version `00`: exactly `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids not all zero. A higher
/// version (not `ff`) is read by the spec's forward-compatibility rules: at least 55 characters,
/// the same three fields at the same places, then either the end or a `-` (what follows is
/// ignored). Anything else is `None`, and the call starts a new trace.
pub fn parse(v: &[u8]) -> Option<TraceParent> {
    if v.len() < TRACEPARENT_LEN || v.len() > MAX_TRACEPARENT {
        return None;
    }
    let mut version = [0u8; 1];
    lower_hex(&v[0..2], &mut version)?;
    let version = version[0];
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if version == 0 && v.len() != TRACEPARENT_LEN {
        return None;
    }
    if version != 0 && v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    lower_hex(&v[3..35], &mut trace_id)?;
    let mut parent_id = [0u8; 8];
    lower_hex(&v[36..52], &mut parent_id)?;
    let mut flags = [0u8; 1];
    lower_hex(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        version,
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

/// The version-00 `traceparent` value this gateway sends: the trace, its own span as the parent,
/// and the `sampled` flag of its decision (other flags zero).
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; TRACEPARENT_LEN] {
    let mut out = [b'-'; TRACEPARENT_LEN];
    out[0] = b'0';
    out[1] = b'0';
    hex::encode_into(trace_id, &mut out[3..35]);
    hex::encode_into(span_id, &mut out[36..52]);
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// The stages a call's span records (as child spans), in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Route and identity.
    Authn,
    Authz,
    Meter,
    /// The body read whole, the scanners and the MCP policy.
    BodyScan,
    /// An `approve` rule's wait for a human.
    Approval,
    /// The target credential and the outbound head.
    Credential,
    /// A pooled or new upstream connection.
    Connect,
    /// The request sent, until the upstream's response head.
    FirstByte,
    /// The response relayed to the agent (redaction and masking on the way).
    Relay,
}

pub const STAGES: usize = 9;

impl Stage {
    pub const ALL: [Stage; STAGES] = [
        Stage::Authn,
        Stage::Authz,
        Stage::Meter,
        Stage::BodyScan,
        Stage::Approval,
        Stage::Credential,
        Stage::Connect,
        Stage::FirstByte,
        Stage::Relay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Authn => "authn",
            Stage::Authz => "authz",
            Stage::Meter => "meter",
            Stage::BodyScan => "body+scan",
            Stage::Approval => "approval",
            Stage::Credential => "credential",
            Stage::Connect => "upstream.connect",
            Stage::FirstByte => "upstream.ttfb",
            Stage::Relay => "response",
        }
    }
}

/// The trace side of one call (inline in `CallLog`).
#[derive(Clone, Debug, Default)]
pub struct CallTrace {
    /// All zero: no trace (telemetry disabled and no valid `traceparent` received).
    pub trace_id: [u8; 16],
    /// The gateway's span (all zero when telemetry is disabled).
    pub span_id: [u8; 8],
    /// The agent's span, from its `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// Recorded and exported.
    pub sampled: bool,
    /// When sampled: the end of each stage reached, in ns after the call started (0: not
    /// reached).
    pub marks: [u64; STAGES],
}

impl CallTrace {
    /// Telemetry disabled: the agent's trace id, kept for the audit record only (its
    /// `traceparent` is forwarded untouched).
    pub fn passive(traceparent: Option<&[u8]>) -> CallTrace {
        CallTrace {
            trace_id: traceparent.and_then(parse).map_or([0; 16], |p| p.trace_id),
            ..CallTrace::default()
        }
    }

    /// Whether the gateway takes part in the trace (then it sends its own `traceparent`).
    #[inline]
    pub fn active(&self) -> bool {
        self.span_id != [0; 8]
    }

    /// The `traceparent` value to send upstream, when the gateway takes part in the trace.
    pub fn outbound(&self) -> Option<[u8; TRACEPARENT_LEN]> {
        self.active()
            .then(|| format(&self.trace_id, &self.span_id, self.sampled))
    }
}

/// Counters of the trace pipeline (shared by the workers and the exporter; `/metrics`).
#[derive(Debug, Default)]
pub struct TraceStats {
    /// Spans dropped because the exporter's queue was full.
    pub dropped: AtomicU64,
    /// Spans the collector acknowledged.
    pub exported: AtomicU64,
    /// Spans given up after the export retries failed.
    pub failed: AtomicU64,
    /// Failed export attempts (each retried with backoff).
    pub export_errors: AtomicU64,
}

/// A finished call's span, as handed to the exporter.
#[derive(Debug)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    /// `(stage, start, end)` in ns after `start_unix_ns`, for the stages reached.
    pub stages: Vec<(Stage, u64, u64)>,
    pub request_id: SmallStr<32>,
    pub agent: Option<Arc<str>>,
    pub proxy: Option<Arc<str>>,
    pub method: SmallStr<15>,
    pub path: String,
    pub status: u16,
    pub decision: Decision,
    pub code: Option<&'static str>,
    pub rule: Option<u32>,
    pub scanner: Option<Arc<str>>,
    pub upstream_status: Option<u16>,
}

/// Child spans from the stage marks: each stage runs from the end of the previous stage
/// reached (or the call's start) to its own end.
pub fn stage_spans(marks: &[u64; STAGES]) -> Vec<(Stage, u64, u64)> {
    let mut out = Vec::with_capacity(STAGES);
    let mut prev = 0u64;
    for (stage, &end) in Stage::ALL.iter().zip(marks) {
        if end == 0 {
            continue;
        }
        out.push((*stage, prev, end.max(prev)));
        prev = end.max(prev);
    }
    out
}

/// The queue from the workers to the exporter thread.
pub type SpanQueue = Ring<Box<SpanData>>;

/// One worker's tracer: id generator, sampling ratio, the exporter's queue.
pub struct Tracer {
    /// `sample` as a threshold on 64 random bits (`u64::MAX`: always).
    threshold: u64,
    rng: Cell<u64>,
    queue: Arc<SpanQueue>,
    pub stats: Arc<TraceStats>,
}

/// The threshold for a `sample` ratio in [0, 1].
pub fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio <= 0.0 || ratio.is_nan() {
        0
    } else {
        (ratio * u64::MAX as f64) as u64
    }
}

impl Tracer {
    pub fn new(sample: f64, queue: Arc<SpanQueue>, stats: Arc<TraceStats>) -> Tracer {
        let mut seed = [0u8; 8];
        let seed = match aws_lc_rs::rand::fill(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            // the generator only needs to differ between processes; the clock will do
            Err(_) => crate::util::clock::unix_now().as_nanos() as u64,
        };
        Tracer {
            threshold: threshold(sample),
            rng: Cell::new(seed),
            queue,
            stats,
        }
    }

    /// splitmix64: fast, good enough for ids that must be unique, not secret.
    fn next(&self) -> u64 {
        let s = self.rng.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.rng.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn nonzero(&self) -> u64 {
        loop {
            let v = self.next();
            if v != 0 {
                return v;
            }
        }
    }

    /// The call's trace: the agent's continued (and its sampling decision honoured) when it
    /// sent a valid `traceparent`, else a new one sampled by the ratio.
    pub fn start(&self, traceparent: Option<&[u8]>) -> CallTrace {
        let span_id = self.nonzero().to_be_bytes();
        match traceparent.and_then(parse) {
            Some(p) => CallTrace {
                trace_id: p.trace_id,
                span_id,
                parent_id: Some(p.parent_id),
                sampled: p.sampled(),
                marks: [0; STAGES],
            },
            None => {
                let hi = self.next();
                let lo = self.nonzero();
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&hi.to_be_bytes());
                trace_id[8..].copy_from_slice(&lo.to_be_bytes());
                let sampled = self.threshold == u64::MAX || lo < self.threshold;
                CallTrace {
                    trace_id,
                    span_id,
                    parent_id: None,
                    sampled,
                    marks: [0; STAGES],
                }
            }
        }
    }

    /// Hands a finished span to the exporter; never waits (a full queue drops it, counted: the
    /// only shared counter a worker touches, and only then).
    pub fn finish(&self, span: Box<SpanData>) {
        if self.queue.try_push(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PID: &str = "00f067aa0ba902b7";

    /// Named cases from the W3C spec's examples and its test suite's rules.
    #[test]
    fn parse_table() {
        let ok = |v: &str| parse(v.as_bytes());
        let good = format!("00-{TID}-{PID}-01");
        // (name, value, Some((version, flags)) when valid)
        type Case = (&'static str, String, Option<(u8, u8)>);
        let cases: &[Case] = &[
            ("spec example, sampled", good.clone(), Some((0, 1))),
            ("not sampled", format!("00-{TID}-{PID}-00"), Some((0, 0))),
            (
                "unknown flags kept as received",
                format!("00-{TID}-{PID}-ff"),
                Some((0, 0xff)),
            ),
            (
                "upper-case trace id",
                format!("00-{}-{PID}-01", TID.to_uppercase()),
                None,
            ),
            (
                "upper-case parent id",
                format!("00-{TID}-{}-01", PID.to_uppercase()),
                None,
            ),
            ("upper-case flags", format!("00-{TID}-{PID}-0A"), None),
            ("upper-case version", format!("0A-{TID}-{PID}-01"), None),
            (
                "all-zero trace id",
                format!("00-{}-{PID}-01", "0".repeat(32)),
                None,
            ),
            (
                "all-zero parent id",
                format!("00-{TID}-{}-01", "0".repeat(16)),
                None,
            ),
            ("version ff is invalid", format!("ff-{TID}-{PID}-01"), None),
            (
                "version 00 with a suffix",
                format!("00-{TID}-{PID}-01-extra"),
                None,
            ),
            (
                "version 00, one byte too long",
                format!("00-{TID}-{PID}-010"),
                None,
            ),
            ("too short", format!("00-{TID}-{PID}-1"), None),
            (
                "short trace id",
                format!("00-{}-{PID}-01", &TID[..31]),
                None,
            ),
            ("long trace id", format!("00-{TID}0-{PID}-01"), None),
            ("wrong separator", format!("00_{TID}-{PID}-01"), None),
            (
                "non-hex in trace id",
                format!("00-{}g-{PID}-01", &TID[..31]),
                None,
            ),
            ("non-hex flags", format!("00-{TID}-{PID}-0x"), None),
            (
                "leading space (OWS is the parser's)",
                format!(" 00-{TID}-{PID}-01"),
                None,
            ),
            ("empty", String::new(), None),
            (
                "future version, exact length",
                format!("cc-{TID}-{PID}-01"),
                Some((0xcc, 1)),
            ),
            (
                "future version with more fields",
                format!("cc-{TID}-{PID}-01-what-the-future-holds"),
                Some((0xcc, 1)),
            ),
            (
                "future version, garbage after flags",
                format!("cc-{TID}-{PID}-01.what"),
                None,
            ),
            (
                "future version, upper-case ids",
                format!("cc-{}-{PID}-01", TID.to_uppercase()),
                None,
            ),
            (
                "oversize",
                format!("cc-{TID}-{PID}-01-{}", "a".repeat(600)),
                None,
            ),
        ];
        for (name, v, want) in cases {
            let got = ok(v).map(|p| (p.version, p.flags));
            assert_eq!(got, *want, "{name}: {v:?}");
        }
        let p = ok(&good).unwrap();
        assert_eq!(hex::encode(&p.trace_id), TID);
        assert_eq!(hex::encode(&p.parent_id), PID);
        assert!(p.sampled());
    }

    #[test]
    fn format_is_version_00_with_the_sampled_bit_only() {
        let p = parse(format!("00-{TID}-{PID}-01").as_bytes()).unwrap();
        let out = format(&p.trace_id, &p.parent_id, true);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!("00-{TID}-{PID}-01")
        );
        let out = format(&p.trace_id, &p.parent_id, false);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!("00-{TID}-{PID}-00")
        );
    }

    #[test]
    fn sampling_is_parent_based_then_by_ratio() {
        let q = Arc::new(SpanQueue::new(4, crate::observe::audit::OnFull::Drop));
        let stats = Arc::new(TraceStats::default());
        let never = Tracer::new(0.0, q.clone(), stats.clone());
        let always = Tracer::new(1.0, q.clone(), stats.clone());
        let sampled = format!("00-{TID}-{PID}-01");
        let unsampled = format!("00-{TID}-{PID}-00");
        // the agent's decision wins over the ratio, both ways
        let t = never.start(Some(sampled.as_bytes()));
        assert!(t.sampled && t.active());
        assert_eq!(hex::encode(&t.trace_id), TID);
        assert_eq!(t.parent_id.map(|p| hex::encode(&p)).as_deref(), Some(PID));
        assert!(!always.start(Some(unsampled.as_bytes())).sampled);
        // no (valid) parent: the ratio decides, and the trace is new
        for _ in 0..100 {
            let t = never.start(None);
            assert!(!t.sampled && t.active() && t.parent_id.is_none());
            assert!(always.start(Some(b"garbage")).sampled);
        }
        let half = Tracer::new(0.5, q, stats);
        let n = (0..2000).filter(|_| half.start(None).sampled).count();
        assert!((800..1200).contains(&n), "{n} of 2000 sampled at 0.5");
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // the ring's smallest size is 2
        let q = Arc::new(SpanQueue::new(2, crate::observe::audit::OnFull::Drop));
        let stats = Arc::new(TraceStats::default());
        let t = Tracer::new(1.0, q.clone(), stats.clone());
        let span = || {
            Box::new(SpanData {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_id: None,
                start_unix_ns: 0,
                duration_ns: 0,
                stages: Vec::new(),
                request_id: SmallStr::new("x"),
                agent: None,
                proxy: None,
                method: SmallStr::new("GET"),
                path: String::new(),
                status: 200,
                decision: Decision::Allow,
                code: None,
                rule: None,
                scanner: None,
                upstream_status: None,
            })
        };
        t.finish(span());
        t.finish(span());
        t.finish(span());
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn stage_spans_follow_each_other() {
        let mut m = [0u64; STAGES];
        m[Stage::Authn as usize] = 10;
        m[Stage::Authz as usize] = 15;
        m[Stage::Credential as usize] = 40;
        m[Stage::FirstByte as usize] = 90;
        let s = stage_spans(&m);
        assert_eq!(
            s,
            vec![
                (Stage::Authn, 0, 10),
                (Stage::Authz, 10, 15),
                (Stage::Credential, 15, 40),
                (Stage::FirstByte, 40, 90),
            ]
        );
    }

    proptest! {
        /// Whatever it is given, the parser does not panic; what it accepts formats back to
        /// the same ids, and a version-00 header it accepts with flags 00/01 round-trips exactly.
        #[test]
        fn parse_never_panics_and_round_trips(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(p) = parse(&v) {
                let out = format(&p.trace_id, &p.parent_id, p.sampled());
                let q = parse(&out).unwrap();
                prop_assert_eq!(q.trace_id, p.trace_id);
                prop_assert_eq!(q.parent_id, p.parent_id);
                prop_assert_eq!(q.sampled(), p.sampled());
            }
        }

        #[test]
        fn valid_headers_parse(t in "[0-9a-f]{32}", s in "[0-9a-f]{16}", f in "0[01]") {
            let v = format!("00-{t}-{s}-{f}");
            let p = parse(v.as_bytes());
            if t.bytes().all(|b| b == b'0') || s.bytes().all(|b| b == b'0') {
                prop_assert!(p.is_none());
            } else {
                let p = p.unwrap();
                prop_assert_eq!(&format(&p.trace_id, &p.parent_id, p.sampled())[..], v.as_bytes());
            }
        }
    }
}
