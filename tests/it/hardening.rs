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
