//! Writer + verify + query together, on real files in temporary directories.
use super::files::{self, LogFile};
use super::gate::Durability;
use super::index;
use super::record::StoredRecord;
use super::verify::{self, BreakKind, VerifyReport};
use super::*;
use std::path::Path;
use std::time::Duration;

fn verify_dir(dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify_dir_with(dir, &VerifyOptions::default())
}

const PROXIES: &[&str] = &["crm", "payments", "openai", "legacy\"api"];
const AGENTS: &[&str] = &["support-bot", "billing-bot", "ops\nagent", "rare-agent"];
const STATUSES: &[u16] = &[200, 200, 200, 201, 204, 403, 404, 429, 500, 502];
const BASE_TS: u64 = 1_795_600_000_000_000;

/// A deterministic record; `ts` wobbles so it is not monotonic in log order.
fn rec(i: u64) -> AuditRecord {
    let agent = if i.is_multiple_of(997) {
        Some(AGENTS[3])
    } else if i.is_multiple_of(11) {
        None
    } else {
        Some(AGENTS[(i % 3) as usize])
    };
    let status = STATUSES[(i * 7 % STATUSES.len() as u64) as usize];
    AuditRecord {
        ts_us: BASE_TS + i * 1000 - (i * 7919 % 50_000),
        id: SmallStr::new(&format!("{i:032x}")),
        agent_request_id: None,
        agent: agent.map(Into::into),
        proxy: Some(PROXIES[(i % 4) as usize].into()),
        method: SmallStr::new(if i.is_multiple_of(5) { "POST" } else { "GET" }),
        path: format!("/v1/accounts/{}", i % 1000),
        status,
        decision: if status == 403 {
            Decision::Deny
        } else {
            Decision::Allow
        },
        code: (status == 403).then_some("denied_by_rule"),
        rule: Some((i % 7) as u32),
        scanner: None,
        redactions: (i % 3) as u32,
        secret_reflected: 0,
        bytes_in: i,
        bytes_out: i * 2,
        upstream_status: (status != 403).then_some(status),
        upstream_us: (status != 403).then_some((i % 5000) as u32),
        total_us: i % 7000,
        client: Some((
            std::net::Ipv4Addr::LOCALHOST.into(),
            40_000 + (i % 1000) as u16,
        )),
        forwarded_for: None,
        shadow: i.is_multiple_of(11).then_some((1, Decision::Deny)),
        completion: false,
        approval: None,
        trace_id: if i.is_multiple_of(3) {
            [0; 16]
        } else {
            [7; 16]
        },
        metered: None,
        admin: None,
        auth: None,
        tunnel: None,
        mcp: i.is_multiple_of(4).then(|| {
            Box::new(crate::observe::audit::record::McpNote {
                method: if i.is_multiple_of(8) {
                    "tools/call"
                } else {
                    "resources/read"
                }
                .into(),
                target: Some(if i.is_multiple_of(8) {
                    ("tool", MCP_NAMES[(i / 4 % 3) as usize].to_string())
                } else {
                    ("resource", MCP_NAMES[(i / 4 % 3) as usize].to_string())
                }),
                session: None,
                batch: None,
                hidden: 0,
                list_refused: 0,
                screened: 0,
                changed: 0,
            })
        }),
    }
}

/// MCP tool names / resource URIs of the generated records (one also appears as a path).
const MCP_NAMES: [&str; 3] = ["get_account", "delete\"account", "file:///r/1"];

fn cfg(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(dir);
    c.fsync = FsyncPolicy::Never;
    c
}

fn push_all(ring: &AuditRing, range: std::ops::Range<u64>) {
    for i in range {
        let mut r = rec(i);
        while let Err(back) = ring.try_push(r) {
            r = back;
            std::thread::yield_now();
        }
    }
}

fn write_log(c: AuditConfig, range: std::ops::Range<u64>) -> StatsSnapshot {
    let (ring, h) = start(c).unwrap();
    push_all(&ring, range);
    h.flush_and_stop()
}

fn logs(dir: &Path) -> Vec<LogFile> {
    files::list_files(dir).unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    let mut s = l.join("\n");
    s.push('\n');
    std::fs::write(p, s).unwrap();
}

