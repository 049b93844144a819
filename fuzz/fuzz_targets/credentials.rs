//! Arbitrary bytes split into request headers for `extract_credential`, then through the
//! credential classifier, the RFC 3339 parser and SigV4's canonical query: no panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::identity::{Credential, extract_credential};

fuzz_target!(|data: &[u8]| {
    let headers: Vec<(&[u8], &[u8])> = data
        .split(|b| *b == b'\n')
        .map(|line| match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        })
        .collect();
    if let Some((c, _)) = extract_credential(&headers) {
        let _ = Credential::classify(c.bytes());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = portcullis::internals::util::datetime::parse_rfc3339(s);
        let _ = portcullis::internals::credentials::sigv4::canonical_query(s);
        let _ = portcullis::internals::identity::jwt::peek_issuer(s);
    }
});
