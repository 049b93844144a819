//! The encrypted vault file: target credentials at rest, AES-256-GCM (aws-lc-rs).
//!
//! File format, version 1 (all integers big-endian):
//! ```text
//! "PCV1"  version:u8=1  count:u32
//! count × { name_len:u8 (1..=128)  name  nonce:[12]  ct_len:u32  ciphertext‖tag:[ct_len] }
//! trailer { nonce:[12]  tag:[16] }
//! ```
//! Each entry is sealed with its own random 96-bit nonce and AAD `"pcv1-entry\0" ‖ name`, so a
//! ciphertext cannot be moved under another name. The trailer seals the empty plaintext with AAD
//! `"pcv1-index\0" ‖ SHA-256(every byte before the trailer)`: it detects a wrong key even for an
//! empty vault, and entries removed, duplicated or reordered by someone without the key.
//! Every save re-seals every entry with fresh nonces.
//!
//! Decrypt at open: `open` authenticates and decrypts every entry into `Secret`s (zeroized on
//! drop), so a wrong key or a corrupt file fails at startup/reload (readiness), not on the first
//! request that needs the credential, and the data plane never does vault crypto. `get` hands out
//! a copy as a fresh `Secret`.
//!
//! The key is 32 random bytes, base64, from an `env:` or `file:` reference (a systemd
//! `LoadCredential=` path works as `file:/run/credentials/portcullis.service/vault.key`).
//! Concurrent writers: last `save` wins (no lock file).
use super::secret::{self, Secret};
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"PCV1";
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Largest secret value we store.
pub const MAX_SECRET_LEN: usize = 64 * 1024;
/// Most entries in one vault.
pub const MAX_ENTRIES: usize = 10_000;
const ENTRY_AAD: &[u8] = b"pcv1-entry\0";
const INDEX_AAD: &[u8] = b"pcv1-index\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("vault file {0} does not exist (`portcullis vault set NAME` creates it)")]
    NotFound(String),
    #[error("vault file {0}: {1}")]
    Io(String, String),
    #[error("vault key: {0}")]
    BadKey(String),
    #[error("{0} is not a portcullis vault (bad magic)")]
    BadMagic(String),
    #[error("{0}: unsupported vault version {1}")]
    UnsupportedVersion(String, u8),
    #[error("corrupt vault {0}: {1}")]
    Corrupt(String, String),
    #[error("wrong vault key or corrupt vault: entry '{0}'")]
    WrongKeyOrCorruptEntry(String),
    #[error("wrong vault key or corrupt vault: index")]
    WrongKeyOrCorruptIndex,
    #[error(
        "corrupt vault: entries decrypt but the index does not match (entries removed, added or reordered)"
    )]
    IndexMismatch,
    #[error("bad secret name '{0}': use 1-128 characters of A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("refusing to store an empty secret")]
    EmptySecret,
    #[error("secret too large (max {MAX_SECRET_LEN} bytes)")]
    TooLarge,
    #[error("vault is full (max {MAX_ENTRIES} entries)")]
    Full,
    #[error("encryption failed")]
    Crypto,
}

/// `[A-Za-z0-9._-]{1,128}`.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The 32-byte vault key. No `Debug`/`Display`; zeroized on drop.
pub struct VaultKey(Zeroizing<[u8; 32]>);

impl VaultKey {
    /// From base64 text (standard or URL-safe alphabet, padding optional, surrounding
    /// whitespace ignored); must decode to exactly 32 bytes.
    pub fn from_base64(text: &[u8]) -> Result<VaultKey, VaultError> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let t: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let t = Zeroizing::new(t);
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(&*t).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| VaultError::BadKey("not valid base64".into()))?;
        if bytes.len() != 32 {
            return Err(VaultError::BadKey(format!(
                "decodes to {} bytes, expected 32 (generate one with `portcullis vault keygen`)",
                bytes.len()
            )));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&bytes);
        Ok(VaultKey(k))
    }

    /// From an `env:VAR` / `file:PATH` reference (PATH relative to `base_dir`).
    pub fn from_reference(reference: &str, base_dir: &Path) -> Result<VaultKey, VaultError> {
        if reference.starts_with("vault:") {
            return Err(VaultError::BadKey(
                "the vault key cannot itself live in the vault".into(),
            ));
        }
        let s =
            secret::resolve(reference, base_dir).map_err(|e| VaultError::BadKey(e.to_string()))?;
        VaultKey::from_base64(s.expose())
    }

    /// A fresh random key, base64 (standard alphabet, padded): 44 characters.
    pub fn generate_base64() -> Result<Zeroizing<String>, VaultError> {
        let mut k = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut k[..]).map_err(|_| VaultError::Crypto)?;
        Ok(Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(&k[..]),
        ))
    }

    fn aead(&self) -> Result<RandomizedNonceKey, VaultError> {
        RandomizedNonceKey::new(&AES_256_GCM, &self.0[..]).map_err(|_| VaultError::Crypto)
    }
}

