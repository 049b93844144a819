//! Audit records to the SIEM: `[[audit.sinks]]`.
//!
//! ```text
//!  audit writer ─► dir/audit-…jsonl ─► sink thread "siem" ─► tail.rs (cursor) ─► deliver.rs ─► receiver
//!                       ▲                 │  ack → cursor::store (dir/.sink-siem.cursor, atomic)
//!                       └─ retention asks cursor::held before deleting a file
//! ```
//!
//! Each sink runs on its own control-plane thread and reads the audit *files* (never the
//! request path): batches of up to `batch` complete lines after its durable cursor, sent with
//! retries (100 ms doubling to `retry_max`) until the receiver acknowledges; only then is the
//! cursor committed. A sink that is down lags and catches up after an outage or a restart;
//! delivery is at least once (a batch acknowledged but not yet committed when the gateway
//! stops is sent again), and every line carries its chain `hash` (and call records their `id`)
//! for de-duplication. Lag (records, seconds), delivered, failed attempts and gaps are exported
//! per sink in `/metrics` ([`render_metrics`]).
//!
//! - [`config`]: `[[audit.sinks]]` as written and compiled.
//! - [`tail`]: reading batches behind the cursor.
//! - [`format`]: NDJSON / Splunk HEC / Elastic bulk bodies, RFC 5424 messages.
//! - [`deliver`]: HTTP(S) through `net::fetch`, syslog over TCP, TLS or UDP.
//! - [`traces`]: `[telemetry] otlp`, the calls' spans to an OpenTelemetry collector (its own
//!   thread, fed by the workers through a bounded queue).
// control plane: the sink threads block on sockets and park between polls by design
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]

pub mod config;
pub mod deliver;
pub mod format;
pub mod tail;
pub mod traces;

pub use config::{RawSink, SinkConfig};

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a caught-up sink looks for new lines.
const POLL: Duration = Duration::from_millis(200);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// How often the lag gauges are recomputed.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// One sink's counters, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub name: String,
    /// Records acknowledged by the receiver (and committed).
    pub delivered: AtomicU64,
    /// Failed delivery attempts (each retried).
    pub failed: AtomicU64,
    /// Log files deleted before this sink delivered them.
    pub gaps: AtomicU64,
    /// Undelivered records (gauge).
    pub lag_records: AtomicU64,
    /// Age of the oldest undelivered record in seconds (gauge).
    pub lag_seconds: AtomicU64,
    /// Cursor writes or file reads that failed.
    pub errors: AtomicU64,
}

/// The running sinks.
pub struct Sinks {
    stop: Option<flume::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Vec<Arc<SinkStats>>,
}

impl Sinks {
    /// Starts one thread per sink reading `dir`.
    pub fn start(dir: &Path, sinks: &[Arc<SinkConfig>]) -> std::io::Result<Sinks> {
        let (tx, rx) = flume::bounded::<()>(0);
        let mut out = Sinks {
            stop: Some(tx),
            threads: Vec::new(),
            stats: Vec::new(),
        };
        for cfg in sinks {
            let stats = Arc::new(SinkStats {
                name: cfg.name.clone(),
                ..SinkStats::default()
            });
            let (cfg, st, rx, dir) = (cfg.clone(), stats.clone(), rx.clone(), dir.to_path_buf());
            let t = std::thread::Builder::new()
                .name(format!("portcullis-sink-{}", cfg.name))
                .spawn(move || run(&dir, &cfg, &st, &rx))?;
            out.threads.push(t);
            out.stats.push(stats);
        }
        Ok(out)
    }

    /// Stops the sinks: each finishes the attempt in flight (bounded by its `timeout`).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("audit sink thread panicked");
            }
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Waits `d` or until stop; `true` if stopping.
fn wait(stop: &flume::Receiver<()>, d: Duration) -> bool {
    matches!(
        stop.recv_timeout(d),
        Err(flume::RecvTimeoutError::Disconnected) | Ok(())
    )
}

