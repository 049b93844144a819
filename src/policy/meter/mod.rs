//! Meters: token buckets per proxy or per (proxy, agent), with an optional longer quota.
//!
//! Each bucket is a GCRA cell (generic cell rate algorithm, the token bucket written as one
//! "theoretical arrival time"): one `AtomicU64` updated by compare-and-swap. That makes a meter
//! exact across every worker thread with no lock on the hot path: over any window of length `t`
//! a bucket admits at most `burst + rate × t / per` calls, and under overload exactly that many
//! (the accuracy test drives 5× the rate through several threads and checks ±5%).
//!
//! Time is injected (`now_ns`, nanoseconds on any monotonic scale), so the core is sans-io.
//! Bucket state lives in a [`MeterStore`] that outlives config reloads: a reload that keeps a
//! proxy's meter spec keeps its buckets (a client cannot reset its limit by waiting for a
//! SIGHUP); a changed spec starts fresh buckets.
//!
//! With `[meters] redis = "..."` every meter is cluster-wide: see [`cluster`] for the shared
//! buckets in Redis, the local token reserves in front of them and their accuracy bound.
pub mod cluster;
pub mod redis_store;

use crate::util::registry::Registry;
use cluster::{Cluster, Local, Reserve};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a meter counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterBy {
    /// One bucket for the whole proxy.
    Proxy,
    /// One bucket per agent on the proxy.
    Agent,
}

/// A rate: `rate` calls per `per`, with bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub rate: u64,
    pub per: Duration,
    pub burst: u64,
}

/// A compiled `meter = {...}` (and optional `quota = {...}`) of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeterSpec {
    pub by: MeterBy,
    pub rate: Option<Rate>,
    /// A longer allowance (`quota = { limit = 20000, per = "1d" }`): `limit` calls, refilled
    /// continuously over `per` (a sliding allowance, not a calendar window).
    pub quota: Option<Rate>,
}

/// One GCRA limit.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Nanoseconds per token.
    interval: u64,
    /// `burst × interval`: how far the arrival time may run ahead of now.
    tolerance: u64,
    burst: u64,
}

impl Gcra {
    fn new(r: &Rate) -> Gcra {
        let per = u64::try_from(r.per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / r.rate.max(1)).max(1);
        let burst = r.burst.max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(burst),
            burst,
        }
    }

    /// Takes one token if there is one. `Ok(remaining)` or `Err(wait_ns)`.
    #[inline]
    fn take(&self, cell: &AtomicU64, now: u64) -> Result<Snapshot, u64> {
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let new_tat = tat.max(now).saturating_add(self.interval);
            let ahead = new_tat - now;
            if ahead > self.tolerance {
                return Err(ahead - self.tolerance);
            }
            match cell.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Ok(Snapshot {
                        limit: self.burst,
                        remaining: (self.tolerance - ahead) / self.interval,
                        reset_ns: ahead,
                    });
                }
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back a token taken by `take` (when a later limit refused the call).
    fn refund(&self, cell: &AtomicU64) {
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            Some(t.saturating_sub(self.interval))
        });
    }

    /// The state without taking anything (for headers on refusals).
    fn peek(&self, cell: &AtomicU64, now: u64) -> Snapshot {
        let tat = cell.load(Ordering::Acquire).max(now);
        let ahead = tat - now;
        Snapshot {
            limit: self.burst,
            remaining: self.tolerance.saturating_sub(ahead) / self.interval,
            reset_ns: ahead,
        }
    }
}

/// Bucket state after a decision, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The burst size (`RateLimit-Limit`).
    pub limit: u64,
    /// Whole tokens left (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again (`RateLimit-Reset`, rounded up to seconds).
    pub reset_ns: u64,
}

impl Snapshot {
    pub fn reset_secs(&self) -> u64 {
        self.reset_ns.div_ceil(1_000_000_000)
    }
}

/// The outcome of a meter check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Snapshot),
    /// Refused: retry after this many nanoseconds.
    Limited {
        snapshot: Snapshot,
        retry_after_ns: u64,
        /// Whether the quota (rather than the rate) ran out.
        quota: bool,
    },
    /// Cluster mode: a refill from Redis is on its way; poll again shortly.
    Pending,
    /// Cluster mode: Redis is unreachable and `on_redis_down` refuses this call.
    Unavailable,
}

impl Verdict {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(retry_after_ns: u64) -> u64 {
        retry_after_ns.div_ceil(1_000_000_000).max(1)
    }
}

