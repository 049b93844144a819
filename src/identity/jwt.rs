//! JWT agents, sans-io. `JwtVerifier` checks IdP-issued tokens (RS256 / ES256 / EdDSA only:
//! never `none`, never HS* — a shared-secret HMAC key in a JWKS would let anyone holding the
//! "public" set mint tokens) against a JWK set, with issuer / audience / exp / nbf checks and a
//! bounded clock leeway, and caches verified tokens so repeats skip the signature check.
//! A token whose protected header has a `crit` parameter is refused (RFC 7515 §4.1.11: the
//! verifier must understand every extension listed there, and it understands none — e.g.
//! RFC 7797's `b64: false` would change what the signature covers).
//!
//! Ownership: one `JwtVerifier` per worker (it owns its cache; `verify` takes `&mut self`, no
//! locks). The parsed key set is an `Arc<KeySet>`, so a refresh done once can be handed to every
//! worker with `set_keys`; `fork()` makes a sibling with the same config and keys and an empty
//! cache.
//!
//! Key rollover: `update_jwks`/`set_keys` swaps the key set and drops cached tokens whose `kid`
//! is no longer in it (a revoked signing key stops being honoured at once; tokens signed by
//! keys that survive stay cached until their `exp`). A token naming an unknown `kid` is refused
//! (401) and raises a refresh request, rate-limited by `min_refresh_interval`, which the gateway
//! observes through `needs_refresh(now)`.
//!
//! I/O: `JwksSource::File` is read by `load_jwks_file` (config compile / reload / refresh, never
//! on a worker). `JwksSource::Https` is fetched by the gateway (`jwks.rs`: at compile time and by
//! the refresher thread), which publishes each new key set in a [`SharedKeys`]; every verifier
//! attached to it (`with_shared`) picks the new set up on its next `verify` (one atomic load per
//! call) and reports unknown `kid`s back through it.
use super::error::AuthnError;
use crate::util::units::parse_duration;
use aws_lc_rs::digest::{SHA256, digest};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest token we look at.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Verified tokens kept per verifier (per worker).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
pub const DEFAULT_LEEWAY_SECS: i64 = 60;
pub const MAX_LEEWAY_SECS: i64 = 300;
/// Periodic refresh of an https JWKS.
pub const DEFAULT_REFRESH_INTERVAL_SECS: i64 = 600;
/// Floor between refreshes triggered by unknown `kid`s (so junk tokens cannot hammer the IdP).
pub const MIN_REFRESH_INTERVAL_SECS: i64 = 30;

fn default_agent_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}

/// `[[jwt]]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: String,
    pub audience: String,
    /// `file:PATH` (relative to the config file) or an `https://` URL.
    pub jwks: String,
    #[serde(default = "default_agent_claim")]
    pub agent_claim: String,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Clock-skew allowance for exp/nbf, e.g. "60s"; at most "300s".
    #[serde(default)]
    pub leeway: Option<String>,
    /// Period of the background refresh of an https JWKS (default "10m").
    #[serde(default)]
    pub refresh_interval: Option<String>,
    /// Floor between refreshes asked for by tokens with an unknown `kid` (default "30s").
    #[serde(default)]
    pub min_refresh_interval: Option<String>,
    /// Extra trusted CA certificates (PEM) for an https JWKS URL (relative to the config).
    #[serde(default)]
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    /// An `https://` URL (or `http://` on a loopback host: tests, sidecars).
    Https(String),
}

/// A key set published by the gateway's JWKS fetcher and picked up by every verifier attached
/// to it. Workers read `version` (one atomic load per `verify`) and take the `RwLock` only when
/// it changed, i.e. once per key rollover; the writer is the refresher thread.
#[derive(Debug)]
pub struct SharedKeys {
    version: std::sync::atomic::AtomicU64,
    keys: std::sync::RwLock<Arc<KeySet>>,
    wanted: std::sync::atomic::AtomicBool,
}