/// The sink thread.
fn run(dir: &Path, cfg: &SinkConfig, st: &SinkStats, stop: &flume::Receiver<()>) {
    let name = cfg.name.as_str();
    let mut tail = tail::Tail::open(dir, name);
    let mut sender = deliver::Deliverer::new(cfg);
    let mut scratch = Vec::new();
    let mut backoff = BACKOFF_MIN;
    let mut failing_since: Option<(std::time::Instant, u64)> = None;
    let mut last_lag: Option<std::time::Instant> = None;
    tracing::info!(sink = name, file = %tail.cursor.file, offset = tail.cursor.offset, "audit sink started");
    loop {
        if last_lag.is_none_or(|t| crate::util::clock::now().duration_since(t) >= LAG_EVERY) {
            last_lag = Some(crate::util::clock::now());
            update_lag(&mut tail, st);
        }
        let mut ev = tail::Events::default();
        let batch = tail.next_batch(cfg.batch, &mut ev);
        st.gaps.fetch_add(ev.gaps, Ordering::Relaxed);
        st.errors.fetch_add(ev.resets, Ordering::Relaxed);
        let batch = match batch {
            Ok(Some(b)) => b,
            Ok(None) => {
                if wait(stop, POLL) {
                    break;
                }
                continue;
            }
            Err(e) => {
                st.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = name, error = %e, "audit sink: cannot read the audit files");
                if wait(stop, cfg.retry_max.min(Duration::from_secs(1))) {
                    break;
                }
                continue;
            }
        };
        let lines = batch.line_slices();
        match sender.send(cfg, &lines, &mut scratch) {
            Ok(()) => {
                if let Some((since, n)) = failing_since.take() {
                    tracing::info!(
                        sink = name,
                        failed_attempts = n,
                        outage_ms =
                            crate::util::clock::now().duration_since(since).as_millis() as u64,
                        "audit sink: the receiver takes records again"
                    );
                }
                backoff = BACKOFF_MIN;
                let n = lines.len() as u64;
                drop(lines);
                if let Err(e) = tail.commit_lines(batch.end, n) {
                    // delivered, but a restart will send it again (at least once)
                    st.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = name, error = %e, "audit sink: cannot write the cursor");
                }
                st.delivered.fetch_add(n, Ordering::Relaxed);
                let lag = st.lag_records.load(Ordering::Relaxed);
                st.lag_records
                    .store(lag.saturating_sub(n), Ordering::Relaxed);
            }
            Err(e) => {
                st.failed.fetch_add(1, Ordering::Relaxed);
                match &mut failing_since {
                    None => {
                        tracing::warn!(sink = name, error = %e, records = lines.len(),
                            "audit sink: delivery failed; retrying with backoff (records wait in the audit files)");
                        failing_since = Some((crate::util::clock::now(), 1));
                    }
                    Some((_, n)) => {
                        *n += 1;
                        tracing::debug!(sink = name, error = %e, "audit sink: delivery failed again");
                    }
                }
                if wait(stop, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(cfg.retry_max);
            }
        }
    }
    tracing::info!(sink = name, file = %tail.cursor.file, offset = tail.cursor.offset, "audit sink stopped");
}

fn update_lag(tail: &mut tail::Tail, st: &SinkStats) {
    match tail.lag() {
        Ok((records, oldest)) => {
            st.lag_records.store(records, Ordering::Relaxed);
            let now_us = crate::util::clock::unix_now().as_micros() as u64;
            let secs = match oldest {
                Some(ts) if records > 0 => now_us.saturating_sub(ts) / 1_000_000,
                _ => 0,
            };
            st.lag_seconds.store(secs, Ordering::Relaxed);
        }
        Err(e) => {
            st.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "audit sink: cannot compute the lag");
        }
    }
}

/// Name, type, help and value of one metric family.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SinkStats) -> u64,
);

/// The `portcullis_sink_*` families for `/metrics`.
pub fn render_metrics(stats: &[Arc<SinkStats>], o: &mut String) {
    if stats.is_empty() {
        return;
    }
    let families: [Family; 6] = [
        (
            "portcullis_sink_delivered_total",
            "counter",
            "Audit records acknowledged by the sink's receiver.",
            |s| s.delivered.load(Ordering::Relaxed),
        ),
        (
            "portcullis_sink_failed_total",
            "counter",
            "Failed delivery attempts (each retried with backoff).",
            |s| s.failed.load(Ordering::Relaxed),
        ),
        (
            "portcullis_sink_gaps_total",
            "counter",
            "Audit files deleted (retention past max_lag) before the sink delivered them.",
            |s| s.gaps.load(Ordering::Relaxed),
        ),
        (
            "portcullis_sink_errors_total",
            "counter",
            "Audit file reads or cursor writes that failed, and cursors that did not match their file.",
            |s| s.errors.load(Ordering::Relaxed),
        ),
        (
            "portcullis_sink_lag_records",
            "gauge",
            "Audit records not yet delivered by the sink.",
            |s| s.lag_records.load(Ordering::Relaxed),
        ),
        (
            "portcullis_sink_lag_seconds",
            "gauge",
            "Age of the oldest audit record not yet delivered by the sink.",
            |s| s.lag_seconds.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in stats {
            let _ = writeln!(o, "{name}{{sink=\"{}\"}} {}", s.name, get(s));
        }
    }
}
