//! Streaming JSON redactor throughput: a ~1 MiB array of customer records, five paths, fed in
//! 16 KiB chunks. `cargo bench --bench redact -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis::internals::redact::{Action, JsonRedactor, Limits, OnInvalid, RedactProgram};
use serde_json::{Value, json};

const CHUNK: usize = 16 * 1024;

/// Deterministic pseudo-random customer records until the document passes 1 MiB.
fn document() -> Vec<u8> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let first = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
    ];
    let last = [
        "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
    ];
    let cities = ["Lisbon", "Oslo", "Austin", "Kyoto", "Nairobi", "Quito"];
    let mut records = Vec::new();
    let mut size = 0;
    let mut id = 0u64;
    while size < 1 << 20 {
        let r = next();
        let f = first[(r % 8) as usize];
        let l = last[((r >> 8) % 8) as usize];
        let rec: Value = json!({
            "id": id,
            "name": format!("{f} {l}"),
            "email": format!("{}.{}@example.com", f.to_lowercase(), l.to_lowercase()),
            "ssn": format!("{:03}-{:02}-{:04}", r % 1000, (r >> 10) % 100, (r >> 20) % 10000),
            "account_number": format!("{:012}", r % 1_000_000_000_000),
            "balance": (r % 10_000_000) as f64 / 100.0,
            "active": r % 3 != 0,
            "address": {
                "street": format!("{} Main St", r % 9999),
                "city": cities[((r >> 16) % 6) as usize],
                "zip": format!("{:05}", r % 100_000),
            },
            "tags": ["retail", if r % 2 == 0 { "vip" } else { "standard" }],
            "history": [
                {"date": "2026-01-02", "amount": (r % 50_000) as f64 / 100.0, "memo": "card payment"},
                {"date": "2026-02-03", "amount": ((r >> 5) % 50_000) as f64 / 100.0, "memo": "transfer \"out\""},
            ],
            "login": {"username": format!("{}{}", f.to_lowercase(), id), "password": "hunter2"},
        });
        size += rec.to_string().len();
        records.push(rec);
        id += 1;
    }
    serde_json::to_vec(&json!({
        "meta": {"count": records.len(), "token": "secret-token", "page": 1},
        "data": records,
    }))
    .expect("serialize")
}

fn program() -> RedactProgram {
    let mut p = RedactProgram::compile(&["$..ssn", "$.data[*].account_number"], Action::Remove)
        .expect("paths");
    for path in ["$..password", "$.data[*].address.street", "$.meta.token"] {
        p.add(path, Action::Mask).expect("path");
    }
    p
}

fn run(p: &RedactProgram, doc: &[u8], out: &mut Vec<u8>) -> u64 {
    let mut r = JsonRedactor::new(p, Limits::default(), OnInvalid::Block);
    let mut total = 0;
    for chunk in doc.chunks(CHUNK) {
        out.clear();
        r.feed(chunk, out).expect("valid");
        total += out.len();
    }
    out.clear();
    r.finish(out).expect("complete");
    black_box(total);
    r.redactions()
}

fn bench(c: &mut Criterion) {
    let doc = document();
    let p = program();
    let mut out = Vec::with_capacity(2 * CHUNK);
    let n = run(&p, &doc, &mut out);
    assert!(n > 0, "no redactions");
    let mut g = c.benchmark_group("redact");
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.bench_function("json_1MiB_5_paths_16KiB_chunks", |b| {
        b.iter(|| run(&p, black_box(&doc), &mut out));
    });
    let none = RedactProgram::compile(&["$.nothing_here"], Action::Remove).expect("path");
    g.bench_function("json_1MiB_no_reachable_paths", |b| {
        b.iter(|| run(&none, black_box(&doc), &mut out));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
