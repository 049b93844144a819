//! Scanner throughput on a 64 KiB JSON request body (the shape of an LLM API call: prose,
//! ids, timestamps, prices), with 100 literals and every built-in detector in one proxy.
//! `cargo bench --bench scan`; target ≥ 1 GB/s per core.
//!
//! `scan_request` (issue 12) adds the decoded views: on the ordinary body it costs the trigger
//! checks only (no view is built: no JSON escape that can hide a match, no long base64 run
//! beyond the ids); the `decoded_*` cases measure bodies that do build views (a body from a
//! client that escapes every non-ASCII character, a form body, a body carrying base64).
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis::internals::scan::{Detector, RawScanner, ScanSet};
use std::hint::black_box;

const BODY_LEN: usize = 64 * 1024;

/// Deterministic pseudo-random numbers (xorshift), so every run scans the same bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "the",
    "customer",
    "asked",
    "about",
    "their",
    "invoice",
    "and",
    "whether",
    "shipping",
    "was",
    "delayed",
    "please",
    "summarise",
    "account",
    "history",
    "for",
    "last",
    "quarter",
    "with",
    "totals",
    "refund",
    "policy",
    "applies",
    "to",
    "orders",
    "over",
    "thirty",
    "days",
    "contact",
    "support",
    "team",
    "if",
    "needed",
    "status",
    "pending",
    "approved",
    "region",
    "north",
    "model",
    "response",
    "tokens",
    "a",
    "is",
    "of",
    "in",
    "on",
    "we",
    "will",
    "review",
];

