//! Audit integrity end to end (issue 13): a full disk (a small tmpfs the test mounts) is
//! counted, degrades `/readyz`, and its losses end up as gap records that `audit verify`
//! reports — also when the gateway stops while the disk is still full; `on_error = "refuse"`
//! answers 503 and recovers; `fsync = "always"` + `refuse` survives `kill -9` with every
//! answered call recorded; signed checkpoints, the published head and tail truncation;
//! retention with an anchor; report-mode rule hits and the client address in the records.
use crate::audit::{
    ADMIN_TOKEN, AGENT_KEY, admin_get, call, calls, portcullis_ok, records_of, stop, with_key,
};
use crate::support::*;
use portcullis::internals::observe::audit::StoredRecord;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a small tmpfs (needs root or CAP_SYS_ADMIN, as CI runs). A machine that cannot
    /// mount fails the test, unless `PORTCULLIS_TEST_NO_MOUNT=1` says so on purpose (then `None`,
    /// with a message): a full-disk test must not pass by not running.
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if std::env::var_os("PORTCULLIS_TEST_NO_MOUNT").is_some() {
                eprintln!("SKIPPED (PORTCULLIS_TEST_NO_MOUNT): cannot mount a tmpfs ({why})");
                return None;
            }
            panic!(
                "cannot mount a tmpfs for the full-disk test ({why}): run as root, or set \
                 PORTCULLIS_TEST_NO_MOUNT=1 to skip the full-disk tests knowingly"
            );
        }
        Some(Tmpfs {
            _parent: parent,
            path,
        })
    }

    /// Fills the filesystem with `fill` until it is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("fill")).unwrap();
        let chunk = vec![0xa5u8; 4096];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // the last partial block too
        while f.write_all(&[1]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("fill")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn config(upstream: &str, audit_dir: &Path, admin: u16, audit_extra: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = 2
admin_listen = "127.0.0.1:{admin}"
admin_token = "file:admin.token"

[audit]
dir = "{dir}"
{audit_extra}

[[agents]]
id = "support-bot"
key_sha256 = "{key}"

[[proxies]]
name = "up"
upstream = "{upstream}"
default_effect = "allow"
rules = [
  {{ effect = "deny", methods = "any", path = "/v1/admin/**", mode = "report" }},
]
"#,
        dir = audit_dir.display(),
        key = portcullis::internals::identity::key_sha256_hex(AGENT_KEY),
    )
}

fn start(toml: &str, extra: &[(&str, &[u8])]) -> Gateway {
    let token = format!("{ADMIN_TOKEN}\n");
    let mut files: Vec<(&str, &[u8])> = vec![("admin.token", token.as_bytes())];
    files.extend_from_slice(extra);
    Gateway::start_with_files(toml, &files)
}

fn metrics(admin: u16) -> String {
    let r = admin_get(admin, "/metrics", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200);
    r.body_str()
}

/// The value of a metric line that starts with `name` (labels included), or 0.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `f` every 20 ms for up to `timeout`.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn verify(args: &[&str]) -> (bool, String) {
    let out = run_portcullis(args, &[], Duration::from_secs(30));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn gaps(dir: &Path) -> Vec<StoredRecord> {
    portcullis::internals::observe::audit::verify::read_all(dir)
        .unwrap()
        .into_iter()
        .filter(|r| r.is_gap())
        .collect()
}

