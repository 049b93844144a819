//! Record queries for `portcullis logs` and `GET /v1/requests`: filters, newest first, limit.
//!
//! "Newest first" is reverse log order, i.e. reverse completion order (the writer appends calls
//! as they finish); `since`/`until` filter on `ts` (when the call was received), inclusive at
//! both ends; `shadow` keeps only calls a report-mode rule would have decided differently.
//! Gap, checkpoint and anchor records are never returned.
//!
//! # How it stays fast on large logs
//!
//! Files are visited newest first; within a file the unindexed tail (records since the last
//! complete index block; at most one block for a file written by a live writer) is read first,
//! then the indexed blocks from last to first. A block is skipped without reading when its
//! `[min_ts, max_ts]` misses the time range, when its Bloom filter rules out the proxy, agent
//! or exact status, or when no record of the wanted status class is in it. A read block is
//! scanned backwards; a line is fully parsed only after its timestamp (read by position) and
//! fixed substrings (`,"proxy":"crm"`, `,"status":403,`) pass. The scan stops at `limit`. So
//! the cost is bounded by the blocks that can match, not by the size of the log: a query with a
//! limit and no filter reads one block; a time-bounded one reads only the blocks of that window.
//! Worst case: a filter the index cannot rule out (e.g. a proxy/agent pair that never occurs
//! together, both common) over an unbounded time range scans the whole log (memmem speed).
#![forbid(unsafe_code)]

use super::files;
use super::index::{self, BlockEntry};
use super::record::{self, StoredRecord};
use memchr::memmem::Finder;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_LIMIT: usize = 100;

/// `status=403` or `status=4xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    /// The hundreds digit: `4` for `4xx`.
    Class(u8),
}

impl StatusFilter {
    /// `"403"` → exact, `"4xx"` / `"4XX"` → class; anything else (or outside 100..=999) → `None`.
    pub fn parse(s: &str) -> Option<StatusFilter> {
        let b = s.trim().as_bytes();
        match b {
            [d @ b'1'..=b'9', x, y]
                if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
            {
                Some(StatusFilter::Class(d - b'0'))
            }
            [b'1'..=b'9', b'0'..=b'9', b'0'..=b'9'] => std::str::from_utf8(b)
                .ok()?
                .parse()
                .ok()
                .map(StatusFilter::Exact),
            _ => None,
        }
    }

    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Exact(s) => status == s,
            StatusFilter::Class(c) => status / 100 == c as u16,
        }
    }
}

/// What to look for. `since`/`until` are µs since the epoch, inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub proxy: Option<String>,
    pub agent: Option<String>,
    pub status: Option<StatusFilter>,
    /// `allow`, `deny`, `approve`… (the record's `decision`).
    pub decision: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    /// Only calls with a report-mode (shadow) rule hit.
    pub shadow: bool,
    /// MCP: only calls that named this tool (or resource URI, or prompt name).
    pub tool: Option<String>,
    /// MCP: only calls with this JSON-RPC method (`tools/call`, ...).
    pub mcp_method: Option<String>,
    pub limit: usize,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            proxy: None,
            agent: None,
            status: None,
            decision: None,
            since: None,
            until: None,
            shadow: false,
            tool: None,
            mcp_method: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl Query {
    /// Whether a parsed record matches (the exact test behind the fast pre-filters).
    pub fn matches(&self, r: &StoredRecord) -> bool {
        if !r.is_call() {
            return false;
        }
        if self.shadow && r.shadow.is_none() {
            return false;
        }
        if let Some(p) = &self.proxy
            && r.proxy.as_deref() != Some(p.as_str())
        {
            return false;
        }
        if let Some(a) = &self.agent
            && r.agent.as_deref() != Some(a.as_str())
        {
            return false;
        }
        if let Some(s) = self.status
            && !r.status.is_some_and(|st| s.matches(st))
        {
            return false;
        }
        if let Some(d) = &self.decision
            && r.decision.as_deref() != Some(d.as_str())
        {
            return false;
        }
        if let Some(t) = &self.tool
            && ![&r.tool, &r.resource, &r.prompt]
                .iter()
                .any(|v| v.as_deref() == Some(t.as_str()))
        {
            return false;
        }
        if let Some(m) = &self.mcp_method
            && r.mcp_method.as_deref() != Some(m.as_str())
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(ts) = r.ts_us() else { return false };
            if self.since.is_some_and(|s| ts < s) || self.until.is_some_and(|u| ts > u) {
                return false;
            }
        }
        true
    }
}

