//! The audit writer: one dedicated std thread that drains the ring and appends hash-chained JSON
//! lines to `dir/audit-YYYYMMDDTHHMMSSZ-<seq>.jsonl`, rotating at `rotate_bytes`, with a sparse
//! sidecar index (`index.rs`) per file.
//!
//! # Durability ("acknowledged")
//!
//! Nothing is acknowledged to the agent: the response has been sent before its record is
//! written (the trail is off the request path, SPEC "Audit records"). What the policies promise:
//! - a record counts as **written** ([`AuditStats::written`]) once `write(2)` returned for the
//!   batch holding it — it survives a crash of the process, not of the host;
//! - it counts as **synced** ([`AuditStats::synced`]) once an `fdatasync` that followed that
//!   write returned — it survives a power cut.
//!
//! `Always`: every batch (up to 1024 lines, one `write`) is followed by `fdatasync` before the
//! next batch is written, so at most one batch plus the queue is at risk. `Interval(d)`: at most
//! one `fdatasync` per `d`, issued when something was written since the last one (and on rotation
//! and shutdown); up to `d` of written records plus the queue are at risk. `Never`: the kernel
//! decides (rotation and shutdown do not sync either). New files are made durable by syncing the
//! directory, except under `Never`.
//!
//! # Restart
//!
//! Every start opens a new file (`seq` = newest + 1). The chain continues from the last complete
//! line of the newest non-empty file. A torn last line (crash mid-write) is cut off (the file is
//! truncated to its last `\n`) and a `torn_tail` gap record opens the new file, so the loss is
//! itself on the chain and `verify` sees an intact log.
//!
//! # Errors
//!
//! A failed write is rolled back (`ftruncate` to the last good length; if even that fails the
//! file is abandoned and a new one opened), counted in [`AuditStats::write_errors`], logged, and
//! retried with backoff (10 ms doubling to 1 s). Records wait in a pending buffer bounded by
//! `pending_max`; beyond it they are dropped and a `backlog_full` gap record takes their place.
//! Ring overflows (its drop counter) become `queue_full` gap records. The thread never panics on
//! I/O. If the directory is removed or the open file unlinked, the writer notices (checked every
//! second) and recreates it — `verify` then reports the missing history.
#![forbid(unsafe_code)]

use super::index::{self, BlockEntry};
use super::record::{AuditRecord, Entry, GENESIS, GapReason, Hash, encode_line};
use super::ring::{OnFull, Ring};
use super::{files, record};
use crate::util::clock;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The ring the data plane pushes into.
pub type AuditRing = Ring<AuditRecord>;

/// `[audit] fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval(Duration),
    Never,
}

impl FsyncPolicy {
    /// `"always"`, `"never"`, or a duration such as `"1s"` / `"250ms"`.
    pub fn parse(s: &str) -> Result<FsyncPolicy, String> {
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            d => match crate::util::units::parse_duration(d) {
                Ok(d) if d.is_zero() => Ok(FsyncPolicy::Always),
                Ok(d) => Ok(FsyncPolicy::Interval(d)),
                Err(e) => Err(format!("{e} (or \"always\" / \"never\")")),
            },
        }
    }
}

/// Everything the audit subsystem is configured with.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// `[audit] dir`.
    pub dir: PathBuf,
    /// `[audit] rotate` (bytes; a file ends after the line that reaches it).
    pub rotate_bytes: u64,
    /// `[audit] fsync`.
    pub fsync: FsyncPolicy,
    /// `[audit] on_full` ("drop" | "block"); used to build the ring.
    pub on_full: OnFull,
    /// `[audit] queue`: ring capacity in records (rounded up to a power of two).
    pub queue_capacity: usize,
    /// Records the writer holds while the disk refuses writes before dropping (with a gap).
    pub pending_max: usize,
    /// Records per index block.
    pub block_records: u32,
}

impl AuditConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AuditConfig {
            dir: dir.into(),
            rotate_bytes: 256 << 20,
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            on_full: OnFull::Drop,
            queue_capacity: 65_536,
            pending_max: 262_144,
            block_records: index::DEFAULT_BLOCK_RECORDS,
        }
    }

    /// The ring for this config.
    pub fn ring(&self) -> Arc<AuditRing> {
        Arc::new(Ring::new(self.queue_capacity, self.on_full))
    }
}

