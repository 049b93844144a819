//! `[telemetry] otlp`: the calls' spans to an OpenTelemetry collector (OTLP/HTTP, protobuf).
//!
//! ```text
//!  worker ─ CallLog drop ─► Tracer::finish ─► lock-free ring ─► thread "portcullis-traces"
//!            (sampled calls only; a full ring drops, counted)       │ batch (≤ batch spans or 1 s)
//!                                                                   ▼
//!                                 POST {url}  application/x-protobuf ExportTraceServiceRequest
//! ```
//!
//! The data plane never waits on this: `Tracer::finish` is a `try_push` into a lock-free ring
//! (`observe::audit::Ring`: one CAS, no lock; the exporter is never woken per span, it polls the
//! ring every [`IDLE_POLL`]; a full batch leaves at once, a partial one within a second). The
//! thread
//! batches, encodes with the `opentelemetry-proto` messages and sends through the blocking
//! `net::fetch` client; a failed attempt is retried with backoff (100 ms doubling, [`ATTEMPTS`]
//! attempts), then the batch is given up and its spans counted as failed (spans are
//! best-effort telemetry; the audit trail is the record that must not be lost). While the
//! collector is down the queue fills and further spans are dropped and counted. At shutdown
//! (after the workers stopped) the thread exports what it holds with one last attempt.
// control plane: the exporter thread blocks on its queue and its socket by design
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]

use super::config::{HttpAuth, RawAuth};
use crate::net::url::Url;
use crate::observe::audit::OnFull;
use crate::observe::trace::{SpanData, SpanQueue, TraceStats};
use crate::secrets::Secret;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Export attempts per batch before it is given up.
pub const ATTEMPTS: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A partial batch waits at most this long.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// `[telemetry] otlp`, compiled.
pub struct TraceConfig {
    pub url: Url,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub auth: Option<HttpAuth>,
    /// Ratio of new traces recorded (an agent's `sampled` flag decides for its own).
    pub sample: f64,
    /// Spans per export.
    pub batch: usize,
    /// Spans waiting for the exporter before new ones are dropped.
    pub queue: usize,
    /// One export attempt, connect to answer.
    pub timeout: Duration,
}

impl TraceConfig {
    /// What a reload compares (the exporter starts once; a change needs a restart).
    pub fn describe(&self) -> String {
        format!(
            "{}{}{} {} {} {} {:?} {}",
            if self.url.https {
                "https://"
            } else {
                "http://"
            },
            self.url.authority,
            self.url.path,
            self.sample,
            self.batch,
            self.queue,
            self.timeout,
            self.auth.as_ref().map_or("", |a| a.header.as_str()),
        )
    }
}

/// `[telemetry] otlp = { … }` as written (see `config::raw::RawOtlp`), flattened for [`compile`].
pub struct OtlpFields<'a> {
    pub url: &'a str,
    pub sample: Option<f64>,
    pub auth: Option<&'a RawAuth>,
    pub ca_file: Option<&'a str>,
    pub timeout: Option<&'a str>,
    pub batch: Option<i64>,
    pub queue: Option<i64>,
}

