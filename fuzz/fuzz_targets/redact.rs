//! Arbitrary bytes through the streaming redactors, split in two at a position taken from the
//! first byte, with paths chosen by the second: no panics; the split does not change the output;
//! if the input is JSON (serde_json accepts it) the redactor accepts it and its output is JSON;
//! under `Pass` with nothing matched the output is the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::redact::{
    Action, DEFAULT_MAX_EVENT, JsonRedactor, Limits, OnInvalid, RedactError, RedactProgram,
    SseRedactor,
};

const PATHS: &[&str] = &[
    "$..ssn",
    "$.data[*].a",
    "$.a.b",
    "$..[0]",
    "$.*",
    "$[\"k y\"]",
    "$..a..b",
    "$[1]",
];

fn json(
    p: &RedactProgram,
    pol: OnInvalid,
    input: &[u8],
    split: usize,
) -> Result<(Vec<u8>, u64), RedactError> {
    let limits = Limits {
        max_depth: 128,
        max_key_len: usize::MAX,
    };
    let mut r = JsonRedactor::new(p, limits, pol);
    let mut out = Vec::new();
    r.feed(&input[..split], &mut out)?;
    r.feed(&input[split..], &mut out)?;
    r.finish(&mut out)?;
    Ok((out, r.redactions()))
}

fn sse(p: &RedactProgram, input: &[u8], split: usize) -> Result<Vec<u8>, RedactError> {
    let mut r = SseRedactor::new(p, Limits::default(), OnInvalid::Pass, DEFAULT_MAX_EVENT);
    let mut out = Vec::new();
    r.feed(&input[..split], &mut out)?;
    r.feed(&input[split..], &mut out)?;
    r.finish(&mut out)?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let [a, b, input @ ..] = data else { return };
    let split = usize::from(*a) * input.len() / 255;
    let mut p = RedactProgram::new();
    for (k, path) in PATHS.iter().enumerate() {
        if b & (1 << k) != 0 {
            let action = if k % 2 == 0 {
                Action::Remove
            } else {
                Action::Mask
            };
            p.add(path, action).expect("static path");
        }
    }
    let whole = json(&p, OnInvalid::Block, input, input.len());
    let cut = json(&p, OnInvalid::Block, input, split);
    assert_eq!(whole.is_ok(), cut.is_ok());
    if let (Ok(w), Ok(c)) = (&whole, &cut) {
        assert_eq!(w, c, "split changed the output");
    }
    if serde_json::from_slice::<serde_json::Value>(input).is_ok() {
        let (out, n) = whole.as_ref().expect("valid JSON rejected");
        assert!(
            serde_json::from_slice::<serde_json::Value>(out).is_ok(),
            "output is not JSON: {}",
            String::from_utf8_lossy(out)
        );
        if *n == 0 {
            assert_eq!(out.as_slice(), input);
        }
    }
    let (passed, n) = json(&p, OnInvalid::Pass, input, split).expect("Pass never errs");
    if n == 0 {
        assert_eq!(passed, input);
    }
    let s1 = sse(&p, input, input.len()).expect("Pass never errs");
    let s2 = sse(&p, input, split).expect("Pass never errs");
    assert_eq!(s1, s2, "split changed the SSE output");
});
