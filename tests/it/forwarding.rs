//! What goes upstream and what comes back: head rewriting, request ids, body framing, keep-alive,
//! pipelining, 100-continue, body limits, upstream pooling and streaming.
use crate::support::*;
use std::time::{Duration, Instant};

fn setup_with(
    limits: &str,
    handler: impl Fn(&ReceivedRequest) -> Reply + Send + Sync + 'static,
) -> (MockUpstream, Gateway) {
    let mock = MockUpstream::start(handler);
    let gw = Gateway::start(&config_with(
        2,
        limits,
        &[proxy("up", &format!("{}/base", mock.url()))],
    ));
    (mock, gw)
}

fn setup(
    handler: impl Fn(&ReceivedRequest) -> Reply + Send + Sync + 'static,
) -> (MockUpstream, Gateway) {
    setup_with("", handler)
}

fn last(mock: &MockUpstream) -> ReceivedRequest {
    mock.requests()
        .pop()
        .expect("the upstream received no request")
}

// ---------------------------------------------------------------------------------------------
// Request head
// ---------------------------------------------------------------------------------------------

#[test]
fn forwarded_head_is_exact_with_host_first_and_hop_by_hop_headers_removed() {
    let (mock, gw) = setup(|_| Reply::ok("ok"));
    let p = mock.port();
    let mut c = gw.conn();
    let resp = c.roundtrip(
        b"GET /up/v1/x?q=1 HTTP/1.1\r\n\
          Host: client.example\r\n\
          User-Agent: itest/1\r\n\
          Connection: keep-alive, X-Hop\r\n\
          x-custom: A b  c\r\n\
          Keep-Alive: timeout=5\r\n\
          X-Hop: secret\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers\r\n\
          Trailer: X-T\r\n\
          Upgrade: websocket\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          X-Request-Id: not valid!\r\n\
          Accept: */*\r\n\
          X-Dup: 1\r\n\
          X-Dup: 2\r\n\
          \r\n",
    );
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    let id = resp
        .header("x-request-id")
        .expect("X-Request-Id on the response")
        .to_string();
    assert!(valid_request_id(&id), "generated request id {id:?}");
    let r = last(&mock);
    let want = format!(
        "GET /base/v1/x?q=1 HTTP/1.1\r\n\
         Host: 127.0.0.1:{p}\r\n\
         User-Agent: itest/1\r\n\
         x-custom: A b  c\r\n\
         Accept: */*\r\n\
         X-Dup: 1\r\n\
         X-Dup: 2\r\n\
         X-Request-Id: {id}\r\n\
         \r\n"
    );
    assert_eq!(
        show(&r.raw),
        show(want.as_bytes()),
        "forwarded request bytes"
    );
}

