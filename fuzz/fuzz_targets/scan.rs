//! Arbitrary bytes into the body scanner: no panics; every hit lies inside the body; the
//! streaming scanner fed at data-derived chunk sizes gives exactly the whole-body answer; the
//! gzip/deflate paths never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::scan::{Detector, RawScanner, ScanSet};
use std::sync::OnceLock;

static SET: OnceLock<ScanSet> = OnceLock::new();

fn set() -> &'static ScanSet {
    SET.get_or_init(|| {
        let all = Detector::ALL
            .iter()
            .map(|d| d.as_str().to_string())
            .collect();
        ScanSet::compile(&[
            RawScanner {
                name: "block".into(),
                detectors: all,
                literals: vec!["confidential".into(), "top secret".into(), "sk".into()],
                mode: None,
            },
            RawScanner {
                name: "report".into(),
                detectors: vec!["email".into(), "credit_card".into()],
                literals: vec!["secret".into()],
                mode: Some("report".into()),
            },
        ])
        .unwrap_or_else(|e| panic!("fuzz config: {e:?}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let set = set();
    let whole = set.scan(data);
    for h in whole.blocked.iter().chain(&whole.reports) {
        assert!(h.len > 0 && h.offset + h.len <= data.len(), "{h:?}");
    }
    // Chunk sizes and batch derived from the data itself.
    let seed = data
        .iter()
        .take(4)
        .fold(0u32, |a, &b| a.rotate_left(8) ^ u32::from(b));
    let mut s = set.stream_with_batch((seed % 97) as usize);
    let mut rest = data;
    let mut k = seed;
    while !rest.is_empty() {
        k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (k >> 16) % 400) as usize;
        let (a, b) = rest.split_at(n.min(rest.len()));
        s.feed(a);
        rest = b;
    }
    assert_eq!(s.finish(), whole, "stream != whole");
    let _ = set.scan_encoded(data, Some(b"gzip"), 1 << 20);
    let _ = set.scan_encoded(data, Some(b"deflate"), 1 << 20);
});
