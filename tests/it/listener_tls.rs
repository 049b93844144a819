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

/// A client certificate signed by a fresh CA: subject CN `cn`, optional URI SAN. Returns (CA PEM, cert PEM, key PEM).
fn client_cert(cn: &str, uri: Option<&str>) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(u) = uri {
        p.subject_alt_names = vec![SanType::URI(u.try_into().unwrap())];
    }
    let cert = p.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// mTLS (`client_ca`): an agent identified by its certificate subject or SPIFFE URI SAN is
/// audited under its id without any key; a listener with client_ca still takes keys from
/// clients without a certificate; a certificate naming no agent is 401; a certificate from
/// another CA fails the handshake (nothing reaches the upstream).
#[test]
fn mtls_identifies_the_agent_by_certificate() {
    let mock = MockUpstream::start(|_| Reply::ok("m"));
    let pki = make_pki();
    // client_ca holds three CAs (one per certificate); the rogue's CA is not among them
    let (ca1, cn_cert, cn_key) = client_cert("cert-bot", None);
    let (ca2, sp_cert, sp_key) = client_cert("whatever", Some("spiffe://example.org/agent/s"));
    let (ca3, stranger_cert, stranger_key) = client_cert("nobody", None);
    let (_rogue_ca, rogue_cert, rogue_key) = client_cert("cert-bot", None);
    let client_cas = format!("{ca1}{ca2}{ca3}");
    let mut f = files(&pki);
    for (n, b) in [
        ("client-ca.pem", client_cas),
        ("cn.crt", cn_cert),
        ("cn.key", cn_key),
        ("sp.crt", sp_cert),
        ("sp.key", sp_key),
        ("stranger.crt", stranger_cert),
        ("stranger.key", stranger_key),
        ("rogue.crt", rogue_cert),
        ("rogue.key", rogue_key),
    ] {
        f.push((n, b.into_bytes()));
    }
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let cfg = forward_config(
        &mock.url(),
        r#"tls = { cert = "file:gw.crt", key = "file:gw.key", client_ca = "file:client-ca.pem" }"#,
        "",
    )
    .replace(
        "[[proxies]]",
        "[[agents]]\nid = \"cert-bot\"\ncert_subject = \"CN=cert-bot\"\n\n[[agents]]\nid = \"spiffe-bot\"\ncert_subject = \"spiffe://example.org/agent/s\"\n\n[[proxies]]",
    );
    let gw = start_forward(&cfg, &refs);
    let d = gw.dir().to_path_buf();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let url = format!("https://localhost:{}/api/v1/m", gw.port());
    let with_cert = |c: &str, k: &str| {
        curl(&[
            "--cacert",
            &p("ca.pem"),
            "--cert",
            &p(c),
            "--key",
            &p(k),
            &url,
        ])
    };
    let (code, text) = with_cert("cn.crt", "cn.key");
    assert_eq!(code, 200, "{text}");
    let (code, text) = with_cert("sp.crt", "sp.key");
    assert_eq!(code, 200, "{text}");
    // no certificate: the key still works; nothing at all is 401
    let (code, text) = curl(&[
        "--cacert",
        &p("ca.pem"),
        "-H",
        &format!("x-api-key: {BOT_KEY}"),
        &url,
    ]);
    assert_eq!(code, 200, "{text}");
    let (code, text) = curl(&["--cacert", &p("ca.pem"), &url]);
    assert_eq!(code, 401, "{text}");
    // a trusted certificate that names no agent is not an identity
    let (code, text) = with_cert("stranger.crt", "stranger.key");
    assert_eq!(code, 401, "{text}");
    // the right subject from a CA the gateway does not trust: the handshake fails
    let (code, text) = with_cert("rogue.crt", "rogue.key");
    assert_eq!(code, 0, "{text}");
    assert_eq!(mock.count(), 3);
    let recs = wait_audit(gw.dir(), 5);
    let agents: Vec<_> = recs
        .iter()
        .map(|r| (r["agent"].as_str(), r["status"].as_u64()))
        .collect();
    assert_eq!(
        agents,
        vec![
            (Some("cert-bot"), Some(200)),
            (Some("spiffe-bot"), Some(200)),
            (Some("bot"), Some(200)),
            (None, Some(401)),
            (None, Some(401)),
        ]
    );
    // Python requests with a client certificate
    let out = python(
        &format!(
            "import requests\nr = requests.get('{url}', cert=('{}', '{}'), verify='{}')\nprint(r.status_code)\n",
            p("cn.crt"),
            p("cn.key"),
            p("ca.pem")
        ),
        &[],
    );
    assert_eq!(out.trim(), "200");
    let log = gw.log_when(
        |l| l.contains("agent TLS handshake failed"),
        Duration::from_secs(5),
    );
    assert!(log.contains("agent TLS handshake failed"), "{log}");
}

/// `admin_tls`: the admin API over TLS (the token never crosses in clear); plain HTTP to it
/// gets no answer; the agent listener's failed handshakes show in `/metrics`.
#[test]
fn admin_listener_over_tls() {
    let mock = MockUpstream::start(|_| Reply::ok("x"));
    let pki = make_pki();
    let admin_port = free_port();
    let mut f = files(&pki);
    f.push(("admin.token", b"adm-tls-token\n".to_vec()));
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let gw = start_forward(
        &forward_config(
            &mock.url(),
            &format!(
                "{TLS}\nadmin_listen = \"127.0.0.1:{admin_port}\"\nadmin_token = \"file:admin.token\"\n\
                 admin_tls = {{ cert = \"file:gw.crt\", key = \"file:gw.key\" }}"
            ),
            "",
        ),
        &refs,
    );
    let ca = gw.dir().join("ca.pem");
    let admin = format!("https://localhost:{admin_port}");
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        (curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            &format!("{admin}/healthz"),
        ])
        .0 == 200)
            .then_some(())
    });
    assert!(ok.is_some(), "{}", gw.stderr_text());
    // one failed agent handshake (plain HTTP to the TLS agent listener)
    let ex = send_raw_exchange(
        gw.port(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(!ex.bytes.starts_with(b"HTTP/"));
    let (code, text) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        "Authorization: Bearer adm-tls-token",
        &format!("{admin}/metrics"),
    ]);
    assert_eq!(code, 200, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("portcullis_agent_tls_handshake_errors_total "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_ne!(line, "portcullis_agent_tls_handshake_errors_total 0");
    // plain HTTP to the TLS admin listener: no HTTP answer
    let ex = send_raw_exchange(
        admin_port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(!ex.bytes.starts_with(b"HTTP/"), "{}", show(&ex.bytes));
}

/// httpx over the TLS listener (trusting the test CA through `SSL_CERT_FILE`), keep-alive on
/// one client.
#[test]
fn httpx_over_the_tls_listener() {
    let mock = MockUpstream::start(|_| Reply::ok("hx"));
    let pki = make_pki();
    let gw = start_tls(&mock, &pki, "");
    let ca = gw.dir().join("ca.pem");
    let script = format!(
        "import httpx, ssl\n\
         ctx = ssl.create_default_context(cafile='{}')\n\
         with httpx.Client(verify=ctx, headers={{'x-api-key': '{BOT_KEY}'}}) as c:\n    \
         for i in range(3):\n        r = c.get('https://localhost:{}/api/v1/h')\n        print(r.status_code, r.text, r.http_version)\n",
        ca.display(),
        gw.port()
    );
    let out = python(&script, &[]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["200 hx HTTP/1.1"; 3],
        "{out}"
    );
    assert_eq!(mock.count(), 3);
}
