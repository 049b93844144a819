//! The leaf of the secrets unit: the `Secret` type, the reference errors, and `env:`/`file:`
//! resolution. `kv.rs` and `vault_file.rs` build on this; `mod.rs` dispatches over all kinds.
use std::path::Path;
use zeroize::Zeroizing;

pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }
    /// The secret bytes. Callers must not log, format or echo them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Constant-time comparison (length leaks, content does not).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        let a = self.expose();
        if a.len() != other.len() {
            return false;
        }
        a.iter().zip(other).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretRefError {
    #[error(
        "expected a reference `vault:NAME`, `env:VAR`, `file:PATH` or `kv:PATH#FIELD`, not a literal secret"
    )]
    NotAReference,
    #[error("`vault:` references need a `[vault]` section")]
    VaultUnavailable,
    #[error("the vault has no secret named '{0}' (add it with `portcullis vault set {0}`)")]
    VaultMissing(String),
    #[error("bad vault secret name '{0}'")]
    VaultBadName(String),
    #[error("environment variable {0} is not set or empty")]
    EnvMissing(String),
    #[error("cannot read secret file {0}: {1}")]
    File(String, String),
    #[error("bad kv reference: {0}")]
    KvBad(String),
    #[error("`kv:` references need a `[secrets.kv]` section")]
    KvUnavailable,
    /// A `kv:` reference that could not be read; the message names the reference and the
    /// reason, never a value.
    #[error("{0}")]
    Kv(String),
    #[error("`kv:` references are not supported here")]
    KvNotHere,
}

/// Resolves `env:VAR` / `file:PATH` (PATH relative to `base_dir`). A trailing newline in a file is
/// dropped, as written by `echo` or systemd-creds. `vault:` needs `resolve_with`.
pub fn resolve(reference: &str, base_dir: &Path) -> Result<Secret, SecretRefError> {
    if let Some(var) = reference.strip_prefix("env:") {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret::new(v.into_bytes())),
            _ => Err(SecretRefError::EnvMissing(var.to_string())),
        }
    } else if let Some(path) = reference.strip_prefix("file:") {
        let p = base_dir.join(path);
        let mut bytes = std::fs::read(&p)
            .map_err(|e| SecretRefError::File(p.display().to_string(), e.kind().to_string()))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Ok(Secret::new(bytes))
    } else if reference.starts_with("vault:") {
        Err(SecretRefError::VaultUnavailable)
    } else if reference.starts_with("kv:") {
        Err(SecretRefError::KvNotHere)
    } else {
        Err(SecretRefError::NotAReference)
    }
}
