//! Cluster meters (issue 6): a real `redis-server` on a free port on 127.0.0.1, gateway
//! processes sharing its buckets, Redis killed and restarted under them, and the Lua script
//! itself. `.ci/run` installs redis-server; a missing binary fails these tests.
use crate::support::*;
use portcullis::internals::policy::meter::cluster::{LimitArgs, Store, TakeReq};
use portcullis::internals::policy::meter::redis_store::{RedisStore, connection_info};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A throwaway `redis-server` (no persistence) that can be killed and restarted on its port.
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster_config(upstream: &str, meters: &str, meter: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 2\n\n[meters]\n{meters}\n\n[[proxies]]\nname = \"up\"\nupstream = \"{upstream}\"\ndefault_effect = \"allow\"\n{meter}\n"
    )
}

fn post(target: &str) -> Vec<u8> {
    format!("POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes()
}

/// The script through the real client: a cost of N, partial grants, the quota in the same
/// call, Retry-After from Redis, and TTLs on the cells.
#[test]
fn script_takes_tokens_with_cost_and_quota_in_one_call() {
    let redis = Redis::start();
    let (info, display) = connection_info(&redis.url(), None).unwrap();
    assert_eq!(display, format!("127.0.0.1:{}/0", redis.port));
    let mut store = RedisStore::connect(&info).unwrap();
    let rate = LimitArgs {
        interval_ns: 100_000_000, // 10/s
        burst: 10,
    };
    let quota = LimitArgs {
        interval_ns: 8_640_000_000_000, // 10/day
        burst: 10,
    };
    let req = |want| TakeReq {
        key: Arc::from("t:{s}"),
        want,
        rate: Some(rate),
        quota: None,
    };
    // 4 of 10, then 6 of 8 asked (partial), then none
    let g = store.take(&[req(4)]).unwrap();
    assert_eq!((g[0].granted, g[0].snapshot.limit), (4, 10));
    assert_eq!(g[0].snapshot.remaining, 6);
    assert!(g[0].snapshot.reset_ns > 350_000_000 && g[0].snapshot.reset_ns <= 400_000_000);
    let g = store.take(&[req(8), req(1)]).unwrap();
    assert_eq!(g[0].granted, 6, "as many as available");
    assert!(g[0].retry_after_ns > 0 && g[0].retry_after_ns <= 100_000_000);
    assert_eq!(
        g[1].granted, 0,
        "second in the same pipeline sees the empty bucket"
    );
    assert!(!g[1].quota);
    // the quota runs out first in the same atomic call
    let q = |want| TakeReq {
        key: Arc::from("t:{q}"),
        want,
        rate: Some(rate),
        quota: Some(quota),
    };
    let g = store.take(&[q(3), q(3), q(3), q(3)]).unwrap();
    let granted: Vec<u64> = g.iter().map(|g| g.granted).collect();
    assert_eq!(granted, [3, 3, 3, 1]);
    assert!(g[3].quota, "the quota was the limit");
    assert!(g[3].retry_after_ns > 3600 * 1_000_000_000);
    // cells have a TTL (idle buckets vanish)
    let client = redis::Client::open(info).unwrap();
    let mut con = client.get_connection().unwrap();
    for key in ["t:{s}:r", "t:{q}:r", "t:{q}:q"] {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
        assert!(ttl > 0, "{key} has TTL {ttl}");
    }
    // a flushed script cache is reloaded transparently
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut con)
        .unwrap();
    let g = store
        .take(&[TakeReq {
            key: Arc::from("t:{new}"),
            want: 2,
            rate: Some(rate),
            quota: None,
        }])
        .unwrap();
    assert_eq!(g[0].granted, 2);
}

