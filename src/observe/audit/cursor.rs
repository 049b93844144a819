//! A sink's durable cursor (`[[audit.sinks]]`, see `crate::siem`): how far into the audit files
//! one sink has delivered, as the log file's sequence number, the byte offset just after the last
//! delivered line, and that line's chain hash. It lives in the audit directory as
//! `.sink-<name>.cursor` (a dot file, so listings of log files ignore it), one JSON line, written
//! atomically (temporary file, fsync, rename, directory fsync) only after the receiver
//! acknowledged. The writer's retention reads it ([`held`]) so that a file a sink still needs is
//! not deleted (unless the sink lags more than its `max_lag`).
#![forbid(unsafe_code)]

use super::files;
use super::record::{self, Hash};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where one sink is: everything before `offset` in log file `seq` (and every older file) is
/// delivered; `hash` is the hash of the line that ends at `offset` (`None` at offset 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    /// The file's name, for people reading the cursor.
    pub file: String,
    pub offset: u64,
    pub hash: Option<Hash>,
}

/// A sink that retention must wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkHold {
    pub name: String,
    /// Files last written longer ago than this are deleted even if the sink has not delivered
    /// them (the sink then counts a gap). `None`: retention waits for the sink for ever.
    pub max_lag: Option<Duration>,
}

/// `dir/.sink-<name>.cursor`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".sink-{name}.cursor"))
}

impl Cursor {
    pub fn encode(&self) -> String {
        serde_json::json!({
            "seq": self.seq,
            "file": self.file,
            "offset": self.offset,
            "hash": self.hash.as_ref().map(record::hex_string),
        })
        .to_string()
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
        let hash = match v.get("hash")? {
            serde_json::Value::Null => None,
            serde_json::Value::String(h) => Some(record::hex_decode(h.as_bytes())?),
            _ => return None,
        };
        Some(Cursor {
            seq: v.get("seq")?.as_u64()?,
            file: v.get("file")?.as_str()?.to_string(),
            offset: v.get("offset")?.as_u64()?,
            hash,
        })
    }
}

/// Reads the cursor at `path`: `Ok(None)` if there is none yet; an unreadable or malformed
/// cursor is an error (the caller decides: a sink starts over and says so).
pub fn load(path: &Path) -> io::Result<Option<Cursor>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Cursor::decode(&t).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a sink cursor", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the cursor atomically: temporary file, fsync, rename, directory fsync.
pub fn store(path: &Path, c: &Cursor) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(c.encode().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether retention must keep log file `lf` for one of `holds`: some sink's cursor is at or
/// before it (or the sink has none yet), and the file is not older than that sink's `max_lag`.
/// Returns the name of the first sink that holds it.
pub fn held<'a>(dir: &Path, lf: &files::LogFile, holds: &'a [SinkHold]) -> Option<&'a str> {
    let age = std::fs::metadata(&lf.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    for h in holds {
        let behind = match load(&path(dir, &h.name)) {
            Ok(Some(c)) => c.seq <= lf.seq,
            // no cursor yet, or an unreadable one: the sink starts from the oldest file
            Ok(None) | Err(_) => true,
        };
        if !behind {
            continue;
        }
        if h.max_lag.is_some_and(|m| age > m) {
            tracing::warn!(sink = %h.name, file = %lf.path.display(),
                "audit: retention deletes a file the sink has not delivered (it lags more than max_lag); the sink counts a gap");
            continue;
        }
        return Some(&h.name);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_store() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path(), "siem");
        assert_eq!(load(&p).unwrap(), None);
        let c = Cursor {
            seq: 7,
            file: "audit-20261124T095927Z-00000007.jsonl".into(),
            offset: 1234,
            hash: Some([0xab; 32]),
        };
        store(&p, &c).unwrap();
        assert_eq!(load(&p).unwrap(), Some(c.clone()));
        let c0 = Cursor {
            hash: None,
            offset: 0,
            ..c
        };
        store(&p, &c0).unwrap();
        assert_eq!(load(&p).unwrap(), Some(c0));
        assert!(!d.path().join(".sink-siem.cursor.tmp").exists());
        std::fs::write(&p, "{not json").unwrap();
        assert!(load(&p).is_err());
        assert_eq!(
            Cursor::decode(r#"{"seq":1,"file":"f","offset":3,"hash":"zz"}"#),
            None
        );
    }

    #[test]
    fn retention_waits_for_a_sink_unless_it_lags_past_max_lag() {
        let d = tempfile::tempdir().unwrap();
        let f1 = d.path().join(files::file_name(1_795_600_767_000_000, 1));
        std::fs::write(&f1, b"x\n").unwrap();
        let lf = files::LogFile { path: f1, seq: 1 };
        let holds = vec![SinkHold {
            name: "a".into(),
            max_lag: None,
        }];
        // no cursor yet: held
        assert_eq!(held(d.path(), &lf, &holds), Some("a"));
        // cursor in the file: held
        let mut c = Cursor {
            seq: 1,
            file: "f".into(),
            offset: 2,
            hash: None,
        };
        store(&path(d.path(), "a"), &c).unwrap();
        assert_eq!(held(d.path(), &lf, &holds), Some("a"));
        // cursor past it: free
        c.seq = 2;
        store(&path(d.path(), "a"), &c).unwrap();
        assert_eq!(held(d.path(), &lf, &holds), None);
        // behind, but the file is older than max_lag: free
        c.seq = 1;
        store(&path(d.path(), "a"), &c).unwrap();
        let lagging = vec![SinkHold {
            name: "a".into(),
            max_lag: Some(Duration::from_secs(60)),
        }];
        assert_eq!(held(d.path(), &lf, &lagging), Some("a"));
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&lf.path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        assert_eq!(held(d.path(), &lf, &lagging), None);
    }
}
