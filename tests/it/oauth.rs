//! OAuth2 client credentials (token endpoint on 127.0.0.1, plain http as Url allows for
//! loopback, and https with a test CA) and JWKS fetched over http(s) with key rollover.
use crate::support::*;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// In `KNOWN_SECRETS`: neither may appear in a gateway log.
const CLIENT_SECRET: &str = "oauth-client-SECRET-5e1f";
const TOKEN_PREFIX: &str = "oauth-at-7c2d";

/// What the token endpoint answers to the n-th (1-based) valid request.
type Issue = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// A token endpoint: checks the client credentials (client_secret_basic) and the form, then
/// answers with `issue(n)`. Every request it receives is counted (`count()`).
fn token_endpoint(issue: Issue) -> MockUpstream {
    token_endpoint_on(None, issue)
}

fn token_endpoint_on(pki: Option<&TestPki>, issue: Issue) -> MockUpstream {
    let n = Arc::new(AtomicUsize::new(0));
    let handler = move |req: &ReceivedRequest| {
        let want = format!(
            "Basic {}",
            STANDARD.encode(format!("client-1:{CLIENT_SECRET}"))
        );
        let ok = req.method == "POST"
            && req.target == "/oauth/token"
            && req.header("authorization") == Some(want.as_str())
            && req.header("content-type") == Some("application/x-www-form-urlencoded")
            && req.body == b"grant_type=client_credentials&scope=read%20write";
        if !ok {
            return Reply::with(
                401,
                "Unauthorized",
                &[("Content-Type", "application/json")],
                br#"{"error":"invalid_client"}"#,
            );
        }
        issue(n.fetch_add(1, Ordering::SeqCst) + 1)
    };
    match pki {
        None => MockUpstream::start(handler),
        Some(p) => MockUpstream::start_tls(&p.leaf_cert_pem, &p.leaf_key_pem, handler),
    }
}

fn token_reply(n: usize, expires_in: u64) -> Reply {
    Reply::with(
        200,
        "OK",
        &[("Content-Type", "application/json"), ("Cache-Control", "no-store")],
        format!(
            r#"{{"access_token":"{TOKEN_PREFIX}-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
        )
        .as_bytes(),
    )
}

fn bearer(n: usize) -> String {
    format!("Bearer {TOKEN_PREFIX}-{n}")
}

/// Two workers, one oauth2 proxy `api` → `upstream`, the token endpoint at `token_url`.
fn oauth_config(upstream: &str, token_url: &str, extra_proxy_lines: &str, limits: &str) -> String {
    let p = format!(
        "{}auth = {{ scheme = \"oauth2\", token_url = \"{token_url}\", client_id = \"client-1\", secret = \"file:client.secret\", scope = \"read write\" }}\n{extra_proxy_lines}",
        proxy("api", upstream)
    );
    config_with(2, limits, &[p])
}

fn start(toml: &str, extra: &[(&str, &[u8])]) -> Gateway {
    let mut files: Vec<(&str, &[u8])> = vec![("client.secret", CLIENT_SECRET.as_bytes())];
    files.extend_from_slice(extra);
    Gateway::start_with_files(toml, &files)
}

