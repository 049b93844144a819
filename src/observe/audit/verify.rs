//! Chain verification (`portcullis audit verify`) and sequential record reading.
//!
//! [`verify_dir`] walks every log file in `seq` order, line by line, and checks for each line that
//! its tail is `,"prev":"<64 hex>","hash":"<64 hex>"}`, that `prev` equals the previous line's
//! `hash` (64 zeros for the first line of the oldest file), and that `hash` is
//! `SHA-256(prev_hex || body)` over the bytes on disk (see `record.rs`). What each tamper looks
//! like:
//! - an edited line: [`BreakKind::HashMismatch`] on that line;
//! - a removed line: [`BreakKind::PrevMismatch`] on the line after it;
//! - two swapped lines: `PrevMismatch` on both and on the line after them;
//! - a removed middle file: `PrevMismatch` on line 1 of the file after it;
//! - removed oldest files (or a log that does not start at genesis): [`BreakKind::NotGenesis`];
//! - a torn line (no final `\n`) is a [`Warning`] when it is the last line of the newest file
//!   (a crash mid-write; the writer cuts it and writes a `torn_tail` gap record at its next
//!   start), and [`BreakKind::Torn`] anywhere else.
//!
//! After a break the walk re-anchors on the line's stored hash and goes on, so one edit is
//! reported once and every break in the log is listed (up to [`MAX_BREAKS`]).
//!
//! Not detectable by a hash chain alone: removing lines or whole files *at the end*. That is
//! what checkpoints and the published head are for ([`VerifyOptions`]):
//! - every checkpoint's Ed25519 signature is checked (against its own key, and with
//!   `--pubkey` it must be that key: [`BreakKind::BadCheckpoint`] otherwise), so a rewritten
//!   chain cannot carry valid checkpoints;
//! - `--expect-head HASH` (or `--head-file`, the writer's published head, whose signature is
//!   checked with `--pubkey`): the line with that hash must be in the log
//!   ([`BreakKind::HeadMissing`] otherwise). The writer publishes a head at every checkpoint,
//!   so removing the end of the log is detected unless it removes only what was written after
//!   the last checkpoint (at most one checkpoint interval).
//!
//! Retention deletes the oldest files and then writes an anchor record naming the hash of the
//! first line that remains: a log that does not start at genesis verifies when its first line
//! is one an anchor names ([`VerifyReport::anchored`]); otherwise it is `NotGenesis`.
#![forbid(unsafe_code)]

use super::files::{self, LogFile};
use super::record::{self, GENESIS, Hash, StoredRecord, hex_string};
use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Breaks listed before `verify_dir` stops collecting (it still counts them).
pub const MAX_BREAKS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// The line's content does not hash to its `hash` (the line was edited).
    HashMismatch,
    /// `prev` is not the previous line's hash (a line removed or reordered before it, or a
    /// file missing when `line == 1`).
    PrevMismatch { expected: String, found: String },
    /// The first line of the oldest file does not start the chain (older files removed?).
    NotGenesis { found: String },
    /// Not an audit line (no valid `prev`/`hash` tail).
    Malformed,
    /// A line without its final newline that is not the last line of the newest file.
    Torn,
    /// A checkpoint whose signature does not verify, or (with `--pubkey`) is unsigned or
    /// signed by another key.
    BadCheckpoint { why: String },
    /// The expected head is not in the log: its end was removed (`line` is 0).
    HeadMissing { expected: String },
}

/// One place where the chain is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
    pub kind: BreakKind,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let BreakKind::HeadMissing { expected } = &self.kind {
            return write!(
                f,
                "the expected head {expected} is not in the log: records were removed from its \
                 end (or this is not the log that published it)"
            );
        }
        write!(f, "{}:{}: ", files::display_name(&self.file), self.line)?;
        match &self.kind {
            BreakKind::HashMismatch => write!(f, "hash mismatch: the line was edited"),
            BreakKind::PrevMismatch { expected, found } if self.line == 1 => write!(
                f,
                "prev {found} does not match the last hash of the previous file ({expected}): \
                 a file or its last lines are missing"
            ),
            BreakKind::PrevMismatch { expected, found } => write!(
                f,
                "prev {found} does not match the previous line's hash ({expected}): \
                 a line was removed or lines were reordered"
            ),
            BreakKind::NotGenesis { found } => write!(
                f,
                "the log does not start at the genesis hash (prev {found}): older files are missing"
            ),
            BreakKind::Malformed => write!(f, "not an audit record (no valid prev/hash members)"),
            BreakKind::Torn => write!(f, "truncated line (no newline) before the end of the log"),
            BreakKind::BadCheckpoint { why } => write!(f, "bad checkpoint: {why}"),
            BreakKind::HeadMissing { .. } => Ok(()),
        }
    }
}

