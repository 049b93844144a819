//! Budget value extraction (`[[proxies.budgets]]`, issue 18): the redaction engine reading the
//! `openai_tokens` preset's number from a 4 KiB chat completion (JSON) and from a streamed answer
//! (SSE: 200 delta chunks with `"usage":null`, the final chunk with usage), against the same
//! engine with no reachable path (what a proxy pays for validating only) and a plain copy (what
//! pass-through costs). `cargo bench --bench budget -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis::internals::redact::usage::{Aggregate, BodyValue, Reading, Term};
use portcullis::internals::redact::{
    Action, Captured, DEFAULT_MAX_EVENT, JsonRedactor, Limits, OnInvalid, RedactProgram,
    SseRedactor,
};

fn json_doc() -> Vec<u8> {
    let mut content = String::new();
    while content.len() < 3800 {
        content.push_str("The quick brown fox jumps over the lazy dog. ");
    }
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-test","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":900,"total_tokens":912}}}}"#
    )
    .into_bytes()
}

fn sse_doc() -> Vec<u8> {
    let mut s = String::new();
    for k in 0..200 {
        s.push_str(&format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {k} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":200,\"total_tokens\":212}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn spec() -> BodyValue {
    BodyValue {
        terms: vec![Term {
            slots: 1,
            weight: 1.0,
        }],
        aggregate: Aggregate::Last,
    }
}

/// Feeds `doc` in `chunk`-byte pieces (the relay's reads), draining the captures after each.
fn read_json(p: &RedactProgram, doc: &[u8], chunk: usize, scratch: &mut Vec<u8>) -> Option<f64> {
    let s = spec();
    let mut reading = Reading::new(&s);
    let mut caps: Vec<Captured> = Vec::new();
    let mut r = JsonRedactor::new(p, Limits::default(), OnInvalid::Pass);
    for piece in doc.chunks(chunk) {
        scratch.clear();
        let _ = r.feed(piece, scratch);
        caps.clear();
        r.take_captures(&mut caps);
        reading.feed(&s, &caps);
    }
    scratch.clear();
    let _ = r.finish(scratch);
    caps.clear();
    r.take_captures(&mut caps);
    reading.feed(&s, &caps);
    reading.outcome(&s).value
}

fn read_sse(p: &RedactProgram, doc: &[u8], chunk: usize, scratch: &mut Vec<u8>) -> Option<f64> {
    let s = spec();
    let mut reading = Reading::new(&s);
    let mut caps: Vec<Captured> = Vec::new();
    let mut r = SseRedactor::new(p, Limits::default(), OnInvalid::Pass, DEFAULT_MAX_EVENT);
    for piece in doc.chunks(chunk) {
        scratch.clear();
        r.feed(piece, scratch).expect("sse");
        caps.clear();
        r.take_captures(&mut caps);
        reading.feed(&s, &caps);
    }
    scratch.clear();
    r.finish(scratch).expect("sse");
    caps.clear();
    r.take_captures(&mut caps);
    reading.feed(&s, &caps);
    reading.outcome(&s).value
}

fn bench(c: &mut Criterion) {
    let mut p = RedactProgram::new();
    p.add("$.usage.total_tokens", Action::Capture(1))
        .expect("path");
    let none = RedactProgram::new();
    let json = json_doc();
    let sse = sse_doc();
    let mut scratch = Vec::with_capacity(64 * 1024);
    assert_eq!(read_json(&p, &json, 1500, &mut scratch), Some(912.0));
    assert_eq!(read_sse(&p, &sse, 1500, &mut scratch), Some(212.0));

    let mut g = c.benchmark_group("budget");
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("json_4KiB_openai_usage", |b| {
        b.iter(|| read_json(&p, black_box(&json), 1500, &mut scratch));
    });
    g.bench_function("json_4KiB_engine_no_path", |b| {
        b.iter(|| read_json(&none, black_box(&json), 1500, &mut scratch));
    });
    g.bench_function("json_4KiB_copy_only", |b| {
        b.iter(|| {
            for piece in black_box(&json).chunks(1500) {
                scratch.clear();
                scratch.extend_from_slice(piece);
            }
            black_box(scratch.len())
        });
    });
    g.throughput(Throughput::Bytes(sse.len() as u64));
    g.bench_function("sse_200_chunks_openai_usage", |b| {
        b.iter(|| read_sse(&p, black_box(&sse), 1500, &mut scratch));
    });
    g.bench_function("sse_200_chunks_engine_no_path", |b| {
        b.iter(|| read_sse(&none, black_box(&sse), 1500, &mut scratch));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