impl Default for SharedKeys {
    fn default() -> Self {
        SharedKeys {
            version: std::sync::atomic::AtomicU64::new(0),
            keys: std::sync::RwLock::new(Arc::new(KeySet::empty())),
            wanted: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl SharedKeys {
    /// How many key sets have been published (0: none yet).
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Installs a new key set for every attached verifier; clears the refresh request.
    pub fn publish(&self, keys: Arc<KeySet>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        self.wanted
            .store(false, std::sync::atomic::Ordering::Release);
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    /// A verifier saw a token naming a key it does not have.
    pub fn want_refresh(&self) {
        self.wanted
            .store(true, std::sync::atomic::Ordering::Release);
    }
    pub fn refresh_wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtConfigError {
    #[error("jwks: expected `file:PATH` or an `https://` URL")]
    BadSource,
    #[error("leeway: {0}")]
    BadLeeway(String),
    #[error("{0}")]
    BadInterval(String),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("cannot read JWKS file {0}: {1}")]
    File(String, String),
    #[error("JWKS is not a valid JSON Web Key Set: {0}")]
    Parse(String),
    #[error("JWKS has no usable RS256/ES256/EdDSA signing key")]
    NoUsableKey,
}

/// A verified JWT agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAgent {
    pub id: String,
    pub roles: Vec<String>,
    /// Unix seconds (the token's `exp`).
    pub exp: i64,
}

struct KeyEntry {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The usable keys of a JWK set (RS256 / ES256 on P-256 / EdDSA on Ed25519, `use` absent or
/// `sig`). Unusable keys are skipped and counted.
pub struct KeySet {
    keys: Vec<KeyEntry>,
    skipped: usize,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|k| (&k.kid, k.alg))
                    .collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl KeySet {
    pub fn empty() -> KeySet {
        KeySet {
            keys: Vec::new(),
            skipped: 0,
        }
    }

    pub fn from_jwks(set: &JwkSet) -> KeySet {
        let mut keys = Vec::new();
        let mut skipped = 0;
        for jwk in &set.keys {
            match usable(jwk) {
                Some(e) => keys.push(e),
                None => skipped += 1,
            }
        }
        KeySet { keys, skipped }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn skipped(&self) -> usize {
        self.skipped
    }
    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key for a token header: by `kid`, or, without a `kid`, the only key of that alg.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&KeyEntry> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut it = self.keys.iter().filter(|k| k.alg == alg);
                let first = it.next()?;
                it.next().is_none().then_some(first)
            }
        }
    }
}

fn usable(jwk: &Jwk) -> Option<KeyEntry> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let natural = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    // A declared `alg` must be the one we would use with this key type.
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    if declared.is_some_and(|d| d != natural) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(KeyEntry {
        kid: jwk.common.key_id.clone(),
        alg: natural,
        key,
    })
}

/// Parses JWKS JSON (`{"keys":[...]}`). Keys that do not parse as a JWK (unknown `alg` such as
/// an encryption algorithm, unknown `kty`) are skipped one by one rather than failing the set:
/// IdPs publish encryption keys next to signing keys.
pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, JwtConfigError> {
    #[derive(Deserialize)]
    struct Loose {
        keys: Vec<serde_json::Value>,
    }
    let loose: Loose =
        serde_json::from_slice(bytes).map_err(|e| JwtConfigError::Parse(e.to_string()))?;
    Ok(JwkSet {
        keys: loose
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
    })
}

/// Reads a JWKS file (blocking; config compile / control thread only).
pub fn load_jwks_file(path: &Path) -> Result<JwkSet, JwtConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| JwtConfigError::File(path.display().to_string(), e.kind().to_string()))?;
    parse_jwks(&bytes)
}

#[derive(Clone)]
struct JwtConfig {
    issuer: String,
    audience: String,
    source: JwksSource,
    agent_claim: String,
    roles_claim: String,
    leeway: i64,
    refresh_interval: i64,
    min_refresh_interval: i64,
    cache_capacity: usize,
}

struct Cached {
    agent: Arc<JwtAgent>,
    nbf: Option<i64>,
    kid: Option<String>,
}

/// Verified-token cache: SHA-256(token) → agent, FIFO eviction at capacity. Only tokens that
/// passed every check are inserted; exp/nbf are re-checked on each hit.
#[derive(Default)]
struct TokenCache {
    map: HashMap<[u8; 32], Cached>,
    order: VecDeque<[u8; 32]>,
}

impl TokenCache {
    fn insert(&mut self, cap: usize, k: [u8; 32], v: Cached) {
        if cap == 0 {
            return;
        }
        while self.map.len() >= cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
    }
    fn remove(&mut self, k: &[u8; 32]) {
        if self.map.remove(k).is_some() {
            self.order.retain(|o| o != k);
        }
    }
    fn retain_kids(&mut self, keys: &KeySet) {
        self.map
            .retain(|_, c| c.kid.as_deref().is_none_or(|kid| keys.has_kid(kid)));
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
    }
}

pub struct JwtVerifier {
    cfg: Arc<JwtConfig>,
    keys: Arc<KeySet>,
    /// The fetched key set this verifier follows, and the version of it in `keys`.
    shared: Option<(Arc<SharedKeys>, u64)>,
    cache: TokenCache,
    last_refresh: Option<i64>,
    refresh_wanted: bool,
    /// Counters for metrics.
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.cfg.issuer)
            .field("audience", &self.cfg.audience)
            .field("source", &self.cfg.source)
            .field("keys", &self.keys)
            .field("cached", &self.cache.map.len())
            .finish()
    }
}

fn peek_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The unverified `iss` of a token, to pick among several `[[jwt]]` verifiers. Never trust it
/// for anything else.
pub fn peek_issuer(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    match peek_claims(token)?.get("iss")? {
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn num_claim(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| f.floor() as i64)
        }),
        _ => None,
    }
}

