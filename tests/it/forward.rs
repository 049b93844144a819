//! Forward-proxy mode (issue 17): the credentials of a proxy URL
//! (`HTTP_PROXY=http://bot:pcs_KEY@gateway`, sent as `Proxy-Authorization: Basic`) and the
//! `407` + `Proxy-Authenticate` answer clients expect, driven with curl and Python `requests`
//! through the real binary; what the upstream received and the audit record are asserted.
use crate::support::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const BOT_KEY: &str = "pcs_ForwardBotKey0123456789abcdefghijABCDEFGH";
pub const OTHER_KEY: &str = "pcs_ForwardOtherKey0123456789abcdefghijABCDE";
pub const TARGET: &str = "tgt-FORWARD-51c0ffee";

pub fn sha(k: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, k.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Two agents (`bot`, `other`), `[audit]` in `audit/`, and a proxy `api` for `upstream` that
/// injects a bearer target credential, allows GET /v1/** and denies /v1/admin/**.
pub fn forward_config(upstream: &str, server_extra: &str, proxy_extra: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = 2
{server_extra}

[audit]
dir = "audit"
fsync = "always"

[[agents]]
id = "bot"
key_sha256 = "{bot}"

[[agents]]
id = "other"
key_sha256 = "{other}"

[[proxies]]
name = "api"
upstream = "{upstream}"
default_effect = "deny"
auth = {{ scheme = "bearer", secret = "file:target.secret" }}
{proxy_extra}

  [[proxies.rules]]
  effect = "allow"
  methods = ["GET", "POST"]
  path = "/v1/**"

  [[proxies.rules]]
  effect = "deny"
  methods = ["*"]
  path = "/v1/admin/**"
"#,
        bot = sha(BOT_KEY),
        other = sha(OTHER_KEY),
    )
}

pub fn start_forward(cfg: &str, files: &[(&str, &[u8])]) -> Gateway {
    let mut all: Vec<(&str, &[u8])> = vec![("target.secret", TARGET.as_bytes())];
    all.extend_from_slice(files);
    Gateway::start_with_files(cfg, &all)
}

/// Every call record in the gateway's audit directory (raw JSON), oldest first.
pub fn audit_calls(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("audit"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && v.get("kind").is_none()
            {
                out.push(v);
            }
        }
    }
    out
}

/// The audit records once `n` calls are recorded (fsync = "always": on disk before the answer).
pub fn wait_audit(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        Some(audit_calls(dir)).filter(|v| v.len() >= n)
    })
    .unwrap_or_else(|| audit_calls(dir))
}

/// Runs curl with `args` (bounded by --max-time); returns (status code, response headers+body).
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env("NO_PROXY", "")
        .output()
        .expect("curl is installed (.ci/run)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Runs a Python snippet (bounded); returns its stdout. Fails the test on a non-zero exit.
pub fn python(script: &str, envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "python3", "-c", script]);
    for k in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn received_auth(mock: &MockUpstream) -> Vec<(String, Option<String>, Option<String>)> {
    mock.requests()
        .iter()
        .map(|r| {
            (
                r.request_line(),
                r.header("authorization").map(str::to_string),
                r.header("proxy-authorization").map(str::to_string),
            )
        })
        .collect()
}

