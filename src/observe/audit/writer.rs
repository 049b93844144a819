//! The audit writer: one dedicated std thread that drains the ring and appends hash-chained JSON
//! lines to `dir/audit-YYYYMMDDTHHMMSSZ-<seq>.jsonl`, rotating at `rotate_bytes`, with a sparse
//! sidecar index (`index.rs`) per file.
//!
//! # Durability ("acknowledged")
//!
//! By default nothing is acknowledged to the agent: the response has been sent before its
//! record is written (the trail is off the request path, SPEC "Audit records"). With
//! `fsync = "always"` and `on_error = "refuse"` the order flips: the pipeline waits for the
//! record's `fdatasync` before it releases the response head (see `gate.rs`). What the
//! policies promise:
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
//! # Errors (a full disk)
//!
//! A failed write is rolled back (`ftruncate` to the last good length; if even that fails the
//! file is abandoned and a new one opened), counted in [`AuditStats::write_errors`] and retried
//! with backoff (10 ms doubling to 1 s). The writer is *failing* from the first failed write to
//! the next successful one: one warning at the start, one info line at the end (with the error
//! count and how long it lasted), the `portcullis_audit_degraded` gauge, `/readyz` "degraded",
//! and under `on_error = "refuse"` calls are refused meanwhile. Records wait in a pending buffer
//! bounded by `pending_max`; beyond it they are dropped and a `backlog_full` gap record (count
//! and receive-time window) takes their place, written as soon as writing succeeds again. Ring
//! overflows (its drop counter) become `queue_full` gap records. If the gateway stops while the
//! disk still refuses writes (after 5 s of retries), everything still held becomes one
//! `write_failed` gap record, written into space freed by deleting the *reserve*: a
//! pre-allocated file (`.reserve`, [`RESERVE_BYTES`]) kept in the directory for exactly this, so
//! the next `audit verify` reports the loss instead of "ok". The reserve is re-created at the
//! next start. The thread never panics on I/O. If the directory is removed or the open file
//! unlinked, the writer notices (checked every second) and recreates it — `verify` then
//! reports the missing history.
//!
//! # Checkpoints, the published head, retention
//!
//! With `signing_key` or `head_file`, a checkpoint record follows every `checkpoint_records`
//! calls, every `checkpoint_interval` with calls since the last one, and the last calls at
//! shutdown. It is synced at once, then published: written (atomically) to `head_file` and
//! kept for `GET /v1/audit/head`, so `audit verify --expect-head` can prove that nothing before
//! it was cut from the end. With `retain_files` / `retain`, the oldest closed files are
//! deleted (never the open one, never the newest non-empty one) after each rotation, at start
//! and once a minute; an anchor record then names the hash of the first line that remains.
#![forbid(unsafe_code)]

use super::gate::{AuditRing, OnError};
use super::index::{self, BlockEntry};
use super::record::{AuditRecord, Entry, GENESIS, GapReason, Hash, encode_line};
use super::ring::OnFull;
use super::sign::SigningKey;
use super::{files, record};
use crate::util::clock;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// `[audit] on_error`.
    pub on_error: OnError,
    /// `[audit] signing_key`: signs checkpoints.
    pub signing_key: Option<Arc<SigningKey>>,
    /// `[audit] checkpoint_records`: a checkpoint after this many calls.
    pub checkpoint_records: u64,
    /// `[audit] checkpoint_interval`: a checkpoint this long after the last one (if calls came).
    pub checkpoint_interval: Duration,
    /// `[audit] head_file`: where the latest checkpoint is published (outside `dir`).
    pub head_file: Option<PathBuf>,
    /// `[audit] retain_files`: keep at most this many log files.
    pub retain_files: Option<usize>,
    /// `[audit] retain`: delete log files last written longer ago than this.
    pub retain_age: Option<Duration>,
    /// Size of the reserve file (0: none).
    pub reserve_bytes: u64,
    /// `[[audit.sinks]]`: retention keeps the files these sinks have not delivered yet
    /// (`cursor.rs`).
    pub sink_holds: Vec<super::cursor::SinkHold>,
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
            on_error: OnError::Continue,
            signing_key: None,
            checkpoint_records: 1000,
            checkpoint_interval: Duration::from_secs(60),
            head_file: None,
            retain_files: None,
            retain_age: None,
            reserve_bytes: RESERVE_BYTES,
            sink_holds: Vec::new(),
        }
    }

    /// The ring for this config.
    pub fn ring(&self) -> Arc<AuditRing> {
        Arc::new(AuditRing::new(
            self.queue_capacity,
            self.on_full,
            self.on_error,
            self.fsync == FsyncPolicy::Always,
        ))
    }

    /// Whether checkpoint records are written.
    pub fn checkpoints(&self) -> bool {
        self.signing_key.is_some() || self.head_file.is_some()
    }
}

