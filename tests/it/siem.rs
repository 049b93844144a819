//! `[[audit.sinks]]` end to end: the real binary delivers its audit files to real receivers on
//! 127.0.0.1 — an HTTP receiver (a thread here) that fails, times out and recovers across a
//! gateway restart, and rsyslog over TCP (octet counting) and UDP — and every line of the audit
//! files arrives, byte for byte.
use crate::audit::{ADMIN_TOKEN, AGENT_KEY, admin_get, audit_config, call, with_key};
use crate::support::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SINK_TOKEN: &str = "sink-t0ken-for-tests";

/// Every complete line of the audit files of `dir`, in chain order.
fn audit_lines(dir: &Path) -> Vec<String> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let seq = name
                        .strip_prefix("audit-")?
                        .strip_suffix(".jsonl")?
                        .rsplit_once('-')?
                        .1
                        .parse()
                        .ok()?;
                    Some((seq, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for (_, p) in files {
        let text = std::fs::read_to_string(&p).unwrap();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        out.extend(complete.lines().map(str::to_string));
    }
    out
}

fn hash_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["hash"].as_str().unwrap().to_string()
}

/// `name{sink="…"} value` from `/metrics`.
fn sink_metric(admin: u16, name: &str, sink: &str) -> Option<u64> {
    let r = admin_get(admin, "/metrics", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_metric(admin: u16, name: &str, sink: &str, ok: impl Fn(u64) -> bool) -> u64 {
    poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        sink_metric(admin, name, sink).filter(|v| ok(*v))
    })
    .unwrap_or_else(|| {
        panic!(
            "{name}{{sink={sink}}} never got there: {:?}",
            sink_metric(admin, name, sink)
        )
    })
}

// ---- an HTTP receiver that can fail ---------------------------------------------------------

const OK: u8 = 0;
/// Answers 503 without taking the records.
const UNAVAILABLE: u8 = 1;
/// Takes the records, then never answers (the sink times out: an acknowledgement lost).
const HANG: u8 = 2;

