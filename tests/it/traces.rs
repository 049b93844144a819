//! W3C trace context and OTLP traces (issue 19, traces): the real binary between an agent that
//! sends (or garbles) `traceparent`, a real upstream on 127.0.0.1 recording what it received, and
//! an OTLP/HTTP collector written in Python that decodes the protobuf with the `opentelemetry-proto`
//! package from PyPI (`tests/it/traces/collector.py`; scripts/test installs it into the venv).
use crate::audit::{ADMIN_TOKEN, admin_get, audit_config, call, calls, stop, with_key};
use crate::support::*;
use portcullis::internals::observe::audit::StoredRecord;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PID: &str = "00f067aa0ba902b7";
const OTLP_TOKEN: &str = "otlp-t0ken-for-tests";

/// The Python collector: every span it decoded, one JSON object per line in its log.
struct Collector {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// `fail`: answers every export 503.
    fn start(fail: bool) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("spans.jsonl");
        std::fs::write(&log, "").unwrap();
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/traces/collector.py");
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&log)
            .arg(if fail { "fail" } else { "ok" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "python3 tests/it/traces/collector.py (scripts/test installs opentelemetry-proto)",
            );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the collector never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Collector {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        let mut l = self.lines();
        l.retain(|v| v.get("signal").is_none());
        l
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        let mut l = self.lines();
        l.retain(|v| v["signal"] == "log");
        l
    }

    /// Waits (bounded) until the spans of `trace_id` include a server span and `children`
    /// more.
    fn trace(&self, trace_id: &str, children: usize) -> Vec<serde_json::Value> {
        poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
            let s: Vec<_> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            (s.iter().any(|s| s["kind"] == 2) && s.len() > children).then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "no span of trace {trace_id} reached the collector: {:?}",
                self.spans()
            )
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `audit_config` (proxies `up` allow-all and `closed`), the admin listener, and `[telemetry]`
/// (`otlp` = None: telemetry disabled).
fn config(upstream: &str, admin: u16, otlp: Option<String>) -> String {
    let mut t = audit_config(upstream, "audit", "1s", Some(admin));
    if let Some(o) = otlp {
        t.push_str(&format!("\n[telemetry]\notlp = {o}\n"));
    }
    t
}

fn start(toml: &str) -> Gateway {
    Gateway::start_with_files(
        toml,
        &[
            ("admin.token", format!("{ADMIN_TOKEN}\n").as_bytes()),
            ("otlp.token", format!("{OTLP_TOKEN}\n").as_bytes()),
        ],
    )
}

fn otlp(port: u16, sample: &str) -> String {
    format!(
        r#"{{ url = "http://127.0.0.1:{port}/v1/traces", sample = {sample}, auth = {{ type = "bearer", token = "file:otlp.token" }} }}"#
    )
}

/// A GET through `up` with extra header lines; the response and its request id.
fn get(port: u16, path: &str, extra: &str) -> (Response, String) {
    let req = String::from_utf8(with_key("GET", path, "")).unwrap();
    let req = req.replacen("Host: gw\r\n", &format!("Host: gw\r\n{extra}"), 1);
    let (r, _) = call(port, req.as_bytes());
    let id = r.header("x-request-id").unwrap_or("").to_string();
    (r, id)
}

/// The call record of request `id` (waits, bounded, for the writer).
fn record(dir: &Path, id: &str) -> StoredRecord {
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        calls(dir).into_iter().find(|r| r.id.as_deref() == Some(id))
    })
    .unwrap_or_else(|| panic!("no audit record for {id}"))
}

/// The one `traceparent` the upstream received on request `i`, split into its fields.
fn upstream_traceparent(mock: &MockUpstream, i: usize) -> [String; 4] {
    let reqs = mock.requests();
    let tp = reqs[i].headers_named("traceparent");
    assert_eq!(
        tp.len(),
        1,
        "exactly one traceparent upstream: {}",
        reqs[i].head_str()
    );
    let f: Vec<String> = tp[0].split('-').map(str::to_string).collect();
    assert_eq!(f.len(), 4, "{}", tp[0]);
    [f[0].clone(), f[1].clone(), f[2].clone(), f[3].clone()]
}

