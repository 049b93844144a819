//! Audit file names and listing. A log file is `audit-YYYYMMDDTHHMMSSZ-<seq>.jsonl` (UTC creation
//! time, then a sequence number that only grows, zero-padded to 8 digits); its sparse index sits
//! beside it as `….jsonl.idx`. Chain order is `seq` order — not name order, which would be wrong
//! if the wall clock stepped back between two rotations.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

/// One log file of an audit directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub seq: u64,
}

/// `audit-20261124T095927Z-00000042.jsonl` for a creation time in µs and a sequence number.
pub fn file_name(ts_us: u64, seq: u64) -> String {
    let mut ts = Vec::with_capacity(27);
    super::record::push_ts(&mut ts, ts_us);
    // YYYY-MM-DDTHH:MM:SS.ffffffZ → YYYYMMDDTHHMMSSZ
    let compact: String = ts[..19]
        .iter()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|&c| c as char)
        .collect();
    format!("audit-{compact}Z-{seq:08}.jsonl")
}

/// The sequence number of a log file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (ts, seq) = stem.rsplit_once('-')?;
    if ts.len() != 16 || !seq.bytes().all(|b| b.is_ascii_digit()) || seq.is_empty() {
        return None;
    }
    seq.parse().ok()
}

/// The log files of `dir` in chain order (ascending `seq`). A missing directory is empty.
pub fn list_files(dir: &Path) -> io::Result<Vec<LogFile>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_name(name) {
            out.push(LogFile {
                path: ent.path(),
                seq,
            });
        }
    }
    out.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

/// The file name for messages (`audit-….jsonl`), falling back to the full path.
pub fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = file_name(1_795_600_767_123_456, 42);
        assert_eq!(parse_name(&n), Some(42));
        assert!(
            n.starts_with("audit-20") && n.ends_with("Z-00000042.jsonl"),
            "{n}"
        );
        assert_eq!(n.len(), "audit-20261124T095927Z-00000042.jsonl".len());
        assert_eq!(
            parse_name("audit-20261124T095927Z-00000042.jsonl.idx"),
            None
        );
        assert_eq!(parse_name("audit-x-1.jsonl"), None);
        assert_eq!(parse_name("other.jsonl"), None);
    }
}