/// A 100-record log over several files.
fn small_log() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.rotate_bytes = 8 << 10;
    let s = write_log(c, 0..100);
    assert_eq!(s.written, 100);
    assert!(logs(d.path()).len() >= 4, "{:?}", logs(d.path()));
    d
}

fn breaks(dir: &Path) -> (Vec<verify::Break>, usize) {
    match verify_dir(dir) {
        Err(VerifyError::Broken { breaks, count, .. }) => (breaks, count),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn chain_verifies_across_rotation_and_reads_back() {
    let d = small_log();
    let r = verify_dir(d.path()).unwrap();
    assert_eq!(r.records, 100);
    assert_eq!(r.gaps, 0);
    assert!(r.warnings.is_empty());
    assert_eq!(r.files, logs(d.path()).len());
    let all = verify::read_all(d.path()).unwrap();
    assert_eq!(all.len(), 100);
    for (i, s) in all.iter().enumerate() {
        let want = rec(i as u64);
        assert_eq!(s.id.as_deref(), Some(want.id.as_str()));
        assert_eq!(s.proxy.as_deref(), want.proxy.as_deref());
        assert_eq!(s.agent.as_deref(), want.agent.as_deref());
        assert_eq!(s.ts_us(), Some(want.ts_us));
    }
    assert_eq!(all[0].prev, "0".repeat(64));
    for w in all.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
    }
    assert_eq!(r.head, all[99].hash);
    // each rotated file stays near the limit, and has a complete index
    for lf in logs(d.path()) {
        let len = std::fs::metadata(&lf.path).unwrap().len();
        assert!(len < (8 << 10) + 1024, "{len}");
        let idx = index::load(&lf.path, len);
        assert_eq!(idx.last().map(|b| b.end), Some(len));
    }
}

#[test]
fn tamper_edited_field_is_found_at_file_and_line() {
    let d = small_log();
    let f = &logs(d.path())[1];
    let mut l = lines(&f.path);
    l[4] = l[4].replacen("\"bytes_in\":", "\"bytes_in\":9", 1);
    write_lines(&f.path, &l);
    let (b, count) = breaks(d.path());
    assert_eq!(count, 1, "{b:?}");
    assert_eq!((&b[0].file, b[0].line), (&f.path, 5));
    assert_eq!(b[0].kind, BreakKind::HashMismatch);
    let msg = b[0].to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:5: hash mismatch",
            files::display_name(&f.path)
        )),
        "{msg}"
    );
}

#[test]
fn tamper_deleted_line() {
    let d = small_log();
    let f = &logs(d.path())[0];
    let mut l = lines(&f.path);
    l.remove(6);
    write_lines(&f.path, &l);
    let (b, count) = breaks(d.path());
    assert_eq!(count, 1, "{b:?}");
    assert_eq!((&b[0].file, b[0].line), (&f.path, 7));
    assert!(matches!(b[0].kind, BreakKind::PrevMismatch { .. }), "{b:?}");
}

#[test]
fn tamper_swapped_lines() {
    let d = small_log();
    let f = &logs(d.path())[2];
    let mut l = lines(&f.path);
    l.swap(2, 3);
    write_lines(&f.path, &l);
    let (b, _) = breaks(d.path());
    let at: Vec<u64> = b.iter().map(|b| b.line).collect();
    assert_eq!(at, [3, 4, 5]);
    assert!(
        b.iter()
            .all(|b| b.file == f.path && matches!(b.kind, BreakKind::PrevMismatch { .. }))
    );
}

#[test]
fn tamper_deleted_middle_file() {
    let d = small_log();
    let l = logs(d.path());
    std::fs::remove_file(&l[1].path).unwrap();
    let (b, count) = breaks(d.path());
    assert_eq!(count, 1, "{b:?}");
    assert_eq!((&b[0].file, b[0].line), (&l[2].path, 1));
    assert!(matches!(b[0].kind, BreakKind::PrevMismatch { .. }));
    assert!(
        b[0].to_string()
            .contains("a file or its last lines are missing")
    );
}

#[test]
fn tamper_deleted_oldest_file() {
    let d = small_log();
    let l = logs(d.path());
    std::fs::remove_file(&l[0].path).unwrap();
    let (b, count) = breaks(d.path());
    assert_eq!(count, 1);
    assert_eq!((&b[0].file, b[0].line), (&l[1].path, 1));
    assert!(matches!(b[0].kind, BreakKind::NotGenesis { .. }));
}

