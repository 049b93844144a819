//! Reading the audit files behind a sink's cursor: batches of complete lines in chain order
//! (a torn last line is never read: the writer cuts it at restart), moving to the next file only
//! once a newer one exists (the writer writes only the newest), and noticing files that
//! retention deleted before the sink delivered them (a gap, logged and counted).
#![forbid(unsafe_code)]

use crate::observe::audit::cursor::{self, Cursor};
use crate::observe::audit::files::{self, LogFile};
use crate::observe::audit::record;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A batch of complete lines (without their `\n`) and the cursor after the last one.
pub struct Batch {
    pub buf: Vec<u8>,
    /// `(start, end)` of each line in `buf`.
    pub lines: Vec<(usize, usize)>,
    pub end: Cursor,
}

impl Batch {
    pub fn line_slices(&self) -> Vec<&[u8]> {
        self.lines.iter().map(|&(s, e)| &self.buf[s..e]).collect()
    }
}

/// What the sink learns while reading (for logs and metrics).
#[derive(Default)]
pub struct Events {
    /// Log files that were gone before the sink delivered them.
    pub gaps: u64,
    /// The cursor did not match its file (it was replaced or cut): delivered again from its start.
    pub resets: u64,
}

pub struct Tail {
    dir: PathBuf,
    cursor_path: PathBuf,
    /// The last committed position (seq 0: nothing delivered yet).
    pub cursor: Cursor,
    /// Whether `cursor` was checked against its file since it was loaded.
    checked: bool,
    /// For the lag: lines counted per log file (`seq` → bytes scanned, lines in them). Log
    /// files only grow, so each byte is counted once.
    counted: std::collections::HashMap<u64, (u64, u64)>,
    /// Lines of the cursor's file before the cursor: `(seq, offset, lines)`.
    before: Option<(u64, u64, u64)>,
}

/// Largest line a sink reads (a longer one is skipped and counted as a gap).
const MAX_LINE: usize = 1 << 20;
/// Bytes per batch, whatever the record count.
const MAX_BATCH_BYTES: usize = 4 << 20;

impl Tail {
    /// Opens the sink's cursor (an unreadable one is logged, and delivery starts over).
    pub fn open(dir: &Path, name: &str) -> Tail {
        let cursor_path = cursor::path(dir, name);
        let cursor = match cursor::load(&cursor_path) {
            Ok(Some(c)) => c,
            Ok(None) => Cursor {
                seq: 0,
                file: String::new(),
                offset: 0,
                hash: None,
            },
            Err(e) => {
                tracing::warn!(sink = name, error = %e,
                    "audit sink: unreadable cursor; delivering again from the oldest file");
                Cursor {
                    seq: 0,
                    file: String::new(),
                    offset: 0,
                    hash: None,
                }
            }
        };
        Tail {
            dir: dir.to_path_buf(),
            cursor_path,
            cursor,
            checked: false,
            counted: std::collections::HashMap::new(),
            before: None,
        }
    }

    /// Makes `c` the durable position (after the receiver acknowledged everything before it),
    /// `lines` lines after the previous one.
    pub fn commit_lines(&mut self, c: Cursor, lines: u64) -> io::Result<()> {
        self.before = match self.before {
            Some((seq, _, n)) if seq == c.seq => Some((seq, c.offset, n + lines)),
            _ if c.offset == 0 => Some((c.seq, 0, 0)),
            _ => None,
        };
        self.commit(c)
    }

    /// Makes `c` the durable position.
    pub fn commit(&mut self, c: Cursor) -> io::Result<()> {
        if self
            .before
            .is_some_and(|(seq, off, _)| seq != c.seq || off != c.offset)
        {
            self.before = (c.offset == 0).then_some((c.seq, 0, 0));
        }
        self.cursor = c;
        cursor::store(&self.cursor_path, &self.cursor)
    }

    /// The next batch of at most `max` lines after the cursor, `None` when caught up.
    pub fn next_batch(&mut self, max: usize, ev: &mut Events) -> io::Result<Option<Batch>> {
        loop {
            let logs = files::list_files(&self.dir)?;
            let Some(i) = logs.iter().position(|l| l.seq == self.cursor.seq) else {
                // the first file ever, or ours is gone
                let Some(next) = logs.iter().find(|l| l.seq > self.cursor.seq) else {
                    return Ok(None);
                };
                if self.cursor.seq != 0 {
                    ev.gaps += 1;
                    tracing::warn!(file = %self.cursor.file, next = %files::display_name(&next.path),
                        "audit sink: the file it was delivering is gone (retention, max_lag); its undelivered records are lost to this sink");
                }
                self.advance(next)?;
                continue;
            };
            let lf = &logs[i];
            // the writer appends only to the newest file: if a newer one exists this one is final
            let newer = logs.get(i + 1);
            if !self.checked {
                self.checked = true;
                if !self.cursor_matches(&lf.path)? {
                    ev.resets += 1;
                    tracing::warn!(file = %lf.path.display(), offset = self.cursor.offset,
                        "audit sink: the cursor does not match its file (replaced or cut?); delivering the file again from its start");
                    self.cursor.offset = 0;
                    self.cursor.hash = None;
                }
            }
            let b = self.read_from(lf, max)?;
            if !b.lines.is_empty() {
                return Ok(Some(b));
            }
            match newer {
                Some(n) => self.advance(n)?,
                None => return Ok(None),
            }
        }
    }

