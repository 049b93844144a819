//! Cluster-wide budgets (`[meters] redis` and `[[proxies.budgets]]`): every gateway process
//! charges the same counters in Redis, off the data plane.
//!
//! A worker charges its process's counter (the atomic cell of [`super::budget::Ledger`]) and
//! adds the same amount to the cell's `pending`; it never talks to Redis. One sync thread per
//! Redis (started with the first cluster budget) wakes every [`TICK`] and, for every key of
//! every cluster budget, pushes what is pending with one `INCRBY` on the window's key (expiring
//! one window plus a minute after the window ends) — or reads it with `INCRBY 0` when nothing is
//! pending — and sets the process's counter to Redis's total plus whatever was charged
//! meanwhile, so admission sees the other processes' charges within a tick. Keys:
//! `key_prefix` + `budget:{<proxy>:<budget>:<definition hash>}:<window>:<key>`.
//!
//! While Redis is unreachable (logged once per transition, retried every tick), charges stay
//! pending (pushed when it is back) and each process admits on its own counter: the cluster may
//! then overshoot by up to the number of processes times the limit.
use super::budget::Ledger;
use crate::util::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// How often pending charges are pushed and totals read.
pub const TICK: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_millis(250);

/// One Redis the budgets of a config share, with its sync thread.
pub struct Remote {
    /// Identifies the connection and key prefix (part of a budget's ledger key).
    pub id: u64,
    pub info: redis::ConnectionInfo,
    pub display: String,
    pub key_prefix: String,
    members: dashmap::DashMap<usize, Weak<Ledger>>,
    started: OnceLock<()>,
    pub up: AtomicBool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("redis", &self.display)
            .finish_non_exhaustive()
    }
}

/// The process-wide remotes, by connection and prefix (kept across reloads).
pub fn remote(
    connection_id: u64,
    info: redis::ConnectionInfo,
    display: String,
    key_prefix: String,
) -> Arc<Remote> {
    static R: OnceLock<Registry<(u64, String), Remote>> = OnceLock::new();
    R.get_or_init(Registry::default)
        .get_or_insert_with((connection_id, key_prefix.clone()), || Remote {
            id: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (connection_id, &key_prefix).hash(&mut h);
                h.finish() | 1
            },
            info,
            display,
            key_prefix,
            members: dashmap::DashMap::new(),
            started: OnceLock::new(),
            up: AtomicBool::new(true),
        })
}

impl Remote {
    /// Registers a cluster ledger and starts the sync thread (once).
    pub fn add(self: &Arc<Remote>, ledger: &Arc<Ledger>) {
        self.members
            .insert(Arc::as_ptr(ledger) as usize, Arc::downgrade(ledger));
        self.started.get_or_init(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("budget-sync".into())
                .spawn(move || sync_thread(weak));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the budget sync thread: budgets count per process");
            }
        });
    }

    fn live(&self) -> Vec<Arc<Ledger>> {
        let mut out = Vec::new();
        self.members.retain(|_, w| match w.upgrade() {
            Some(l) => {
                out.push(l);
                true
            }
            None => false,
        });
        out
    }
}

/// The Redis key of `key` in `window` of `ledger`.
pub fn redis_key(prefix: &str, ledger: &Ledger, window: u64, key: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ledger.key.hash(&mut h);
    format!(
        "{prefix}budget:{{{}:{}:{:016x}}}:{window}:{key}",
        ledger.key.proxy,
        ledger.key.name,
        h.finish()
    )
}

fn sync_thread(remote: Weak<Remote>) {
    let (_tx, tick) = flume::bounded::<()>(1);
    let mut con: Option<redis::Connection> = None;
    loop {
        let _ = tick.recv_timeout(TICK);
        let Some(r) = remote.upgrade() else { return };
        let ledgers = r.live();
        if ledgers.is_empty() {
            continue;
        }
        if con.is_none() {
            con = connect(&r.info).map_err(|e| down(&r, &e)).ok();
        }
        let Some(c) = con.as_mut() else { continue };
        if let Err(e) = sync_once(c, &r.key_prefix, &ledgers) {
            down(&r, &e);
            con = None;
        } else if !r.up.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %r.display, "budgets: Redis is reachable again");
        }
    }
}

fn down(r: &Remote, e: &redis::RedisError) {
    if r.up.swap(false, Ordering::Relaxed) {
        tracing::warn!(redis = %r.display, error = %e, "budgets: Redis unreachable; charges are kept and pushed when it is back, each process admits on its own count meanwhile");
    }
}

fn connect(info: &redis::ConnectionInfo) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(info.clone())?;
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// One round: every key's pending charge pushed (or its total read), in one pipeline.
pub fn sync_once(
    con: &mut redis::Connection,
    prefix: &str,
    ledgers: &[Arc<Ledger>],
) -> redis::RedisResult<()> {
    let now = crate::util::clock::unix_now().as_secs();
    let mut pipe = redis::pipe();
    // (ledger, key, window, pending taken)
    let mut items: Vec<(&Arc<Ledger>, String, u64, i64)> = Vec::new();
    for l in ledgers {
        let per = l.key.per_secs.max(1);
        let window = now / per;
        let ttl = (window + 1) * per - now + per.min(86_400) + 60;
        for (key, pending) in l.take_pending() {
            let rk = redis_key(prefix, l, window, &key);
            pipe.cmd("INCRBY").arg(&rk).arg(pending);
            pipe.cmd("EXPIRE").arg(&rk).arg(ttl).ignore();
            items.push((l, key, window, pending));
        }
    }
    if items.is_empty() {
        return Ok(());
    }
    let totals: Vec<i64> = match pipe.query(con) {
        Ok(t) => t,
        Err(e) => {
            // not pushed: back to pending
            for (l, key, _, pending) in &items {
                l.add_pending(key, *pending);
            }
            return Err(e);
        }
    };
    for ((l, key, window, _), total) in items.iter().zip(totals) {
        l.set_remote(key, *window, u64::try_from(total).unwrap_or(0));
    }
    Ok(())
}