impl JwtVerifier {
    /// Builds a verifier from `[[jwt]]`. A `file:` JWKS is read now (relative to `base_dir`)
    /// and must hold at least one usable key; an https JWKS starts empty and `needs_refresh` is
    /// true until the gateway has fetched it.
    pub fn new(raw: &RawJwt, base_dir: &Path) -> Result<JwtVerifier, JwtConfigError> {
        if raw.issuer.is_empty() {
            return Err(JwtConfigError::Empty("issuer"));
        }
        if raw.audience.is_empty() {
            return Err(JwtConfigError::Empty("audience"));
        }
        if raw.agent_claim.is_empty() {
            return Err(JwtConfigError::Empty("agent_claim"));
        }
        if raw.roles_claim.is_empty() {
            return Err(JwtConfigError::Empty("roles_claim"));
        }
        let leeway = match &raw.leeway {
            None => DEFAULT_LEEWAY_SECS,
            Some(s) => {
                let d = parse_duration(s).map_err(JwtConfigError::BadLeeway)?;
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if secs > MAX_LEEWAY_SECS {
                    return Err(JwtConfigError::BadLeeway(format!(
                        "{s} is more than the maximum of {MAX_LEEWAY_SECS}s"
                    )));
                }
                secs
            }
        };
        let source = if let Some(p) = raw.jwks.strip_prefix("file:") {
            if p.is_empty() {
                return Err(JwtConfigError::BadSource);
            }
            JwksSource::File(base_dir.join(p))
        } else if raw.jwks.starts_with("https://") || raw.jwks.starts_with("http://") {
            crate::net::url::Url::parse(&raw.jwks).map_err(|_| JwtConfigError::BadSource)?;
            JwksSource::Https(raw.jwks.clone())
        } else {
            return Err(JwtConfigError::BadSource);
        };
        let interval = |v: &Option<String>, default: i64| -> Result<i64, JwtConfigError> {
            match v {
                None => Ok(default),
                Some(s) => {
                    let d = parse_duration(s).map_err(JwtConfigError::BadInterval)?;
                    if d.as_secs() == 0 {
                        return Err(JwtConfigError::BadInterval(format!(
                            "{s}: must be at least 1s"
                        )));
                    }
                    Ok(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                }
            }
        };
        let refresh_interval = interval(&raw.refresh_interval, DEFAULT_REFRESH_INTERVAL_SECS)?;
        let min_refresh_interval = interval(
            &raw.min_refresh_interval,
            MIN_REFRESH_INTERVAL_SECS.min(refresh_interval),
        )?;
        if (raw.refresh_interval.is_some()
            || raw.min_refresh_interval.is_some()
            || raw.ca_file.is_some())
            && !matches!(source, JwksSource::Https(_))
        {
            return Err(JwtConfigError::BadInterval(
                "refresh_interval, min_refresh_interval and ca_file apply to an https JWKS only"
                    .into(),
            ));
        }
        let keys = match &source {
            JwksSource::File(p) => {
                let ks = KeySet::from_jwks(&load_jwks_file(p)?);
                if ks.is_empty() {
                    return Err(JwtConfigError::NoUsableKey);
                }
                ks
            }
            JwksSource::Https(_) => KeySet::empty(),
        };
        let cfg = JwtConfig {
            issuer: raw.issuer.clone(),
            audience: raw.audience.clone(),
            source,
            agent_claim: raw.agent_claim.clone(),
            roles_claim: raw.roles_claim.clone(),
            leeway,
            refresh_interval,
            min_refresh_interval,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        };
        Ok(JwtVerifier {
            cfg: Arc::new(cfg),
            keys: Arc::new(keys),
            shared: None,
            cache: TokenCache::default(),
            last_refresh: None,
            refresh_wanted: false,
            cache_hits: 0,
            cache_misses: 0,
        })
    }

    /// Changes the cache capacity (0 disables caching). Call before sharing via `fork`.
    pub fn with_cache_capacity(mut self, cap: usize) -> Self {
        Arc::make_mut(&mut self.cfg).cache_capacity = cap;
        self
    }

    /// A sibling for another worker: same config and keys, empty cache.
    pub fn fork(&self) -> JwtVerifier {
        JwtVerifier {
            cfg: self.cfg.clone(),
            keys: self.keys.clone(),
            shared: self.shared.clone(),
            cache: TokenCache::default(),
            last_refresh: self.last_refresh,
            refresh_wanted: false,
            cache_hits: 0,
            cache_misses: 0,
        }
    }

    /// Follows the key sets published in `shared` (an https JWKS fetched by the gateway);
    /// forks follow it too.
    pub fn with_shared(mut self, shared: Arc<SharedKeys>) -> Self {
        self.shared = Some((shared, 0));
        self.sync_shared();
        self
    }

    /// Takes a newly published key set, if any (one atomic load when nothing changed).
    #[inline]
    fn sync_shared(&mut self) {
        let Some((shared, seen)) = &self.shared else {
            return;
        };
        let v = shared.version();
        if v == *seen {
            return;
        }
        let keys = shared.keys();
        let shared = shared.clone();
        self.shared = Some((shared, v));
        self.set_keys(keys);
    }

    pub fn min_refresh_interval(&self) -> i64 {
        self.cfg.min_refresh_interval
    }

    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }
    pub fn source(&self) -> &JwksSource {
        &self.cfg.source
    }
    pub fn leeway(&self) -> i64 {
        self.cfg.leeway
    }
    pub fn refresh_interval(&self) -> i64 {
        self.cfg.refresh_interval
    }
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.clone()
    }
    pub fn cached_tokens(&self) -> usize {
        self.cache.map.len()
    }

    /// Should the gateway (re)load the JWKS now? True for an https source that was never
    /// fetched or whose `refresh_interval` elapsed, and for any source after an unknown `kid`
    /// (at most once per `min_refresh_interval`).
    pub fn needs_refresh(&self, now_unix: i64) -> bool {
        let since = self.last_refresh.map(|t| now_unix.saturating_sub(t));
        let https = matches!(self.cfg.source, JwksSource::Https(_));
        match since {
            None => https || self.refresh_wanted,
            Some(s) => {
                (https && s >= self.cfg.refresh_interval)
                    || ((self.refresh_wanted || self.keys.is_empty())
                        && s >= self.cfg.min_refresh_interval)
            }
        }
    }

    /// Has a token with an unknown `kid` been seen since the last key update? (For a gateway
    /// that fetches keys centrally: collect this from the workers' verifiers.)
    pub fn refresh_wanted(&self) -> bool {
        self.refresh_wanted
    }

    /// Records a refresh attempt (successful or not), so a failing IdP is retried no faster
    /// than the refresh floor.
    pub fn mark_refresh_attempt(&mut self, now_unix: i64) {
        self.last_refresh = Some(now_unix);
    }

    /// Installs a fetched JWK set (rollover). Returns the number of usable keys. An empty
    /// usable set is refused (keeps the old keys) so a broken IdP response cannot lock
    /// everybody out.
    pub fn update_jwks(&mut self, set: &JwkSet, now_unix: i64) -> Result<usize, JwtConfigError> {
        self.mark_refresh_attempt(now_unix);
        let ks = KeySet::from_jwks(set);
        if ks.is_empty() {
            return Err(JwtConfigError::NoUsableKey);
        }
        let n = ks.len();
        self.set_keys(Arc::new(ks));
        Ok(n)
    }

    /// Installs an already-parsed key set (shared across workers).
    pub fn set_keys(&mut self, keys: Arc<KeySet>) {
        self.cache.retain_kids(&keys);
        self.keys = keys;
        self.refresh_wanted = false;
    }

    /// Verifies a bearer JWT at `now_unix`. Expired (beyond leeway) → `CredentialExpired`;
    /// anything else wrong → `Unauthenticated`.
    pub fn verify(&mut self, token: &str, now_unix: i64) -> Result<Arc<JwtAgent>, AuthnError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthnError::Unauthenticated);
        }
        self.sync_shared();
        let h = {
            let d = digest(&SHA256, token.as_bytes());
            let mut a = [0u8; 32];
            a.copy_from_slice(d.as_ref());
            a
        };
        let leeway = self.cfg.leeway;
        if let Some(c) = self.cache.map.get(&h) {
            if now_unix > c.agent.exp.saturating_add(leeway) {
                self.cache.remove(&h);
                return Err(AuthnError::CredentialExpired);
            }
            if c.nbf
                .is_some_and(|nbf| now_unix.saturating_add(leeway) < nbf)
            {
                return Err(AuthnError::Unauthenticated);
            }
            self.cache_hits += 1;
            return Ok(c.agent.clone());
        }
        self.cache_misses += 1;
        let (agent, nbf, kid) = self.verify_uncached(token, now_unix)?;
        let agent = Arc::new(agent);
        let cap = self.cfg.cache_capacity;
        self.cache.insert(
            cap,
            h,
            Cached {
                agent: agent.clone(),
                nbf,
                kid,
            },
        );
        Ok(agent)
    }

    fn verify_uncached(
        &mut self,
        token: &str,
        now_unix: i64,
    ) -> Result<(JwtAgent, Option<i64>, Option<String>), AuthnError> {
        use serde_json::Value;
        let unauth = AuthnError::Unauthenticated;
        if has_crit(token) {
            return Err(unauth);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauth)?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(unauth);
        }
        let Some(entry) = self.keys.find(header.kid.as_deref(), header.alg) else {
            self.refresh_wanted = true;
            if let Some((shared, _)) = &self.shared {
                shared.want_refresh();
            }
            return Err(unauth);
        };
        if entry.alg != header.alg {
            return Err(unauth);
        }
        let mut v = Validation::new(header.alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &entry.key, &v)
            .map_err(|_| unauth)?;
        let claims = data.claims;
        // Issuer: exact string match.
        match claims.get("iss") {
            Some(Value::String(s)) if *s == self.cfg.issuer => {}
            _ => return Err(unauth),
        }
        // Audience: string, or array containing ours.
        let aud_ok = match claims.get("aud") {
            Some(Value::String(s)) => *s == self.cfg.audience,
            Some(Value::Array(a)) => a
                .iter()
                .any(|x| x.as_str() == Some(self.cfg.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(unauth);
        }
        let leeway = self.cfg.leeway;
        let exp = claims.get("exp").and_then(num_claim).ok_or(unauth)?;
        if now_unix > exp.saturating_add(leeway) {
            return Err(AuthnError::CredentialExpired);
        }
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => Some(num_claim(v).ok_or(unauth)?),
        };
        if nbf.is_some_and(|nbf| now_unix.saturating_add(leeway) < nbf) {
            return Err(unauth);
        }
        let id = match claims.get(&self.cfg.agent_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
            _ => return Err(unauth),
        };
        // Roles: array of strings, or a space-separated string (OAuth `scope` style); absent →
        // none. Any other shape is refused: a deny-by-role rule must not silently miss.
        let roles = match claims.get(&self.cfg.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(Value::Array(a)) => {
                let mut r = Vec::with_capacity(a.len());
                for x in a {
                    r.push(x.as_str().ok_or(unauth)?.to_string());
                }
                r
            }
            Some(_) => return Err(unauth),
        };
        Ok((JwtAgent { id, roles, exp }, nbf, header.kid))
    }
}

