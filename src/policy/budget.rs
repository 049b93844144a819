//! Budgets (`[[proxies.budgets]]`): meters on what the response says (LLM tokens, cost).
//!
//! A budget allows `limit` units per fixed window of `per` seconds, aligned to the Unix epoch
//! (window `k` is `[k·per, (k+1)·per)` in Unix seconds; a `"1d"` budget refills at 00:00 UTC).
//! A call is admitted while the spent amount of its key (agent, proxy or each role) is below
//! `limit`; its value is known only when its response has ended, and is charged then. So a
//! window's spent amount can exceed `limit` by what the calls admitted while it was below
//! `limit` went on to cost (the overshoot bound, stated in the README): with `reserve`, each
//! call first charges what it may cost at most and settles the difference at the end.
//!
//! State: one counter per (budget, key), shared by every worker (one budget per gateway, not per
//! worker): a single `AtomicU64` holding the window number's low 24 bits and the spent amount
//! (40 bits, saturating), updated by compare-and-swap, so a charge and a window roll-over are
//! one atomic step and no lock is taken. The counters live in a [`Ledger`] held by a
//! process-wide weak registry keyed by the budget's definition: a reload that keeps the budget
//! keeps what was spent; a changed budget starts afresh. With `[meters] redis` the counters are
//! in Redis instead (see `cluster`).
use crate::redact::usage::BodyValue;
use crate::util::registry::Registry;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Largest `limit` (the spent amount has 40 bits).
pub const MAX_LIMIT: u64 = (1 << 40) - 1;
const SPENT_MASK: u64 = MAX_LIMIT;
const WINDOW_BITS: u64 = 24;
const WINDOW_MASK: u64 = (1 << WINDOW_BITS) - 1;

/// What a budget counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetBy {
    Agent,
    Proxy,
    Role,
}

impl BudgetBy {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetBy::Agent => "agent",
            BudgetBy::Proxy => "proxy",
            BudgetBy::Role => "role",
        }
    }
}

/// Where a budget's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Read from the body by the redaction engine (JSON, or each SSE event's JSON).
    Body(BodyValue),
    /// A response header (lower-case name), a non-negative decimal number.
    Header(Box<str>),
}

/// One compiled budget.
#[derive(Debug)]
pub struct Budget {
    pub source: Source,
    /// `reserve = "$.max_tokens"`: the request body's number at this path (read by the
    /// redaction engine, capture slot 1), charged before the call goes upstream and settled
    /// when the response ends.
    pub reserve: Option<crate::redact::RedactProgram>,
    /// `rule = "name"`: only calls decided by that rule (its index) count.
    pub rule: Option<u32>,
    pub ledger: Arc<Ledger>,
}

impl Budget {
    /// Whether the call decided by `rule` counts against this budget.
    pub fn applies(&self, rule: Option<u32>) -> bool {
        self.rule.is_none_or(|r| rule == Some(r))
    }
}

/// What identifies a budget's counters across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerKey {
    pub proxy: Arc<str>,
    pub name: Arc<str>,
    pub limit: u64,
    pub per_secs: u64,
    pub by: BudgetBy,
    /// The value's definition (path, preset, weights, aggregate), as written.
    pub value: String,
    /// `[meters] redis`: which Redis (connection id; 0 for local counters).
    pub remote: u64,
}

/// One key's counter: the window and spent amount in one atomic, and (cluster budgets) what
/// was charged here and not yet pushed to Redis.
#[derive(Debug, Default)]
struct Cell {
    state: AtomicU64,
    pending: AtomicI64,
}

/// One budget's counters, one per key.
#[derive(Debug)]
pub struct Ledger {
    pub key: LedgerKey,
    cells: DashMap<Box<str>, Arc<Cell>>,
    /// `[meters] redis`: the counters are shared through it (see `budget_cluster`).
    remote: Option<Arc<super::budget_cluster::Remote>>,
    /// Calls refused by this budget, and units charged (for `/metrics`).
    pub exhausted: AtomicU64,
    pub charged: AtomicU64,
    /// Responses whose value was not a non-negative number.
    pub unreadable: AtomicU64,
}

/// A key's state in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub spent: u64,
    pub limit: u64,
    /// Seconds until the window ends (the refill).
    pub reset_secs: u64,
}

impl State {
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.spent)
    }
}

fn window(now_unix: u64, per: u64) -> u64 {
    now_unix / per.max(1)
}

fn spent_in(cell: u64, win: u64) -> u64 {
    if cell >> (64 - WINDOW_BITS) == win & WINDOW_MASK {
        cell & SPENT_MASK
    } else {
        0
    }
}