fn json_body(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::with_capacity(BODY_LEN + 512);
    out.push_str(r#"{"model":"gpt-4o-mini","temperature":0.2,"messages":["#);
    let mut n = 0u64;
    while out.len() < BODY_LEN - 600 {
        n += 1;
        let role = if n.is_multiple_of(2) {
            "assistant"
        } else {
            "user"
        };
        let mut text = String::new();
        for _ in 0..(20 + rng.below(60)) {
            text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            text.push(' ');
        }
        out.push_str(&format!(
            r#"{{"role":"{role}","content":"{text}","metadata":{{"id":"msg_{:016x}","ts":"2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z","order":{},"amount":{}.{:02},"uuid":"{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}","tags":["{}","{}"],"score":0.{}}}}},"#,
            rng.next(),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(1000),
            100_000 + rng.below(900_000),
            rng.below(10_000),
            rng.below(100),
            rng.next() as u32,
            rng.below(0x10000),
            rng.below(0x1000),
            rng.below(0x1000),
            rng.next() & 0xffff_ffff_ffff,
            WORDS[rng.below(WORDS.len() as u64) as usize],
            WORDS[rng.below(WORDS.len() as u64) as usize],
            rng.below(1_000_000),
        ));
    }
    out.pop();
    out.push_str("]}");
    while out.len() < BODY_LEN {
        out.insert(out.len() - 2, ' ');
    }
    out.into_bytes()
}

fn literals(rng: &mut Rng) -> Vec<String> {
    (0..100)
        .map(|i| {
            let len = 6 + rng.below(10) as usize;
            let mut s: String = (0..len)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            if i % 3 == 0 {
                s = format!("project-{s}");
            } else if i % 3 == 1 {
                s = s.to_ascii_uppercase();
            }
            s
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let clean = json_body(&mut rng);
    let lits = literals(&mut rng);
    let all: Vec<String> = Detector::ALL
        .iter()
        .map(|d| d.as_str().to_string())
        .collect();
    let full = ScanSet::compile(&[
        RawScanner {
            name: "no-secrets".into(),
            detectors: all.clone(),
            literals: lits.clone(),
            mode: None,
        },
        RawScanner {
            name: "shadow-pii".into(),
            detectors: vec!["email".into(), "iban".into()],
            literals: vec![],
            mode: Some("report".into()),
        },
    ])
    .expect("bench config compiles");
    let literals_only = ScanSet::compile(&[RawScanner {
        name: "lits".into(),
        detectors: vec![],
        literals: lits,
        mode: None,
    }])
    .expect("compiles");
    let detectors_only = ScanSet::compile(&[RawScanner {
        name: "dets".into(),
        detectors: all,
        literals: vec![],
        mode: None,
    }])
    .expect("compiles");

    // Proof that the bench measures what it says: no hit in the clean body, one at the end.
    assert!(
        full.scan(&clean).is_clean(),
        "clean body has a hit: {:?}",
        full.scan(&clean)
    );
    let mut hit = clean.clone();
    let key = b"AKIAIOSFODNN7EXAMPLE";
    let at = hit.len() - key.len() - 4;
    hit[at - 1] = b' ';
    hit[at..at + key.len()].copy_from_slice(key);
    hit[at + key.len()] = b' ';
    let out = full.scan(&hit);
    assert_eq!(out.blocked.map(|h| h.offset), Some(at), "{out:?}");

    let only = |dets: &[&str]| {
        ScanSet::compile(&[RawScanner {
            name: "part".into(),
            detectors: dets.iter().map(|d| d.to_string()).collect(),
            literals: vec![],
            mode: None,
        }])
        .expect("compiles")
    };
    let digits_only = only(&["credit_card", "us_ssn", "iban"]);
    let tokens_only = only(&[
        "private_key",
        "aws_access_key",
        "github_token",
        "slack_token",
        "openai_key",
    ]);
    let email_only = only(&["email"]);

    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("64KiB_clean_100lit_all_detectors", |b| {
        b.iter(|| black_box(full.scan(black_box(&clean))))
    });
    g.bench_function("64KiB_hit_at_end_100lit_all_detectors", |b| {
        b.iter(|| black_box(full.scan(black_box(&hit))))
    });
    g.bench_function("64KiB_clean_100lit_only", |b| {
        b.iter(|| black_box(literals_only.scan(black_box(&clean))))
    });
    g.bench_function("64KiB_clean_detectors_only", |b| {
        b.iter(|| black_box(detectors_only.scan(black_box(&clean))))
    });
    g.bench_function("64KiB_clean_part_digit_detectors", |b| {
        b.iter(|| black_box(digits_only.scan(black_box(&clean))))
    });
    g.bench_function("64KiB_clean_part_token_detectors", |b| {
        b.iter(|| black_box(tokens_only.scan(black_box(&clean))))
    });
    g.bench_function("64KiB_clean_part_email", |b| {
        b.iter(|| black_box(email_only.scan(black_box(&clean))))
    });
    g.bench_function("64KiB_clean_stream_16KiB_chunks", |b| {
        b.iter(|| {
            let mut s = full.stream();
            for c in clean.chunks(16 * 1024) {
                s.feed(black_box(c));
            }
            black_box(s.finish())
        })
    });
    // issue 12: the decoded views
    const MAX: usize = 1 << 20;
    let json: &[(&[u8], &[u8])] = &[(b"content-type", b"application/json")];
    let form: &[(&[u8], &[u8])] = &[(b"content-type", b"application/x-www-form-urlencoded")];
    // Python's json.dumps default: every non-ASCII character escaped (one `\u00e9` per ~60 B)
    let escaped: Vec<u8> = String::from_utf8_lossy(&clean)
        .replace("customer", "caf\\u00e9 customer")
        .into_bytes()
        .into_iter()
        .take(clean.len())
        .collect();
    let form_body: Vec<u8> = clean
        .iter()
        .flat_map(|&b| match b {
            b' ' => vec![b'+'],
            b'"' | b'{' | b'}' | b':' | b',' | b'[' | b']' => format!("%{b:02X}").into_bytes(),
            b => vec![b],
        })
        .take(clean.len())
        .collect();
    let b64_body: Vec<u8> = {
        use base64::Engine;
        let blob = base64::engine::general_purpose::STANDARD.encode(&clean[..clean.len() / 2]);
        let mut v = br#"{"model":"m","image":"data:image/png;base64,"#.to_vec();
        v.extend_from_slice(blob.as_bytes());
        v.extend_from_slice(br#""}"#);
        v.truncate(clean.len());
        v
    };
    for (name, body) in [
        ("escaped", &escaped),
        ("form", &form_body),
        ("b64", &b64_body),
    ] {
        assert!(
            full.scan_request(body, json.iter().copied(), MAX).is_ok(),
            "{name} scans"
        );
    }
    assert!(
        full.scan_request(&clean, json.iter().copied(), MAX)
            .unwrap()
            .is_clean()
    );
    g.bench_function("64KiB_clean_request_views_100lit_all_detectors", |b| {
        b.iter(|| black_box(full.scan_request(black_box(&clean), json.iter().copied(), MAX)))
    });
    g.bench_function("64KiB_decoded_json_escapes_100lit_all_detectors", |b| {
        b.iter(|| black_box(full.scan_request(black_box(&escaped), json.iter().copied(), MAX)))
    });
    g.bench_function("64KiB_decoded_form_100lit_all_detectors", |b| {
        b.iter(|| black_box(full.scan_request(black_box(&form_body), form.iter().copied(), MAX)))
    });
    g.bench_function("64KiB_decoded_base64_100lit_all_detectors", |b| {
        b.iter(|| black_box(full.scan_request(black_box(&b64_body), json.iter().copied(), MAX)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
