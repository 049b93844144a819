//! The scanner's decoded views (issue 12) on arbitrary bodies and head fields: no panic, every
//! view no longer than its source, and the properties that make the views worth having:
//! - a raw hit is still the blocked hit with the views on (views only add hits);
//! - a literal written into the body with every character as a JSON `\uXXXX` escape, as a
//!   percent-encoded form field, or in base64, is found, whatever bytes surround it.
//!
//! Input layout: byte 0 picks the Content-Type and the wrapping, the rest is the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::scan::{RawScanner, ScanSet};
use std::sync::OnceLock;

static SET: OnceLock<ScanSet> = OnceLock::new();

fn set() -> &'static ScanSet {
    SET.get_or_init(|| {
        ScanSet::compile(&[RawScanner {
            name: "block".into(),
            detectors: vec!["aws_access_key".into(), "credit_card".into(), "private_key".into()],
            literals: vec!["confidential".into(), "top secret".into()],
            mode: None,
        }])
        .unwrap_or_else(|e| panic!("fuzz config: {e:?}"))
    })
}

const TYPES: &[&[u8]] = &[
    b"application/json",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=b",
    b"text/plain",
];

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |a, (i, &b)| a | u32::from(b) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let set = set();
    let ct = TYPES[usize::from(sel) % TYPES.len()];
    let fields = [(&b"content-type"[..], ct)];
    let raw = set.scan(body);
    let Ok(all) = set.scan_request(body, fields, 1 << 20) else {
        panic!("an unencoded body always scans");
    };
    if raw.blocked.is_some() {
        assert_eq!(all.blocked, raw.blocked, "views changed the raw answer");
    }
    // wrap a literal in the body's bytes; it must be found
    let secret = b"CONFIDENTIAL";
    let clean: Vec<u8> = body
        .iter()
        .map(|&b| if b.is_ascii_alphanumeric() { b } else { b' ' })
        .collect();
    let (ct, wrapped): (&[u8], Vec<u8>) = match (sel >> 2) % 3 {
        0 => {
            let esc: String = secret.iter().map(|&c| format!("\\u{c:04x}")).collect();
            (b"application/json", [&clean[..], b" \"", esc.as_bytes(), b"\" ", &clean[..]].concat())
        }
        1 => {
            let pct: String = secret.iter().map(|&c| format!("%{c:02X}")).collect();
            (
                b"application/x-www-form-urlencoded",
                [&clean[..], b"&k=", pct.as_bytes(), b"&", &clean[..]].concat(),
            )
        }
        _ => {
            let mut padded = b"xx ".to_vec();
            padded.extend_from_slice(secret);
            padded.extend_from_slice(b" yy");
            (b"application/json", [&clean[..], b" \"", b64(&padded).as_bytes(), b"\" ", &clean[..]].concat())
        }
    };
    let out = set
        .scan_request(&wrapped, [(&b"content-type"[..], ct)], 1 << 20)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.blocked.is_some(),
        "encoded literal not found in {:?}",
        String::from_utf8_lossy(&wrapped)
    );
});