/// Something acceptable that the operator should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    pub line: u64,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}",
            files::display_name(&self.file),
            self.line,
            self.message
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    /// Call records.
    pub records: u64,
    /// Gap records, and the records they stand for.
    pub gaps: u64,
    pub dropped: u64,
    pub warnings: Vec<Warning>,
    /// Hash of the last valid line (64 zeros for an empty log): the chain head to anchor.
    pub head: String,
    /// Checkpoint records, and how many of them carry a signature that verified.
    pub checkpoints: u64,
    pub signed_checkpoints: u64,
    /// Hash of the last checkpoint, and the call records after it.
    pub last_checkpoint: Option<String>,
    pub after_checkpoint: u64,
    /// The log starts after genesis where a retention anchor says it does: the first file.
    pub anchored: Option<String>,
    /// With an expected head: the call records after it.
    pub after_head: Option<u64>,
    /// The first [`MAX_BREAKS`] gap records, for the report.
    pub gap_list: Vec<GapInfo>,
}

/// One gap record, as `audit verify` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GapInfo {
    pub file: PathBuf,
    pub line: u64,
    pub reason: String,
    pub dropped: u64,
    /// Receive times of the first and last lost record, when the gap says.
    pub window: Option<(String, String)>,
}

impl fmt::Display for GapInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} record(s) lost ({})",
            files::display_name(&self.file),
            self.line,
            self.dropped,
            self.reason
        )?;
        if let Some((from, to)) = &self.window {
            write!(f, ", received {from} to {to}")?;
        }
        Ok(())
    }
}

/// What to check beyond the chain.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Every checkpoint must be signed by this Ed25519 key.
    pub pubkey: Option<[u8; 32]>,
    /// A published head: the line with this hash must be in the log.
    pub expect_head: Option<Hash>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{count} break(s) in the audit chain; first: {}",
        .breaks.first().map(|b| b.to_string()).unwrap_or_default()
    )]
    Broken {
        /// The first [`MAX_BREAKS`] breaks, in log order.
        breaks: Vec<Break>,
        /// All breaks.
        count: usize,
        report: Box<VerifyReport>,
    },
}

