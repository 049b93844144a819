//! The interception CA: `portcullis ca init` creates it, `[forward] ca` loads it, and each
//! CONNECT to an intercepted origin gets a leaf certificate for that host minted from it
//! (ECDSA P-256, SAN = the host, valid a day, ALPN `http/1.1`). Leaves are cached per worker
//! (`LeafCache`, no lock on the data plane) and minted again before they expire.
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a minted leaf is valid (and how far back its `notBefore` lies, for clock skew).
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);
/// A cached leaf is replaced once less than this is left of its validity.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(6 * 3600);
/// Hosts kept per worker; beyond it the cache starts over (a CONNECT target is bounded by the
/// config's intercepting proxies, so this is a guard, not a working size).
const LEAF_CACHE_MAX: usize = 1024;

/// The loaded interception CA.
pub struct InterceptCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl InterceptCa {
    /// From the CA certificate and its private key (PEM). Errors are short texts for
    /// `file:line: key: message`.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<InterceptCa, String> {
        let cert = std::str::from_utf8(cert_pem).map_err(|_| "cert is not PEM text")?;
        let key = std::str::from_utf8(key_pem).map_err(|_| "key is not PEM text")?;
        let key = rcgen::KeyPair::from_pem(key).map_err(|e| format!("invalid CA key: {e}"))?;
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .ok_or("no certificate found in cert")?
            .map_err(|e| format!("invalid PEM certificate: {e}"))?;
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|_| "the CA certificate cannot be parsed")?;
        if !x.is_ca() {
            return Err("the certificate is not a CA (basicConstraints CA:TRUE)".into());
        }
        if x.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err("the key does not fit the CA certificate".into());
        }
        let issuer = rcgen::Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
        Ok(InterceptCa {
            issuer,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        })
    }

    /// A rustls server config presenting a fresh leaf for `host` (DNS name or IP literal,
    /// without brackets), and when it should be replaced.
    pub fn mint(&self, host: &str, now: SystemTime) -> Result<Leaf, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("leaf key: {e}"))?;
        let mut params =
            rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "portcullis interception");
        let not_before = now.checked_sub(LEAF_BACKDATE).unwrap_or(now);
        let not_after = now + LEAF_VALIDITY;
        params.not_before = to_time(not_before);
        params.not_after = to_time(not_after);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| "no randomness")?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("signing the leaf: {e}"))?;
        let der = CertificateDer::from(cert.der().to_vec());
        let chain = vec![der.clone()];
        let pkey = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, pkey)
            .map_err(|e| format!("leaf: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        crate::observe::metrics::INTERCEPT_LEAVES_MINTED
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Leaf {
            config: Arc::new(cfg),
            cert: der,
            renew_at: not_after - LEAF_RENEW_BEFORE,
        })
    }
}

fn to_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A minted leaf, as a server config ready for the handshake.
#[derive(Clone)]
pub struct Leaf {
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate (DER).
    pub cert: CertificateDer<'static>,
    pub renew_at: SystemTime,
}

/// A cached leaf and the CA that signed it.
type CachedLeaf = (Arc<InterceptCa>, Leaf);

/// One worker's leaves by host. A leaf minted by another CA (the config was reloaded with a
/// new `[forward] ca`) is not reused.
#[derive(Default)]
pub struct LeafCache {
    map: RefCell<HashMap<Box<str>, CachedLeaf>>,
}

impl LeafCache {
    /// The leaf for `host`: cached, or minted now.
    pub fn get(
        &self,
        ca: &Arc<InterceptCa>,
        host: &str,
        now: SystemTime,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        if let Some((c, leaf)) = self.map.borrow().get(host)
            && Arc::ptr_eq(c, ca)
            && now < leaf.renew_at
        {
            return Ok(leaf.config.clone());
        }
        let leaf = ca.mint(host, now)?;
        let mut map = self.map.borrow_mut();
        if map.len() >= LEAF_CACHE_MAX {
            map.clear();
        }
        let config = leaf.config.clone();
        map.insert(host.into(), (ca.clone(), leaf));
        Ok(config)
    }
}

