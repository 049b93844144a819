//! Arbitrary bytes into the path canonicaliser: no panics; a canonical result is absolute,
//! printable ASCII, free of empty and dot segments, and its own canonical form (idempotent).
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::http::canon::{MAX_PATH_LEN, canonicalize};

fuzz_target!(|data: &[u8]| {
    let Ok(c) = canonicalize(data) else { return };
    assert!(data.len() <= MAX_PATH_LEN);
    assert!(c.starts_with('/'));
    assert!(c.bytes().all(|b| b.is_ascii_graphic()), "{c:?}");
    assert!(!c.contains("//"), "{c:?}");
    for seg in c.split('/') {
        assert!(seg != "." && seg != "..", "{c:?}");
    }
    assert!(!c.contains('\\') && !c.contains('#'), "{c:?}");
    assert_eq!(canonicalize(c.as_bytes()).as_deref(), Ok(c.as_str()), "not idempotent");
});
