//! Cluster meters (criterion): the local fast path (a token from the reserve, refilled in the
//! background from a real Redis) against the local-only meter, and the round trip of one batch
//! refill (the Lua script through the sync client), alone and pipelined for 16 buckets.
//! Needs `redis-server` on PATH (it runs one on a free port); without it the bench says so and
//! measures nothing. `cargo bench --bench meter_redis`.
// A bench harness, not the data plane: it sleeps while redis-server starts.
#![allow(clippy::disallowed_methods)]
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::internals::policy::meter::cluster::{
    Cluster, LimitArgs, OnDown, Settings, Store, TakeReq,
};
use portcullis::internals::policy::meter::redis_store::{RedisStore, connection_info, connector};
use portcullis::internals::policy::meter::{MeterBy, MeterSpec, ProxyMeter, Rate, Verdict};
use portcullis::internals::util::clock::mono_ns;
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Server, redis::ConnectionInfo)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let (info, _) = connection_info(&format!("redis://127.0.0.1:{port}/0"), None).ok()?;
    for _ in 0..200 {
        if RedisStore::connect(&info).is_ok() {
            return Some((server, info));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn spec() -> MeterSpec {
    MeterSpec {
        by: MeterBy::Proxy,
        // generous, so the bench measures the admit path
        rate: Some(Rate {
            rate: 1_000_000_000,
            per: Duration::from_secs(1),
            burst: 1_000_000_000,
        }),
        quota: None,
    }
}

fn bench(c: &mut Criterion) {
    let Some((_server, info)) = start_redis() else {
        eprintln!("meter_redis bench: redis-server is not available; nothing measured");
        return;
    };
    let mut g = c.benchmark_group("meter_cluster");

    let local = ProxyMeter::new(spec());
    g.bench_function("local_by_proxy_with_clock", |b| {
        b.iter(|| black_box(local.check(None, mono_ns())))
    });

    let cluster = Arc::new(Cluster::new(
        Settings {
            display: "bench".into(),
            connection_id: 0,
            key_prefix: "bench:".into(),
            batch: Some(100_000),
            on_down: OnDown::Closed,
        },
        connector(info.clone()),
    ));
    let m = ProxyMeter::with_cluster(spec(), "bench", cluster.clone());
    // warm up: the first call starts the refill thread and waits for its first batch
    for _ in 0..1000 {
        if matches!(m.check(None, mono_ns()), Verdict::Allowed(_)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut pending = 0u64;
    let mut calls = 0u64;
    g.bench_function("cluster_fast_path_with_clock", |b| {
        b.iter(|| {
            calls += 1;
            let v = m.check(None, mono_ns());
            if !matches!(v, Verdict::Allowed(_)) {
                pending += 1;
            }
            black_box(v)
        })
    });
    let h = &cluster.health;
    eprintln!(
        "cluster fast path: {calls} calls, {pending} not served from the reserve, {} round trips, {} tokens fetched",
        h.round_trips.load(std::sync::atomic::Ordering::Relaxed),
        h.tokens_fetched.load(std::sync::atomic::Ordering::Relaxed)
    );

    let mut store = match RedisStore::connect(&info) {
        Ok(s) => s,
        Err(e) => panic!("connect: {e}"),
    };
    let limit = LimitArgs {
        interval_ns: 1,
        burst: 1_000_000_000,
    };
    let one = [TakeReq {
        key: Arc::from("bench:{refill}"),
        want: 50,
        rate: Some(limit),
        quota: None,
    }];
    g.bench_function("refill_round_trip_1_bucket", |b| {
        b.iter(|| black_box(store.take(&one).map(|g| g[0].granted)))
    });
    let sixteen: Vec<TakeReq> = (0..16)
        .map(|i| TakeReq {
            key: Arc::from(format!("bench:{{refill{i}}}").as_str()),
            want: 50,
            rate: Some(limit),
            quota: Some(limit),
        })
        .collect();
    g.bench_function("refill_round_trip_16_buckets_pipelined_with_quota", |b| {
        b.iter(|| black_box(store.take(&sixteen).map(|g| g.len())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