    fn advance(&mut self, to: &LogFile) -> io::Result<()> {
        self.checked = true;
        self.commit(Cursor {
            seq: to.seq,
            file: files::display_name(&to.path),
            offset: 0,
            hash: None,
        })
    }

    /// Whether the line ending at the cursor's offset has the cursor's hash.
    fn cursor_matches(&self, path: &Path) -> io::Result<bool> {
        let off = self.cursor.offset;
        let Some(hash) = self.cursor.hash else {
            return Ok(off == 0);
        };
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        if off > len || off < 70 {
            return Ok(false);
        }
        let mut tail = [0u8; 68];
        f.seek(SeekFrom::Start(off - 68))?;
        f.read_exact(&mut tail)?;
        // …"<64 hex>"}\n
        Ok(&tail[65..] == b"\"}\n"
            && tail[0] == b'"'
            && record::hex_decode(&tail[1..65]).is_some_and(|h| h == hash))
    }

    fn read_from(&self, lf: &LogFile, max: usize) -> io::Result<Batch> {
        let mut f = File::open(&lf.path)?;
        f.seek(SeekFrom::Start(self.cursor.offset))?;
        let mut r = BufReader::with_capacity(256 << 10, f);
        let mut b = Batch {
            buf: Vec::new(),
            lines: Vec::new(),
            end: self.cursor.clone(),
        };
        b.end.file = files::display_name(&lf.path);
        let mut line = Vec::new();
        while b.lines.len() < max && b.buf.len() < MAX_BATCH_BYTES {
            line.clear();
            let n = (&mut r)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                if n > MAX_LINE {
                    // not a record the writer wrote: skip to the next newline
                    tracing::warn!(file = %lf.path.display(), offset = b.end.offset,
                        "audit sink: a line longer than 1 MiB is skipped");
                    let mut rest = Vec::new();
                    let m = r.read_until(b'\n', &mut rest)?;
                    if rest.last() == Some(&b'\n') {
                        b.end.offset += (n + m) as u64;
                        continue;
                    }
                }
                break; // end of file, or a line still being written
            }
            let body = &line[..n - 1];
            let start = b.buf.len();
            b.buf.extend_from_slice(body);
            b.lines.push((start, b.buf.len()));
            b.end.offset += n as u64;
            b.end.hash = record::split_tail(body).and_then(|t| record::hex_decode(t.hash_hex));
        }
        Ok(b)
    }

    /// Undelivered lines after the cursor and the time of the oldest (µs). Counting reads each
    /// byte of the log once (files only grow; counts are kept per file), so a long backlog does
    /// not cost a full read per call.
    pub fn lag(&mut self) -> io::Result<(u64, Option<u64>)> {
        let logs = files::list_files(&self.dir)?;
        let cur = self.cursor.seq;
        self.counted.retain(|seq, _| *seq >= cur);
        let mut total = 0u64;
        for lf in logs.iter().filter(|l| l.seq >= cur) {
            let (from, lines) = self.counted.get(&lf.seq).copied().unwrap_or((0, 0));
            let (to, more) = match count_lines(&lf.path, from) {
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            self.counted.insert(lf.seq, (to, lines + more));
            total += lines + more;
        }
        // lines before the cursor in its own file: counted once, then kept by `commit_lines`
        let delivered_here = match self.before {
            Some((seq, off, n)) if seq == cur && off == self.cursor.offset => n,
            _ => {
                let n = match logs.iter().find(|l| l.seq == cur) {
                    Some(lf) => count_lines_upto(&lf.path, self.cursor.offset)?,
                    None => 0,
                };
                self.before = Some((cur, self.cursor.offset, n));
                n
            }
        };
        let records = total.saturating_sub(delivered_here);
        let oldest = if records == 0 {
            None
        } else {
            self.oldest_undelivered(&logs)?
        };
        Ok((records, oldest))
    }

    /// The time of the first complete line after the cursor.
    fn oldest_undelivered(&self, logs: &[LogFile]) -> io::Result<Option<u64>> {
        for lf in logs.iter().filter(|l| l.seq >= self.cursor.seq) {
            let Ok(mut f) = File::open(&lf.path) else {
                continue;
            };
            if lf.seq == self.cursor.seq {
                f.seek(SeekFrom::Start(self.cursor.offset))?;
            }
            let mut first = Vec::new();
            BufReader::new(f.take(MAX_LINE as u64)).read_until(b'\n', &mut first)?;
            if first.last() == Some(&b'\n') {
                return Ok(record::line_ts(&first));
            }
        }
        Ok(None)
    }
}