/// An opened vault: every entry decrypted into a `Secret`.
pub struct Vault {
    path: PathBuf,
    key: RandomizedNonceKey,
    entries: BTreeMap<String, Secret>,
    loose_mode: Option<u32>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("names", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn entry_aad(name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(ENTRY_AAD.len() + name.len());
    a.extend_from_slice(ENTRY_AAD);
    a.extend_from_slice(name.as_bytes());
    a
}

fn index_aad(prefix: &[u8]) -> Vec<u8> {
    let mut a = INDEX_AAD.to_vec();
    a.extend_from_slice(digest(&SHA256, prefix).as_ref());
    a
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], VaultError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len());
        match end {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(VaultError::Corrupt(
                self.path.to_string(),
                format!("truncated at byte {} reading {what}", self.pos),
            )),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8, VaultError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, VaultError> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn nonce(&mut self, what: &str) -> Result<Nonce, VaultError> {
        let s = self.take(NONCE_LEN, what)?;
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(s);
        Ok(Nonce::assume_unique_for_key(n))
    }
}

impl Vault {
    /// An empty vault that `save()` will create at `path`.
    pub fn create(path: &Path, key: &VaultKey) -> Result<Vault, VaultError> {
        Ok(Vault {
            path: path.to_path_buf(),
            key: key.aead()?,
            entries: BTreeMap::new(),
            loose_mode: None,
        })
    }

    /// Opens `path`, or starts an empty vault if it does not exist (for `vault set`).
    pub fn open_or_create(path: &Path, key: &VaultKey) -> Result<Vault, VaultError> {
        match Vault::open(path, key) {
            Err(VaultError::NotFound(_)) => Vault::create(path, key),
            r => r,
        }
    }