/// A time argument: RFC 3339 / a date, or a duration meaning "that long before `now_us`"
/// (`"15m"`, `"2h"`, `"7d"`).
pub fn parse_time_arg(s: &str, now_us: u64) -> Option<u64> {
    if let Some(t) = record::parse_rfc3339(s) {
        return Some(t);
    }
    let d = crate::util::units::parse_duration(s).ok()?;
    Some(now_us.saturating_sub(d.as_micros() as u64))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Newest first.
    pub records: Vec<StoredRecord>,
    pub files_visited: u64,
    pub blocks_read: u64,
    pub blocks_skipped: u64,
    pub bytes_read: u64,
    pub lines_scanned: u64,
    /// Complete lines that could not be read (`audit verify` says more).
    pub malformed: u64,
    /// Records that matched (`records.len()` for [`query`]; what the visitor saw for
    /// [`query_visit`]).
    pub matched: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct QueryError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Runs `q` over the audit directory `dir`.
pub fn query(dir: &Path, q: &Query) -> Result<QueryResult, QueryError> {
    run(dir, q, None)
}

/// Like [`query`], but hands each matching record (newest first, at most `q.limit`) to `visit`
/// instead of collecting them: memory stays flat however many records a window holds (for
/// aggregates such as `GET /v1/telemetry`). `records` of the result stays empty.
pub fn query_visit(
    dir: &Path,
    q: &Query,
    visit: &mut dyn FnMut(StoredRecord),
) -> Result<QueryResult, QueryError> {
    run(dir, q, Some(visit))
}

fn run(
    dir: &Path,
    q: &Query,
    visit: Option<&mut dyn FnMut(StoredRecord)>,
) -> Result<QueryResult, QueryError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QueryError { path, source }
    };
    let logs = files::list_files(dir).map_err(err(dir))?;
    let mut s = Scan::new(q, visit);
    if q.limit == 0 {
        return Ok(s.res);
    }
    for lf in logs.iter().rev() {
        let file = match File::open(&lf.path) {
            Ok(f) => f,
            // removed since the listing (retention): not an error for a query
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(&lf.path)(e)),
        };
        let len = file.metadata().map_err(err(&lf.path))?.len();
        if len == 0 {
            continue;
        }
        s.res.files_visited += 1;
        let blocks = index::load(&lf.path, len);
        let tail = blocks.last().map_or(0, |b| b.end);
        if tail < len && s.scan_range(&file, tail, len).map_err(err(&lf.path))? {
            break;
        }
        let mut done = false;
        for b in blocks.iter().rev() {
            if s.skip(b) {
                s.res.blocks_skipped += 1;
                continue;
            }
            if s.scan_range(&file, b.start, b.end).map_err(err(&lf.path))? {
                done = true;
                break;
            }
        }
        if done {
            break;
        }
    }
    Ok(s.res)
}

const CHUNK: u64 = 4 << 20;

struct Scan<'q, 'v> {
    q: &'q Query,
    visit: Option<&'v mut dyn FnMut(StoredRecord)>,
    proxy_key: Option<u64>,
    agent_key: Option<u64>,
    status_key: Option<u64>,
    needles: Vec<Finder<'static>>,
    buf: Vec<u8>,
    res: QueryResult,
}

