//! Issue 12, "the injected secret must not come back": an upstream that reflects the
//! credential the gateway injected (an echo endpoint, a redirect `Location` carrying the query
//! credential, a body split so the secret straddles two reads) never gets it to the agent.
//! The exact bytes are masked with `*` of the same length, counted in the audit record
//! (`secret_reflected`) and in `portcullis_secret_masked_total`.
use crate::audit::calls;
use crate::support::*;
use std::time::Duration;

/// The target secret: `/`, `+`, `=`, `&` make its form-encoded spelling differ from the raw one.
const SECRET: &str = "Sk-Live/9f+Q=a&b";
/// base64("svc:" + SECRET), what `Authorization: Basic` carries.
const BASIC_B64: &str = "c3ZjOlNrLUxpdmUvOWYrUT1hJmI=";
/// SECRET form-encoded, as the query credential goes upstream.
const SECRET_FORM: &str = "Sk-Live%2F9f%2BQ%3Da%26b";
const ADMIN_TOKEN: &str = "admin-token-for-mask-tests";

fn config(up: &str, admin: u16) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 1\nadmin_listen = \"127.0.0.1:{admin}\"\nadmin_token = \"file:admin.token\"\n\n[audit]\ndir = \"audit\"\nfsync = \"1s\"\n\n"
    );
    for (name, auth) in [
        (
            "bearer",
            r#"{ scheme = "bearer", secret = "file:target.secret" }"#,
        ),
        (
            "header",
            r#"{ scheme = "header", header = "X-Api-Key", secret = "file:target.secret" }"#,
        ),
        (
            "basic",
            r#"{ scheme = "basic", username = "svc", secret = "file:target.secret" }"#,
        ),
        (
            "query",
            r#"{ scheme = "query", param = "api_key", secret = "file:target.secret" }"#,
        ),
    ] {
        s.push_str(&proxy(name, up));
        s.push_str(&format!("auth = {auth}\n\n"));
    }
    s.push_str(&proxy("none", up));
    s
}

fn start(up: &str) -> (Gateway, u16) {
    let admin = free_port();
    let gw = Gateway::start_with_files(
        &config(up, admin),
        &[
            ("target.secret", SECRET.as_bytes()),
            ("admin.token", ADMIN_TOKEN.as_bytes()),
        ],
    );
    (gw, admin)
}

/// Reflects everything: each request header as `X-Echo-<name>`, the target in a redirect
/// `Location`, and the whole request head as the body.
fn echo_all(req: &ReceivedRequest) -> Reply {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(n, v)| (format!("X-Echo-{n}"), v.clone()))
        .collect();
    headers.push((
        "Location".into(),
        format!("http://upstream.test{}", req.target),
    ));
    headers.push(("Content-Type".into(), "text/plain".into()));
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    Reply::with(302, "Found", &h, &req.head)
}

/// Every spelling of the secret the gateway put on a request.
fn spellings() -> [&'static str; 3] {
    [SECRET, BASIC_B64, SECRET_FORM]
}

fn assert_no_secret(what: &str, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    for s in spellings() {
        assert!(
            !text.contains(s),
            "{what}: the injected secret ({s}) reached the agent:\n{text}"
        );
    }
}