/// A new interception CA (`portcullis ca init`): ECDSA P-256, ten years, basicConstraints
/// CA:TRUE pathlen 0, key usage certSign + CRL sign, and — when `permitted` names any — name
/// constraints limiting it to those DNS subtrees (clients that honour them then refuse a leaf
/// for any other name). Returns (certificate PEM, key PEM).
pub fn generate_ca(common_name: &str, permitted: &[String]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("CA key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "portcullis");
    let now = SystemTime::now();
    params.not_before = to_time(now.checked_sub(LEAF_BACKDATE).unwrap_or(now));
    params.not_after = to_time(now + Duration::from_secs(10 * 365 * 24 * 3600));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    if !permitted.is_empty() {
        let mut subtrees = Vec::new();
        for p in permitted {
            match p.parse::<std::net::IpAddr>() {
                Ok(ip) => subtrees.push(rcgen::GeneralSubtree::IpAddress(
                    rcgen::CidrSubnet::from_addr_prefix(ip, if ip.is_ipv4() { 32 } else { 128 }),
                )),
                Err(_) => subtrees.push(rcgen::GeneralSubtree::DnsName(p.clone())),
            }
        }
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: subtrees,
            excluded_subtrees: Vec::new(),
        });
    }
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| "no randomness")?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("self-signing the CA: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_leaf_chains_to_the_ca_and_is_cached() {
        let (cert, key) = generate_ca("test CA", &[]).unwrap();
        let ca = Arc::new(InterceptCa::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
        let cache = LeafCache::default();
        let now = SystemTime::now();
        let a = cache.get(&ca, "api.example.com", now).unwrap();
        let b = cache.get(&ca, "api.example.com", now).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second CONNECT reuses the leaf");
        let c = cache.get(&ca, "127.0.0.1", now).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        // renewed before expiry
        let later = now + LEAF_VALIDITY - LEAF_RENEW_BEFORE + Duration::from_secs(1);
        let d = cache.get(&ca, "api.example.com", later).unwrap();
        assert!(!Arc::ptr_eq(&a, &d));
        // another CA (a reload): not reused
        let (cert2, key2) = generate_ca("other", &[]).unwrap();
        let ca2 = Arc::new(InterceptCa::from_pem(cert2.as_bytes(), key2.as_bytes()).unwrap());
        let e = cache.get(&ca2, "127.0.0.1", now).unwrap();
        assert!(!Arc::ptr_eq(&c, &e));
    }

    #[test]
    fn leaf_is_p256_with_the_host_as_san() {
        let (cert, key) = generate_ca("test CA", &["example.com".into()]).unwrap();
        let ca = InterceptCa::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        for (host, want) in [
            ("api.example.com", "DNSName(\"api.example.com\")"),
            ("127.0.0.1", "IPAddress([127, 0, 0, 1])"),
        ] {
            let leaf = ca.mint(host, SystemTime::now()).unwrap();
            let (_, x) = x509_parser::parse_x509_certificate(leaf.cert.as_ref()).unwrap();
            assert!(!x.is_ca());
            let san = x.subject_alternative_name().unwrap().unwrap();
            let names: Vec<String> = san
                .value
                .general_names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect();
            assert_eq!(names, vec![want.to_string()], "{host}");
            // id-ecPublicKey with prime256v1
            assert_eq!(
                x.public_key().algorithm.algorithm.to_id_string(),
                "1.2.840.10045.2.1"
            );
            let validity = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
            assert_eq!(validity as u64, (LEAF_VALIDITY + LEAF_BACKDATE).as_secs());
            let ca_x = rustls_pemfile::certs(&mut cert.as_bytes())
                .next()
                .unwrap()
                .unwrap();
            let (_, ca_x) = x509_parser::parse_x509_certificate(ca_x.as_ref()).unwrap();
            assert_eq!(x.issuer(), ca_x.subject());
        }
    }

    #[test]
    fn ca_loading_refuses_what_does_not_fit() {
        let (cert, key) = generate_ca("a", &[]).unwrap();
        let (_, key2) = generate_ca("b", &[]).unwrap();
        assert!(
            InterceptCa::from_pem(cert.as_bytes(), key2.as_bytes())
                .err()
                .unwrap()
                .contains("does not fit")
        );
        assert!(InterceptCa::from_pem(b"junk", key.as_bytes()).is_err());
        assert!(InterceptCa::from_pem(cert.as_bytes(), b"junk").is_err());
    }
}