struct Receiver {
    port: u16,
    mode: Arc<AtomicU8>,
    /// Lines taken, in arrival order (with redeliveries).
    lines: Arc<Mutex<Vec<String>>>,
    /// Requests by the answer they got.
    answered: Arc<Mutex<BTreeMap<u8, usize>>>,
    /// Problems with what the sink sent (asserted empty at the end).
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    conns: Arc<AtomicUsize>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let r = Receiver {
            port: l.local_addr().unwrap().port(),
            mode: Arc::new(AtomicU8::new(OK)),
            lines: Arc::default(),
            answered: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
            conns: Arc::default(),
        };
        let (mode, lines, answered, errors, stop, conns) = (
            r.mode.clone(),
            r.lines.clone(),
            r.answered.clone(),
            r.errors.clone(),
            r.stop.clone(),
            r.conns.clone(),
        );
        thread::spawn(move || {
            // bounded: at most 10 minutes, at most 10 000 connections
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((s, _)) => {
                        if conns.fetch_add(1, Ordering::Relaxed) > 10_000 {
                            break;
                        }
                        let (mode, lines, answered, errors) = (
                            mode.clone(),
                            lines.clone(),
                            answered.clone(),
                            errors.clone(),
                        );
                        thread::spawn(move || serve(s, &mode, &lines, &answered, &errors));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        r
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn answered(&self, mode: u8) -> usize {
        self.answered
            .lock()
            .unwrap()
            .get(&mode)
            .copied()
            .unwrap_or(0)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut s: TcpStream,
    mode: &AtomicU8,
    lines: &Mutex<Vec<String>>,
    answered: &Mutex<BTreeMap<u8, usize>>,
    errors: &Mutex<Vec<String>>,
) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    let mut bad = Vec::new();
    if !head.starts_with("post /ingest?src=portcullis http/1.1\r\n") {
        bad.push(format!(
            "request line: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    if header("authorization").as_deref()
        != Some(&format!("bearer {}", SINK_TOKEN.to_ascii_lowercase()))
    {
        bad.push(format!("authorization: {:?}", header("authorization")));
    }
    if header("content-type").as_deref() != Some("application/x-ndjson") {
        bad.push(format!("content-type: {:?}", header("content-type")));
    }
    if !body.ends_with('\n') || body.lines().count() > 7 || body.is_empty() {
        bad.push(format!("batch of {} lines: {body:?}", body.lines().count()));
    }
    errors.lock().unwrap().extend(bad);
    let m = mode.load(Ordering::SeqCst);
    *answered.lock().unwrap().entry(m).or_default() += 1;
    match m {
        UNAVAILABLE => {
            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        }
        HANG => {
            lines
                .lock()
                .unwrap()
                .extend(body.lines().map(str::to_string));
            // longer than the sink's timeout, then hang up without an answer
            thread::sleep(Duration::from_secs(3));
        }
        _ => {
            lines
                .lock()
                .unwrap()
                .extend(body.lines().map(str::to_string));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    }
}

fn http_sink_config(upstream: &str, audit_dir: &str, admin: u16, receiver: u16) -> String {
    audit_config(upstream, audit_dir, "1s", Some(admin))
        + &format!(
            r#"
[[audit.sinks]]
name = "siem"
type = "http"
url = "http://127.0.0.1:{receiver}/ingest?src=portcullis"
auth = {{ type = "bearer", token = "file:sink.token" }}
batch = 7
timeout = "1s"
retry_max = "200ms"
"#
        )
}

fn start_with_sink(toml: &str) -> Gateway {
    Gateway::start_with_files(
        toml,
        &[
            ("admin.token", format!("{ADMIN_TOKEN}\n").as_bytes()),
            ("sink.token", format!("{SINK_TOKEN}\n").as_bytes()),
        ],
    )
}

/// `n` calls, allowed and refused, on their own connections; their request ids.
fn some_calls(port: u16, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let target = if i % 3 == 2 {
                format!("/closed/{tag}/{i}")
            } else {
                format!("/up/{tag}/{i}")
            };
            let (r, _) = call(port, &with_key("GET", &target, ""));
            assert!(r.status == 200 || r.status == 403, "{}", show(&r.raw));
            r.header("x-request-id").unwrap().to_string()
        })
        .collect()
}

#[test]
fn http_sink_fails_times_out_recovers_and_survives_a_restart_delivering_every_record() {
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let rx = Receiver::start();
    rx.set(UNAVAILABLE);
    let trail = tempfile::tempdir().unwrap();
    let dir = trail.path().join("audit");
    let admin = free_port();
    let toml = http_sink_config(&mock.url(), dir.to_str().unwrap(), admin, rx.port);
    let mut gw = start_with_sink(&toml);
    wait_admin(admin);
    let mut ids = some_calls(gw.port(), 9, "a");

    // the receiver refuses: attempts fail, nothing is acknowledged, the lag shows it
    wait_metric(admin, "portcullis_sink_failed_total", "siem", |v| v >= 3);
    assert_eq!(
        sink_metric(admin, "portcullis_sink_delivered_total", "siem"),
        Some(0)
    );
    wait_metric(admin, "portcullis_sink_lag_records", "siem", |v| v >= 9);
    assert!(rx.lines().is_empty());

    // the receiver takes the records but never answers: the sink times out and sends again
    rx.set(HANG);
    poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        (rx.answered(HANG) >= 2).then_some(())
    })
    .expect("the sink did not retry against a hanging receiver");
    assert_eq!(
        sink_metric(admin, "portcullis_sink_delivered_total", "siem"),
        Some(0)
    );

    // it recovers: everything written so far arrives
    rx.set(OK);
    let want = audit_lines(&dir).len() as u64;
    assert!(want >= 9);
    wait_metric(admin, "portcullis_sink_delivered_total", "siem", |v| {
        v >= want
    });
    wait_metric(admin, "portcullis_sink_lag_records", "siem", |v| v == 0);

    // down again, more calls, and the gateway stops before they are delivered
    rx.set(UNAVAILABLE);
    ids.extend(some_calls(gw.port(), 8, "b"));
    let failed = sink_metric(admin, "portcullis_sink_failed_total", "siem").unwrap();
    wait_metric(admin, "portcullis_sink_failed_total", "siem", |v| {
        v > failed
    });
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "the gateway did not stop"
    );
    let log = gw.stderr_text() + &gw.stdout_text();
    assert!(log.contains("audit sink: delivery failed"), "{log}");

    // a new process on the same directory picks up at the durable cursor
    let cursor = std::fs::read_to_string(dir.join(".sink-siem.cursor")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&cursor).unwrap();
    assert!(c["offset"].as_u64().unwrap() > 0, "{cursor}");
    rx.set(OK);
    let mut gw2 = start_with_sink(&toml);
    wait_admin(admin);
    ids.extend(some_calls(gw2.port(), 5, "c"));
    poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
        let want = audit_lines(&dir);
        let got: HashSet<String> = rx.lines().into_iter().collect();
        (want.iter().all(|l| got.contains(l)) && want.len() >= 22).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not every record was delivered: {} in the files, {} received",
            audit_lines(&dir).len(),
            rx.lines().len()
        )
    });
    wait_metric(admin, "portcullis_sink_lag_records", "siem", |v| v == 0);
    gw2.signal("TERM");
    assert!(gw2.wait_exit(Duration::from_secs(20)).is_some());

    // record for record: after de-duplication by hash the receiver holds exactly the audit
    // files' lines, byte for byte, and nothing else
    let got = rx.lines();
    let mut seen = HashSet::new();
    let mut unique = Vec::new();
    for l in &got {
        if seen.insert(hash_of(l)) {
            unique.push(l.clone());
        }
    }
    let lines = audit_lines(&dir);
    let want: HashSet<&String> = lines.iter().collect();
    let unique_set: HashSet<&String> = unique.iter().collect();
    assert_eq!(unique_set, want, "delivered (deduplicated) != audit files");
    // the batches the hanging receiver took were sent again: at least once, not at most once
    assert!(got.len() > unique.len(), "no redelivery after the timeouts");
    // every call's record, by id, is there exactly once after de-duplication
    let delivered_ids: Vec<String> = unique
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v.get("kind").is_none()).then(|| v["id"].as_str().unwrap().to_string())
        })
        .collect();
    for id in &ids {
        assert_eq!(delivered_ids.iter().filter(|d| *d == id).count(), 1, "{id}");
    }
    // the restart's new file was started: the chain continued, two files delivered
    assert!(audit_lines(&dir).len() >= 22);
    assert!(
        rx.errors.lock().unwrap().is_empty(),
        "{:?}",
        rx.errors.lock().unwrap()
    );
    assert!(!cursor.contains(SINK_TOKEN));
    let _ = AGENT_KEY;
}