/// Compiles `[telemetry] otlp`. Errors are `(key, message)` under `telemetry.otlp.`.
pub fn compile(
    f: &OtlpFields<'_>,
    base_dir: &std::path::Path,
    secret: &mut dyn FnMut(&str, &str) -> Result<Secret, String>,
) -> Result<TraceConfig, Vec<(&'static str, String)>> {
    let mut errs = Vec::new();
    let url = match Url::parse(f.url) {
        Ok(u) => Some(u),
        Err(m) => {
            errs.push(("url", m));
            None
        }
    };
    let sample = match f.sample {
        None => 1.0,
        Some(s) if (0.0..=1.0).contains(&s) => s,
        Some(s) => {
            errs.push((
                "sample",
                format!("{s} is not a ratio between 0 and 1 (0.01 = one new trace in 100)"),
            ));
            1.0
        }
    };
    let count = |v: Option<i64>,
                 key: &'static str,
                 default: usize,
                 max: usize,
                 errs: &mut Vec<_>| {
        match v {
            None => default,
            Some(n) => match usize::try_from(n) {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    errs.push((key, format!("must be between 1 and {max}")));
                    default
                }
            },
        }
    };
    let batch = count(f.batch, "batch", 512, 10_000, &mut errs);
    let queue = count(f.queue, "queue", 8192, 1_000_000, &mut errs);
    let timeout = match f.timeout {
        None => Duration::from_secs(10),
        Some(t) => match crate::util::units::parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push(("timeout", "must be greater than zero".into()));
                Duration::from_secs(10)
            }
            Err(m) => {
                errs.push(("timeout", m));
                Duration::from_secs(10)
            }
        },
    };
    let auth = f
        .auth
        .and_then(|a| match super::config::http_auth(a, secret) {
            Ok(v) => Some(v),
            Err(m) => {
                errs.push(("auth", m));
                None
            }
        });
    let tls = match &url {
        Some(u) if u.https => {
            let ca = f.ca_file.map(|c| base_dir.join(c));
            match crate::net::tls::client_config(ca.as_deref()) {
                Ok(c) => Some(c),
                Err(m) => {
                    errs.push(("ca_file", m));
                    None
                }
            }
        }
        _ => {
            if f.ca_file.is_some() {
                errs.push(("ca_file", "is a setting of an https:// url".into()));
            }
            None
        }
    };
    match url {
        Some(url) if errs.is_empty() => Ok(TraceConfig {
            url,
            tls,
            auth,
            sample,
            batch,
            queue,
            timeout,
        }),
        _ => Err(errs),
    }
}

/// The running exporter.
pub struct Exporter {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<TraceStats>,
}

impl Exporter {
    /// Starts the exporter thread; returns it and the queue each worker's `Tracer` pushes into
    /// (`queue` rounded up to a power of two).
    pub fn start(cfg: Arc<TraceConfig>) -> std::io::Result<(Exporter, Arc<SpanQueue>)> {
        let ring = Arc::new(SpanQueue::new(cfg.queue, OnFull::Drop));
        let rx = ring.clone();
        let stats = Arc::new(TraceStats::default());
        let st = stats.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::Builder::new()
            .name("portcullis-traces".into())
            .spawn(move || run(&cfg, &rx, &st, &halt))?;
        Ok((
            Exporter {
                thread: Some(thread),
                stop,
                stats,
            },
            ring,
        ))
    }

    /// Stops the thread (after the workers stopped): it exports what it holds with one last
    /// attempt and ends.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("trace exporter thread panicked");
        }
    }
}

/// How long an exporter with an empty ring waits before looking again (and at its stop flag):
/// spans arriving meanwhile wait in the ring (`queue` of them: 8192 by default, room for
/// 160,000 spans a second).
pub const IDLE_POLL: Duration = Duration::from_millis(50);
/// How often a backoff wait looks at the stop flag.
const STOP_POLL: Duration = IDLE_POLL;

fn run(cfg: &TraceConfig, rx: &SpanQueue, st: &TraceStats, stop: &AtomicBool) {
    let mut batch: Vec<Box<SpanData>> = Vec::with_capacity(cfg.batch);
    let mut body = Vec::new();
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    tracing::info!(collector = %cfg.url.authority, sample = cfg.sample, "trace exporter started");
    // when a partial batch leaves
    let mut deadline = crate::util::clock::now() + FLUSH_EVERY;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while batch.len() < cfg.batch {
            match rx.pop() {
                Some(s) => batch.push(s),
                None => break,
            }
        }
        let now = crate::util::clock::now();
        if batch.is_empty() {
            if stopping {
                break;
            }
            // `wait` parks until the timeout (this thread is not registered as the ring's
            // consumer, so producers never wake it: no syscall per span)
            rx.wait(IDLE_POLL);
            deadline = crate::util::clock::now() + FLUSH_EVERY;
            continue;
        }
        if batch.len() < cfg.batch && now < deadline && !stopping {
            rx.wait((deadline - now).min(IDLE_POLL));
            continue;
        }
        let n = batch.len() as u64;
        body.clear();
        encode(&batch, &mut body);
        batch.clear();
        let mut sent = false;
        for i in 0..ATTEMPTS {
            match send(cfg, &body) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    st.export_errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(collector = %cfg.url.authority, error = %e,
                            "trace export failed; retrying with backoff (spans are dropped while the collector is down)");
                        failing = true;
                    }
                    // at shutdown: one attempt, no waiting
                    if i + 1 == ATTEMPTS || stopping || !pause(stop, backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        deadline = crate::util::clock::now() + FLUSH_EVERY;
        if sent {
            st.exported.fetch_add(n, Ordering::Relaxed);
            if failing {
                tracing::info!(collector = %cfg.url.authority, "the trace collector takes spans again");
            }
            failing = false;
            backoff = BACKOFF_MIN;
        } else {
            st.failed.fetch_add(n, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                // stopping with the collector unreachable: what is left is given up at once
                let mut left = 0u64;
                while rx.pop().is_some() {
                    left += 1;
                }
                st.failed.fetch_add(left, Ordering::Relaxed);
                break;
            }
        }
    }
    tracing::info!(
        exported = st.exported.load(Ordering::Relaxed),
        "trace exporter stopped"
    );
}