impl Ledger {
    pub fn new(key: LedgerKey, remote: Option<Arc<super::budget_cluster::Remote>>) -> Ledger {
        Ledger {
            key,
            cells: DashMap::new(),
            remote,
            exhausted: AtomicU64::new(0),
            charged: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
        }
    }

    fn cell(&self, key: &str) -> Arc<Cell> {
        if let Some(c) = self.cells.get(key) {
            return c.clone();
        }
        self.cells.entry(key.into()).or_default().clone()
    }

    /// The state of `key` at `now_unix` (seconds).
    pub fn state(&self, key: &str, now_unix: u64) -> State {
        let per = self.key.per_secs.max(1);
        let win = window(now_unix, per);
        let spent = self
            .cells
            .get(key)
            .map_or(0, |c| spent_in(c.state.load(Ordering::Acquire), win));
        State {
            spent,
            limit: self.key.limit,
            reset_secs: (win + 1) * per - now_unix,
        }
    }

    /// Adds `units` (saturating) to `key`'s window at `now_unix`; a negative `units` refunds
    /// (never below zero, and only while that window is still the cell's: a refund never
    /// reaches into a later window). Returns the new state.
    pub fn charge(&self, key: &str, units: i64, now_unix: u64) -> State {
        let per = self.key.per_secs.max(1);
        let win = window(now_unix, per);
        let c = self.cell(key);
        let cell = &c.state;
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            if units < 0 && cur >> (64 - WINDOW_BITS) != win & WINDOW_MASK {
                return self.state(key, now_unix);
            }
            let spent = spent_in(cur, win);
            let next = if units >= 0 {
                spent.saturating_add(units.unsigned_abs()).min(SPENT_MASK)
            } else {
                spent.saturating_sub(units.unsigned_abs())
            };
            let new = ((win & WINDOW_MASK) << (64 - WINDOW_BITS)) | next;
            match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if self.remote.is_some() {
                        c.pending.fetch_add(units, Ordering::AcqRel);
                    }
                    if units > 0 {
                        self.charged
                            .fetch_add(units.unsigned_abs(), Ordering::Relaxed);
                    }
                    return State {
                        spent: next,
                        limit: self.key.limit,
                        reset_secs: (win + 1) * per - now_unix,
                    };
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Cluster budgets: a key this process has not seen yet gets a cell, so the next sync reads
    /// its total from Redis.
    pub fn touch(&self, key: &str) {
        if self.remote.is_some() && !self.cells.contains_key(key) {
            self.cell(key);
        }
    }

    /// Cluster budgets: every key's charge not yet pushed (taken: now zero here).
    pub fn take_pending(&self) -> Vec<(String, i64)> {
        self.cells
            .iter()
            .map(|e| {
                (
                    e.key().to_string(),
                    e.value().pending.swap(0, Ordering::AcqRel),
                )
            })
            .collect()
    }

    /// Cluster budgets: a push failed; the charge is pending again.
    pub fn add_pending(&self, key: &str, n: i64) {
        self.cell(key).pending.fetch_add(n, Ordering::AcqRel);
    }

    /// Cluster budgets: Redis says `total` for `key` in `window`; this process's counter
    /// becomes that plus what was charged here since the push.
    pub fn set_remote(&self, key: &str, window: u64, total: u64) {
        let c = self.cell(key);
        let mut cur = c.state.load(Ordering::Acquire);
        loop {
            let now_window = crate::util::clock::unix_now().as_secs() / self.key.per_secs.max(1);
            if now_window != window {
                // the window ended meanwhile: its total no longer matters
                return;
            }
            let since = u64::try_from(c.pending.load(Ordering::Acquire)).unwrap_or(0);
            let spent = total.saturating_add(since).min(SPENT_MASK);
            let new = ((window & WINDOW_MASK) << (64 - WINDOW_BITS)) | spent;
            match c
                .state
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(x) => cur = x,
            }
        }
    }

    /// Drops the counters of keys with nothing spent in the current window at `now_unix` and
    /// nothing waiting to be pushed to Redis: without this a budget `by = "agent"` keeps a cell
    /// for every agent key it ever saw. A cell some call still holds (a charge in flight) is
    /// kept: `retain` holds the shard's write lock, so no new holder can appear meanwhile, and
    /// a holder taken before shows in the count. Returns how many were dropped.
    pub fn prune(&self, now_unix: u64) -> usize {
        let win = window(now_unix, self.key.per_secs.max(1));
        let before = self.cells.len();
        self.cells.retain(|_, c| {
            Arc::strong_count(c) > 1
                || spent_in(c.state.load(Ordering::Acquire), win) > 0
                || c.pending.load(Ordering::Acquire) != 0
        });
        before.saturating_sub(self.cells.len())
    }