#[test]
fn check_reports_sink_errors_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"[server]
listen = ["127.0.0.1:1"]
[audit]
dir = "a"
[[audit.sinks]]
name = "bad name"
type = "http"
url = "http://127.0.0.1:9/x"
[[audit.sinks]]
name = "s2"
type = "http"
url = "ftp://example.com/"
format = "gelf"
[[audit.sinks]]
name = "s3"
type = "syslog"
address = "127.0.0.1"
facility = "local9"
url = "http://127.0.0.1:9/"
[[audit.sinks]]
name = "s4"
type = "http"
url = "http://127.0.0.1:9/"
format = "elastic_bulk"
auth = { type = "bearer", token = "env:PORTCULLIS_TEST_NO_SUCH_VAR_SIEM" }
[[audit.sinks]]
name = "s5"
type = "kafka"
[[audit.sinks]]
name = "s6"
type = "syslog"
address = "127.0.0.1:514"
batch = 0
[[audit.sinks]]
name = "s6"
type = "syslog"
address = "127.0.0.1:514"
"#;
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for want in [
        "c.toml:6: audit.sinks[0].name: must be 1 to 64 letters",
        "c.toml:12: audit.sinks[1].url: must be an https:// URL",
        "c.toml:13: audit.sinks[1].format: must be \"ndjson\", \"splunk_hec\" or \"elastic_bulk\"",
        "c.toml:17: audit.sinks[2].address: \"127.0.0.1\" is not host:port",
        "c.toml:18: audit.sinks[2].facility: must be a syslog facility name",
        "c.toml:19: audit.sinks[2].url: is not a setting of type = \"syslog\"",
        "c.toml:22: audit.sinks[3].index: is required for format = \"elastic_bulk\"",
        "c.toml:25: audit.sinks[3].auth: ",
        "PORTCULLIS_TEST_NO_SUCH_VAR_SIEM",
        "c.toml:28: audit.sinks[4].type: \"kafka\": must be \"http\", \"syslog\" or \"otlp\"",
        "c.toml:33: audit.sinks[5].batch: must be between 1 and 10000",
        "c.toml:35: audit.sinks[6].name: duplicate sink name \"s6\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

// ---- rsyslog -------------------------------------------------------------------------------

/// A real rsyslogd (Debian package `rsyslog`, installed by `.ci/run`) as this test's child,
/// listening on imtcp and imudp, writing APP-NAME, MSGID, STRUCTURED-DATA and MSG of every
/// message, tab-separated, to one file per input.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    tcp: u16,
    udp: u16,
}

