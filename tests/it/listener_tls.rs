//! TLS on the agent listener (issue 17): `[server] tls = { cert, key }` (secret references),
//! curl and Python `requests` through it, keep-alive, plain HTTP refused, certificates
//! reloaded on SIGHUP, and config errors as `file:line: key: message`.
use crate::forward::{
    BOT_KEY, TARGET, audit_calls, curl, forward_config, python, start_forward, wait_audit,
};
use crate::support::*;
use std::io::{Read, Write};
use std::time::Duration;

const TLS: &str = r#"tls = { cert = "file:gw.crt", key = "file:gw.key" }"#;

fn files(pki: &TestPki) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("gw.crt", pki.leaf_cert_pem.clone().into_bytes()),
        ("gw.key", pki.leaf_key_pem.clone().into_bytes()),
        ("ca.pem", pki.ca_pem.clone().into_bytes()),
    ]
}

fn start_tls(mock: &MockUpstream, pki: &TestPki, server_extra: &str) -> Gateway {
    let f = files(pki);
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    start_forward(
        &forward_config(&mock.url(), &format!("{TLS}\n{server_extra}"), ""),
        &refs,
    )
}

/// curl over TLS (trusting the test CA): path-prefix call with the agent key, the upstream gets
/// the target credential, the audit names the agent; a denied path is 403 over TLS too.
#[test]
fn curl_over_the_tls_listener() {
    let mock = MockUpstream::start(|_| Reply::ok("tls-fine"));
    let pki = make_pki();
    let gw = start_tls(&mock, &pki, "");
    let ca = gw.dir().join("ca.pem");
    let base = format!("https://localhost:{}", gw.port());
    let call = |path: &str| {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &format!("x-api-key: {BOT_KEY}"),
            &format!("{base}{path}"),
        ])
    };
    let (code, text) = call("/api/v1/a");
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("tls-fine"), "{text}");
    let (code, text) = call("/api/v1/admin/b");
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("denied_by_rule"), "{text}");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {TARGET}").as_str())
    );
    assert_eq!(reqs[0].header("x-api-key"), None);
    let recs = wait_audit(gw.dir(), 2);
    assert_eq!(recs[0]["agent"], "bot");
    assert_eq!(recs[0]["status"], 200);
    assert_eq!(recs[1]["status"], 403);
    // without the CA the client refuses the gateway's certificate
    let (code, _) = curl(&[&format!("{base}/api/v1/a")]);
    assert_eq!(code, 0, "an untrusted certificate must fail the handshake");
}

/// Python `requests` (REQUESTS_CA_BUNDLE) over one kept-alive session: three calls, and a POST
/// body through TLS reaches the upstream intact.
#[test]
fn python_requests_over_the_tls_listener() {
    let mock = MockUpstream::start(|r| Reply::ok(&format!("got {}", r.body.len())));
    let pki = make_pki();
    let gw = start_tls(&mock, &pki, "");
    let ca = gw.dir().join("ca.pem");
    let script = format!(
        "import requests\n\
         s = requests.Session()\n\
         s.headers['x-api-key'] = '{BOT_KEY}'\n\
         for i in range(2):\n    r = s.get('https://localhost:{p}/api/v1/x')\n    print(r.status_code, r.text)\n\
         r = s.post('https://localhost:{p}/api/v1/y', data=b'z' * 100000)\n\
         print(r.status_code, r.text)\n",
        p = gw.port()
    );
    let out = python(&script, &[("REQUESTS_CA_BUNDLE", ca.to_str().unwrap())]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["200 got 0", "200 got 0", "200 got 100000"],
        "{out}"
    );
    assert_eq!(mock.count(), 3);
    assert_eq!(wait_audit(gw.dir(), 3).len(), 3);
}

