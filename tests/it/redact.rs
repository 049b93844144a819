//! Response redaction end to end: JSON (Content-Length, chunked, gzip) and SSE, streamed.
use crate::support::*;
use std::io::Write;
use std::time::Duration;

fn config(upstream: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = 1

[[proxies]]
name = "up"
upstream = "{upstream}"
default_effect = "allow"

  [[proxies.redact]]
  paths = ["$..ssn", "$.data[*].account_number"]
  action = "remove"

  [[proxies.redact]]
  paths = ["$.owner.email"]
  action = "mask"
{extra}
"#
    )
}

const DOC: &str = r#"{"data":[{"id":1,"account_number":"DE44500105175407324931","ssn":"078-05-1120","name":"a"},{"id":2,"account_number":"X","name":"b"}],"owner":{"email":"x@y.z","ssn":"111-22-3333"},"next":null}"#;
const REDACTED: &str = r#"{"data":[{"id":1,"name":"a"},{"id":2,"name":"b"}],"owner":{"email":"[REDACTED]"},"next":null}"#;

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

#[test]
fn json_with_content_length_is_redacted_and_sent_chunked() {
    let mock = MockUpstream::start(|_| {
        Reply::with(
            200,
            "OK",
            &[("Content-Type", "application/json; charset=utf-8")],
            DOC.as_bytes(),
        )
    });
    let gw = Gateway::start(&config(&mock.url(), ""));
    let mut c = gw.conn();
    let r =
        c.roundtrip(b"GET /up/accounts HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip, br\r\n\r\n");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(r.body_str(), REDACTED);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.header("content-length").is_none());
    // the upstream was asked for an uncompressed body
    let got = mock.requests().pop().unwrap();
    assert_eq!(
        got.headers_named("accept-encoding"),
        vec!["identity".to_string()]
    );
    // the connection stays usable; non-JSON passes untouched
    let r = c.roundtrip(&get("/up/again"));
    assert_eq!(r.body_str(), REDACTED);
}

#[test]
fn non_json_responses_pass_through_byte_for_byte() {
    let mock = MockUpstream::start(|_| {
        Reply::with(200, "OK", &[("Content-Type", "text/plain")], DOC.as_bytes())
    });
    let gw = Gateway::start(&config(&mock.url(), ""));
    let r = gw.conn().roundtrip(&get("/up/plain"));
    assert_eq!(r.body_str(), DOC);
    assert_eq!(
        r.header("content-length"),
        Some(DOC.len().to_string().as_str())
    );
}

#[test]
fn chunked_json_split_anywhere_is_redacted() {
    for split in [1usize, 3, 17, 64] {
        let mock = MockUpstream::start(move |_| {
            let mut actions = vec![Action::Write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.api+json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            )];
            for piece in DOC.as_bytes().chunks(split) {
                actions.push(Action::Write(chunk(piece)));
            }
            actions.push(Action::Write(b"0\r\n\r\n".to_vec()));
            Reply::actions(actions)
        });
        let gw = Gateway::start(&config(&mock.url(), ""));
        let r = gw.conn().roundtrip(&get("/up/chunked"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), REDACTED, "split {split}");
    }
}

#[test]
fn gzip_from_an_upstream_that_ignores_identity_is_inflated_and_redacted() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(DOC.as_bytes()).unwrap();
    let body = gz.finish().unwrap();
    let mock = MockUpstream::start(move |_| {
        Reply::with(
            200,
            "OK",
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
            ],
            &body,
        )
    });
    let gw = Gateway::start(&config(&mock.url(), ""));
    let r = gw.conn().roundtrip(&get("/up/gz"));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert!(
        r.header("content-encoding").is_none(),
        "the body is sent decoded"
    );
    assert_eq!(r.body_str(), REDACTED);
}

#[test]
fn invalid_json_is_cut_by_default_and_passed_when_configured() {
    let bad = br#"{"data":[{"ssn":"1"}], oops"#.to_vec();
    let b2 = bad.clone();
    let mock = MockUpstream::start(move |_| {
        Reply::with(200, "OK", &[("Content-Type", "application/json")], &b2)
    });
    let gw = Gateway::start(&config(&mock.url(), ""));
    let mut c = gw.conn();
    c.send(&get("/up/bad"));
    let head = c.r.read_head(false).unwrap();
    assert_eq!(head.status, 200);
    let mut acc = Vec::new();
    let mut complete = false;
    for _ in 0..100 {
        match c.r.read_body_part() {
            Ok(Some(p)) => acc.extend_from_slice(&p),
            Ok(None) => {
                complete = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert!(
        !complete,
        "a body that cannot be redacted is cut, not completed"
    );
    assert!(
        !String::from_utf8_lossy(&acc).contains("\"ssn\""),
        "{}",
        show(&acc)
    );

    // on_invalid = "pass" (every table): the rest goes through unmodified past the error
    let pass = config(&mock.url(), "").replace(
        "action = \"remove\"",
        "action = \"remove\"\n  on_invalid = \"pass\"",
    );
    let pass = pass.replace(
        "action = \"mask\"",
        "action = \"mask\"\n  on_invalid = \"pass\"",
    );
    let gw = Gateway::start(&pass);
    let r = gw.conn().roundtrip(&get("/up/bad"));
    assert_eq!(r.status, 200);
    assert!(r.body_str().ends_with(" oops"), "{}", r.body_str());
}

#[test]
fn sse_events_are_redacted_and_still_flushed_one_by_one() {
    let g1 = Gate::new();
    let h1 = g1.clone();
    let mock = MockUpstream::start(move |_| {
        Reply::actions(vec![
            Action::Write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            ),
            Action::Write(chunk(b"data: {\"ssn\":\"1\",\"t\":\"he")),
            Action::Write(chunk(b"llo\"}\n\n")),
            Action::Wait(h1.clone()),
            Action::Write(chunk(b"event: x\ndata: {\"owner\":{\"email\":\"a@b\"}}\n\ndata: [DONE]\n\n")),
            Action::Write(b"0\r\n\r\n".to_vec()),
        ])
    });
    let gw = Gateway::start(&config(&mock.url(), ""));
    let mut c = gw.conn();
    c.set_read_timeout(Duration::from_secs(4));
    c.send(&get("/up/stream"));
    let head = c.r.read_head(false).unwrap();
    assert_eq!(head.status, 200);
    let mut acc = Vec::new();
    // the first event arrives while the upstream holds the second
    while !String::from_utf8_lossy(&acc).contains("\n\n") {
        match c.r.read_body_part() {
            Ok(Some(p)) => acc.extend_from_slice(&p),
            other => panic!("first event not flushed: {other:?} {}", show(&acc)),
        }
    }
    assert_eq!(String::from_utf8_lossy(&acc), "data: {\"t\":\"hello\"}\n\n");
    g1.open();
    for _ in 0..100 {
        match c.r.read_body_part().unwrap() {
            Some(p) => acc.extend_from_slice(&p),
            None => break,
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&acc),
        "data: {\"t\":\"hello\"}\n\nevent: x\ndata: {\"owner\":{\"email\":\"[REDACTED]\"}}\n\ndata: [DONE]\n\n"
    );
}

#[test]
fn bad_redact_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        config("http://127.0.0.1:9", "")
            .replace("$.owner.email", "owner.email")
            .replace("{PORT}", "1"),
    )
    .unwrap();
    let out = run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("r.toml:15: proxies[0].redact[1].paths"),
        "{text}"
    );
}

