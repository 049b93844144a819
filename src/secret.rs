//! Secrets as a type. A `Secret` has no `Debug` or `Display`, is zeroized on drop and is exposed
//! only through `expose()`, which the outbound-request builder and the admin token check call.
//! Config values that hold secrets are references: `env:VAR` or `file:PATH` (the vault comes
//! with the credentials work).
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
    #[error("expected a reference `env:VAR` or `file:PATH`, not a literal secret")]
    NotAReference,
    #[error("`vault:` references need the encrypted vault, which is not available in this build")]
    VaultUnavailable,
    #[error("environment variable {0} is not set or empty")]
    EnvMissing(String),
    #[error("cannot read secret file {0}: {1}")]
    File(String, String),
}

/// Resolves `env:VAR` / `file:PATH` (PATH relative to `base_dir`). A trailing newline in a file is
/// dropped, as written by `echo` or systemd-creds.
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
    } else {
        Err(SecretRefError::NotAReference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_is_refused_and_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve("hunter2", dir.path()).err(),
            Some(SecretRefError::NotAReference)
        );
        std::fs::write(dir.path().join("t"), b"tok\n").unwrap();
        let s = resolve("file:t", dir.path()).unwrap();
        assert_eq!(s.expose(), b"tok");
        assert!(s.ct_eq(b"tok"));
        assert!(!s.ct_eq(b"tok2"));
        assert!(matches!(
            resolve("env:PORTCULLIS_TEST_SURELY_UNSET", dir.path()),
            Err(SecretRefError::EnvMissing(_))
        ));
    }
}