#[test]
fn tamper_replaced_line_and_garbage() {
    let d = small_log();
    let f = &logs(d.path())[0];
    let mut l = lines(&f.path);
    l[1] = "{\"hello\":1}".into();
    write_lines(&f.path, &l);
    let (b, _) = breaks(d.path());
    assert_eq!((b[0].line, &b[0].kind), (2, &BreakKind::Malformed));
    // the line after a malformed one no longer links
    assert_eq!(b[1].line, 3);
}

#[test]
fn torn_last_line_is_a_warning_only_at_the_very_end() {
    let d = small_log();
    let l = logs(d.path());
    let newest = &l[l.len() - 1].path;
    let mut bytes = std::fs::read(newest).unwrap();
    let n = lines(newest).len() as u64;
    bytes.extend_from_slice(b"{\"ts\":\"2026-11-24T09:");
    std::fs::write(newest, &bytes).unwrap();
    let r = verify_dir(d.path()).unwrap();
    assert_eq!(r.warnings.len(), 1);
    assert_eq!((&r.warnings[0].file, r.warnings[0].line), (newest, n + 1));
    assert_eq!(r.records, 100);

    // the same in an older file is a break
    let older = &l[1].path;
    let mut bytes = std::fs::read(older).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(older, &bytes).unwrap();
    let (b, _) = breaks(d.path());
    let n = lines(older).len() as u64;
    assert_eq!(
        (&b[0].file, b[0].line, &b[0].kind),
        (older, n, &BreakKind::Torn)
    );
}

#[test]
fn restart_continues_the_chain() {
    let d = tempfile::tempdir().unwrap();
    write_log(cfg(d.path()), 0..50);
    write_log(cfg(d.path()), 50..120);
    let l = logs(d.path());
    assert_eq!(l.len(), 2);
    assert!(l[1].seq > l[0].seq);
    let r = verify_dir(d.path()).unwrap();
    assert_eq!(r.records, 120);
    let all = verify::read_all(d.path()).unwrap();
    assert_eq!(all[50].id.as_deref(), Some(rec(50).id.as_str()));
}

#[test]
fn restart_after_torn_tail_cuts_it_and_writes_a_gap() {
    let d = tempfile::tempdir().unwrap();
    write_log(cfg(d.path()), 0..30);
    let f = &logs(d.path())[0].path;
    let good = std::fs::read(f).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(&good[..200]);
    std::fs::write(f, &torn).unwrap();
    assert!(verify_dir(d.path()).unwrap().warnings.len() == 1);
    write_log(cfg(d.path()), 30..40);
    assert_eq!(std::fs::read(f).unwrap(), good, "torn bytes cut");
    let r = verify_dir(d.path()).unwrap();
    assert!(r.warnings.is_empty());
    assert_eq!((r.records, r.gaps, r.dropped), (40, 1, 1));
    let all = verify::read_all(d.path()).unwrap();
    assert!(all[30].is_gap());
    assert_eq!(all[30].reason.as_deref(), Some("torn_tail"));
}

#[test]
fn restart_on_empty_newest_file_uses_the_one_before() {
    let d = tempfile::tempdir().unwrap();
    write_log(cfg(d.path()), 0..10);
    std::fs::write(d.path().join(files::file_name(BASE_TS, 99)), b"").unwrap();
    write_log(cfg(d.path()), 10..20);
    assert_eq!(verify_dir(d.path()).unwrap().records, 20);
    assert_eq!(logs(d.path()).last().unwrap().seq, 100);
}

#[test]
fn ring_drops_become_a_gap_record() {
    let d = tempfile::tempdir().unwrap();
    let ring = std::sync::Arc::new(AuditRing::new(4, OnFull::Drop, OnError::Continue, false));
    for i in 0..10 {
        let _ = ring.push(rec(i));
    }
    assert_eq!(ring.dropped(), 6);
    let h = AuditWriter::spawn(cfg(d.path()), ring.clone()).unwrap();
    assert!(h.flush(Duration::from_secs(10)));
    let s = h.flush_and_stop();
    assert_eq!((s.written, s.gap_records, s.dropped_queue), (4, 1, 6));
    let r = verify_dir(d.path()).unwrap();
    assert_eq!((r.records, r.gaps, r.dropped), (4, 1, 6));
    let all = verify::read_all(d.path()).unwrap();
    let gap = all.iter().find(|r| r.is_gap()).unwrap();
    assert_eq!(gap.reason.as_deref(), Some("queue_full"));
    assert_eq!(gap.dropped, Some(6));
}