/// The atomic cells of one bucket (rate and quota), and in cluster mode its reserve of tokens
/// taken from the shared bucket (the cells then serve only as the `on_redis_down` fallback).
#[derive(Default)]
pub struct Cells {
    rate: AtomicU64,
    quota: AtomicU64,
    reserve: Option<Arc<Reserve>>,
}

/// A meter's link to its cluster backend.
struct ClusterLink {
    cluster: Arc<Cluster>,
    params: Arc<cluster::BucketParams>,
    prefix: String,
    proxy: String,
    fingerprint: u64,
}

/// Most agent buckets kept per proxy; beyond it, buckets that are full again are dropped.
pub const MAX_AGENT_BUCKETS: usize = 100_000;

/// The buckets of one proxy's meter.
pub struct ProxyMeter {
    pub spec: MeterSpec,
    rate: Option<Gcra>,
    quota: Option<Gcra>,
    proxy_cells: Cells,
    agents: DashMap<Box<str>, Arc<Cells>>,
    cluster: Option<ClusterLink>,
}

impl ProxyMeter {
    /// A meter local to this process.
    pub fn new(spec: MeterSpec) -> ProxyMeter {
        ProxyMeter {
            spec,
            rate: spec.rate.as_ref().map(Gcra::new),
            quota: spec.quota.as_ref().map(Gcra::new),
            proxy_cells: Cells::default(),
            agents: DashMap::new(),
            cluster: None,
        }
    }

    /// A cluster-wide meter of proxy `proxy`, its buckets shared through `cluster`.
    pub fn with_cluster(spec: MeterSpec, proxy: &str, cluster: Arc<Cluster>) -> ProxyMeter {
        let link = ClusterLink {
            params: cluster.params(spec.rate.as_ref(), spec.quota.as_ref()),
            prefix: cluster.settings.key_prefix.clone(),
            proxy: proxy.to_string(),
            fingerprint: cluster::fingerprint(&spec),
            cluster,
        };
        let mut m = ProxyMeter::new(spec);
        m.proxy_cells.reserve = Some(Arc::new(link.reserve(None)));
        m.cluster = Some(link);
        m
    }

