//! Cluster meters: one bucket shared by every gateway process, kept in Redis, with a small
//! local reserve of tokens per bucket so that Redis is not on each call's path.
//!
//! # How a call is metered
//! Each bucket (a proxy, or a proxy and an agent) has a [`Reserve`] in this process: a count of
//! tokens already taken from Redis, and a deadline after which they are void. A worker takes a
//! token with one atomic decrement. When the reserve is empty (or, for a hot bucket with a batch
//! of 4 or more, down to a quarter of a batch) the worker flags it and queues it for the refill
//! thread, which takes up to `batch` tokens from the shared Redis bucket in one atomic script
//! call (several buckets' refills go in one pipelined round trip). A worker that found the
//! reserve empty polls it, sleeping on the monoio timer, for at most [`MAX_WAIT`]; if Redis
//! granted nothing it answers 429 with the `Retry-After` Redis computed, and until then answers
//! 429 locally without asking Redis again.
//!
//! # Accuracy
//! Redis admits exactly as the local GCRA does (at most `burst + rate × t / per` tokens in any
//! window of length `t`). A process holds at most `batch` tokens at a time, and tokens not used
//! within the *horizon* (`2 × batch` token intervals, clamped to 100 ms..1 s) are dropped, so a
//! process cannot bank tokens across quiet periods. Hence over any window the cluster admits
//! within **± processes × batch** of what one exact bucket would: at most that many more (tokens
//! fetched before the window and spent in it) and at most that many fewer (tokens fetched and
//! dropped or still held). With the default batch (`max(1, min(burst/4, rate per second/20))`)
//! that is at most 5% of a second's rate, or a quarter of the burst, per process.
//!
//! # When Redis is down
//! A failed round trip is retried once on a fresh connection (Redis may close idle ones); if
//! that fails too (connect or I/O error, timeout) the cluster is down: logged once per
//! transition, counted in [`Health`], and the refill thread reconnects with exponential backoff
//! (100 ms to 2 s).
//! Tokens already in a reserve are still spent; after that `on_redis_down` decides: `closed`
//! refuses every call (503 `meter_unavailable`), `open` meters each process on its own local
//! buckets (the cluster admits up to processes × the limit), `open_reads` (the default) does
//! that for GET, HEAD and OPTIONS and refuses the rest.
//!
//! The Redis side is the [`Store`] trait (the real one is `super::redis_store`), so the batching
//! logic here is tested with a fake store and an injected clock.
use super::Snapshot;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Longest a call waits for a refill before it is answered.
pub const MAX_WAIT: Duration = Duration::from_millis(50);
/// How often a waiting call looks at its reserve again.
pub const POLL: Duration = Duration::from_millis(1);
/// Refills sent to Redis in one pipelined round trip at most.
pub const MAX_PIPELINE: usize = 256;
/// Reconnect backoff, first and largest.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What to do with a call whose reserve is empty while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDown {
    /// Refuse every call (503 `meter_unavailable`).
    Closed,
    /// Meter on this process's own buckets.
    Open,
    /// GET/HEAD/OPTIONS as `open`, everything else as `closed`.
    OpenReads,
}

/// One GCRA limit as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitArgs {
    /// Nanoseconds per token.
    pub interval_ns: u64,
    pub burst: u64,
}

/// What a bucket is: its Redis key and limits. Shared by all reserves of one meter except for
/// the key.
#[derive(Debug)]
pub struct BucketParams {
    pub rate: Option<LimitArgs>,
    pub quota: Option<LimitArgs>,
    /// Tokens fetched per round trip.
    pub batch: u64,
    /// Tokens unused this long after their fetch are dropped.
    pub horizon_ns: u64,
}

/// One refill asked of the store: take up to `want` tokens (as many as available) from the
/// bucket `key` (the store derives the rate and quota keys from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeReq {
    pub key: Arc<str>,
    pub want: u64,
    pub rate: Option<LimitArgs>,
    pub quota: Option<LimitArgs>,
}

/// The store's answer to one [`TakeReq`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    /// When fewer than asked were granted: nanoseconds until the next token.
    pub retry_after_ns: u64,
    /// Whether the quota (rather than the rate) was the limit that ran out.
    pub quota: bool,
    /// The shared bucket after the take (rate if there is one, else quota).
    pub snapshot: Snapshot,
}

/// Why the store could not answer; any error marks the cluster down.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// The shared side of the buckets (Redis, or a fake in tests). Used from the refill thread only.
pub trait Store: Send {
    /// Takes tokens for every request, in order; one round trip.
    fn take(&mut self, reqs: &[TakeReq]) -> Result<Vec<Grant>, StoreError>;
}

/// Opens a store (connects, loads the script).
pub type Connect = Arc<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>;

