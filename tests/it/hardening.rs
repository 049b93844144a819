//! Issue 12 ("Hardening the data plane"), the encodings that slipped past rules and scanners,
//! seen on the wire through the real binary: each test names what an upstream would have
//! received before the fix, and asserts what it receives (or that it receives nothing) now.
use crate::support::*;
use std::time::{Duration, Instant};

/// A chunk size line declaring more than `max_request_body` is answered 413 at once: the
/// gateway does not wait for (or read) the chunk's data.
#[test]
fn chunk_larger_than_the_body_limit_is_refused_at_its_size_line() {
    let mock = MockUpstream::start(|_| Reply::ok("upstream"));
    let gw = Gateway::start(&config_with(
        1,
        "max_request_body = \"1KiB\"\nidle_timeout = \"30s\"",
        &[proxy("up", &mock.url())],
    ));
    // (name, body bytes sent after the head; none of the declared data follows)
    let rows: &[(&str, &[u8])] = &[
        ("one huge chunk", b"40000000\r\n"),
        ("size just over the limit", b"401\r\n"),
        ("second chunk takes it over", b"200\r\n"),
    ];
    for (name, body) in rows {
        let mut c = gw.conn();
        c.set_read_timeout(Duration::from_secs(5));
        let mut req =
            b"POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        if *name == "second chunk takes it over" {
            req.extend_from_slice(b"200\r\n");
            req.extend(std::iter::repeat_n(b'a', 0x200));
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(b"201\r\n");
        } else {
            req.extend_from_slice(body);
        }
        let t = Instant::now();
        c.send(&req);
        let resp = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_gateway_error(&resp, 413, "body_too_large");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{name}: answered after {:?}: the gateway waited for the chunk",
            t.elapsed()
        );
    }
    assert_eq!(mock.count(), 0, "nothing may reach the upstream");
}

const ACCOUNTS_ONLY: &str = "default_effect = \"deny\"\n\n  [[proxies.rules]]\n  effect = \"allow\"\n  methods = \"*\"\n  path = \"/v1/accounts/**\"\n";

/// An allow on `/v1/accounts/**` never admits a path that Tomcat, Jetty or Spring resolve
/// outside it (`..;`), whatever the proxy's `path_params`.
#[test]
fn path_parameters_never_leave_the_allowed_subtree() {
    let mock = MockUpstream::start(echo_request_line);
    let refuse = proxy("re", &mock.url()).replace("default_effect = \"allow\"\n", ACCOUNTS_ONLY);
    let strip = proxy("st", &mock.url()).replace(
        "default_effect = \"allow\"\n",
        &format!("path_params = \"strip\"\n{ACCOUNTS_ONLY}"),
    );
    let gw = Gateway::start(&config_with(1, "", &[refuse, strip]));
    // (name, target, status, what the upstream receives (None: nothing))
    let rows: &[(&str, &str, u16, Option<&str>)] = &[
        (
            "control",
            "/re/v1/accounts/42",
            200,
            Some("/v1/accounts/42"),
        ),
        ("tomcat dotdot", "/re/v1/accounts/..;/admin", 400, None),
        (
            "encoded semicolon",
            "/re/v1/accounts/..%3B/admin",
            400,
            None,
        ),
        (
            "encoded dots and param",
            "/re/v1/accounts/%2e%2e;/admin",
            400,
            None,
        ),
        ("dot param", "/re/v1/accounts/.;/42", 400, None),
        ("jsessionid", "/re/v1/accounts;jsessionid=x/42", 400, None),
        (
            "double encoded dots",
            "/re/v1/accounts/%252e%252e/admin",
            400,
            None,
        ),
        ("iis stream", "/re/v1/accounts/x::$DATA", 400, None),
        ("backslash", "/re/v1/accounts/..\\admin", 400, None),
        // strip: the cut path is what is checked and forwarded
        (
            "strip: dotdot is checked as /v1/admin",
            "/st/v1/accounts/..;/admin",
            403,
            None,
        ),
        (
            "strip: param dropped",
            "/st/v1/accounts;jsessionid=x/42",
            200,
            Some("/v1/accounts/42"),
        ),
        (
            "strip: dot param",
            "/st/v1/accounts/.;x/42",
            200,
            Some("/v1/accounts/42"),
        ),
        (
            "strip: encoded dots still refused",
            "/st/v1/accounts/%2e%2e;/admin",
            400,
            None,
        ),
    ];
    for (name, target, status, forwarded) in rows {
        let before = mock.count();
        let r = gw.conn().roundtrip(&get(target));
        assert_eq!(r.status, *status, "{name}: {}", show(&r.raw));
        match forwarded {
            Some(path) => {
                let got = mock.requests().pop().unwrap();
                assert_eq!(&got.target, path, "{name}");
            }
            None => assert_eq!(mock.count(), before, "{name}: reached the upstream"),
        }
    }
}