    /// The cluster backend, if this meter is cluster-wide.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref().map(|c| &c.cluster)
    }

    /// Tokens fetched from the shared bucket per round trip (cluster mode).
    pub fn batch(&self) -> Option<u64> {
        self.cluster.as_ref().map(|c| c.params.batch)
    }

    /// Checks (and on success consumes) one call. `agent` is used when the meter is by agent;
    /// a call without an agent on such a meter shares one anonymous bucket. In cluster mode this
    /// is one [`ProxyMeter::poll`] of a read that does not wait.
    pub fn check(&self, agent: Option<&str>, now_ns: u64) -> Verdict {
        self.poll(agent, now_ns, true, false)
    }

    /// One look at the call's bucket. Local meters decide at once; a cluster meter may answer
    /// `Pending` (a refill is on its way: poll again after [`cluster::POLL`], with `give_up` once
    /// the call has waited [`cluster::MAX_WAIT`]) or `Unavailable`. `read`: GET, HEAD or OPTIONS
    /// (for `on_redis_down = "open_reads"`).
    pub fn poll(&self, agent: Option<&str>, now_ns: u64, read: bool, give_up: bool) -> Verdict {
        let cells = match self.spec.by {
            MeterBy::Proxy => return self.check_bucket(&self.proxy_cells, now_ns, read, give_up),
            MeterBy::Agent => {
                let key = agent.unwrap_or("");
                if let Some(c) = self.agents.get(key) {
                    let cells = c.clone();
                    drop(c);
                    cells
                } else {
                    if self.agents.len() >= MAX_AGENT_BUCKETS {
                        self.prune(now_ns);
                    }
                    self.agents
                        .entry(key.into())
                        .or_insert_with(|| {
                            Arc::new(Cells {
                                reserve: self
                                    .cluster
                                    .as_ref()
                                    .map(|c| Arc::new(c.reserve(Some(key)))),
                                ..Cells::default()
                            })
                        })
                        .clone()
                }
            }
        };
        self.check_bucket(&cells, now_ns, read, give_up)
    }

    /// [`ProxyMeter::poll`] until decided, sleeping on the monoio timer between looks (at most
    /// [`cluster::MAX_WAIT`] in all). Local meters never sleep.
    /// Admits one call: a local meter decides at once; a cluster meter may wait (bounded) for
    /// a refill from Redis.
    pub async fn admit(&self, agent: Option<&str>, read: bool) -> Verdict {
        if self.cluster.is_some() {
            self.check_wait(agent, read).await
        } else {
            self.check(agent, crate::util::clock::mono_ns())
        }
    }

    pub async fn check_wait(&self, agent: Option<&str>, read: bool) -> Verdict {
        let deadline = crate::util::clock::now() + cluster::MAX_WAIT;
        let decided = |give_up| match self.poll(agent, crate::util::clock::mono_ns(), read, give_up)
        {
            Verdict::Pending => None,
            v => Some(v),
        };
        // the last poll (give_up) always decides; `Unavailable` only if it somehow did not
        crate::util::wait::poll_until(deadline, cluster::POLL, decided)
            .await
            .unwrap_or(Verdict::Unavailable)
    }

    fn check_bucket(&self, cells: &Cells, now: u64, read: bool, give_up: bool) -> Verdict {
        if let (Some(link), Some(reserve)) = (&self.cluster, &cells.reserve) {
            match link.cluster.poll(reserve, now, read, give_up) {
                Local::Allowed(s) => return Verdict::Allowed(s),
                Local::Limited {
                    snapshot,
                    retry_after_ns,
                    quota,
                } => {
                    return Verdict::Limited {
                        snapshot,
                        retry_after_ns,
                        quota,
                    };
                }
                Local::Pending => return Verdict::Pending,
                Local::Unavailable => return Verdict::Unavailable,
                Local::Fallback => {}
            }
        }
        self.check_cells(cells, now)
    }

    fn check_cells(&self, cells: &Cells, now: u64) -> Verdict {
        let rate = match &self.rate {
            Some(g) => match g.take(&cells.rate, now) {
                Ok(s) => Some(s),
                Err(wait) => {
                    return Verdict::Limited {
                        snapshot: g.peek(&cells.rate, now),
                        retry_after_ns: wait,
                        quota: false,
                    };
                }
            },
            None => None,
        };
        let quota = match &self.quota {
            Some(q) => match q.take(&cells.quota, now) {
                Ok(s) => Some(s),
                Err(wait) => {
                    if let Some(g) = &self.rate {
                        g.refund(&cells.rate);
                    }
                    return Verdict::Limited {
                        snapshot: q.peek(&cells.quota, now),
                        retry_after_ns: wait,
                        quota: true,
                    };
                }
            },
            None => None,
        };
        // headers describe the rate when there is one, else the quota
        match (rate, quota) {
            (Some(s), _) | (None, Some(s)) => Verdict::Allowed(s),
            (None, None) => Verdict::Allowed(Snapshot {
                limit: 0,
                remaining: 0,
                reset_ns: 0,
            }),
        }
    }

    /// Drops agent buckets that are full again (indistinguishable from new ones).
    fn prune(&self, now: u64) {
        self.agents.retain(|_, c| {
            c.rate.load(Ordering::Acquire) > now
                || c.quota.load(Ordering::Acquire) > now
                || c.reserve.as_ref().is_some_and(|r| !r.is_idle(now))
        });
    }

    /// Agent buckets currently held (for metrics).
    pub fn agent_buckets(&self) -> usize {
        self.agents.len()
    }
}

impl ClusterLink {
    fn reserve(&self, agent: Option<&str>) -> Reserve {
        let key = cluster::bucket_key(&self.prefix, &self.proxy, self.fingerprint, agent);
        Reserve::new(key, self.params.clone())
    }
}

/// The process-wide store that compiled configs take their meters from.
pub fn global() -> &'static MeterStore {
    static STORE: std::sync::OnceLock<MeterStore> = std::sync::OnceLock::new();
    STORE.get_or_init(MeterStore::default)
}

/// Meters of every proxy, kept across reloads (see the module doc).
#[derive(Default)]
pub struct MeterStore {
    meters: DashMap<String, Arc<ProxyMeter>>,
    clusters: Registry<cluster::Settings, Cluster>,
}