/// Two gateway processes (2 workers each) share one meter (20/s, burst 10) under ~3 s of load
/// from 3 connections each: together they admit burst + rate × elapsed within 10%, and the
/// upstream saw exactly the admitted calls.
#[test]
fn two_gateways_share_one_meter_within_ten_percent() {
    let redis = Redis::start();
    let mock = MockUpstream::start(echo_request_line);
    let (rate, burst) = (20u64, 10u64);
    let cfg = cluster_config(
        &mock.url(),
        &format!("redis = \"{}\"\nkey_prefix = \"it2:\"", redis.url()),
        &format!("meter = {{ rate = {rate}, per = \"1s\", burst = {burst} }}"),
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg)];
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run_for = Duration::from_secs(3);
    let mut handles = Vec::new();
    for gw in &gws {
        for _ in 0..3 {
            let (ok, limited) = (ok.clone(), limited.clone());
            let mut c = gw.conn();
            handles.push(thread::spawn(move || {
                for _ in 0..100_000 {
                    if start.elapsed() >= run_for {
                        break;
                    }
                    let r = c.roundtrip(&get("/up/x"));
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            assert!(r.header("retry-after").is_some());
                            assert_eq!(r.header("ratelimit-limit"), Some("10"));
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        s => panic!("unexpected status {s}: {}", show(&r.raw)),
                    };
                }
            }));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = ok.load(Ordering::Relaxed);
    let refused = limited.load(Ordering::Relaxed);
    let expected = burst as f64 + rate as f64 * elapsed;
    eprintln!("two gateways: admitted {admitted}, expected {expected:.1}, refused {refused}");
    assert!(
        refused as f64 >= 2.0 * expected,
        "the load must be well above the rate: {admitted} admitted, {refused} refused"
    );
    assert!(
        (admitted as f64 - expected).abs() <= expected * 0.10,
        "admitted {admitted}, expected {expected:.0} ±10% over {elapsed:.2}s"
    );
    assert!(mock.wait_for_requests(admitted as usize, Duration::from_secs(2)));
    assert_eq!(mock.count() as u64, admitted);
}