fn metric(admin: u16, name: &str) -> u64 {
    let m = admin_get(admin, "/metrics", Some(ADMIN_TOKEN));
    m.body_str()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn the_agents_trace_is_continued_exported_and_propagated_upstream() {
    let col = Collector::start(false);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    // sample = 0: only the agent's sampled flag can make this call recorded (parent-based)
    let gw = start(&config(&mock.url(), admin, Some(otlp(col.port, "0"))));
    let (r, id) = get(
        gw.port(),
        "/up/v1/things?q=1",
        &format!("traceparent: 00-{TID}-{PID}-01\r\ntracestate: vendor=opaque,other=x\r\n"),
    );
    assert_eq!(r.status, 200, "{}", show(&r.raw));

    // the upstream: one traceparent, the agent's trace, the gateway's span as the parent
    let [ver, trace, parent, flags] = upstream_traceparent(&mock, 0);
    assert_eq!(
        (ver.as_str(), trace.as_str(), flags.as_str()),
        ("00", TID, "01")
    );
    assert_ne!(
        parent, PID,
        "the parent upstream is the gateway's span, not the agent's"
    );
    let reqs = mock.requests();
    assert_eq!(
        reqs[0].headers_named("tracestate"),
        ["vendor=opaque,other=x"]
    );

    // the collector: the gateway's server span, child of the agent's, with the call's attributes
    let spans = col.trace(TID, 6);
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["span_id"], parent.as_str());
    assert_eq!(server["parent_span_id"], PID);
    assert_eq!(server["name"], "GET up");
    assert_eq!(server["service"], "portcullis");
    assert_eq!(server["path"], "/v1/traces");
    assert_eq!(server["content_type"], "application/x-protobuf");
    assert_eq!(server["authorization"], format!("Bearer {OTLP_TOKEN}"));
    let a = &server["attributes"];
    assert_eq!(a["portcullis.agent"], "support-bot");
    assert_eq!(a["portcullis.proxy"], "up");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/up/v1/things");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["portcullis.decision"], "allow");
    assert_eq!(a["portcullis.upstream_status"], 200);
    assert_eq!(a["portcullis.request_id"], id.as_str());
    assert!(a.get("portcullis.code").is_none());
    // its stages, as children inside the call's time
    let names: Vec<&str> = spans
        .iter()
        .filter(|s| s["kind"] != 2)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in [
        "authn",
        "authz",
        "meter",
        "body+scan",
        "credential",
        "upstream.connect",
        "upstream.ttfb",
        "response",
    ] {
        assert!(names.contains(&want), "stage {want} missing: {names:?}");
    }
    for s in spans.iter().filter(|s| s["kind"] != 2) {
        assert_eq!(s["parent_span_id"], parent.as_str());
        assert!(s["start"].as_u64() >= server["start"].as_u64());
        assert!(s["end"].as_u64() <= server["end"].as_u64());
    }

    // the audit record carries the trace id
    let rec = record(&gw.dir().join("audit"), &id);
    assert_eq!(rec.trace_id.as_deref(), Some(TID));
    assert!(metric(admin, "portcullis_trace_spans_exported_total") >= 1);
}

#[test]
fn sample_zero_exports_nothing_yet_propagates_and_audits_the_trace() {
    let col = Collector::start(false);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    let mut gw = start(&config(&mock.url(), admin, Some(otlp(col.port, "0.0"))));
    // no traceparent: a new trace, not sampled
    let (r, id0) = get(gw.port(), "/up/a", "");
    assert_eq!(r.status, 200);
    // the agent's unsampled trace: continued, not sampled
    let (r, id1) = get(
        gw.port(),
        "/up/b",
        &format!("traceparent: 00-{TID}-{PID}-00\r\n"),
    );
    assert_eq!(r.status, 200);
    let [v0, t0, p0, f0] = upstream_traceparent(&mock, 0);
    assert_eq!((v0.as_str(), f0.as_str()), ("00", "00"));
    assert!(t0.len() == 32 && t0 != TID && t0 != "0".repeat(32));
    assert!(p0.len() == 16 && p0 != "0".repeat(16));
    let [_, t1, p1, f1] = upstream_traceparent(&mock, 1);
    assert_eq!((t1.as_str(), f1.as_str()), (TID, "00"));
    assert_ne!(p1, PID);
    let dir = gw.dir().join("audit");
    assert_eq!(record(&dir, &id0).trace_id.as_deref(), Some(t0.as_str()));
    assert_eq!(record(&dir, &id1).trace_id.as_deref(), Some(TID));
    // stopping flushes the exporter: still nothing was exported
    stop(&mut gw);
    assert!(col.spans().is_empty(), "{:?}", col.spans());
}

