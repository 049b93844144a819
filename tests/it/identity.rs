//! Identity end to end: agent keys and JWTs in, target credentials (from the vault, env or
//! files) out; every credential the agent sent is stripped; secrets never come back.
use crate::support::*;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis::internals::secrets::vault_file::{Vault, VaultKey};

const AGENT_KEY: &str = "pcs_TestAgentKey0123456789abcdefghijABCDEFGHIJ";
const EXPIRED_KEY: &str = "pcs_ExpiredAgentKey0123456789abcdefghijABCDEFG";
const TARGET_SECRET: &str = "tgt-SECRET-7f3a9c1e5b";
const VAULT_SECRET: &str = "vlt-SECRET-44d0e2aa91";

fn sha(k: &str) -> String {
    portcullis::internals::identity::key_sha256_hex(k)
}

/// A config with two agents, a vault holding `crm-token`, and proxies using each scheme.
fn setup(extra: &str, jwks: Option<&str>) -> (MockUpstream, Gateway) {
    setup_with(extra, jwks, MockUpstream::start(echo_request_line))
}

fn setup_with(extra: &str, jwks: Option<&str>, mock: MockUpstream) -> (MockUpstream, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let key_b64 = VaultKey::generate_base64().unwrap();
    let key = VaultKey::from_base64(key_b64.as_bytes()).unwrap();
    let vpath = dir.path().join("vault.pcv");
    let mut v = Vault::create(&vpath, &key).unwrap();
    v.set("crm-token", VAULT_SECRET.as_bytes()).unwrap();
    v.save().unwrap();
    let vault_bytes = std::fs::read(&vpath).unwrap();
    let up = mock.url();
    let mut toml = format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = 2

[vault]
file = "vault.pcv"
key = "file:vault.key"

[[agents]]
id = "support-bot"
key_sha256 = "{}"
roles = ["support"]
expires_at = 2099-01-01T00:00:00Z

[[agents]]
id = "old-bot"
key_sha256 = "{}"
expires_at = "2020-01-01T00:00:00Z"

[[proxies]]
name = "bearer"
upstream = "{up}"
default_effect = "allow"
auth = {{ scheme = "bearer", secret = "vault:crm-token" }}

[[proxies]]
name = "header"
upstream = "{up}"
default_effect = "allow"
auth = {{ scheme = "header", header = "X-Api-Key", secret = "file:target.secret" }}

[[proxies]]
name = "basic"
upstream = "{up}"
default_effect = "allow"
auth = {{ scheme = "basic", username = "svc", secret = "file:target.secret" }}

[[proxies]]
name = "query"
upstream = "{up}"
default_effect = "allow"
auth = {{ scheme = "query", param = "api_key", secret = "vault:crm-token" }}

[[proxies]]
name = "hmac"
upstream = "{up}"
default_effect = "allow"
auth = {{ scheme = "hmac", secret = "file:target.secret" }}

[[proxies]]
name = "none"
upstream = "{up}"
default_effect = "allow"
forward_cookies = true
"#,
        sha(AGENT_KEY),
        sha(EXPIRED_KEY),
    );
    if let Some(j) = jwks {
        toml.push_str(&format!(
            "\n[[jwt]]\nissuer = \"https://idp.test/\"\naudience = \"portcullis\"\njwks = \"file:jwks.json\"\n{j}\n"
        ));
    }
    toml.push_str(extra);
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("vault.pcv", vault_bytes),
        ("vault.key", format!("{}\n", key_b64.as_str()).into_bytes()),
        ("target.secret", format!("{TARGET_SECRET}\n").into_bytes()),
    ];
    if jwks.is_some() {
        files.push(("jwks.json", JWKS.with(|j| j.clone()).into_bytes()));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let gw = Gateway::start_with_files(&toml, &refs);
    (mock, gw)
}

fn req(path: &str, auth: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n").into_bytes()
}

#[test]
fn no_or_wrong_credential_is_401_and_nothing_goes_upstream() {
    let (mock, gw) = setup("", None);
    let mut c = gw.conn();
    for auth in [
        "",
        "Authorization: Bearer pcs_wrongwrongwrongwrongwrongwrongwrongwrong\r\n",
        "Authorization: Basic Zm9vOmJhcg==\r\n",
        "x-api-key: nope\r\n",
        // two credentials in the winning header: ambiguous
        &format!("Authorization: Bearer {AGENT_KEY}\r\nAuthorization: Bearer {AGENT_KEY}\r\n"),
    ] {
        let r = c.roundtrip(&req("/bearer/a", auth));
        assert_gateway_error(&r, 401, "unauthenticated");
    }
    let r = c.roundtrip(&req("/bearer/a", &format!("x-api-key: {EXPIRED_KEY}\r\n")));
    assert_gateway_error(&r, 401, "credential_expired");
    assert_eq!(mock.count(), 0);
}