fn rsyslogd() -> String {
    for p in ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("rsyslogd not found: install the Debian package rsyslog (.ci/run does)");
}

impl Rsyslog {
    /// Plain imtcp + imudp, or (with `tls`) imtcp through the gtls driver only (RFC 5425).
    fn start(tls: Option<&TestPki>) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let tcp = free_port();
        let udp = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let d = dir.path().display();
        let (global_tls, imtcp, udp_input) = match tls {
            Some(pki) => {
                for (name, pem) in [
                    ("ca.pem", &pki.ca_pem),
                    ("cert.pem", &pki.leaf_cert_pem),
                    ("key.pem", &pki.leaf_key_pem),
                ] {
                    std::fs::write(dir.path().join(name), pem).unwrap();
                }
                (
                    format!(
                        " DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                         DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" DefaultNetstreamDriverKeyFile=\"{d}/key.pem\""
                    ),
                    "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")",
                    String::new(),
                )
            }
            None => (
                String::new(),
                "module(load=\"imtcp\")\nmodule(load=\"imudp\")",
                format!(
                    "input(type=\"imudp\" address=\"127.0.0.1\" port=\"{udp}\" ruleset=\"udp\")"
                ),
            ),
        };
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="256k"{global_tls})
{imtcp}
template(name="fields" type="list") {{
  property(name="app-name") constant(value="\t")
  property(name="msgid") constant(value="\t")
  property(name="structured-data") constant(value="\t")
  property(name="msg") constant(value="\n")
}}
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.log" template="fields") }}
ruleset(name="udp") {{ action(type="omfile" file="{d}/udp.log" template="fields") }}
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tcp")
{udp_input}
"#
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("spawn rsyslogd");
        let r = Rsyslog {
            child,
            dir,
            tcp,
            udp,
        };
        let up = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            TcpStream::connect(("127.0.0.1", tcp)).ok()
        });
        assert!(up.is_some(), "rsyslogd did not listen: {}", r.stderr());
        r
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// (app-name, msgid, structured data, msg) of every message received on `input`.
    fn received(&self, input: &str) -> Vec<(String, String, String, String)> {
        std::fs::read_to_string(self.dir.path().join(format!("{input}.log")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(4, '\t');
                Some((
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                ))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rsyslog_receives_every_record_over_tcp_and_udp_as_rfc5424() {
    let rs = Rsyslog::start(None);
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let trail = tempfile::tempdir().unwrap();
    let dir = trail.path().join("audit");
    let admin = free_port();
    let toml = audit_config(&mock.url(), dir.to_str().unwrap(), "1s", Some(admin))
        + &format!(
            r#"
[[audit.sinks]]
name = "rsyslog-tcp"
type = "syslog"
address = "127.0.0.1:{tcp}"
app_name = "pcs-audit"
facility = "local3"
batch = 4
retry_max = "200ms"

[[audit.sinks]]
name = "rsyslog-udp"
type = "syslog"
transport = "udp"
address = "127.0.0.1:{udp}"
"#,
            tcp = rs.tcp,
            udp = rs.udp
        );
    let mut gw = start_with_sink(&toml);
    wait_admin(admin);
    let ids = some_calls(gw.port(), 10, "rs");
    let n = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let want = audit_lines(&dir).len();
        (want >= 10 && rs.received("tcp").len() >= want && rs.received("udp").len() >= want)
            .then_some(want)
    })
    .unwrap_or_else(|| {
        panic!(
            "rsyslog got {} (tcp) / {} (udp) of {} records; rsyslogd: {}",
            rs.received("tcp").len(),
            rs.received("udp").len(),
            audit_lines(&dir).len(),
            rs.stderr()
        )
    });
    wait_metric(
        admin,
        "portcullis_sink_delivered_total",
        "rsyslog-tcp",
        |v| v == n as u64,
    );
    wait_metric(admin, "portcullis_sink_lag_records", "rsyslog-tcp", |v| {
        v == 0
    });
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());

    let lines = audit_lines(&dir);
    for input in ["tcp", "udp"] {
        let got = rs.received(input);
        assert_eq!(got.len(), lines.len(), "{input}: one message per record");
        for (line, (app, msgid, sd, msg)) in lines.iter().zip(&got) {
            // MSG is the audit line, byte for byte, in chain order
            assert_eq!(msg, line, "{input}");
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("call");
            assert_eq!(msgid, kind, "{input}");
            assert_eq!(
                app,
                if input == "tcp" {
                    "pcs-audit"
                } else {
                    "portcullis"
                }
            );
            assert!(sd.starts_with("[portcullis@32473 "), "{sd}");
            assert!(sd.contains(&format!("hash=\"{}\"", hash_of(line))), "{sd}");
            if kind == "call" {
                assert!(
                    sd.contains(&format!("id=\"{}\"", v["id"].as_str().unwrap())),
                    "{sd}"
                );
                assert!(sd.contains(&format!("status=\"{}\"", v["status"])), "{sd}");
                assert!(
                    sd.contains(&format!("decision=\"{}\"", v["decision"].as_str().unwrap())),
                    "{sd}"
                );
            }
        }
    }
    let tcp_ids: HashSet<String> = rs
        .received("tcp")
        .iter()
        .filter_map(|(_, _, _, m)| {
            let v: serde_json::Value = serde_json::from_str(m).ok()?;
            v.get("id")?.as_str().map(str::to_string)
        })
        .collect();
    for id in &ids {
        assert!(tcp_ids.contains(id), "{id} not delivered");
    }
}