#[test]
fn an_invalid_traceparent_starts_a_new_trace() {
    let col = Collector::start(false);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    let gw = start(&config(&mock.url(), admin, Some(otlp(col.port, "1"))));
    let upper = format!("traceparent: 00-{}-{PID}-01\r\n", TID.to_uppercase());
    let zero = format!("traceparent: 00-{}-{PID}-01\r\n", "0".repeat(32));
    let v00_suffix = format!("traceparent: 00-{TID}-{PID}-01-extra\r\n");
    let twice = format!("traceparent: 00-{TID}-{PID}-01\r\ntraceparent: 00-{TID}-{PID}-01\r\n");
    let long = format!("traceparent: cc-{TID}-{PID}-01-{}\r\n", "a".repeat(600));
    let hostile = [
        upper.as_str(),
        zero.as_str(),
        v00_suffix.as_str(),
        twice.as_str(),
        long.as_str(),
        "traceparent: garbage\r\n",
        "traceparent: \r\n",
    ];
    let dir = gw.dir().join("audit");
    for (i, h) in hostile.iter().enumerate() {
        let (r, id) = get(gw.port(), &format!("/up/bad/{i}"), h);
        assert_eq!(r.status, 200, "{h}: {}", show(&r.raw));
        let [v, t, p, f] = upstream_traceparent(&mock, i);
        assert_eq!((v.as_str(), f.as_str()), ("00", "01"), "{h}");
        assert_ne!(t, TID, "{h}: a new trace, not the agent's");
        assert_ne!(t, "0".repeat(32));
        // exported as a root span (no parent) of its new trace
        let spans = col.trace(&t, 0);
        let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
        assert_eq!(server["parent_span_id"], "", "{h}");
        assert_eq!(server["span_id"], p.as_str());
        assert_eq!(record(&dir, &id).trace_id.as_deref(), Some(t.as_str()));
    }
    // a future version is read by the forward-compatibility rules: continued
    let (r, _) = get(
        gw.port(),
        "/up/future",
        &format!("traceparent: cc-{TID}-{PID}-01-what-comes-next\r\n"),
    );
    assert_eq!(r.status, 200);
    let [v, t, _, _] = upstream_traceparent(&mock, hostile.len());
    assert_eq!((v.as_str(), t.as_str()), ("00", TID));
}

#[test]
fn refused_calls_are_spans_with_their_refusal_code() {
    let col = Collector::start(false);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    let gw = start(&config(&mock.url(), admin, Some(otlp(col.port, "1"))));
    let closed = "a0000000000000000000000000000001";
    let (r, id) = get(
        gw.port(),
        "/closed/x",
        &format!("traceparent: 00-{closed}-{PID}-01\r\n"),
    );
    assert_eq!(r.status, 403);
    let spans = col.trace(closed, 1);
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let a = &server["attributes"];
    assert_eq!(a["portcullis.code"], "no_rule_matched");
    assert_eq!(a["portcullis.decision"], "deny");
    assert_eq!(a["http.response.status_code"], 403);
    assert_eq!(a["portcullis.request_id"], id.as_str());
    assert!(a.get("portcullis.upstream_status").is_none());
    let names: Vec<&str> = spans
        .iter()
        .filter(|s| s["kind"] != 2)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["authn"], "stages reached before the refusal only");
    // an agent without a key: refused at identity, still a span (no agent)
    let unauth = "a0000000000000000000000000000002";
    let req = format!(
        "GET /up/x HTTP/1.1\r\nHost: gw\r\ntraceparent: 00-{unauth}-{PID}-01\r\nConnection: close\r\n\r\n"
    );
    let (r, _) = call(gw.port(), req.as_bytes());
    assert_eq!(r.status, 401);
    let spans = col.trace(unauth, 0);
    let a = &spans.iter().find(|s| s["kind"] == 2).unwrap()["attributes"];
    assert_eq!(a["portcullis.code"], "unauthenticated");
    assert!(a.get("portcullis.agent").is_none());
    assert_eq!(mock.count(), 0, "nothing went upstream");
    assert_eq!(
        record(&gw.dir().join("audit"), &id).trace_id.as_deref(),
        Some(closed)
    );
}

