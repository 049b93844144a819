//! Ed25519 keys for audit checkpoints (`[audit] signing_key`): loading the private key from the
//! secret the config resolved, signing, and checking a signature with a public key
//! (`portcullis audit verify --pubkey FILE`).
//!
//! A signing key secret is the 32-byte Ed25519 seed, written as 64 hex digits or base64 (what
//! `portcullis audit keygen` prints), or a PKCS#8 private key (DER bytes or a PEM
//! `PRIVATE KEY` block). A public key file holds 64 hex digits or base64 of the 32 raw bytes.
#![forbid(unsafe_code)]

use crate::util::hex;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;

/// The checkpoint signing key. No `Display`; `Debug` shows the public key only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", hex::encode(&self.public))
    }
}

impl SigningKey {
    /// From the secret's bytes (see the module docs for the accepted forms).
    pub fn from_secret(bytes: &[u8]) -> Result<SigningKey, String> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        let pair = if let Some(t) = text.filter(|t| t.starts_with("-----BEGIN")) {
            let b64: String = t
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<Vec<_>>()
                .concat();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| "the PEM block is not valid base64".to_string())?;
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|e| format!("not an Ed25519 PKCS#8 private key: {e}"))?
        } else if let Some(seed) = text.and_then(seed_from_text) {
            Ed25519KeyPair::from_seed_unchecked(&seed)
                .map_err(|e| format!("not an Ed25519 seed: {e}"))?
        } else if bytes.len() == 32 {
            Ed25519KeyPair::from_seed_unchecked(bytes)
                .map_err(|e| format!("not an Ed25519 seed: {e}"))?
        } else {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes).map_err(|_| {
                "expected an Ed25519 seed (64 hex digits or base64 of 32 bytes) or a PKCS#8 \
                 private key"
                    .to_string()
            })?
        };
        let mut public = [0u8; 32];
        let pk = pair.public_key().as_ref();
        if pk.len() != 32 {
            return Err("unexpected Ed25519 public key length".into());
        }
        public.copy_from_slice(pk);
        Ok(SigningKey { pair, public })
    }

    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        let sig = self.pair.sign(msg);
        out.copy_from_slice(sig.as_ref());
        out
    }
}

fn seed_from_text(t: &str) -> Option<[u8; 32]> {
    if let Some(s) = hex::decode32(t.as_bytes()) {
        return Some(s);
    }
    let b = base64::engine::general_purpose::STANDARD
        .decode(t)
        .ok()
        .filter(|b| b.len() == 32)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&b);
    Some(out)
}

/// A public key file's content: 64 hex digits or base64 of 32 bytes.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    seed_from_text(text.trim())
        .ok_or_else(|| "expected an Ed25519 public key: 64 hex digits or base64 of 32 bytes".into())
}

/// Whether `sig` is `key`'s signature of `msg`.
pub fn verify(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(msg, sig)
        .is_ok()
}

/// A new key: (seed as hex — the secret to store, public key as hex).
pub fn generate() -> Result<(zeroize::Zeroizing<String>, String), String> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut seed[..]).map_err(|_| "no randomness".to_string())?;
    let key = SigningKey::from_secret(&seed[..])?;
    Ok((
        zeroize::Zeroizing::new(hex::encode(&seed[..])),
        hex::encode(key.public()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_sign_and_verify() {
        let (seed, public) = generate().unwrap();
        let a = SigningKey::from_secret(seed.as_bytes()).unwrap();
        assert_eq!(hex::encode(a.public()), public);
        let raw = hex::decode(seed.as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let b = SigningKey::from_secret(format!("{b64}\n").as_bytes()).unwrap();
        assert_eq!(a.public(), b.public());
        let c = SigningKey::from_secret(&raw).unwrap();
        assert_eq!(a.public(), c.public());
        let sig = a.sign(b"hello");
        let pk = parse_public_key(&public).unwrap();
        assert!(verify(&pk, b"hello", &sig));
        assert!(!verify(&pk, b"hellO", &sig));
        assert!(SigningKey::from_secret(b"short").is_err());
        assert!(!format!("{a:?}").contains(seed.as_str()));
    }
}
