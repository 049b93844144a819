//! The sparse sidecar index `audit-….jsonl.idx`: one fixed-size entry per block of (by default)
//! 4096 records, written by the writer when the block is complete and when the file is closed.
//!
//! Timestamps are not monotonic within a log (`ts` is when a call was received; records are
//! written in completion order, and a slow call finishes late), so an entry carries the block's
//! min and max `ts` rather than a position in time. It also carries a 512-bit Bloom filter of the
//! block's proxies, agents and exact statuses and a bitmask of status classes, so a query for a
//! rare agent skips blocks without reading them.
//!
//! Layout (little-endian): 8-byte magic `PCAIDX01`, then 104-byte entries:
//! `start u64, end u64, min_ts u64, max_ts u64, count u32, classes u32, bloom [u64; 8]`.
//!
//! The index is an optimisation only: readers validate it against the log ([`load`]) and read
//! everything past the last valid entry as an unindexed tail, so a missing, torn or stale index
//! costs time, never results.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"PCAIDX01";
pub const ENTRY_LEN: usize = 104;

/// Records per block unless configured otherwise.
pub const DEFAULT_BLOCK_RECORDS: u32 = 4096;

/// One indexed block of lines: bytes `[start, end)` of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    pub start: u64,
    pub end: u64,
    pub min_ts: u64,
    pub max_ts: u64,
    pub count: u32,
    /// Bit `c` set if a record with status `c·100..c·100+99` is in the block (c ≤ 9).
    pub classes: u32,
    pub bloom: [u64; 8],
}

impl BlockEntry {
    pub fn empty(start: u64) -> Self {
        BlockEntry {
            start,
            end: start,
            min_ts: u64::MAX,
            max_ts: 0,
            count: 0,
            classes: 0,
            bloom: [0; 8],
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.start, self.end, self.min_ts, self.max_ts] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.classes.to_le_bytes());
        for w in self.bloom {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    pub fn decode(b: &[u8]) -> Option<BlockEntry> {
        if b.len() != ENTRY_LEN {
            return None;
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(a)
        };
        let mut bloom = [0u64; 8];
        for (k, w) in bloom.iter_mut().enumerate() {
            *w = u64_at(40 + 8 * k);
        }
        Some(BlockEntry {
            start: u64_at(0),
            end: u64_at(8),
            min_ts: u64_at(16),
            max_ts: u64_at(24),
            count: u32_at(32),
            classes: u32_at(36),
            bloom,
        })
    }

    /// Adds one record's facts; `end` is the offset just past its line.
    pub fn add(&mut self, ts: u64, keys: &[u64], status: Option<u16>, end: u64) {
        self.count += 1;
        self.end = end;
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        if let Some(s) = status {
            self.classes |= 1 << (s / 100).min(9);
        }
        for &k in keys {
            bloom_insert(&mut self.bloom, k);
        }
    }

    pub fn may_contain(&self, key: u64) -> bool {
        let (a, b) = bloom_bits(key);
        self.bloom[a / 64] & (1 << (a % 64)) != 0 && self.bloom[b / 64] & (1 << (b % 64)) != 0
    }

    pub fn may_have_class(&self, class: u8) -> bool {
        self.classes & (1 << class.min(9)) != 0
    }
}

fn bloom_bits(key: u64) -> (usize, usize) {
    ((key & 511) as usize, ((key >> 32) & 511) as usize)
}

fn bloom_insert(bloom: &mut [u64; 8], key: u64) {
    let (a, b) = bloom_bits(key);
    bloom[a / 64] |= 1 << (a % 64);
    bloom[b / 64] |= 1 << (b % 64);
}

/// FNV-1a over `tag` and `bytes`, finished with the splitmix64 mixer (stable across builds:
/// the index outlives the binary that wrote it).
fn key_hash(tag: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&tag).chain(bytes) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub fn proxy_key(name: &str) -> u64 {
    key_hash(b'p', name.as_bytes())
}

pub fn agent_key(name: &str) -> u64 {
    key_hash(b'a', name.as_bytes())
}

pub fn status_key(status: u16) -> u64 {
    key_hash(b's', &status.to_le_bytes())
}

pub fn idx_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".idx");
    PathBuf::from(s)
}

/// The valid prefix of an index for a log of `log_len` bytes: entries must tile the log from
/// offset 0 without gaps (`start` = previous `end`, `end` > `start`, `end` ≤ `log_len`).
/// Reading stops at the first entry that does not; a bad magic yields no entries.
pub fn parse_valid(idx: &[u8], log_len: u64) -> Vec<BlockEntry> {
    let mut out = Vec::new();
    if idx.len() < MAGIC.len() || &idx[..MAGIC.len()] != MAGIC {
        return out;
    }
    let mut expect = 0u64;
    for chunk in idx[MAGIC.len()..].chunks_exact(ENTRY_LEN) {
        let Some(e) = BlockEntry::decode(chunk) else {
            break;
        };
        if e.start != expect || e.end <= e.start || e.end > log_len || e.min_ts > e.max_ts {
            break;
        }
        expect = e.end;
        out.push(e);
    }
    out
}

/// Reads and validates the index of `log` (empty if absent or unreadable).
pub fn load(log: &Path, log_len: u64) -> Vec<BlockEntry> {
    match std::fs::read(idx_path(log)) {
        Ok(b) => parse_valid(&b, log_len),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_validation() {
        let mut a = BlockEntry::empty(0);
        a.add(10, &[proxy_key("crm"), agent_key("bot")], Some(403), 100);
        a.add(5, &[proxy_key("crm")], Some(200), 250);
        let mut b = BlockEntry::empty(250);
        b.add(7, &[], None, 300);
        let mut idx = MAGIC.to_vec();
        a.encode(&mut idx);
        b.encode(&mut idx);
        assert_eq!(idx.len(), 8 + 2 * ENTRY_LEN);
        assert_eq!(parse_valid(&idx, 300), vec![a.clone(), b.clone()]);
        // stale entry past the end of a truncated log
        assert_eq!(parse_valid(&idx, 299), vec![a.clone()]);
        // torn entry
        assert_eq!(parse_valid(&idx[..idx.len() - 1], 300), vec![a.clone()]);
        assert!(parse_valid(b"garbage!", 300).is_empty());
        assert_eq!((a.min_ts, a.max_ts, a.count), (5, 10, 2));
        assert!(a.may_contain(proxy_key("crm")));
        assert!(a.may_contain(agent_key("bot")));
        assert!(a.may_have_class(4) && a.may_have_class(2) && !a.may_have_class(5));
        assert!(!b.may_contain(proxy_key("crm")));
    }
}