#[test]
fn fsync_always_syncs_every_written_record() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.fsync = FsyncPolicy::Always;
    let s = write_log(c, 0..500);
    assert_eq!((s.written, s.synced), (500, 500));
    let mut c = cfg(d.path());
    c.fsync = FsyncPolicy::Interval(Duration::from_millis(10));
    let (ring, h) = start(c).unwrap();
    push_all(&ring, 500..600);
    assert!(h.flush(Duration::from_secs(10)));
    assert_eq!(h.snapshot().synced, 100);
    drop(h);
    assert_eq!(verify_dir(d.path()).unwrap().records, 600);
}

#[test]
fn config_values_parse() {
    assert_eq!(FsyncPolicy::parse("always"), Ok(FsyncPolicy::Always));
    assert_eq!(FsyncPolicy::parse("never"), Ok(FsyncPolicy::Never));
    assert_eq!(
        FsyncPolicy::parse("1s"),
        Ok(FsyncPolicy::Interval(Duration::from_secs(1)))
    );
    assert!(FsyncPolicy::parse("sometimes").is_err());
    assert_eq!(OnFull::parse("block"), Some(OnFull::Block));
    assert_eq!(OnFull::parse("drop"), Some(OnFull::Drop));
    assert_eq!(OnFull::parse("x"), None);
}

/// Producers faster than the writer: the backlog waits in the ring (producers retry), the
/// writer's pending buffer never overflows, nothing is dropped.
#[test]
fn fast_producers_are_held_in_the_ring_not_dropped() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.pending_max = 2000;
    let s = write_log(c, 0..100_000);
    assert_eq!(
        (s.written, s.dropped_backlog, s.gap_records),
        (100_000, 0, 0)
    );
    assert_eq!(verify_dir(d.path()).unwrap().records, 100_000);
}

/// Disk trouble: the directory is replaced by a plain file, so opening the next log fails.
/// Records wait (bounded), the overflow becomes a `backlog_full` gap, errors are counted, and
/// writing resumes once the directory can be made again.
#[test]
fn write_errors_are_retried_and_overflow_becomes_a_gap() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("audit");
    let mut c = cfg(&dir);
    c.rotate_bytes = 1; // one file per batch, so every batch opens a file
    c.pending_max = 100;
    let (ring, h) = start(c).unwrap();
    push_all(&ring, 0..5);
    assert!(h.flush(Duration::from_secs(10)));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    push_all(&ring, 5..305);
    // wait until the writer has taken everything from the ring and failed at least once
    let t0 = crate::util::clock::now();
    while (h.snapshot().write_errors == 0 || h.snapshot().dropped_backlog < 200)
        && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::yield_now();
    }
    let s = h.snapshot();
    assert!(s.write_errors > 0);
    assert_eq!(s.dropped_backlog, 200);
    assert!(
        !h.flush(Duration::from_millis(50)),
        "cannot flush while the disk fails"
    );
    std::fs::remove_file(&dir).unwrap();
    assert!(h.flush(Duration::from_secs(10)));
    let s = h.flush_and_stop();
    assert_eq!(s.written, 105);
    // the first five records went with the old directory: the new one starts mid-chain
    let (b, count) = breaks(&dir);
    assert_eq!(count, 1);
    assert!(matches!(b[0].kind, BreakKind::NotGenesis { .. }));
    let all = verify::read_all(&dir).unwrap();
    assert_eq!(all.iter().filter(|r| !r.is_gap()).count(), 100);
    let gap: Vec<&StoredRecord> = all.iter().filter(|r| r.is_gap()).collect();
    assert_eq!(gap.len(), 1);
    assert_eq!(
        (gap[0].reason.as_deref(), gap[0].dropped),
        (Some("backlog_full"), Some(200))
    );
}

