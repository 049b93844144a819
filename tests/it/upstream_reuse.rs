//! Pooled upstream connections never hand one caller another caller's bytes (issue 12): an
//! upstream that writes after a complete response (late body bytes, a body after HEAD / 204,
//! bytes after the last chunk, an unsolicited 408), or closes while idle, must not affect the
//! next call on that connection.
use crate::support::*;
use std::thread;
use std::time::Duration;

/// Every answer's body names the request it answers (`/up/call-N` → `call-N`); what follows
/// it is what a broken or hostile upstream writes after the response.
fn upstream(after: &'static [u8], delay: Duration, kind: &'static str) -> MockUpstream {
    MockUpstream::start(move |r| {
        let name = r.target.trim_start_matches('/').to_string();
        let mut resp = match kind {
            "head" => {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", name.len()).into_bytes()
            }
            "204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            // a 304's Content-Length describes the resource, never a body that follows
            "304" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\n".to_vec(),
            "chunked" => format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{name}\r\n0\r\n\r\n",
                name.len()
            )
            .into_bytes(),
            _ => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            )
            .into_bytes(),
        };
        let mut actions = Vec::new();
        if delay.is_zero() {
            resp.extend_from_slice(after);
            actions.push(Action::Write(resp));
        } else {
            actions.push(Action::Write(resp));
            actions.push(Action::Sleep(delay));
            if after == b"CLOSE" {
                actions.push(Action::Close);
            } else {
                actions.push(Action::Write(after.to_vec()));
            }
        }
        Reply::actions(actions)
    })
}

/// A whole forged response: if a caller ever reads this, it got another call's bytes.
const FORGED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN";

#[test]
fn no_caller_receives_bytes_written_after_another_callers_response() {
    let late = Duration::from_millis(40);
    let cases: &[(&str, &str, &[u8], Duration, &str)] = &[
        (
            "late bytes after a Content-Length body",
            "GET",
            FORGED,
            late,
            "cl",
        ),
        (
            "bytes right after a Content-Length body",
            "GET",
            FORGED,
            Duration::ZERO,
            "cl",
        ),
        (
            "a body after a HEAD answer",
            "HEAD",
            b"call-0",
            late,
            "head",
        ),
        ("a body after a 204", "GET", FORGED, late, "204"),
        ("a body after a 304", "GET", FORGED, late, "304"),
        (
            "a body right after a 304",
            "GET",
            FORGED,
            Duration::ZERO,
            "304",
        ),
        (
            "bytes after the last chunk",
            "GET",
            FORGED,
            Duration::ZERO,
            "chunked",
        ),
        (
            "late bytes after the last chunk",
            "GET",
            FORGED,
            late,
            "chunked",
        ),
        (
            "an unsolicited 408 on the idle connection",
            "GET",
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            late,
            "cl",
        ),
        (
            "a close while idle, then a POST",
            "POST",
            b"CLOSE",
            late,
            "cl",
        ),
    ];
    for (name, method, after, delay, kind) in cases {
        let up = upstream(after, *delay, kind);
        // one worker: every call goes through the same pool
        let gw = Gateway::start(&config_with(1, "", &[proxy("up", &up.url())]));
        let mut c = gw.conn();
        for i in 0..4 {
            let path = format!("/up/call-{i}");
            let req = if *method == "POST" {
                format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi")
            } else {
                format!("{method} {path} HTTP/1.1\r\nHost: gw\r\n\r\n")
            };
            c.send(req.as_bytes());
            let r = if *method == "HEAD" {
                c.read_head_response()
            } else {
                c.read_response()
            };
            let want = match *kind {
                "204" => 204,
                "304" => 304,
                _ => 200,
            };
            assert_eq!(r.status, want, "{name}: call {i}: {}", show(&r.raw));
            if *kind == "204" || *kind == "304" || *method == "HEAD" {
                assert!(r.body.is_empty(), "{name}: call {i}: {}", show(&r.raw));
            } else {
                assert_eq!(r.body_str(), format!("call-{i}"), "{name}: call {i}");
            }
            assert!(
                !show(&r.raw).contains("STOLEN"),
                "{name}: call {i}: {}",
                show(&r.raw)
            );
            // let the upstream's stray bytes (or its close) arrive on the idle connection
            thread::sleep(Duration::from_millis(120));
        }
        // every call reached the upstream once: no retry duplicated a request
        assert_eq!(up.count(), 4, "{name}");
        let stray = !matches!(*after, b"CLOSE");
        if stray && !delay.is_zero() {
            let log = gw.log_when(
                |l| l.contains("bytes arrived on an idle upstream connection"),
                Duration::from_secs(2),
            );
            assert!(
                log.contains("bytes arrived on an idle upstream connection"),
                "{name}: {log}"
            );
        }
    }
}

#[test]
fn a_408_to_a_request_on_a_pooled_connection_is_retried_on_a_fresh_one() {
    // the second request on a connection gets the upstream's idle-timeout 408, then a close
    let up = MockUpstream::start(|r| {
        if r.index_on_conn == 1 {
            Reply::close_after(
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::ok(r.target.trim_start_matches('/'))
        }
    });
    let gw = Gateway::start(&config_with(1, "", &[proxy("up", &up.url())]));
    let mut c = gw.conn();
    for (i, method) in ["GET", "POST", "POST"].iter().enumerate() {
        let req = format!("{method} /up/r{i} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n");
        let r = c.roundtrip(req.as_bytes());
        assert_eq!(r.status, 200, "call {i}: {}", show(&r.raw));
        assert_eq!(r.body_str(), format!("r{i}"), "call {i}");
    }
}
