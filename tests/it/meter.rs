//! Meters: token buckets per proxy / per agent, 429 with Retry-After and RateLimit-* headers,
//! and nothing sent upstream for a limited call.
use crate::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

fn metered(upstream: &str, meter: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 2\n\n[[proxies]]\nname = \"up\"\nupstream = \"{upstream}\"\ndefault_effect = \"allow\"\n{meter}\n"
    )
}

#[test]
fn burst_is_admitted_then_429_with_headers_and_nothing_upstream() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&metered(
        &mock.url(),
        "meter = { rate = 1, per = \"1m\", burst = 3, by = \"proxy\" }",
    ));
    let mut c = gw.conn();
    for i in 0..3u64 {
        let r = c.roundtrip(&get("/up/a"));
        assert_eq!(r.status, 200, "call {i}: {}", show(&r.raw));
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60 * (i + 1)).contains(&reset), "reset {reset}");
    }
    // a new connection shares the proxy bucket (any worker)
    let mut c2 = gw.conn();
    for conn in [&mut c, &mut c2] {
        let r = conn.roundtrip(&get("/up/b"));
        assert_gateway_error(&r, 429, "rate_limited");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert!(!r.says_close(), "a 429 keeps the connection");
    }
    assert_eq!(mock.count(), 3, "limited calls must not reach the upstream");
    // the connection still works for other proxies / later calls
    assert_eq!(c.roundtrip(&get("/nope/x")).status, 404);
}

#[test]
fn quota_limits_beside_the_rate() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&metered(
        &mock.url(),
        "meter = { rate = 100, burst = 100 }\nquota = { limit = 2, per = \"1d\" }",
    ));
    let mut c = gw.conn();
    assert_eq!(c.roundtrip(&get("/up/1")).status, 200);
    assert_eq!(c.roundtrip(&get("/up/2")).status, 200);
    let r = c.roundtrip(&get("/up/3"));
    assert_gateway_error(&r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 3600, "a day quota asks to wait hours, got {retry}");
    assert_eq!(mock.count(), 2);
}

#[test]
fn bad_meter_config_is_reported_with_line_and_key() {
    let out = run_portcullis_check(&metered(
        "http://127.0.0.1:9",
        "meter = { rate = 0, per = \"1s\" }",
    ));
    assert!(
        out.contains(":9: proxies[0].meter.rate:"),
        "check output: {out}"
    );
    let out = run_portcullis_check(&metered(
        "http://127.0.0.1:9",
        "meter = { rate = 5, per = \"soon\" }",
    ));
    assert!(out.contains("proxies[0].meter.per"), "check output: {out}");
}

fn run_portcullis_check(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, toml.replace("{PORT}", "1")).unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Four connections (spread over both workers) offer far more than the rate for ~3 s; the
/// admitted count matches burst + rate × elapsed within 5%, and equals what the upstream saw.
#[test]
fn admitted_calls_match_the_rate_under_overload_across_workers() {
    let mock = MockUpstream::start(echo_request_line);
    let (rate, burst) = (100u64, 20u64);
    let gw = Gateway::start(&metered(
        &mock.url(),
        &format!("meter = {{ rate = {rate}, per = \"1s\", burst = {burst} }}"),
    ));
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run_for = Duration::from_secs(3);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (ok, limited) = (ok.clone(), limited.clone());
            let mut c = gw.conn();
            thread::spawn(move || {
                // bounded in count and time
                for _ in 0..200_000 {
                    if start.elapsed() >= run_for {
                        break;
                    }
                    match c.roundtrip(&get("/up/x")).status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        s => panic!("unexpected status {s}"),
                    };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = ok.load(Ordering::Relaxed);
    let refused = limited.load(Ordering::Relaxed);
    let expected = burst as f64 + rate as f64 * elapsed;
    assert!(
        refused as f64 >= 2.0 * expected,
        "the load must be well above the rate: {admitted} admitted, {refused} refused"
    );
    assert!(
        (admitted as f64) <= expected * 1.05 + 1.0 && (admitted as f64) >= expected * 0.95,
        "admitted {admitted}, expected {expected:.0} ±5% over {elapsed:.2}s"
    );
    assert!(mock.wait_for_requests(admitted as usize, Duration::from_secs(2)));
    assert_eq!(mock.count() as u64, admitted);
}
