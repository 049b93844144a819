//! Request-smuggling and malformed-request table: every refused row must get the gateway's own
//! 400 `bad_request` JSON error, `Connection: close`, a closed connection, exactly one response,
//! and the upstream must receive nothing. Control rows prove the harness forwards good requests.
use crate::support::*;
use std::time::Duration;

struct Row {
    name: &'static str,
    raw: Vec<u8>,
    status: u16,
}

fn row(name: &'static str, raw: impl AsRef<[u8]>, status: u16) -> Row {
    Row {
        name,
        raw: raw.as_ref().to_vec(),
        status,
    }
}

fn get_path(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes()
}

fn table() -> Vec<Row> {
    let mut big_head = b"GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Big: ".to_vec();
    big_head.extend(std::iter::repeat_n(b'a', 17 * 1024));
    big_head.extend_from_slice(b"\r\n\r\n");

    let mut many_headers = b"GET /up/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
    for i in 0..150 {
        many_headers.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");

    vec![
        // --- CONNECT outside forward-proxy mode: a tunnel would carry anything past the rules
        // (issue 12); refused whatever its target form ---
        row(
            "connect_authority_form",
            "CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n\r\n",
            400,
        ),
        row(
            "connect_origin_form",
            "CONNECT /up/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            400,
        ),
        row(
            "connect_lowercase",
            "connect /up/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            400,
        ),
        // --- controls: must be forwarded ---
        row(
            "control_get",
            "GET /up/ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            200,
        ),
        row(
            "control_chunked_post",
            "POST /up/ok HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            200,
        ),
        row(
            "control_content_length_post",
            "POST /up/ok HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            200,
        ),
        // --- framing ambiguity ---
        row(
            "cl_te",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            400,
        ),
        row(
            "te_cl",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
            400,
        ),
        row(
            "duplicate_content_length_differing",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        ),
        row(
            "duplicate_content_length_identical",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
        row(
            "content_length_list",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 6\r\n\r\nhello!",
            400,
        ),
        row(
            "content_length_plus_sign",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: +5\r\n\r\nhello",
            400,
        ),
        row(
            "content_length_negative",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        row(
            "content_length_not_a_number",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: abc\r\n\r\n",
            400,
        ),
        row(
            "transfer_encoding_chunked_identity",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        row(
            "transfer_encoding_twice",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        row(
            "transfer_encoding_space_before_colon",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
        // --- chunk framing ---
        row(
            "chunk_size_overflow",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff1\r\nx\r\n0\r\n\r\n",
            400,
        ),
        row(
            "chunk_size_not_hex",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
            400,
        ),
        row(
            "chunk_data_without_crlf",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            400,
        ),
        row(
            "chunk_size_line_bare_lf",
            "POST /up/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            400,
        ),
        // --- head syntax ---
        row(
            "bare_lf_in_head",
            "GET /up/x HTTP/1.1\r\nHost: gw\nX-A: b\r\n\r\n",
            400,
        ),
        row(
            "bare_lf_everywhere",
            "GET /up/x HTTP/1.1\nHost: gw\n\n",
            400,
        ),
        row(
            "bare_cr_in_head",
            "GET /up/x HTTP/1.1\r\nHost: gw\rX-A: b\r\n\r\n",
            400,
        ),
        row(
            "nul_in_header_value",
            b"GET /up/x HTTP/1.1\r\nHost: gw\r\nX-A: a\x00b\r\n\r\n",
            400,
        ),
        row(
            "obs_fold",
            "GET /up/x HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n b\r\n\r\n",
            400,
        ),
        row(
            "whitespace_before_first_header",
            "GET /up/x HTTP/1.1\r\n Host: gw\r\n\r\n",
            400,
        ),
        row(
            "space_before_colon",
            "GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Foo : bar\r\n\r\n",
            400,
        ),
        row(
            "invalid_header_name_char",
            "GET /up/x HTTP/1.1\r\nHost: gw\r\nBad@Name: x\r\n\r\n",
            400,
        ),
        row(
            "empty_header_name",
            "GET /up/x HTTP/1.1\r\nHost: gw\r\n: x\r\n\r\n",
            400,
        ),
        row(
            "header_without_colon",
            "GET /up/x HTTP/1.1\r\nHost: gw\r\nNoColonHere\r\n\r\n",
            400,
        ),
        row(
            "double_host",
            "GET /up/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            400,
        ),
        row("oversize_head", big_head, 400),
        row("too_many_headers", many_headers, 400),
        // --- path canonicalisation refusals ---
        row("encoded_slash_lower", get_path("/up/a%2fb"), 400),
        row("encoded_slash_upper", get_path("/up/a%2Fb"), 400),
        row("encoded_backslash", get_path("/up/a%5cb"), 400),
        row("raw_backslash", get_path("/up/a\\b"), 400),
        row("encoded_nul", get_path("/up/a%00b"), 400),
        row("encoded_dot_dot", get_path("/up/%2e%2e/x"), 400),
        row("half_encoded_dot_dot", get_path("/up/.%2e/x"), 400),
        row("encoded_dot_dot_upper", get_path("/up/%2E%2E/x"), 400),
        row("dot_dot_above_root", get_path("/up/../../x"), 400),
        row("invalid_utf8_escape", get_path("/up/%ff"), 400),
        row("bad_escape", get_path("/up/%zz"), 400),
        row("truncated_escape", get_path("/up/a%4"), 400),
    ]
}

fn check_row(gw: &Gateway, mock: &MockUpstream, r: &Row) -> Result<(), String> {
    let before = mock.count();
    let mut c = gw.conn();
    c.set_read_timeout(Duration::from_secs(3));
    // The gateway may answer and close before everything is written.
    let _ = c.try_send(&r.raw);
    let resp = c.try_read_response();
    // Anything forwarded would have been forwarded before the answer; give stragglers a moment.
    std::thread::sleep(Duration::from_millis(30));
    let forwarded = mock.count() - before;
    let resp = resp.map_err(|e| {
        format!("no complete response (upstream received {forwarded} request(s)): {e}")
    })?;
    if resp.status != r.status {
        return Err(format!(
            "expected status {}, got {} (upstream received {forwarded} request(s)); response: {}",
            r.status,
            resp.status,
            show(&resp.raw)
        ));
    }
    if r.status == 200 {
        if forwarded != 1 {
            return Err(format!(
                "control row: upstream received {forwarded} requests, expected 1"
            ));
        }
        return Ok(());
    }
    if forwarded != 0 {
        let last = mock
            .requests()
            .pop()
            .map(|q| show(&q.raw))
            .unwrap_or_default();
        return Err(format!(
            "refused, but upstream received {forwarded} request(s); last: {last}"
        ));
    }
    if resp.header("content-type") != Some("application/json") {
        return Err(format!("not a JSON error: {}", show(&resp.raw)));
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("error body not JSON ({e}): {}", show(&resp.raw)))?;
    let code = v.pointer("/error/code").and_then(|c| c.as_str());
    if code != Some("bad_request") {
        return Err(format!(
            "error code {code:?}, expected bad_request: {}",
            show(&resp.raw)
        ));
    }
    let id = v.pointer("/error/request_id").and_then(|c| c.as_str());
    if id.is_none() || id != resp.header("x-request-id") {
        return Err(format!(
            "request_id {id:?} vs X-Request-Id {:?}",
            resp.header("x-request-id")
        ));
    }
    if resp.header("content-length") != Some(resp.body.len().to_string().as_str()) {
        return Err(format!(
            "Content-Length does not match body: {}",
            show(&resp.raw)
        ));
    }
    if !resp.says_close() {
        return Err(format!(
            "400 without Connection: close: {}",
            show(&resp.raw)
        ));
    }
    let (closed, extra) = c.wait_closed_collect(Duration::from_secs(3));
    if !extra.is_empty() {
        return Err(format!(
            "bytes after the 400 (a second response?): {}",
            show(&extra)
        ));
    }
    if !closed {
        return Err("connection not closed within 3 s after the 400".to_string());
    }
    if mock.count() != before {
        return Err("upstream received a request after the 400".to_string());
    }
    Ok(())
}

#[test]
fn malformed_and_ambiguous_requests_are_refused_and_nothing_reaches_upstream() {
    let mock = MockUpstream::start(|_| Reply::ok("upstream"));
    let gw = Gateway::start(&config_with(
        2,
        "head_timeout = \"2s\"",
        &[proxy("up", &mock.url())],
    ));
    let rows = table();
    let mut failures = Vec::new();
    for r in &rows {
        if let Err(e) = check_row(&gw, &mock, r) {
            failures.push(format!("[{}] {e}", r.name));
        }
    }
    let controls = rows.iter().filter(|r| r.status == 200).count();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}\nupstream mock saw {} requests in total (controls: {controls})",
        failures.len(),
        rows.len(),
        failures.join("\n"),
        mock.count()
    );
    assert_eq!(
        mock.count(),
        controls,
        "only the control rows may reach the upstream"
    );
}