/// The local reserve of one bucket. Workers only decrement `tokens` and set `want`; the refill
/// thread writes everything else.
#[derive(Debug)]
pub struct Reserve {
    key: Arc<str>,
    params: Arc<BucketParams>,
    tokens: AtomicU64,
    /// Monotonic ns after which `tokens` are void.
    deadline: AtomicU64,
    /// When the last batch arrived.
    fetched_at: AtomicU64,
    /// Redis granted nothing: answer 429 locally until then.
    limited_until: AtomicU64,
    quota_limited: AtomicBool,
    /// The shared bucket as of the last refill.
    limit: AtomicU64,
    remaining: AtomicU64,
    reset_at: AtomicU64,
    /// A refill is queued or in flight.
    want: AtomicBool,
}

/// The local outcome of one look at a reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Allowed(Snapshot),
    Limited {
        snapshot: Snapshot,
        retry_after_ns: u64,
        quota: bool,
    },
    /// Redis is down and `on_redis_down` lets this call through on the local buckets.
    Fallback,
    /// Redis is down and `on_redis_down` refuses this call.
    Unavailable,
    /// A refill is on its way: look again after [`POLL`].
    Pending,
}

impl Reserve {
    pub fn new(key: Arc<str>, params: Arc<BucketParams>) -> Reserve {
        let limit = params.rate.or(params.quota).map_or(0, |l| l.burst);
        Reserve {
            key,
            params,
            tokens: AtomicU64::new(0),
            deadline: AtomicU64::new(0),
            fetched_at: AtomicU64::new(0),
            limited_until: AtomicU64::new(0),
            quota_limited: AtomicBool::new(false),
            limit: AtomicU64::new(limit),
            remaining: AtomicU64::new(limit),
            reset_at: AtomicU64::new(0),
            want: AtomicBool::new(false),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Tokens usable at `now`.
    pub fn live_tokens(&self, now: u64) -> u64 {
        if now >= self.deadline.load(Ordering::Acquire) {
            0
        } else {
            self.tokens.load(Ordering::Acquire)
        }
    }

    /// Whether this reserve holds nothing worth keeping (for pruning agent buckets).
    pub fn is_idle(&self, now: u64) -> bool {
        self.live_tokens(now) == 0
            && !self.want.load(Ordering::Acquire)
            && self.limited_until.load(Ordering::Acquire) <= now
    }

    /// Takes one local token: the tokens left after it.
    #[inline]
    fn take(&self, now: u64) -> Option<u64> {
        if now >= self.deadline.load(Ordering::Acquire) {
            return None;
        }
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
            .ok()
            .map(|prev| prev - 1)
    }

    fn snapshot(&self, now: u64, local_left: u64) -> Snapshot {
        let limit = self.limit.load(Ordering::Relaxed);
        let remaining = self
            .remaining
            .load(Ordering::Relaxed)
            .saturating_add(local_left)
            .min(limit);
        Snapshot {
            limit,
            remaining,
            reset_ns: self.reset_at.load(Ordering::Relaxed).saturating_sub(now),
        }
    }

    /// Applies a store's answer (refill thread).
    fn apply(&self, g: &Grant, now: u64) {
        if g.granted > 0 {
            if now >= self.deadline.load(Ordering::Acquire) {
                // old tokens are void: they are replaced, not topped up
                self.tokens.store(g.granted, Ordering::Release);
            } else {
                self.tokens.fetch_add(g.granted, Ordering::AcqRel);
            }
            self.fetched_at.store(now, Ordering::Relaxed);
            self.deadline.store(
                now.saturating_add(self.params.horizon_ns),
                Ordering::Release,
            );
            self.limited_until.store(0, Ordering::Release);
        } else {
            self.quota_limited.store(g.quota, Ordering::Relaxed);
            self.limited_until.store(
                now.saturating_add(g.retry_after_ns.max(1)),
                Ordering::Release,
            );
        }
        self.limit.store(g.snapshot.limit, Ordering::Relaxed);
        self.remaining
            .store(g.snapshot.remaining, Ordering::Relaxed);
        self.reset_at
            .store(now.saturating_add(g.snapshot.reset_ns), Ordering::Relaxed);
    }
}

/// Health of the Redis side, shared by the refill thread and the workers.
#[derive(Debug, Default)]
pub struct Health {
    down: AtomicBool,
    /// Store calls that failed (connect, I/O, timeout, protocol).
    pub errors: AtomicU64,
    /// Up → down transitions.
    pub outages: AtomicU64,
    /// Store round trips made, and tokens fetched with them.
    pub round_trips: AtomicU64,
    pub tokens_fetched: AtomicU64,
}

impl Health {
    #[inline]
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}

/// `[meters]` as compiled.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    /// Where Redis is, for logs (never a password).
    pub display: String,
    /// Identifies the connection parameters including the credential (never printed).
    pub connection_id: u64,
    pub key_prefix: String,
    /// `None` = auto.
    pub batch: Option<u64>,
    pub on_down: OnDown,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("redis", &self.display)
            .field("key_prefix", &self.key_prefix)
            .field("batch", &self.batch)
            .field("on_down", &self.on_down)
            .finish()
    }
}

