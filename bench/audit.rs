//! Audit subsystem benches: ring cost on the data plane, record encoding, writer throughput,
//! query latency on a large generated log.
//!
//! `cargo bench --bench audit` (optionally `-- ring`, `-- writer`, `-- query`).
//! `AUDIT_BENCH_RECORDS` sets the size of the query log (default 1,000,000); it is generated
//! once under `$CARGO_TARGET_DIR/audit-bench-<N>` (or the system temp dir) and reused.
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcullis::internals::observe::audit::record::{Entry, GENESIS, encode_line};
use portcullis::internals::observe::audit::{
    AuditConfig, AuditRecord, Decision, FsyncPolicy, OnFull, Query, Ring, SmallStr, StatusFilter,
    query, start,
};
use portcullis::internals::util::clock;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BASE_TS: u64 = 1_795_600_000_000_000;
const PROXIES: &[&str] = &["crm", "payments", "openai", "github", "slack", "jira"];
const AGENTS: &[&str] = &[
    "support-bot",
    "billing-bot",
    "ops-agent",
    "research-agent",
    "triage-bot",
    "sales-agent",
    "qa-bot",
    "rare-agent",
];
const STATUSES: &[u16] = &[200, 200, 200, 201, 204, 403, 404, 429, 500, 502];

struct Names {
    proxies: Vec<Arc<str>>,
    agents: Vec<Arc<str>>,
}

fn names() -> Names {
    Names {
        proxies: PROXIES.iter().map(|&p| p.into()).collect(),
        agents: AGENTS.iter().map(|&a| a.into()).collect(),
    }
}

/// A record as `CallLog::drop` would build it: Arc clones of config names, one path String.
fn rec(n: &Names, i: u64) -> AuditRecord {
    let status = STATUSES[(i * 7 % 10) as usize];
    let agent = if i.is_multiple_of(100_003) {
        7
    } else {
        (i % 7) as usize
    };
    AuditRecord {
        // 1000 records per second of log time, received up to 50 ms before completion
        ts_us: BASE_TS + i * 1000 - (i * 7919 % 50_000),
        id: SmallStr::new("3f2a9c0d5e6b7a8c000000000001e240"),
        agent_request_id: None,
        agent: Some(n.agents[agent].clone()),
        proxy: Some(n.proxies[(i % 6) as usize].clone()),
        method: SmallStr::new("GET"),
        path: format!("/v1/accounts/{}/orders", i % 10_000),
        status,
        decision: if status == 403 {
            Decision::Deny
        } else {
            Decision::Allow
        },
        code: (status == 403).then_some("denied_by_rule"),
        rule: Some(2),
        scanner: None,
        redactions: 0,
        secret_reflected: 0,
        bytes_in: 312,
        bytes_out: 2048,
        upstream_status: (status != 403).then_some(status),
        upstream_us: Some(1234),
        total_us: 1400,
        client: Some((std::net::Ipv4Addr::LOCALHOST.into(), 51_234)),
        forwarded_for: None,
        shadow: None,
        completion: false,
        approval: None,
        trace_id: [0x4b; 16],
        metered: None,
        admin: None,
        auth: None,
        tunnel: None,
        mcp: None,
    }
}

fn ring_benches(c: &mut Criterion) {
    let n = names();
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let ring = Ring::new(65_536, OnFull::Drop);
    g.bench_function("push_pop_u64", |b| {
        b.iter(|| {
            let _ = ring.push(black_box(1u64));
            black_box(ring.pop())
        })
    });
    let ring = Ring::new(65_536, OnFull::Drop);
    let mut slot = Some(rec(&n, 1));
    g.bench_function("push_pop_record_moved", |b| {
        b.iter(|| {
            if let Some(r) = slot.take() {
                let _ = ring.push(r);
            }
            slot = ring.pop();
        })
    });
    // the data plane's whole share: build the record (Arc clones, path String) and push it,
    // while the consumer drains on another thread
    let ring = Arc::new(Ring::new(65_536, OnFull::Drop));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (ring, stop) = (ring.clone(), stop.clone());
        std::thread::spawn(move || {
            ring.register_consumer();
            while !stop.load(Ordering::Relaxed) {
                while ring.pop().is_some() {}
                ring.wait(Duration::from_millis(1));
            }
        })
    };
    let mut i = 0u64;
    g.bench_function("build_and_push_record_with_consumer", |b| {
        b.iter(|| {
            i += 1;
            let _ = ring.push(rec(&n, i));
        })
    });
    stop.store(true, Ordering::Relaxed);
    ring.force_wake_consumer();
    let _ = consumer.join();
    g.bench_function("encode_line_with_sha256", |b| {
        let r = rec(&n, 42);
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            black_box(encode_line(&mut out, &Entry::Call(&r), &GENESIS))
        })
    });
    g.bench_function("sha256_only_460_bytes", |b| {
        let data = [b'x'; 460];
        b.iter(|| {
            black_box(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                black_box(&data),
            ))
        })
    });
    g.finish();
}