fn call(gw: &Gateway, path: &str) -> Response {
    // the agent's own Authorization must never reach the upstream
    gw.conn().roundtrip(
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer agent-own\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn the_upstream_gets_the_access_token_and_a_reload_keeps_it() {
    let idp = token_endpoint(Arc::new(|n| token_reply(n, 3600)));
    let up = MockUpstream::start(echo_request_line);
    let token_url = format!("{}/oauth/token", idp.url());
    let gw = start(&oauth_config(&up.url(), &token_url, "", ""), &[]);
    for _ in 0..3 {
        let r = call(&gw, "/api/v1/x");
        assert_eq!(r.status, 200, "{}", show(&r.raw));
        let got = up.requests().pop().unwrap();
        assert_eq!(got.headers_named("authorization"), vec![bearer(1).as_str()]);
    }
    assert_eq!(idp.count(), 1, "one token for every call");

    // a reload that keeps (proxy, token_url, client_id, scope) keeps the token
    let up2 = MockUpstream::start(echo_request_line);
    let mut toml = oauth_config(&up.url(), &token_url, "", "");
    toml.push_str(&proxy("other", &up2.url()));
    gw.write_config(&toml);
    gw.signal("HUP");
    gw.wait_reloaded("/other/a");
    let r = call(&gw, "/api/after-reload");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(
        up.requests().pop().unwrap().header("authorization"),
        Some(bearer(1).as_str())
    );
    assert_eq!(idp.count(), 1, "the reload kept the token");
    assert!(
        up2.requests()
            .iter()
            .all(|r| r.header("authorization").is_none())
    );
}

#[test]
fn fifty_concurrent_calls_make_one_token_request() {
    let gate = Gate::new();
    let g = gate.clone();
    let idp = token_endpoint(Arc::new(move |n| {
        let mut r = token_reply(n, 3600);
        r.actions.insert(0, Action::Wait(g.clone()));
        r
    }));
    let up = MockUpstream::start(echo_request_line);
    let gw = start(
        &oauth_config(
            &up.url(),
            &format!("{}/oauth/token", idp.url()),
            "",
            "upstream_connect_timeout = \"10s\"",
        ),
        &[],
    );
    let port = gw.port();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                let mut c = Conn::connect(port);
                c.set_read_timeout(Duration::from_secs(20));
                c.try_roundtrip(&get(&format!("/api/c{i}")))
            })
        })
        .collect();
    // the first token request is held at the endpoint while the calls pile up
    thread::sleep(Duration::from_millis(500));
    gate.open();
    for h in calls {
        let r = h.join().unwrap().expect("a response");
        assert_eq!(r.status, 200, "{}", show(&r.raw));
    }
    assert_eq!(idp.count(), 1, "single flight");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 50);
    for r in reqs {
        assert_eq!(r.header("authorization"), Some(bearer(1).as_str()));
    }
}

