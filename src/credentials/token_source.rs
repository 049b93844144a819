//! OAuth2 client credentials end to end (`auth = { scheme = "oauth2", ... }`).
//!
//! One [`TokenSource`] per (proxy name, token_url, client_id, scope), kept in a process-wide
//! store (like the meters) so that a reload which keeps those four keeps the token. The
//! refresher thread (`refresher.rs`) drives each source's sans-io `OAuthTokenCache`: the first
//! token is requested as soon as the source exists, later ones 60–180 s before expiry (at
//! half-life for short-lived tokens), with backoff after failures. Workers never send token
//! requests, so however many calls wait for a token there is one request in flight per source
//! (single flight).
//!
//! Workers read the published token with [`TokenSource::current`]: an uncontended
//! `std::sync::RwLock` read plus an `Arc` clone per call. Readers never wait for each other; the
//! only writer is the refresher, which holds the lock just long enough to swap the pointer, once
//! per token lifetime — cheaper and simpler than a hand-rolled seqlock, and without a new crate.
//! A call that finds no token waits for one (polling with `monoio::time::sleep`, bounded by
//! `limits.upstream_connect_timeout`), unless the last token request failed, and otherwise gets
//! 502 `upstream_auth_failed`. A failed refresh keeps the old token in use until it expires.
//!
//! Neither the client secret nor a token is ever logged: errors are `OAuthError`s, which carry
//! neither.
// The `Mutex` below guards the refresh state machine and is locked only by the refresher
// thread and its fetch threads (off the data plane); workers touch the `RwLock`'d published
// token and atomics only.
#![allow(clippy::disallowed_types)]
use crate::credentials::{EXPIRY_SAFETY_SECS, OAuth2Client, OAuthError, OAuthTokenCache};
use crate::secrets::Secret;
use crate::util::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often a waiting call looks for its token.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// An access token and when it expires (Unix seconds).
pub struct Token {
    secret: Secret,
    expires_at: i64,
    /// When it was obtained (Unix seconds).
    obtained_at: i64,
}

impl Token {
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

fn unix_secs() -> i64 {
    i64::try_from(crate::util::clock::unix_now().as_secs()).unwrap_or(i64::MAX)
}

/// The token of one (proxy, token_url, client_id, scope), shared by every worker.
pub struct TokenSource {
    proxy: String,
    /// Who sends the token requests: replaced by `commit` after a reload (a new client secret
    /// or auth method is used from the next refresh on; the current token stays).
    client: RwLock<(Arc<OAuth2Client>, Option<Arc<rustls::ClientConfig>>)>,
    cache: Mutex<OAuthTokenCache>,
    published: RwLock<Option<Arc<Token>>>,
    /// The last token request failed and no other is in flight (calls without a valid token
    /// fail at once instead of waiting).
    failed: AtomicBool,
    /// Token requests sent so far.
    requests: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("proxy", &self.proxy)
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    fn new(
        proxy: &str,
        client: Arc<OAuth2Client>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> TokenSource {
        TokenSource {
            proxy: proxy.to_string(),
            client: RwLock::new((client, tls)),
            cache: Mutex::new(OAuthTokenCache::new()),
            published: RwLock::new(None),
            failed: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        }
    }

    pub fn proxy(&self) -> &str {
        &self.proxy
    }

    /// Token requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The published token if it is valid for `EXPIRY_SAFETY_SECS` more (the hot path).
    #[inline]
    pub fn current(&self, now_unix: i64) -> Option<Arc<Token>> {
        let g = self.published.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|t| now_unix < t.expires_at.saturating_sub(EXPIRY_SAFETY_SECS))
            .cloned()
    }

    /// The published token's (obtained, expires) Unix seconds, valid or not (for `/metrics`).
    pub fn token_times(&self) -> Option<(i64, i64)> {
        let g = self.published.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|t| (t.obtained_at, t.expires_at))
    }