#[test]
fn an_empty_json_body_passes_a_redacting_proxy() {
    // the 202 an MCP server answers a notification with, and a 200 with Content-Length: 0
    for (status, reason) in [(202, "Accepted"), (200, "OK")] {
        let up = MockUpstream::start(move |_| {
            Reply::with(status, reason, &[("Content-Type", "application/json")], b"")
        });
        let gw = Gateway::start(&config(&up.url(), ""));
        let r = gw.conn().roundtrip(&get("/up/mcp"));
        assert_eq!(r.status, status, "{}", show(&r.raw));
        assert!(r.body.is_empty(), "{}", show(&r.raw));
    }
}

/// The gateway's peak RSS (VmHWM, KiB).
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Issue 12: a compression bomb to a redacting proxy (64 MiB of JSON whitespace, ~64 KiB
/// gzipped, arriving in one or two upstream reads) is inflated in bounded steps, each written
/// to the agent before the next: the gateway's peak RSS grows by far less than the inflated
/// size (before the fix a whole upstream read was inflated and redacted in memory first:
/// +128 MiB or more here). The body arrives whole and redacted.
#[test]
fn a_gzip_bomb_costs_time_not_memory() {
    const PAD: usize = 64 << 20;
    let mut doc = b"{\"ssn\":\"078-05-1120\",".to_vec();
    doc.resize(doc.len() + PAD, b' ');
    doc.extend_from_slice(b"\"x\":1}");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&doc).unwrap();
    let gz = e.finish().unwrap();
    drop(doc);
    assert!(gz.len() < 1 << 20, "a bomb: {} bytes compressed", gz.len());
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    head.extend_from_slice(&gz);
    let reply = Reply::raw(head);
    let mock = MockUpstream::start(move |req| {
        if req.target.ends_with("/warm") {
            Reply::with(
                200,
                "OK",
                &[("Content-Type", "application/json")],
                b"{\"ssn\":1}",
            )
        } else {
            reply.clone()
        }
    });
    let gw = Gateway::start(&config(&mock.url(), ""));
    let mut c = gw.conn();
    assert_eq!(c.roundtrip(&get("/up/warm")).status, 200);
    let before = vm_hwm_kib(gw.pid());
    // read the (chunked) answer as it streams, keeping only its size and tail
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /up/bomb HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut dec = ChunkedDecoder::new();
    let (mut total, mut head_done, mut raw) = (0usize, false, Vec::new());
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = std::io::Read::read(&mut s, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        if !head_done {
            raw.extend_from_slice(data);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                !head.to_ascii_lowercase().contains("content-encoding"),
                "{head}"
            );
            head_done = true;
            let rest = raw[end + 4..].to_vec();
            let mut out = Vec::new();
            dec.feed(&rest, &mut out).expect("chunked");
            total += out.len();
            tail = out;
            data = &[];
        }
        if !data.is_empty() {
            let mut out = Vec::new();
            dec.feed(data, &mut out).expect("chunked");
            total += out.len();
            if !out.is_empty() {
                tail = out;
            }
        }
        if dec.is_done() {
            break;
        }
    }
    assert!(dec.is_done(), "the body ended early after {total} bytes");
    assert!(
        tail.ends_with(b"\"x\":1}"),
        "{}",
        String::from_utf8_lossy(&tail)
    );
    assert_eq!(
        total,
        PAD + b"{\"x\":1}".len(),
        "the ssn member removed, all else kept"
    );
    let after = vm_hwm_kib(gw.pid());
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "gzip bomb: {} KiB compressed, {PAD} bytes inflated; gateway VmHWM {before} KiB -> {after} KiB (+{grown_mib} MiB)",
        gz.len() / 1024
    );
    assert!(
        grown_mib < 32,
        "peak RSS grew by {grown_mib} MiB for a {} KiB gzip body",
        gz.len() / 1024
    );
}
