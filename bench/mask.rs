//! Secret masking (`redact::mask::Masker`) throughput: 64 KiB and 1 MiB bodies of JSON-ish
//! text fed in 64 KiB pieces (the relay's read size), with 1 secret and no hit, 1 secret with
//! one hit per piece, and 4 secrets (one hit each per piece). The baseline is the copy the
//! relay makes anyway (`Vec::extend_from_slice`). No masker exists for a call whose proxy
//! injects nothing, so "absent" costs nothing.
//! `cargo bench --bench mask -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use portcullis::internals::redact::mask::Masker;

const PIECE: usize = 64 * 1024;

const SECRETS: [&[u8]; 4] = [
    b"sk-live-0123456789abcdefABCDEF",
    b"c3ZjOnB3LVNFQ1JFVC0y",
    b"pw-SECRET-2",
    b"Sk-Live%2F9f%2BQ%3Da%26b",
];

/// `len` bytes of ordinary JSON text; with `hits`, each 64 KiB piece carries each of the
/// first `hits` secrets once, mid-piece.
fn body(len: usize, hits: usize) -> Vec<u8> {
    let line = b"{\"id\":12345,\"name\":\"Grace Hopper\",\"email\":\"grace@example.com\",\"note\":\"sk-live-01 partial\"},\n";
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(line);
    }
    v.truncate(len);
    for piece in (0..len).step_by(PIECE) {
        for (k, s) in SECRETS.iter().take(hits).enumerate() {
            let at = piece + PIECE / 2 + k * 64;
            if at + s.len() <= len {
                v[at..at + s.len()].copy_from_slice(s);
            }
        }
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for len in [64 * 1024, 1 << 20] {
        g.throughput(Throughput::Bytes(len as u64));
        let plain = body(len, 0);
        let mut out = Vec::with_capacity(len + 64);
        g.bench_with_input(BenchmarkId::new("copy_only", len), &plain, |b, data| {
            b.iter(|| {
                out.clear();
                for p in data.chunks(PIECE) {
                    out.extend_from_slice(p);
                }
                black_box(out.len())
            })
        });
        for (name, marks, hits) in [
            ("1_secret_no_hit", 1, 0),
            ("1_secret_hit", 1, 1),
            ("4_secrets_hit", 4, 4),
        ] {
            let data = body(len, hits);
            g.bench_with_input(BenchmarkId::new(name, len), &data, |b, data| {
                b.iter(|| {
                    let mut m = Masker::new(SECRETS.iter().take(marks).copied()).expect("marks");
                    out.clear();
                    for p in data.chunks(PIECE) {
                        m.feed(p, &mut out);
                    }
                    m.finish(&mut out);
                    assert_eq!(out.len(), data.len());
                    black_box(m.hits())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