/// The directory is removed under an open file: writes would go to an unlinked inode, so the
/// writer notices (within about a second), counts an error, and starts a new directory.
#[test]
fn removed_directory_is_noticed_and_recreated() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("audit");
    let (ring, h) = start(cfg(&dir)).unwrap();
    push_all(&ring, 0..5);
    assert!(h.flush(Duration::from_secs(10)));
    std::fs::remove_dir_all(&dir).unwrap();
    let t0 = crate::util::clock::now();
    while h.snapshot().write_errors == 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::park_timeout(Duration::from_millis(10));
    }
    assert_eq!(h.snapshot().write_errors, 1);
    push_all(&ring, 5..10);
    let s = h.flush_and_stop();
    assert_eq!(s.written, 10);
    let all = verify::read_all(&dir).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].id.as_deref(), Some(rec(5).id.as_str()));
}

// ---- checkpoints, retention, durability -------------------------------------------------------

fn signing() -> (std::sync::Arc<SigningKey>, [u8; 32]) {
    let (secret, public) = sign::generate().unwrap();
    let key = SigningKey::from_secret(secret.as_bytes()).unwrap();
    (
        std::sync::Arc::new(key),
        sign::parse_public_key(&public).unwrap(),
    )
}

#[test]
fn checkpoints_are_signed_published_and_verified() {
    let d = tempfile::tempdir().unwrap();
    let heads = tempfile::tempdir().unwrap();
    let head_file = heads.path().join("head.json");
    let (key, public) = signing();
    let mut c = cfg(d.path());
    c.signing_key = Some(key);
    c.checkpoint_records = 10;
    c.head_file = Some(head_file.clone());
    let s = write_log(c, 0..25);
    // after 10 and 20 calls, and the last 5 at shutdown
    assert_eq!((s.written, s.checkpoints), (25, 3));
    let all = verify::read_all(d.path()).unwrap();
    let cps: Vec<&StoredRecord> = all
        .iter()
        .filter(|r| r.kind.as_deref() == Some("checkpoint"))
        .collect();
    assert_eq!(
        cps.iter().map(|r| r.records).collect::<Vec<_>>(),
        [Some(10), Some(10), Some(5)]
    );
    let opts = VerifyOptions {
        pubkey: Some(public),
        expect_head: None,
    };
    let r = verify::verify_dir_with(d.path(), &opts).unwrap();
    assert_eq!(
        (r.checkpoints, r.signed_checkpoints, r.after_checkpoint),
        (3, 3, 0)
    );
    // the published head is the last checkpoint, signed
    let text = std::fs::read_to_string(&head_file).unwrap();
    let h = verify::read_head(&text, Some(&public)).unwrap();
    assert_eq!(record::hex_string(&h), r.head);
    let (_, other) = signing();
    assert!(verify::read_head(&text, Some(&other)).is_err());
    // another key: every checkpoint is a break
    let opts = VerifyOptions {
        pubkey: Some(other),
        expect_head: Some(h),
    };
    match verify::verify_dir_with(d.path(), &opts) {
        Err(VerifyError::Broken { count, breaks, .. }) => {
            assert_eq!(count, 3);
            assert!(
                breaks
                    .iter()
                    .all(|b| matches!(b.kind, BreakKind::BadCheckpoint { .. }))
            );
        }
        other => panic!("{other:?}"),
    }
    // cut after the second checkpoint: the chain verifies, the expected head is missing
    let f = &logs(d.path())[0].path;
    let l = lines(f);
    let second = l
        .iter()
        .position(|x| x.contains(cps[1].hash.as_str()))
        .unwrap();
    write_lines(f, &l[..=second]);
    assert!(verify_dir(d.path()).is_ok());
    let opts = VerifyOptions {
        pubkey: Some(public),
        expect_head: Some(h),
    };
    let (b, count) = match verify::verify_dir_with(d.path(), &opts) {
        Err(VerifyError::Broken { breaks, count, .. }) => (breaks, count),
        other => panic!("{other:?}"),
    };
    assert_eq!(count, 1);
    assert!(matches!(b[0].kind, BreakKind::HeadMissing { .. }));
    assert!(b[0].to_string().contains("is not in the log"), "{}", b[0]);
}