    /// How many keys have a counter (pruned by [`prune_all`]).
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// Every key with something spent in the current window, sorted by key.
    pub fn states(&self, now_unix: u64) -> Vec<(String, State)> {
        let mut v: Vec<(String, State)> = self
            .cells
            .iter()
            .map(|e| e.key().to_string())
            .map(|k| {
                let st = self.state(&k, now_unix);
                (k, st)
            })
            .filter(|(_, st)| st.spent > 0)
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The keys a call counts against: its agent (`""` for an anonymous call), `""` for the
/// proxy, or each of its roles (`""` when it has none).
pub fn keys<'a>(by: BudgetBy, agent: Option<&'a str>, roles: &'a [String]) -> Vec<&'a str> {
    match by {
        BudgetBy::Agent => vec![agent.unwrap_or("")],
        BudgetBy::Proxy => vec![""],
        BudgetBy::Role if roles.is_empty() => vec![""],
        BudgetBy::Role => roles.iter().map(String::as_str).collect(),
    }
}

/// The process-wide ledgers (kept across reloads while the budget is unchanged).
pub fn ledgers() -> &'static Registry<LedgerKey, Ledger> {
    static L: std::sync::OnceLock<Registry<LedgerKey, Ledger>> = std::sync::OnceLock::new();
    L.get_or_init(Registry::default)
}

/// The ledger for `key`: the live one if a config uses it already, else a new one (shared
/// through `remote` when there is one).
pub fn ledger(key: LedgerKey, remote: Option<&Arc<super::budget_cluster::Remote>>) -> Arc<Ledger> {
    let l = ledgers().get_or_insert_with(key.clone(), || Ledger::new(key, remote.cloned()));
    if let Some(r) = remote {
        r.add(&l);
    }
    l
}

/// [`Ledger::prune`] on every live budget (the refresher thread calls it once a minute).
pub fn prune_all(now_unix: u64) -> usize {
    ledgers().live().iter().map(|l| l.prune(now_unix)).sum()
}

/// `GET /v1/budgets`: each budget of the running config (`ledgers`, in config order), with
/// every key that has spent something in the current window.
pub fn listing(ledgers: &[&Ledger], now_unix: u64) -> serde_json::Value {
    let budgets: Vec<serde_json::Value> = ledgers
        .iter()
        .map(|l| {
            let per = l.key.per_secs.max(1);
            let reset_at = (now_unix / per + 1) * per;
            let keys: Vec<serde_json::Value> = l
                .states(now_unix)
                .into_iter()
                .map(|(k, st)| {
                    serde_json::json!({
                        "key": k,
                        "spent": st.spent,
                        "remaining": st.remaining(),
                    })
                })
                .collect();
            serde_json::json!({
                "proxy": &*l.key.proxy,
                "name": &*l.key.name,
                "by": l.key.by.as_str(),
                "limit": l.key.limit,
                "per_secs": l.key.per_secs,
                "reset_secs": reset_at - now_unix,
                "reset_at": crate::util::datetime::format_rfc3339(i64::try_from(reset_at).unwrap_or(i64::MAX)),
                "keys": keys,
            })
        })
        .collect();
    serde_json::json!({ "budgets": budgets })
}

/// The `portcullis_budget_*` families for `/metrics`.
pub fn render_metrics(out: &mut String, ledgers: &[&Ledger], now_unix: u64) {
    use std::fmt::Write as _;
    if ledgers.is_empty() {
        return;
    }
    use crate::observe::metrics::{header as head, push_label as label};
    let per_budget = |out: &mut String, name: &str, l: &Ledger, v: u64| {
        let _ = write!(out, "{name}{{proxy=\"");
        label(out, &l.key.proxy);
        out.push_str("\",budget=\"");
        label(out, &l.key.name);
        let _ = writeln!(out, "\"}} {v}");
    };
    head(
        out,
        "portcullis_budget_limit",
        "gauge",
        "Units a budget allows per window.",
    );
    for l in ledgers {
        per_budget(out, "portcullis_budget_limit", l, l.key.limit);
    }
    head(
        out,
        "portcullis_budget_spent",
        "gauge",
        "Units spent in the current window, per budget key (agent, role, or \"\" for the proxy).",
    );
    for l in ledgers {
        for (k, st) in l.states(now_unix) {
            let _ = write!(out, "portcullis_budget_spent{{proxy=\"");
            label(out, &l.key.proxy);
            out.push_str("\",budget=\"");
            label(out, &l.key.name);
            out.push_str("\",key=\"");
            label(out, &k);
            let _ = writeln!(out, "\"}} {}", st.spent);
        }
    }
    for (name, help, f) in [
        (
            "portcullis_budget_charged_units_total",
            "Units charged to a budget.",
            (|l: &Ledger| l.charged.load(Ordering::Relaxed)) as fn(&Ledger) -> u64,
        ),
        (
            "portcullis_budget_exhausted_total",
            "Calls refused because a budget was spent (budget_exhausted).",
            |l: &Ledger| l.exhausted.load(Ordering::Relaxed),
        ),
        (
            "portcullis_budget_unreadable_total",
            "Responses whose budget value was not a non-negative number (not counted).",
            |l: &Ledger| l.unreadable.load(Ordering::Relaxed),
        ),
    ] {
        head(out, name, "counter", help);
        for l in ledgers {
            per_budget(out, name, l, f(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Ledger {
        fn new_local(key: LedgerKey) -> Ledger {
            Ledger::new(key, None)
        }
    }

    fn key(limit: u64, per: u64) -> LedgerKey {
        LedgerKey {
            proxy: "p".into(),
            name: "b".into(),
            limit,
            per_secs: per,
            by: BudgetBy::Agent,
            value: "test".into(),
            remote: 0,
        }
    }

    #[test]
    fn prune_drops_idle_keys_and_keeps_spent_held_and_pending_ones() {
        let l = Ledger::new_local(key(100, 60));
        let t0 = 1_700_000_000 / 60 * 60;
        for i in 0..1000 {
            l.charge(&format!("agent-{i}"), 1, t0 + 1);
        }
        l.charge("zero", 0, t0 + 1);
        assert_eq!(l.cells(), 1001);
        assert_eq!(
            l.prune(t0 + 2),
            1,
            "this window: only the key with nothing spent goes"
        );
        // a call holding a cell (a charge in flight) keeps it
        let held = l.cell("agent-7");
        // a key with a charge not yet pushed to Redis is kept
        l.cell("agent-8").pending.store(3, Ordering::Release);
        assert_eq!(l.prune(t0 + 61), 998, "next window: idle keys go");
        assert_eq!(l.cells(), 2);
        drop(held);
        l.cell("agent-8").pending.store(0, Ordering::Release);
        assert_eq!(l.prune(t0 + 61), 2);
        assert_eq!(l.cells(), 0);
        // a key charged again after pruning starts from nothing in its window
        assert_eq!(l.charge("agent-1", 5, t0 + 62).spent, 5);
    }

    #[test]
    fn a_fixed_window_aligned_to_the_epoch() {
        let l = Ledger::new_local(key(100, 3600));
        let t0 = 1_700_000_000 / 3600 * 3600;
        assert_eq!(l.state("a", t0).spent, 0);
        assert_eq!(l.charge("a", 40, t0 + 10).spent, 40);
        let s = l.charge("a", 70, t0 + 20);
        assert_eq!((s.spent, s.remaining(), s.reset_secs), (110, 0, 3580));
        assert_eq!(l.state("b", t0 + 20).spent, 0, "keys are apart");
        // the next window starts at zero
        assert_eq!(l.state("a", t0 + 3600).spent, 0);
        assert_eq!(l.charge("a", 5, t0 + 3601).spent, 5);
        // a refund never goes below zero
        assert_eq!(l.charge("a", -50, t0 + 3602).spent, 0);
        // nor reaches into a later window
        l.charge("a", 9, t0 + 3603);
        l.charge("a", -9, t0 + 10);
        assert_eq!(l.state("a", t0 + 3604).spent, 9);
        assert_eq!(l.charged.load(Ordering::Relaxed), 124);
    }

    #[test]
    fn charges_saturate() {
        let l = Ledger::new_local(key(MAX_LIMIT, 60));
        l.charge("a", i64::MAX, 0);
        assert_eq!(l.charge("a", i64::MAX, 1).spent, MAX_LIMIT);
        assert_eq!(l.state("a", 2).remaining(), 0);
    }

    #[test]
    fn every_thread_charges_one_counter() {
        let l = Arc::new(Ledger::new_local(key(1 << 30, 1 << 30)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        l.charge("a", 3, 5);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.state("a", 5).spent, 12_000);
    }

    #[test]
    fn the_registry_keeps_an_unchanged_budget() {
        let a = ledger(key(7, 60), None);
        a.charge("x", 3, 0);
        assert_eq!(ledger(key(7, 60), None).state("x", 0).spent, 3);
        assert_eq!(ledger(key(8, 60), None).state("x", 0).spent, 0);
    }
}