/// Default size of the reserve file that guarantees room for the last gap record.
pub const RESERVE_BYTES: u64 = 256 << 10;
/// The reserve file's name in the audit directory.
pub const RESERVE_NAME: &str = ".reserve";

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
    /// Records lost because the disk still refused writes at shutdown (before the process
    /// exits; the `write_failed` gap record carries the count).
    pub dropped_write: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Files deleted by retention.
    pub files_removed: AtomicU64,
    /// The latest published head (JSON), for `GET /v1/audit/head`.
    pub head: RwLock<Option<String>>,
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
    /// Writes are failing right now.
    pub degraded: bool,
    pub dropped_write: u64,
    pub checkpoints: u64,
    pub files_removed: u64,
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
            degraded: ring.failing(),
            dropped_write: l(&self.dropped_write),
            checkpoints: l(&self.checkpoints),
            files_removed: l(&self.files_removed),
        }
    }

    /// The latest published head, if a checkpoint was written.
    pub fn head(&self) -> Option<String> {
        self.head.read().ok().and_then(|h| h.clone())
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
/// How often retention looks for files past `retain`.
const RETENTION_CHECK: Duration = Duration::from_secs(60);

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
    /// Creates `dir` if needed, finds the chain head (repairing a torn last line), makes the
    /// reserve, applies retention and starts the thread. Errors here are startup errors
    /// (unusable directory).
    pub fn spawn(cfg: AuditConfig, ring: Arc<AuditRing>) -> io::Result<Handle> {
        std::fs::create_dir_all(&cfg.dir)?;
        let rec = recover(&cfg.dir)?;
        let stats = Arc::new(AuditStats::default());
        // the last published head stays served until this run publishes its own
        if let Some(text) = cfg
            .head_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            && let Ok(mut h) = stats.head.write()
        {
            *h = Some(text.trim().to_string());
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            flush_req: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
            stats: stats.clone(),
        });
        let now = clock::now();
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
            last_sync: now,
            last_presence: now,
            backoff: BACKOFF_MIN,
            retry_at: None,
            consecutive_errors: 0,
            popped: 0,
            written_ticket: 0,
            last_drain_us: unix_us(),
            failing_since: None,
            since_cp_enqueued: 0,
            since_cp_written: 0,
            last_cp: now,
            last_retention: now,
            parked: Vec::new(),
            cfg,
        };
        if rec.torn_bytes > 0 {
            let t = unix_us();
            w.push_gap(1, GapReason::TornTail, (t, t));
        }
        w.make_reserve();
        w.apply_retention();
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
    /// A call record and its ticket (ring position + 1).
    Rec(AuditRecord, u64),
    Gap {
        ts_us: u64,
        dropped: u64,
        reason: GapReason,
        window: (u64, u64),
    },
    Checkpoint,
    Anchor {
        first: Hash,
        file: String,
        removed: u64,
    },
}

