//! The rule trie (`policy::authz::RuleSet::decide`) behind the path canonicaliser, on arbitrary
//! method / path / query / header bytes: no panic, and decisions stable under everything the
//! canonicaliser folds:
//! - deterministic (the same inputs twice give the same decision);
//! - escaping unreserved characters of the raw path never changes the decision;
//! - with `path_params = "strip"`, a path an allow rule admits is one Tomcat / Jetty / Spring
//!   resolve inside that rule's subtree (the `..;` bypass of issue 12), and with the default
//!   `refuse` no path holding a parameter is decided at all.
//!
//! Input layout: fields separated by 0xFF: method, raw path, query, header value, escape mask.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::http::canon::{PathParams, canonicalize_with};
use portcullis::internals::policy::authz::{Effect, RawRule, RuleSet};
use std::sync::OnceLock;

static RULES: OnceLock<RuleSet> = OnceLock::new();

fn rules() -> &'static RuleSet {
    RULES.get_or_init(|| {
        let raw: Vec<RawRule> = serde_json::from_value(serde_json::json!([
            {"effect": "allow", "methods": "*", "path": "/v1/accounts/**"},
            {"effect": "deny", "methods": ["GET"], "path": "/v1/accounts/*/secrets"},
            {"effect": "approve", "methods": ["DELETE"], "path": "/v1/accounts/*"},
            {"effect": "allow", "methods": "read", "path": "/v1/public/*/info", "query": {"fields": "id,name*"}},
            {"effect": "allow", "methods": ["POST"], "path": "/v1/tickets/**", "header": {"x-tenant": "acme"}},
            {"effect": "deny", "methods": "*", "path": "/v1/accounts/admin/**", "mode": "report"}
        ]))
        .unwrap_or_else(|e| panic!("fuzz rules: {e}"));
        match RuleSet::compile(&raw, Effect::Deny) {
            Ok((set, _)) => set,
            Err(e) => panic!("fuzz rules: {e:?}"),
        }
    })
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// How Tomcat resolves a received path: each segment cut at `;`, percent-decoded, dot segments
/// resolved, empty segments dropped.
fn tomcat(path: &[u8]) -> Vec<Vec<u8>> {
    let mut segs: Vec<Vec<u8>> = Vec::new();
    for seg in path.split(|&b| b == b'/').skip(1) {
        let seg = seg.split(|&b| b == b';').next().unwrap_or(b"");
        let mut d = Vec::new();
        let mut i = 0;
        while i < seg.len() {
            if seg[i] == b'%'
                && let (Some(h), Some(l)) = (
                    seg.get(i + 1).copied().and_then(hex),
                    seg.get(i + 2).copied().and_then(hex),
                )
            {
                d.push(h << 4 | l);
                i += 3;
                continue;
            }
            d.push(seg[i]);
            i += 1;
        }
        match &d[..] {
            b"" | b"." => {}
            b".." => {
                segs.pop();
            }
            _ => segs.push(d),
        }
    }
    segs
}

fn decide(method: &[u8], path: &str, query: &[u8], header: &[u8]) -> portcullis::internals::policy::authz::Decision {
    rules().decide(method, path, Some("agent"), &["support"], query, |name: &str| {
        (name == "x-tenant").then_some(header)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let method = parts.next().unwrap_or(b"GET");
    let raw = parts.next().unwrap_or(b"/");
    let query = parts.next().unwrap_or(b"");
    let header = parts.next().unwrap_or(b"");
    let mask = parts.next().unwrap_or(b"");
    let mut path = b"/".to_vec();
    path.extend_from_slice(raw);

    // Refuse (the default): a path holding a parameter never gets a decision
    let mut c = String::new();
    let refused = canonicalize_with(&path, PathParams::Refuse, &mut c);
    let has_param = path.contains(&b';') || path.windows(3).any(|w| w.eq_ignore_ascii_case(b"%3b"));
    if has_param {
        assert!(refused.is_err(), "a parameter passed: {c:?}");
    }
    if refused.is_ok() {
        let d = decide(method, &c, query, header);
        assert_eq!(d, decide(method, &c, query, header), "not deterministic");
        // escaping unreserved characters (mask-chosen) changes nothing
        let mut escaped = Vec::new();
        for (i, &b) in path.iter().enumerate() {
            let m = mask.get(i / 8).is_some_and(|m| m >> (i % 8) & 1 == 1);
            if m && (b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~') {
                escaped.extend_from_slice(format!("%{b:02x}").as_bytes());
            } else {
                escaped.push(b);
            }
        }
        let mut c2 = String::new();
        if canonicalize_with(&escaped, PathParams::Refuse, &mut c2).is_ok() {
            assert_eq!(c2, c, "escaping unreserved changed the canonical path");
        }
    }

    // Strip: what the rules admit is what Tomcat serves
    let mut s = String::new();
    if canonicalize_with(&path, PathParams::Strip, &mut s).is_ok() {
        assert!(!s.contains(';'), "a parameter survived strip: {s:?}");
        let d = decide(method, &s, query, header);
        let encoded_semicolon = path.windows(3).any(|w| w.eq_ignore_ascii_case(b"%3b"));
        if d.effect == Effect::Allow && !encoded_semicolon {
            let served = tomcat(&path);
            let checked = tomcat(s.as_bytes());
            assert_eq!(served, checked, "checked {s:?}, Tomcat serves another path");
        }
    }
});
