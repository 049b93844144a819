//! The client address (issue 20): the TCP peer in the access log and the audit record, and
//! `X-Forwarded-For` believed only from `[server] trusted_proxies`. Calls come from two
//! loopback addresses: 127.0.0.1 (the trusted proxy) and 127.0.0.2 (an agent that is not).
use crate::support::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn config(upstream: &str, trusted: Option<&str>, audit: bool) -> String {
    let trusted = trusted
        .map(|t| format!("trusted_proxies = [{t}]\n"))
        .unwrap_or_default();
    let audit = if audit {
        "[audit]\ndir = \"audit\"\nfsync = \"1s\"\n"
    } else {
        ""
    };
    format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 1\n{trusted}\n{audit}\n\
         [[proxies]]\nname = \"up\"\nupstream = \"{upstream}\"\ndefault_effect = \"allow\"\n"
    )
}

/// One GET from `src` (a loopback address) with the given extra header lines; the response
/// and the source port used.
fn call_from(src: Ipv4Addr, port: u16, tag: &str, extra: &[String]) -> (Response, u16) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((src, 0)).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)).into(), T)
        .unwrap();
    let mut s: TcpStream = sock.into();
    let local = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(T)).unwrap();
    let mut req = format!("GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {tag}\r\n");
    for l in extra {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let r = parse_response(&out).unwrap_or_else(|e| panic!("{tag}: {e}: {}", show(&out)));
    (r, local)
}

/// The audit record with `agent_request_id == tag` (waits for the writer, bounded).
fn record(dir: &Path, tag: &str) -> serde_json::Value {
    let found = poll_until(T, Duration::from_millis(20), || {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "jsonl"));
        files.sort();
        files.iter().find_map(|f| {
            std::fs::read_to_string(f).ok()?.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["agent_request_id"] == tag).then_some(v)
            })
        })
    });
    found.unwrap_or_else(|| panic!("no audit record for {tag}"))
}