/// `X_Api_Key` beside the injected `X-Api-Key`, `Transfer_Encoding`: dropped by default,
/// refused or passed when configured.
#[test]
fn header_names_with_underscores_follow_server_underscore_headers() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let req = b"GET /up/x HTTP/1.1\r\nHost: gw\r\nX_Api_Key: agent-chosen\r\nTransfer_Encoding: chunked\r\nX-Other_Name: 1\r\nX-Fine: 2\r\n\r\n";
    // (policy line, status, whether the upstream sees the underscored fields)
    let rows: &[(&str, u16, Option<bool>)] = &[
        ("", 200, Some(false)),
        ("underscore_headers = \"drop\"\n", 200, Some(false)),
        ("underscore_headers = \"refuse\"\n", 400, None),
        ("underscore_headers = \"pass\"\n", 200, Some(true)),
    ];
    for (policy, status, seen) in rows {
        let toml = config_with(1, "", &[proxy("up", &mock.url())]).replacen(
            "workers = 1\n",
            &format!("workers = 1\n{policy}"),
            1,
        );
        let gw = Gateway::start(&toml);
        let before = mock.count();
        let r = gw.conn().roundtrip(req);
        assert_eq!(r.status, *status, "{policy:?}: {}", show(&r.raw));
        match seen {
            None => {
                assert_gateway_error(&r, 400, "bad_request");
                assert_eq!(mock.count(), before, "{policy:?}: reached the upstream");
            }
            Some(seen) => {
                let got = mock.requests().pop().unwrap();
                assert_eq!(got.header("x-fine"), Some("2"), "{policy:?}");
                for name in ["X_Api_Key", "Transfer_Encoding", "X-Other_Name"] {
                    assert_eq!(
                        got.header(name).is_some(),
                        *seen,
                        "{policy:?}: {name} in {}",
                        got.head_str()
                    );
                }
                assert!(!got.chunked, "{policy:?}");
            }
        }
    }
}

const SCANNED: &str = "default_effect = \"allow\"\n\n  [[proxies.scanners]]\n  name = \"no-secrets\"\n  detectors = [\"aws_access_key\", \"credit_card\"]\n  literals = [\"CONFIDENTIAL\"]\n";

