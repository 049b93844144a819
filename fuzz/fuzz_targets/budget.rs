//! Budget values (`[[proxies.budgets]]`): arbitrary bytes through the redaction engine with
//! capture paths (the presets' shapes and a `..` path), as a JSON body and as an SSE stream,
//! split in two at a position taken from the first byte. No panics; capturing never changes the
//! output; the split does not change the reading; every value read is a number or "not a
//! number" (never NaN), and the outcome's value, when there is one, is not negative.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::redact::usage::{Aggregate, BodyValue, Reading, Term};
use portcullis::internals::redact::{
    Action, Captured, DEFAULT_MAX_EVENT, JsonRedactor, Limits, OnInvalid, RedactProgram,
    SseRedactor,
};

const PATHS: &[&str] = &[
    "$.usage.total_tokens",
    "$.usage.input_tokens",
    "$.message.usage.input_tokens",
    "$.usage.output_tokens",
    "$..cost",
    "$.a[0]",
];

fn spec(aggregate: Aggregate) -> BodyValue {
    BodyValue {
        terms: vec![
            Term { slots: 1, weight: 1.0 },
            Term { slots: 2 | 4, weight: 3.0 },
            Term { slots: 8 | 16 | 32, weight: 0.5 },
        ],
        aggregate,
    }
}

fn json(p: &RedactProgram, input: &[u8], split: usize) -> (Vec<u8>, Vec<Captured>) {
    let mut r = JsonRedactor::new(p, Limits::default(), OnInvalid::Pass);
    let mut out = Vec::new();
    let _ = r.feed(&input[..split], &mut out);
    let _ = r.feed(&input[split..], &mut out);
    let _ = r.finish(&mut out);
    let mut caps = Vec::new();
    r.take_captures(&mut caps);
    (out, caps)
}

fn sse(p: &RedactProgram, input: &[u8], split: usize) -> (Vec<u8>, Vec<Captured>) {
    let mut r = SseRedactor::new(p, Limits::default(), OnInvalid::Pass, DEFAULT_MAX_EVENT);
    let mut out = Vec::new();
    let mut caps = Vec::new();
    let _ = r.feed(&input[..split], &mut out);
    r.take_captures(&mut caps);
    let _ = r.feed(&input[split..], &mut out);
    r.take_captures(&mut caps);
    let _ = r.finish(&mut out);
    r.take_captures(&mut caps);
    (out, caps)
}

fuzz_target!(|data: &[u8]| {
    let [a, input @ ..] = data else { return };
    let split = usize::from(*a) * input.len() / 255;
    let mut p = RedactProgram::new();
    for (k, path) in PATHS.iter().enumerate() {
        p.add(path, Action::Capture(1 << k)).expect("path");
    }
    for stream in [false, true] {
        let run = |at: usize| if stream { sse(&p, input, at) } else { json(&p, input, at) };
        let (out, caps) = run(split);
        let (out_whole, caps_whole) = run(input.len());
        assert_eq!(out, input, "capturing never changes the output");
        assert_eq!(out_whole, input);
        assert_eq!(caps, caps_whole, "the split does not change what is read");
        for c in &caps {
            assert!(c.value.is_none_or(|v| !v.is_nan()));
        }
        for agg in [Aggregate::Last, Aggregate::Sum] {
            let s = spec(agg);
            let mut r = Reading::new(&s);
            r.feed(&s, &caps);
            if let Some(v) = r.outcome(&s).value {
                assert!(v >= 0.0, "{v}");
            }
        }
    }
});