/// One Redis cluster meter backend: its settings, health, and the refill thread (started on
/// first use, so `portcullis check` never connects). Dropping it ends the thread.
pub struct Cluster {
    pub settings: Settings,
    pub health: Arc<Health>,
    connect: Connect,
    tx: OnceLock<flume::Sender<Arc<Reserve>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(settings: Settings, connect: Connect) -> Cluster {
        Cluster {
            settings,
            health: Arc::new(Health::default()),
            connect,
            tx: OnceLock::new(),
        }
    }

    /// Parameters of one meter's buckets.
    pub fn params(
        &self,
        rate: Option<&super::Rate>,
        quota: Option<&super::Rate>,
    ) -> Arc<BucketParams> {
        let args = |r: &super::Rate| LimitArgs {
            interval_ns: interval_ns(r),
            burst: r.burst.max(1),
        };
        let rate = rate.map(args);
        let quota = quota.map(args);
        let main = rate.or(quota).unwrap_or(LimitArgs {
            interval_ns: 1,
            burst: 1,
        });
        let batch = match self.settings.batch {
            Some(b) => b.clamp(1, main.burst),
            None => auto_batch(main),
        };
        let horizon = batch
            .saturating_mul(main.interval_ns)
            .saturating_mul(2)
            .clamp(100_000_000, 1_000_000_000);
        Arc::new(BucketParams {
            rate,
            quota,
            batch,
            horizon_ns: horizon,
        })
    }

    /// Queues a refill of `r` unless one is already queued.
    fn request(&self, r: &Arc<Reserve>) {
        if r.want.swap(true, Ordering::AcqRel) {
            return;
        }
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = flume::unbounded();
            let health = self.health.clone();
            let connect = self.connect.clone();
            let display = self.settings.display.clone();
            let spawned = std::thread::Builder::new()
                .name("meter-redis".into())
                .spawn(move || refill_thread(rx, connect, health, display));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the meter refill thread");
            }
            tx
        });
        if tx.send(r.clone()).is_err() {
            // no refill thread: the cluster is as good as down
            self.health.down.store(true, Ordering::Release);
            r.want.store(false, Ordering::Release);
        }
    }

    /// One look at a bucket's reserve: take a token, or say what to do instead.
    /// `read`: the call is a GET, HEAD or OPTIONS; `give_up`: the call has waited [`MAX_WAIT`].
    pub fn poll(&self, r: &Arc<Reserve>, now: u64, read: bool, give_up: bool) -> Local {
        if let Some(left) = r.take(now) {
            let p = &r.params;
            if p.batch >= 4
                && left <= p.batch / 4
                && now.saturating_sub(r.fetched_at.load(Ordering::Relaxed)) < p.horizon_ns / 2
            {
                // a hot bucket: fetch the next batch before it runs dry
                self.request(r);
            }
            return Local::Allowed(r.snapshot(now, left));
        }
        let until = r.limited_until.load(Ordering::Acquire);
        if now < until {
            return Local::Limited {
                snapshot: r.snapshot(now, 0),
                retry_after_ns: until - now,
                quota: r.quota_limited.load(Ordering::Relaxed),
            };
        }
        if self.health.is_down() {
            return match (self.settings.on_down, read) {
                (OnDown::Open, _) | (OnDown::OpenReads, true) => Local::Fallback,
                (OnDown::Closed, _) | (OnDown::OpenReads, false) => Local::Unavailable,
            };
        }
        if give_up {
            // Redis is slow rather than down: refuse this call, keep the refill coming
            let retry = r
                .params
                .rate
                .or(r.params.quota)
                .map_or(0, |l| l.interval_ns);
            return Local::Limited {
                snapshot: r.snapshot(now, 0),
                retry_after_ns: retry.max(1),
                quota: false,
            };
        }
        self.request(r);
        Local::Pending
    }
}

/// Nanoseconds per token of a rate.
pub fn interval_ns(r: &super::Rate) -> u64 {
    let per = u64::try_from(r.per.as_nanos()).unwrap_or(u64::MAX);
    (per / r.rate.max(1)).max(1)
}

/// `max(1, min(burst / 4, tokens per second / 20))`.
pub fn auto_batch(l: LimitArgs) -> u64 {
    let per_sec = 1_000_000_000 / l.interval_ns.max(1);
    (l.burst / 4).min(per_sec / 20).max(1)
}

