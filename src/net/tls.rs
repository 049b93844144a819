//! rustls client configs, built once per distinct `ca_file` at config compile time.
use std::path::Path;
use std::sync::Arc;

/// The system trust store (`rustls-native-certs`: the distribution's bundle, or `SSL_CERT_FILE`
/// / `SSL_CERT_DIR`), read once per process: an enterprise root installed on the host is trusted
/// for upstreams as well as the webpki roots. Certificates it cannot parse are skipped (logged).
fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in found.errors.iter().take(3) {
            tracing::warn!(error = %e, "system trust store: some certificates could not be read");
        }
        found.certs
    })
}

/// webpki roots, the system trust store, and the certificates in `ca_file` (PEM, e.g. a
/// legacy server's self-signed certificate), aws-lc-rs as the one crypto provider.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("invalid PEM in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("invalid CA certificate in {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "no certificates found in CA file {}",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What a listener's TLS is built from (PEM bytes, read through secret references by the
/// config compiler).
pub struct ServerTlsPem<'a> {
    pub cert_chain: &'a [u8],
    pub key: &'a [u8],
    /// CA certificates for client certificates (mTLS). A client certificate is then optional
    /// (agents may still use keys) but, when presented, must chain to one of these.
    pub client_ca: Option<&'a [u8]>,
}

/// A rustls server config for an agent or admin listener: TLS 1.2 and 1.3, ALPN `http/1.1`,
/// aws-lc-rs. Errors are short texts for `file:line: key: message`.
pub fn server_config(pem: &ServerTlsPem<'_>) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls_pemfile::certs(&mut &pem.cert_chain[..])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in cert".into());
    }
    let key = rustls_pemfile::private_key(&mut &pem.key[..])
        .map_err(|e| format!("invalid PEM key: {e}"))?
        .ok_or("no private key found in key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &ca[..]) {
                let cert = cert.map_err(|e| format!("invalid PEM in client_ca: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("invalid CA certificate in client_ca: {e}"))?;
            }
            if roots.is_empty() {
                return Err("no certificates found in client_ca".into());
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Why a TLS handshake failed, in words an operator can act on ("invalid peer certificate:
/// UnknownIssuer", "... NotValidForName", "... Expired"), not monoio-rustls's bare "io error":
/// the rustls error is dug out of the i/o error that carries it.
pub fn handshake_reason(e: &monoio_rustls::TlsError) -> String {
    match e {
        monoio_rustls::TlsError::Rustls(r) => r.to_string(),
        monoio_rustls::TlsError::Io(io) => match io.get_ref() {
            Some(inner) => match inner.downcast_ref::<rustls::Error>() {
                Some(r) => r.to_string(),
                None => inner.to_string(),
            },
            None => format!("i/o error: {}", io.kind()),
        },
    }
}