#[test]
fn rsyslog_receives_every_record_over_tls_and_a_receiver_with_an_unknown_ca_gets_nothing() {
    let pki = make_pki();
    let rs = Rsyslog::start(Some(&pki));
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let trail = tempfile::tempdir().unwrap();
    let dir = trail.path().join("audit");
    let admin = free_port();
    let toml = audit_config(&mock.url(), dir.to_str().unwrap(), "1s", Some(admin))
        + &format!(
            r#"
[[audit.sinks]]
name = "tls"
type = "syslog"
transport = "tls"
address = "127.0.0.1:{port}"
server_name = "localhost"
ca_file = "ca.pem"
retry_max = "200ms"

[[audit.sinks]]
name = "untrusted"
type = "syslog"
transport = "tls"
address = "127.0.0.1:{port}"
server_name = "localhost"
retry_max = "200ms"
"#,
            port = rs.tcp
        );
    let mut gw = Gateway::start_with_files(
        &toml,
        &[
            ("admin.token", format!("{ADMIN_TOKEN}\n").as_bytes()),
            ("ca.pem", pki.ca_pem.as_bytes()),
        ],
    );
    wait_admin(admin);
    let ids = some_calls(gw.port(), 6, "tls");
    let n = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let want = audit_lines(&dir).len();
        (want >= 6 && rs.received("tcp").len() >= want).then_some(want)
    })
    .unwrap_or_else(|| {
        panic!(
            "rsyslog got {} of {} records over TLS; rsyslogd: {}\ngateway: {}",
            rs.received("tcp").len(),
            audit_lines(&dir).len(),
            rs.stderr(),
            gw.stderr_text()
        )
    });
    wait_metric(admin, "portcullis_sink_delivered_total", "tls", |v| {
        v == n as u64
    });
    // the sink that does not trust the receiver's CA never sends a record
    wait_metric(admin, "portcullis_sink_failed_total", "untrusted", |v| {
        v >= 2
    });
    assert_eq!(
        sink_metric(admin, "portcullis_sink_delivered_total", "untrusted"),
        Some(0)
    );
    wait_metric(admin, "portcullis_sink_lag_records", "untrusted", |v| {
        v >= n as u64
    });
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let log = gw.stderr_text() + &gw.stdout_text();
    assert!(log.contains("TLS with 127.0.0.1:"), "{log}");

    let lines = audit_lines(&dir);
    let got = rs.received("tcp");
    assert_eq!(
        got.len(),
        lines.len(),
        "the untrusted sink delivered something"
    );
    for (line, (_, _, sd, msg)) in lines.iter().zip(&got) {
        assert_eq!(msg, line);
        assert!(sd.contains(&format!("hash=\"{}\"", hash_of(line))), "{sd}");
    }
    for id in &ids {
        assert!(
            got.iter().any(|(_, _, _, m)| m.contains(id.as_str())),
            "{id}"
        );
    }
}