/// The access line of the call tagged `tag`.
fn access_line(gw: &Gateway, tag: &str) -> String {
    let needle = format!("agent_request_id=\"{tag}\"");
    let log = gw.log_when(|l| l.contains(&needle), T);
    log.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no access line for {tag}:\n{log}"))
        .to_string()
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[test]
fn forwarded_for_is_believed_only_from_a_trusted_peer() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&config(&mock.url(), Some("\"127.0.0.1/32\""), true));
    let audit = gw.dir().join("audit");
    let xff = |v: &str| format!("X-Forwarded-For: {v}");

    // (tag, source, header lines, expected client, whether the peer is named apart)
    struct Case {
        tag: &'static str,
        src: Ipv4Addr,
        lines: Vec<String>,
        client: Option<&'static str>,
    }
    let cases = vec![
        // an agent that is not a trusted proxy forges the header: never believed
        Case {
            tag: "untrusted-forged",
            src: OTHER,
            lines: vec![xff("203.0.113.9")],
            client: None,
        },
        Case {
            tag: "trusted",
            src: LOCAL,
            lines: vec![xff("203.0.113.9")],
            client: Some("203.0.113.9"),
        },
        // the client forged an address on the left: the rightmost untrusted one wins
        Case {
            tag: "trusted-prepended",
            src: LOCAL,
            lines: vec![xff("1.1.1.1, 203.0.113.5")],
            client: Some("203.0.113.5"),
        },
        // several lines are one list; the trusted hop (127.0.0.1) is skipped
        Case {
            tag: "trusted-two-lines",
            src: LOCAL,
            lines: vec![xff("198.51.100.7"), xff("127.0.0.1")],
            client: Some("198.51.100.7"),
        },
        Case {
            tag: "trusted-ipv6",
            src: LOCAL,
            lines: vec![xff("[2001:db8::7]:443")],
            client: Some("2001:db8::7"),
        },
        // garbage where it must be read: ignored, the peer stands
        Case {
            tag: "trusted-garbage",
            src: LOCAL,
            lines: vec![xff("203.0.113.9, not-an-ip")],
            client: None,
        },
        Case {
            tag: "trusted-empty-element",
            src: LOCAL,
            lines: vec![xff("203.0.113.9,,")],
            client: None,
        },
        // more trusted hops than the walk allows: ignored
        Case {
            tag: "trusted-overlong",
            src: LOCAL,
            lines: vec![xff(&vec!["127.0.0.1"; 40].join(", "))],
            client: None,
        },
        // a huge element: ignored
        Case {
            tag: "trusted-huge",
            src: LOCAL,
            lines: vec![xff(&"9".repeat(4000))],
            client: None,
        },
        // the header names the peer itself: nothing to add
        Case {
            tag: "trusted-self",
            src: LOCAL,
            lines: vec![xff("127.0.0.1")],
            client: None,
        },
    ];
    for c in &cases {
        let (r, port) = call_from(c.src, gw.port(), c.tag, &c.lines);
        assert_eq!(r.status, 200, "{}: {}", c.tag, show(&r.raw));
        let peer = format!("{}:{port}", c.src);
        let rec = record(&audit, c.tag);
        let line = access_line(&gw, c.tag);
        match c.client {
            None => {
                assert_eq!(rec["client"], peer.as_str(), "{}: {rec}", c.tag);
                assert!(rec.get("peer").is_none(), "{}: {rec}", c.tag);
                assert!(
                    line.contains(&format!(" client={peer} peer={peer} ")),
                    "{}: {line}",
                    c.tag
                );
            }
            Some(client) => {
                assert_eq!(rec["client"], client, "{}: {rec}", c.tag);
                assert_eq!(rec["peer"], peer.as_str(), "{}: {rec}", c.tag);
                assert!(
                    line.contains(&format!(" client={client} peer={peer} ")),
                    "{}: {line}",
                    c.tag
                );
            }
        }
    }
    // the ignored headers are logged at debug, never as an error
    let log = gw.stderr_text() + &gw.stdout_text();
    assert!(log.contains("x-forwarded-for ignored"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    // the chain with the new member verifies
    let out = run_portcullis(
        &["audit", "verify", audit.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_trusted_proxies_the_header_is_never_read() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&config(&mock.url(), None, true));
    let (r, port) = call_from(
        LOCAL,
        gw.port(),
        "no-trust",
        &["X-Forwarded-For: 203.0.113.9".to_string()],
    );
    assert_eq!(r.status, 200);
    let rec = record(&gw.dir().join("audit"), "no-trust");
    assert_eq!(rec["client"], format!("127.0.0.1:{port}"));
    assert!(rec.get("peer").is_none(), "{rec}");
    // the upstream still gets the header as sent (the gateway does not rewrite it)
    let got = mock.requests();
    assert_eq!(got[0].header("x-forwarded-for"), Some("203.0.113.9"));
}

#[test]
fn trusted_proxies_errors_name_the_entry_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    std::fs::write(
        &p,
        "[server]\nlisten = [\"127.0.0.1:1\"]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.1.2.3/8\", \"nope\"]\n\
         [[proxies]]\nname = \"a\"\nupstream = \"http://127.0.0.1:9\"\ndefault_effect = \"deny\"\n",
    )
    .unwrap();
    let out = run_portcullis(
        &["check", "-c", p.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "t.toml:3: server.trusted_proxies[1]: \"10.1.2.3/8\" has host bits set below /8: write \"10.0.0.0/8\""
        ),
        "{err}"
    );
    assert!(
        err.contains("t.toml:3: server.trusted_proxies[2]: \"nope\" is not an address block"),
        "{err}"
    );
}

/// Without `[audit]` the access line still names the proxy, the path and the client, and
/// writes numbers as numbers (not `Some(200)`).
#[test]
fn access_line_without_audit_is_complete() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&config(&mock.url(), None, false));
    let (r, port) = call_from(LOCAL, gw.port(), "plain", &[]);
    assert_eq!(r.status, 200);
    let line = access_line(&gw, "plain");
    for want in [
        format!(" client=127.0.0.1:{port} peer=127.0.0.1:{port} "),
        " proxy=\"up\" ".to_string(),
        " method=\"GET\" path=/up/x status=200 code=\"-\" ".to_string(),
        " upstream_status=200 upstream_us=".to_string(),
    ] {
        assert!(line.contains(&want), "{want:?} not in {line}");
    }
    assert!(!line.contains("Some("), "{line}");
    assert!(!line.contains("None"), "{line}");
    // a refusal before any upstream: dashes, not Debug
    let raw = send_raw(
        gw.port(),
        b"GET /nope/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: refused\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(parse_response(&raw).unwrap().status, 404);
    let line = access_line(&gw, "refused");
    assert!(
        line.contains(" proxy=\"-\" ") && line.contains(" upstream_status=- upstream_us=- "),
        "{line}"
    );
    assert!(line.contains(" code=\"unknown_proxy\" "), "{line}");
}
