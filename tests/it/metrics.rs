//! `GET /metrics`: Prometheus text merged from the per-worker shards, after a mix of calls.
use crate::audit::ADMIN_TOKEN;
use crate::support::*;
use std::thread;
use std::time::{Duration, Instant};

fn scrape(admin: u16) -> String {
    let raw = send_raw(
        admin,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = parse_response(&raw).unwrap_or_else(|e| panic!("{e}: {}", show(&raw)));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.body_str()
}

/// The value of the sample `series` (name and labels exactly as exported).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_calls_by_proxy_decision_status_and_audit_progress() {
    let mock = MockUpstream::start(|req| {
        if req.target.contains("doc") {
            Reply::with(
                200,
                "OK",
                &[("Content-Type", "application/json")],
                br#"{"ssn":"078-05-1120","name":"a"}"#,
            )
        } else {
            echo_request_line(req)
        }
    });
    let admin = free_port();
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = 2
admin_listen = "127.0.0.1:{admin}"
admin_token = "file:admin.token"

[audit]
dir = "audit"

[[proxies]]
name = "up"
upstream = "{up}"
default_effect = "allow"
meter = {{ rate = 1, per = "1m", burst = 3, by = "proxy" }}

  [[proxies.scanners]]
  name = "no-secrets"
  literals = ["CONFIDENTIAL"]

  [[proxies.redact]]
  paths = ["$..ssn"]
  action = "remove"

[[proxies]]
name = "closed"
upstream = "{up}"
default_effect = "deny"

[[proxies]]
name = "dead"
upstream = "http://127.0.0.1:{dead}"
default_effect = "allow"
"#,
        up = mock.url(),
        dead = free_port()
    );
    let gw = Gateway::start_with_files(
        &toml,
        &[("admin.token", format!("{ADMIN_TOKEN}\n").as_bytes())],
    );
    wait_admin(admin);
    let send = |req: &[u8], status: u16| {
        // one connection per call, so each lands on whichever worker accepts it
        let r = gw.conn().roundtrip(req);
        assert_eq!(r.status, status, "{}", show(&r.raw));
        r
    };
    // 2 allowed (one redacted); 1 blocked by the scanner (the meter runs before the body is
    // read, so it took the last token); then the meter is empty: 429
    send(&get("/up/a"), 200);
    let r = send(&get("/up/doc"), 200);
    assert_eq!(r.body_str(), r#"{"name":"a"}"#);
    send(
        b"POST /up/b HTTP/1.1\r\nHost: gw\r\nContent-Length: 17\r\n\r\nthis CONFIDENTIAL",
        403,
    );
    send(&get("/up/c"), 429);
    send(&get("/closed/x"), 403);
    send(&get("/nope"), 404);
    send(&get("/dead/x"), 502);

    // recorded as each call's CallLog drops (just after its response): poll, bounded
    let want: &[(&str, f64)] = &[
        (
            r#"portcullis_requests_total{proxy="up",decision="allow",status="2xx"}"#,
            2.0,
        ),
        (
            r#"portcullis_requests_total{proxy="up",decision="deny",status="4xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{proxy="up",decision="allow",status="4xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{proxy="closed",decision="deny",status="4xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{proxy="",decision="deny",status="4xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_refusals_total{proxy="up",code="payload_blocked"}"#,
            1.0,
        ),
        (
            r#"portcullis_refusals_total{proxy="up",code="rate_limited"}"#,
            1.0,
        ),
        (
            r#"portcullis_refusals_total{proxy="closed",code="no_rule_matched"}"#,
            1.0,
        ),
        (
            r#"portcullis_refusals_total{proxy="",code="unknown_proxy"}"#,
            1.0,
        ),
        (r#"portcullis_meter_rejections_total{proxy="up"}"#, 1.0),
        (r#"portcullis_scanner_hits_total{proxy="up"}"#, 1.0),
        (r#"portcullis_redactions_total{proxy="up"}"#, 1.0),
        (
            r#"portcullis_request_duration_seconds_count{proxy="up"}"#,
            4.0,
        ),
        (
            r#"portcullis_request_duration_seconds_bucket{proxy="up",le="+Inf"}"#,
            4.0,
        ),
        ("portcullis_audit_written_total", 7.0),
        ("portcullis_upstream_connect_errors_total", 1.0),
        ("portcullis_upstream_tls_handshake_errors_total", 0.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(admin);
        let ok = want.iter().all(|(s, v)| value(&text, s) == Some(*v));
        if ok || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(50));
    };
    for (s, v) in want {
        assert_eq!(value(&text, s), Some(*v), "{s}:\n{text}");
    }
    for s in [
        "portcullis_audit_queue_depth",
        r#"portcullis_audit_dropped_total{reason="queue"}"#,
        "portcullis_audit_write_errors_total",
    ] {
        assert_eq!(value(&text, s), Some(0.0), "{s}:\n{text}");
    }
    assert!(value(&text, r#"portcullis_response_bytes_total{proxy="up"}"#).unwrap() > 0.0);
    // the pool gauge is sampled each second by every worker
    assert!(text.contains(r#"portcullis_upstream_pool_idle_connections{worker="1"}"#));
    // well-formed: every family typed, every sample a number
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let kind = rest.rsplit_once(' ').unwrap().1;
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{l}");
        } else if !l.starts_with("# HELP ") {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
    // histogram buckets are cumulative
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(r#"portcullis_request_duration_seconds_bucket{proxy="up""#))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
}