// ---- OTLP/HTTP logs --------------------------------------------------------------------------

/// One request off `s`: the lower-cased head and the body (Content-Length framing).
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}

#[test]
fn otlp_collector_decodes_every_record_as_a_log_record() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;

    // a collector on 127.0.0.1: the first export is answered 500 (retried), then 200
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<(String, ExportLogsServiceRequest)>>> = Arc::default();
    let exports = Arc::new(AtomicUsize::new(0));
    {
        let (got, exports) = (got.clone(), exports.clone());
        l.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline && exports.load(Ordering::Relaxed) < 1000 {
                let Ok((mut s, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Some((head, body)) = read_request(&mut s) else {
                    continue;
                };
                let first = exports.fetch_add(1, Ordering::Relaxed) == 0;
                match ExportLogsServiceRequest::decode(body.as_slice()) {
                    Ok(req) if !first => {
                        got.lock().unwrap().push((head, req));
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                        );
                    }
                    _ => {
                        let _ = s.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                        );
                    }
                }
            }
        });
    }
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let trail = tempfile::tempdir().unwrap();
    let dir = trail.path().join("audit");
    let admin = free_port();
    let toml = audit_config(&mock.url(), dir.to_str().unwrap(), "1s", Some(admin))
        + &format!(
            r#"
[[audit.sinks]]
name = "collector"
type = "otlp"
url = "http://127.0.0.1:{port}/v1/logs"
auth = {{ type = "header", name = "X-Scope-OrgID", value = "file:sink.token" }}
batch = 4
retry_max = "200ms"
"#
        );
    let mut gw = start_with_sink(&toml);
    wait_admin(admin);
    let ids = some_calls(gw.port(), 7, "otlp");
    let n = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let want = audit_lines(&dir).len();
        let have: usize = got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.resource_logs[0].scope_logs[0].log_records.len())
            .sum();
        (want >= 7 && have >= want).then_some(want)
    })
    .expect("the collector did not get every record");
    wait_metric(admin, "portcullis_sink_delivered_total", "collector", |v| {
        v == n as u64
    });
    assert!(sink_metric(admin, "portcullis_sink_failed_total", "collector").unwrap() >= 1);
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());

    let lines = audit_lines(&dir);
    let got = got.lock().unwrap();
    let mut bodies = Vec::new();
    for (head, req) in got.iter() {
        assert!(head.starts_with("post /v1/logs http/1.1\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/x-protobuf\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!(
                "\r\nx-scope-orgid: {}\r\n",
                SINK_TOKEN.to_ascii_lowercase()
            )),
            "{head}"
        );
        let rl = &req.resource_logs[0];
        let service = rl
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .find(|a| a.key == "service.name");
        assert!(matches!(
            service.and_then(|a| a.value.as_ref()).and_then(|v| v.value.as_ref()),
            Some(Any::StringValue(s)) if s == "portcullis"
        ));
        let sl = &rl.scope_logs[0];
        assert_eq!(sl.scope.as_ref().unwrap().name, "portcullis.audit");
        assert!(sl.log_records.len() <= 4);
        for r in &sl.log_records {
            let Some(Any::StringValue(body)) = r.body.as_ref().and_then(|b| b.value.clone()) else {
                panic!("body is not a string: {r:?}");
            };
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let attr = |k: &str| {
                r.attributes
                    .iter()
                    .find(|a| a.key == k)
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| v.value.clone())
            };
            assert_eq!(
                attr("portcullis.hash"),
                Some(Any::StringValue(hash_of(&body)))
            );
            let ts_us = r.time_unix_nano / 1000;
            assert!(ts_us > 1_700_000_000_000_000, "{}", r.time_unix_nano);
            if v.get("kind").is_none() {
                assert_eq!(r.event_name, "portcullis.audit.call");
                assert_eq!(
                    attr("portcullis.id"),
                    Some(Any::StringValue(v["id"].as_str().unwrap().into()))
                );
                assert_eq!(
                    attr("portcullis.status"),
                    Some(Any::IntValue(v["status"].as_i64().unwrap()))
                );
                let allowed = v["decision"] == "allow";
                assert_eq!(r.severity_number, if allowed { 9 } else { 13 });
            }
            bodies.push(body);
        }
    }
    // record for record, in order (the refused first export was sent again)
    assert_eq!(bodies, lines);
    for id in &ids {
        assert!(bodies.iter().any(|b| b.contains(id.as_str())), "{id}");
    }
}

