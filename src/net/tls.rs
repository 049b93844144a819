//! rustls client configs, built once per distinct `ca_file` at config compile time.
use std::path::Path;
use std::sync::Arc;

/// webpki roots plus the certificates in `ca_file` (PEM), aws-lc-rs as the one crypto provider.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
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
