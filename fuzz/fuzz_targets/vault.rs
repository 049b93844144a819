//! Arbitrary bytes into the vault decoder (fixed key): never panics; whatever decodes
//! re-encodes and decodes to the same names and values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::secrets::vault_file::{Vault, VaultKey};

fuzz_target!(|data: &[u8]| {
    let key = VaultKey::from_base64(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let Ok(v) = Vault::decode(data, "fuzz", &key) else {
        return;
    };
    let w = Vault::decode(&v.encode().unwrap(), "fuzz", &key).unwrap();
    assert!(v.names().eq(w.names()));
    for n in v.names() {
        assert_eq!(v.get(n).unwrap().expose(), w.get(n).unwrap().expose());
    }
});