impl MeterStore {
    /// Every cluster backend (Redis) some config still uses (for `/metrics`).
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        self.clusters.live()
    }

    /// The meter for `proxy` with `spec`, cluster-wide through `cluster` if given: the existing
    /// one if its spec and backend are unchanged.
    pub fn meter_in(
        &self,
        proxy: &str,
        spec: MeterSpec,
        cluster: Option<&Arc<Cluster>>,
    ) -> Arc<ProxyMeter> {
        if let Some(m) = self.meters.get(proxy)
            && m.spec == spec
            && match (m.cluster(), cluster) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        {
            return m.clone();
        }
        let m = Arc::new(match cluster {
            Some(c) => ProxyMeter::with_cluster(spec, proxy, c.clone()),
            None => ProxyMeter::new(spec),
        });
        self.meters.insert(proxy.to_string(), m.clone());
        m
    }

    /// The cluster backend for `settings`: the same one across reloads that keep them (so the
    /// reserves and the refill thread survive a SIGHUP). Held weakly here: a backend no meter
    /// uses any more is dropped, which ends its refill thread.
    pub fn cluster(
        &self,
        settings: cluster::Settings,
        connect: impl FnOnce() -> cluster::Connect,
    ) -> Arc<Cluster> {
        self.clusters.live(); // drops the dead entries
        self.clusters
            .get_or_insert_with(settings.clone(), || Cluster::new(settings, connect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn spec(rate: u64, per_s: u64, burst: u64, by: MeterBy) -> MeterSpec {
        MeterSpec {
            by,
            rate: Some(Rate {
                rate,
                per: Duration::from_secs(per_s),
                burst,
            }),
            quota: None,
        }
    }

    #[test]
    fn burst_then_steady_rate() {
        let m = ProxyMeter::new(spec(10, 1, 5, MeterBy::Proxy));
        let t0 = 1000 * S;
        for i in 0..5 {
            match m.check(None, t0) {
                Verdict::Allowed(s) => assert_eq!(s.remaining, 4 - i, "call {i}"),
                v => panic!("call {i}: {v:?}"),
            }
        }
        match m.check(None, t0) {
            Verdict::Limited {
                retry_after_ns,
                snapshot,
                quota,
            } => {
                assert_eq!(retry_after_ns, S / 10);
                assert_eq!(snapshot.remaining, 0);
                assert_eq!(snapshot.limit, 5);
                assert!(!quota);
                assert_eq!(Verdict::retry_after_secs(retry_after_ns), 1);
            }
            v => panic!("{v:?}"),
        }
        // one token per 100 ms
        assert!(matches!(m.check(None, t0 + S / 10), Verdict::Allowed(_)));
        assert!(matches!(
            m.check(None, t0 + S / 10),
            Verdict::Limited { .. }
        ));
        // after a long idle the bucket is full again, not more
        let later = t0 + 100 * S;
        for _ in 0..5 {
            assert!(matches!(m.check(None, later), Verdict::Allowed(_)));
        }
        assert!(matches!(m.check(None, later), Verdict::Limited { .. }));
    }

    #[test]
    fn agents_have_separate_buckets() {
        let m = ProxyMeter::new(spec(1, 1, 2, MeterBy::Agent));
        let t = 50 * S;
        for a in ["a", "b"] {
            assert!(matches!(m.check(Some(a), t), Verdict::Allowed(_)));
            assert!(matches!(m.check(Some(a), t), Verdict::Allowed(_)));
            assert!(matches!(m.check(Some(a), t), Verdict::Limited { .. }));
        }
        assert_eq!(m.agent_buckets(), 2);
        // by proxy: one bucket for everybody
        let p = ProxyMeter::new(spec(1, 1, 2, MeterBy::Proxy));
        assert!(matches!(p.check(Some("a"), t), Verdict::Allowed(_)));
        assert!(matches!(p.check(Some("b"), t), Verdict::Allowed(_)));
        assert!(matches!(p.check(Some("c"), t), Verdict::Limited { .. }));
    }

    #[test]
    fn quota_limits_after_the_rate_and_refunds_the_rate_token() {
        let mut s = spec(100, 1, 100, MeterBy::Proxy);
        s.quota = Some(Rate {
            rate: 3,
            per: Duration::from_secs(86_400),
            burst: 3,
        });
        let m = ProxyMeter::new(s);
        let t = 7 * S;
        for _ in 0..3 {
            assert!(matches!(m.check(None, t), Verdict::Allowed(_)));
        }
        match m.check(None, t) {
            Verdict::Limited {
                quota,
                retry_after_ns,
                ..
            } => {
                assert!(quota);
                assert_eq!(retry_after_ns, 86_400 * S / 3);
            }
            v => panic!("{v:?}"),
        }
        // the refused call gave its rate token back: 97 rate tokens remain
        let rate = Gcra::new(&s.rate.unwrap());
        assert_eq!(rate.peek(&m.proxy_cells.rate, t).remaining, 97);
    }

    #[test]
    fn store_keeps_buckets_across_reloads_with_the_same_spec() {
        let store = MeterStore::default();
        let s = spec(1, 60, 1, MeterBy::Proxy);
        let a = store.meter_in("crm", s, None);
        assert!(matches!(a.check(None, S), Verdict::Allowed(_)));
        let b = store.meter_in("crm", s, None);
        assert!(matches!(b.check(None, S), Verdict::Limited { .. }));
        let c = store.meter_in("crm", spec(2, 60, 2, MeterBy::Proxy), None);
        assert!(matches!(c.check(None, S), Verdict::Allowed(_)));
    }

    #[test]
    fn store_keeps_cluster_backends_and_meters_across_reloads() {
        let store = MeterStore::default();
        let settings = cluster::Settings {
            display: "r".into(),
            connection_id: 1,
            key_prefix: "p:".into(),
            batch: None,
            on_down: cluster::OnDown::OpenReads,
        };
        let connect = || -> cluster::Connect {
            Arc::new(|| Err(cluster::StoreError("not in this test".into())))
        };
        let c1 = store.cluster(settings.clone(), connect);
        let c2 = store.cluster(settings.clone(), connect);
        assert!(Arc::ptr_eq(&c1, &c2), "same settings, same backend");
        let s = spec(1, 60, 1, MeterBy::Proxy);
        let a = store.meter_in("crm", s, Some(&c1));
        let b = store.meter_in("crm", s, Some(&c2));
        assert!(Arc::ptr_eq(&a, &b), "same spec and backend, same buckets");
        assert_eq!(a.batch(), Some(1));
        let local = store.meter_in("crm", s, None);
        assert!(
            local.cluster().is_none(),
            "leaving cluster mode starts local buckets"
        );
        let mut other = settings.clone();
        other.on_down = cluster::OnDown::Closed;
        assert!(!Arc::ptr_eq(&store.cluster(other, connect), &c1));
        let weak = Arc::downgrade(&c1);
        drop((a, b, c1, c2));
        assert!(weak.upgrade().is_none(), "an unused backend is dropped");
    }

    #[test]
    fn pruning_drops_only_full_buckets() {
        let m = ProxyMeter::new(spec(1, 1, 1, MeterBy::Agent));
        assert!(matches!(m.check(Some("busy"), 10 * S), Verdict::Allowed(_)));
        assert!(matches!(m.check(Some("idle"), S), Verdict::Allowed(_)));
        m.prune(10 * S + 1);
        assert_eq!(m.agent_buckets(), 1);
        assert!(matches!(
            m.check(Some("busy"), 10 * S + 1),
            Verdict::Limited { .. }
        ));
    }

    /// Accuracy under contention: several threads offer 5× the rate for 10 simulated seconds;
    /// admitted calls are rate × time + burst within ±5% (GCRA makes it exact up to one token).
    #[test]
    fn accuracy_at_five_times_the_rate_on_many_threads() {
        for threads in [1u64, 2, 4, 8] {
            let rate = 1000u64;
            let burst = 50u64;
            let m = Arc::new(ProxyMeter::new(spec(rate, 1, burst, MeterBy::Proxy)));
            let secs = 10u64;
            let offered = 5 * rate * secs; // total calls, spread evenly in time over the threads
            let admitted = Arc::new(AtomicU64::new(0));
            // one shared clock: the n-th call overall arrives at t0 + n × (10 s / offered)
            let seq = Arc::new(AtomicU64::new(0));
            let t0 = 1_000 * S;
            std::thread::scope(|sc| {
                for _ in 0..threads {
                    let (m, admitted, seq) = (m.clone(), admitted.clone(), seq.clone());
                    sc.spawn(move || {
                        loop {
                            let n = seq.fetch_add(1, Ordering::Relaxed);
                            if n >= offered {
                                break;
                            }
                            let now = t0 + n * (secs * S) / offered;
                            if matches!(m.check(None, now), Verdict::Allowed(_)) {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            let got = admitted.load(Ordering::Relaxed) as f64;
            let want = (rate * secs + burst) as f64;
            assert!(
                (got - want).abs() <= want * 0.05,
                "{threads} threads: admitted {got}, expected {want} ±5%"
            );
        }
    }
}