#[test]
fn retention_keeps_what_a_sink_has_not_delivered_until_max_lag() {
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let rx = Receiver::start();
    rx.set(UNAVAILABLE);
    let trail = tempfile::tempdir().unwrap();
    let dir = trail.path().join("audit");
    let admin = free_port();
    let dead = free_port(); // nothing listens there
    let toml = http_sink_config(&mock.url(), dir.to_str().unwrap(), admin, rx.port).replace(
        "fsync = \"1s\"\n",
        "fsync = \"1s\"\nrotate = 1500\nretain_files = 2\n",
    ) + &format!(
        r#"
[[audit.sinks]]
name = "lagging"
type = "http"
url = "http://127.0.0.1:{dead}/never"
retry_max = "200ms"
max_lag = "1s"
"#
    );
    let mut gw = start_with_sink(&toml);
    wait_admin(admin);
    let first_file = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jsonl"))
            .collect();
        names.sort();
        (names.first().cloned(), names.len())
    };

    // both sinks down: retention (2 files) deletes nothing
    some_calls(gw.port(), 30, "r");
    // the writer is off the request path: wait (bounded) for the records to reach the files
    let (oldest, _) = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        Some(first_file()).filter(|(_, n)| *n >= 5)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} files: rotation did not happen as expected",
            first_file().1
        )
    });
    let log = gw.log_when(
        |l| l.contains("retention keeps a file a sink has not delivered yet"),
        Duration::from_secs(10),
    );
    assert!(
        log.contains("retention keeps a file a sink has not delivered yet"),
        "{log}"
    );
    assert_eq!(
        first_file().0,
        oldest,
        "a file was deleted before any sink delivered it"
    );
    let before = audit_lines(&dir);

    // "siem" recovers and catches up; "lagging" stays down past its max_lag: now retention
    // deletes, and "lagging" counts the files it lost
    rx.set(OK);
    wait_metric(admin, "portcullis_sink_delivered_total", "siem", |v| {
        v >= before.len() as u64
    });
    let gone = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        some_calls(gw.port(), 3, "more");
        (first_file().0 != oldest).then_some(())
    });
    assert!(
        gone.is_some(),
        "retention never deleted the delivered files"
    );
    wait_metric(admin, "portcullis_sink_gaps_total", "lagging", |v| v >= 1);
    assert_eq!(
        sink_metric(admin, "portcullis_sink_gaps_total", "siem"),
        Some(0)
    );
    assert_eq!(
        sink_metric(admin, "portcullis_sink_delivered_total", "lagging"),
        Some(0)
    );
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let log = gw.stderr_text() + &gw.stdout_text();
    assert!(log.contains("lags more than max_lag"), "{log}");

    // every line the deleted files held had reached "siem"
    let got: HashSet<String> = rx.lines().into_iter().collect();
    let missing: Vec<&String> = before.iter().filter(|l| !got.contains(*l)).collect();
    assert!(
        missing.is_empty(),
        "{} lines never delivered: {:?}",
        missing.len(),
        missing.first()
    );
}