/// A valid agent `X-Request-Id` does not become the call's id (issue 12: agents could forge
/// or collide audit ids): the response and the upstream carry the gateway's id, once; the
/// agent's value is kept in the audit record (`upstream_errors.rs`).
#[test]
fn valid_client_request_id_is_not_adopted() {
    let (mock, gw) = setup(|_| Reply::with(200, "OK", &[("X-Request-Id", "from-upstream")], b"ok"));
    let mut c = gw.conn();
    let long_valid = "a".repeat(128);
    for id in ["abc-123._:XYZ", long_valid.as_str()] {
        let resp = c.roundtrip(
            format!("GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {id}\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 200);
        let got = resp.headers_named("x-request-id");
        assert_eq!(got.len(), 1, "response ids: {}", show(&resp.raw));
        assert_ne!(got[0], id);
        assert!(valid_request_id(got[0]), "generated id {:?}", got[0]);
        let r = last(&mock);
        assert_eq!(
            r.headers_named("x-request-id"),
            got,
            "upstream ids: {}",
            show(&r.raw)
        );
    }
}

#[test]
fn invalid_client_request_id_is_replaced_by_a_generated_one() {
    let (mock, gw) = setup(|_| Reply::ok("ok"));
    let mut c = gw.conn();
    let too_long = "a".repeat(129);
    let mut seen = Vec::new();
    for id in [
        too_long.as_str(),
        "has space",
        "slash/y",
        "semi;colon",
        "quote\"x",
        "",
    ] {
        let resp = c.roundtrip(
            format!("GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {id}\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", show(&resp.raw));
        let got = resp.headers_named("x-request-id");
        assert_eq!(
            got.len(),
            1,
            "exactly one X-Request-Id: {}",
            show(&resp.raw)
        );
        assert_ne!(got[0], id);
        assert!(valid_request_id(got[0]), "generated id {:?}", got[0]);
        let r = last(&mock);
        assert_eq!(
            r.headers_named("x-request-id"),
            got,
            "upstream got the generated id: {}",
            show(&r.raw)
        );
        seen.push(got[0].to_string());
    }
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        seen.len(),
        "generated ids must differ: {seen:?}"
    );
}

#[test]
fn post_put_patch_without_body_get_content_length_zero_and_get_gets_none() {
    let (mock, gw) = setup(|_| Reply::ok("ok"));
    let p = mock.port();
    let mut c = gw.conn();
    for m in ["POST", "PUT", "PATCH"] {
        let resp = c.roundtrip(
            format!("{m} /up/p HTTP/1.1\r\nHost: gw\r\nX-Request-Id: r1\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 200, "{m}: {}", show(&resp.raw));
        // the gateway's id goes upstream, never the agent's (`r1`)
        let rid = resp.header("x-request-id").unwrap_or_default();
        let want = format!(
            "{m} /base/p HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nX-Request-Id: {rid}\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(show(&last(&mock).raw), show(want.as_bytes()), "{m}");
    }
    for m in ["GET", "DELETE", "OPTIONS"] {
        let resp = c.roundtrip(
            format!("{m} /up/p HTTP/1.1\r\nHost: gw\r\nX-Request-Id: r1\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 200, "{m}: {}", show(&resp.raw));
        // the gateway's id goes upstream, never the agent's (`r1`)
        let rid = resp.header("x-request-id").unwrap_or_default();
        let want =
            format!("{m} /base/p HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nX-Request-Id: {rid}\r\n\r\n");
        assert_eq!(show(&last(&mock).raw), show(want.as_bytes()), "{m}");
    }
}

#[test]
fn content_length_body_is_forwarded_with_content_length_last() {
    let (mock, gw) = setup(|_| Reply::ok("ok"));
    let p = mock.port();
    let mut c = gw.conn();
    let resp = c.roundtrip(
        b"POST /up/p HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nX-Request-Id: r2\r\n\r\nhello",
    );
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    let rid = resp.header("x-request-id").unwrap_or_default();
    let want = format!(
        "POST /base/p HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nContent-Type: text/plain\r\nX-Request-Id: {rid}\r\nContent-Length: 5\r\n\r\nhello"
    );
    assert_eq!(show(&last(&mock).raw), show(want.as_bytes()));
    // A GET with a body keeps it.
    let resp = c.roundtrip(
        b"GET /up/g HTTP/1.1\r\nHost: gw\r\nX-Request-Id: r3\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    let rid = resp.header("x-request-id").unwrap_or_default();
    let want = format!(
        "GET /base/g HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nX-Request-Id: {rid}\r\nContent-Length: 3\r\n\r\nabc"
    );
    assert_eq!(show(&last(&mock).raw), show(want.as_bytes()));
}

#[test]
fn chunked_request_body_is_dechunked_and_trailers_dropped() {
    let (mock, gw) = setup(|_| Reply::ok("ok"));
    let p = mock.port();
    let mut c = gw.conn();
    let resp = c.roundtrip(
        b"POST /up/c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nX-Request-Id: r4\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    let rid = resp.header("x-request-id").unwrap_or_default();
    let want = format!(
        "POST /base/c HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nX-Request-Id: {rid}\r\nContent-Length: 11\r\n\r\nhello world"
    );
    assert_eq!(show(&last(&mock).raw), show(want.as_bytes()));
    // The connection is still in sync after the trailer.
    let resp = c.roundtrip(&get("/up/after"));
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    assert_eq!(last(&mock).target, "/base/after");
}

#[test]
fn expect_100_continue_gets_interim_response_and_expect_is_not_forwarded() {
    let (mock, gw) = setup(|_| Reply::ok("ok"));
    let mut c = gw.conn();
    c.send(b"POST /up/e HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = c
        .read_exact_raw(25)
        .unwrap_or_else(|e| panic!("no 100 Continue: {e}"));
    assert_eq!(show(&interim), show(b"HTTP/1.1 100 Continue\r\n\r\n"));
    assert_eq!(
        mock.count(),
        0,
        "nothing goes upstream before the body is read"
    );
    c.send(b"hello");
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    let r = last(&mock);
    assert!(
        r.header("expect").is_none(),
        "Expect forwarded: {}",
        show(&r.raw)
    );
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("content-length"), Some("5"));
}

#[test]
fn expect_100_continue_with_oversized_content_length_is_413_without_continue() {
    let (mock, gw) = setup_with("max_request_body = \"1KiB\"", |_| Reply::ok("ok"));
    let mut c = gw.conn();
    c.send(
        b"POST /up/e HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 2048\r\n\r\n",
    );
    let resp = c.read_response();
    assert_ne!(resp.status, 100, "no 100 Continue for an oversized body");
    assert_gateway_error(&resp, 413, "body_too_large");
    assert!(
        resp.says_close(),
        "413 must announce the close: {}",
        show(&resp.raw)
    );
    c.wait_closed(Duration::from_secs(2))
        .expect("connection closed after the 413");
    assert_eq!(mock.count(), 0);
}

#[test]
fn oversized_content_length_is_413_before_the_body_is_sent() {
    let (mock, gw) = setup_with("max_request_body = \"1KiB\"", |_| Reply::ok("ok"));
    let mut c = gw.conn();
    // Only the head: the gateway must answer without waiting for the body.
    c.send(b"POST /up/e HTTP/1.1\r\nHost: gw\r\nContent-Length: 1025\r\n\r\n");
    c.set_read_timeout(Duration::from_secs(3));
    let resp = c.read_response();
    assert_gateway_error(&resp, 413, "body_too_large");
    assert!(
        resp.says_close(),
        "413 must announce the close: {}",
        show(&resp.raw)
    );
    c.wait_closed(Duration::from_secs(2))
        .expect("connection closed after the 413");
    assert_eq!(mock.count(), 0);
}

#[test]
fn chunked_body_over_the_limit_is_413_and_nothing_goes_upstream() {
    let (mock, gw) = setup_with("max_request_body = \"1KiB\"", |_| Reply::ok("ok"));
    let mut c = gw.conn();
    let chunk = "x".repeat(800);
    let req = format!(
        "POST /up/e HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    c.send(req.as_bytes());
    let resp = c.read_response();
    assert_gateway_error(&resp, 413, "body_too_large");
    assert_eq!(mock.count(), 0);
}

#[test]
fn body_exactly_at_the_limit_passes() {
    let (mock, gw) = setup_with("max_request_body = \"1KiB\"", |_| Reply::ok("ok"));
    let mut c = gw.conn();
    let body = "y".repeat(1024);
    let resp = c.roundtrip(
        format!("POST /up/e HTTP/1.1\r\nHost: gw\r\nContent-Length: 1024\r\n\r\n{body}").as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    assert_eq!(last(&mock).body, body.as_bytes());
    let half = "z".repeat(512);
    let resp = c.roundtrip(
        format!("POST /up/e HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n{half}\r\n200\r\n{half}\r\n0\r\n\r\n").as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    let r = last(&mock);
    assert_eq!(r.body.len(), 1024);
    assert_eq!(r.header("content-length"), Some("1024"));
}

// ---------------------------------------------------------------------------------------------
// Response head and framing
// ---------------------------------------------------------------------------------------------

#[test]
fn response_head_keeps_upstream_order_and_drops_hop_by_hop_headers() {
    let (_mock, gw) = setup(|_| {
        Reply::raw(
            &b"HTTP/1.1 201 Created\r\n\
               X-B: 1\r\n\
               Connection: X-Secret\r\n\
               X-Secret: s\r\n\
               Keep-Alive: timeout=5\r\n\
               set-cookie: a=b\r\n\
               X-Request-Id: from-upstream\r\n\
               Content-Length: 5\r\n\
               Proxy-Connection: keep-alive\r\n\
               Upgrade: h2c\r\n\
               Trailer: X-T\r\n\
               TE: trailers\r\n\
               X-A: 2\r\n\
               \r\n\
               hello"[..],
        )
    });
    let mut c = gw.conn();
    let resp = c.roundtrip(b"GET /up/r HTTP/1.1\r\nHost: gw\r\nX-Request-Id: rid-1\r\n\r\n");
    // the call's id is the gateway's, not the agent's `rid-1`
    let rid = resp.header("x-request-id").unwrap_or_default();
    assert!(valid_request_id(rid) && rid != "rid-1", "{rid}");
    let want = format!(
        "HTTP/1.1 201 Created\r\n\
         X-B: 1\r\n\
         set-cookie: a=b\r\n\
         X-A: 2\r\n\
         X-Request-Id: {rid}\r\n\
         Content-Length: 5\r\n\
         \r\n\
         hello"
    );
    assert_eq!(show(&resp.raw), show(want.as_bytes()));
}

#[test]
fn chunked_upstream_response_is_rechunked_and_trailers_dropped() {
    let (_mock, gw) = setup(|_| {
        Reply::raw(
            &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n\
               3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nX-T: 1\r\n\r\n"[..],
        )
    });
    let mut c = gw.conn();
    let resp = c.roundtrip(b"GET /up/r HTTP/1.1\r\nHost: gw\r\nX-Request-Id: rid-2\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.framing, Framing::Chunked, "{}", show(&resp.raw));
    assert_eq!(resp.headers_named("transfer-encoding"), vec!["chunked"]);
    assert!(resp.header("content-length").is_none());
    assert_eq!(resp.body, b"hello");
    assert!(
        resp.trailers.is_empty(),
        "trailers must be dropped: {}",
        show(&resp.raw)
    );
    assert!(
        resp.header("trailer").is_none(),
        "Trailer header must be dropped: {}",
        show(&resp.raw)
    );
    let names = resp.header_names();
    assert_eq!(
        names,
        vec!["content-type", "x-request-id", "transfer-encoding"],
        "{}",
        show(&resp.raw)
    );
    // Still in sync.
    let resp = c.roundtrip(&get("/up/again"));
    assert_eq!(resp.body, b"hello");
}

#[test]
fn close_delimited_upstream_response_is_chunked_to_an_http11_client() {
    let (mock, gw) = setup(|_| {
        Reply::close_after(&b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world"[..])
    });
    let mut c = gw.conn();
    let resp = c.roundtrip(&get("/up/r"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.framing, Framing::Chunked, "{}", show(&resp.raw));
    assert_eq!(resp.body, b"hello world");
    assert!(
        !resp.says_close(),
        "the client connection can stay open: {}",
        show(&resp.raw)
    );
    // The client connection survives the upstream close.
    let resp = c.roundtrip(&get("/up/r2"));
    assert_eq!(resp.body, b"hello world");
    assert_eq!(mock.count(), 2);
}

#[test]
fn close_delimited_upstream_response_is_close_delimited_to_an_http10_client() {
    let (_mock, gw) = setup(|_| {
        Reply::close_after(&b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world"[..])
    });
    let ex = send_raw_exchange(
        gw.port(),
        b"GET /up/r HTTP/1.0\r\nX-Request-Id: rid-3\r\n\r\n",
        IO_TIMEOUT,
    );
    assert!(
        ex.closed,
        "HTTP/1.0 response must end with a close: {}",
        show(&ex.bytes)
    );
    let resp = parse_response(&ex.bytes).unwrap();
    assert_eq!(resp.status_line(), "HTTP/1.1 200 OK");
    assert_eq!(resp.framing, Framing::Close, "{}", show(&ex.bytes));
    assert!(
        resp.header("transfer-encoding").is_none(),
        "no chunked to HTTP/1.0: {}",
        show(&ex.bytes)
    );
    assert_eq!(resp.body, b"hello world");
}

#[test]
fn head_response_keeps_content_length_and_has_no_body() {
    let (mock, gw) = setup(|r| {
        if r.method == "HEAD" {
            Reply::raw(
                &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"[..],
            )
        } else {
            Reply::ok("after-head")
        }
    });
    let mut c = gw.conn();
    c.send(b"HEAD /up/h HTTP/1.1\r\nHost: gw\r\n\r\n");
    let resp = c.read_head_response();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-length"),
        Some("1234"),
        "{}",
        show(&resp.raw)
    );
    assert!(resp.header("transfer-encoding").is_none());
    let stray = c.read_available(Duration::from_millis(300));
    assert!(
        stray.is_empty(),
        "bytes after a HEAD response: {}",
        show(&stray)
    );
    assert_eq!(last(&mock).method, "HEAD");
    let resp = c.roundtrip(&get("/up/next"));
    assert_eq!(resp.body_str(), "after-head");
}

#[test]
fn no_content_and_not_modified_responses_have_no_body() {
    let (_mock, gw) = setup(|r| match r.target.as_str() {
        "/base/204" => Reply::raw(&b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"[..]),
        "/base/304" => Reply::raw(&b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"[..]),
        _ => Reply::ok("next"),
    });
    let mut c = gw.conn();
    for (path, status) in [("/up/204", 204), ("/up/304", 304)] {
        c.send(&get(path));
        let resp = c.read_response();
        assert_eq!(resp.status, status);
        assert!(
            resp.header("transfer-encoding").is_none(),
            "{}",
            show(&resp.raw)
        );
        assert!(
            resp.header("content-length").is_none(),
            "{}",
            show(&resp.raw)
        );
        let stray = c.read_available(Duration::from_millis(300));
        assert!(stray.is_empty(), "bytes after a {status}: {}", show(&stray));
        let resp = c.roundtrip(&get("/up/next"));
        assert_eq!(resp.body_str(), "next");
    }
}

// ---------------------------------------------------------------------------------------------
// Connection management
// ---------------------------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (mock, gw) = setup(|r| {
        // Make the first one slow so a reordering gateway would be caught.
        if r.target == "/base/1" {
            std::thread::sleep(Duration::from_millis(200));
        }
        Reply::ok(&format!(
            "{} {}",
            r.target,
            String::from_utf8_lossy(&r.body)
        ))
    });
    let mut c = gw.conn();
    c.send(
        b"GET /up/1 HTTP/1.1\r\nHost: gw\r\n\r\n\
          POST /up/2 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc\
          GET /up/3 HTTP/1.1\r\nHost: gw\r\n\r\n",
    );
    let bodies: Vec<String> = (0..3).map(|_| c.read_response().body_str()).collect();
    assert_eq!(bodies, vec!["/base/1 ", "/base/2 abc", "/base/3 "]);
    assert_eq!(mock.count(), 3);
}

#[test]
fn http11_keeps_the_connection_until_connection_close() {
    let (_mock, gw) = setup(|_| Reply::ok("ok"));
    let mut c = gw.conn();
    for _ in 0..3 {
        let resp = c.roundtrip(&get("/up/k"));
        assert_eq!(resp.status, 200);
        assert!(!resp.says_close(), "{}", show(&resp.raw));
    }
    let resp = c.roundtrip(b"GET /up/k HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(
        resp.says_close(),
        "Connection: close must be echoed: {}",
        show(&resp.raw)
    );
    c.wait_closed(Duration::from_secs(2))
        .expect("closed after Connection: close");
}

#[test]
fn http10_closes_unless_keep_alive_is_requested() {
    let (_mock, gw) = setup(|_| Reply::ok("ok"));
    let mut c = gw.conn();
    let resp = c.roundtrip(b"GET /up/a HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"ok");
    assert!(
        resp.says_close(),
        "HTTP/1.0 without keep-alive: {}",
        show(&resp.raw)
    );
    c.wait_closed(Duration::from_secs(2))
        .expect("HTTP/1.0 connection closed");

    let mut c = gw.conn();
    for _ in 0..2 {
        let resp = c.roundtrip(b"GET /up/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"ok");
        assert!(!resp.says_close(), "{}", show(&resp.raw));
    }
}

#[test]
fn upstream_connections_are_pooled_and_reused() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let gw = Gateway::start(&config_with(1, "", &[proxy("up", &mock.url())]));
    let mut c = gw.conn();
    for _ in 0..3 {
        assert_eq!(c.roundtrip(&get("/up/p")).status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    // A new client connection on the same (single) worker reuses it too.
    let mut c2 = gw.conn();
    assert_eq!(c2.roundtrip(&get("/up/p")).status, 200);
    let reqs = mock.requests();
    let ids: Vec<usize> = reqs.iter().map(|r| r.conn_id).collect();
    assert_eq!(ids, vec![0, 0, 0, 0], "upstream connection per request");
    assert_eq!(mock.connections(), 1);
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// Streams 1 GiB from the upstream (Content-Length or chunked framing) and checks the count and
/// that the gateway's RSS stays within 64 MiB of its pre-transfer baseline.
fn one_gib(chunked: bool) {
    const SIZE: u64 = 1 << 30;
    const PIECE: usize = 64 * 1024;
    let (_mock, gw) = setup(move |r| {
        if r.target == "/base/small" {
            return Reply::ok("warm");
        }
        if chunked {
            let mut piece = format!("{PIECE:x}\r\n").into_bytes();
            piece.extend(std::iter::repeat_n(b'x', PIECE));
            piece.extend_from_slice(b"\r\n");
            Reply::actions(vec![
                Action::Write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
                Action::Repeat { bytes: piece, times: SIZE / PIECE as u64 },
                Action::Write(b"0\r\n\r\n".to_vec()),
            ])
        } else {
            Reply::actions(vec![
                Action::Write(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n").into_bytes(),
                ),
                Action::Repeat { bytes: vec![b'x'; PIECE], times: SIZE / PIECE as u64 },
            ])
        }
    });
    let mut c = gw.conn();
    assert_eq!(c.roundtrip(&get("/up/small")).status, 200);
    let baseline = gw.rss_kib().expect("VmRSS of the gateway");
    let start = Instant::now();
    c.send(&get("/up/big"));
    let resp = c.r.read_head(false).unwrap();
    assert_eq!(resp.status, 200);
    if chunked {
        assert_eq!(resp.framing, Framing::Chunked, "{}", show(&resp.head));
    } else {
        assert_eq!(
            resp.header("content-length"),
            Some(SIZE.to_string().as_str())
        );
    }
    let mut total: u64 = 0;
    let mut peak = baseline;
    let mut next_sample = 0u64;
    for _ in 0..100_000_000u64 {
        match c.r.read_body_part().unwrap() {
            Some(part) => total += part.len() as u64,
            None => break,
        }
        if total >= next_sample {
            peak = peak.max(gw.rss_kib().unwrap_or(0));
            next_sample += 16 << 20;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "1 GiB took over 90 s ({total} bytes so far)"
        );
    }
    peak = peak.max(gw.rss_kib().unwrap_or(0));
    assert_eq!(total, SIZE);
    let growth_mib = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!(
        "1 GiB (chunked: {chunked}) in {:?}; gateway RSS baseline {baseline} KiB, peak {peak} KiB",
        start.elapsed()
    );
    assert!(
        growth_mib < 64.0,
        "gateway RSS grew by {growth_mib:.1} MiB while streaming 1 GiB"
    );
    // The connection is still usable afterwards.
    assert_eq!(c.roundtrip(&get("/up/small")).body_str(), "warm");
}

#[test]
fn one_gib_content_length_response_streams_with_bounded_gateway_memory() {
    one_gib(false);
}

#[test]
fn one_gib_chunked_response_streams_with_bounded_gateway_memory() {
    one_gib(true);
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// Reads decoded body until `needle` has been seen (bounded by the socket timeout).
fn read_until(c: &mut Conn, acc: &mut Vec<u8>, needle: &str) {
    for _ in 0..10_000 {
        if String::from_utf8_lossy(acc).contains(needle) {
            return;
        }
        match c.r.read_body_part() {
            Ok(Some(p)) => acc.extend_from_slice(&p),
            Ok(None) => panic!("body ended before {needle:?}; got {}", show(acc)),
            Err(e) => panic!(
                "waiting for {needle:?} (the upstream holds the next event until it arrives): {e}; got {}",
                show(acc)
            ),
        }
    }
    panic!("gave up waiting for {needle:?}");
}

fn sse_test(chunked: bool) {
    let g1 = Gate::new();
    let g2 = Gate::new();
    let (h1, h2) = (g1.clone(), g2.clone());
    let (_mock, gw) = setup(move |_| {
        let ev = |s: &str| {
            if chunked {
                chunk(s)
            } else {
                s.as_bytes().to_vec()
            }
        };
        let head: &[u8] = if chunked {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        };
        let mut actions = vec![
            Action::Write(head.to_vec()),
            Action::Write(ev("data: one\n\n")),
            Action::Wait(h1.clone()),
            Action::Write(ev("data: two\n\n")),
            Action::Wait(h2.clone()),
            Action::Write(ev("data: three\n\n")),
        ];
        if chunked {
            actions.push(Action::Write(b"0\r\n\r\n".to_vec()));
        } else {
            actions.push(Action::Close);
        }
        Reply::actions(actions)
    });
    let mut c = gw.conn();
    c.set_read_timeout(Duration::from_secs(4));
    c.send(&get("/up/events"));
    let resp =
        c.r.read_head(false)
            .unwrap_or_else(|e| panic!("no response head while the first event is out: {e}"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut acc = Vec::new();
    read_until(&mut c, &mut acc, "data: one\n\n");
    assert!(!String::from_utf8_lossy(&acc).contains("two"));
    g1.open();
    read_until(&mut c, &mut acc, "data: two\n\n");
    g2.open();
    read_until(&mut c, &mut acc, "data: three\n\n");
    for _ in 0..1000 {
        match c.r.read_body_part().unwrap() {
            Some(p) => acc.extend_from_slice(&p),
            None => break,
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&acc),
        "data: one\n\ndata: two\n\ndata: three\n\n"
    );
}

#[test]
fn sse_events_stream_one_at_a_time_from_a_chunked_upstream() {
    sse_test(true);
}

#[test]
fn sse_events_stream_one_at_a_time_from_a_close_delimited_upstream() {
    sse_test(false);
}
