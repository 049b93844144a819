//! HTTPS upstreams: trust via `ca_file`, SNI, Host, and refusal of untrusted certificates.
use crate::support::*;

fn tls_proxy(name: &str, port: u16, ca_file: Option<&str>) -> String {
    let mut p = proxy(name, &format!("https://localhost:{port}"));
    if let Some(f) = ca_file {
        p.push_str(&format!("ca_file = \"{f}\"\n"));
    }
    p
}

#[test]
fn https_upstream_with_ca_file_is_reached_with_sni_localhost() {
    let pki = make_pki();
    let mock = MockUpstream::start_tls(&pki.leaf_cert_pem, &pki.leaf_key_pem, |r| {
        Reply::ok(&format!("secure {}", r.target))
    });
    let gw = Gateway::start_with_files(
        &config_with(2, "", &[tls_proxy("up", mock.port(), Some("ca.pem"))]),
        &[("ca.pem", pki.ca_pem.as_bytes())],
    );
    let mut c = gw.conn();
    let resp = c.roundtrip(b"GET /up/v1/x?q=1 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: tls-1\r\n\r\n");
    assert_eq!(
        resp.status,
        200,
        "{}\nmock errors: {:?}",
        show(&resp.raw),
        mock.errors()
    );
    assert_eq!(resp.body_str(), "secure /v1/x?q=1");
    let r = mock.requests().pop().unwrap();
    assert_eq!(r.sni.as_deref(), Some("localhost"), "SNI");
    // the gateway's id goes upstream, never the agent's `tls-1`
    let rid = resp.header("x-request-id").unwrap_or_default();
    let want = format!(
        "GET /v1/x?q=1 HTTP/1.1\r\nHost: localhost:{}\r\nX-Request-Id: {rid}\r\n\r\n",
        mock.port()
    );
    assert_eq!(show(&r.raw), show(want.as_bytes()));
}

#[test]
fn https_upstream_connections_are_reused() {
    let pki = make_pki();
    let mock = MockUpstream::start_tls(&pki.leaf_cert_pem, &pki.leaf_key_pem, |_| {
        Reply::ok("secure")
    });
    let gw = Gateway::start_with_files(
        &config_with(1, "", &[tls_proxy("up", mock.port(), Some("ca.pem"))]),
        &[("ca.pem", pki.ca_pem.as_bytes())],
    );
    let mut c = gw.conn();
    for _ in 0..3 {
        let resp = c.roundtrip(&get("/up/x"));
        assert_eq!(
            resp.status,
            200,
            "{}\nmock errors: {:?}",
            show(&resp.raw),
            mock.errors()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ids: Vec<usize> = mock.requests().iter().map(|r| r.conn_id).collect();
    assert_eq!(ids, vec![0, 0, 0], "one pooled TLS connection");
}

#[test]
fn https_upstream_with_untrusted_certificate_is_502() {
    let pki = make_pki();
    let mock = MockUpstream::start_tls(&pki.leaf_cert_pem, &pki.leaf_key_pem, |_| {
        Reply::ok("secure")
    });
    let gw = Gateway::start(&config_with(2, "", &[tls_proxy("up", mock.port(), None)]));
    let resp = gw.conn().roundtrip(&get("/up/x"));
    assert_gateway_error(&resp, 502, "upstream_unreachable");
    assert_eq!(
        mock.count(),
        0,
        "no request may be sent over an unverified connection"
    );
    assert!(
        mock.connections() >= 1,
        "the gateway should at least have tried the upstream"
    );
}

/// The system trust store is trusted too (rustls-native-certs reads `SSL_CERT_FILE`): no
/// `ca_file`, the CA only in the "system" bundle, and the upstream is reached; the refusal
/// without it logs why (unknown issuer), not an opaque i/o error.
#[test]
fn https_upstream_trusted_through_the_system_store() {
    let pki = make_pki();
    let mock = MockUpstream::start_tls(&pki.leaf_cert_pem, &pki.leaf_key_pem, |_| {
        Reply::ok("secure")
    });
    let cfg = config_with(2, "", &[tls_proxy("up", mock.port(), None)]);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("system-bundle.pem");
    std::fs::write(&bundle, &pki.ca_pem).unwrap();
    let gw = Gateway::start_with_env(&cfg, &[], &[("SSL_CERT_FILE", bundle.to_str().unwrap())]);
    let resp = gw.conn().roundtrip(&get("/up/x"));
    assert_eq!(resp.status, 200, "{}", resp.head_str());
    assert_eq!(resp.body_str(), "secure");
    drop(gw);
    let gw = Gateway::start_with_env(&cfg, &[], &[("SSL_CERT_FILE", "/nonexistent.pem")]);
    let resp = gw.conn().roundtrip(&get("/up/x"));
    assert_gateway_error(&resp, 502, "upstream_unreachable");
    let log = gw.log_when(
        |l| l.contains("UnknownIssuer"),
        std::time::Duration::from_secs(5),
    );
    assert!(
        log.contains("upstream TLS handshake failed") && log.contains("UnknownIssuer"),
        "{log}"
    );
}

#[test]
fn https_upstream_with_a_different_ca_is_502() {
    let pki = make_pki();
    let other = make_pki();
    let mock = MockUpstream::start_tls(&pki.leaf_cert_pem, &pki.leaf_key_pem, |_| {
        Reply::ok("secure")
    });
    let gw = Gateway::start_with_files(
        &config_with(2, "", &[tls_proxy("up", mock.port(), Some("ca.pem"))]),
        &[("ca.pem", other.ca_pem.as_bytes())],
    );
    let resp = gw.conn().roundtrip(&get("/up/x"));
    assert_gateway_error(&resp, 502, "upstream_unreachable");
    assert_eq!(mock.count(), 0);
}
