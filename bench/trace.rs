//! Per-call cost of trace context (criterion): parsing an agent's `traceparent`, starting the
//! call's trace at `sample = 0.01` (what every call pays with `[telemetry] otlp`: ids and the
//! sampling decision), formatting the outbound `traceparent`, and a sampled call's hand-off of
//! its span to the exporter's queue. `cargo bench --bench trace`. The end-to-end figure is the
//! harness: `TRACES=0.01 bash bench/run-anchors.sh` against a run without it.
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::internals::observe::audit::OnFull;
use portcullis::internals::observe::trace::{SpanQueue, TraceStats, Tracer, format, parse};
use std::hint::black_box;
use std::sync::Arc;

const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("trace");
    g.bench_function("parse_traceparent", |b| {
        b.iter(|| black_box(parse(black_box(TP))))
    });
    let p = parse(TP).unwrap();
    g.bench_function("format_traceparent", |b| {
        b.iter(|| black_box(format(&p.trace_id, &p.parent_id, true)))
    });
    let queue = Arc::new(SpanQueue::new(1 << 16, OnFull::Drop));
    let stats = Arc::new(TraceStats::default());
    let t = Tracer::new(0.01, queue, stats);
    g.bench_function("start_new_trace_sample_0.01", |b| {
        b.iter(|| black_box(t.start(None)))
    });
    g.bench_function("continue_agent_trace", |b| {
        b.iter(|| black_box(t.start(Some(black_box(TP)))))
    });
    g.bench_function("outbound_traceparent", |b| {
        let ct = t.start(None);
        b.iter(|| black_box(ct.outbound()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
