//! Upstreams that refuse, stall, hang up or answer garbage.
use crate::support::*;
use std::thread;
use std::time::{Duration, Instant};

fn gateway_for(upstream: &str, limits: &str) -> Gateway {
    Gateway::start(&config_with(2, limits, &[proxy("up", upstream)]))
}

/// As `gateway_for`, with an audit trail in `<dir>/audit`.
fn audited_gateway_for(upstream: &str) -> Gateway {
    let toml = config_with(2, "", &[proxy("up", upstream)]).replacen(
        "\n\n",
        "\n\n[audit]\ndir = \"audit\"\nfsync = \"1s\"\n\n",
        1,
    );
    Gateway::start(&toml)
}

/// The call records in the gateway's audit trail, once there are `n`.
fn wait_calls(gw: &Gateway, n: usize) -> Vec<portcullis::internals::observe::audit::StoredRecord> {
    let dir = gw.dir().join("audit");
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let r = crate::audit::calls(&dir);
        (r.len() >= n).then_some(r)
    })
    .unwrap_or_else(|| panic!("{n} audit records"))
}

#[test]
fn connection_refused_is_502_upstream_unreachable() {
    let dead = free_port();
    let gw = audited_gateway_for(&format!("http://127.0.0.1:{dead}"));
    let mut c = gw.conn();
    let resp = c.roundtrip(b"GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: dead-1\r\n\r\n");
    let id = assert_gateway_error(&resp, 502, "upstream_unreachable");
    // the call's id is the gateway's; the agent's is kept beside it in the record
    assert_ne!(id, "dead-1", "an agent must not choose the audit id");
    assert_eq!(id.len(), 32, "{id}");
    let recs = wait_calls(&gw, 1);
    assert_eq!(recs[0].id.as_deref(), Some(id.as_str()));
    assert_eq!(recs[0].agent_request_id.as_deref(), Some("dead-1"));
    assert!(
        !resp.says_close(),
        "a 502 need not close the client connection: {}",
        show(&resp.raw)
    );
    // And again on the same connection.
    let resp = c.roundtrip(&get("/up/x"));
    assert_gateway_error(&resp, 502, "upstream_unreachable");
}