#[test]
fn retention_removes_old_files_and_anchors_what_remains() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.rotate_bytes = 4 << 10;
    c.retain_files = Some(3);
    let (ring, h) = start(c).unwrap();
    for chunk in 0..10 {
        push_all(&ring, chunk * 20..chunk * 20 + 20);
        assert!(h.flush(Duration::from_secs(10)));
    }
    let s = h.flush_and_stop();
    assert!(s.files_removed > 0, "{s:?}");
    let remaining = logs(d.path());
    assert!(remaining.len() <= 4, "{remaining:?}");
    let r = verify_dir(d.path()).unwrap();
    assert_eq!(
        r.anchored.as_deref(),
        Some(files::display_name(&remaining[0].path).as_str())
    );
    // an index goes with its file
    for e in std::fs::read_dir(d.path()).unwrap() {
        let p = e.unwrap().path();
        if let Some(log) = p.to_str().and_then(|s| s.strip_suffix(".idx")) {
            assert!(Path::new(log).exists(), "orphan index {p:?}");
        }
    }
    // a file removed by hand is not what the anchor names
    std::fs::remove_file(&remaining[0].path).unwrap();
    let (b, _) = breaks(d.path());
    assert!(matches!(b[0].kind, BreakKind::NotGenesis { .. }), "{b:?}");
}

#[test]
fn durable_tickets_follow_the_sync() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.fsync = FsyncPolicy::Always;
    c.on_error = OnError::Refuse;
    let ring = c.ring();
    assert!(ring.durable() && ring.accepting());
    let t1 = ring.push_record(rec(1)).unwrap();
    let t2 = ring.push_record(rec(2)).unwrap();
    assert_eq!((t1, t2), (1, 2));
    assert_eq!(ring.durability(t2), Durability::Pending);
    let h = AuditWriter::spawn(c, ring.clone()).unwrap();
    assert!(h.flush(Duration::from_secs(10)));
    assert_eq!(ring.durability(t1), Durability::Durable);
    assert_eq!(ring.durability(t2), Durability::Durable);
    assert_eq!(ring.durability(t2 + 1), Durability::Pending);
    h.flush_and_stop();
    // without refuse, nothing waits
    let mut c = cfg(d.path());
    c.fsync = FsyncPolicy::Always;
    assert!(!c.ring().durable());
}

// ---- queries ----------------------------------------------------------------------------------

fn naive(all: &[StoredRecord], q: &Query) -> Vec<StoredRecord> {
    all.iter()
        .rev()
        .filter(|r| q.matches(r))
        .take(q.limit)
        .cloned()
        .collect()
}

#[test]
fn query_basics() {
    let d = small_log();
    let all = verify::read_all(d.path()).unwrap();
    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query::default();
        f(&mut q);
        let got = query(d.path(), &q).unwrap().records;
        assert_eq!(got, naive(&all, &q), "{q:?}");
        got
    };
    let r = q(&|q| q.limit = 5);
    assert_eq!(r.len(), 5);
    assert_eq!(
        r[0].id.as_deref(),
        Some(rec(99).id.as_str()),
        "newest first"
    );
    let r = q(&|q| q.status = Some(StatusFilter::Exact(403)));
    assert!(!r.is_empty() && r.iter().all(|r| r.status == Some(403)));
    let r = q(&|q| q.status = StatusFilter::parse("5xx"));
    assert!(!r.is_empty() && r.iter().all(|r| r.status.unwrap() / 100 == 5));
    let r = q(&|q| q.proxy = Some("legacy\"api".into()));
    assert_eq!(r.len(), 25);
    let r = q(&|q| q.agent = Some("ops\nagent".into()));
    assert!(!r.is_empty());
    q(&|q| {
        q.since = Some(BASE_TS + 20_000);
        q.until = Some(BASE_TS + 40_000);
    });
    assert!(q(&|q| q.proxy = Some("nope".into())).is_empty());
    assert!(q(&|q| q.limit = 0).is_empty());
}

#[test]
fn query_ignores_gaps_and_a_line_being_written() {
    let d = tempfile::tempdir().unwrap();
    let ring = std::sync::Arc::new(AuditRing::new(4, OnFull::Drop, OnError::Continue, false));
    for i in 0..10 {
        let _ = ring.push(rec(i));
    }
    AuditWriter::spawn(cfg(d.path()), ring)
        .unwrap()
        .flush_and_stop();
    let f = &logs(d.path())[0].path;
    let mut b = std::fs::read(f).unwrap();
    b.extend_from_slice(b"{\"ts\":\"2026-11-24T09:59:27.000000Z\",\"id\":\"x");
    std::fs::write(f, b).unwrap();
    let r = query(d.path(), &Query::default()).unwrap();
    assert_eq!(r.records.len(), 4);
    assert_eq!(r.malformed, 0);
}