/// The bucket key: `prefix{proxy:fingerprint}` or `prefix{proxy:fingerprint:agent}`. The braces
/// are a Redis Cluster hash tag, so a bucket's rate and quota keys share a slot; names are
/// escaped so that no two buckets share a key.
pub fn bucket_key(prefix: &str, proxy: &str, fingerprint: u64, agent: Option<&str>) -> Arc<str> {
    let mut k = String::with_capacity(prefix.len() + proxy.len() + 24);
    k.push_str(prefix);
    k.push('{');
    escape_into(proxy, &mut k);
    k.push(':');
    k.push_str(&format!("{fingerprint:016x}"));
    if let Some(a) = agent {
        k.push(':');
        escape_into(a, &mut k);
    }
    k.push('}');
    k.into()
}

fn escape_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-@+=/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A stable fingerprint of a meter spec (FNV-1a): a changed spec uses fresh shared buckets.
pub fn fingerprint(spec: &super::MeterSpec) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u64| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(match spec.by {
        super::MeterBy::Proxy => 1,
        super::MeterBy::Agent => 2,
    });
    for r in [&spec.rate, &spec.quota] {
        match r {
            Some(r) => {
                eat(r.rate);
                eat(u64::try_from(r.per.as_nanos()).unwrap_or(u64::MAX));
                eat(r.burst);
            }
            None => eat(0),
        }
    }
    h
}

/// The refill thread's state machine, separate from the thread so tests drive it with a fake
/// store and an injected clock.
pub struct Refiller {
    connect: Connect,
    health: Arc<Health>,
    display: String,
    store: Option<Box<dyn Store>>,
    /// Earliest next connect attempt (monotonic ns).
    next_attempt: u64,
    backoff: Duration,
}

impl Refiller {
    pub fn new(connect: Connect, health: Arc<Health>, display: String) -> Refiller {
        Refiller {
            connect,
            health,
            display,
            store: None,
            next_attempt: 0,
            backoff: BACKOFF_MIN,
        }
    }

    /// How long the thread may sleep before it has something to do without a new request.
    pub fn idle_wait(&self, now: u64) -> Duration {
        if self.store.is_none() && self.health.is_down() {
            Duration::from_nanos(self.next_attempt.saturating_sub(now)).max(POLL)
        } else {
            Duration::from_secs(1)
        }
    }

    fn mark_down(&mut self, now: u64, why: &str) {
        self.store = None;
        self.health.errors.fetch_add(1, Ordering::Relaxed);
        self.next_attempt = now.saturating_add(u64::try_from(self.backoff.as_nanos()).unwrap_or(0));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        if !self.health.down.swap(true, Ordering::AcqRel) {
            self.health.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                redis = %self.display,
                error = why,
                outages = self.health.outages.load(Ordering::Relaxed),
                errors = self.health.errors.load(Ordering::Relaxed),
                "cluster meters: Redis unreachable; on_redis_down applies"
            );
        }
    }

    /// Makes sure there is a connection, if the backoff allows an attempt now.
    pub fn ensure_connected(&mut self, now: u64) -> bool {
        if self.store.is_some() {
            return true;
        }
        if now < self.next_attempt {
            return false;
        }
        match (self.connect)() {
            Ok(s) => {
                self.store = Some(s);
                self.backoff = BACKOFF_MIN;
                if self.health.down.swap(false, Ordering::AcqRel) {
                    tracing::info!(redis = %self.display, "cluster meters: Redis reachable again");
                }
                true
            }
            Err(e) => {
                self.mark_down(now, &e.0);
                false
            }
        }
    }

    fn take(&mut self, reqs: &[TakeReq]) -> Result<Vec<Grant>, StoreError> {
        self.health.round_trips.fetch_add(1, Ordering::Relaxed);
        match self.store.as_mut() {
            Some(s) => s.take(reqs),
            None => Err(StoreError("not connected".into())),
        }
    }

    /// Serves the queued refills: one pipelined store call (per [`MAX_PIPELINE`] reserves).
    /// `now` is read again after the round trip, since the tokens' horizon starts on arrival.
    pub fn serve(&mut self, batch: &[Arc<Reserve>], now: &dyn Fn() -> u64) {
        if batch.is_empty() {
            return;
        }
        if !self.ensure_connected(now()) {
            for r in batch {
                r.want.store(false, Ordering::Release);
            }
            return;
        }
        for chunk in batch.chunks(MAX_PIPELINE) {
            let t = now();
            let reqs: Vec<TakeReq> = chunk
                .iter()
                .map(|r| TakeReq {
                    key: r.key.clone(),
                    want: r.params.batch.saturating_sub(r.live_tokens(t)).max(1),
                    rate: r.params.rate,
                    quota: r.params.quota,
                })
                .collect();
            let mut result = self.take(&reqs);
            if result.is_err() {
                // A connection Redis closed while idle is not an outage: reconnect at once and
                // retry; only a failure of that marks the cluster down.
                self.health.errors.fetch_add(1, Ordering::Relaxed);
                self.store = None;
                self.next_attempt = 0;
                if !self.ensure_connected(now()) {
                    for r in chunk {
                        r.want.store(false, Ordering::Release);
                    }
                    continue;
                }
                result = self.take(&reqs);
            }
            let t = now();
            match result {
                Ok(grants) if grants.len() == chunk.len() => {
                    for (r, g) in chunk.iter().zip(&grants) {
                        self.health
                            .tokens_fetched
                            .fetch_add(g.granted, Ordering::Relaxed);
                        r.apply(g, t);
                        r.want.store(false, Ordering::Release);
                    }
                }
                Ok(_) => {
                    self.mark_down(t, "the store answered a different number of replies");
                    for r in chunk {
                        r.want.store(false, Ordering::Release);
                    }
                }
                Err(e) => {
                    self.mark_down(t, &e.0);
                    for r in chunk {
                        r.want.store(false, Ordering::Release);
                    }
                }
            }
        }
    }
}

