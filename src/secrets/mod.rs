//! Secrets as a type. A `Secret` has no `Debug` or `Display`, is zeroized on drop and is exposed
//! only through `expose()`, which the outbound-request builder and the admin token check call.
//! Config values that hold secrets are references: `env:VAR`, `file:PATH`, `vault:NAME` (an
//! entry of the encrypted vault, `vault.rs`) or `kv:PATH#FIELD` (a field of a KV v2 secret on
//! an OpenBao / Vault server, `kv.rs`; resolved by the config compiler, which knows the server).
pub mod kv;
mod secret;
pub mod vault_file;
use crate::secrets::vault_file::Vault;
pub use secret::{Secret, SecretRefError, resolve};
use std::path::Path;

/// A parsed secret reference (validated shape; nothing read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(String),
    Vault(String),
    Kv(crate::secrets::kv::KvRef),
}

impl SecretRef {
    pub fn parse(reference: &str) -> Result<SecretRef, SecretRefError> {
        if let Some(v) = reference.strip_prefix("env:") {
            if v.is_empty() {
                return Err(SecretRefError::NotAReference);
            }
            Ok(SecretRef::Env(v.to_string()))
        } else if let Some(p) = reference.strip_prefix("file:") {
            if p.is_empty() {
                return Err(SecretRefError::NotAReference);
            }
            Ok(SecretRef::File(p.to_string()))
        } else if let Some(n) = reference.strip_prefix("vault:") {
            if !crate::secrets::vault_file::valid_name(n) {
                return Err(SecretRefError::VaultBadName(n.to_string()));
            }
            Ok(SecretRef::Vault(n.to_string()))
        } else if reference.starts_with("kv:") {
            crate::secrets::kv::KvRef::parse(reference)
                .map(SecretRef::Kv)
                .map_err(SecretRefError::KvBad)
        } else {
            Err(SecretRefError::NotAReference)
        }
    }
}

/// Resolves `vault:NAME` (from `vault`, if one is configured), `env:VAR` or `file:PATH` (PATH
/// relative to `base_dir`).
pub fn resolve_with(
    reference: &str,
    base_dir: &Path,
    vault: Option<&Vault>,
) -> Result<Secret, SecretRefError> {
    match SecretRef::parse(reference)? {
        SecretRef::Vault(name) => {
            let v = vault.ok_or(SecretRefError::VaultUnavailable)?;
            v.get(&name).ok_or(SecretRefError::VaultMissing(name))
        }
        SecretRef::Kv(_) => Err(SecretRefError::KvUnavailable),
        _ => resolve(reference, base_dir),
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
        assert_eq!(
            resolve("vault:x", dir.path()).err(),
            Some(SecretRefError::VaultUnavailable)
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

    #[test]
    fn references_table() {
        let cases: &[(&str, Result<SecretRef, SecretRefError>)] = &[
            ("env:X", Ok(SecretRef::Env("X".into()))),
            ("file:a/b", Ok(SecretRef::File("a/b".into()))),
            ("vault:crm-token", Ok(SecretRef::Vault("crm-token".into()))),
            (
                "vault:bad name",
                Err(SecretRefError::VaultBadName("bad name".into())),
            ),
            ("vault:", Err(SecretRefError::VaultBadName(String::new()))),
            (
                "kv:crm/token#value",
                Ok(SecretRef::Kv(crate::secrets::kv::KvRef {
                    path: "crm/token".into(),
                    field: "value".into(),
                })),
            ),
            ("env:", Err(SecretRefError::NotAReference)),
            ("sk-live-123", Err(SecretRefError::NotAReference)),
        ];
        for (r, want) in cases {
            assert_eq!(&SecretRef::parse(r), want, "{r}");
        }
    }

    #[test]
    fn vault_references_resolve_through_the_vault() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::secrets::vault_file::VaultKey::from_base64(&[b'A'; 44][..43]).unwrap();
        let mut v = Vault::create(&dir.path().join("v.pcv"), &key).unwrap();
        v.set("crm-token", b"s3cret").unwrap();
        let s = resolve_with("vault:crm-token", dir.path(), Some(&v)).unwrap();
        assert_eq!(s.expose(), b"s3cret");
        assert_eq!(
            resolve_with("vault:other", dir.path(), Some(&v)).err(),
            Some(SecretRefError::VaultMissing("other".into()))
        );
        assert_eq!(
            resolve_with("vault:crm-token", dir.path(), None).err(),
            Some(SecretRefError::VaultUnavailable)
        );
        std::fs::write(dir.path().join("t"), b"tok\r\n").unwrap();
        assert_eq!(
            resolve_with("file:t", dir.path(), Some(&v))
                .unwrap()
                .expose(),
            b"tok"
        );
    }
}
