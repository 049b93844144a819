//! Issue 18, budgets: meters on what the response says. Mock OpenAI- and Anthropic-compatible
//! upstreams on 127.0.0.1 (JSON and SSE, usage in the final event); what each call is charged
//! (`GET /v1/budgets`, the audit record's `metered`), the 429 `budget_exhausted` with nothing
//! sent upstream, the refill after a short window, the `openai` SDK's `RateLimitError`, and
//! hostile upstream bodies, each with its documented outcome.
use crate::audit::calls;
use crate::support::*;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "admin-token-for-budget-tests";

const OPENAI_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;

fn openai_sse() -> Vec<u8> {
    let mut s = String::new();
    for piece in ["h", "i"] {
        s.push_str(&format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5,\"total_tokens\":12}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

const ANTHROPIC_JSON: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":20,"output_tokens":9}}"#;

const ANTHROPIC_SSE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// A chunked response in `pieces` (one chunk each), then the last chunk.
fn chunked(status: u16, content_type: &str, pieces: &[&[u8]]) -> Reply {
    let mut b = format!(
        "HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for p in pieces {
        b.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        b.extend_from_slice(p);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"0\r\n\r\n");
    Reply::raw(b)
}

fn json(body: &str) -> Reply {
    Reply::with(
        200,
        "OK",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// An LLM-ish upstream: OpenAI at `/v1/chat/completions` (SSE when the body asks to stream),
/// Anthropic at `/v1/messages`, and the adversarial bodies at `/bad/<case>`.
fn llm(req: &ReceivedRequest) -> Reply {
    let body = String::from_utf8_lossy(&req.body);
    let streaming = body.contains("\"stream\":true") || body.contains("\"stream\": true");
    let path = req.target.split('?').next().unwrap_or("");
    match path.rsplit_once("/v1/").map_or(path, |(_, p)| p) {
        "chat/completions" if streaming => chunked(200, "text/event-stream", &[&openai_sse()]),
        "chat/completions" => json(OPENAI_JSON),
        "messages" if streaming => chunked(200, "text/event-stream", &[ANTHROPIC_SSE.as_bytes()]),
        "messages" => json(ANTHROPIC_JSON),
        _ => match path.rsplit('/').next().unwrap_or("") {
            "string" => json(r#"{"usage":{"total_tokens":"42"}}"#),
            "negative" => json(r#"{"usage":{"total_tokens":-42}}"#),
            "huge" => json(r#"{"usage":{"total_tokens":1e300}}"#),
            "duplicate" => json(r#"{"usage":{"total_tokens":3,"total_tokens":40}}"#),
            // the number itself cut between two chunks, the key between two others
            "split" => chunked(
                200,
                "application/json",
                &[b"{\"usage\":{\"total_to", b"kens\":3", b"3}}"],
            ),
            "malformed" => json(r#"{"usage":{"total_tokens":5},"choices":[}"#),
            "nousage" => chunked(
                200,
                "text/event-stream",
                &[b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"],
            ),
            "header" => Reply::with(
                200,
                "OK",
                &[("Content-Type", "text/plain"), ("X-Cost", "7")],
                b"ok",
            ),
            _ => Reply::with(404, "Not Found", &[], b""),
        },
    }
}

fn base(admin: u16) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 2\nadmin_listen = \"127.0.0.1:{admin}\"\nadmin_token = \"file:admin.token\"\n\n[audit]\ndir = \"audit\"\nfsync = \"1s\"\n\n"
    )
}

fn budget(name: &str, value: &str, limit: u64, per: &str, extra: &str) -> String {
    format!(
        "[[proxies.budgets]]\nname = \"{name}\"\nvalue = \"{value}\"\nlimit = {limit}\nper = \"{per}\"\nby = \"proxy\"\n{extra}\n"
    )
}

fn start(toml: &str) -> Gateway {
    Gateway::start_with_files(toml, &[("admin.token", ADMIN_TOKEN.as_bytes())])
}

fn post(port: u16, target: &str, body: &str) -> Response {
    let raw = send_raw(
        port,
        format!(
            "POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    parse_response(&raw).unwrap_or_else(|e| panic!("{target}: {e}: {}", show(&raw)))
}

fn admin_get(admin: u16, target: &str) -> Response {
    let raw = send_raw(
        admin,
        format!("GET {target} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    parse_response(&raw).expect("admin response")
}

/// `(spent, remaining)` of budget `name` on `proxy` (key "" — `by = "proxy"`).
fn spent(admin: u16, proxy: &str, name: &str) -> (u64, u64) {
    let r = admin_get(admin, "/v1/budgets");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_str(&r.body_str()).expect("json");
    let b = v["budgets"]
        .as_array()
        .expect("budgets")
        .iter()
        .find(|b| b["proxy"] == proxy && b["name"] == name)
        .unwrap_or_else(|| panic!("no budget {proxy}/{name} in {v}"));
    let limit = b["limit"].as_u64().expect("limit");
    match b["keys"].as_array().expect("keys").first() {
        Some(k) => (
            k["spent"].as_u64().expect("spent"),
            k["remaining"].as_u64().expect("remaining"),
        ),
        None => (0, limit),
    }
}

fn metered(rec: &portcullis::internals::observe::audit::StoredRecord, name: &str) -> Option<u64> {
    rec.metered.as_ref().and_then(|m| m.get(name).copied())
}

/// OpenAI JSON (usage.total_tokens = 42) then SSE (final chunk's usage = 12) are charged their
/// totals, the body reaching the agent byte for byte (a budget alone does not re-frame it);
/// once the budget is spent the next call is a 429 `budget_exhausted` naming the budget, with
/// `Retry-After` at the window's end, and the upstream never sees it.
#[test]
fn openai_usage_is_charged_and_a_spent_budget_refuses_before_the_upstream() {
    let mock = MockUpstream::start(llm);
    let admin = free_port();
    let toml = format!(
        "{}{}{}",
        base(admin),
        proxy("openai", &mock.url()),
        budget("tokens", "openai_tokens", 50, "1h", "")
    );
    let mut gw = start(&toml);

    let r = post(
        gw.port(),
        "/openai/v1/chat/completions",
        r#"{"model":"m","messages":[]}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), OPENAI_JSON, "unchanged");
    assert_eq!(
        r.header("content-length"),
        Some(OPENAI_JSON.len().to_string().as_str()),
        "framing kept"
    );
    assert_eq!(spent(admin, "openai", "tokens"), (42, 8));

    let r = post(
        gw.port(),
        "/openai/v1/chat/completions",
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, openai_sse(), "the event stream unchanged");
    assert_eq!(spent(admin, "openai", "tokens"), (54, 0));
    assert_eq!(mock.count(), 2);

    let r = post(gw.port(), "/openai/v1/chat/completions", r#"{"model":"m"}"#);
    assert_eq!(r.status, 429, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_str(&r.body_str()).unwrap();
    assert_eq!(v["error"]["code"], "budget_exhausted");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("ratelimit-limit"), Some("50"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"tokens\";q=50;w=3600"));
    assert_eq!(r.header("portcullis-budget"), Some("tokens"));
    assert_eq!(
        mock.count(),
        2,
        "nothing sent upstream once the budget is spent"
    );

    let m = admin_get(admin, "/metrics").body_str();
    assert!(
        m.contains("portcullis_budget_exhausted_total{proxy=\"openai\",budget=\"tokens\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_budget_charged_units_total{proxy=\"openai\",budget=\"tokens\"} 54"),
        "{m}"
    );

    // /v1/telemetry: the window's units per budget (from the records, polled until the
    // writer has them) and each budget's state now
    let deadline = Instant::now() + Duration::from_secs(10);
    let tele = loop {
        let t: serde_json::Value =
            serde_json::from_str(&admin_get(admin, "/v1/telemetry?proxy=openai").body_str())
                .expect("telemetry json");
        if t["proxies"][0]["metered"]["tokens"] == 54 || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(tele["proxies"][0]["metered"]["tokens"], 54, "{tele}");
    assert_eq!(
        tele["proxies"][0]["agents"][0]["metered"]["tokens"], 54,
        "{tele}"
    );
    assert_eq!(tele["budgets"][0]["name"], "tokens", "{tele}");
    assert_eq!(tele["budgets"][0]["keys"][0]["remaining"], 0, "{tele}");

    crate::audit::stop(&mut gw);
    let recs = calls(&gw.dir().join("audit"));
    assert_eq!(recs.len(), 3);
    assert_eq!(metered(&recs[0], "tokens"), Some(42));
    assert_eq!(metered(&recs[1], "tokens"), Some(12));
    assert_eq!(metered(&recs[2], "tokens"), None);
    assert_eq!(recs[2].code.as_deref(), Some("budget_exhausted"));
}

/// Anthropic, weighted as cost (`input = 1`, `output = 3`): a JSON message (20 in, 9 out) costs
/// 47; a stream (`message_start` 25 in, `message_delta` 15 out) costs 70. Redaction on the same
/// proxy runs in the same pass: the text is masked and the usage still read.
#[test]
fn anthropic_tokens_weighted_as_cost_in_one_pass_with_redaction() {
    let mock = MockUpstream::start(llm);
    let admin = free_port();
    let toml = format!(
        "{}{}{}{}{}",
        base(admin),
        proxy("claude", &mock.url()),
        budget(
            "cost",
            "anthropic_tokens",
            1000,
            "1d",
            "weights = { input = 1.0, output = 3.0 }"
        ),
        proxy("claude_redacted", &mock.url()),
        "[[proxies.redact]]\npaths = [\"$.content\", \"$.delta.text\"]\naction = \"mask\"\n\n"
            .to_string()
            + &budget(
                "cost",
                "anthropic_tokens",
                1000,
                "1d",
                "weights = { input = 1.0, output = 3.0 }"
            )
    );
    let mut gw = start(&toml);
    let r = post(gw.port(), "/claude/v1/messages", r#"{"model":"c"}"#);
    assert_eq!((r.status, r.body_str()), (200, ANTHROPIC_JSON.to_string()));
    assert_eq!(spent(admin, "claude", "cost").0, 47);
    let r = post(
        gw.port(),
        "/claude/v1/messages",
        r#"{"model":"c","stream":true}"#,
    );
    assert_eq!((r.status, r.body_str()), (200, ANTHROPIC_SSE.to_string()));
    assert_eq!(spent(admin, "claude", "cost").0, 47 + 70);

    let r = post(
        gw.port(),
        "/claude_redacted/v1/messages",
        r#"{"model":"c"}"#,
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body_str().contains(r#""content":"[REDACTED]""#),
        "{}",
        r.body_str()
    );
    assert!(r.body_str().contains(r#""output_tokens":9"#));
    let r = post(
        gw.port(),
        "/claude_redacted/v1/messages",
        r#"{"model":"c","stream":true}"#,
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body_str().contains("\"text\":\"[REDACTED]\""),
        "{}",
        r.body_str()
    );
    assert_eq!(spent(admin, "claude_redacted", "cost").0, 47 + 70);

    crate::audit::stop(&mut gw);
    let recs = calls(&gw.dir().join("audit"));
    let got: Vec<Option<u64>> = recs.iter().map(|r| metered(r, "cost")).collect();
    assert_eq!(got, [Some(47), Some(70), Some(47), Some(70)]);
}

/// A `per = "2s"` budget of 1: the first call spends it, the next is refused, and a call is
/// admitted again once the window has turned (bounded wait, no timing assert).
#[test]
fn a_spent_budget_refills_when_its_window_turns() {
    let mock = MockUpstream::start(llm);
    let admin = free_port();
    let toml = format!(
        "{}{}{}",
        base(admin),
        proxy("openai", &mock.url()),
        budget("tokens", "openai_tokens", 1, "2s", "")
    );
    let gw = start(&toml);
    let target = "/openai/v1/chat/completions";
    // the first call may straddle a window boundary: go on until one is refused
    let mut refused = None;
    for _ in 0..5 {
        let r = post(gw.port(), target, "{}");
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = refused.expect("a spent budget refuses");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let before = mock.count();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut admitted = false;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if post(gw.port(), target, "{}").status == 200 {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "the budget refills in its next window");
    assert_eq!(mock.count(), before + 1);
}

/// The `openai` Python SDK (max_retries=0) gets its completion, then `RateLimitError` with the
/// gateway's code once the budget is spent.
#[test]
fn the_openai_sdk_surfaces_rate_limit_error() {
    let mock = MockUpstream::start(llm);
    let admin = free_port();
    let toml = format!(
        "{}{}{}",
        base(admin),
        proxy("openai", &mock.url()),
        budget("tokens", "openai_tokens", 40, "1h", "")
    );
    let gw = start(&toml);
    let script = format!(
        r#"
import openai
c = openai.OpenAI(base_url="http://127.0.0.1:{port}/openai/v1", api_key="unused", max_retries=0)
r = c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "hi"}}])
print("usage", r.usage.total_tokens)
try:
    c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "hi"}}])
    print("no error")
except openai.RateLimitError as e:
    print("RateLimitError", e.status_code, e.body.get("code") if isinstance(e.body, dict) else e.body)
"#,
        port = gw.port()
    );
    let out = std::process::Command::new("timeout")
        .args(["60", "python3", "-c", &script])
        .output()
        .expect("python3 (scripts/test installs the openai SDK)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("usage 42"), "{text}");
    assert!(
        text.contains("RateLimitError 429 budget_exhausted"),
        "{text}"
    );
    assert_eq!(mock.count(), 1);
}

/// Hostile or broken upstream bodies, each with its documented outcome: a string, a negative
/// number, `null` or a missing usage charge nothing (a string or negative counts as unreadable);
/// a huge number spends the budget (saturating); a duplicated key counts its largest value; a
/// number split across chunks is read whole; malformed JSON after the value still counts the
/// value and the body passes unchanged; a header value is charged from the head.
#[test]
fn hostile_upstream_bodies_have_defined_outcomes() {
    let mock = MockUpstream::start(llm);
    let admin = free_port();
    let cases: &[(&str, &str, Option<u64>, u64)] = &[
        // (case, value, metered, spent after)
        ("string", "$.usage.total_tokens", None, 0),
        ("negative", "$.usage.total_tokens", None, 0),
        // the charge saturates at the largest amount a budget holds (2^40 - 1)
        (
            "huge",
            "$.usage.total_tokens",
            Some(u64::MAX),
            (1 << 40) - 1,
        ),
        ("duplicate", "$.usage.total_tokens", Some(40), 40),
        ("split", "$.usage.total_tokens", Some(33), 33),
        ("malformed", "$.usage.total_tokens", Some(5), 5),
        ("nousage", "openai_tokens", None, 0),
        ("header", "header:X-Cost", Some(7), 7),
    ];
    let mut toml = base(admin);
    for (case, value, _, _) in cases {
        toml.push_str(&proxy(case, &mock.url()));
        toml.push_str(&budget("b", value, 1000, "1d", ""));
    }
    let mut gw = start(&toml);
    for (case, _, _, after) in cases {
        let r = post(gw.port(), &format!("/{case}/bad/{case}"), "{}");
        assert_eq!(r.status, 200, "{case}: {}", r.body_str());
        if *case == "malformed" {
            assert_eq!(
                r.body_str(),
                r#"{"usage":{"total_tokens":5},"choices":[}"#,
                "passed unchanged"
            );
        }
        if *case == "split" {
            assert_eq!(r.body_str(), r#"{"usage":{"total_tokens":33}}"#);
        }
        assert_eq!(spent(admin, case, "b").0, *after, "{case}");
    }
    let m = admin_get(admin, "/metrics").body_str();
    for (case, n) in [("string", 1), ("negative", 1), ("nousage", 0)] {
        assert!(
            m.contains(&format!(
                "portcullis_budget_unreadable_total{{proxy=\"{case}\",budget=\"b\"}} {n}"
            )),
            "{case}: {m}"
        );
    }
    crate::audit::stop(&mut gw);
    let recs = calls(&gw.dir().join("audit"));
    for (case, _, want, _) in cases {
        let rec = recs
            .iter()
            .find(|r| r.proxy.as_deref() == Some(case))
            .unwrap_or_else(|| panic!("{case}: no record"));
        assert_eq!(metered(rec, "b"), *want, "{case}");
    }
}

fn reload(admin: u16) {
    let raw = send_raw(
        admin,
        format!("POST /v1/reload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let r = parse_response(&raw).expect("reload response");
    assert_eq!(r.status, 200, "{}", r.body_str());
}

/// A reload that keeps a budget keeps what was spent; one that changes it starts afresh.
#[test]
fn a_reload_keeps_an_unchanged_budget() {
    let mock = MockUpstream::start(llm);
    let admin = free_port();
    let toml = |limit: u64| {
        format!(
            "{}{}{}",
            base(admin),
            proxy("openai", &mock.url()),
            budget("tokens", "openai_tokens", limit, "1h", "")
        )
    };
    let gw = start(&toml(100));
    assert_eq!(
        post(gw.port(), "/openai/v1/chat/completions", "{}").status,
        200
    );
    assert_eq!(spent(admin, "openai", "tokens"), (42, 58));
    gw.write_config(&(toml(100) + "\n# touched\n"));
    reload(admin);
    assert_eq!(spent(admin, "openai", "tokens"), (42, 58), "kept");
    gw.write_config(&toml(200));
    reload(admin);
    assert_eq!(
        spent(admin, "openai", "tokens"),
        (0, 200),
        "a changed budget starts afresh"
    );
}

/// Bad budgets are `file:line: key: message` errors.
#[test]
fn bad_budget_config_is_reported() {
    let rows: &[(&str, &str, &str)] = &[
        ("value = \"$.usage.\"", "budgets[0].value", "ends with"),
        (
            "value = \"tokens_please\"",
            "budgets[0].value",
            "unknown value",
        ),
        ("per = \"500ms\"", "budgets[0].per", "whole seconds"),
        (
            "per = \"1 fortnight\"",
            "budgets[0].per",
            "invalid duration",
        ),
        ("limit = 0", "budgets[0].limit", "between 1 and"),
        ("by = \"team\"", "budgets[0].by", "unknown value"),
        (
            "aggregate = \"avg\"",
            "budgets[0].aggregate",
            "unknown value",
        ),
        (
            "value = \"$.cost\"\nweights = { input = 2.0 }",
            "budgets[0].weights",
            "presets",
        ),
        (
            "weights = { input = -1.0 }",
            "budgets[0].weights",
            "from 0 to",
        ),
        (
            "reserve = \"max_tokens\"",
            "budgets[0].reserve",
            "invalid path",
        ),
        (
            "rule = \"nope\"",
            "budgets[0].rule",
            "no rule of this proxy is named",
        ),
    ];
    for (line, key, why) in rows {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        let key_name = line.split(['=', ' ']).next().unwrap();
        let mut fields = vec![
            ("name", "name = \"b\"".to_string()),
            ("value", "value = \"openai_tokens\"".to_string()),
            ("limit", "limit = 10".to_string()),
            ("per", "per = \"1h\"".to_string()),
        ];
        fields.retain(|(k, _)| *k != key_name);
        let mut toml = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n{}[[proxies.budgets]]\n",
            proxy("p", "http://127.0.0.1:9")
        );
        for (_, f) in fields {
            toml.push_str(&f);
            toml.push('\n');
        }
        toml.push_str(line);
        toml.push('\n');
        std::fs::write(&path, &toml).unwrap();
        let out = run_portcullis(
            &["check", "-c", path.to_str().unwrap()],
            &[],
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{line}: {text}");
        assert!(
            text.contains("b.toml:") && text.contains(&format!("proxies[0].{key}")),
            "{line}: {text}"
        );
        assert!(text.contains(why), "{line}: {text}");
    }
}

/// `reserve = "$.max_tokens"`: while a call is in flight its `max_tokens` is already spent (a
/// second call is refused), and when its response says 42 the reservation is settled to 42; a
/// call whose upstream is unreachable gets its reservation back.
#[test]
fn a_reservation_counts_in_flight_and_is_settled_or_refunded() {
    let held = Gate::new();
    let release = Gate::new();
    let (h, r) = (held.clone(), release.clone());
    let mock = MockUpstream::start(move |req| {
        if req.target.contains("slow") {
            let mut bytes = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                OPENAI_JSON.len()
            )
            .into_bytes();
            bytes.extend_from_slice(OPENAI_JSON.as_bytes());
            Reply::actions(vec![
                Action::Signal(h.clone()),
                Action::Wait(r.clone()),
                Action::Write(bytes),
            ])
        } else {
            llm(req)
        }
    });
    let admin = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let reserve = "reserve = \"$.max_tokens\"";
    let toml = format!(
        "{}{}{}{}{}",
        base(admin),
        proxy("openai", &mock.url()),
        budget("tokens", "openai_tokens", 100, "1h", reserve),
        proxy("dead", &dead),
        budget("tokens", "openai_tokens", 100, "1h", reserve),
    );
    let gw = start(&toml);
    let port = gw.port();
    let slow = std::thread::spawn(move || {
        post(
            port,
            "/openai/v1/slow/chat/completions",
            r#"{"max_tokens":100}"#,
        )
        .status
    });
    assert!(
        held.wait(Duration::from_secs(10)),
        "the call reached the upstream"
    );
    assert_eq!(
        spent(admin, "openai", "tokens"),
        (100, 0),
        "reserved while in flight"
    );
    let r = post(port, "/openai/v1/chat/completions", r#"{"max_tokens":1}"#);
    assert_eq!(r.status, 429, "{}", r.body_str());
    release.open();
    assert_eq!(slow.join().expect("slow call"), 200);
    assert_eq!(
        spent(admin, "openai", "tokens"),
        (42, 58),
        "settled to what it cost"
    );

    let r = post(port, "/dead/v1/chat/completions", r#"{"max_tokens":70}"#);
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert_eq!(spent(admin, "dead", "tokens"), (0, 100), "refunded");
}

/// Two gateways sharing a Redis budget (`[meters] redis`): what one charges, the other sees
/// (within its sync tick: polled, bounded), and once the cluster's total reaches the limit both
/// refuse.
#[test]
fn two_gateways_share_a_redis_budget() {
    let redis = crate::meter_redis::Redis::start();
    let mock = MockUpstream::start(llm);
    let (admin_a, admin_b) = (free_port(), free_port());
    let toml = |admin: u16| {
        format!(
            "{}[meters]\nredis = \"{}\"\nkey_prefix = \"budget-test:\"\n\n{}{}",
            base(admin),
            redis.url(),
            proxy("openai", &mock.url()),
            budget("tokens", "openai_tokens", 50, "1h", "")
        )
    };
    let a = start(&toml(admin_a));
    let b = start(&toml(admin_b));
    let wait_spent = |admin: u16, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = spent(admin, "openai", "tokens").0;
            if got == want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let target = "/openai/v1/chat/completions";
    // b must know the key before a charges it (a key new to a process is admitted once)
    assert_eq!(post(b.port(), "/openai/bad/nothing", "{}").status, 404);
    assert_eq!(post(a.port(), target, "{}").status, 200);
    assert_eq!(wait_spent(admin_b, 42), 42, "b sees a's charge");
    assert_eq!(
        post(b.port(), target, "{}").status,
        200,
        "42 < 50: admitted"
    );
    assert_eq!(wait_spent(admin_a, 84), 84, "a sees b's charge");
    let r = post(a.port(), target, "{}");
    assert_eq!(r.status, 429, "{}", r.body_str());
    assert_eq!(post(b.port(), target, "{}").status, 429);
    // the 404 probe and the two admitted calls; the refused calls never reached it
    assert_eq!(mock.count(), 3);
}

/// `rule = "chat"`: the budget meters only the calls that rule decides; calls another rule
/// decides are neither refused nor charged by it.
#[test]
fn a_budget_on_a_rule_meters_only_that_rules_calls() {
    let mock = MockUpstream::start(llm);
    let admin = free_port();
    let toml = format!(
        "{}[[proxies]]\nname = \"llm\"\nupstream = \"{}\"\ndefault_effect = \"deny\"\n\n  [[proxies.rules]]\n  name = \"chat\"\n  effect = \"allow\"\n  methods = [\"POST\"]\n  path = \"/v1/chat/**\"\n\n  [[proxies.rules]]\n  name = \"claude\"\n  effect = \"allow\"\n  methods = [\"POST\"]\n  path = \"/v1/messages\"\n\n{}",
        base(admin),
        mock.url(),
        budget("chat-tokens", "openai_tokens", 40, "1h", "rule = \"chat\"")
    );
    let mut gw = start(&toml);
    assert_eq!(
        post(gw.port(), "/llm/v1/chat/completions", "{}").status,
        200
    );
    assert_eq!(spent(admin, "llm", "chat-tokens"), (42, 0));
    let r = post(gw.port(), "/llm/v1/chat/completions", "{}");
    assert_eq!(r.status, 429, "{}", r.body_str());
    // the other rule's calls: not refused, not charged
    assert_eq!(post(gw.port(), "/llm/v1/messages", "{}").status, 200);
    assert_eq!(spent(admin, "llm", "chat-tokens"), (42, 0));
    assert_eq!(mock.count(), 2);
    crate::audit::stop(&mut gw);
    let recs = calls(&gw.dir().join("audit"));
    let got: Vec<Option<u64>> = recs.iter().map(|r| metered(r, "chat-tokens")).collect();
    assert_eq!(got, [Some(42), None, None]);
}