impl<'q, 'v> Scan<'q, 'v> {
    fn new(q: &'q Query, visit: Option<&'v mut dyn FnMut(StoredRecord)>) -> Self {
        let mut needles = Vec::new();
        let mut needle = |key: &str, v: &str| {
            let mut n = format!(",\"{key}\":").into_bytes();
            record::push_json_str(&mut n, v);
            needles.push(Finder::new(&n).into_owned());
        };
        if let Some(p) = &q.proxy {
            needle("proxy", p);
        }
        if let Some(a) = &q.agent {
            needle("agent", a);
        }
        if let Some(d) = &q.decision {
            needle("decision", d);
        }
        if let Some(m) = &q.mcp_method {
            needle("mcp_method", m);
        }
        if q.shadow {
            needles.push(Finder::new(b",\"shadow\":{").into_owned());
        }
        if let Some(t) = &q.tool {
            // `"tool":`, `"resource":` or `"prompt":` before it: the value alone pre-filters
            let mut n = b"\":".to_vec();
            record::push_json_str(&mut n, t);
            needles.push(Finder::new(&n).into_owned());
        }
        if let Some(StatusFilter::Exact(s)) = q.status {
            needles.push(Finder::new(format!(",\"status\":{s},").as_bytes()).into_owned());
        }
        Scan {
            q,
            visit,
            proxy_key: q.proxy.as_deref().map(index::proxy_key),
            agent_key: q.agent.as_deref().map(index::agent_key),
            status_key: match q.status {
                Some(StatusFilter::Exact(s)) => Some(index::status_key(s)),
                _ => None,
            },
            needles,
            buf: Vec::new(),
            res: QueryResult::default(),
        }
    }

    fn skip(&self, b: &BlockEntry) -> bool {
        let q = self.q;
        q.since.is_some_and(|s| b.max_ts < s)
            || q.until.is_some_and(|u| b.min_ts > u)
            || [self.proxy_key, self.agent_key, self.status_key]
                .into_iter()
                .flatten()
                .any(|k| !b.may_contain(k))
            || matches!(q.status, Some(StatusFilter::Class(c)) if !b.may_have_class(c))
    }

    /// Scans the lines of `[start, end)` newest first; `true` once the limit is reached. A last
    /// segment without a newline (a line being written, or torn) is ignored.
    fn scan_range(&mut self, file: &File, start: u64, end: u64) -> io::Result<bool> {
        self.res.blocks_read += 1;
        let mut hi = end;
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let mut done = false;
        while hi > start && !done {
            let lo = hi.saturating_sub(CHUNK).max(start);
            let n = (hi - lo) as usize;
            buf.clear();
            buf.resize(n, 0);
            read_exact_at_or_short(file, &mut buf, lo)?;
            self.res.bytes_read += n as u64;
            buf.extend_from_slice(&carry);
            carry.clear();
            let first = if lo > start {
                match memchr::memchr(b'\n', &buf) {
                    Some(i) => i + 1,
                    None => {
                        std::mem::swap(&mut carry, &mut buf);
                        hi = lo;
                        continue;
                    }
                }
            } else {
                0
            };
            done = self.scan_lines_rev(&buf[first..]);
            carry.extend_from_slice(&buf[..first]);
            hi = lo;
        }
        self.buf = buf;
        Ok(done)
    }

    fn scan_lines_rev(&mut self, region: &[u8]) -> bool {
        let mut end = match memchr::memrchr(b'\n', region) {
            Some(i) => i + 1,
            None => return false,
        };
        while end > 0 {
            let line_end = end - 1;
            let ls = memchr::memrchr(b'\n', &region[..line_end]).map_or(0, |i| i + 1);
            if self.consider(&region[ls..line_end]) {
                return true;
            }
            end = ls;
        }
        false
    }

    fn consider(&mut self, line: &[u8]) -> bool {
        self.res.lines_scanned += 1;
        let q = self.q;
        if q.since.is_some() || q.until.is_some() {
            let Some(ts) = record::line_ts(line) else {
                self.res.malformed += 1;
                return false;
            };
            if q.since.is_some_and(|s| ts < s) || q.until.is_some_and(|u| ts > u) {
                return false;
            }
        }
        if line
            .get(record::TS_PREFIX.len() + record::TS_LEN + 1..)
            .is_some_and(|r| r.starts_with(b",\"kind\":\""))
        {
            return false;
        }
        if self.needles.iter().any(|f| f.find(line).is_none()) {
            return false;
        }
        match StoredRecord::parse(line) {
            Ok(r) if q.matches(&r) => {
                self.res.matched += 1;
                match &mut self.visit {
                    Some(v) => v(r),
                    None => self.res.records.push(r),
                }
                self.res.matched >= q.limit as u64
            }
            Ok(_) => false,
            Err(_) => {
                self.res.malformed += 1;
                false
            }
        }
    }
}

/// Like `read_exact_at`, but a file that shrank under us (a torn tail cut at restart) leaves
/// zeros instead of failing; zero bytes never form a line that parses.
fn read_exact_at_or_short(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