/// Counters exported to the metrics module (all monotonic except `pending`).
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Call records written (`write(2)` returned).
    pub written: AtomicU64,
    /// Call records covered by a successful `fdatasync`.
    pub synced: AtomicU64,
    /// Gap records written.
    pub gap_records: AtomicU64,
    /// Records dropped by the writer because its pending buffer was full.
    pub dropped_backlog: AtomicU64,
    /// Failed opens/writes (each retried).
    pub write_errors: AtomicU64,
    pub fsync_errors: AtomicU64,
    pub bytes: AtomicU64,
    pub files_opened: AtomicU64,
    /// Records waiting in the writer (gauge).
    pub pending: AtomicU64,
}

/// A point-in-time view for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub written: u64,
    pub synced: u64,
    pub gap_records: u64,
    /// Dropped because the ring was full.
    pub dropped_queue: u64,
    /// Dropped because the writer's pending buffer was full.
    pub dropped_backlog: u64,
    pub write_errors: u64,
    pub fsync_errors: u64,
    pub bytes: u64,
    pub files_opened: u64,
    /// Ring depth + writer pending.
    pub queue_depth: u64,
}

impl AuditStats {
    pub fn snapshot(&self, ring: &AuditRing) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            written: l(&self.written),
            synced: l(&self.synced),
            gap_records: l(&self.gap_records),
            dropped_queue: ring.dropped(),
            dropped_backlog: l(&self.dropped_backlog),
            write_errors: l(&self.write_errors),
            fsync_errors: l(&self.fsync_errors),
            bytes: l(&self.bytes),
            files_opened: l(&self.files_opened),
            queue_depth: ring.len() as u64 + l(&self.pending),
        }
    }
}

/// Lines per `write(2)`.
const BATCH: usize = 1024;
/// Records taken from the ring per loop turn while writes fail.
const DRAIN_MAX: usize = 8192;
/// Longest park when idle.
const IDLE_PARK: Duration = Duration::from_millis(100);
/// How often the writer checks that its file is still in the directory.
const PRESENCE_CHECK: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long shutdown keeps retrying a failing disk before giving up on pending records.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bytes read from the end of the newest file to find the chain head at start.
const TAIL_WINDOW: u64 = 64 << 10;

/// Control of the running writer thread.
pub struct Handle {
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    ring: Arc<AuditRing>,
}

struct Shared {
    stop: AtomicBool,
    flush_req: AtomicU64,
    flush_done: AtomicU64,
    stats: Arc<AuditStats>,
}

impl Handle {
    pub fn stats(&self) -> &Arc<AuditStats> {
        &self.shared.stats
    }

    pub fn ring(&self) -> &Arc<AuditRing> {
        &self.ring
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.shared.stats.snapshot(&self.ring)
    }

    /// Waits until every record pushed before this call is written (and synced unless the
    /// policy is `Never`). `false` on timeout (e.g. the disk is failing).
    pub fn flush(&self, timeout: Duration) -> bool {
        let want = self.shared.flush_req.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = clock::now() + timeout;
        loop {
            self.ring.force_wake_consumer();
            if self.shared.flush_done.load(Ordering::Acquire) >= want {
                return true;
            }
            if clock::now() >= deadline || self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return false;
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
    }

    /// Shutdown: drains the ring, writes what is pending (retrying a failing disk for up to 5 s),
    /// closes the file (final index entry, fsync unless `Never`) and joins the thread. Push
    /// nothing after this; records pushed later stay in the ring.
    pub fn flush_and_stop(mut self) -> StatsSnapshot {
        self.stop_and_join();
        self.snapshot()
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.ring.force_wake_consumer();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("audit writer thread panicked");
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts the writer thread.
pub struct AuditWriter;

impl AuditWriter {
    /// Creates `dir` if needed, finds the chain head (repairing a torn last line), and starts
    /// the thread. Errors here are startup errors (unusable directory).
    pub fn spawn(cfg: AuditConfig, ring: Arc<AuditRing>) -> io::Result<Handle> {
        std::fs::create_dir_all(&cfg.dir)?;
        let rec = recover(&cfg.dir)?;
        let stats = Arc::new(AuditStats::default());
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            flush_req: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
            stats: stats.clone(),
        });
        let mut w = Writer {
            // every drop of this ring's life gets a gap record (the writer is its one consumer)
            seen_ring_drops: 0,
            ring: ring.clone(),
            shared: shared.clone(),
            stats,
            next_seq: rec.next_seq,
            chain: rec.chain,
            file: None,
            pending: VecDeque::new(),
            pending_records: 0,
            buf: Vec::with_capacity(BATCH * 512),
            metas: Vec::with_capacity(BATCH),
            dirty_since_sync: false,
            unsynced: 0,
            last_sync: clock::now(),
            last_presence: clock::now(),
            backoff: BACKOFF_MIN,
            retry_at: None,
            consecutive_errors: 0,
            cfg,
        };
        if rec.torn_bytes > 0 {
            w.push_gap(1, GapReason::TornTail);
        }
        let thread = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || w.run())?;
        Ok(Handle {
            thread: Some(thread),
            shared,
            ring,
        })
    }
}