    /// Reads, authenticates and decrypts the whole vault (blocking; config compile or CLI).
    pub fn open(path: &Path, key: &VaultKey) -> Result<Vault, VaultError> {
        let shown = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaultError::NotFound(shown));
            }
            Err(e) => return Err(VaultError::Io(shown, e.kind().to_string())),
        };
        let loose_mode = file_mode(path).filter(|m| m & 0o077 != 0);
        let mut v = Vault::decode(&bytes, &shown, key)?;
        v.path = path.to_path_buf();
        v.loose_mode = loose_mode;
        Ok(v)
    }

    /// Parses and decrypts vault bytes; `shown` names the file in errors.
    pub fn decode(bytes: &[u8], shown: &str, key: &VaultKey) -> Result<Vault, VaultError> {
        let aead = key.aead()?;
        let mut r = Reader {
            b: bytes,
            pos: 0,
            path: shown,
        };
        if bytes.len() < 4 || &bytes[..4] != MAGIC {
            return Err(VaultError::BadMagic(shown.to_string()));
        }
        r.pos = 4;
        let ver = r.u8("version")?;
        if ver != VERSION {
            return Err(VaultError::UnsupportedVersion(shown.to_string(), ver));
        }
        let count = r.u32("entry count")? as usize;
        if count > MAX_ENTRIES {
            return Err(VaultError::Corrupt(
                shown.to_string(),
                format!("{count} entries is more than the maximum {MAX_ENTRIES}"),
            ));
        }
        let corrupt = |m: String| VaultError::Corrupt(shown.to_string(), m);
        let mut entries = BTreeMap::new();
        for i in 0..count {
            let nlen = usize::from(r.u8("name length")?);
            let name = r.take(nlen, "name")?;
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| valid_name(n))
                .ok_or_else(|| corrupt(format!("entry {i} has an invalid name")))?
                .to_string();
            let nonce = r.nonce("nonce")?;
            let ct_len = r.u32("ciphertext length")? as usize;
            if !(TAG_LEN..=MAX_SECRET_LEN + TAG_LEN).contains(&ct_len) {
                return Err(corrupt(format!("entry '{name}' has a bad length {ct_len}")));
            }
            let ct = r.take(ct_len, "ciphertext")?;
            let mut buf = Zeroizing::new(ct.to_vec());
            let plain = aead
                .open_in_place(nonce, Aad::from(entry_aad(&name)), &mut buf[..])
                .map_err(|_| VaultError::WrongKeyOrCorruptEntry(name.clone()))?;
            let secret = Secret::new(plain.to_vec());
            if entries.insert(name.clone(), secret).is_some() {
                return Err(corrupt(format!("entry '{name}' appears twice")));
            }
        }
        let body_end = r.pos;
        let nonce = r.nonce("trailer nonce")?;
        let tag = r.take(TAG_LEN, "trailer tag")?;
        if r.pos != bytes.len() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the trailer",
                bytes.len() - r.pos
            )));
        }
        let mut t = tag.to_vec();
        if aead
            .open_in_place(nonce, Aad::from(index_aad(&bytes[..body_end])), &mut t)
            .is_err()
        {
            return Err(if count == 0 {
                VaultError::WrongKeyOrCorruptIndex
            } else {
                VaultError::IndexMismatch
            });
        }
        Ok(Vault {
            path: PathBuf::new(),
            key: aead,
            entries,
            loose_mode: None,
        })
    }

    /// Seals every entry with fresh nonces and returns the file bytes.
    pub fn encode(&self) -> Result<Vec<u8>, VaultError> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (name, secret) in &self.entries {
            let mut buf = Zeroizing::new(secret.expose().to_vec());
            let nonce = self
                .key
                .seal_in_place_append_tag(Aad::from(entry_aad(name)), &mut *buf)
                .map_err(|_| VaultError::Crypto)?;
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(nonce.as_ref());
            out.extend_from_slice(&(buf.len() as u32).to_be_bytes());
            out.extend_from_slice(&buf);
        }
        let mut tag: Vec<u8> = Vec::new();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(index_aad(&out)), &mut tag)
            .map_err(|_| VaultError::Crypto)?;
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&tag);
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// If the file was readable by group or others, its mode (for a warning).
    pub fn loose_permissions(&self) -> Option<u32> {
        self.loose_mode
    }

    /// A copy of the secret called `name`.
    pub fn get(&self, name: &str) -> Option<Secret> {
        self.entries
            .get(name)
            .map(|s| Secret::new(s.expose().to_vec()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Adds or replaces `name` (in memory; `save` writes).
    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), VaultError> {
        if !valid_name(name) {
            return Err(VaultError::BadName(name.to_string()));
        }
        if value.is_empty() {
            return Err(VaultError::EmptySecret);
        }
        if value.len() > MAX_SECRET_LEN {
            return Err(VaultError::TooLarge);
        }
        if !self.entries.contains_key(name) && self.entries.len() >= MAX_ENTRIES {
            return Err(VaultError::Full);
        }
        self.entries
            .insert(name.to_string(), Secret::new(value.to_vec()));
        Ok(())
    }

    /// Re-encrypts under `key` from now on (`save` writes it): `portcullis vault rekey`.
    pub fn rekey(&mut self, key: &VaultKey) -> Result<(), VaultError> {
        self.key = key.aead()?;
        Ok(())
    }

    /// Removes `name`; false if it was not there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Entry names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Atomically replaces the file: write a temp file (mode 0600) in the same directory,
    /// fsync it, rename over the vault, fsync the directory.
    pub fn save(&self) -> Result<(), VaultError> {
        let bytes = self.encode()?;
        let shown = self.path.display().to_string();
        let io = |e: std::io::Error| VaultError::Io(shown.clone(), e.to_string());
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = self
            .path
            .file_name()
            .ok_or_else(|| VaultError::Io(shown.clone(), "not a file path".into()))?;
        let mut suffix = [0u8; 6];
        aws_lc_rs::rand::fill(&mut suffix).map_err(|_| VaultError::Crypto)?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{}",
            file_name.to_string_lossy(),
            std::process::id(),
            crate::util::hex::encode(&suffix)
        ));
        // A rewrite keeps the file's owner, group and mode (a vault chowned to the service user
        // stays readable by it after `sudo portcullis vault set`); a new vault is 0600.
        let previous = std::fs::metadata(&self.path).ok();
        let result: std::io::Result<()> = (|| {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            #[cfg(unix)]
            if let Some(m) = &previous {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid())).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot keep the vault's owner {}:{} ({e}): run this as that user or as root",
                            m.uid(),
                            m.gid()
                        ),
                    )
                })?;
                f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            }
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            #[cfg(unix)]
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn file_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> VaultKey {
        use base64::engine::general_purpose::STANDARD;
        VaultKey::from_base64(STANDARD.encode([b; 32]).as_bytes()).unwrap()
    }

    fn sample(dir: &Path) -> Vault {
        let mut v = Vault::create(&dir.join("vault.pcv"), &key(1)).unwrap();
        v.set("crm-token", b"tok-crm-SECRET").unwrap();
        v.set("openai.key", b"sk-SECRET").unwrap();
        v.set("pw_1", &[0u8, 255, 10]).unwrap();
        v
    }

    #[test]
    fn round_trip_and_atomic_save() {
        let dir = tempfile::tempdir().unwrap();
        let v = sample(dir.path());
        v.save().unwrap();
        let p = dir.path().join("vault.pcv");
        #[cfg(unix)]
        assert_eq!(file_mode(&p), Some(0o600));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
        let raw = std::fs::read(&p).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"SECRET"), "plaintext on disk");
        let mut w = Vault::open(&p, &key(1)).unwrap();
        assert_eq!(
            w.names().collect::<Vec<_>>(),
            ["crm-token", "openai.key", "pw_1"]
        );
        assert_eq!(w.get("crm-token").unwrap().expose(), b"tok-crm-SECRET");
        assert_eq!(w.get("pw_1").unwrap().expose(), &[0u8, 255, 10]);
        assert!(w.get("nope").is_none());
        assert!(w.loose_permissions().is_none());
        assert!(w.remove("openai.key"));
        assert!(!w.remove("openai.key"));
        w.set("crm-token", b"rotated").unwrap();
        w.save().unwrap();
        let x = Vault::open(&p, &key(1)).unwrap();
        assert_eq!(x.len(), 2);
        assert_eq!(x.get("crm-token").unwrap().expose(), b"rotated");
        // Fresh nonces on each save: same content, different bytes.
        let a = x.encode().unwrap();
        let b = x.encode().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn open_errors_table() {
        let dir = tempfile::tempdir().unwrap();
        let v = sample(dir.path());
        let good = v.encode().unwrap();
        let empty = Vault::create(Path::new("e"), &key(1))
            .unwrap()
            .encode()
            .unwrap();
        // Drop the last entry ("pw_1": 1+4+12+4+3+16 = 40 bytes) and fix the count.
        let mut dropped = good.clone();
        let trailer = dropped.split_off(dropped.len() - 28);
        dropped.truncate(dropped.len() - 40);
        dropped[5..9].copy_from_slice(&2u32.to_be_bytes());
        dropped.extend_from_slice(&trailer);
        // Rename an entry in place (same length): its ciphertext is bound to the old name.
        let mut renamed = good.clone();
        let at = renamed.windows(4).position(|w| w == b"pw_1").unwrap();
        renamed[at..at + 4].copy_from_slice(b"pw_2");
        let mut bad_version = good.clone();
        bad_version[4] = 2;
        let mut extra = good.clone();
        extra.push(0);
        let cases: Vec<(&str, Vec<u8>, u8, VaultError)> = vec![
            (
                "wrong key",
                good.clone(),
                2,
                VaultError::WrongKeyOrCorruptEntry("crm-token".into()),
            ),
            (
                "wrong key, empty vault",
                empty.clone(),
                2,
                VaultError::WrongKeyOrCorruptIndex,
            ),
            ("entry removed", dropped, 1, VaultError::IndexMismatch),
            (
                "entry renamed",
                renamed,
                1,
                VaultError::WrongKeyOrCorruptEntry("pw_2".into()),
            ),
            (
                "bad magic",
                b"PCV2xxxxxxxxxxxxxxxx".to_vec(),
                1,
                VaultError::BadMagic("t".into()),
            ),
            (
                "empty file",
                Vec::new(),
                1,
                VaultError::BadMagic("t".into()),
            ),
            (
                "bad version",
                bad_version,
                1,
                VaultError::UnsupportedVersion("t".into(), 2),
            ),
            (
                "trailing garbage",
                extra,
                1,
                VaultError::Corrupt("t".into(), "1 unexpected bytes after the trailer".into()),
            ),
        ];
        for (name, bytes, k, want) in cases {
            assert_eq!(
                Vault::decode(&bytes, "t", &key(k)).err(),
                Some(want),
                "{name}"
            );
        }
        assert_eq!(
            VaultError::WrongKeyOrCorruptEntry("x".into()).to_string(),
            "wrong vault key or corrupt vault: entry 'x'"
        );
        assert!(Vault::decode(&empty, "t", &key(1)).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample(dir.path()).encode().unwrap();
        for n in 0..good.len() {
            assert!(
                Vault::decode(&good[..n], "t", &key(1)).is_err(),
                "truncated to {n}"
            );
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(Vault::decode(&b, "t", &key(1)).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn names_values_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Vault::create(&dir.path().join("v"), &key(1)).unwrap();
        for bad in ["", "has space", "slash/", "ü", &"x".repeat(129)] {
            assert_eq!(
                v.set(bad, b"x").err(),
                Some(VaultError::BadName(bad.into())),
                "{bad}"
            );
        }
        assert!(v.set(&"x".repeat(128), b"x").is_ok());
        assert_eq!(v.set("a", b"").err(), Some(VaultError::EmptySecret));
        assert_eq!(
            v.set("a", &vec![1; MAX_SECRET_LEN + 1]).err(),
            Some(VaultError::TooLarge)
        );
        for bad in ["", "!!!!", "AAAA", &"A".repeat(48)] {
            assert!(
                matches!(
                    VaultKey::from_base64(bad.as_bytes()),
                    Err(VaultError::BadKey(_))
                ),
                "{bad}"
            );
        }
        let k = VaultKey::generate_base64().unwrap();
        assert_eq!(k.len(), 44);
        assert!(VaultKey::from_base64(format!("{}\n", &*k).as_bytes()).is_ok());
        std::fs::write(dir.path().join("vault.key"), format!("{}\n", &*k)).unwrap();
        assert!(VaultKey::from_reference("file:vault.key", dir.path()).is_ok());
        assert!(matches!(
            VaultKey::from_reference("vault:k", dir.path()),
            Err(VaultError::BadKey(_))
        ));
        assert!(matches!(
            VaultKey::from_reference("file:missing", dir.path()),
            Err(VaultError::BadKey(_))
        ));
    }

    #[test]
    fn missing_file_and_open_or_create() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.pcv");
        assert!(matches!(
            Vault::open(&p, &key(1)),
            Err(VaultError::NotFound(_))
        ));
        let mut v = Vault::open_or_create(&p, &key(1)).unwrap();
        v.set("a", b"1").unwrap();
        v.save().unwrap();
        assert_eq!(Vault::open_or_create(&p, &key(1)).unwrap().len(), 1);
        assert!(matches!(
            Vault::open_or_create(&p, &key(9)),
            Err(VaultError::WrongKeyOrCorruptEntry(_))
        ));
    }

    #[test]
    fn debug_never_shows_values() {
        let dir = tempfile::tempdir().unwrap();
        let v = sample(dir.path());
        let d = format!("{v:?}");
        assert!(d.contains("crm-token"), "{d}");
        assert!(!d.contains("SECRET"), "{d}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]
            #[test]
            fn decode_never_panics(mut b in prop::collection::vec(any::<u8>(), 0..200)) {
                if b.len() >= 4 && b[0] % 2 == 0 {
                    b[..4].copy_from_slice(b"PCV1");
                    if b.len() > 4 { b[4] = 1; }
                }
                let _ = Vault::decode(&b, "t", &key(1));
            }
            #[test]
            fn round_trip_any_entries(
                entries in prop::collection::btree_map("[A-Za-z0-9._-]{1,20}", prop::collection::vec(any::<u8>(), 1..50), 0..8)
            ) {
                let mut v = Vault::create(Path::new("x"), &key(3)).unwrap();
                for (n, val) in &entries {
                    v.set(n, val).unwrap();
                }
                let w = Vault::decode(&v.encode().unwrap(), "x", &key(3)).unwrap();
                prop_assert_eq!(w.len(), entries.len());
                for (n, val) in &entries {
                    let got = w.get(n).unwrap();
                    prop_assert_eq!(got.expose(), val.as_slice());
                }
            }
        }
    }
}