fn post(ctype: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST /up/v1/notes HTTP/1.1\r\nHost: gw\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// What the upstream would decode is what the scanner reads: repeated Content-Encoding lines,
/// JSON escapes, form encoding, base64, multipart parts. Every row passed the scanner before.
#[test]
fn the_scanner_reads_what_the_upstream_decodes() {
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let up = proxy("up", &mock.url()).replace("default_effect = \"allow\"\n", SCANNED);
    let gw = Gateway::start(&config_with(1, "", &[up]));
    let hit = br#"{"k":"AKIAIOSFODNN7EXAMPLE"}"#;
    let json = "application/json";
    // (name, content type, extra header lines, body, status)
    let rows: Vec<(&str, &str, &str, Vec<u8>, u16)> = vec![
        ("gzip + gzip lines", json, "Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n", gzip(&gzip(hit)), 403),
        ("identity + gzip lines", json, "Content-Encoding: identity\r\nContent-Encoding: gzip\r\n", gzip(hit), 403),
        ("gzip + br lines: unscannable", json, "Content-Encoding: gzip\r\nContent-Encoding: br\r\n", gzip(hit), 400),
        ("json \\u escapes", json, "", br#"{"k":"\u0041KIAIOSFODNN7EXAMPLE"}"#.to_vec(), 403),
        ("json literal escape", json, "", br#"{"t":"CONFIDENTI\u0041L"}"#.to_vec(), 403),
        ("json \\u card digits", json, "", br#"{"n":"\u0034111 1111 1111 1111"}"#.to_vec(), 403),
        ("json in a json string", json, "", br#"{"arguments":"{\"k\":\"\\u0041KIAIOSFODNN7EXAMPLE\"}"}"#.to_vec(), 403),
        ("form encoding", "application/x-www-form-urlencoded", "", b"a=1&k=%41%4B%49%41IOSFODNN7EXAMPLE".to_vec(), 403),
        ("base64", json, "", format!(r#"{{"f":"{}"}}"#, b64(b"key AKIAIOSFODNN7EXAMPLE")).into_bytes(), 403),
        ("multipart base64 part", "multipart/form-data; boundary=xx", "",
            format!("--xx\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--xx--\r\n", b64(b"the CONFIDENTIAL file")).into_bytes(), 403),
        // controls
        ("clean json with escapes", json, "", br#"{"t":"caf\u00e9 \"q\"\n"}"#.to_vec(), 200),
        ("clean gzip + gzip", json, "Content-Encoding: gzip, gzip\r\n", gzip(&gzip(b"{}")), 200),
    ];
    for (name, ct, extra, body, status) in rows {
        let before = mock.count();
        let r = gw.conn().roundtrip(&post(ct, extra, &body));
        match status {
            403 => {
                assert_gateway_error(&r, 403, "payload_blocked");
            }
            400 => {
                assert_gateway_error(&r, 400, "bad_request");
            }
            _ => assert_eq!(r.status, status, "{name}: {}", show(&r.raw)),
        }
        let forwarded = mock.count() - before;
        assert_eq!(forwarded, usize::from(status == 200), "{name}");
        if status == 200 {
            // the body goes upstream as sent, with both codings
            let got = mock.requests().pop().unwrap();
            assert_eq!(got.body, body, "{name}");
        }
    }
}

/// Several proxies on one origin: an absolute-form request is decided by the proxy with the
/// longest base path, whatever the config order; equal matches are refused.
#[test]
fn absolute_form_is_decided_by_the_longest_base_path() {
    let mock = MockUpstream::start(echo_request_line);
    let short = proxy("short", &format!("{}/a", mock.url()));
    let long = proxy("long", &format!("{}/a/b", mock.url()))
        .replace("default_effect = \"allow\"", "default_effect = \"deny\"");
    let twin = proxy("twin", &format!("{}/a/b", mock.url()));
    let origin = format!("http://127.0.0.1:{}", mock.port());
    for (name, proxies) in [
        ("short first", vec![short.clone(), long.clone()]),
        ("long first", vec![long.clone(), short.clone()]),
    ] {
        let gw = Gateway::start(&config_with(1, "", &proxies));
        let r = gw.conn().roundtrip(&get(&format!("{origin}/a/b/x")));
        assert_gateway_error(&r, 403, "no_rule_matched");
        let r = gw.conn().roundtrip(&get(&format!("{origin}/a/c")));
        assert_eq!(r.status, 200, "{name}: {}", show(&r.raw));
        assert_eq!(mock.requests().pop().unwrap().target, "/a/c", "{name}");
    }
    let before = mock.count();
    let gw = Gateway::start(&config_with(1, "", &[short, long, twin]));
    let r = gw.conn().roundtrip(&get(&format!("{origin}/a/b/x")));
    assert_gateway_error(&r, 400, "bad_request");
    assert_eq!(mock.count(), before, "an ambiguous target reaches nothing");
    // path-prefix routing names the proxy: unaffected
    let r = gw.conn().roundtrip(&get("/twin/x"));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
}