#[test]
fn a_collector_that_is_down_or_refuses_costs_counted_failures_not_calls() {
    for fail_mode in [false, true] {
        // down: nothing listens on the port; refusing: the collector answers 503
        let col = fail_mode.then(|| Collector::start(true));
        let port = col.as_ref().map_or_else(free_port, |c| c.port);
        let mock = MockUpstream::start(|_| Reply::ok("fine"));
        let admin = free_port();
        let mut gw = start(&config(&mock.url(), admin, Some(otlp(port, "1"))));
        for i in 0..5 {
            let (r, _) = get(gw.port(), &format!("/up/{i}"), "");
            assert_eq!(r.status, 200, "{}", show(&r.raw));
        }
        assert_eq!(mock.count(), 5);
        let failed = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            let n = metric(admin, "portcullis_trace_spans_failed_total");
            (n >= 5).then_some(n)
        });
        assert!(failed.is_some(), "spans never counted as failed");
        assert!(metric(admin, "portcullis_trace_export_errors_total") >= 3);
        assert_eq!(metric(admin, "portcullis_trace_spans_exported_total"), 0);
        assert_eq!(metric(admin, "portcullis_trace_spans_dropped_total"), 0);
        // still serving
        let (r, _) = get(gw.port(), "/up/after", "");
        assert_eq!(r.status, 200);
        // a span still queued and a collector that cannot take it: the stop is not held up
        // (one last attempt, then the rest is counted as failed)
        stop(&mut gw);
    }
}

#[test]
fn without_telemetry_traceparent_passes_through_and_is_audited() {
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    let gw = start(&config(&mock.url(), admin, None));
    let tp = format!("00-{TID}-{PID}-01");
    let (r, id) = get(gw.port(), "/up/x", &format!("traceparent: {tp}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.requests()[0].headers_named("traceparent"),
        [tp.as_str()]
    );
    let dir = gw.dir().join("audit");
    assert_eq!(record(&dir, &id).trace_id.as_deref(), Some(TID));
    // none or an invalid one: no trace id
    let (_, id) = get(gw.port(), "/up/y", "traceparent: nonsense\r\n");
    assert_eq!(
        mock.requests()[1].headers_named("traceparent"),
        ["nonsense"]
    );
    assert_eq!(record(&dir, &id).trace_id, None);
    let m = admin_get(admin, "/metrics", Some(ADMIN_TOKEN));
    assert!(!m.body_str().contains("portcullis_trace_"));
}

#[test]
fn check_reports_bad_telemetry_settings_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = ["127.0.0.1:1"]

[telemetry]
otlp = { url = "ftp://collector:4318/v1/traces", sample = 1.5, batch = 0 }
"#,
    )
    .unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "t.toml:5: telemetry.otlp.url: must be an https:// URL",
        "t.toml:5: telemetry.otlp.sample: 1.5 is not a ratio between 0 and 1",
        "t.toml:5: telemetry.otlp.batch: must be between 1 and 10000",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    std::fs::write(
        &path,
        r#"[server]
listen = ["127.0.0.1:1"]

[telemetry]
otlp = { url = "http://10.0.0.1:4318/v1/traces", sample = "often", colour = 1 }
"#,
    )
    .unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn spans_still_queued_at_shutdown_are_exported() {
    let col = Collector::start(false);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    let mut gw = start(&config(&mock.url(), admin, Some(otlp(col.port, "1"))));
    let last = "b0000000000000000000000000000001";
    let (r, _) = get(
        gw.port(),
        "/up/x",
        &format!("traceparent: 00-{last}-{PID}-01\r\n"),
    );
    assert_eq!(r.status, 200);
    // stopped at once: the partial batch has not waited its second yet
    stop(&mut gw);
    assert!(
        col.spans().iter().any(|s| s["trace_id"] == last),
        "{:?}",
        col.spans()
    );
}