    /// Whether the last token request failed (and none is in flight).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn install(&self, client: Arc<OAuth2Client>, tls: Option<Arc<rustls::ClientConfig>>) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = (client, tls);
    }

    fn client(&self) -> (Arc<OAuth2Client>, Option<Arc<rustls::ClientConfig>>) {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Claims the next refresh if one is due (single flight: true for one caller).
    pub fn begin_refresh(&self, now_unix: i64) -> bool {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !c.begin_refresh(now_unix) {
            return false;
        }
        self.failed.store(false, Ordering::Release);
        true
    }

    /// Sends the token request (blocking: refresher fetch threads only) and records the
    /// outcome.
    pub fn refresh_blocking(&self) {
        let (client, tls) = self.client();
        let req = client.build_token_request();
        let headers: Vec<(&str, &[u8])> = req.headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = crate::net::fetch::request(
            &client.token_url,
            tls.as_ref(),
            req.method,
            &headers,
            &req.body,
            &crate::net::fetch::Timeouts::default(),
        )
        .map_err(|e| OAuthError::Transport(e.to_string()))
        .and_then(|r| OAuth2Client::parse_token_response(r.status, &r.body));
        drop(headers);
        drop(req);
        self.complete(unix_secs(), &client.token_url.authority, result);
    }

    /// Records a token request's outcome: publishes a new token, or keeps the old one (until
    /// it expires) and logs why.
    pub fn complete(
        &self,
        now_unix: i64,
        endpoint: &str,
        result: Result<(Secret, u64), OAuthError>,
    ) {
        let fresh = match &result {
            Ok((s, lifetime)) => {
                let lifetime = i64::try_from(*lifetime)
                    .unwrap_or(i64::MAX / 4)
                    .min(i64::MAX / 4);
                Some(Arc::new(Token {
                    secret: Secret::new(s.expose().to_vec()),
                    expires_at: now_unix.saturating_add(lifetime),
                    obtained_at: now_unix,
                }))
            }
            Err(_) => None,
        };
        let error = result.as_ref().err().cloned();
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.complete(now_unix, result);
        match (fresh, error) {
            (Some(t), _) => {
                let expires_in = t.expires_at - now_unix;
                *self.published.write().unwrap_or_else(|p| p.into_inner()) = Some(t);
                self.failed.store(false, Ordering::Release);
                tracing::info!(
                    proxy = %self.proxy,
                    token_endpoint = endpoint,
                    expires_in,
                    "OAuth2 access token obtained"
                );
            }
            (None, e) => {
                self.failed.store(true, Ordering::Release);
                let e = e.map(|e| e.to_string()).unwrap_or_default();
                match self.current(now_unix) {
                    Some(t) => tracing::warn!(
                        proxy = %self.proxy,
                        token_endpoint = endpoint,
                        error = %e,
                        valid_for_secs = t.expires_at - EXPIRY_SAFETY_SECS - now_unix,
                        "OAuth2 token refresh failed; the current token stays in use until it expires"
                    ),
                    None => tracing::error!(
                        proxy = %self.proxy,
                        token_endpoint = endpoint,
                        error = %e,
                        "OAuth2 token request failed and no valid token is left: calls through this proxy get 502 upstream_auth_failed"
                    ),
                }
            }
        }
    }
}