/// Newlines in `path` from byte `from` to its current end: (end, count).
fn count_lines(path: &Path, from: u64) -> io::Result<(u64, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len <= from {
        return Ok((from.min(len), 0));
    }
    f.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(256 << 10, f.take(len - from));
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        n += memchr::memchr_iter(b'\n', buf).count() as u64;
        let k = buf.len();
        r.consume(k);
    }
    Ok((len, n))
}

/// Newlines in the first `upto` bytes of `path`.
fn count_lines_upto(path: &Path, upto: u64) -> io::Result<u64> {
    let f = File::open(path)?;
    let mut r = BufReader::with_capacity(256 << 10, f.take(upto));
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        n += memchr::memchr_iter(b'\n', buf).count() as u64;
        let k = buf.len();
        r.consume(k);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(i: u64) -> Vec<u8> {
        format!(
            "{{\"ts\":\"2026-11-24T09:59:27.000000Z\",\"id\":\"r{i}\",\"prev\":\"{}\",\"hash\":\"{:064x}\"}}\n",
            "0".repeat(64),
            i
        )
        .into_bytes()
    }

    fn append(p: &Path, b: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .write_all(b)
            .unwrap();
    }

    fn ids(b: &Batch) -> Vec<String> {
        b.line_slices()
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                v["id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn batches_follow_files_skip_torn_tails_and_resume_from_the_cursor() {
        let d = tempfile::tempdir().unwrap();
        let f1 = d.path().join(files::file_name(1_795_600_767_000_000, 1));
        let f2 = d.path().join(files::file_name(1_795_600_768_000_000, 2));
        let mut all = Vec::new();
        for i in 1..=5 {
            all.extend(rec(i));
        }
        append(&f1, &all);
        append(&f1, b"{\"ts\":\"torn"); // being written
        let mut ev = Events::default();
        let mut t = Tail::open(d.path(), "s");
        let b = t.next_batch(3, &mut ev).unwrap().unwrap();
        assert_eq!(ids(&b), ["r1", "r2", "r3"]);
        t.commit(b.end).unwrap();
        let b = t.next_batch(3, &mut ev).unwrap().unwrap();
        assert_eq!(ids(&b), ["r4", "r5"]);
        // not committed: a restart delivers r4, r5 again (at least once)
        let mut t = Tail::open(d.path(), "s");
        let b = t.next_batch(10, &mut ev).unwrap().unwrap();
        assert_eq!(ids(&b), ["r4", "r5"]);
        t.commit(b.end).unwrap();
        assert!(t.next_batch(10, &mut ev).unwrap().is_none());
        assert_eq!(t.lag().unwrap().0, 0);
        // the writer restarts: cuts the torn line, opens file 2
        let len = std::fs::metadata(&f1).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f1)
            .unwrap()
            .set_len(len - 11)
            .unwrap();
        append(&f2, &rec(6));
        assert_eq!(t.lag().unwrap(), (1, Some(1_795_514_367_000_000)));
        let b = t.next_batch(10, &mut ev).unwrap().unwrap();
        assert_eq!(ids(&b), ["r6"]);
        t.commit(b.end).unwrap();
        assert_eq!((ev.gaps, ev.resets), (0, 0));
        // retention removes file 1 (delivered): no gap
        let f3 = d.path().join(files::file_name(1_795_600_769_000_000, 3));
        append(&f3, &rec(7));
        std::fs::remove_file(&f1).unwrap();
        let b = t.next_batch(10, &mut ev).unwrap().unwrap();
        assert_eq!(ids(&b), ["r7"]);
        assert_eq!(ev.gaps, 0);
        // a file deleted undelivered is a gap
        let mut t2 = Tail::open(d.path(), "other");
        t2.commit(Cursor {
            seq: 1,
            file: "gone".into(),
            offset: 10,
            hash: None,
        })
        .unwrap();
        let b = t2.next_batch(10, &mut ev).unwrap().unwrap();
        assert_eq!(ids(&b), ["r6"]);
        assert_eq!(ev.gaps, 1);
    }

    #[test]
    fn a_cursor_that_does_not_match_its_file_starts_the_file_over() {
        let d = tempfile::tempdir().unwrap();
        let f1 = d.path().join(files::file_name(1_795_600_767_000_000, 1));
        append(&f1, &rec(1));
        append(&f1, &rec(2));
        let mut t = Tail::open(d.path(), "s");
        let mut ev = Events::default();
        let b = t.next_batch(1, &mut ev).unwrap().unwrap();
        let mut end = b.end.clone();
        end.hash = Some([9; 32]);
        t.commit(end).unwrap();
        let mut t = Tail::open(d.path(), "s");
        let b = t.next_batch(10, &mut ev).unwrap().unwrap();
        assert_eq!(ids(&b), ["r1", "r2"]);
        assert_eq!(ev.resets, 1);
    }
}