fn writer_run(dir: &Path, fsync: FsyncPolicy, n: &Names, count: u64) -> Duration {
    let mut cfg = AuditConfig::new(dir);
    cfg.fsync = fsync;
    let records: Vec<AuditRecord> = (0..count).map(|i| rec(n, i)).collect();
    let t0 = clock::now();
    let (ring, h) = start(cfg).expect("start writer");
    for mut r in records {
        while let Err(back) = ring.try_push(r) {
            r = back;
            std::thread::yield_now();
        }
    }
    let s = h.flush_and_stop();
    let el = t0.elapsed();
    assert_eq!(s.written, count);
    el
}

fn writer_benches(c: &mut Criterion) {
    let n = names();
    const COUNT: u64 = 200_000;
    let mut g = c.benchmark_group("writer");
    g.sample_size(10);
    g.throughput(Throughput::Elements(COUNT));
    for (name, fsync) in [
        ("never", FsyncPolicy::Never),
        ("interval_1s", FsyncPolicy::Interval(Duration::from_secs(1))),
        ("always", FsyncPolicy::Always),
    ] {
        g.bench_function(format!("200k_records_fsync_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = tempfile::tempdir().expect("tempdir");
                    total += writer_run(d.path(), fsync, &n, COUNT);
                }
                total
            })
        });
    }
    g.finish();
}

fn bench_dir(count: u64) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("audit-bench-{count}"))
}

fn query_log(count: u64) -> PathBuf {
    let dir = bench_dir(count);
    let marker = dir.join("complete");
    if marker.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let n = names();
    let mut cfg = AuditConfig::new(&dir);
    cfg.fsync = FsyncPolicy::Never;
    let t0 = clock::now();
    let (ring, h) = start(cfg).expect("start writer");
    for i in 0..count {
        let mut r = rec(&n, i);
        while let Err(back) = ring.try_push(r) {
            r = back;
            std::thread::yield_now();
        }
    }
    let s = h.flush_and_stop();
    assert_eq!(s.written, count);
    eprintln!(
        "generated {count} records ({} MiB) in {:?}",
        s.bytes >> 20,
        t0.elapsed()
    );
    std::fs::write(&marker, b"").expect("marker");
    dir
}

fn query_benches(c: &mut Criterion) {
    let count: u64 = std::env::var("AUDIT_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = query_log(count);
    let span = count * 1000;
    let mut g = c.benchmark_group(format!("query_{count}"));
    g.sample_size(20);
    let cases: Vec<(&str, Query)> = vec![
        ("newest_100", Query::default()),
        (
            "window_60s_limit_1000",
            Query {
                since: Some(BASE_TS + span / 2),
                until: Some(BASE_TS + span / 2 + 60_000_000),
                limit: 1000,
                ..Query::default()
            },
        ),
        (
            "proxy_status_403_limit_100",
            Query {
                proxy: Some("payments".into()),
                status: Some(StatusFilter::Exact(403)),
                ..Query::default()
            },
        ),
        (
            "rare_agent_all_time",
            Query {
                agent: Some("rare-agent".into()),
                limit: 1000,
                ..Query::default()
            },
        ),
        (
            "oldest_hour_4xx",
            Query {
                since: Some(BASE_TS),
                until: Some(BASE_TS + 3_600_000_000),
                status: StatusFilter::parse("4xx"),
                limit: 100,
                ..Query::default()
            },
        ),
    ];
    for (name, q) in &cases {
        let r = query(&dir, q).expect("query");
        eprintln!(
            "{name}: {} records, {} blocks read, {} skipped, {} MiB read",
            r.records.len(),
            r.blocks_read,
            r.blocks_skipped,
            r.bytes_read >> 20
        );
        g.bench_function(*name, |b| {
            b.iter_batched(
                || (),
                |_| query(&dir, q).expect("query"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, ring_benches, writer_benches, query_benches);
criterion_main!(benches);
