//! Cost of one meter check on the hot path (criterion): by proxy (one atomic cell), by agent
//! (a sharded map lookup, then the cell), with a quota beside the rate, and contended from a
//! second thread. `cargo bench --bench meter`.
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::internals::policy::meter::{MeterBy, MeterSpec, ProxyMeter, Rate};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn spec(by: MeterBy, quota: bool) -> MeterSpec {
    MeterSpec {
        by,
        // generous, so the bench measures the admit path
        rate: Some(Rate {
            rate: 1_000_000_000,
            per: Duration::from_secs(1),
            burst: 1_000_000_000,
        }),
        quota: quota.then_some(Rate {
            rate: 1_000_000_000,
            per: Duration::from_secs(86_400),
            burst: 1_000_000_000,
        }),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("meter_check");
    let mut now = 1_000_000_000u64;
    let m = ProxyMeter::new(spec(MeterBy::Proxy, false));
    g.bench_function("by_proxy", |b| {
        b.iter(|| {
            now += 1000;
            black_box(m.check(None, black_box(now)))
        })
    });
    let m = ProxyMeter::new(spec(MeterBy::Proxy, true));
    g.bench_function("by_proxy_with_quota", |b| {
        b.iter(|| {
            now += 1000;
            black_box(m.check(None, black_box(now)))
        })
    });
    let m = ProxyMeter::new(spec(MeterBy::Agent, false));
    let agents: Vec<String> = (0..1000).map(|i| format!("agent-{i}")).collect();
    let mut i = 0usize;
    g.bench_function("by_agent_1000_agents", |b| {
        b.iter(|| {
            now += 1000;
            i = (i + 1) % agents.len();
            black_box(m.check(Some(&agents[i]), black_box(now)))
        })
    });
    // the same cell hammered from another thread at the same time
    let m = Arc::new(ProxyMeter::new(spec(MeterBy::Proxy, false)));
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut t = 1u64;
            // bounded: stops when the bench is done, or after 2^32 checks
            while !stop.load(Ordering::Relaxed) && t < (1 << 32) {
                t += 1000;
                black_box(m.check(None, t));
            }
        })
    };
    g.bench_function("by_proxy_contended_2_threads", |b| {
        b.iter(|| {
            now += 1000;
            black_box(m.check(None, black_box(now)))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
