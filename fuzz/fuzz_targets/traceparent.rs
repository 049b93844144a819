//! Arbitrary bytes as a `traceparent` value: no panics; an accepted value is at least 55 bytes
//! of lower-case hex fields at their fixed places, its ids are not all zero, and the version-00
//! header the gateway sends for it parses back to the same trace, parent and sampled flag.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::observe::trace::{TRACEPARENT_LEN, format, parse};

fuzz_target!(|data: &[u8]| {
    let Some(p) = parse(data) else { return };
    assert!(data.len() >= TRACEPARENT_LEN);
    assert_ne!(p.version, 0xff);
    assert!(p.version != 0 || data.len() == TRACEPARENT_LEN);
    assert!(p.trace_id != [0; 16] && p.parent_id != [0; 8]);
    assert!(
        data[..TRACEPARENT_LEN]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'))
    );
    let out = format(&p.trace_id, &p.parent_id, p.sampled());
    let q = parse(&out).expect("the gateway's own header parses");
    assert_eq!((q.version, q.trace_id, q.parent_id), (0, p.trace_id, p.parent_id));
    assert_eq!(q.sampled(), p.sampled());
    assert_eq!(q.flags & !1, 0, "only the sampled flag is sent");
});