// Nearly every item is a record; boxing it would add an allocation per record.
#[allow(clippy::large_enum_variant)]
enum Item {
    Rec(AuditRecord),
    Gap {
        ts_us: u64,
        dropped: u64,
        reason: GapReason,
    },
}

struct Meta {
    ts: u64,
    status: Option<u16>,
    keys: [u64; 3],
    nkeys: usize,
    end: usize,
    call: bool,
}

struct OpenLog {
    file: File,
    path: PathBuf,
    ino: (u64, u64),
    len: u64,
    idx: Option<File>,
    block: BlockEntry,
}

struct Writer {
    cfg: AuditConfig,
    ring: Arc<AuditRing>,
    shared: Arc<Shared>,
    stats: Arc<AuditStats>,
    next_seq: u64,
    chain: Hash,
    file: Option<OpenLog>,
    pending: VecDeque<Item>,
    pending_records: usize,
    seen_ring_drops: u64,
    buf: Vec<u8>,
    metas: Vec<Meta>,
    dirty_since_sync: bool,
    unsynced: u64,
    last_sync: Instant,
    last_presence: Instant,
    backoff: Duration,
    retry_at: Option<Instant>,
    consecutive_errors: u64,
}

fn unix_us() -> u64 {
    clock::unix_now().as_micros() as u64
}

impl Writer {
    fn run(mut self) {
        self.ring.register_consumer();
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            let flush_req = self.shared.flush_req.load(Ordering::Acquire);
            self.drain();
            let now = clock::now();
            let writable = self.retry_at.is_none_or(|t| now >= t);
            if !self.pending.is_empty() && writable {
                self.write_batch();
            }
            let now = clock::now();
            self.maybe_sync(now);
            if now.duration_since(self.last_presence) >= PRESENCE_CHECK {
                self.last_presence = now;
                self.check_presence();
            }
            let idle = self.pending.is_empty() && self.ring.is_empty();
            if idle && flush_req > self.shared.flush_done.load(Ordering::Acquire) {
                if self.cfg.fsync != FsyncPolicy::Never {
                    self.sync();
                }
                self.shared.flush_done.store(flush_req, Ordering::Release);
            }
            if stopping {
                if idle {
                    break;
                }
                // a healthy disk gets all the time it needs; a failing one STOP_GRACE
                if self.consecutive_errors > 0
                    && now >= *stop_deadline.get_or_insert(now + STOP_GRACE)
                {
                    tracing::error!(
                        pending = self.pending_records,
                        "audit: giving up on pending records at shutdown (disk keeps failing)"
                    );
                    break;
                }
            }
            if !self.pending.is_empty() && writable {
                continue;
            }
            let mut timeout = IDLE_PARK;
            if let Some(t) = self.retry_at {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            if let (FsyncPolicy::Interval(d), true) = (self.cfg.fsync, self.dirty_since_sync) {
                timeout = timeout.min((self.last_sync + d).saturating_duration_since(now));
            }
            if !timeout.is_zero() {
                self.ring.wait(timeout);
            }
        }
        self.close_file();
        self.stats.pending.store(0, Ordering::Relaxed);
    }