#[test]
fn status_filter_parse() {
    assert_eq!(StatusFilter::parse("403"), Some(StatusFilter::Exact(403)));
    assert_eq!(StatusFilter::parse("4xx"), Some(StatusFilter::Class(4)));
    assert_eq!(StatusFilter::parse("5XX"), Some(StatusFilter::Class(5)));
    for bad in ["", "40", "4000", "0xx", "x4x", "099", "abc"] {
        assert_eq!(StatusFilter::parse(bad), None, "{bad}");
    }
    assert_eq!(
        query::parse_time_arg("1h", 7_200_000_000),
        Some(3_600_000_000)
    );
    assert_eq!(
        query::parse_time_arg("1970-01-01T00:00:01Z", 0),
        Some(1_000_000)
    );
    assert_eq!(query::parse_time_arg("soon", 0), None);
}

/// 200k records over several files: the indexed query agrees with a naive filter for many
/// filter combinations, and a limited or time-bounded query reads only a few blocks.
#[test]
fn query_large_log_matches_naive_filter() {
    const N: u64 = 200_000;
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.rotate_bytes = 16 << 20;
    let s = write_log(c, 0..N);
    assert_eq!(s.written, N);
    assert!(logs(d.path()).len() >= 3);
    let all = verify::read_all(d.path()).unwrap();
    assert_eq!(all.len() as u64, N);
    let span = N * 1000;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut cases = vec![
        Query::default(),
        Query {
            agent: Some("rare-agent".into()),
            limit: 1000,
            ..Query::default()
        },
        Query {
            agent: Some("rare-agent".into()),
            status: Some(StatusFilter::Exact(500)),
            ..Query::default()
        },
        Query {
            proxy: Some("crm".into()),
            agent: Some("billing-bot".into()),
            status: StatusFilter::parse("4xx"),
            decision: None,
            since: Some(BASE_TS + span / 3),
            until: Some(BASE_TS + span / 3 + 5_000_000),
            shadow: false,
            limit: 10_000,
            ..Query::default()
        },
        Query {
            tool: Some("delete\"account".into()),
            limit: 10_000,
            ..Query::default()
        },
        Query {
            tool: Some("file:///r/1".into()),
            mcp_method: Some("resources/read".into()),
            limit: 10_000,
            ..Query::default()
        },
    ];
    for _ in 0..40 {
        let since = BASE_TS + next() % span;
        cases.push(Query {
            proxy: next()
                .is_multiple_of(2)
                .then(|| PROXIES[(next() % 4) as usize].to_string()),
            agent: next()
                .is_multiple_of(3)
                .then(|| AGENTS[(next() % 4) as usize].to_string()),
            status: match next() % 4 {
                0 => Some(StatusFilter::Exact(STATUSES[(next() % 10) as usize])),
                1 => Some(StatusFilter::Class((2 + next() % 4) as u8)),
                _ => None,
            },
            decision: match next() % 4 {
                0 => Some("deny".to_string()),
                1 => Some("allow".to_string()),
                _ => None,
            },
            since: next().is_multiple_of(2).then_some(since),
            until: next()
                .is_multiple_of(2)
                .then(|| since + next() % (span / 4)),
            shadow: next().is_multiple_of(5),
            tool: next()
                .is_multiple_of(4)
                .then(|| MCP_NAMES[(next() % 3) as usize].to_string()),
            mcp_method: next().is_multiple_of(6).then(|| "tools/call".to_string()),
            limit: [1, 10, 100, 5000][(next() % 4) as usize],
        });
    }
    for q in &cases {
        let got = query(d.path(), q).unwrap();
        assert_eq!(got.records, naive(&all, q), "{q:?}");
        assert_eq!(got.malformed, 0);
    }
    // the index bounds the work
    let r = query(d.path(), &Query::default()).unwrap();
    assert_eq!(r.blocks_read, 1, "{r:?}");
    let q = Query {
        since: Some(BASE_TS + span / 2),
        until: Some(BASE_TS + span / 2 + 1_000_000),
        limit: 10_000,
        ..Query::default()
    };
    let r = query(d.path(), &q).unwrap();
    assert!(r.blocks_read <= 3, "{r:?}");
    assert!(!r.records.is_empty());
    let q = Query {
        agent: Some("rare-agent".into()),
        limit: 1_000_000,
        ..Query::default()
    };
    let r = query(d.path(), &q).unwrap();
    assert_eq!(r.records.len() as u64, N.div_ceil(997));
}