fn metric(admin: u16, name: &str, proxy: &str) -> u64 {
    let raw = send_raw(
        admin,
        format!("GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let r = parse_response(&raw).expect("metrics response");
    let want = format!("{name}{{proxy=\"{proxy}\"}} ");
    r.body_str()
        .lines()
        .find_map(|l| l.strip_prefix(&want).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// An echo upstream reflecting headers, body and a redirect `Location`: for bearer, header,
/// basic and query credentials the agent sees `*`s where the secret was, with a valid
/// `Content-Length` (same-length masking), while the upstream did receive the credential.
#[test]
fn an_echo_upstream_reflecting_the_credential_gets_it_masked() {
    let mock = MockUpstream::start(echo_all);
    let (gw, admin) = start(&mock.url());
    // (proxy, what the upstream must have received, where the agent sees it masked)
    let rows: &[(&str, (&str, &str), &str)] = &[
        (
            "bearer",
            ("authorization", "Bearer Sk-Live/9f+Q=a&b"),
            "x-echo-authorization",
        ),
        ("header", ("x-api-key", SECRET), "x-echo-x-api-key"),
        (
            "basic",
            ("authorization", "Basic c3ZjOlNrLUxpdmUvOWYrUT1hJmI="),
            "x-echo-authorization",
        ),
        ("query", ("host", ""), "location"),
    ];
    for (i, (name, (up_header, up_value), masked_in)) in rows.iter().enumerate() {
        // the agent asks for gzip: the upstream is asked for identity (masking needs it)
        let req = format!(
            "GET /{name}/v1/echo?x=1 HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip\r\nX-Agent: {SECRET}-not-injected-by-us\r\nConnection: close\r\n\r\n"
        );
        let raw = send_raw(gw.port(), req.as_bytes());
        let resp = parse_response(&raw).unwrap_or_else(|e| panic!("{name}: {e}: {}", show(&raw)));
        assert_eq!(resp.status, 302, "{name}: {}", show(&raw));
        let got = &mock.requests()[i];
        assert_eq!(got.header("accept-encoding"), Some("identity"), "{name}");
        if *name == "query" {
            assert!(
                got.target.ends_with(&format!("&api_key={SECRET_FORM}")),
                "{name}: {}",
                got.target
            );
        } else {
            assert_eq!(got.header(up_header), Some(*up_value), "{name}");
        }
        assert_no_secret(name, &raw);
        let v = resp
            .header(masked_in)
            .unwrap_or_else(|| panic!("{name}: no {masked_in}: {}", show(&raw)));
        assert!(v.contains("****************"), "{name}: {masked_in}: {v}");
        // same-length masking: the upstream's Content-Length still frames the body
        assert_eq!(
            resp.header("content-length"),
            Some(got.head.len().to_string().as_str()),
            "{name}"
        );
        assert_eq!(resp.body.len(), got.head.len(), "{name}");
        assert!(
            resp.body_str().contains("****"),
            "{name}: {}",
            resp.body_str()
        );
    }
    // a proxy that injects nothing masks nothing (the agent's own header comes back whole)
    let raw = send_raw(
        gw.port(),
        format!(
            "GET /none/x HTTP/1.1\r\nHost: gw\r\nX-Agent: {SECRET}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let resp = parse_response(&raw).unwrap();
    assert_eq!(resp.header("x-echo-x-agent"), Some(SECRET));
    // counted: metric per proxy, and the audit record
    for name in ["bearer", "header", "basic", "query"] {
        assert!(
            metric(admin, "portcullis_secret_masked_total", name) >= 2,
            "{name}: metric"
        );
    }
    assert_eq!(metric(admin, "portcullis_secret_masked_total", "none"), 0);
    let dir = gw.dir().join("audit");
    let recs = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let r = calls(&dir);
        (r.len() >= 5).then_some(r)
    })
    .expect("5 audit records");
    for r in &recs {
        let reflected = r.secret_reflected.unwrap_or(0);
        if r.proxy.as_deref() == Some("none") {
            assert_eq!(r.secret_reflected, None, "{r:?}");
        } else {
            assert!(reflected >= 2, "{:?}: {r:?}", r.proxy);
        }
    }
}

/// The secret split across upstream reads, at every split point, in a Content-Length body and
/// in a chunked body whose chunk boundary falls inside it: masked every time, and nothing
/// else changes.
#[test]
fn a_secret_split_across_reads_is_masked_at_every_split_point() {
    let mock = MockUpstream::start(|req| {
        // the target says where to split and how to frame: /bearer/<framing>/<cut>
        let mut parts = req.target.rsplit('/');
        let cut: usize = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let framing = parts.next().unwrap_or("length").to_string();
        let body = format!("{{\"echo\":\"{SECRET}\",\"n\":1}}");
        let at = body.find(SECRET).unwrap() + cut;
        let (a, b) = body.as_bytes().split_at(at);
        let pause = Action::Sleep(Duration::from_millis(15));
        if framing == "chunked" {
            let chunk = |d: &[u8]| {
                let mut v = format!("{:x}\r\n", d.len()).into_bytes();
                v.extend_from_slice(d);
                v.extend_from_slice(b"\r\n");
                v
            };
            let mut head =
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            head.extend(chunk(a));
            let mut tail = chunk(b);
            tail.extend_from_slice(b"0\r\n\r\n");
            Reply::actions(vec![Action::Write(head), pause, Action::Write(tail)])
        } else {
            let mut head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            head.extend_from_slice(a);
            Reply::actions(vec![Action::Write(head), pause, Action::Write(b.to_vec())])
        }
    });
    let (gw, _admin) = start(&mock.url());
    let want = format!("{{\"echo\":\"{}\",\"n\":1}}", "*".repeat(SECRET.len()));
    let mut c = gw.conn();
    for framing in ["length", "chunked"] {
        for cut in 0..=SECRET.len() {
            let resp = c.roundtrip(&get(&format!("/bearer/{framing}/{cut}")));
            assert_eq!(resp.status, 200, "{framing} {cut}: {}", show(&resp.raw));
            assert_eq!(resp.body_str(), want, "{framing} {cut}");
            assert_no_secret(&format!("{framing} {cut}"), &resp.raw);
            if framing == "length" {
                assert_eq!(
                    resp.header("content-length"),
                    Some(want.len().to_string().as_str())
                );
            }
        }
    }
}

/// An upstream that ignores `Accept-Encoding: identity` cannot smuggle the secret back
/// compressed: a content-encoded body (gzip, or `identity` + `gzip` on two lines) on a proxy
/// that injects a credential is refused with 502, before any byte of it reaches the agent. A
/// proxy that injects nothing passes it through untouched.
#[test]
fn a_compressed_response_cannot_carry_the_secret_back() {
    let mock = MockUpstream::start(|req| {
        let gz = gzip(format!("echo {SECRET}").as_bytes());
        let mut head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n".to_string();
        if req.target.contains("two-lines") {
            head.push_str("Content-Encoding: identity\r\nContent-Encoding: gzip\r\n");
        } else {
            head.push_str("Content-Encoding: gzip\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", gz.len()));
        let mut v = head.into_bytes();
        v.extend_from_slice(&gz);
        Reply::raw(v)
    });
    let (gw, _admin) = start(&mock.url());
    for (name, target) in [
        ("gzip", "/bearer/one-line"),
        ("identity then gzip", "/header/two-lines"),
        ("query credential", "/query/one-line"),
    ] {
        let raw = send_raw(
            gw.port(),
            format!("GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let resp = parse_response(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_gateway_error(&resp, 502, "upstream_unreachable");
    }
    let raw = send_raw(
        gw.port(),
        b"GET /none/one-line HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    );
    let resp = parse_response(&raw).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
}

/// A response with no secret in it is relayed byte for byte (and keeps its framing).
#[test]
fn without_a_reflection_nothing_changes() {
    let body: Vec<u8> = (0..200_000u32)
        .map(|i| b"abcdefgh Sk-Live/ \n"[(i % 19) as usize])
        .collect();
    let b2 = body.clone();
    let mock = MockUpstream::start(move |_| {
        Reply::with(
            200,
            "OK",
            &[("Content-Type", "application/octet-stream")],
            &b2,
        )
    });
    let (gw, _admin) = start(&mock.url());
    let mut c = gw.conn();
    let resp = c.roundtrip(&get("/bearer/big"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("200000"));
    assert!(resp.body == body, "the body changed");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
