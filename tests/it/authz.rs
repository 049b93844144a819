//! Authorization end to end: deny by default, rules by method and path (the canonical path is
//! what is matched and what is forwarded), a path-bypass table proving nothing outside the
//! allowed set reaches the upstream, and body scanners.
use crate::support::*;

fn config(upstream: &str, rules: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = 2

[[proxies]]
name = "crm"
upstream = "{upstream}/api"
{rules}

# approve rules hold calls in the state store (after the rules: line numbers above stay put)
[state]
dir = "state"

[approvals]
"#
    )
}

const READ_ACCOUNTS: &str = r#"
  [[proxies.rules]]
  effect = "allow"
  methods = "read"
  path = "/v1/accounts/**"

  [[proxies.rules]]
  effect = "deny"
  methods = ["GET"]
  path = "/v1/accounts/*/secrets"

  [[proxies.rules]]
  effect = "approve"
  methods = ["DELETE"]
  path = "/v1/accounts/*"
  hold = "0s"
"#;

#[test]
fn read_only_rule_allows_reads_of_accounts_and_nothing_else() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&config(&mock.url(), READ_ACCOUNTS));
    let mut c = gw.conn();
    let table: &[(&str, &str, u16, &str)] = &[
        ("GET", "/crm/v1/accounts/42", 200, ""),
        ("HEAD", "/crm/v1/accounts/42", 200, ""),
        ("GET", "/crm/v1/accounts", 200, ""),
        ("GET", "/crm/v1/accounts/42/contacts/7?x=1", 200, ""),
        ("POST", "/crm/v1/accounts/42", 403, "no_rule_matched"),
        ("GET", "/crm/v1/contacts/1", 403, "no_rule_matched"),
        ("GET", "/crm/v1/accounts/42/secrets", 403, "denied_by_rule"),
        ("DELETE", "/crm/v1/accounts/42", 403, "approval_pending"),
        ("GET", "/crm/", 403, "no_rule_matched"),
    ];
    for (method, path, status, code) in table {
        let before = mock.count();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n");
        let r = if *method == "HEAD" {
            c.send(req.as_bytes());
            c.read_head_response()
        } else {
            c.roundtrip(req.as_bytes())
        };
        if *status == 200 {
            assert_eq!(r.status, 200, "{method} {path}: {}", show(&r.raw));
            assert_eq!(mock.count(), before + 1);
        } else {
            assert_gateway_error(&r, *status, code);
            assert_eq!(
                mock.count(),
                before,
                "{method} {path} must not reach the upstream"
            );
        }
    }
}