/// House rule: `unsafe` only in `audit/ring.rs` (the crate root only `deny`s it, so an `allow`
/// elsewhere would compile).
#[test]
fn unsafe_only_in_ring() {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    walk(&src, &mut all);
    let allow = ["allow(", "unsafe_code)"].concat();
    let block = ["unsafe", " {"].concat();
    let imp = ["unsafe", " impl"].concat();
    for p in all {
        let text = std::fs::read_to_string(&p).unwrap();
        let uses = text.contains(&allow) || text.contains(&block) || text.contains(&imp);
        if p.ends_with("observe/audit/ring.rs") {
            assert!(uses);
            // every unsafe block or impl is preceded by a SAFETY comment
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.contains(&block) || l.contains(&imp) {
                    let before = lines[..i]
                        .iter()
                        .rev()
                        .take(8)
                        .any(|l| l.contains("// SAFETY:"));
                    assert!(before, "ring.rs:{}: unsafe without a SAFETY comment", i + 1);
                }
            }
        } else {
            assert!(!uses, "{} uses or allows unsafe code", p.display());
        }
    }
}

#[test]
fn telemetry_matches_a_naive_aggregate_and_stops_at_its_bound() {
    let d = tempfile::tempdir().unwrap();
    write_log(cfg(d.path()), 0..3000);
    let all = verify::read_all(d.path()).unwrap();
    let since = BASE_TS + 500_000;
    let until = BASE_TS + 2_000_000;
    let rep = telemetry::compute(d.path(), Some("crm"), since, until, 1_000_000).unwrap();
    let want: Vec<&StoredRecord> = all
        .iter()
        .filter(|r| {
            !r.is_gap()
                && r.proxy.as_deref() == Some("crm")
                && r.ts_us().is_some_and(|t| t >= since && t <= until)
        })
        .collect();
    assert!(!rep.truncated);
    assert_eq!(rep.records, want.len() as u64);
    assert_eq!(rep.proxies.len(), 1);
    let p = &rep.proxies[0];
    assert_eq!(p.proxy.as_deref(), Some("crm"));
    assert_eq!(p.counts.calls, want.len() as u64);
    let mut lat: Vec<u64> = want.iter().map(|r| r.total_us.unwrap()).collect();
    lat.sort_unstable();
    assert_eq!(p.counts.latency_us.p50, telemetry::percentile(&lat, 50.0));
    assert_eq!(p.counts.latency_us.p99, telemetry::percentile(&lat, 99.0));
    let n4 = want.iter().filter(|r| r.status.unwrap() / 100 == 4).count() as u64;
    assert_eq!(p.counts.status.get("4xx").copied().unwrap_or(0), n4);
    let deny = want
        .iter()
        .filter(|r| r.decision.as_deref() == Some("deny"))
        .count() as u64;
    assert_eq!(p.counts.decisions.get("deny").copied().unwrap_or(0), deny);
    assert_eq!(
        p.agents.iter().map(|a| a.counts.calls).sum::<u64>(),
        p.counts.calls
    );
    for a in &p.agents {
        let mut l: Vec<u64> = want
            .iter()
            .filter(|r| r.agent == a.agent)
            .map(|r| r.total_us.unwrap())
            .collect();
        l.sort_unstable();
        assert_eq!(a.counts.calls, l.len() as u64);
        assert_eq!(a.counts.latency_us.p99, telemetry::percentile(&l, 99.0));
    }

    // the bound: newest first, truncated
    let rep = telemetry::compute(d.path(), None, 0, u64::MAX, 100).unwrap();
    assert!(rep.truncated);
    assert_eq!(rep.records, 100);
    let names: Vec<Option<&str>> = rep.proxies.iter().map(|p| p.proxy.as_deref()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
}
