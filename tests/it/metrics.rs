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

const METRICS_TOKEN: &str = "metrics-only-token-0123456789";

fn admin_call(admin: u16, method: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = send_raw(
        admin,
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    parse_response(&raw).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", show(&raw)))
}

fn ops_config(admin: u16, admin_token: bool, upstream: &str) -> String {
    let admin_token = if admin_token {
        "admin_token = \"file:admin.token\"\n"
    } else {
        ""
    };
    format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 1\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         {admin_token}metrics_token = \"file:metrics.token\"\n\n{}",
        proxy("up", upstream)
    )
}

fn start_ops(admin: u16, admin_token: bool, upstream: &str) -> Gateway {
    let gw = Gateway::start_with_files(
        &ops_config(admin, admin_token, upstream),
        &[
            ("admin.token", format!("{ADMIN_TOKEN}\n").as_bytes()),
            ("metrics.token", format!("{METRICS_TOKEN}\n").as_bytes()),
        ],
    );
    let up = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        std::net::TcpStream::connect(("127.0.0.1", admin)).ok()
    });
    assert!(up.is_some(), "admin listener did not come up");
    gw
}

/// Build info, process metrics and the reload outcome, read with the read-only token; the
/// read-only token opens nothing else.
#[test]
fn build_process_and_reload_metrics_with_the_metrics_token() {
    let mock = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let gw = start_ops(admin, true, &mock.url());
    let r = admin_call(admin, "GET", "/metrics", Some(METRICS_TOKEN));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let text = r.body_str();
    let build = text
        .lines()
        .find(|l| l.starts_with("portcullis_build_info{"))
        .unwrap_or_else(|| panic!("no build_info:\n{text}"));
    assert!(
        build.starts_with(&format!(
            "portcullis_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )) && build.ends_with("\"} 1"),
        "{build}"
    );
    assert!(!build.contains("commit=\"\""), "{build}");
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v = value(&text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
        assert!(v > 0.0, "{series} = {v}");
    }
    assert!(
        value(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    assert_eq!(value(&text, "portcullis_config_generation"), Some(1.0));
    assert_eq!(
        value(&text, "portcullis_config_last_reload_successful"),
        Some(1.0)
    );
    let started = value(
        &text,
        "portcullis_config_last_reload_success_timestamp_seconds",
    )
    .unwrap_or_else(|| panic!("{text}"));
    assert!(started > 1.7e9, "{started}");

    // the metrics token is read-only
    for (m, p) in [
        ("POST", "/v1/reload"),
        ("GET", "/v1/requests"),
        ("GET", "/v1/telemetry"),
        ("GET", "/v1/audit/head"),
    ] {
        let r = admin_call(admin, m, p, Some(METRICS_TOKEN));
        assert_eq!(r.status, 401, "{m} {p}: {}", show(&r.raw));
        assert!(
            r.body_str().contains("\"unauthenticated\""),
            "{}",
            show(&r.raw)
        );
    }
    // no token, a wrong one: 401
    assert_eq!(admin_call(admin, "GET", "/metrics", None).status, 401);
    assert_eq!(
        admin_call(
            admin,
            "GET",
            "/metrics",
            Some("metrics-only-token-012345678")
        )
        .status,
        401
    );
    // the admin token still reads metrics
    assert_eq!(
        admin_call(admin, "GET", "/metrics", Some(ADMIN_TOKEN)).status,
        200
    );

    // a successful reload, then a failed one
    let r = admin_call(admin, "POST", "/v1/reload", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let text = admin_call(admin, "GET", "/metrics", Some(METRICS_TOKEN)).body_str();
    assert_eq!(value(&text, "portcullis_config_generation"), Some(2.0));
    assert_eq!(
        value(&text, "portcullis_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    let good_at = value(
        &text,
        "portcullis_config_last_reload_success_timestamp_seconds",
    );
    gw.write_config("[server]\nlisten = [\"127.0.0.1:1\"]\nworkers = \"two\"\n");
    let r = admin_call(admin, "POST", "/v1/reload", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 400, "{}", show(&r.raw));
    let text = admin_call(admin, "GET", "/metrics", Some(METRICS_TOKEN)).body_str();
    assert_eq!(value(&text, "portcullis_config_generation"), Some(2.0));
    assert_eq!(
        value(&text, "portcullis_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "portcullis_config_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "portcullis_config_last_reload_success_timestamp_seconds"
        ),
        good_at,
        "a failed reload leaves the installed config's time"
    );
    // the calls still work on the running config
    assert_eq!(gw.conn().roundtrip(&get("/up/x")).status, 200);
}

/// Only `metrics_token` set: `/metrics` answers it; the rest of the admin API stays off.
#[test]
fn metrics_token_alone_opens_only_metrics() {
    let mock = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let _gw = start_ops(admin, false, &mock.url());
    assert_eq!(
        admin_call(admin, "GET", "/metrics", Some(METRICS_TOKEN)).status,
        200
    );
    let r = admin_call(admin, "POST", "/v1/reload", Some(METRICS_TOKEN));
    assert_eq!(r.status, 403, "{}", show(&r.raw));
    assert!(
        r.body_str().contains("\"admin_disabled\""),
        "{}",
        show(&r.raw)
    );
}

/// An OAuth2 proxy's token: its age, time to expiry and failure flag.
#[test]
fn oauth_token_health() {
    let tokens = MockUpstream::start(|_| {
        Reply::with(
            200,
            "OK",
            &[("Content-Type", "application/json")],
            br#"{"access_token":"oauth-at-7c2d-metrics","token_type":"Bearer","expires_in":3600}"#,
        )
    });
    let mock = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 1\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         metrics_token = \"file:metrics.token\"\n\n{}auth = {{ scheme = \"oauth2\", token_url = \"{}/oauth/token\", client_id = \"c\", secret = \"file:client.secret\" }}\n",
        proxy("api", &mock.url()),
        tokens.url()
    );
    let gw = Gateway::start_with_files(
        &toml,
        &[
            ("metrics.token", METRICS_TOKEN.as_bytes()),
            ("client.secret", b"client-secret-for-metrics"),
        ],
    );
    assert_eq!(gw.conn().roundtrip(&get("/api/x")).status, 200);
    let text = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let t = admin_call(admin, "GET", "/metrics", Some(METRICS_TOKEN)).body_str();
        t.contains("portcullis_oauth_token_age_seconds{proxy=\"api\"}")
            .then_some(t)
    })
    .expect("no oauth token age");
    let age = value(&text, "portcullis_oauth_token_age_seconds{proxy=\"api\"}").unwrap();
    assert!((0.0..600.0).contains(&age), "{age}");
    let left = value(
        &text,
        "portcullis_oauth_token_expires_in_seconds{proxy=\"api\"}",
    )
    .unwrap();
    assert!(left > 3000.0 && left <= 3600.0, "{left}");
    assert_eq!(
        value(&text, "portcullis_oauth_token_failing{proxy=\"api\"}"),
        Some(0.0)
    );
    assert!(
        !text.contains("oauth-at-7c2d-metrics"),
        "the token itself never shows"
    );
}