/// curl with `-x http://bot:KEY@gateway`: absolute-form + `Proxy-Authorization: Basic`. The
/// user part is the agent id (or empty); the upstream receives the target credential and no
/// proxy credential; the audit record names the agent.
#[test]
fn curl_basic_proxy_credentials_authenticate_the_agent() {
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let gw = start_forward(&forward_config(&mock.url(), "", ""), &[]);
    let url = format!("{}/v1/things?x=1", mock.url());
    let via = |user: &str, key: &str| format!("http://{user}:{key}@127.0.0.1:{}", gw.port());

    let (code, text) = curl(&["-x", &via("bot", BOT_KEY), &url]);
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("fine"), "{text}");
    // empty user: the key alone identifies the agent
    let (code, text) = curl(&["-x", &via("", OTHER_KEY), &url]);
    assert_eq!(code, 200, "{text}");

    let got = received_auth(&mock);
    assert_eq!(got.len(), 2, "{got:?}");
    for (line, auth, proxy_auth) in &got {
        assert_eq!(line, "GET /v1/things?x=1 HTTP/1.1");
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TARGET}").as_str()));
        assert_eq!(
            proxy_auth, &None,
            "the proxy credential never goes upstream"
        );
    }
    let recs = wait_audit(gw.dir(), 2);
    let agents: Vec<_> = recs.iter().map(|r| r["agent"].as_str()).collect();
    assert_eq!(agents, vec![Some("bot"), Some("other")], "{recs:?}");
    assert!(
        recs.iter()
            .all(|r| r["status"] == 200 && r["proxy"] == "api")
    );

    // policy still applies: a denied path is 403, nothing sent upstream
    let (code, text) = curl(&[
        "-x",
        &via("bot", BOT_KEY),
        &format!("{}/v1/admin/x", mock.url()),
    ]);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("denied_by_rule"), "{text}");
    assert_eq!(mock.count(), 2);
}