/// Spellings that try to reach what the rules do not allow. Whatever the gateway answers, the
/// upstream must never see a request outside `/api/v1/accounts/**` (or the denied secrets).
#[test]
fn path_bypass_attempts_never_reach_the_upstream_outside_the_allowed_set() {
    let mock = MockUpstream::start(echo_request_line);
    let up = mock.url();
    let gw = Gateway::start(&config(&up, READ_ACCOUNTS));
    let host = up.trim_start_matches("http://");
    let attempts = [
        "/crm/v1/accounts/../admin",
        "/crm/v1/accounts/%2e%2e/admin",
        "/crm/v1/accounts/%2E%2E/admin",
        "/crm/v1/accounts/.%2e/admin",
        "/crm/v1/accounts%2f..%2fadmin",
        "/crm/v1/accounts/..%2fadmin",
        "/crm/v1/accounts/42%2fsecrets",
        "/crm/v1/accounts/42/secrets/",
        "/crm/v1/accounts/42//secrets",
        "/crm/v1/accounts/42/./secrets",
        "/crm/v1/accounts/42/%73ecrets",
        "/crm/v1/accounts/42/SECRETS",
        "/crm/v1/accounts/42/secrets;x=1",
        "/crm/v1/accounts/42/secrets%3bx=1",
        "/crm//v1/admin",
        "/crm/v1/Accounts/1",
        "/crm/v1/accounts\\..\\admin",
        "/crm/v1/accounts/%c0%ae%c0%ae/admin",
        "/crm/v1/accounts/\u{ff0e}\u{ff0e}/admin",
        "/crm/v1/%61ccounts/1",
        "/CRM/v1/accounts/1",
        "/crm/v1/accounts/1#frag",
        "/crm/v1/accounts/1%00",
        "/crm/v1/admin?redirect=/v1/accounts/1",
    ];
    let mut c = gw.conn();
    for a in attempts {
        let r = c.try_roundtrip(format!("GET {a} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        if r.as_ref().map(|r| r.says_close()).unwrap_or(true) {
            c = gw.conn();
        }
    }
    // absolute-form with other hosts and the upstream's own origin
    for t in [
        format!("http://{host}/api/v1/admin"),
        format!("http://{host}/api/v1/accounts/../admin"),
        "http://evil.example/api/v1/accounts/1".to_string(),
        format!("http://{host}/apix/v1/accounts/1"),
    ] {
        let _ = c.try_roundtrip(format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        c = gw.conn();
    }
    for r in mock.requests() {
        let path = r.target.split('?').next().unwrap_or("");
        let ok = (path == "/api/v1/accounts" || path.starts_with("/api/v1/accounts/"))
            && !path.ends_with("/secrets")
            && !path.contains("..")
            && !path.contains("//");
        assert!(ok, "the upstream received {:?}", r.target);
        assert!(r.request_line().starts_with("GET "), "{}", r.request_line());
    }
}

#[test]
fn agent_and_role_rules() {
    let mock = MockUpstream::start(echo_request_line);
    let key_a = "pcs_AgentAlpha0123456789abcdefghijklmnopqrstu";
    let key_b = "pcs_AgentBravo0123456789abcdefghijklmnopqrstu";
    let rules = r#"
  [[proxies.rules]]
  effect = "allow"
  methods = ["GET", "POST"]
  path = "/tickets/**"
  roles = ["support"]

  [[proxies.rules]]
  effect = "allow"
  methods = ["GET"]
  path = "/reports/*"
  agents = ["bravo"]
"#;
    let toml = format!(
        "{}\n[[agents]]\nid = \"alpha\"\nkey_sha256 = \"{}\"\nroles = [\"support\"]\n\n[[agents]]\nid = \"bravo\"\nkey_sha256 = \"{}\"\n",
        config(&mock.url(), rules),
        portcullis::internals::identity::key_sha256_hex(key_a),
        portcullis::internals::identity::key_sha256_hex(key_b)
    );
    let gw = Gateway::start(&toml);
    let mut c = gw.conn();
    let call = |c: &mut Conn, m: &str, p: &str, k: &str| {
        c.roundtrip(
            format!("{m} {p} HTTP/1.1\r\nHost: gw\r\nx-api-key: {k}\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
    };
    assert_eq!(call(&mut c, "POST", "/crm/tickets/1", key_a).status, 200);
    assert_gateway_error(
        &call(&mut c, "POST", "/crm/tickets/1", key_b),
        403,
        "no_rule_matched",
    );
    assert_eq!(call(&mut c, "GET", "/crm/reports/q1", key_b).status, 200);
    assert_gateway_error(
        &call(&mut c, "GET", "/crm/reports/q1", key_a),
        403,
        "no_rule_matched",
    );
    assert_gateway_error(
        &call(&mut c, "GET", "/crm/reports/q1/x", key_b),
        403,
        "no_rule_matched",
    );
    assert_eq!(mock.count(), 2);
}

const SCANNERS: &str = r#"
default_effect = "allow"

  [[proxies.scanners]]
  name = "no-secrets"
  detectors = ["private_key", "aws_access_key", "credit_card", "us_ssn"]
  literals = ["CONFIDENTIAL"]

  [[proxies.scanners]]
  name = "watch-iban"
  detectors = ["iban"]
  mode = "report"
"#;

fn post(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

#[test]
fn scanners_block_before_anything_is_sent_and_never_echo_the_content() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&config(&mock.url(), SCANNERS));
    let blocked: &[&[u8]] = &[
        br#"{"note":"this is confidential"}"#,
        br#"{"card":"4111 1111 1111 1111"}"#,
        br#"{"ssn":"123-45-6789"}"#,
        br#"{"k":"AKIAIOSFODNN7EXAMPLE"}"#,
        b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
    ];
    for body in blocked {
        let mut c = gw.conn();
        let r = c.roundtrip(&post("/crm/v1/notes", body, ""));
        assert_gateway_error(&r, 403, "payload_blocked");
        // the body minus its request id (random hex could contain "4111")
        let id = r.header("x-request-id").unwrap_or("").to_string();
        let text = r.body_str().replace(&id, "");
        assert!(text.contains("no-secrets"), "names the scanner: {text}");
        for word in ["confidential", "4111", "123-45", "AKIA", "BEGIN"] {
            assert!(
                !text.to_lowercase().contains(&word.to_lowercase()),
                "echoed content: {text}"
            );
        }
    }
    assert_eq!(mock.count(), 0, "a blocked call opens no upstream request");
    // gzip bodies are decoded and scanned, not skipped
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"card":"4111-1111-1111-1111"}"#).unwrap();
    let gz = gz.finish().unwrap();
    let r = gw
        .conn()
        .roundtrip(&post("/crm/v1/notes", &gz, "Content-Encoding: gzip\r\n"));
    assert_gateway_error(&r, 403, "payload_blocked");
    let r = gw
        .conn()
        .roundtrip(&post("/crm/v1/notes", b"xx", "Content-Encoding: br\r\n"));
    assert_gateway_error(&r, 400, "bad_request");
    assert_eq!(mock.count(), 0);
    // clean bodies and report-mode hits pass
    let mut c = gw.conn();
    let r = c.roundtrip(&post("/crm/v1/notes", br#"{"note":"hello","n":4111}"#, ""));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let r = c.roundtrip(&post(
        "/crm/v1/notes",
        br#"{"iban":"GB82WEST12345698765432"}"#,
        "",
    ));
    assert_eq!(r.status, 200, "report mode never blocks: {}", show(&r.raw));
    assert_eq!(mock.count(), 2);
}

#[test]
fn bad_rules_are_reported_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    std::fs::write(
        &path,
        config(
            "http://127.0.0.1:9",
            "\n  [[proxies.rules]]\n  effect = \"allow\"\n  methods = [\"GET\"]\n  path = \"/v1/../x\"\n\n  [[proxies.scanners]]\n  name = \"s\"\n  detectors = [\"nope\"]\n",
        )
        .replace("{PORT}", "1"),
    )
    .unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        std::time::Duration::from_secs(10),
    );
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("a.toml:9: proxies[0].rules[0].path"),
        "{text}"
    );
    assert!(
        text.contains("a.toml:14: proxies[0].scanners[0].detectors"),
        "{text}"
    );
}

#[test]
fn trace_is_refused_unless_a_rule_names_it() {
    // TRACE echoes the request back, injected credential included
    let mock = MockUpstream::start(echo_request_line);
    let all = "  [[proxies.rules]]\n  effect = \"allow\"\n  methods = \"*\"\n  path = \"/**\"\n";
    let gw = Gateway::start(&config(&mock.url(), all));
    let r = gw
        .conn()
        .roundtrip(b"TRACE /crm/v1/x HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_gateway_error(&r, 403, "no_rule_matched");
    let r = gw.conn().roundtrip(&get("/crm/v1/x"));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(mock.count(), 1, "the TRACE never reached the upstream");
    drop(gw);
    let named =
        "  [[proxies.rules]]\n  effect = \"allow\"\n  methods = [\"TRACE\"]\n  path = \"/**\"\n";
    let gw = Gateway::start(&config(&mock.url(), named));
    let r = gw
        .conn()
        .roundtrip(b"TRACE /crm/v1/x HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(mock.count(), 2);
}