    /// Moves records from the ring into `pending`. While writes succeed, only what the next
    /// batch needs, so a writer slower than the workers leaves the backlog in the ring (where
    /// the `on_full` policy applies) instead of overflowing `pending`. While writes fail, as
    /// much as arrives, so the workers are not held up by a dead disk (the overflow beyond
    /// `pending_max` becomes a gap record).
    fn drain(&mut self) {
        let want = if self.retry_at.is_some() {
            DRAIN_MAX
        } else {
            BATCH.saturating_sub(self.pending_records)
        };
        for _ in 0..want {
            match self.ring.pop() {
                Some(r) => self.enqueue(r),
                None => break,
            }
        }
        let d = self.ring.dropped();
        if d > self.seen_ring_drops {
            self.push_gap(d - self.seen_ring_drops, GapReason::QueueFull);
            self.seen_ring_drops = d;
        }
        self.stats
            .pending
            .store(self.pending_records as u64, Ordering::Relaxed);
    }

    fn enqueue(&mut self, r: AuditRecord) {
        if self.pending_records >= self.cfg.pending_max.max(1) {
            self.stats.dropped_backlog.fetch_add(1, Ordering::Relaxed);
            self.push_gap(1, GapReason::BacklogFull);
            return;
        }
        self.pending.push_back(Item::Rec(r));
        self.pending_records += 1;
    }

    /// Adds a gap, merging into the last pending gap when it has the same reason, or whatever
    /// its reason while the backlog is full (so gaps cannot grow the buffer without bound).
    fn push_gap(&mut self, n: u64, reason: GapReason) {
        let full = self.pending_records >= self.cfg.pending_max.max(1);
        if let Some(Item::Gap {
            dropped, reason: r, ..
        }) = self.pending.back_mut()
            && (*r == reason || full)
        {
            *dropped += n;
            return;
        }
        self.pending.push_back(Item::Gap {
            ts_us: unix_us(),
            dropped: n,
            reason,
        });
    }