/// Waits `d`, in slices, unless stopping; `false` if stopping.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let end = crate::util::clock::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = crate::util::clock::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(STOP_POLL));
    }
}

fn send(cfg: &TraceConfig, body: &[u8]) -> Result<(), String> {
    let mut headers: Vec<(&str, &[u8])> = vec![("Content-Type", b"application/x-protobuf")];
    if let Some(a) = &cfg.auth {
        headers.push((a.header.as_str(), a.value.expose()));
    }
    let t = crate::net::fetch::Timeouts {
        connect: cfg.timeout.min(Duration::from_secs(5)),
        io: cfg.timeout,
        total: cfg.timeout,
    };
    let resp = crate::net::fetch::request(&cfg.url, cfg.tls.as_ref(), "POST", &headers, body, &t)
        .map_err(|e| e.to_string())?;
    if !(200..300).contains(&resp.status) {
        return Err(format!(
            "{} answered HTTP {}",
            cfg.url.authority, resp.status
        ));
    }
    // a partial success names spans the collector will never take: retrying cannot help
    use prost::Message;
    if let Ok(r) =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
            resp.body.as_slice(),
        )
        && let Some(p) = r.partial_success
        && p.rejected_spans > 0
    {
        tracing::warn!(rejected = p.rejected_spans, message = %p.error_message,
            "the trace collector rejected some spans");
    }
    Ok(())
}

/// An OTLP `ExportTraceServiceRequest`: per call one server span (the gateway's, child of the
/// agent's span when it sent one) and one internal child span per stage reached.
pub fn encode(spans: &[Box<SpanData>], out: &mut Vec<u8>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
    use prost::Message;
    let kv = |k: &str, v: any_value::Value| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let s = |k: &str, v: &str| kv(k, any_value::Value::StringValue(v.to_string()));
    let i = |k: &str, v: i64| kv(k, any_value::Value::IntValue(v));
    let mut out_spans = Vec::with_capacity(spans.len() * 6);
    let mut child_id = 0u64;
    for d in spans {
        let mut attributes = vec![
            s("http.request.method", d.method.as_str()),
            s("url.path", &d.path),
            i("http.response.status_code", i64::from(d.status)),
            s("portcullis.request_id", d.request_id.as_str()),
            s("portcullis.decision", d.decision.as_str()),
        ];
        if let Some(a) = &d.agent {
            attributes.push(s("portcullis.agent", a));
        }
        if let Some(p) = &d.proxy {
            attributes.push(s("portcullis.proxy", p));
        }
        if let Some(c) = d.code {
            attributes.push(s("portcullis.code", c));
        }
        if let Some(r) = d.rule {
            attributes.push(i("portcullis.rule", i64::from(r)));
        }
        if let Some(sc) = &d.scanner {
            attributes.push(s("portcullis.scanner", sc));
        }
        if let Some(u) = d.upstream_status {
            attributes.push(i("portcullis.upstream_status", i64::from(u)));
        }
        let error = d.status >= 500;
        let name = match &d.proxy {
            Some(p) => format!("{} {p}", d.method.as_str()),
            None => d.method.as_str().to_string(),
        };
        let start = d.start_unix_ns;
        out_spans.push(Span {
            trace_id: d.trace_id.to_vec(),
            span_id: d.span_id.to_vec(),
            parent_span_id: d.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            // sampled; bit 8: whether the parent is remote is known, bit 9: it is (the agent's)
            flags: 0x100 | (u32::from(d.parent_id.is_some()) << 9) | 1,
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(d.duration_ns),
            attributes,
            status: Some(Status {
                code: if error {
                    StatusCode::Error as i32
                } else {
                    StatusCode::Unset as i32
                },
                message: if error {
                    d.code.unwrap_or("").to_string()
                } else {
                    String::new()
                },
            }),
            ..Default::default()
        });
        for (stage, from, to) in &d.stages {
            // child ids: the call's span id with a counter mixed in (unique within the trace)
            child_id = child_id.wrapping_add(1);
            let mut id =
                u64::from_be_bytes(d.span_id) ^ child_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if id == 0 {
                id = 1;
            }
            out_spans.push(Span {
                trace_id: d.trace_id.to_vec(),
                span_id: id.to_be_bytes().to_vec(),
                parent_span_id: d.span_id.to_vec(),
                // sampled; the parent (the call's span) is local
                flags: 0x100 | 1,
                name: stage.name().to_string(),
                kind: span::SpanKind::Internal as i32,
                start_time_unix_nano: start.saturating_add(*from),
                end_time_unix_nano: start.saturating_add(*to),
                ..Default::default()
            });
        }
    }
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "portcullis"),
                    s("service.version", env!("CARGO_PKG_VERSION")),
                    s("host.name", &super::config::local_hostname()),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "portcullis".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: out_spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    out.reserve(req.encoded_len());
    // encoding into a Vec cannot run out of room
    let _ = req.encode(out);
}