/// Two calls with the same agent `X-Request-Id` (and one with a forged, over-long or malformed
/// one) get distinct gateway ids: the agent cannot collide or forge audit ids. The upstream
/// and the agent see the gateway's id; the record keeps the agent's valid value.
#[test]
fn an_agent_request_id_never_becomes_the_audit_id() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = audited_gateway_for(&mock.url());
    let long = "a".repeat(129);
    let sent = ["same-1", "same-1", long.as_str(), "bad id\"x"];
    let mut ids = Vec::new();
    for a in sent {
        let raw = send_raw(
            gw.port(),
            format!(
                "GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {a}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let resp = parse_response(&raw).unwrap();
        assert_eq!(resp.status, 200, "{}", show(&raw));
        let id = resp.header("x-request-id").unwrap().to_string();
        assert_eq!(id.len(), 32, "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "the same agent id twice: two record ids");
    let got: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap_or("").to_string())
        .collect();
    assert_eq!(got, ids, "the upstream sees the gateway's ids");
    let recs = wait_calls(&gw, 4);
    for (i, id) in ids.iter().enumerate() {
        let r = recs
            .iter()
            .find(|r| r.id.as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no record {id}"));
        let want = if i < 2 { Some("same-1") } else { None };
        assert_eq!(r.agent_request_id.as_deref(), want, "call {i}");
    }
}

#[test]
fn no_response_head_within_upstream_timeout_is_504() {
    let mock = MockUpstream::start(|_| {
        Reply::actions(vec![
            Action::Sleep(Duration::from_secs(4)),
            Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ])
    });
    let gw = gateway_for(&mock.url(), "upstream_timeout = \"1s\"");
    let mut c = gw.conn();
    let start = Instant::now();
    let resp = c.roundtrip(&get("/up/slow"));
    let took = start.elapsed();
    assert_gateway_error(&resp, 504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(900),
        "504 after only {took:?}"
    );
    assert!(
        took < Duration::from_millis(3500),
        "504 took {took:?} with upstream_timeout = 1s"
    );
    assert_eq!(mock.count(), 1);
}

#[test]
fn upstream_closing_before_any_response_is_502() {
    let mock = MockUpstream::start(|_| Reply::actions(vec![Action::Close]));
    let gw = gateway_for(&mock.url(), "");
    let resp = gw.conn().roundtrip(&get("/up/x"));
    assert_gateway_error(&resp, 502, "upstream_unreachable");
    assert!(mock.count() >= 1);
}

/// Each upstream answer here is unusable; the client must get the gateway's 502 instead.
#[test]
fn truncated_or_malformed_upstream_heads_are_502() {
    let table: &[(&str, &[u8])] = &[
        ("closes_mid_head", b"HTTP/1.1 200 OK\r\nContent-Le"),
        ("closes_after_status_line", b"HTTP/1.1 200 OK\r\n"),
        (
            "content_length_and_chunked",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "conflicting_content_lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        ("not_http", b"hello there\r\n\r\n"),
        (
            "bad_status_code",
            b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "header_without_colon",
            b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n",
        ),
        ("bare_lf_head", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in table {
        let bytes = bytes.to_vec();
        let mock = MockUpstream::start(move |_| Reply::close_after(bytes.clone()));
        let gw = gateway_for(&mock.url(), "");
        let mut c = gw.conn();
        c.send(&get("/up/x"));
        match c.try_read_response() {
            Ok(resp) => {
                let ok = resp.status == 502
                    && resp.header("content-type") == Some("application/json")
                    && serde_json::from_slice::<serde_json::Value>(&resp.body)
                        .ok()
                        .and_then(|v| {
                            v.pointer("/error/code")
                                .and_then(|c| c.as_str())
                                .map(str::to_string)
                        })
                        .as_deref()
                        == Some("upstream_unreachable");
                if !ok {
                    failures.push(format!(
                        "[{name}] expected 502 upstream_unreachable, got: {}",
                        show(&resp.raw)
                    ));
                }
            }
            Err(e) => failures.push(format!("[{name}] no usable response: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_body_pause_longer_than_upstream_timeout_is_not_cut_but_the_stream_timeout_is() {
    // the head comes at once; the body pauses 1.5 s (an LLM thinking) with upstream_timeout 1s
    let mock = MockUpstream::start(|r| {
        let pause = if r.target.ends_with("long") {
            3000
        } else {
            1500
        };
        Reply::actions(vec![
            Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab".to_vec()),
            Action::Sleep(Duration::from_millis(pause)),
            Action::Write(b"cd".to_vec()),
        ])
    });
    let gw = gateway_for(
        &mock.url(),
        "upstream_timeout = \"1s\"\nupstream_stream_timeout = \"2s\"",
    );
    let r = gw.conn().roundtrip(&get("/up/thinking"));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(r.body_str(), "abcd");
    // a pause beyond upstream_stream_timeout cuts the response (the agent sees it end early)
    let mut c = gw.conn();
    c.send(&get("/up/long"));
    assert!(
        c.try_read_response().is_err(),
        "a cut response cannot be read whole"
    );
}

#[test]
fn a_request_body_dribbled_slowly_is_cut_at_body_timeout() {
    let mock = MockUpstream::start(|_| Reply::ok("never"));
    let gw = gateway_for(&mock.url(), "body_timeout = \"1s\"\nidle_timeout = \"5s\"");
    let mut c = gw.conn();
    c.send(b"POST /up/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n");
    // one byte every 200 ms: each read is well within idle_timeout, the whole is not
    let start = Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        if c.try_send(b"a").is_err() {
            cut = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
        if start.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let closed = cut || c.wait_closed(Duration::from_secs(3)).is_ok();
    assert!(closed, "the dribbled body was not cut");
    assert_eq!(mock.count(), 0, "nothing reached the upstream");
}