/// A checkpoint as written, for publishing.
struct CheckpointHead {
    ts_us: u64,
    /// The hash of the line before it (what the signature covers).
    prev: Hash,
    records: u64,
    /// Its own line hash (the head to expect).
    hash: Hash,
    sig: Option<[u8; 64]>,
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
    /// Records popped from the ring so far (= the ticket of the last one popped).
    popped: u64,
    /// Ticket of the last call record written (synced tickets follow it on `sync`).
    written_ticket: u64,
    /// When the ring was last drained (µs), for the window of `queue_full` gaps.
    last_drain_us: u64,
    /// Since when writes fail (µs since the epoch, and the monotonic instant).
    failing_since: Option<(u64, Instant)>,
    /// Calls queued / written since the last checkpoint.
    since_cp_enqueued: u64,
    since_cp_written: u64,
    last_cp: Instant,
    last_retention: Instant,
    /// Calls waiting for their ticket to be synced (durable mode).
    parked: Vec<(u64, std::task::Waker)>,
}

fn unix_us() -> u64 {
    clock::unix_now().as_micros() as u64
}

impl Writer {
    fn run(mut self) {
        self.ring.register_consumer();
        let mut stop_deadline: Option<Instant> = None;
        let mut final_checkpoint = false;
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            let flush_req = self.shared.flush_req.load(Ordering::Acquire);
            self.drain();
            let now = clock::now();
            if self.cfg.checkpoints()
                && self.since_cp_enqueued > 0
                && now.duration_since(self.last_cp) >= self.cfg.checkpoint_interval
            {
                self.push_checkpoint();
            }
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
            if self.cfg.retain_age.is_some()
                && now.duration_since(self.last_retention) >= RETENTION_CHECK
            {
                self.apply_retention();
            }
            let idle = self.pending.is_empty() && self.ring.is_empty();
            if idle && flush_req > self.shared.flush_done.load(Ordering::Acquire) {
                if self.cfg.fsync != FsyncPolicy::Never {
                    self.sync();
                }
                self.shared.flush_done.store(flush_req, Ordering::Release);
            }
            if stopping {
                if idle && !final_checkpoint && self.cfg.checkpoints() && self.since_cp_enqueued > 0
                {
                    // the last calls get a checkpoint too, so the published head is the end
                    final_checkpoint = true;
                    self.push_checkpoint();
                    continue;
                }
                if idle {
                    break;
                }
                // a healthy disk gets all the time it needs; a failing one STOP_GRACE
                if self.consecutive_errors > 0
                    && now >= *stop_deadline.get_or_insert(now + STOP_GRACE)
                {
                    self.write_loss_from_reserve();
                    break;
                }
            }
            if !self.pending.is_empty() && writable {
                continue;
            }
            self.ring.wake_waiters(&mut self.parked);
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
                Some(r) => {
                    self.popped += 1;
                    self.enqueue(r, self.popped)
                }
                None => break,
            }
        }
        let now_us = unix_us();
        let d = self.ring.dropped();
        if d > self.seen_ring_drops {
            // the drops happened since the last drain
            self.push_gap(
                d - self.seen_ring_drops,
                GapReason::QueueFull,
                (self.last_drain_us, now_us),
            );
            self.seen_ring_drops = d;
        }
        self.last_drain_us = now_us;
        self.stats
            .pending
            .store(self.pending_records as u64, Ordering::Relaxed);
    }

    fn enqueue(&mut self, r: AuditRecord, ticket: u64) {
        if self.pending_records >= self.cfg.pending_max.max(1) {
            self.stats.dropped_backlog.fetch_add(1, Ordering::Relaxed);
            self.ring.set_lost_through(ticket);
            self.push_gap(1, GapReason::BacklogFull, (r.ts_us, r.ts_us));
            return;
        }
        let call = !r.completion;
        self.pending.push_back(Item::Rec(r, ticket));
        self.pending_records += 1;
        if call && self.cfg.checkpoints() {
            self.since_cp_enqueued += 1;
            if self.since_cp_enqueued >= self.cfg.checkpoint_records.max(1) {
                self.push_checkpoint();
            }
        }
    }

    fn push_checkpoint(&mut self) {
        self.pending.push_back(Item::Checkpoint);
        self.since_cp_enqueued = 0;
        self.last_cp = clock::now();
    }

    /// Adds a gap, merging into the last pending gap when it has the same reason, or whatever
    /// its reason while the backlog is full (so gaps cannot grow the buffer without bound).
    fn push_gap(&mut self, n: u64, reason: GapReason, window: (u64, u64)) {
        let full = self.pending_records >= self.cfg.pending_max.max(1);
        if let Some(Item::Gap {
            dropped,
            reason: r,
            window: w,
            ..
        }) = self.pending.back_mut()
            && (*r == reason || full)
        {
            *dropped += n;
            w.0 = w.0.min(window.0);
            w.1 = w.1.max(window.1);
            return;
        }
        self.pending.push_back(Item::Gap {
            ts_us: unix_us(),
            dropped: n,
            reason,
            window,
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
        let mut last_ticket = None;
        let mut cp_calls = self.since_cp_written;
        // the last checkpoint of the batch
        let mut head: Option<CheckpointHead> = None;
        for item in self.pending.iter().take(BATCH) {
            if !self.metas.is_empty() && base + self.buf.len() as u64 >= self.cfg.rotate_bytes {
                break;
            }
            let meta = match item {
                Item::Rec(r, ticket) if r.completion => {
                    h = encode_line(&mut self.buf, &Entry::Completion(r), &h);
                    last_ticket = Some(*ticket);
                    Meta {
                        ts: r.ts_us.min(record::MAX_TS_US),
                        status: None,
                        keys: [0; 3],
                        nkeys: 0,
                        end: self.buf.len(),
                        call: false,
                    }
                }
                Item::Rec(r, ticket) => {
                    h = encode_line(&mut self.buf, &Entry::Call(r), &h);
                    last_ticket = Some(*ticket);
                    cp_calls += 1;
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
                other => {
                    let ts_us = unix_us();
                    let prev = h;
                    match other {
                        &Item::Gap {
                            ts_us,
                            dropped,
                            reason,
                            window,
                        } => {
                            h = encode_line(
                                &mut self.buf,
                                &Entry::Gap {
                                    ts_us,
                                    dropped,
                                    reason,
                                    window: Some(window),
                                },
                                &h,
                            );
                        }
                        Item::Checkpoint => {
                            let sig = self.cfg.signing_key.as_ref().map(|k| {
                                let msg = record::checkpoint_message(
                                    &record::format_ts(ts_us),
                                    &record::hex_string(&prev),
                                    cp_calls,
                                );
                                (k.public(), k.sign(&msg))
                            });
                            h = encode_line(
                                &mut self.buf,
                                &Entry::Checkpoint {
                                    ts_us,
                                    records: cp_calls,
                                    signed: sig.as_ref().map(|(k, s)| (*k, s)),
                                },
                                &h,
                            );
                            head = Some(CheckpointHead {
                                ts_us,
                                prev,
                                records: cp_calls,
                                hash: h,
                                sig: sig.map(|(_, s)| s),
                            });
                            cp_calls = 0;
                        }
                        Item::Anchor {
                            first,
                            file,
                            removed,
                        } => {
                            h = encode_line(
                                &mut self.buf,
                                &Entry::Anchor {
                                    ts_us,
                                    first,
                                    file,
                                    removed: *removed,
                                },
                                &h,
                            );
                        }
                        Item::Rec(..) => {}
                    }
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
        self.since_cp_written = cp_calls;
        if let Some(t) = last_ticket {
            self.written_ticket = t;
        }
        f.len = base + self.buf.len() as u64;
        let mut calls = 0u64;
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
            }
        }
        write_idx(f, &idx_out);
        let mut gaps = 0u64;
        let mut cps = 0u64;
        let mut recs = 0usize;
        for _ in 0..self.metas.len() {
            match self.pending.pop_front() {
                Some(Item::Gap { .. }) => gaps += 1,
                Some(Item::Checkpoint) => cps += 1,
                Some(Item::Rec(..)) => recs += 1,
                _ => {}
            }
        }
        self.pending_records -= recs;
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
            let (since_us, since) = self
                .failing_since
                .take()
                .unwrap_or((unix_us(), clock::now()));
            tracing::info!(
                errors = self.consecutive_errors,
                failing_since = %record::format_ts(since_us),
                failing_for_ms = since.elapsed().as_millis() as u64,
                "audit: writing again after errors; records held meanwhile are written now"
            );
            self.consecutive_errors = 0;
            self.ring.set_failing(false);
        }
        let rotate = f.len >= self.cfg.rotate_bytes;
        if self.cfg.fsync == FsyncPolicy::Always || head.is_some() {
            // a published head must be durable (it would otherwise claim lost lines)
            self.sync();
        }
        if let Some(cp) = head
            && !self.dirty_since_sync
        {
            self.publish_head(&cp);
        }
        // counted once published (the metric never runs ahead of the head)
        self.stats.checkpoints.fetch_add(cps, Ordering::Relaxed);
        if rotate {
            self.close_file();
            self.apply_retention();
        }
    }

    fn fail(&mut self, what: &'static str, e: io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        self.consecutive_errors += 1;
        if self.consecutive_errors == 1 {
            self.failing_since = Some((unix_us(), clock::now()));
            self.ring.set_failing(true);
            self.ring.wake_waiters(&mut self.parked);
            tracing::warn!(
                dir = %self.cfg.dir.display(), error = %e,
                pending = self.pending_records,
                on_error = ?self.cfg.on_error,
                "audit: {what} failed; holding records and retrying (logged once until it recovers)"
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
                self.ring.set_synced_through(self.written_ticket);
            }
            Err(e) => {
                self.stats.fsync_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %f.path.display(), error = %e, "audit: fsync failed");
                // not durable: failing until a later write (and its sync) succeeds
                if self.consecutive_errors == 0 {
                    self.failing_since = Some((unix_us(), clock::now()));
                }
                self.consecutive_errors += 1;
                self.ring.set_failing(true);
                self.retry_at = Some(clock::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
        // calls waiting for their record (durable mode) go on at once
        self.ring.wake_waiters(&mut self.parked);
    }

    /// Writes the latest checkpoint to `head_file` (atomically) and keeps it for the admin API.
    fn publish_head(&mut self, cp: &CheckpointHead) {
        let head = serde_json::json!({
            "ts": record::format_ts(cp.ts_us),
            "hash": record::hex_string(&cp.hash),
            "prev": record::hex_string(&cp.prev),
            "records": cp.records,
            "key": self.cfg.signing_key.as_ref().map(|k| crate::util::hex::encode(k.public())),
            "sig": cp.sig.map(|s| crate::util::hex::encode(&s[..])),
        })
        .to_string();
        if let Some(path) = &self.cfg.head_file
            && let Err(e) = write_atomic(path, head.as_bytes())
        {
            tracing::warn!(file = %path.display(), error = %e, "audit: cannot publish the head");
        }
        if let Ok(mut h) = self.stats.head.write() {
            *h = Some(head);
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

    /// Creates the reserve file if it is missing (best effort: a full disk at start is logged).
    fn make_reserve(&mut self) {
        if self.cfg.reserve_bytes == 0 {
            return;
        }
        let path = self.cfg.dir.join(RESERVE_NAME);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= self.cfg.reserve_bytes) {
            return;
        }
        let res = File::create(&path).and_then(|mut f| {
            let zeros = vec![0u8; 64 << 10];
            let mut left = self.cfg.reserve_bytes;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.sync_all()
        });
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(file = %path.display(), error = %e,
                "audit: cannot create the reserve; a loss at a full-disk shutdown may go unrecorded");
        }
    }

    /// Shutdown on a disk that still refuses writes: everything held becomes one
    /// `write_failed` gap, written into the space the reserve frees.
    fn write_loss_from_reserve(&mut self) {
        let mut lost = 0u64;
        let mut from = u64::MAX;
        let mut to = 0u64;
        let mut kept = VecDeque::new();
        for item in self.pending.drain(..) {
            match item {
                Item::Rec(r, t) => {
                    lost += u64::from(!r.completion);
                    from = from.min(r.ts_us);
                    to = to.max(r.ts_us);
                    self.ring.set_lost_through(t);
                }
                Item::Gap {
                    dropped, window, ..
                } => {
                    lost += dropped;
                    from = from.min(window.0);
                    to = to.max(window.1);
                }
                other @ (Item::Anchor { .. } | Item::Checkpoint) => kept.push_back(other),
            }
        }
        self.pending_records = 0;
        if from > to {
            from = unix_us();
            to = from;
        }
        self.stats.dropped_write.fetch_add(lost, Ordering::Relaxed);
        self.pending.push_back(Item::Gap {
            ts_us: unix_us(),
            dropped: lost,
            reason: GapReason::WriteFailed,
            window: (from, to),
        });
        self.pending.extend(kept);
        if self.cfg.checkpoints() {
            self.pending.push_back(Item::Checkpoint);
        }
        let reserve = self.cfg.dir.join(RESERVE_NAME);
        let freed = std::fs::remove_file(&reserve).is_ok();
        // the rolled-back file may be gone or unusable: start from a clean state
        self.retry_at = None;
        self.write_batch();
        if self.pending.is_empty() {
            tracing::error!(
                lost, reserve_used = freed,
                from = %record::format_ts(from), to = %record::format_ts(to),
                "audit: the disk still refuses writes at shutdown; {lost} record(s) lost, \
                 recorded as a write_failed gap record"
            );
        } else {
            tracing::error!(
                lost,
                reserve_used = freed,
                "audit: the disk still refuses writes at shutdown; {lost} record(s) lost and \
                 the gap record could not be written either"
            );
        }
    }

    /// Deletes the oldest files past `retain_files` / `retain` and queues an anchor naming the
    /// first line that remains. Never deletes the open file or the newest non-empty one.
    fn apply_retention(&mut self) {
        self.last_retention = clock::now();
        if self.cfg.retain_files.is_none() && self.cfg.retain_age.is_none() {
            return;
        }
        let Ok(logs) = files::list_files(&self.cfg.dir) else {
            return;
        };
        let open = self.file.as_ref().map(|f| f.path.clone());
        let lens: Vec<u64> = logs
            .iter()
            .map(|l| std::fs::metadata(&l.path).map_or(0, |m| m.len()))
            .collect();
        let Some(newest_nonempty) = lens.iter().rposition(|&l| l > 0) else {
            return;
        };
        let now = std::time::SystemTime::now();
        let mut count = logs.len();
        let mut removed = 0u64;
        for (i, lf) in logs.iter().enumerate() {
            if i >= newest_nonempty || open.as_deref() == Some(lf.path.as_path()) {
                break;
            }
            let too_many = self.cfg.retain_files.is_some_and(|n| count > n.max(1));
            let too_old = self.cfg.retain_age.is_some_and(|age| {
                std::fs::metadata(&lf.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|d| d > age)
            });
            if !too_many && !too_old {
                break;
            }
            // a sink that has not delivered this file yet keeps it (and every newer one)
            if let Some(sink) = super::cursor::held(&self.cfg.dir, lf, &self.cfg.sink_holds) {
                tracing::info!(file = %lf.path.display(), sink,
                    "audit: retention keeps a file a sink has not delivered yet");
                break;
            }
            match std::fs::remove_file(&lf.path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(index::idx_path(&lf.path));
                    count -= 1;
                    removed += 1;
                    tracing::info!(file = %lf.path.display(), "audit: retention removed a file");
                }
                Err(e) => {
                    tracing::warn!(file = %lf.path.display(), error = %e, "audit: retention cannot remove a file");
                    break;
                }
            }
        }
        if removed == 0 {
            return;
        }
        self.stats
            .files_removed
            .fetch_add(removed, Ordering::Relaxed);
        // the first line that remains
        let first = files::list_files(&self.cfg.dir)
            .ok()
            .into_iter()
            .flatten()
            .find_map(|lf| first_line_hash(&lf.path).map(|h| (h, lf)));
        if let Some((first, lf)) = first {
            self.pending.push_back(Item::Anchor {
                first,
                file: files::display_name(&lf.path),
                removed,
            });
        }
    }
}

/// The stored hash of a file's first line.
fn first_line_hash(path: &Path) -> Option<Hash> {
    let mut r = super::verify::LineReader::open(path).ok()?;
    let l = r.next_line().ok()??;
    if !l.complete {
        return None;
    }
    record::split_tail(l.bytes).and_then(|t| record::hex_decode(t.hash_hex))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
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
