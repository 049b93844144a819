//! `RuleSet::decide` with 1, 100 and 10,000 rules over realistic API paths: the trie walk
//! should cost the same whatever the number of rules. `cargo bench --bench authz`.
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::internals::policy::authz::Effect;
use portcullis::internals::policy::authz::{MethodsSpec, RawRule, RuleSet};
use std::collections::BTreeMap;
use std::hint::black_box;

fn rule(effect: &str, methods: &[&str], path: String) -> RawRule {
    RawRule {
        effect: effect.into(),
        methods: MethodsSpec::List(methods.iter().map(|s| s.to_string()).collect()),
        path,
        agents: None,
        roles: None,
        query: None,
        header: None,
        name: None,
        mode: None,
        hold: None,
        ttl: None,
        mcp_methods: None,
        tools: None,
        tool_tags: None,
        resources: None,
        prompts: None,
    }
}

/// `n` rules over `n / 4` resources (`/v1/res{i}/...`), mixing every rule shape.
fn rules(n: usize) -> Vec<RawRule> {
    let mut v = Vec::with_capacity(n);
    let mut i = 0;
    while v.len() < n {
        let r = format!("/v1/res{i}");
        let shapes = [
            rule("allow", &["GET"], format!("{r}/**")),
            {
                let mut x = rule("allow", &["POST", "PUT"], format!("{r}/*/items"));
                x.roles = Some(vec!["support".into(), format!("team{}", i % 7)]);
                x
            },
            rule("deny", &["DELETE"], format!("{r}/*")),
            {
                let mut x = rule("approve", &["POST"], format!("{r}/*/refunds"));
                x.agents = Some(vec![format!("bot-{}", i % 13)]);
                x
            },
        ];
        for s in shapes {
            if v.len() < n {
                v.push(s);
            }
        }
        i += 1;
    }
    if n >= 100 {
        // A few conditional and report-mode rules, as a real config would have.
        let mut q = rule("deny", &["GET"], "/v1/res0/**".into());
        q.query = Some(BTreeMap::from([("debug".to_string(), "true".to_string())]));
        v[n - 1] = q;
        let mut r = rule("deny", &["GET"], "/v1/**".into());
        r.mode = Some("report".into());
        v[n - 2] = r;
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("authz_decide");
    for n in [1usize, 100, 10_000] {
        let (set, _) = RuleSet::compile(&rules(n), Effect::Deny).expect("compiles");
        let res = (n / 4).saturating_sub(1) / 2;
        let get = format!("/v1/res{res}/12345/items/67");
        let post = format!("/v1/res{res}/12345/items");
        let miss = "/v2/unknown/path/with/many/segments/1/2/3".to_string();
        // Proof of what is measured.
        assert_eq!(
            set.decide(b"GET", &get, Some("bot-1"), &["support"], b"page=2", |_| {
                None
            })
            .effect,
            Effect::Allow
        );
        assert_eq!(
            set.decide(b"GET", &miss, Some("bot-1"), &["support"], b"", |_| None)
                .effect,
            Effect::Deny
        );
        g.bench_with_input(BenchmarkId::new("GET_allowed", n), &n, |b, _| {
            b.iter(|| {
                black_box(set.decide(
                    b"GET",
                    black_box(&get),
                    Some("bot-1"),
                    &["support", "team3"],
                    b"page=2&sort=asc",
                    |_| None,
                ))
            })
        });
        g.bench_with_input(BenchmarkId::new("POST_by_role", n), &n, |b, _| {
            b.iter(|| {
                black_box(set.decide(
                    b"POST",
                    black_box(&post),
                    Some("bot-1"),
                    &["support", "team3"],
                    b"",
                    |_| None,
                ))
            })
        });
        g.bench_with_input(BenchmarkId::new("no_match", n), &n, |b, _| {
            b.iter(|| {
                black_box(set.decide(
                    b"GET",
                    black_box(&miss),
                    Some("bot-1"),
                    &["support"],
                    b"",
                    |_| None,
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