#[test]
fn a_short_lived_token_is_refreshed_before_it_expires() {
    // 16 s tokens: refreshed at half-life (8 s), unusable in their last 5 s
    let idp = token_endpoint(Arc::new(|n| token_reply(n, 16)));
    let up = MockUpstream::start(echo_request_line);
    let gw = start(
        &oauth_config(&up.url(), &format!("{}/oauth/token", idp.url()), "", ""),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut c = gw.conn();
    let mut seen = Vec::new();
    loop {
        let r = c.roundtrip(&get("/api/tick"));
        assert_eq!(r.status, 200, "no gap between tokens: {}", show(&r.raw));
        let auth = up
            .requests()
            .pop()
            .unwrap()
            .header("authorization")
            .unwrap()
            .to_string();
        if seen.last() != Some(&auth) {
            seen.push(auth.clone());
        }
        if auth == bearer(2) {
            break;
        }
        assert!(Instant::now() < deadline, "no second token; saw {seen:?}");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(seen, [bearer(1), bearer(2)]);
    assert!(idp.count() >= 2);
}

#[test]
fn token_endpoint_down_or_refusing_gives_502_and_nothing_goes_upstream() {
    let up = MockUpstream::start(echo_request_line);
    // nothing listens on the token port
    let dead = format!("http://127.0.0.1:{}/oauth/token", free_port());
    let gw = start(&oauth_config(&up.url(), &dead, "", ""), &[]);
    for _ in 0..3 {
        let r = call(&gw, "/api/x");
        assert_gateway_error(&r, 502, "upstream_auth_failed");
        assert!(!r.body_str().contains(CLIENT_SECRET));
    }
    assert_eq!(up.count(), 0);
    let log = gw.log_when(
        |l| l.contains("OAuth2 token request failed and no valid token is left"),
        Duration::from_secs(5),
    );
    assert!(
        log.contains("OAuth2 token request failed and no valid token is left"),
        "{log}"
    );
    drop(gw);

    // the endpoint answers, but refuses the client
    let idp = token_endpoint(Arc::new(|_| {
        Reply::with(
            400,
            "Bad Request",
            &[("Content-Type", "application/json")],
            br#"{"error":"invalid_scope"}"#,
        )
    }));
    let gw = start(
        &oauth_config(&up.url(), &format!("{}/oauth/token", idp.url()), "", ""),
        &[],
    );
    let r = call(&gw, "/api/x");
    assert_gateway_error(&r, 502, "upstream_auth_failed");
    assert_eq!(up.count(), 0);
    assert!(idp.count() >= 1);
    // the refresher thread's log line may land just after the call's answer: wait, bounded
    let log = gw.log_when(|l| l.contains("invalid_scope"), Duration::from_secs(5));
    assert!(log.contains("invalid_scope"), "{log}");
}

#[test]
fn a_failed_refresh_keeps_the_old_token_until_it_expires_then_502() {
    // first token for 16 s, then the endpoint fails
    let idp = token_endpoint(Arc::new(|n| {
        if n == 1 {
            token_reply(1, 16)
        } else {
            Reply::with(503, "Service Unavailable", &[], b"down")
        }
    }));
    let up = MockUpstream::start(echo_request_line);
    let gw = start(
        &oauth_config(&up.url(), &format!("{}/oauth/token", idp.url()), "", ""),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut c = gw.conn();
    let mut ok_after_failure = 0;
    loop {
        let r = c.roundtrip(&get("/api/tick"));
        if r.status == 502 {
            assert_gateway_error(&r, 502, "upstream_auth_failed");
            break;
        }
        assert_eq!(r.status, 200, "{}", show(&r.raw));
        assert_eq!(
            up.requests().pop().unwrap().header("authorization"),
            Some(bearer(1).as_str())
        );
        if idp.count() >= 2 {
            ok_after_failure += 1;
        }
        assert!(Instant::now() < deadline, "the old token never expired");
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ok_after_failure > 0,
        "the old token was used after the refresh failed"
    );
    let n = up.count();
    assert_gateway_error(&call(&gw, "/api/again"), 502, "upstream_auth_failed");
    assert_eq!(up.count(), n, "nothing upstream without a token");
    let log = gw.log_when(
        |l| l.contains("the current token stays in use") && l.contains("no valid token is left"),
        Duration::from_secs(5),
    );
    assert!(log.contains("the current token stays in use"), "{log}");
    assert!(log.contains("no valid token is left"), "{log}");
}

#[test]
fn https_token_endpoint_trusted_through_the_proxy_ca_file() {
    let pki = make_pki();
    let idp = token_endpoint_on(Some(&pki), Arc::new(|n| token_reply(n, 3600)));
    let up = MockUpstream::start(echo_request_line);
    let token_url = format!("https://localhost:{}/oauth/token", idp.port());
    let gw = start(
        &oauth_config(&up.url(), &token_url, "ca_file = \"ca.pem\"\n", ""),
        &[("ca.pem", pki.ca_pem.as_bytes())],
    );
    let r = call(&gw, "/api/tls");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(
        up.requests().pop().unwrap().header("authorization"),
        Some(bearer(1).as_str())
    );
    assert_eq!(idp.requests()[0].sni.as_deref(), Some("localhost"));

    // without the CA the endpoint is not trusted
    let idp2 = token_endpoint_on(Some(&pki), Arc::new(|n| token_reply(n, 3600)));
    let token_url = format!("https://localhost:{}/oauth/token", idp2.port());
    let gw2 = start(&oauth_config(&up.url(), &token_url, "", ""), &[]);
    assert_gateway_error(&call(&gw2, "/api/tls"), 502, "upstream_auth_failed");
    assert_eq!(idp2.count(), 0);
}

// ------------------------------------------------------------------------------------------
// JWKS over http(s)
// ------------------------------------------------------------------------------------------

fn jwk(k: &Ed25519KeyPair, kid: &str) -> serde_json::Value {
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
        "x": B64.encode(k.public_key().as_ref())})
}

fn jwt_for(k: &Ed25519KeyPair, kid: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let claims = serde_json::json!({"iss": "https://idp.test/", "aud": "portcullis",
        "sub": "agent-1", "exp": now + 600});
    let msg = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = k.sign(msg.as_bytes());
    format!("{msg}.{}", B64.encode(sig.as_ref()))
}

/// A JWKS endpoint serving whatever `doc` holds.
fn jwks_endpoint(pki: Option<&TestPki>, doc: Arc<Mutex<String>>) -> MockUpstream {
    let handler = move |req: &ReceivedRequest| {
        if req.method != "GET" || req.target != "/.well-known/jwks.json" {
            return Reply::with(404, "Not Found", &[], b"");
        }
        let body = doc.lock().unwrap().clone();
        Reply::with(
            200,
            "OK",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    match pki {
        None => MockUpstream::start(handler),
        Some(p) => MockUpstream::start_tls(&p.leaf_cert_pem, &p.leaf_key_pem, handler),
    }
}

fn jwt_config(upstream: &str, jwks_url: &str, jwt_extra: &str) -> String {
    let mut s = config_with(2, "", &[proxy("api", upstream)]);
    s.push_str(&format!(
        "[[jwt]]\nissuer = \"https://idp.test/\"\naudience = \"portcullis\"\njwks = \"{jwks_url}\"\n{jwt_extra}\n"
    ));
    s
}

fn with_jwt(gw: &Gateway, token: &str) -> Response {
    gw.conn().roundtrip(
        format!("GET /api/j HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
}

/// Polls until a call with `token` gets `status` (bounded).
fn wait_status(gw: &Gateway, token: &str, status: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = with_jwt(gw, token);
        if r.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} — {}",
            r.status,
            show(&r.raw)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn jwks_key_rollover_on_unknown_kid() {
    let (k1, k2) = (
        Ed25519KeyPair::generate().unwrap(),
        Ed25519KeyPair::generate().unwrap(),
    );
    let doc = Arc::new(Mutex::new(
        serde_json::json!({"keys": [jwk(&k1, "k1")]}).to_string(),
    ));
    let idp = jwks_endpoint(None, doc.clone());
    let up = MockUpstream::start(echo_request_line);
    // no periodic refresh during the test: only the unknown kid triggers one
    let gw = start(
        &jwt_config(
            &up.url(),
            &format!("{}/.well-known/jwks.json", idp.url()),
            "refresh_interval = \"1h\"\nmin_refresh_interval = \"1s\"",
        ),
        &[],
    );
    let (t1, t2) = (jwt_for(&k1, "k1"), jwt_for(&k2, "k2"));
    assert_eq!(with_jwt(&gw, &t1).status, 200);
    let fetched = idp.count();
    assert!(fetched >= 1);
    // the IdP rolls over to k2
    *doc.lock().unwrap() = serde_json::json!({"keys": [jwk(&k2, "k2")]}).to_string();
    let r = with_jwt(&gw, &t2);
    assert!(
        r.status == 401 || r.status == 200,
        "unknown kid: 401 until the refresh lands: {}",
        show(&r.raw)
    );
    wait_status(&gw, &t2, 200, "a token signed with the new key");
    assert!(idp.count() > fetched, "the JWKS was fetched again");
    // the old key is gone, and so are tokens verified with it
    assert_gateway_error(&with_jwt(&gw, &t1), 401, "unauthenticated");
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.header("authorization").is_some())
            .count(),
        0,
        "the agent's JWT never reaches the upstream"
    );
}

#[test]
fn jwks_over_https_is_refreshed_periodically() {
    let pki = make_pki();
    let (k1, k2) = (
        Ed25519KeyPair::generate().unwrap(),
        Ed25519KeyPair::generate().unwrap(),
    );
    let doc = Arc::new(Mutex::new(
        serde_json::json!({"keys": [jwk(&k1, "k1")]}).to_string(),
    ));
    let idp = jwks_endpoint(Some(&pki), doc.clone());
    let up = MockUpstream::start(echo_request_line);
    let gw = start(
        &jwt_config(
            &up.url(),
            &format!("https://localhost:{}/.well-known/jwks.json", idp.port()),
            "refresh_interval = \"1s\"\nca_file = \"ca.pem\"",
        ),
        &[("ca.pem", pki.ca_pem.as_bytes())],
    );
    let t1 = jwt_for(&k1, "k1");
    assert_eq!(with_jwt(&gw, &t1).status, 200);
    // k1 revoked: the periodic refresh drops it (no unknown kid involved)
    *doc.lock().unwrap() = serde_json::json!({"keys": [jwk(&k2, "k2")]}).to_string();
    wait_status(&gw, &t1, 401, "a token of the revoked key");
    assert_eq!(with_jwt(&gw, &jwt_for(&k2, "k2")).status, 200);
    // a broken JWKS keeps the keys
    *doc.lock().unwrap() = "{\"keys\": []}".to_string();
    let n = idp.count();
    let deadline = Instant::now() + Duration::from_secs(15);
    while idp.count() < n + 2 {
        assert!(Instant::now() < deadline, "no refresh");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(with_jwt(&gw, &jwt_for(&k2, "k2")).status, 200);
    let log = gw.log_when(
        |l| l.contains("JWKS fetch failed; keeping the previous keys"),
        Duration::from_secs(5),
    );
    assert!(
        log.contains("JWKS fetch failed; keeping the previous keys"),
        "{log}"
    );
}

#[test]
fn check_warns_about_an_unreachable_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let toml = jwt_config(
        "http://127.0.0.1:9",
        &format!("https://127.0.0.1:{}/jwks", free_port()),
        "",
    )
    .replace("{PORT}", &free_port().to_string());
    std::fs::write(&path, toml).unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("warning:") && stdout.contains("jwt[0].jwks: cannot fetch"),
        "{stdout}"
    );
}

/// `/metrics` shows each JWKS's usable keys and the age of its last successful fetch; a JWKS
/// that stops answering keeps its keys and its age grows (no reset to "fresh").
#[test]
fn jwks_health_on_metrics() {
    let k1 = Ed25519KeyPair::generate().unwrap();
    let doc = Arc::new(Mutex::new(
        serde_json::json!({"keys": [jwk(&k1, "k1")]}).to_string(),
    ));
    let idp = jwks_endpoint(None, doc);
    let up = MockUpstream::start(echo_request_line);
    let admin = free_port();
    let url = format!("{}/.well-known/jwks.json", idp.url());
    let toml = jwt_config(&up.url(), &url, "").replacen(
        "workers = 2\n",
        &format!(
            "workers = 2\nadmin_listen = \"127.0.0.1:{admin}\"\nmetrics_token = \"file:metrics.token\"\n"
        ),
        1,
    );
    let _gw = Gateway::start_with_files(&toml, &[("metrics.token", b"jwks-metrics-0123456789")]);
    let scrape = || {
        let raw = send_raw(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer jwks-metrics-0123456789\r\n\r\n",
        );
        parse_response(&raw)
            .map(|r| r.body_str())
            .unwrap_or_default()
    };
    let keys = format!("portcullis_jwks_keys{{jwks=\"{url}\"}} 1");
    let text = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Some(scrape()).filter(|t| t.contains(&keys))
    })
    .unwrap_or_else(|| panic!("no {keys}:\n{}", scrape()));
    let age_series = format!("portcullis_jwks_fetch_age_seconds{{jwks=\"{url}\"}} ");
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&age_series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {age_series}:\n{text}"));
    assert!((0.0..600.0).contains(&age), "{age}");
}