/// A proxy's link to its token source, and the TLS config for its token endpoint.
pub struct Binding {
    pub source: Arc<TokenSource>,
    client: Arc<OAuth2Client>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Binding {
    /// After the config holding this binding has been swapped in: its client (secret, auth
    /// method, CA file) is the one token requests use from now on.
    pub fn commit(&self) {
        self.source.install(self.client.clone(), self.tls.clone());
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    proxy: String,
    token_url: (bool, String, String),
    client_id: String,
    scope: Option<String>,
}

/// Every live token source. Entries are weak: a source lives as long as a compiled config
/// uses it, so a proxy removed by a reload stops being refreshed.
#[derive(Default)]
pub struct Store {
    sources: Registry<Key, TokenSource>,
}

/// The process-wide store (see the module doc).
pub fn global() -> &'static Store {
    static STORE: std::sync::OnceLock<Store> = std::sync::OnceLock::new();
    STORE.get_or_init(Store::default)
}

impl Store {
    /// The source for `proxy` with this client: the live one with the same key, or a new one
    /// (which the refresher starts fetching for at once). An existing source is not changed
    /// here — a config that fails to compile must change nothing; see `commit`.
    pub fn bind(
        &self,
        proxy: &str,
        client: &Arc<OAuth2Client>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Binding {
        let key = Key {
            proxy: proxy.to_string(),
            token_url: (
                client.token_url.https,
                client.token_url.authority.clone(),
                client.token_url.path.clone(),
            ),
            client_id: client.client_id.clone(),
            scope: client.scope.clone(),
        };
        let source = self
            .sources
            .get_or_insert_with(key, || TokenSource::new(proxy, client.clone(), tls.clone()));
        Binding {
            source,
            client: client.clone(),
            tls,
        }
    }

    /// The sources some config still uses (dead entries are dropped).
    pub fn live(&self) -> Vec<Arc<TokenSource>> {
        self.sources.live()
    }
}

/// Starts the refreshes that are due (refresher thread). Each runs on its own short-lived
/// thread so that one slow token endpoint does not hold up the others.
pub fn tick(now_unix: i64) {
    for src in global().live() {
        if !src.begin_refresh(now_unix) {
            continue;
        }
        let s = src.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-oauth".into())
            .spawn(move || s.refresh_blocking());
        if let Err(e) = spawned {
            src.complete(
                now_unix,
                "-",
                Err(OAuthError::Transport(format!("cannot start a thread: {e}"))),
            );
        }
    }
}

/// The token for a call (worker side). Waits, bounded by `bound`, while the first token is on
/// its way; fails at once when the last token request failed. The `Err` is the 502's reason.
pub async fn token(src: &TokenSource, bound: Duration) -> Result<Arc<Token>, &'static str> {
    let deadline = crate::util::clock::now() + bound;
    let mut woke = false;
    let ready = |_late| {
        if let Some(t) = src.current(unix_secs()) {
            return Some(Ok(t));
        }
        if src.failed() {
            // let the refresher retry as soon as its backoff allows
            crate::util::wake::wake();
            return Some(Err("the OAuth2 token endpoint did not issue a token"));
        }
        if !woke {
            crate::util::wake::wake();
            woke = true;
        }
        None
    };
    crate::util::wait::poll_until(deadline, WAIT_POLL, ready)
        .await
        .unwrap_or(Err("no OAuth2 access token arrived in time"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{OutboundAuth, RawAuth};

    fn client(scope: &str) -> Arc<OAuth2Client> {
        let raw: RawAuth = toml::from_str(&format!(
            r#"scheme = "oauth2"
token_url = "http://127.0.0.1:9/token"
client_id = "c"
secret = "env:X"
scope = "{scope}""#
        ))
        .unwrap();
        let mut resolve = |_: &str| Ok(Secret::new(b"client-SECRET".to_vec()));
        let a = OutboundAuth::compile(&raw, &mut resolve).unwrap();
        a.oauth2_shared().unwrap().clone()
    }

    #[test]
    fn sources_are_shared_by_key_and_dropped_with_their_configs() {
        let store = Store::default();
        let a = store.bind("p", &client("s1"), None);
        let b = store.bind("p", &client("s1"), None);
        assert!(Arc::ptr_eq(&a.source, &b.source), "same key, same source");
        let c = store.bind("p", &client("s2"), None);
        let d = store.bind("q", &client("s1"), None);
        assert!(
            !Arc::ptr_eq(&a.source, &c.source),
            "scope is part of the key"
        );
        assert!(
            !Arc::ptr_eq(&a.source, &d.source),
            "proxy is part of the key"
        );
        assert_eq!(store.live().len(), 3);
        drop((c, d));
        assert_eq!(store.live().len(), 1);
        drop((a, b));
        assert!(store.live().is_empty());
    }

    #[test]
    fn publish_fail_and_expiry() {
        let src = TokenSource::new("p", client("s"), None);
        assert!(src.current(0).is_none());
        assert!(!src.failed());
        assert!(src.begin_refresh(100));
        assert!(!src.begin_refresh(100), "single flight");
        src.complete(100, "idp", Ok((Secret::new(b"tok-1".to_vec()), 60)));
        let t = src.current(100).unwrap();
        assert_eq!(t.secret().expose(), b"tok-1");
        assert_eq!(t.expires_at(), 160);
        assert!(src.current(160 - EXPIRY_SAFETY_SECS).is_none());
        // a failed refresh keeps the old token until it expires
        assert!(src.begin_refresh(130));
        src.complete(130, "idp", Err(OAuthError::Status(500)));
        assert!(src.failed());
        assert_eq!(src.current(140).unwrap().secret().expose(), b"tok-1");
        assert!(src.current(156).is_none());
        // the next attempt clears `failed` while in flight
        assert!(src.begin_refresh(200));
        assert!(!src.failed());
        src.complete(200, "idp", Ok((Secret::new(b"tok-2".to_vec()), 3600)));
        assert_eq!(src.current(201).unwrap().secret().expose(), b"tok-2");
        assert!(!format!("{src:?}").contains("tok-"));
    }

    #[test]
    fn a_waiting_call_fails_fast_after_a_failure_and_gets_a_token_otherwise() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let src = TokenSource::new("p", client("s"), None);
        let now = unix_secs();
        assert!(src.begin_refresh(now));
        src.complete(now, "idp", Err(OAuthError::Status(503)));
        let r = rt.block_on(token(&src, Duration::from_secs(30)));
        assert!(r.is_err(), "failed: no 30 s wait");
        let src = TokenSource::new("p", client("s"), None);
        let r = rt.block_on(token(&src, Duration::from_millis(30)));
        assert_eq!(r.err(), Some("no OAuth2 access token arrived in time"));
        src.complete(now, "idp", Ok((Secret::new(b"t".to_vec()), 600)));
        let r = rt.block_on(token(&src, Duration::from_millis(30)));
        assert_eq!(
            r.ok().map(|t| t.secret().expose().to_vec()),
            Some(b"t".to_vec())
        );
    }
}