#[test]
fn a_signing_credential_and_the_gateways_traceparent_go_together() {
    let col = Collector::start(false);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    let mut toml = config(&mock.url(), admin, None);
    // the allow-all proxy signs with SigV4: the credential reads the head `begin` wrote, the
    // gateway's traceparent already in it
    toml = toml.replacen(
        "name = \"up\"\n",
        "name = \"up\"\nauth = { scheme = \"sigv4\", access_key_id = \"AKIDEXAMPLE\", secret = \"env:AWS_SECRET\", region = \"us-east-1\", service = \"execute-api\" }\n",
        1,
    );
    toml.push_str(&format!("\n[telemetry]\notlp = {}\n", otlp(col.port, "1")));
    let gw = Gateway::start_with_env(
        &toml,
        &[
            ("admin.token", format!("{ADMIN_TOKEN}\n").as_bytes()),
            ("otlp.token", format!("{OTLP_TOKEN}\n").as_bytes()),
        ],
        &[("AWS_SECRET", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")],
    );
    let (r, _) = get(
        gw.port(),
        "/up/x",
        &format!("traceparent: 00-{TID}-{PID}-01\r\n"),
    );
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let [_, t, p, _] = upstream_traceparent(&mock, 0);
    assert_eq!(t, TID);
    assert_ne!(p, PID);
    let reqs = mock.requests();
    let auth = reqs[0].header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert_eq!(reqs[0].headers_named("x-amz-date").len(), 1);
    let spans = col.trace(TID, 0);
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["span_id"], p.as_str());
}

#[test]
fn a_broken_upstream_is_an_error_span_with_its_code() {
    let col = Collector::start(false);
    let admin = free_port();
    // nothing listens on the upstream's port
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = start(&config(&dead, admin, Some(otlp(col.port, "1"))));
    let broken = "c0000000000000000000000000000001";
    let (r, id) = get(
        gw.port(),
        "/up/x",
        &format!("traceparent: 00-{broken}-{PID}-01\r\n"),
    );
    assert_eq!(r.status, 502, "{}", show(&r.raw));
    let spans = col.trace(broken, 0);
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["status"], 2, "status Error: {server}");
    let a = &server["attributes"];
    assert_eq!(a["portcullis.code"], "upstream_unreachable");
    assert_eq!(a["http.response.status_code"], 502);
    assert!(a.get("portcullis.upstream_status").is_none());
    let names: Vec<&str> = spans
        .iter()
        .filter(|s| s["kind"] != 2)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"credential") && !names.contains(&"upstream.ttfb"),
        "{names:?}"
    );
    assert_eq!(
        record(&gw.dir().join("audit"), &id).trace_id.as_deref(),
        Some(broken)
    );
}

#[test]
fn otlp_audit_logs_and_spans_meet_on_the_trace_id() {
    // one collector takes both: the audit sink's log records and the calls' spans
    let col = Collector::start(false);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let admin = free_port();
    let mut toml = config(&mock.url(), admin, Some(otlp(col.port, "0")));
    toml.push_str(&format!(
        "\n[[audit.sinks]]\nname = \"otel\"\ntype = \"otlp\"\nurl = \"http://127.0.0.1:{}/v1/logs\"\nbatch = 1\n",
        col.port
    ));
    let gw = start(&toml);
    let (r, id) = get(
        gw.port(),
        "/up/joined",
        &format!("traceparent: 00-{TID}-{PID}-01\r\n"),
    );
    assert_eq!(r.status, 200);
    // an unsampled new trace: its log record still names its trace
    let (r, id2) = get(gw.port(), "/up/unsampled", "");
    assert_eq!(r.status, 200);
    let [_, t2, _, f2] = upstream_traceparent(&mock, 1);
    assert_eq!(f2, "00");
    let logs = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let l = col.logs();
        let has = |id: &str| l.iter().any(|r| r["attributes"]["portcullis.id"] == id);
        (has(&id) && has(&id2)).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "the audit records never reached the collector: {:?}",
            col.lines()
        )
    });
    let of = |id: &str| {
        logs.iter()
            .find(|r| r["attributes"]["portcullis.id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(of(&id)["trace_id"], TID);
    assert_eq!(of(&id)["event_name"], "portcullis.audit.call");
    assert_eq!(of(&id2)["trace_id"], t2.as_str());
    // and the sampled call's span is in the same trace
    let spans = col.trace(TID, 0);
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["attributes"]["portcullis.request_id"], id.as_str());
    assert!(col.spans().iter().all(|s| s["trace_id"] != t2.as_str()));
}
