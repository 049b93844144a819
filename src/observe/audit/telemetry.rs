//! `GET /v1/telemetry`: per proxy and per agent, call counts by decision and status class,
//! p50/p99 of `total_us` and the budget units charged (`metered`, summed per budget), computed
//! from the audit records of a time window. (The admin API adds each budget's current state.)
//!
//! # Bounds
//!
//! The window is read newest first through [`query_visit`] (index-skipped blocks, one record
//! parsed at a time) and stops after [`MAX_RECORDS`] records; the report then says
//! `"truncated": true` and `oldest` tells how far back it got. Memory is one `u64` per record
//! scanned (for exact percentiles) plus one entry per (proxy, agent) pair: about 8 MB at the
//! bound. Percentiles are nearest-rank over the records scanned. Without `since` the window is
//! the last [`DEFAULT_WINDOW`].
#![forbid(unsafe_code)]

use super::query::{Query, QueryError, query_visit};
use super::record::{StoredRecord, format_ts};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Records read at most per telemetry request.
pub const MAX_RECORDS: usize = 1_000_000;
/// The window when `since` is not given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub calls: u64,
    /// `allow` / `deny` / `approve` → calls.
    pub decisions: BTreeMap<String, u64>,
    /// `2xx` … `5xx` (and `none`: no status sent) → calls.
    pub status: BTreeMap<String, u64>,
    pub latency_us: Latency,
    /// Refusal code (the records' `code`) → calls; absent when none was refused.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub refusals: BTreeMap<String, u64>,
    /// Budget name → units charged (the records' `metered`); absent when none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metered: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentStats {
    /// `null` for calls without an authenticated agent.
    pub agent: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// `null` for calls refused before a proxy was known (bad request, unknown proxy).
    pub proxy: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    pub agents: Vec<AgentStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub since: String,
    pub until: String,
    /// Records aggregated.
    pub records: u64,
    /// Whether the window held more than [`MAX_RECORDS`] records (the oldest were not read).
    pub truncated: bool,
    /// `ts` of the oldest record aggregated.
    pub oldest: Option<String>,
    pub max_records: usize,
    pub proxies: Vec<ProxyStats>,
}

#[derive(Default)]
struct Acc {
    calls: u64,
    decisions: BTreeMap<String, u64>,
    status: BTreeMap<String, u64>,
    lat: Vec<u64>,
    refusals: BTreeMap<String, u64>,
    metered: BTreeMap<String, u64>,
}

impl Acc {
    fn add(&mut self, r: &StoredRecord) {
        self.calls += 1;
        let d = r.decision.as_deref().unwrap_or("deny");
        match self.decisions.get_mut(d) {
            Some(n) => *n += 1,
            None => {
                self.decisions.insert(d.to_string(), 1);
            }
        }
        let class = status_class(r.status.unwrap_or(0));
        *self.status.entry(class.to_string()).or_default() += 1;
        if let Some(t) = r.total_us {
            self.lat.push(t);
        }
        if let Some(code) = r.code.as_deref() {
            match self.refusals.get_mut(code) {
                Some(n) => *n += 1,
                None => {
                    self.refusals.insert(code.to_string(), 1);
                }
            }
        }
        for (k, v) in r.metered.iter().flatten() {
            let n = self.metered.entry(k.clone()).or_default();
            *n = n.saturating_add(*v);
        }
    }

    fn finish(mut self) -> (Counts, Vec<u64>) {
        self.lat.sort_unstable();
        let c = Counts {
            calls: self.calls,
            decisions: self.decisions,
            status: self.status,
            latency_us: latency(&self.lat),
            refusals: self.refusals,
            metered: self.metered,
        };
        (c, self.lat)
    }
}

fn status_class(s: u16) -> &'static str {
    match s / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "none",
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn latency(sorted: &[u64]) -> Latency {
    Latency {
        p50: percentile(sorted, 50.0),
        p99: percentile(sorted, 99.0),
        max: sorted.last().copied(),
    }
}

fn merge_counts(into: &mut Counts, c: &Counts) {
    into.calls += c.calls;
    for (k, v) in &c.decisions {
        *into.decisions.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &c.status {
        *into.status.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &c.refusals {
        *into.refusals.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &c.metered {
        let n = into.metered.entry(k.clone()).or_default();
        *n = n.saturating_add(*v);
    }
}

/// Aggregates the records of `dir` with `ts` in `[since, until]` (µs), optionally of one proxy.
pub fn compute(
    dir: &Path,
    proxy: Option<&str>,
    since: u64,
    until: u64,
    max_records: usize,
) -> Result<Report, QueryError> {
    let q = Query {
        proxy: proxy.map(str::to_string),
        agent: None,
        status: None,
        decision: None,
        since: Some(since),
        until: Some(until),
        shadow: false,
        limit: max_records,
        ..Query::default()
    };
    let mut groups: BTreeMap<(Option<String>, Option<String>), Acc> = BTreeMap::new();
    let mut oldest: Option<String> = None;
    let res = query_visit(dir, &q, &mut |r: StoredRecord| {
        let key = (r.proxy.clone(), r.agent.clone());
        groups.entry(key).or_default().add(&r);
        oldest = Some(r.ts);
    })?;
    let mut proxies: Vec<ProxyStats> = Vec::new();
    let mut proxy_lat: Vec<u64> = Vec::new();
    for ((p, a), acc) in groups {
        let (counts, lat) = acc.finish();
        if proxies.last().is_none_or(|l| l.proxy != p) {
            if let Some(last) = proxies.last_mut() {
                proxy_lat.sort_unstable();
                last.counts.latency_us = latency(&proxy_lat);
                proxy_lat.clear();
            }
            proxies.push(ProxyStats {
                proxy: p,
                counts: Counts::default(),
                agents: Vec::new(),
            });
        }
        if let Some(last) = proxies.last_mut() {
            merge_counts(&mut last.counts, &counts);
            proxy_lat.extend_from_slice(&lat);
            last.agents.push(AgentStats { agent: a, counts });
        }
    }
    if let Some(last) = proxies.last_mut() {
        proxy_lat.sort_unstable();
        last.counts.latency_us = latency(&proxy_lat);
    }
    Ok(Report {
        since: format_ts(since),
        until: format_ts(until),
        records: res.matched,
        truncated: res.matched >= max_records as u64,
        oldest,
        max_records,
        proxies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[1, 2], 99.0), Some(2));
    }
}