#[test]
fn a_full_disk_is_counted_degrades_readyz_and_its_losses_become_a_gap_on_recovery() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let mock = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let toml = config(
        &mock.url(),
        &fs.path,
        admin,
        "fsync = \"always\"\nbacklog = 10",
    );
    let mut gw = start(&toml, &[]);
    wait_admin(admin);
    for i in 0..3 {
        let (r, _) = call(gw.port(), &with_key("GET", &format!("/up/before/{i}"), ""));
        assert_eq!(r.status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(admin),
        "portcullis_audit_written_total"
    ) == 3));

    fs.fill();
    // on_error = "continue": calls are served. The file's last page may still take a few
    // records; then the writer fails, holds 10 records (backlog) and drops the rest
    let mut made = 3;
    let mut full_calls = 0;
    while full_calls < 25 {
        let (r, _) = call(gw.port(), &with_key("GET", &format!("/up/full/{made}"), ""));
        assert_eq!(r.status, 200, "{}", show(&r.raw));
        made += 1;
        if metric(&metrics(admin), "portcullis_audit_degraded") == 1 {
            full_calls += 1;
        }
        assert!(made < 500, "the disk never filled up");
    }
    let dropped = |m: &str| metric(m, "portcullis_audit_dropped_total{reason=\"backlog\"}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = metrics(admin);
            metric(&m, "portcullis_audit_write_errors_total") > 0 && dropped(&m) >= 14
        }),
        "{}",
        metrics(admin)
    );
    let ready = admin_get(admin, "/readyz", None);
    assert_eq!(ready.status, 200, "continue mode still serves");
    assert!(
        ready.body_str().contains("degraded"),
        "{}",
        ready.body_str()
    );
    let lost = dropped(&metrics(admin));

    fs.free();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = metrics(admin);
            metric(&m, "portcullis_audit_degraded") == 0
                && metric(&m, "portcullis_audit_written_total") + lost == made
                && metric(&m, "portcullis_audit_gap_records_total") == 1
        }),
        "{}",
        metrics(admin)
    );
    assert!(
        admin_get(admin, "/readyz", None)
            .body_str()
            .contains("\"ready\"")
    );
    let (r, _) = call(gw.port(), &with_key("GET", "/up/after", ""));
    assert_eq!(r.status, 200);
    stop(&mut gw);

    // the log says what happened once per transition
    let log = gw.stderr_text();
    assert_eq!(
        log.matches("holding records and retrying").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("writing again after errors").count(),
        1,
        "{log}"
    );

    let g = gaps(&fs.path);
    assert_eq!(g.len(), 1, "{g:#?}");
    assert_eq!(g[0].reason.as_deref(), Some("backlog_full"));
    assert_eq!(g[0].dropped, Some(lost));
    let (from, to) = (g[0].from.clone().unwrap(), g[0].to.clone().unwrap());
    assert!(from <= to, "{from} {to}");
    assert_eq!(calls(&fs.path).len() as u64 + lost, made + 1);
    let out = portcullis_ok(&["audit", "verify", fs.path.to_str().unwrap()]);
    assert!(
        out.contains(&format!("gaps: 1 ({lost} records dropped)")),
        "{out}"
    );
}

#[test]
fn stopping_while_the_disk_is_full_writes_the_loss_from_the_reserve() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let mock = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let toml = config(&mock.url(), &fs.path, admin, "fsync = \"always\"");
    let mut gw = start(&toml, &[]);
    wait_admin(admin);
    for i in 0..3 {
        assert_eq!(
            call(gw.port(), &with_key("GET", &format!("/up/a/{i}"), ""))
                .0
                .status,
            200
        );
    }
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(admin),
        "portcullis_audit_written_total"
    ) == 3));
    fs.fill();
    for i in 0..20 {
        assert_eq!(
            call(gw.port(), &with_key("GET", &format!("/up/b/{i}"), ""))
                .0
                .status,
            200
        );
    }
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(admin),
        "portcullis_audit_degraded"
    ) == 1));
    // stop with the disk still full: after its grace period the writer gives up on what it
    // holds, and records that it did
    stop(&mut gw);
    let log = gw.stderr_text();
    assert!(
        log.contains("recorded as a write_failed gap record"),
        "{log}"
    );

    // (the file's last page may have taken a few records before the disk refused)
    let dir = fs.path.to_str().unwrap();
    let g = gaps(&fs.path);
    assert_eq!(g.len(), 1, "{g:#?}");
    assert_eq!(g[0].reason.as_deref(), Some("write_failed"));
    let lost = g[0].dropped.unwrap();
    let written = calls(&fs.path).len() as u64;
    assert!(lost > 0);
    assert_eq!(written + lost, 23);
    let out = portcullis_ok(&["audit", "verify", dir]);
    assert!(
        out.contains(&format!(
            "records: {written}  gaps: 1 ({lost} records dropped)"
        )),
        "{out}"
    );
    // the gap's line names the reason and the receive-time window
    assert!(
        out.contains(&format!(
            "{lost} record(s) lost (write_failed), received 20"
        )),
        "{out}"
    );

    // the next start (disk freed) makes a new reserve and continues the chain
    fs.free();
    let mut gw = start(&toml, &[]);
    assert_eq!(call(gw.port(), &with_key("GET", "/up/c", "")).0.status, 200);
    stop(&mut gw);
    assert!(fs.path.join(".reserve").exists());
    let out = portcullis_ok(&["audit", "verify", dir]);
    assert!(
        out.contains(&format!(
            "records: {}  gaps: 1 ({lost} records dropped)",
            written + 1
        )),
        "{out}"
    );
}