/// Whether the token's protected header names a `crit` parameter (in any form: RFC 7515
/// §4.1.11 lists extensions the verifier must understand, and none is understood here). A header
/// that does not decode as a JSON object is left to `decode_header` to refuse.
fn has_crit(token: &str) -> bool {
    use base64::Engine;
    let Some(seg) = token.split('.').next() else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg) else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json) {
        Ok(h) => h.contains_key("crit"),
        // not an object: refused later; a duplicate-free parse failure with "crit" in it is
        // refused here too, so no parser difference can hide it
        Err(_) => memchr::memmem::find(&json, b"\"crit\"").is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
        RsaKeyPair,
    };
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::{Value, json};

    const ISS: &str = "https://idp.example.com/";
    const AUD: &str = "portcullis";
    const NOW: i64 = 1_800_000_000;

    enum Signer {
        Rsa(RsaKeyPair),
        Ec(EcdsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    impl Signer {
        fn alg(&self) -> &'static str {
            match self {
                Signer::Rsa(_) => "RS256",
                Signer::Ec(_) => "ES256",
                Signer::Ed(_) => "EdDSA",
            }
        }
        fn sign(&self, msg: &[u8]) -> Vec<u8> {
            match self {
                Signer::Rsa(k) => {
                    let mut sig = vec![0; k.public_modulus_len()];
                    k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
                        .unwrap();
                    sig
                }
                Signer::Ec(k) => k.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec(),
                Signer::Ed(k) => k.sign(msg).as_ref().to_vec(),
            }
        }
        fn jwk(&self, kid: &str) -> Value {
            match self {
                Signer::Rsa(k) => {
                    let p = k.public_key();
                    json!({"kty":"RSA","kid":kid,"use":"sig","alg":"RS256",
                        "n": B64.encode(p.modulus().big_endian_without_leading_zero()),
                        "e": B64.encode(p.exponent().big_endian_without_leading_zero())})
                }
                Signer::Ec(k) => {
                    let pt = k.public_key().as_ref();
                    json!({"kty":"EC","kid":kid,"crv":"P-256",
                        "x": B64.encode(&pt[1..33]), "y": B64.encode(&pt[33..65])})
                }
                Signer::Ed(k) => json!({"kty":"OKP","kid":kid,"crv":"Ed25519",
                    "x": B64.encode(k.public_key().as_ref())}),
            }
        }
    }

    fn rsa() -> Signer {
        Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    fn ec() -> Signer {
        Signer::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    fn ed() -> Signer {
        Signer::Ed(Ed25519KeyPair::generate().unwrap())
    }

    fn token_with(header: &Value, claims: &Value, s: &Signer) -> String {
        let msg = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = s.sign(msg.as_bytes());
        format!("{msg}.{}", B64.encode(sig))
    }

    fn token(s: &Signer, kid: &str, claims: &Value) -> String {
        token_with(
            &json!({"alg": s.alg(), "typ": "JWT", "kid": kid}),
            claims,
            s,
        )
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": "bot-7", "roles": ["support", "billing"],
               "exp": NOW + 600, "iat": NOW})
    }

    fn with(mut c: Value, k: &str, v: Value) -> Value {
        c[k] = v;
        c
    }

    fn without(mut c: Value, k: &str) -> Value {
        c.as_object_mut().unwrap().remove(k);
        c
    }

    fn verifier(jwks: &Value, extra: &str) -> (JwtVerifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        let mut raw = RawJwt {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks: "file:jwks.json".into(),
            agent_claim: "sub".into(),
            roles_claim: "roles".into(),
            leeway: None,
            refresh_interval: None,
            min_refresh_interval: None,
            ca_file: None,
        };
        if extra == "scope" {
            raw.roles_claim = "scope".into();
        }
        (JwtVerifier::new(&raw, dir.path()).unwrap(), dir)
    }

    #[test]
    fn verify_table() {
        let (r, e, d) = (rsa(), ec(), ed());
        let stranger = ec();
        let jwks = json!({"keys": [r.jwk("r1"), e.jwk("e1"), d.jwk("d1"),
            {"kty":"oct","kid":"h1","k": B64.encode(b"shared-secret")},
            {"kty":"RSA","kid":"enc","use":"enc","alg":"RSA-OAEP-512-FUTURE","n":"AQAB","e":"AQAB"}]});
        let (mut v, _dir) = verifier(&jwks, "");
        let ok = |id: &str| Ok::<_, AuthnError>(id.to_string());
        let un = Err::<String, _>(AuthnError::Unauthenticated);
        let exp = Err::<String, _>(AuthnError::CredentialExpired);
        let tamper_sig = {
            let t = token(&r, "r1", &claims());
            let (head, sig) = t.rsplit_once('.').unwrap();
            let mut s = B64.decode(sig).unwrap();
            s[10] ^= 1;
            format!("{head}.{}", B64.encode(s))
        };
        let tamper_payload = {
            let t = token(&e, "e1", &claims());
            let parts: Vec<&str> = t.split('.').collect();
            let evil = B64.encode(with(claims(), "sub", json!("admin")).to_string());
            format!("{}.{}.{}", parts[0], evil, parts[2])
        };
        let hs256 = {
            use aws_lc_rs::hmac;
            let msg = format!(
                "{}.{}",
                B64.encode(json!({"alg":"HS256","kid":"h1"}).to_string()),
                B64.encode(claims().to_string())
            );
            let key = hmac::Key::new(hmac::HMAC_SHA256, b"shared-secret");
            format!("{msg}.{}", B64.encode(hmac::sign(&key, msg.as_bytes())))
        };
        let none = format!(
            "{}.{}.",
            B64.encode(json!({"alg":"none"}).to_string()),
            B64.encode(claims().to_string())
        );
        let none_sig = format!("{none}c2ln");
        let cases: Vec<(&str, String, i64, Result<String, AuthnError>)> = vec![
            ("rs256", token(&r, "r1", &claims()), NOW, ok("bot-7")),
            ("es256", token(&e, "e1", &claims()), NOW, ok("bot-7")),
            ("eddsa", token(&d, "d1", &claims()), NOW, ok("bot-7")),
            (
                "aud array containing ours",
                token(&e, "e1", &with(claims(), "aud", json!(["x", AUD]))),
                NOW,
                ok("bot-7"),
            ),
            (
                "wrong issuer",
                token(&e, "e1", &with(claims(), "iss", json!("https://evil/"))),
                NOW,
                un.clone(),
            ),
            (
                "issuer as array",
                token(&e, "e1", &with(claims(), "iss", json!([ISS]))),
                NOW,
                un.clone(),
            ),
            (
                "wrong audience",
                token(&e, "e1", &with(claims(), "aud", json!("other"))),
                NOW,
                un.clone(),
            ),
            (
                "missing audience",
                token(&e, "e1", &without(claims(), "aud")),
                NOW,
                un.clone(),
            ),
            (
                "missing exp",
                token(&e, "e1", &without(claims(), "exp")),
                NOW,
                un.clone(),
            ),
            (
                "string exp",
                token(&e, "e1", &with(claims(), "exp", json!("soon"))),
                NOW,
                un.clone(),
            ),
            (
                "expired beyond leeway",
                token(&e, "e1", &claims()),
                NOW + 600 + 61,
                exp.clone(),
            ),
            (
                "expired within leeway",
                token(&e, "e1", &with(claims(), "sub", json!("late"))),
                NOW + 600 + 60,
                ok("late"),
            ),
            (
                "nbf in the future",
                token(&e, "e1", &with(claims(), "nbf", json!(NOW + 120))),
                NOW,
                un.clone(),
            ),
            (
                "nbf within leeway",
                token(&e, "e1", &with(claims(), "nbf", json!(NOW + 30))),
                NOW,
                ok("bot-7"),
            ),
            (
                "missing sub",
                token(&e, "e1", &without(claims(), "sub")),
                NOW,
                un.clone(),
            ),
            (
                "numeric sub",
                token(&e, "e1", &with(claims(), "sub", json!(7))),
                NOW,
                un.clone(),
            ),
            (
                "roles not strings",
                token(&e, "e1", &with(claims(), "roles", json!([1]))),
                NOW,
                un.clone(),
            ),
            (
                "roles an object",
                token(&e, "e1", &with(claims(), "roles", json!({}))),
                NOW,
                un.clone(),
            ),
            ("unknown kid", token(&e, "nope", &claims()), NOW, un.clone()),
            (
                "signed by a stranger",
                token(&stranger, "e1", &claims()),
                NOW,
                un.clone(),
            ),
            ("tampered signature", tamper_sig, NOW, un.clone()),
            ("tampered payload", tamper_payload, NOW, un.clone()),
            ("alg none", none, NOW, un.clone()),
            ("alg none with junk sig", none_sig, NOW, un.clone()),
            ("hs256 with an oct key in the set", hs256, NOW, un.clone()),
            (
                "alg confusion: RS256 header on the EC kid",
                token_with(&json!({"alg":"RS256","kid":"e1"}), &claims(), &r),
                NOW,
                un.clone(),
            ),
            (
                "ES256 header naming the RSA kid",
                token_with(&json!({"alg":"ES256","kid":"r1"}), &claims(), &e),
                NOW,
                un.clone(),
            ),
            (
                "crit naming an unknown extension",
                token_with(
                    &json!({"alg":"ES256","kid":"e1","crit":["exp"],"exp":1}),
                    &claims(),
                    &e,
                ),
                NOW,
                un.clone(),
            ),
            (
                "crit b64 (RFC 7797 unencoded payload)",
                token_with(
                    &json!({"alg":"ES256","kid":"e1","crit":["b64"],"b64":false}),
                    &claims(),
                    &e,
                ),
                NOW,
                un.clone(),
            ),
            (
                "crit empty list (malformed)",
                token_with(&json!({"alg":"ES256","kid":"e1","crit":[]}), &claims(), &e),
                NOW,
                un.clone(),
            ),
            (
                "crit not a list",
                token_with(&json!({"alg":"ES256","kid":"e1","crit":"x"}), &claims(), &e),
                NOW,
                un.clone(),
            ),
            (
                "crit null",
                token_with(
                    &json!({"alg":"ES256","kid":"e1","crit":null}),
                    &claims(),
                    &e,
                ),
                NOW,
                un.clone(),
            ),
            ("not a jwt", "a.b.c".into(), NOW, un.clone()),
            ("empty", String::new(), NOW, un.clone()),
        ];
        for (name, tok, now, want) in cases {
            let got = v.verify(&tok, now).map(|a| a.id.clone());
            assert_eq!(got, want, "{name}");
        }
        let a = v.verify(&token(&d, "d1", &claims()), NOW).unwrap();
        assert_eq!(a.roles, ["support", "billing"]);
        assert_eq!(a.exp, NOW + 600);
        assert_eq!(v.keys().len(), 3, "oct key skipped");
        assert!(
            v.keys().skipped() >= 1,
            "oct (and the enc key, if it parsed) skipped"
        );
    }

    #[test]
    fn roles_claim_may_be_a_space_separated_string() {
        let e = ec();
        let (mut v, _d) = verifier(&json!({"keys": [e.jwk("e1")]}), "scope");
        let t = token(&e, "e1", &with(claims(), "scope", json!("read write")));
        assert_eq!(v.verify(&t, NOW).unwrap().roles, ["read", "write"]);
        let t = token(&e, "e1", &claims());
        assert!(
            v.verify(&t, NOW).unwrap().roles.is_empty(),
            "absent → no roles"
        );
    }

    #[test]
    fn kid_may_be_omitted_when_one_key_fits() {
        let e = ec();
        let (mut v, _d) = verifier(&json!({"keys": [e.jwk("e1"), ed().jwk("d1")]}), "");
        let t = token_with(&json!({"alg":"ES256"}), &claims(), &e);
        assert!(v.verify(&t, NOW).is_ok());
        let e2 = ec();
        let (mut v, _d) = verifier(&json!({"keys": [e.jwk("e1"), e2.jwk("e2")]}), "");
        let t = token_with(&json!({"alg":"ES256"}), &claims(), &e2);
        assert_eq!(v.verify(&t, NOW).err(), Some(AuthnError::Unauthenticated));
    }

    #[test]
    fn cache_hits_skip_verification_but_recheck_exp() {
        let e = ec();
        let (mut v, _d) = verifier(&json!({"keys": [e.jwk("e1")]}), "");
        let t = token(&e, "e1", &claims());
        assert!(v.verify(&t, NOW).is_ok());
        assert!(v.verify(&t, NOW + 1).is_ok());
        assert!(v.verify(&t, NOW + 2).is_ok());
        assert_eq!((v.cache_misses, v.cache_hits), (1, 2));
        assert_eq!(
            v.verify(&t, NOW + 600 + 61).err(),
            Some(AuthnError::CredentialExpired)
        );
        assert_eq!(v.cached_tokens(), 0, "expired entry dropped");
        // A failed token is never cached.
        let bad = token(&e, "e1", &with(claims(), "aud", json!("x")));
        assert!(v.verify(&bad, NOW).is_err());
        assert!(v.verify(&bad, NOW).is_err());
        assert_eq!(v.cached_tokens(), 0);
    }

    #[test]
    fn cache_is_bounded() {
        let e = ec();
        let (v, _d) = verifier(&json!({"keys": [e.jwk("e1")]}), "");
        let mut v = v.with_cache_capacity(2);
        for i in 0..5 {
            let t = token(&e, "e1", &with(claims(), "sub", json!(format!("a{i}"))));
            assert!(v.verify(&t, NOW).is_ok());
            assert!(v.cached_tokens() <= 2);
        }
        assert_eq!(v.cached_tokens(), 2);
        let mut v0 = v.fork().with_cache_capacity(0);
        let t = token(&e, "e1", &claims());
        assert!(v0.verify(&t, NOW).is_ok());
        assert_eq!(v0.cached_tokens(), 0);
    }

    #[test]
    fn rollover_drops_cached_tokens_of_removed_keys_and_unknown_kid_requests_refresh() {
        let (old, new) = (ec(), ed());
        let (mut v, _d) = verifier(&json!({"keys": [old.jwk("old")]}), "");
        let t_old = token(&old, "old", &claims());
        let t_new = token(&new, "new", &claims());
        assert!(v.verify(&t_old, NOW).is_ok());
        assert!(!v.needs_refresh(NOW), "file source, nothing wanted");
        assert_eq!(
            v.verify(&t_new, NOW).err(),
            Some(AuthnError::Unauthenticated)
        );
        assert!(v.needs_refresh(NOW), "unknown kid asks for a refresh");
        let set: JwkSet = serde_json::from_value(json!({"keys": [new.jwk("new")]})).unwrap();
        assert_eq!(v.update_jwks(&set, NOW), Ok(1));
        assert!(!v.needs_refresh(NOW));
        assert!(v.verify(&t_new, NOW).is_ok());
        assert_eq!(
            v.verify(&t_old, NOW).err(),
            Some(AuthnError::Unauthenticated)
        );
        // Unknown kid again: refresh is rate-limited.
        assert!(v.verify(&token(&old, "zzz", &claims()), NOW + 1).is_err());
        assert!(!v.needs_refresh(NOW + 1));
        assert!(v.needs_refresh(NOW + MIN_REFRESH_INTERVAL_SECS));
        // An empty/unusable set is refused and the keys stay.
        let junk: JwkSet = serde_json::from_value(json!({"keys": []})).unwrap();
        assert_eq!(v.update_jwks(&junk, NOW), Err(JwtConfigError::NoUsableKey));
        assert!(v.verify(&t_new, NOW).is_ok());
    }

    #[test]
    fn shared_keys_reach_every_fork_and_unknown_kids_ask_for_a_refresh() {
        let (old, new) = (ec(), ed());
        let (v, _d) = verifier(&json!({"keys": [old.jwk("old")]}), "");
        let shared = Arc::new(SharedKeys::default());
        // nothing published yet: the verifier keeps its own keys
        let template = v.with_shared(shared.clone());
        let (mut a, mut b) = (template.fork(), template.fork());
        let t_old = token(&old, "old", &claims());
        let t_new = token(&new, "new", &claims());
        assert!(a.verify(&t_old, NOW).is_ok());
        assert!(!shared.refresh_wanted());
        assert!(b.verify(&t_new, NOW).is_err());
        assert!(
            shared.refresh_wanted(),
            "unknown kid reported to the fetcher"
        );
        let set: JwkSet = serde_json::from_value(json!({"keys": [new.jwk("new")]})).unwrap();
        shared.publish(Arc::new(KeySet::from_jwks(&set)));
        assert!(!shared.refresh_wanted());
        assert_eq!(shared.version(), 1);
        for v in [&mut a, &mut b] {
            assert!(v.verify(&t_new, NOW).is_ok());
            // the removed key's cached token is dropped at once
            assert!(v.verify(&t_old, NOW).is_err());
        }
        // a fork made after the publish starts with the new keys
        let mut c = template.fork();
        assert!(c.verify(&t_new, NOW).is_ok());
    }

    #[test]
    fn config_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.json"), r#"{"keys":[]}"#).unwrap();
        std::fs::write(dir.path().join("junk.json"), "nope").unwrap();
        let base = RawJwt {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks: "https://idp.example.com/jwks".into(),
            agent_claim: "sub".into(),
            roles_claim: "roles".into(),
            leeway: None,
            refresh_interval: None,
            min_refresh_interval: None,
            ca_file: None,
        };
        let cases: Vec<(&str, RawJwt, Result<(), &str>)> = vec![
            ("https ok", base.clone(), Ok(())),
            (
                "http on loopback ok",
                RawJwt {
                    jwks: "http://127.0.0.1:8080/jwks".into(),
                    ..base.clone()
                },
                Ok(()),
            ),
            (
                "intervals and ca_file",
                RawJwt {
                    refresh_interval: Some("5m".into()),
                    min_refresh_interval: Some("1s".into()),
                    ca_file: Some("ca.pem".into()),
                    ..base.clone()
                },
                Ok(()),
            ),
            (
                "zero interval",
                RawJwt {
                    refresh_interval: Some("0s".into()),
                    ..base.clone()
                },
                Err("at least 1s"),
            ),
            (
                "interval on a file source",
                RawJwt {
                    jwks: "file:empty.json".into(),
                    refresh_interval: Some("5m".into()),
                    ..base.clone()
                },
                Err("https JWKS only"),
            ),
            (
                "leeway 300s ok",
                RawJwt {
                    leeway: Some("300s".into()),
                    ..base.clone()
                },
                Ok(()),
            ),
            (
                "leeway too big",
                RawJwt {
                    leeway: Some("301s".into()),
                    ..base.clone()
                },
                Err("leeway"),
            ),
            (
                "leeway junk",
                RawJwt {
                    leeway: Some("soon".into()),
                    ..base.clone()
                },
                Err("leeway"),
            ),
            (
                "http refused",
                RawJwt {
                    jwks: "http://idp/jwks".into(),
                    ..base.clone()
                },
                Err("jwks"),
            ),
            (
                "literal refused",
                RawJwt {
                    jwks: "{\"keys\":[]}".into(),
                    ..base.clone()
                },
                Err("jwks"),
            ),
            (
                "missing file",
                RawJwt {
                    jwks: "file:nope.json".into(),
                    ..base.clone()
                },
                Err("cannot read"),
            ),
            (
                "no usable key",
                RawJwt {
                    jwks: "file:empty.json".into(),
                    ..base.clone()
                },
                Err("no usable"),
            ),
            (
                "not json",
                RawJwt {
                    jwks: "file:junk.json".into(),
                    ..base.clone()
                },
                Err("not a valid"),
            ),
            (
                "empty issuer",
                RawJwt {
                    issuer: "".into(),
                    ..base.clone()
                },
                Err("issuer"),
            ),
        ];
        for (name, raw, want) in cases {
            match (JwtVerifier::new(&raw, dir.path()), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(frag)) => assert!(e.to_string().contains(frag), "{name}: {e}"),
                (got, want) => panic!("{name}: got {:?}, want {want:?}", got.err()),
            }
        }
        let v = JwtVerifier::new(&base, dir.path()).unwrap();
        assert!(v.needs_refresh(NOW), "https never fetched");
        assert_eq!(v.leeway(), 60);
        let mut v = v;
        v.mark_refresh_attempt(NOW);
        assert!(!v.needs_refresh(NOW + 1));
        assert!(
            v.needs_refresh(NOW + MIN_REFRESH_INTERVAL_SECS),
            "no keys yet: retry at the floor, not the period"
        );
        let set: JwkSet = serde_json::from_value(json!({"keys": [ec().jwk("k")]})).unwrap();
        assert_eq!(v.update_jwks(&set, NOW), Ok(1));
        assert!(!v.needs_refresh(NOW + MIN_REFRESH_INTERVAL_SECS));
        assert!(v.needs_refresh(NOW + DEFAULT_REFRESH_INTERVAL_SECS));
    }

    #[test]
    fn peek_issuer_reads_unverified_iss() {
        let e = ec();
        assert_eq!(
            peek_issuer(&token(&e, "k", &claims())).as_deref(),
            Some(ISS)
        );
        assert_eq!(peek_issuer("a.b.c"), None);
    }
}