#[test]
fn each_header_that_may_carry_the_key_works_and_is_stripped() {
    let (mock, gw) = setup("", None);
    let mut c = gw.conn();
    for auth in [
        format!("Proxy-Authorization: Bearer {AGENT_KEY}\r\n"),
        format!("Authorization: Bearer {AGENT_KEY}\r\n"),
        format!("X-Api-Key: {AGENT_KEY}\r\n"),
        format!("authorization: bearer {AGENT_KEY}\r\nCookie: session=abc\r\nX-Keep: 1\r\n"),
    ] {
        let r = c.roundtrip(&req("/bearer/v1/x", &auth));
        assert_eq!(r.status, 200, "{auth}: {}", show(&r.raw));
        let got = mock.requests().pop().unwrap();
        assert_eq!(
            got.headers_named("authorization"),
            vec![format!("Bearer {VAULT_SECRET}")]
        );
        assert!(got.header("x-api-key").is_none(), "{}", got.head_str());
        assert!(got.header("proxy-authorization").is_none());
        assert!(
            got.header("cookie").is_none(),
            "cookies are stripped by default"
        );
        assert!(
            !got.head_str().contains(AGENT_KEY),
            "agent key leaked upstream"
        );
    }
    assert_eq!(mock.requests().pop().unwrap().header("x-keep"), Some("1"));
}

#[test]
fn target_credential_schemes_reach_the_upstream_exactly() {
    let (mock, gw) = setup("", None);
    let mut c = gw.conn();
    let a = format!("Authorization: Bearer {AGENT_KEY}\r\n");

    // header scheme: the agent's own X-Api-Key (its proxy key here) is replaced
    let r = c.roundtrip(&req("/header/h", &format!("X-Api-Key: {AGENT_KEY}\r\n")));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let got = mock.requests().pop().unwrap();
    assert_eq!(
        got.headers_named("x-api-key"),
        vec![TARGET_SECRET.to_string()]
    );
    assert!(got.header("authorization").is_none());

    let r = c.roundtrip(&req("/basic/b", &a));
    assert_eq!(r.status, 200);
    let got = mock.requests().pop().unwrap();
    let want = base64::engine::general_purpose::STANDARD.encode(format!("svc:{TARGET_SECRET}"));
    assert_eq!(
        got.header("authorization"),
        Some(format!("Basic {want}").as_str())
    );

    // query scheme: the agent's api_key (any spelling) is dropped, ours appended
    let r = c.roundtrip(&req("/query/q?a=1&api%5Fkey=evil&b=2", &a));
    assert_eq!(r.status, 200);
    let got = mock.requests().pop().unwrap();
    assert_eq!(got.target, format!("/q?a=1&b=2&api_key={VAULT_SECRET}"));

    // hmac: timestamp + signature over method, path, timestamp and body hash
    let r = c.roundtrip(&req("/hmac/v1/sign", &a));
    assert_eq!(r.status, 200);
    let got = mock.requests().pop().unwrap();
    let ts = got
        .header("x-timestamp")
        .expect("timestamp header")
        .to_string();
    let sig = got
        .header("x-signature")
        .expect("signature header")
        .to_string();
    let body_sha = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"").as_ref());
    let sts = format!("GET\n/v1/sign\n{ts}\n{body_sha}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, TARGET_SECRET.as_bytes());
    let want = hex(aws_lc_rs::hmac::sign(&key, sts.as_bytes()).as_ref());
    assert_eq!(sig, want, "string to sign {sts:?}");

    // no auth configured: the agent's credentials are still stripped, cookies forwarded on request
    let r = c.roundtrip(&req("/none/n", &format!("{a}Cookie: s=1\r\n")));
    assert_eq!(r.status, 200);
    let got = mock.requests().pop().unwrap();
    assert!(got.header("authorization").is_none());
    assert_eq!(got.header("cookie"), Some("s=1"));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

thread_local! {
    static SIGNER: Ed25519KeyPair = Ed25519KeyPair::generate().unwrap();
    static JWKS: String = SIGNER.with(|k| {
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
            "x": B64.encode(k.public_key().as_ref())}]}).to_string()
    });
}

fn jwt(claims: serde_json::Value) -> String {
    jwt_with_header(
        serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}),
        claims,
    )
}

fn jwt_with_header(header: serde_json::Value, claims: serde_json::Value) -> String {
    let msg = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = SIGNER.with(|k| k.sign(msg.as_bytes()));
    format!("{msg}.{}", B64.encode(sig.as_ref()))
}