#[test]
fn on_error_refuse_answers_503_while_records_cannot_be_written_and_recovers() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let mock = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let toml = config(
        &mock.url(),
        &fs.path,
        admin,
        "fsync = \"1s\"\non_error = \"refuse\"",
    );
    let mut gw = start(&toml, &[]);
    wait_admin(admin);
    assert_eq!(
        call(gw.port(), &with_key("GET", "/up/ok", "")).0.status,
        200
    );
    fs.fill();
    // the calls right after the disk filled up may still pass (the file's last page takes a
    // few records; the first record that does not fit is what fails)
    let mut passed = 0;
    let mut early_503 = 0;
    while metric(&metrics(admin), "portcullis_audit_degraded") == 0 {
        let (r, _) = call(
            gw.port(),
            &with_key("GET", &format!("/up/first/{passed}"), ""),
        );
        // 503 once the writer's failure is seen between the metrics read and this call
        assert!(matches!(r.status, 200 | 503), "{}", show(&r.raw));
        early_503 += usize::from(r.status == 503);
        passed += 1;
        assert!(passed < 500, "the disk never filled up");
        thread::sleep(Duration::from_millis(5));
    }
    let upstream_before = mock.count();
    for i in 0..5 {
        let (r, _) = call(
            gw.port(),
            &with_key("POST", &format!("/up/refused/{i}"), "x"),
        );
        assert_eq!(r.status, 503, "{}", show(&r.raw));
        assert!(
            r.body_str().contains("audit_unavailable"),
            "{}",
            r.body_str()
        );
    }
    assert_eq!(mock.count(), upstream_before, "nothing went upstream");
    let ready = admin_get(admin, "/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.body_str());
    assert!(ready.body_str().contains("degraded"));
    // the five above, plus any call refused while the failure was being noticed
    let want = format!(
        "portcullis_refusals_total{{proxy=\"up\",code=\"audit_unavailable\"}} {}",
        5 + early_503
    );
    assert!(
        wait_until(Duration::from_secs(5), || metrics(admin).contains(&want)),
        "{want}"
    );

    fs.free();
    // recovers by itself once the writer's retry succeeds (backoff at most 1 s)
    assert!(
        wait_until(Duration::from_secs(5), || call(
            gw.port(),
            &with_key("GET", "/up/again", "")
        )
        .0
        .status
            == 200),
        "never recovered"
    );
    assert_eq!(admin_get(admin, "/readyz", None).status, 200);
    stop(&mut gw);
    // the refusals are on the record too
    let recs = calls(&fs.path);
    assert!(
        recs.iter()
            .filter(|r| r.code.as_deref() == Some("audit_unavailable"))
            .count()
            >= 5
    );
    assert!(portcullis_ok(&["audit", "verify", fs.path.to_str().unwrap()]).contains(": ok"));
}