/// Verifies the chain across all files of `dir` with checkpoint keys and an expected head. An
/// empty or missing directory verifies (0 files).
pub fn verify_dir_with(dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let logs = files::list_files(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v = Verifier {
        expected: GENESIS,
        expected_hex: [b'0'; 64],
        seen_any: false,
        breaks: Vec::new(),
        count: 0,
        opts: opts.clone(),
        start: None,
        anchors: HashSet::new(),
        head_seen: false,
        report: VerifyReport {
            files: logs.len(),
            ..Default::default()
        },
    };
    // the newest file that has any bytes: a torn last line there is a crash, not tampering
    let mut newest_nonempty = None;
    for (i, lf) in logs.iter().enumerate().rev() {
        match std::fs::metadata(&lf.path) {
            Ok(m) if m.len() > 0 => {
                newest_nonempty = Some(i);
                break;
            }
            Ok(_) => {}
            Err(source) => {
                return Err(VerifyError::Io {
                    path: lf.path.clone(),
                    source,
                });
            }
        }
    }
    for (i, lf) in logs.iter().enumerate() {
        v.file(lf, Some(i) == newest_nonempty)
            .map_err(|source| VerifyError::Io {
                path: lf.path.clone(),
                source,
            })?;
    }
    v.report.head = String::from_utf8_lossy(&v.expected_hex).into_owned();
    if let Some((file, line, found, first)) = v.start.take() {
        if v.anchors.contains(&first) {
            v.report.anchored = Some(files::display_name(&file));
        } else {
            // first in log order
            v.count += 1;
            v.breaks.insert(
                0,
                Break {
                    file,
                    line,
                    kind: BreakKind::NotGenesis { found },
                },
            );
            v.breaks.truncate(MAX_BREAKS);
        }
    }
    if let Some(h) = &opts.expect_head
        && !v.head_seen
    {
        v.brk(
            dir,
            0,
            BreakKind::HeadMissing {
                expected: hex_string(h),
            },
        );
    }
    if v.count > 0 {
        return Err(VerifyError::Broken {
            breaks: v.breaks,
            count: v.count,
            report: Box::new(v.report),
        });
    }
    Ok(v.report)
}

struct Verifier {
    expected: Hash,
    expected_hex: [u8; 64],
    seen_any: bool,
    breaks: Vec<Break>,
    count: usize,
    report: VerifyReport,
    opts: VerifyOptions,
    /// The first line when it does not start at genesis: file, line, its prev, its hash.
    start: Option<(PathBuf, u64, String, Hash)>,
    /// `first` of every anchor record.
    anchors: HashSet<Hash>,
    head_seen: bool,
}

impl Verifier {
    fn brk(&mut self, file: &Path, line: u64, kind: BreakKind) {
        self.count += 1;
        if self.breaks.len() < MAX_BREAKS {
            self.breaks.push(Break {
                file: file.to_path_buf(),
                line,
                kind,
            });
        }
    }

    fn file(&mut self, lf: &LogFile, newest: bool) -> io::Result<()> {
        let mut r = LineReader::open(&lf.path)?;
        while let Some(l) = r.next_line()? {
            if !l.complete {
                // read_until only stops without a newline at the end of the file
                if newest {
                    self.report.warnings.push(Warning {
                        file: lf.path.clone(),
                        line: l.number,
                        message: format!(
                            "torn last line ({} bytes without a newline): a crash during a \
                             write; not part of the chain",
                            l.bytes.len()
                        ),
                    });
                } else {
                    self.brk(&lf.path, l.number, BreakKind::Torn);
                }
                continue;
            }
            let Some(t) = record::split_tail(l.bytes) else {
                self.brk(&lf.path, l.number, BreakKind::Malformed);
                continue;
            };
            let Some(stored) = record::hex_decode(t.hash_hex) else {
                self.brk(&lf.path, l.number, BreakKind::Malformed);
                continue;
            };
            if t.prev_hex != self.expected_hex {
                let found = String::from_utf8_lossy(t.prev_hex).into_owned();
                if !self.seen_any {
                    // decided at the end: a retention anchor may vouch for this start
                    self.start = Some((lf.path.clone(), l.number, found, stored));
                } else {
                    let kind = BreakKind::PrevMismatch {
                        expected: hex_string(&self.expected),
                        found,
                    };
                    self.brk(&lf.path, l.number, kind);
                }
            }
            if record::chain_hash(t.prev_hex, t.body_open) != stored {
                self.brk(&lf.path, l.number, BreakKind::HashMismatch);
            }
            if self.opts.expect_head == Some(stored) {
                self.head_seen = true;
                self.report.after_head = Some(0);
            }
            let kinded = l
                .bytes
                .get(record::TS_PREFIX.len() + record::TS_LEN + 1..)
                .is_some_and(|r| r.starts_with(b",\"kind\":\""));
            if !kinded {
                self.report.records += 1;
                self.report.after_checkpoint += 1;
                if let Some(n) = self.report.after_head.as_mut() {
                    *n += 1;
                }
            } else {
                match StoredRecord::parse(l.bytes) {
                    Ok(s) if s.is_gap() => {
                        self.report.gaps += 1;
                        self.report.dropped += s.dropped.unwrap_or(0);
                        if self.report.gap_list.len() < MAX_BREAKS {
                            self.report.gap_list.push(GapInfo {
                                file: lf.path.clone(),
                                line: l.number,
                                reason: s.reason.clone().unwrap_or_default(),
                                dropped: s.dropped.unwrap_or(0),
                                window: s.from.clone().zip(s.to.clone()),
                            });
                        }
                    }
                    Ok(s) if s.kind.as_deref() == Some("checkpoint") => {
                        self.report.checkpoints += 1;
                        self.report.last_checkpoint = Some(s.hash.clone());
                        self.report.after_checkpoint = 0;
                        match self.checkpoint(&s) {
                            Ok(true) => self.report.signed_checkpoints += 1,
                            Ok(false) => {}
                            Err(why) => {
                                self.brk(&lf.path, l.number, BreakKind::BadCheckpoint { why })
                            }
                        }
                    }
                    Ok(s) if s.kind.as_deref() == Some("anchor") => {
                        if let Some(h) = s
                            .first
                            .as_deref()
                            .and_then(|h| record::hex_decode(h.as_bytes()))
                        {
                            self.anchors.insert(h);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => self.brk(&lf.path, l.number, BreakKind::Malformed),
                }
            }
            self.seen_any = true;
            self.expected = stored;
            self.expected_hex.copy_from_slice(t.hash_hex);
        }
        Ok(())
    }
}

impl Verifier {
    /// `Ok(true)`: signed and the signature verifies; `Ok(false)`: unsigned (allowed without
    /// `--pubkey`).
    fn checkpoint(&self, s: &StoredRecord) -> Result<bool, String> {
        let (Some(key), Some(sig)) = (s.key.as_deref(), s.sig.as_deref()) else {
            if self.opts.pubkey.is_some() {
                return Err("unsigned, but --pubkey requires every checkpoint to be signed".into());
            }
            return Ok(false);
        };
        let key = crate::util::hex::decode32(key.as_bytes())
            .ok_or_else(|| "the key is not 64 hex digits".to_string())?;
        if let Some(want) = &self.opts.pubkey
            && *want != key
        {
            return Err(format!(
                "signed by another key ({})",
                crate::util::hex::encode(&key)
            ));
        }
        let sig = crate::util::hex::decode(sig.as_bytes())
            .ok_or_else(|| "the signature is not hex".to_string())?;
        let msg = record::checkpoint_message(&s.ts, &s.prev, s.records.unwrap_or(0));
        if super::sign::verify(&key, &msg, &sig) {
            Ok(true)
        } else {
            Err("the signature does not verify".into())
        }
    }
}

/// A published head (`head_file`, `GET /v1/audit/head`), checked with the public key if given.
/// Returns the hash to expect.
pub fn read_head(text: &str, pubkey: Option<&[u8; 32]>) -> Result<Hash, String> {
    #[derive(serde::Deserialize)]
    struct Head {
        ts: String,
        hash: String,
        prev: String,
        records: u64,
        key: Option<String>,
        sig: Option<String>,
    }
    let h: Head = serde_json::from_str(text.trim()).map_err(|e| format!("not a head: {e}"))?;
    let hash =
        record::hex_decode(h.hash.as_bytes()).ok_or("the head's hash is not 64 hex digits")?;
    if let Some(want) = pubkey {
        let (Some(key), Some(sig)) = (h.key.as_deref(), h.sig.as_deref()) else {
            return Err("the head is not signed".into());
        };
        if crate::util::hex::decode32(key.as_bytes()).as_ref() != Some(want) {
            return Err("the head is signed by another key".into());
        }
        let sig = crate::util::hex::decode(sig.as_bytes()).ok_or("the signature is not hex")?;
        let msg = record::checkpoint_message(&h.ts, &h.prev, h.records);
        if !super::sign::verify(want, &msg, &sig) {
            return Err("the head's signature does not verify".into());
        }
    }
    Ok(hash)
}

/// One line from [`LineReader`].
pub struct Line<'a> {
    /// 1-based line number in its file.
    pub number: u64,
    /// Without the newline.
    pub bytes: &'a [u8],
    /// Whether it ended in `\n` (a torn last line does not).
    pub complete: bool,
}

/// Reads one log file line by line with line numbers, reusing one buffer.
pub struct LineReader {
    inner: BufReader<File>,
    buf: Vec<u8>,
    number: u64,
}

impl LineReader {
    pub fn open(path: &Path) -> io::Result<LineReader> {
        Ok(LineReader {
            inner: BufReader::with_capacity(1 << 20, File::open(path)?),
            buf: Vec::with_capacity(1024),
            number: 0,
        })
    }

    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let n = self.inner.read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        let complete = self.buf.last() == Some(&b'\n');
        let bytes = if complete {
            &self.buf[..n - 1]
        } else {
            &self.buf[..]
        };
        Ok(Some(Line {
            number: self.number,
            bytes,
            complete,
        }))
    }
}

/// Every parseable record (calls and gaps) of `dir` in log order, oldest first, skipping torn
/// and malformed lines (use [`verify_dir`] to find those). For exports and tests; queries use
/// the index (`query.rs`).
pub fn read_all(dir: &Path) -> io::Result<Vec<StoredRecord>> {
    let mut out = Vec::new();
    for lf in files::list_files(dir)? {
        let mut r = LineReader::open(&lf.path)?;
        while let Some(l) = r.next_line()? {
            if l.complete
                && let Ok(s) = StoredRecord::parse(l.bytes)
            {
                out.push(s);
            }
        }
    }
    Ok(out)
}