#[test]
fn jwt_agents_from_the_idp_are_verified() {
    let (mock, gw) = setup("", Some(""));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let good = jwt(
        serde_json::json!({"iss": "https://idp.test/", "aud": "portcullis",
        "sub": "mcp-server-7", "roles": ["support"], "exp": now + 600}),
    );
    let mut c = gw.conn();
    for _ in 0..3 {
        // the second and third hit the verified-token cache
        let r = c.roundtrip(&req(
            "/bearer/j",
            &format!("Authorization: Bearer {good}\r\n"),
        ));
        assert_eq!(r.status, 200, "{}", show(&r.raw));
        let got = mock.requests().pop().unwrap();
        assert_eq!(
            got.header("authorization"),
            Some(format!("Bearer {VAULT_SECRET}").as_str())
        );
    }
    let expired = jwt(
        serde_json::json!({"iss": "https://idp.test/", "aud": "portcullis",
        "sub": "x", "exp": now - 3600}),
    );
    let r = c.roundtrip(&req(
        "/bearer/j",
        &format!("Authorization: Bearer {expired}\r\n"),
    ));
    assert_gateway_error(&r, 401, "credential_expired");
    let wrong_aud = jwt(
        serde_json::json!({"iss": "https://idp.test/", "aud": "other",
        "sub": "x", "exp": now + 600}),
    );
    let r = c.roundtrip(&req(
        "/bearer/j",
        &format!("Authorization: Bearer {wrong_aud}\r\n"),
    ));
    assert_gateway_error(&r, 401, "unauthenticated");
    let unknown_iss = jwt(
        serde_json::json!({"iss": "https://evil.test/", "aud": "portcullis",
        "sub": "x", "exp": now + 600}),
    );
    let r = c.roundtrip(&req(
        "/bearer/j",
        &format!("Authorization: Bearer {unknown_iss}\r\n"),
    ));
    assert_gateway_error(&r, 401, "unauthenticated");
    let mut tampered = good.clone().into_bytes();
    let n = tampered.len();
    tampered[n - 2] = if tampered[n - 2] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let r = c.roundtrip(&req(
        "/bearer/j",
        &format!("Authorization: Bearer {tampered}\r\n"),
    ));
    assert_gateway_error(&r, 401, "unauthenticated");
    // RFC 7515 §4.1.11: a `crit` extension the gateway does not understand (issue 12)
    let crit = jwt_with_header(
        serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1", "crit": ["x-ext"],
            "x-ext": true}),
        serde_json::json!({"iss": "https://idp.test/", "aud": "portcullis",
        "sub": "mcp-server-7", "exp": now + 600}),
    );
    let r = c.roundtrip(&req(
        "/bearer/j",
        &format!("Authorization: Bearer {crit}\r\n"),
    ));
    assert_gateway_error(&r, 401, "unauthenticated");
    assert_eq!(mock.count(), 3);
}

#[test]
fn bad_identity_config_is_reported_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[agents]]\nid = \"a\"\nkey_sha256 = \"xyz\"\n\n[[proxies]]\nname = \"p\"\nupstream = \"http://127.0.0.1:9\"\nauth = { scheme = \"bearer\", secret = \"literal-secret-value\" }\n",
    )
    .unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        std::time::Duration::from_secs(10),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(text.contains("p.toml:4: agents[0].key_sha256"), "{text}");
    assert!(text.contains("p.toml:11: proxies[0].auth.secret"), "{text}");
    assert!(
        !text.contains("literal-secret-value"),
        "a literal secret must not be echoed: {text}"
    );
}

/// Secrets never appear in a response, an error body or a log line, whatever happens.
#[test]
fn secrets_never_reach_responses_or_logs() {
    // an upstream that does not echo what it received (it legitimately gets the target secret)
    let quiet = MockUpstream::start(|_: &ReceivedRequest| Reply::ok("fine"));
    let (_mock, mut gw) = setup_with("", Some(""), quiet);
    let mut c = gw.conn();
    let mut seen = Vec::new();
    for (path, auth) in [
        (
            "/bearer/a",
            format!("Authorization: Bearer {AGENT_KEY}\r\n"),
        ),
        ("/query/a?api_key=1", format!("x-api-key: {AGENT_KEY}\r\n")),
        ("/basic/a", format!("x-api-key: {EXPIRED_KEY}\r\n")),
        ("/hmac/a", "Authorization: Bearer not.a.jwt\r\n".to_string()),
        ("/nope/a", format!("x-api-key: {AGENT_KEY}\r\n")),
    ] {
        let r = c.roundtrip(&req(path, &auth));
        seen.extend_from_slice(&r.raw);
        if r.says_close() {
            c = gw.conn();
        }
    }
    // a reload and a stop put more lines in the log
    gw.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    gw.signal("TERM");
    let _ = gw.wait_exit(std::time::Duration::from_secs(10));
    let log = gw.stderr_text() + &gw.stdout_text();
    let all = String::from_utf8_lossy(&seen).into_owned() + &log;
    for s in [TARGET_SECRET, VAULT_SECRET, AGENT_KEY, EXPIRED_KEY] {
        assert!(!all.contains(s), "secret {s} leaked:\n{all}");
    }
}