#[test]
fn kill_9_under_load_with_fsync_always_and_refuse_loses_no_answered_call() {
    let mock = MockUpstream::start(echo_request_line);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trail");
    let admin = free_port();
    let toml = config(
        &mock.url(),
        &dir,
        admin,
        "fsync = \"always\"\non_error = \"refuse\"",
    );
    let mut gw = start(&toml, &[]);
    let port = gw.port();
    let stop_flag = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop_flag = stop_flag.clone();
        clients.push(thread::spawn(move || {
            let mut acked = Vec::new();
            let mut c = Conn::connect(port);
            for i in 0..50_000 {
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                let req = format!(
                    "GET /up/load/{i} HTTP/1.1\r\nHost: gw\r\nx-api-key: {AGENT_KEY}\r\n\r\n"
                );
                match c.try_roundtrip(req.as_bytes()) {
                    // a response head received means its record was already on disk
                    Ok(r) => acked.push((r.status, r.header("x-request-id").unwrap().to_string())),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    thread::sleep(Duration::from_millis(1500));
    gw.signal("KILL");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    stop_flag.store(true, Ordering::Relaxed);
    let acked: Vec<(u16, String)> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let ok = acked.iter().filter(|(s, _)| *s == 200).count();
    assert!(ok > 50, "too little load: {}", acked.len());
    let ids: std::collections::HashSet<String> =
        calls(&dir).into_iter().filter_map(|r| r.id).collect();
    let missing: Vec<&(u16, String)> = acked.iter().filter(|(_, id)| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered calls have no record, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // the bodies' totals follow as completion lines (not awaited, but most are there)
    let completions: Vec<StoredRecord> =
        portcullis::internals::observe::audit::verify::read_all(&dir)
            .unwrap()
            .into_iter()
            .filter(|r| r.kind.as_deref() == Some("completion"))
            .collect();
    assert!(!completions.is_empty());
    assert!(
        completions
            .iter()
            .all(|c| ids.contains(c.id.as_deref().unwrap()) && c.bytes_out.unwrap() > 0)
    );
    eprintln!(
        "kill -9 (durable): {} answered ({ok} 200), {} in the trail",
        acked.len(),
        ids.len()
    );
    let out = portcullis_ok(&["audit", "verify", dir.to_str().unwrap()]);
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn signed_checkpoints_verify_with_the_public_key_and_a_cut_tail_is_detected() {
    let keys = tempfile::tempdir().unwrap();
    let pub_path = keys.path().join("audit.pub");
    let out = portcullis_ok(&[
        "audit",
        "keygen",
        "--pubkey-out",
        pub_path.to_str().unwrap(),
    ]);
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret key")?.rsplit(' ').next())
        .unwrap()
        .to_string();
    let mock = MockUpstream::start(echo_request_line);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trail");
    let head_file = tmp.path().join("head.json");
    let admin = free_port();
    let toml = config(
        &mock.url(),
        &dir,
        admin,
        &format!(
            "signing_key = \"file:signing.key\"\ncheckpoint_records = 5\nhead_file = \"{}\"",
            head_file.display()
        ),
    );
    let mut gw = start(&toml, &[("signing.key", secret.as_bytes())]);
    wait_admin(admin);
    for i in 0..12 {
        assert_eq!(
            call(gw.port(), &with_key("GET", &format!("/up/c/{i}"), ""))
                .0
                .status,
            200
        );
    }
    // two checkpoints (after 5 and 10 calls) are published
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(admin),
        "portcullis_audit_checkpoints_total"
    ) == 2));
    let head = admin_get(admin, "/v1/audit/head", Some(ADMIN_TOKEN));
    assert_eq!(head.status, 200, "{}", head.body_str());
    let h: serde_json::Value = serde_json::from_slice(&head.body).unwrap();
    assert_eq!(h["records"], 5);
    let mid_head = h["hash"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(&head_file).unwrap().trim(),
        head.body_str().trim()
    );
    assert_eq!(
        admin_get(admin, "/v1/audit/head", None).status,
        401,
        "the head needs the admin token"
    );
    stop(&mut gw);
    let d = dir.to_str().unwrap();
    let p = pub_path.to_str().unwrap();
    let hf = head_file.to_str().unwrap();

    // the final checkpoint (shutdown) is the published head
    let out = portcullis_ok(&["audit", "verify", d, "--pubkey", p, "--head-file", hf]);
    assert!(
        out.contains("checkpoints: 3 (3 signed by the given key)"),
        "{out}"
    );
    assert!(
        out.contains("expected head found; 0 record(s) after it"),
        "{out}"
    );
    let out = portcullis_ok(&["audit", "verify", d, "--expect-head", &mid_head]);
    assert!(
        out.contains("expected head found; 2 record(s) after it"),
        "{out}"
    );

    // another key: every checkpoint is a break
    let other = keys.path().join("other.pub");
    portcullis_ok(&["audit", "keygen", "--pubkey-out", other.to_str().unwrap()]);
    let (ok, out) = verify(&["audit", "verify", d, "--pubkey", other.to_str().unwrap()]);
    assert!(!ok && out.contains("signed by another key"), "{out}");

    // cut the tail after the second checkpoint: the chain alone still verifies, the head not
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines
        .iter()
        .position(|l| l.contains(&format!("\"hash\":\"{mid_head}\"")))
        .unwrap();
    std::fs::write(&file, lines[..=cut].join("\n") + "\n").unwrap();
    assert!(portcullis_ok(&["audit", "verify", d]).contains(": ok"));
    let (ok, out) = verify(&["audit", "verify", d, "--pubkey", p, "--head-file", hf]);
    assert!(!ok, "{out}");
    assert!(out.contains("is not in the log"), "{out}");
}

#[test]
fn retention_removes_the_oldest_files_and_what_remains_verifies() {
    let mock = MockUpstream::start(echo_request_line);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trail");
    let admin = free_port();
    let toml = config(&mock.url(), &dir, admin, "rotate = 1500\nretain_files = 3");
    let mut gw = start(&toml, &[]);
    wait_admin(admin);
    for i in 0..30 {
        assert_eq!(
            call(gw.port(), &with_key("GET", &format!("/up/r/{i}"), ""))
                .0
                .status,
            200
        );
    }
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(admin),
        "portcullis_audit_files_removed_total"
    ) > 0));
    stop(&mut gw);
    let logs = portcullis::internals::observe::audit::files::list_files(&dir).unwrap();
    assert!(logs.len() <= 4, "{logs:?}");
    assert!(logs[0].seq > 1, "the oldest files are gone: {logs:?}");
    let d = dir.to_str().unwrap();
    let out = portcullis_ok(&["audit", "verify", d]);
    assert!(out.contains("starts at a retention anchor"), "{out}");

    // removing one more old file by hand is not what retention did: no anchor names it
    std::fs::remove_file(&logs[0].path).unwrap();
    let (ok, out) = verify(&["audit", "verify", d]);
    assert!(!ok && out.contains("older files are missing"), "{out}");
}

#[test]
fn report_mode_hits_and_the_client_address_are_in_the_records_and_metrics() {
    let mock = MockUpstream::start(echo_request_line);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trail");
    let admin = free_port();
    let toml = config(&mock.url(), &dir, admin, "fsync = \"always\"");
    let mut gw = start(&toml, &[]);
    wait_admin(admin);
    let (r, _) = call(gw.port(), &with_key("GET", "/up/v1/admin/users", ""));
    assert_eq!(r.status, 200, "report mode does not enforce");
    let shadow_id = r.header("x-request-id").unwrap().to_string();
    let (r, _) = call(gw.port(), &with_key("GET", "/up/v1/items", ""));
    assert_eq!(r.status, 200);
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(admin),
        "portcullis_audit_written_total"
    ) == 2));
    let m = metrics(admin);
    assert_eq!(
        metric(
            &m,
            "portcullis_shadow_hits_total{proxy=\"up\",decision=\"deny\"}"
        ),
        1,
        "{m}"
    );
    let recs = records_of(&admin_get(
        admin,
        "/v1/requests?shadow=1",
        Some(ADMIN_TOKEN),
    ));
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0].id.as_deref(), Some(shadow_id.as_str()));
    let s = recs[0].shadow.as_ref().unwrap();
    assert_eq!((s.rule, s.decision.as_str()), (0, "deny"));
    assert_eq!(recs[0].decision.as_deref(), Some("allow"));
    stop(&mut gw);

    let all = calls(&dir);
    assert_eq!(all.len(), 2);
    for r in &all {
        let c = r.client.as_deref().unwrap();
        assert!(c.starts_with("127.0.0.1:"), "{c}");
    }
    assert!(all[1].shadow.is_none());
    let out = portcullis_ok(&["logs", "--shadow", "--json", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains(&shadow_id) && out.contains("\"shadow\":{\"rule\":0,\"decision\":\"deny\"}")
    );
}
