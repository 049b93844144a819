//! The MCP list filter (issue 15) on arbitrary answers, JSON and SSE, split at an arbitrary
//! point: no panic, and the property the lists rely on — no entry the policy hid ever comes
//! out (every name starting `del` is hidden, and `del` never appears in the output unless it
//! was in a part of the input the filter passes unchanged: not a list answer).
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::mcp::jsonrpc::Id;
use portcullis::internals::mcp::lists::{Keep, ListFilter, ListKind, ListPolicy, Mode};

struct NoDel;
impl ListPolicy for NoDel {
    fn keep(
        &mut self,
        _: ListKind,
        name: &str,
        _: &serde_json::Map<String, serde_json::Value>,
    ) -> Keep {
        if name.starts_with("del") { Keep::Hidden } else { Keep::Yes }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    let mode = if ctl & 1 == 0 { Mode::Json } else { Mode::Sse };
    let max = if ctl & 2 == 0 { 1 << 20 } else { 64 };
    let split = (ctl as usize >> 2).min(body.len());
    let mut f = ListFilter::new(
        Box::new(NoDel),
        mode,
        vec![(Id("1".into()), ListKind::Tools)],
        false,
        max,
        "fuzz",
    );
    let mut out = Vec::new();
    f.feed(&body[..split], &mut out);
    f.feed(&body[split..], &mut out);
    f.finish(&mut out);
    // a JSON answer that the filter rewrote is strict JSON again, and lists no hidden tool
    if mode == Mode::Json && out != body {
        let v: serde_json::Value = serde_json::from_slice(&out).expect("rewritten JSON is JSON");
        let items: Vec<&serde_json::Value> = match &v {
            serde_json::Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        for m in items {
            if let Some(tools) = m["result"]["tools"].as_array()
                && (m["id"] == 1 || m["id"] == "1")
            {
                for t in tools {
                    let n = t["name"].as_str().expect("kept entries have names");
                    assert!(!n.starts_with("del"), "a hidden tool came out: {n}");
                }
            }
        }
    }
});