/// Failures in forward-proxy form are 407 with `Proxy-Authenticate: Basic realm="portcullis"`
/// (no credential, a wrong key, a user part naming another agent, garbage Basic); the same
/// failures in path-prefix form stay 401 without the header. Nothing reaches the upstream.
#[test]
fn proxy_mode_authentication_failures_are_407() {
    use base64::Engine;
    let mock = MockUpstream::start(|_| Reply::ok("fine"));
    let gw = start_forward(&forward_config(&mock.url(), "", ""), &[]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let target = format!("{}/v1/things", mock.url());
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no credential", None, "unauthenticated"),
        (
            "wrong key",
            Some(format!(
                "Basic {}",
                b64("bot:pcs_NotAKey0123456789abcdefghijABCDEFGHIJKL")
            )),
            "unauthenticated",
        ),
        (
            "another agent's key under bot's name",
            Some(format!("Basic {}", b64(&format!("bot:{OTHER_KEY}")))),
            "unauthenticated",
        ),
        (
            "no colon",
            Some(format!("Basic {}", b64(BOT_KEY))),
            "unauthenticated",
        ),
        ("not base64", Some("Basic !!!!".into()), "unauthenticated"),
        (
            "huge basic",
            Some(format!("Basic {}", "QUFB".repeat(3000))),
            "unauthenticated",
        ),
        (
            "unknown scheme",
            Some(format!("Digest {BOT_KEY}")),
            "unauthenticated",
        ),
        (
            "the key in Authorization: Basic is not a proxy credential",
            None,
            "unauthenticated",
        ),
    ];
    for (i, (name, cred, code)) in cases.iter().enumerate() {
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(c) = cred {
            req.push_str(&format!("Proxy-Authorization: {c}\r\n"));
        }
        if i == cases.len() - 1 {
            req.push_str(&format!(
                "Authorization: Basic {}\r\n",
                b64(&format!("bot:{BOT_KEY}"))
            ));
        }
        req.push_str("\r\n");
        let r = gw.conn().roundtrip(req.as_bytes());
        assert_eq!(r.status, 407, "{name}: {}", r.head_str());
        assert_eq!(r.reason, "Proxy Authentication Required", "{name}");
        assert_eq!(
            r.header("proxy-authenticate"),
            Some("Basic realm=\"portcullis\""),
            "{name}"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["code"], *code, "{name}");
    }
    // the same refusal in path-prefix form is a plain 401
    let r = gw
        .conn()
        .roundtrip(b"GET /api/v1/things HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(r.status, 401, "{}", r.head_str());
    assert_eq!(r.header("proxy-authenticate"), None);
    // Bearer in Proxy-Authorization works in proxy form too, and Basic in path-prefix form
    let r = gw.conn().roundtrip(
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {BOT_KEY}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.head_str());
    let r = gw.conn().roundtrip(
        format!(
            "GET /api/v1/things HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {}\r\n\r\n",
            b64(&format!(":{BOT_KEY}"))
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(mock.count(), 2);
    let recs = wait_audit(gw.dir(), cases.len() + 3);
    let n407 = recs.iter().filter(|r| r["status"] == 407).count();
    assert_eq!(n407, cases.len(), "every 407 is audited: {recs:?}");
}

/// curl answers a 407 by retrying with the credentials of its proxy URL; Python `requests`
/// (urllib3) puts them in `Proxy-Authorization: Basic` from `HTTP_PROXY`. Both get through,
/// and a client without credentials sees the 407.
#[test]
fn python_requests_through_http_proxy() {
    let mock = MockUpstream::start(|_| Reply::ok("py-fine"));
    let gw = start_forward(&forward_config(&mock.url(), "", ""), &[]);
    let proxy = format!("http://bot:{BOT_KEY}@127.0.0.1:{}", gw.port());
    let script = format!(
        "import requests\n\
         r = requests.get('{}/v1/py')\n\
         print(r.status_code, r.text)\n\
         r = requests.get('{}/v1/py', proxies={{'http': 'http://127.0.0.1:{}'}})\n\
         print(r.status_code, r.headers.get('proxy-authenticate'))\n",
        mock.url(),
        mock.url(),
        gw.port()
    );
    let out = python(&script, &[("HTTP_PROXY", &proxy)]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec!["200 py-fine", "407 Basic realm=\"portcullis\""],
        "{out}"
    );
    let got = received_auth(&mock);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].1.as_deref(),
        Some(format!("Bearer {TARGET}").as_str())
    );
    let recs = wait_audit(gw.dir(), 2);
    assert_eq!(recs[0]["agent"], "bot");
    assert_eq!(recs[1]["status"], 407);
}

/// The `openai` SDK (httpx underneath) with `HTTP_PROXY=http://bot:KEY@gateway`: its own
/// `api_key` is a dummy that never leaves the gateway, the upstream receives the target
/// credential, the audit names the agent; httpx alone (trust_env) too, and a denied path is
/// 403 to it.
#[test]
fn openai_sdk_and_httpx_through_http_proxy() {
    let completion = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi from upstream"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let mock = MockUpstream::start(move |_| {
        Reply::with(
            200,
            "OK",
            &[("Content-Type", "application/json")],
            completion.as_bytes(),
        )
    });
    let gw = start_forward(&forward_config(&mock.url(), "", ""), &[]);
    let proxy = format!("http://bot:{BOT_KEY}@127.0.0.1:{}", gw.port());
    let script = format!(
        "import openai, httpx\n\
         c = openai.OpenAI(api_key='sk-agent-dummy-0000', base_url='{u}/v1', max_retries=0)\n\
         r = c.chat.completions.create(model='m', messages=[{{'role': 'user', 'content': 'hello'}}])\n\
         print(r.choices[0].message.content)\n\
         print(httpx.get('{u}/v1/models').status_code)\n\
         print(httpx.get('{u}/v1/admin/keys').status_code)\n",
        u = mock.url()
    );
    let out = python(&script, &[("HTTP_PROXY", &proxy)]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["hi from upstream", "200", "403"],
        "{out}"
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].request_line(), "POST /v1/chat/completions HTTP/1.1");
    assert!(String::from_utf8_lossy(&reqs[0].body).contains("hello"));
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TARGET}").as_str())
        );
        assert_eq!(r.header("proxy-authorization"), None);
        assert!(!r.head_str().contains("sk-agent-dummy"), "{}", r.head_str());
    }
    let recs = wait_audit(gw.dir(), 3);
    let got: Vec<_> = recs
        .iter()
        .map(|r| (r["agent"].as_str(), r["status"].as_u64()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("bot"), Some(200)),
            (Some("bot"), Some(200)),
            (Some("bot"), Some(403))
        ]
    );
}