/// Plain HTTP to a TLS listener is not served (the handshake fails and is counted); a client
/// that stalls mid-handshake is cut at `head_timeout`; a garbage ClientHello does not disturb
/// the next client.
#[test]
fn plain_http_and_broken_handshakes_are_refused() {
    let mock = MockUpstream::start(|_| Reply::ok("x"));
    let pki = make_pki();
    let gw = start_forward(
        &forward_config(&mock.url(), TLS, "")
            .replace("[audit]", "[limits]\nhead_timeout = \"1s\"\n\n[audit]"),
        &files(&pki)
            .iter()
            .map(|(n, b)| (*n, b.as_slice()))
            .collect::<Vec<_>>(),
    );
    // plain HTTP: no HTTP answer comes back
    let ex = send_raw_exchange(
        gw.port(),
        format!("GET /api/v1/x HTTP/1.1\r\nHost: x\r\nx-api-key: {BOT_KEY}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(!ex.bytes.starts_with(b"HTTP/"), "{}", show(&ex.bytes));
    // a stalled handshake: the gateway closes it (bounded by head_timeout)
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40]).unwrap();
    let mut buf = [0u8; 64];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed, "a stalled handshake is closed at head_timeout");
    // the listener still serves a real client
    let ca = gw.dir().join("ca.pem");
    let (code, text) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        &format!("x-api-key: {BOT_KEY}"),
        &format!("https://localhost:{}/api/v1/a", gw.port()),
    ]);
    assert_eq!(code, 200, "{text}");
    assert!(audit_calls(gw.dir()).iter().all(|r| r["status"] == 200));
    let log = gw.log_when(
        |l| l.contains("agent TLS handshake failed"),
        Duration::from_secs(5),
    );
    assert!(log.contains("agent TLS handshake failed"), "{log}");
}

/// SIGHUP re-reads the certificate: after the files are swapped for a leaf of another CA and
/// the gateway reloaded, clients trusting the new CA get through and the old CA fails.
#[test]
fn sighup_reloads_the_certificate() {
    let mock = MockUpstream::start(|_| Reply::ok("x"));
    let (a, b) = (make_pki(), make_pki());
    let gw = start_tls(&mock, &a, "");
    let dir = gw.dir().to_path_buf();
    std::fs::write(dir.join("ca-b.pem"), &b.ca_pem).unwrap();
    let get = |ca: &str| {
        curl(&[
            "--cacert",
            dir.join(ca).to_str().unwrap(),
            "-H",
            &format!("x-api-key: {BOT_KEY}"),
            &format!("https://localhost:{}/api/v1/a", gw.port()),
        ])
        .0
    };
    assert_eq!(get("ca.pem"), 200);
    assert_eq!(get("ca-b.pem"), 0);
    std::fs::write(dir.join("gw.crt"), &b.leaf_cert_pem).unwrap();
    std::fs::write(dir.join("gw.key"), &b.leaf_key_pem).unwrap();
    gw.signal("HUP");
    let switched = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (get("ca-b.pem") == 200).then_some(())
    });
    assert!(switched.is_some(), "{}", gw.stderr_text());
    assert_eq!(get("ca.pem"), 0);
}

/// Config errors name the file, line and key.
#[test]
fn tls_config_errors_name_file_line_and_key() {
    let pki = make_pki();
    let other = make_pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gw.crt"), &pki.leaf_cert_pem).unwrap();
    std::fs::write(dir.path().join("gw.key"), &pki.leaf_key_pem).unwrap();
    std::fs::write(dir.path().join("other.key"), &other.leaf_key_pem).unwrap();
    std::fs::write(dir.path().join("junk"), "not a pem").unwrap();
    let cases = [
        (
            r#"tls = { cert = "file:gw.crt", key = "file:missing.key" }"#,
            "server.tls.key",
        ),
        (
            r#"tls = { cert = "file:junk", key = "file:gw.key" }"#,
            "server.tls: no certificate",
        ),
        (
            r#"tls = { cert = "file:gw.crt", key = "file:other.key" }"#,
            "server.tls: the key does not fit",
        ),
        (
            r#"tls = { cert = "file:gw.crt", key = "plain-text" }"#,
            "server.tls.key",
        ),
        (
            r#"tls = { cert = "file:gw.crt", key = "file:gw.key", client_ca = "file:junk" }"#,
            "server.tls: no certificates found in client_ca",
        ),
        (
            r#"tls = { cert = "file:gw.crt", key = "file:gw.key", extra = 1 }"#,
            "extra",
        ),
        (
            r#"admin_tls = { cert = "file:gw.crt", key = "file:gw.key" }"#,
            "server.admin_tls: needs server.admin_listen",
        ),
    ];
    for (line, want) in cases {
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!("[server]\nlisten = [\"127.0.0.1:1\"]\n{line}\n\n[[proxies]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\n"),
        )
        .unwrap();
        let out = run_portcullis(
            &["check", "-c", cfg.to_str().unwrap()],
            &[],
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line}");
        assert!(
            err.contains("c.toml:3: ") && err.contains(want),
            "{line}: {err}"
        );
    }
}