#[test]
fn elastic_bulk_retries_rejected_items_and_redeliveries_are_conflicts_not_duplicates() {
    use base64::Engine;
    // an Elasticsearch stand-in: `create` by `_id`; the first bulk request has one item
    // rejected (429), so the batch is sent again and its other items answer 409
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let docs: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let requests = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (docs, requests, errors) = (docs.clone(), requests.clone(), errors.clone());
        l.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline && requests.load(Ordering::Relaxed) < 1000 {
                let Ok((mut s, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Some((head, body)) = read_request(&mut s) else {
                    continue;
                };
                let first = requests.fetch_add(1, Ordering::Relaxed) == 0;
                let want_auth = format!(
                    "authorization: basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("writer:{SINK_TOKEN}"))
                        .to_ascii_lowercase()
                );
                if !head.starts_with("post /_bulk http/1.1\r\n") || !head.contains(&want_auth) {
                    errors.lock().unwrap().push(head.clone());
                }
                let text = String::from_utf8_lossy(&body).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                let mut items = Vec::new();
                for (i, pair) in lines.chunks(2).enumerate() {
                    let action: serde_json::Value = serde_json::from_str(pair[0]).unwrap();
                    let id = action["create"]["_id"].as_str().unwrap_or("").to_string();
                    if action["create"]["_index"] != "pcs-audit" {
                        errors.lock().unwrap().push(pair[0].to_string());
                    }
                    let status = if first && i == 1 {
                        429
                    } else {
                        let mut d = docs.lock().unwrap();
                        match d.entry(id) {
                            std::collections::btree_map::Entry::Occupied(_) => 409,
                            std::collections::btree_map::Entry::Vacant(e) => {
                                e.insert(pair.get(1).copied().unwrap_or("").to_string());
                                201
                            }
                        }
                    };
                    items.push(
                        serde_json::json!({"create": {"_id": pair[0], "status": status,
                        "error": {"reason": "es_rejected_execution_exception"}}}),
                    );
                }
                let errors_flag = items.iter().any(|i| i["create"]["status"] != 201);
                let resp = serde_json::json!({"took": 1, "errors": errors_flag, "items": items})
                    .to_string();
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{resp}",
                        resp.len()
                    )
                    .as_bytes(),
                );
            }
        });
    }
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let trail = tempfile::tempdir().unwrap();
    let dir = trail.path().join("audit");
    let admin = free_port();
    let toml = audit_config(&mock.url(), dir.to_str().unwrap(), "1s", Some(admin))
        + &format!(
            r#"
[[audit.sinks]]
name = "elastic"
type = "http"
url = "http://127.0.0.1:{port}/_bulk"
format = "elastic_bulk"
index = "pcs-audit"
auth = {{ type = "basic", user = "writer", password = "file:sink.token" }}
batch = 5
retry_max = "200ms"
"#
        );
    let mut gw = start_with_sink(&toml);
    wait_admin(admin);
    some_calls(gw.port(), 8, "es");
    let n = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let want = audit_lines(&dir).len();
        (want >= 8 && docs.lock().unwrap().len() >= want).then_some(want)
    })
    .expect("not every record was indexed");
    wait_metric(admin, "portcullis_sink_delivered_total", "elastic", |v| {
        v == n as u64
    });
    assert!(sink_metric(admin, "portcullis_sink_failed_total", "elastic").unwrap() >= 1);
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let log = gw.stderr_text() + &gw.stdout_text();
    assert!(
        log.contains("429: es_rejected_execution_exception"),
        "{log}"
    );

    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    let docs = docs.lock().unwrap();
    assert_eq!(docs.len(), n, "one document per record, no duplicates");
    for line in audit_lines(&dir) {
        let doc = docs
            .get(&hash_of(&line))
            .unwrap_or_else(|| panic!("not indexed: {line}"));
        // the record unchanged after the added @timestamp
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let prefix = format!("{{\"@timestamp\":\"{}\",", v["ts"].as_str().unwrap());
        assert_eq!(doc.strip_prefix(&prefix), line.strip_prefix('{'), "{doc}");
    }
}