/// The `portcullis_trace_*` families for `/metrics`.
pub fn render_metrics(st: &TraceStats, o: &mut String) {
    let families: [(&str, &str, &AtomicU64Ref); 4] = [
        (
            "portcullis_trace_spans_exported_total",
            "Call spans the OTLP collector acknowledged.",
            &st.exported,
        ),
        (
            "portcullis_trace_spans_dropped_total",
            "Call spans dropped because the exporter's queue was full.",
            &st.dropped,
        ),
        (
            "portcullis_trace_spans_failed_total",
            "Call spans given up after every export attempt failed.",
            &st.failed,
        ),
        (
            "portcullis_trace_export_errors_total",
            "Failed OTLP export attempts (each retried with backoff).",
            &st.export_errors,
        ),
    ];
    for (name, help, v) in families {
        let _ = writeln!(
            o,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
}

type AtomicU64Ref = std::sync::atomic::AtomicU64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::audit::{Decision, SmallStr};
    use crate::observe::trace::Stage;

    #[test]
    fn spans_encode_with_their_parent_and_stages() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let d = Box::new(SpanData {
            trace_id: [0x4b; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            start_unix_ns: 1_000,
            duration_ns: 500,
            stages: vec![(Stage::Authn, 0, 10), (Stage::Authz, 10, 30)],
            request_id: SmallStr::new("r1"),
            agent: Some("bot".into()),
            proxy: Some("crm".into()),
            method: SmallStr::new("GET"),
            path: "/v1/x".into(),
            status: 403,
            decision: Decision::Deny,
            code: Some("denied_by_rule"),
            rule: Some(1),
            scanner: None,
            upstream_status: None,
        });
        let mut out = Vec::new();
        encode(&[d], &mut out);
        let req = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].name, "GET crm");
        assert_eq!(spans[0].parent_span_id, vec![3; 8]);
        assert_eq!(spans[0].end_time_unix_nano, 1_500);
        assert!(
            spans[0]
                .attributes
                .iter()
                .any(|a| a.key == "portcullis.code")
        );
        assert_eq!(spans[1].name, "authn");
        assert_eq!(spans[1].parent_span_id, vec![2; 8]);
        assert_eq!(spans[2].start_time_unix_nano, 1_010);
        assert_ne!(spans[1].span_id, spans[2].span_id);
    }

    #[test]
    fn config_errors_name_their_key() {
        let mut secret = |_: &str, _: &str| -> Result<Secret, String> { Err("no".into()) };
        let f = OtlpFields {
            url: "ftp://x",
            sample: Some(1.5),
            auth: None,
            ca_file: None,
            timeout: Some("0s"),
            batch: Some(0),
            queue: None,
        };
        let errs = compile(&f, std::path::Path::new("."), &mut secret)
            .err()
            .unwrap();
        let keys: Vec<_> = errs.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["url", "sample", "batch", "timeout"]);
    }
}