    fn write_batch(&mut self) {
        if self.file.is_none() {
            match self.open_new() {
                Ok(f) => self.file = Some(f),
                Err(e) => return self.fail("open", e),
            }
        }
        let Some(f) = self.file.as_mut() else { return };
        let base = f.len;
        self.buf.clear();
        self.metas.clear();
        let mut h = self.chain;
        for item in self.pending.iter().take(BATCH) {
            if !self.metas.is_empty() && base + self.buf.len() as u64 >= self.cfg.rotate_bytes {
                break;
            }
            let meta = match item {
                Item::Rec(r) => {
                    h = encode_line(&mut self.buf, &Entry::Call(r), &h);
                    let mut keys = [0u64; 3];
                    let mut nkeys = 0;
                    if let Some(p) = &r.proxy {
                        keys[nkeys] = index::proxy_key(p);
                        nkeys += 1;
                    }
                    if let Some(a) = &r.agent {
                        keys[nkeys] = index::agent_key(a);
                        nkeys += 1;
                    }
                    keys[nkeys] = index::status_key(r.status);
                    nkeys += 1;
                    Meta {
                        ts: r.ts_us.min(record::MAX_TS_US),
                        status: Some(r.status),
                        keys,
                        nkeys,
                        end: self.buf.len(),
                        call: true,
                    }
                }
                &Item::Gap {
                    ts_us,
                    dropped,
                    reason,
                } => {
                    h = encode_line(
                        &mut self.buf,
                        &Entry::Gap {
                            ts_us,
                            dropped,
                            reason,
                        },
                        &h,
                    );
                    Meta {
                        ts: ts_us.min(record::MAX_TS_US),
                        status: None,
                        keys: [0; 3],
                        nkeys: 0,
                        end: self.buf.len(),
                        call: false,
                    }
                }
            };
            self.metas.push(meta);
        }
        if let Err(e) = f.file.write_all(&self.buf) {
            if let Err(e2) = f.file.set_len(base) {
                tracing::error!(file = %f.path.display(), error = %e2,
                    "audit: cannot roll back a failed write; abandoning the file");
                self.abandon_file();
            }
            return self.fail("write", e);
        }
        // committed
        self.chain = h;
        f.len = base + self.buf.len() as u64;
        let mut calls = 0u64;
        let mut gaps = 0u64;
        let mut idx_out = Vec::new();
        for m in &self.metas {
            f.block
                .add(m.ts, &m.keys[..m.nkeys], m.status, base + m.end as u64);
            if f.block.count >= self.cfg.block_records.max(1) {
                f.block.encode(&mut idx_out);
                f.block = BlockEntry::empty(f.block.end);
            }
            if m.call {
                calls += 1;
            } else {
                gaps += 1;
            }
        }
        write_idx(f, &idx_out);
        for _ in 0..self.metas.len() {
            self.pending.pop_front();
        }
        self.pending_records -= calls as usize;
        self.stats.written.fetch_add(calls, Ordering::Relaxed);
        self.stats.gap_records.fetch_add(gaps, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.stats
            .pending
            .store(self.pending_records as u64, Ordering::Relaxed);
        self.unsynced += calls;
        self.dirty_since_sync = true;
        self.retry_at = None;
        self.backoff = BACKOFF_MIN;
        if self.consecutive_errors > 0 {
            tracing::info!(
                errors = self.consecutive_errors,
                "audit: writing again after errors"
            );
            self.consecutive_errors = 0;
        }
        let rotate = f.len >= self.cfg.rotate_bytes;
        if self.cfg.fsync == FsyncPolicy::Always {
            self.sync();
        }
        if rotate {
            self.close_file();
        }
    }

    fn fail(&mut self, what: &'static str, e: io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        self.consecutive_errors += 1;
        let n = self.consecutive_errors;
        if n.is_power_of_two() {
            tracing::warn!(
                dir = %self.cfg.dir.display(), error = %e, consecutive = n,
                pending = self.pending_records,
                "audit: {what} failed; retrying"
            );
        }
        self.retry_at = Some(clock::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn maybe_sync(&mut self, now: Instant) {
        if let FsyncPolicy::Interval(d) = self.cfg.fsync
            && self.dirty_since_sync
            && now.duration_since(self.last_sync) >= d
        {
            self.sync();
        }
    }

    fn sync(&mut self) {
        self.last_sync = clock::now();
        let Some(f) = self.file.as_mut() else {
            self.dirty_since_sync = false;
            return;
        };
        if !self.dirty_since_sync {
            return;
        }
        match f.file.sync_data() {
            Ok(()) => {
                self.stats
                    .synced
                    .fetch_add(self.unsynced, Ordering::Relaxed);
                self.unsynced = 0;
                self.dirty_since_sync = false;
            }
            Err(e) => {
                self.stats.fsync_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %f.path.display(), error = %e, "audit: fsync failed");
            }
        }
    }

    fn open_new(&mut self) -> io::Result<OpenLog> {
        std::fs::create_dir_all(&self.cfg.dir)?;
        loop {
            let name = files::file_name(unix_us(), self.next_seq);
            let path = self.cfg.dir.join(name);
            self.next_seq += 1;
            let file = match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let md = file.metadata()?;
            let idx = match File::create(index::idx_path(&path)).and_then(|mut i| {
                i.write_all(index::MAGIC)?;
                Ok(i)
            }) {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e,
                        "audit: cannot create the index; queries will scan this file");
                    None
                }
            };
            if self.cfg.fsync != FsyncPolicy::Never
                && let Err(e) = File::open(&self.cfg.dir).and_then(|d| d.sync_all())
            {
                tracing::warn!(dir = %self.cfg.dir.display(), error = %e, "audit: directory fsync failed");
            }
            self.stats.files_opened.fetch_add(1, Ordering::Relaxed);
            return Ok(OpenLog {
                file,
                path,
                ino: (md.dev(), md.ino()),
                len: 0,
                idx,
                block: BlockEntry::empty(0),
            });
        }
    }

    /// Ends the current file: the partial block's index entry, then fsync (unless `Never`).
    fn close_file(&mut self) {
        if self.file.is_none() {
            return;
        }
        if self.cfg.fsync != FsyncPolicy::Never {
            self.sync();
        }
        if let Some(mut f) = self.file.take() {
            if f.block.count > 0 {
                let mut out = Vec::new();
                f.block.encode(&mut out);
                write_idx(&mut f, &out);
            }
            // the chain head, to anchor elsewhere: a hash chain alone cannot show that lines
            // or files were removed from its end (see verify.rs)
            tracing::info!(
                file = %f.path.display(),
                bytes = f.len,
                head = %record::hex_string(&self.chain),
                "audit: file closed"
            );
        }
    }