/// Redis killed under two gateways: `open_reads` (the default) lets GETs through on local
/// buckets and refuses POSTs with 503 meter_unavailable; `closed` refuses both. Both log the
/// outage once, and recover when Redis is back.
#[test]
fn redis_down_applies_on_redis_down_and_recovers() {
    let mut redis = Redis::start();
    let mock = MockUpstream::start(echo_request_line);
    let meter = "meter = { rate = 1000, per = \"1s\", burst = 1000 }";
    let open_reads = Gateway::start(&cluster_config(
        &mock.url(),
        &format!("redis = \"{}\"", redis.url()),
        meter,
    ));
    let closed = Gateway::start(&cluster_config(
        &mock.url(),
        &format!("redis = \"{}\"\non_redis_down = \"closed\"", redis.url()),
        meter,
    ));
    // a refused call with a body closes its connection (the body is never read): one
    // connection per POST
    let (mut a, mut b) = (open_reads.conn(), closed.conn());
    for (c, gw) in [(&mut a, &open_reads), (&mut b, &closed)] {
        assert_eq!(c.roundtrip(&get("/up/r")).status, 200);
        assert_eq!(gw.conn().roundtrip(&post("/up/w")).status, 200);
    }
    let before = mock.count();

    redis.kill();
    // reserves hold tokens for at most their horizon (100 ms here)
    thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let r = open_reads.conn().roundtrip(&post("/up/w"));
        assert_gateway_error(&r, 503, "meter_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(
            a.roundtrip(&get("/up/r")).status,
            200,
            "open_reads: GET passes"
        );
        assert_gateway_error(&b.roundtrip(&get("/up/r")), 503, "meter_unavailable");
        assert_gateway_error(
            &closed.conn().roundtrip(&post("/up/w")),
            503,
            "meter_unavailable",
        );
    }
    assert_eq!(
        mock.count(),
        before + 3,
        "only the open_reads GETs went upstream"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut recovered = false;
    while Instant::now() < deadline {
        let ra = open_reads.conn().roundtrip(&post("/up/w")).status;
        let rb = b.roundtrip(&get("/up/r")).status;
        if ra == 200 && rb == 200 {
            recovered = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(recovered, "no recovery within 10 s of Redis restarting");
    for gw in [&open_reads, &closed] {
        let log = gw.log_when(
            |l| l.contains("Redis unreachable") && l.contains("Redis reachable again"),
            Duration::from_secs(5),
        );
        assert_eq!(
            log.matches("Redis unreachable").count(),
            1,
            "one log line per transition:\n{log}"
        );
        assert!(log.contains("Redis reachable again"), "{log}");
        assert!(!log.contains("password"), "{log}");
    }
}

/// `[meters]` errors name file, line and key.
#[test]
fn bad_meters_config_is_reported_with_line_and_key() {
    let cases = [
        ("redis = \"http://127.0.0.1:6379\"", ":6: meters.redis:"),
        (
            "redis = \"redis://:hunter2@127.0.0.1:6379/0\"",
            ":6: meters.redis: must not contain a password",
        ),
        (
            "redis = \"redis://127.0.0.1:6379/0\"\nbatch = 0",
            ":7: meters.batch:",
        ),
        (
            "redis = \"redis://127.0.0.1:6379/0\"\nbatch = \"lots\"",
            ":7: meters.batch:",
        ),
        (
            "redis = \"redis://127.0.0.1:6379/0\"\nkey_prefix = \"a b\"",
            ":7: meters.key_prefix:",
        ),
        (
            "redis = \"redis://127.0.0.1:6379/0\"\non_redis_down = \"maybe\"",
            ":7: on_redis_down:",
        ),
        (
            "redis = \"redis://127.0.0.1:6379/0\"\npassword = \"env:PORTCULLIS_TEST_NO_SUCH_VAR\"",
            ":7: meters.password:",
        ),
    ];
    for (meters, want) in cases {
        let toml = cluster_config("http://127.0.0.1:9", meters, "meter = { rate = 5 }");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, toml.replace("{PORT}", "1")).unwrap();
        let out = run_portcullis(
            &["check", "-c", path.to_str().unwrap()],
            &[],
            Duration::from_secs(10),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{meters}: {text}");
        assert!(text.contains(want), "{meters}: want {want:?} in {text}");
        assert!(
            !text.contains("hunter2"),
            "a password is never echoed: {text}"
        );
    }
}

/// `/metrics` shows the cluster meters' Redis as up, down while it is killed (with an outage
/// counted), and up again after it restarts.
#[test]
fn redis_health_on_metrics() {
    let mut redis = Redis::start();
    let mock = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let toml = cluster_config(
        &mock.url(),
        &format!("redis = \"{}\"", redis.url()),
        "meter = { rate = 1000, per = \"1s\", burst = 1000 }",
    )
    .replacen(
        "workers = 2\n",
        &format!(
            "workers = 2\nadmin_listen = \"127.0.0.1:{admin}\"\nmetrics_token = \"file:metrics.token\"\n"
        ),
        1,
    );
    let gw = Gateway::start_with_files(&toml, &[("metrics.token", b"redis-metrics-0123456789")]);
    let value = |name: &str| -> Option<f64> {
        let raw = send_raw(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer redis-metrics-0123456789\r\n\r\n",
        );
        let text = parse_response(&raw).ok()?.body_str();
        let prefix = format!("{name}{{redis=\"");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let wait_for = |name: &str, want: f64, call: &dyn Fn()| {
        poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            call();
            (value(name) == Some(want)).then_some(())
        })
        .unwrap_or_else(|| panic!("{name} never became {want} (now {:?})", value(name)))
    };
    let call = || {
        let _ = gw.conn().roundtrip(&post("/up/w"));
    };
    wait_for("portcullis_meter_redis_up", 1.0, &call);
    assert_eq!(value("portcullis_meter_redis_outages_total"), Some(0.0));

    redis.kill();
    wait_for("portcullis_meter_redis_up", 0.0, &call);
    assert!(value("portcullis_meter_redis_outages_total") >= Some(1.0));
    assert!(value("portcullis_meter_redis_errors_total") >= Some(1.0));

    redis.restart();
    wait_for("portcullis_meter_redis_up", 1.0, &call);
}
