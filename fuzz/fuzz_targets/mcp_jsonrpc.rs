//! The MCP JSON-RPC extractor (issue 15) on arbitrary bodies: no panic, and the properties the
//! policy relies on:
//! - a body that parses names, per request, exactly the tool / resource / prompt that
//!   `serde_json` (a second, independent reading) finds at `params.name` / `params.uri`;
//! - a body with a duplicated key never parses (the gateway and a server could disagree);
//! - the headers check accepts the headers derived from the parsed body itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::mcp::jsonrpc::{Message, Target, check_headers, parse_body};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = parse_body(data, 16) else {
        return;
    };
    // Second reading: serde_json's own Value (last duplicate wins, which cannot arise here).
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        panic!("the strict parser accepted what serde_json refuses");
    };
    let items: Vec<&serde_json::Value> = match &v {
        serde_json::Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    assert_eq!(items.len(), body.messages.len());
    for (m, raw) in body.messages.iter().zip(items) {
        let p = &raw["params"];
        match m.target() {
            Target::Tool(n) | Target::Prompt(n) => assert_eq!(p["name"].as_str(), Some(n.as_str())),
            Target::Resource(u) => assert_eq!(p["uri"].as_str(), Some(u.as_str())),
            Target::None => {}
        }
        assert_eq!(m.method(), raw["method"].as_str());
    }
    if !body.batch
        && let [Message::Request { method, target, .. }] = body.messages.as_slice()
    {
        let name = target.name().map(|n| {
            if n.bytes().all(|b| (0x20..0x7f).contains(&b)) && !n.starts_with("=?base64?") {
                n.as_bytes().to_vec()
            } else {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD.encode(n);
                format!("=?base64?{b}?=").into_bytes()
            }
        });
        let m = if method.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            method.as_bytes().to_vec()
        } else {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.encode(method);
            format!("=?base64?{b}?=").into_bytes()
        };
        if let Err(e) = check_headers(&body, Some(&m), name.as_deref()) {
            panic!("headers derived from the body refused: {e}");
        }
    }
});