    fn abandon_file(&mut self) {
        self.file = None;
        self.dirty_since_sync = false;
    }

    /// Notices a removed directory or an unlinked file (writes to it would vanish).
    fn check_presence(&mut self) {
        let Some(f) = &self.file else { return };
        let same = std::fs::metadata(&f.path)
            .map(|m| (m.dev(), m.ino()) == f.ino)
            .unwrap_or(false);
        if !same {
            let path = f.path.clone();
            self.abandon_file();
            self.fail(
                "presence check",
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} was removed", path.display()),
                ),
            );
            // the file is gone, not busy: reopen at once
            self.retry_at = None;
        }
    }
}

fn write_idx(f: &mut OpenLog, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Some(i) = f.idx.as_mut()
        && let Err(e) = i.write_all(bytes)
    {
        tracing::warn!(file = %f.path.display(), error = %e,
            "audit: index write failed; queries will scan the rest of this file");
        f.idx = None;
    }
}

struct Recovered {
    chain: Hash,
    next_seq: u64,
    torn_bytes: u64,
}

/// Finds where the chain continues; cuts a torn last line off the newest non-empty file.
fn recover(dir: &Path) -> io::Result<Recovered> {
    let logs = files::list_files(dir)?;
    let next_seq = logs.last().map_or(1, |f| f.seq + 1);
    let mut torn_bytes = 0;
    let mut first = true;
    for lf in logs.iter().rev() {
        let len = std::fs::metadata(&lf.path)?.len();
        if len == 0 {
            continue;
        }
        let (head, torn_at) = chain_head(&lf.path, len)?;
        if first && let Some(at) = torn_at {
            torn_bytes = len - at;
            tracing::warn!(file = %lf.path.display(), bytes = torn_bytes,
                "audit: cutting a torn last line (crash mid-write); a torn_tail gap record follows");
            let f = OpenOptions::new().write(true).open(&lf.path)?;
            f.set_len(at)?;
            f.sync_all()?;
        }
        first = false;
        if let Some(h) = head {
            return Ok(Recovered {
                chain: h,
                next_seq,
                torn_bytes,
            });
        }
        if torn_at != Some(0) {
            tracing::error!(file = %lf.path.display(),
                "audit: no valid line at the end of the newest file; `audit verify` will report it");
        }
    }
    Ok(Recovered {
        chain: GENESIS,
        next_seq,
        torn_bytes,
    })
}

/// The hash of the last valid complete line of a file, and the offset where a torn last line
/// starts (if the file does not end in `\n`).
fn chain_head(path: &Path, len: u64) -> io::Result<(Option<Hash>, Option<u64>)> {
    let mut f = File::open(path)?;
    let mut window = TAIL_WINDOW.min(len);
    loop {
        let start = len - window;
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity(window as usize);
        (&mut f).take(window).read_to_end(&mut buf)?;
        let complete_end = match memchr::memrchr(b'\n', &buf) {
            Some(i) => i + 1,
            None if start == 0 => 0,
            None => {
                window = (window * 4).min(len);
                continue;
            }
        };
        let torn_at = (complete_end < buf.len()).then_some(start + complete_end as u64);
        // lines inside the window, newest first (the first may be cut by the window edge)
        let body = &buf[..complete_end];
        let mut end = body.len();
        while end > 0 {
            let line_end = end - 1; // the '\n'
            let line_start = memchr::memrchr(b'\n', &body[..line_end]).map_or(0, |i| i + 1);
            if line_start == 0 && start > 0 {
                break; // possibly cut; widen
            }
            if let Some(t) = record::split_tail(&body[line_start..line_end])
                && let Some(h) = record::hex_decode(t.hash_hex)
            {
                return Ok((Some(h), torn_at));
            }
            end = line_start;
        }
        if start == 0 {
            return Ok((None, torn_at));
        }
        window = (window * 4).min(len);
    }
}