fn refill_thread(
    rx: flume::Receiver<Arc<Reserve>>,
    connect: Connect,
    health: Arc<Health>,
    display: String,
) {
    let mut refiller = Refiller::new(connect, health, display);
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    let now = crate::util::clock::mono_ns;
    loop {
        match rx.recv_timeout(refiller.idle_wait(now())) {
            Ok(r) => batch.push(r),
            Err(flume::RecvTimeoutError::Timeout) => {
                // reconnect probe while down, so recovery is noticed without traffic
                if refiller.health.is_down() {
                    refiller.ensure_connected(now());
                }
                continue;
            }
            Err(flume::RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < 4 * MAX_PIPELINE {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        refiller.serve(&batch, &now);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::meter::{ProxyMeter, Rate};
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// An exact GCRA bucket store on a shared fake clock, counting calls; can be "down".
    #[derive(Clone, Default)]
    struct Fake {
        inner: Arc<FakeInner>,
    }
    #[derive(Default)]
    struct FakeInner {
        clock: AtomicU64,
        down: AtomicBool,
        calls: AtomicUsize,
        // key → tat (one bucket family is enough for these tests: only the rate is modelled,
        // the quota as a second cell)
        tats: dashmap::DashMap<String, u64>,
    }
    impl Fake {
        fn set_now(&self, t: u64) {
            self.inner.clock.store(t, Ordering::SeqCst);
        }
        fn now(&self) -> u64 {
            self.inner.clock.load(Ordering::SeqCst)
        }
        fn connect(&self) -> Connect {
            let f = self.clone();
            Arc::new(move || {
                if f.inner.down.load(Ordering::SeqCst) {
                    Err(StoreError("connection refused".into()))
                } else {
                    Ok(Box::new(f.clone()) as Box<dyn Store>)
                }
            })
        }
    }
    impl Store for Fake {
        fn take(&mut self, reqs: &[TakeReq]) -> Result<Vec<Grant>, StoreError> {
            if self.inner.down.load(Ordering::SeqCst) {
                return Err(StoreError("broken pipe".into()));
            }
            self.inner.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.now();
            Ok(reqs
                .iter()
                .map(|q| {
                    let mut cells = Vec::new();
                    for (suffix, l) in [(":r", q.rate), (":q", q.quota)] {
                        if let Some(l) = l {
                            let k = format!("{}{suffix}", q.key);
                            let tat = self.inner.tats.get(&k).map_or(now, |t| *t).max(now);
                            let tol = l.interval_ns * l.burst;
                            let avail = (tol - (tat - now).min(tol)) / l.interval_ns;
                            cells.push((k, l, tat, avail, suffix == ":q"));
                        }
                    }
                    let grant = cells
                        .iter()
                        .map(|c| c.3)
                        .min()
                        .unwrap_or(q.want)
                        .min(q.want);
                    let (mut retry, mut quota) = (0, false);
                    let mut snap = None;
                    for (k, l, tat, _, is_q) in &cells {
                        let tat = tat + grant * l.interval_ns;
                        self.inner.tats.insert(k.clone(), tat);
                        let wait =
                            (tat + l.interval_ns).saturating_sub(l.interval_ns * l.burst + now);
                        if grant < q.want && wait > retry {
                            retry = wait;
                            quota = *is_q;
                        }
                        snap.get_or_insert(Snapshot {
                            limit: l.burst,
                            remaining: (l.interval_ns * l.burst).saturating_sub(tat - now)
                                / l.interval_ns,
                            reset_ns: tat - now,
                        });
                    }
                    Grant {
                        granted: grant,
                        retry_after_ns: retry,
                        quota,
                        snapshot: snap.unwrap_or(Snapshot {
                            limit: 0,
                            remaining: 0,
                            reset_ns: 0,
                        }),
                    }
                })
                .collect())
        }
    }

    fn settings(batch: Option<u64>, on_down: OnDown) -> Settings {
        Settings {
            display: "fake".into(),
            connection_id: 0,
            key_prefix: "t:".into(),
            batch,
            on_down,
        }
    }

    fn rate(rate: u64, burst: u64) -> Rate {
        Rate {
            rate,
            per: Duration::from_secs(1),
            burst,
        }
    }

    /// A reserve + refiller driven by hand: `poll` → if Pending, run the refiller → poll again.
    struct Rig {
        fake: Fake,
        cluster: Cluster,
        refiller: Refiller,
        rx: flume::Receiver<Arc<Reserve>>,
    }
    impl Rig {
        fn new(batch: Option<u64>, on_down: OnDown) -> Rig {
            let fake = Fake::default();
            let cluster = Cluster::new(settings(batch, on_down), fake.connect());
            // intercept the queue: the test plays the refill thread
            let (tx, rx) = flume::unbounded();
            cluster.tx.set(tx).unwrap();
            let refiller = Refiller::new(fake.connect(), cluster.health.clone(), "fake".into());
            Rig {
                fake,
                cluster,
                refiller,
                rx,
            }
        }
        fn pump(&mut self) {
            let batch: Vec<_> = self.rx.try_iter().collect();
            let f = self.fake.clone();
            self.refiller.serve(&batch, &move || f.now());
        }
        /// A call at the fake clock's now: polls, pumping refills, as the worker would.
        fn call(&mut self, r: &Arc<Reserve>, read: bool) -> Local {
            for _ in 0..3 {
                match self.cluster.poll(r, self.fake.now(), read, false) {
                    Local::Pending => self.pump(),
                    v => return v,
                }
            }
            Local::Pending
        }
    }

    #[test]
    fn batch_defaults_and_horizon() {
        let rig = Rig::new(None, OnDown::OpenReads);
        let p = rig.cluster.params(Some(&rate(20, 10)), None);
        assert_eq!(p.batch, 1, "min(10/4, 20/20) = 1");
        assert_eq!(p.horizon_ns, 100 * MS, "2 × 50 ms");
        let p = rig.cluster.params(Some(&rate(1000, 400)), None);
        assert_eq!(p.batch, 50, "min(400/4, 1000/20)");
        assert_eq!(p.horizon_ns, 100 * MS);
        let p = rig.cluster.params(Some(&rate(10_000, 100)), None);
        assert_eq!(p.batch, 25);
        let p = rig.cluster.params(Some(&rate(1, 1)), None);
        assert_eq!((p.batch, p.horizon_ns), (1, S), "clamped to 1 s");
        let rig = Rig::new(Some(1000), OnDown::Closed);
        assert_eq!(
            rig.cluster.params(Some(&rate(100, 30)), None).batch,
            30,
            "≤ burst"
        );
    }

    #[test]
    fn keys_escape_names_and_carry_the_fingerprint() {
        let k = bucket_key("pc:", "crm", 0xab, Some("a:b{c}%"));
        assert_eq!(&*k, "pc:{crm:00000000000000ab:a%3Ab%7Bc%7D%25}");
        assert_eq!(&*bucket_key("p:", "x", 1, None), "p:{x:0000000000000001}");
        let s = crate::policy::meter::MeterSpec {
            by: crate::policy::meter::MeterBy::Proxy,
            rate: Some(rate(5, 5)),
            quota: None,
        };
        let mut s2 = s;
        s2.rate = Some(rate(5, 6));
        assert_ne!(fingerprint(&s), fingerprint(&s2));
        assert_eq!(fingerprint(&s), fingerprint(&s));
    }

    #[test]
    fn tokens_come_in_batches_and_redis_sees_one_call_per_batch() {
        let mut rig = Rig::new(Some(10), OnDown::Closed);
        rig.fake.set_now(1000 * S);
        let params = rig.cluster.params(Some(&rate(100, 50)), None);
        let r = Arc::new(Reserve::new("t:{p}".into(), params));
        for i in 0..50 {
            match rig.call(&r, false) {
                Local::Allowed(s) => assert_eq!(s.limit, 50, "call {i}"),
                v => panic!("call {i}: {v:?}"),
            }
        }
        // 50 tokens of burst taken in batches of 10 (the last refills prefetch at ≤ 2 left)
        let calls = rig.fake.inner.calls.load(Ordering::SeqCst);
        assert!((5..=7).contains(&calls), "{calls} store calls");
        // the bucket is now empty in Redis: the next call is limited with Redis's retry-after
        match rig.call(&r, false) {
            Local::Limited {
                retry_after_ns,
                quota,
                snapshot,
            } => {
                assert!(!quota);
                assert!(
                    retry_after_ns > 0 && retry_after_ns <= 10 * MS,
                    "{retry_after_ns}"
                );
                assert_eq!(snapshot.remaining, 0);
            }
            v => panic!("{v:?}"),
        }
        // and further calls are limited locally, without asking Redis again
        let before = rig.fake.inner.calls.load(Ordering::SeqCst);
        assert!(matches!(rig.call(&r, false), Local::Limited { .. }));
        assert_eq!(rig.fake.inner.calls.load(Ordering::SeqCst), before);
    }

    #[test]
    fn unused_tokens_are_dropped_after_the_horizon() {
        let mut rig = Rig::new(Some(10), OnDown::Closed);
        let t0 = 1000 * S;
        rig.fake.set_now(t0);
        let params = rig.cluster.params(Some(&rate(100, 10)), None);
        let horizon = params.horizon_ns;
        assert_eq!(horizon, 200 * MS);
        let r = Arc::new(Reserve::new("t:{p}".into(), params));
        assert!(matches!(rig.call(&r, false), Local::Allowed(_)));
        assert_eq!(r.live_tokens(t0), 9);
        assert_eq!(r.live_tokens(t0 + horizon), 0, "void after the horizon");
        // the 9 were taken from Redis: after the horizon, the bucket has refilled 20 tokens
        // (capped at the burst of 10), and a new batch replaces (not adds to) the old one
        rig.fake.set_now(t0 + horizon);
        assert!(matches!(rig.call(&r, false), Local::Allowed(_)));
        assert_eq!(r.live_tokens(t0 + horizon), 9);
    }

    /// Two processes (two reserves on one fake Redis) under overload for 3 simulated seconds
    /// admit burst + rate × t within processes × batch.
    #[test]
    fn two_processes_share_the_bucket_within_the_bound() {
        let fake = Fake::default();
        let mk = || {
            let cluster = Cluster::new(settings(Some(5), OnDown::Closed), fake.connect());
            let (tx, rx) = flume::unbounded();
            cluster.tx.set(tx).unwrap();
            let refiller = Refiller::new(fake.connect(), cluster.health.clone(), "f".into());
            Rig {
                fake: fake.clone(),
                cluster,
                refiller,
                rx,
            }
        };
        let mut procs = [mk(), mk()];
        let reserves: Vec<_> = procs
            .iter()
            .map(|p| {
                let params = p.cluster.params(Some(&rate(100, 20)), None);
                Arc::new(Reserve::new("t:{shared}".into(), params))
            })
            .collect();
        let t0 = 50 * S;
        let admitted = Cell::new(0u64);
        // 1000 calls/s per process, interleaved
        for n in 0..3000u64 {
            fake.set_now(t0 + n * MS);
            for (p, r) in procs.iter_mut().zip(&reserves) {
                if let Local::Allowed(_) = p.call(r, false) {
                    admitted.set(admitted.get() + 1);
                }
            }
        }
        let want = 20 + 100 * 3;
        let got = admitted.get();
        assert!(
            got.abs_diff(want) <= 2 * 5,
            "admitted {got}, want {want} ± 10"
        );
    }

    #[test]
    fn quota_runs_out_in_the_same_call() {
        let mut rig = Rig::new(Some(4), OnDown::Closed);
        rig.fake.set_now(10 * S);
        let q = Rate {
            rate: 6,
            per: Duration::from_secs(86_400),
            burst: 6,
        };
        let params = rig.cluster.params(Some(&rate(100, 100)), Some(&q));
        let r = Arc::new(Reserve::new("t:{q}".into(), params));
        let mut ok = 0;
        let mut last = None;
        for _ in 0..10 {
            match rig.call(&r, false) {
                Local::Allowed(_) => ok += 1,
                v => last = Some(v),
            }
        }
        assert_eq!(ok, 6);
        match last {
            Some(Local::Limited {
                quota,
                retry_after_ns,
                ..
            }) => {
                assert!(quota);
                assert!(retry_after_ns > 3600 * S);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn redis_down_applies_the_policy_and_recovers_with_backoff() {
        for (on_down, read, want) in [
            (OnDown::Closed, true, Local::Unavailable),
            (OnDown::Open, false, Local::Fallback),
            (OnDown::OpenReads, true, Local::Fallback),
            (OnDown::OpenReads, false, Local::Unavailable),
        ] {
            let mut rig = Rig::new(Some(1), on_down);
            let t0 = 10 * S;
            rig.fake.set_now(t0);
            let params = rig.cluster.params(Some(&rate(1000, 100)), None);
            let r = Arc::new(Reserve::new("t:{d}".into(), params));
            assert!(matches!(rig.call(&r, read), Local::Allowed(_)));
            rig.fake.inner.down.store(true, Ordering::SeqCst);
            assert_eq!(rig.call(&r, read), want, "{on_down:?} read={read}");
            assert!(rig.cluster.health.is_down());
            assert_eq!(rig.cluster.health.outages.load(Ordering::SeqCst), 1);
            // more calls while down: same answer, still one outage, no store calls
            assert_eq!(rig.call(&r, read), want);
            assert_eq!(rig.cluster.health.outages.load(Ordering::SeqCst), 1);
            // Redis back: the first attempt waits for the backoff
            rig.fake.inner.down.store(false, Ordering::SeqCst);
            assert!(!rig.refiller.ensure_connected(t0 + 10 * MS));
            assert!(rig.refiller.idle_wait(t0 + 10 * MS) <= BACKOFF_MIN);
            assert!(
                rig.refiller
                    .ensure_connected(t0 + BACKOFF_MIN.as_nanos() as u64)
            );
            assert!(!rig.cluster.health.is_down());
            rig.fake.set_now(t0 + S);
            assert!(matches!(rig.call(&r, read), Local::Allowed(_)));
        }
    }

    /// A store whose first take fails (Redis closed an idle connection): the refiller
    /// reconnects at once and the call is served, with no outage.
    #[test]
    fn a_dropped_idle_connection_is_not_an_outage() {
        struct Once(Fake, bool);
        impl Store for Once {
            fn take(&mut self, reqs: &[TakeReq]) -> Result<Vec<Grant>, StoreError> {
                if std::mem::replace(&mut self.1, false) {
                    return Err(StoreError("connection reset".into()));
                }
                self.0.take(reqs)
            }
        }
        let mut rig = Rig::new(Some(1), OnDown::Closed);
        let fake = rig.fake.clone();
        let first = Arc::new(AtomicBool::new(true));
        let connect: Connect = Arc::new(move || {
            let broken = first.swap(false, Ordering::SeqCst);
            Ok(Box::new(Once(fake.clone(), broken)) as Box<dyn Store>)
        });
        rig.refiller = Refiller::new(connect, rig.cluster.health.clone(), "f".into());
        rig.fake.set_now(S);
        let params = rig.cluster.params(Some(&rate(10, 10)), None);
        let r = Arc::new(Reserve::new("t:{i}".into(), params));
        assert!(matches!(rig.call(&r, false), Local::Allowed(_)));
        let h = &rig.cluster.health;
        assert_eq!(h.outages.load(Ordering::SeqCst), 0);
        assert_eq!(h.errors.load(Ordering::SeqCst), 1);
        assert!(!h.is_down());
    }

    #[test]
    fn a_slow_store_gives_up_with_a_429_not_a_hang() {
        let rig = Rig::new(Some(1), OnDown::Closed);
        let params = rig.cluster.params(Some(&rate(10, 10)), None);
        let r = Arc::new(Reserve::new("t:{s}".into(), params));
        assert_eq!(rig.cluster.poll(&r, S, false, false), Local::Pending);
        // nobody pumps: after MAX_WAIT the worker gives up
        match rig.cluster.poll(&r, S + 50 * MS, false, true) {
            Local::Limited { retry_after_ns, .. } => assert_eq!(retry_after_ns, 100 * MS),
            v => panic!("{v:?}"),
        }
        // one queued refill only, however many calls asked
        assert_eq!(rig.cluster.poll(&r, S, false, false), Local::Pending);
        assert_eq!(rig.rx.len(), 1);
    }

    #[test]
    fn proxy_meter_in_cluster_mode_falls_back_to_local_buckets() {
        let fake = Fake::default();
        fake.inner.down.store(true, Ordering::SeqCst);
        let cluster = Arc::new(Cluster::new(settings(None, OnDown::Open), fake.connect()));
        cluster.health.down.store(true, Ordering::SeqCst);
        let spec = crate::policy::meter::MeterSpec {
            by: crate::policy::meter::MeterBy::Agent,
            rate: Some(rate(1, 2)),
            quota: None,
        };
        let m = ProxyMeter::with_cluster(spec, "p", cluster);
        use crate::policy::meter::Verdict;
        assert!(matches!(
            m.poll(Some("a"), S, true, false),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            m.poll(Some("a"), S, true, false),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            m.poll(Some("a"), S, true, false),
            Verdict::Limited { .. }
        ));
        assert!(matches!(
            m.poll(Some("b"), S, true, false),
            Verdict::Allowed(_)
        ));
    }
}
