//! JWKS over https for `[[jwt]] jwks = "https://..."` (plain http only on loopback).
//!
//! One [`Feed`] per (URL, ca_file, refresh intervals), kept in a process-wide store of weak
//! entries: a feed lives as long as a compiled config uses it. The key set is fetched when a
//! config is compiled (`run`, reload and `check`, so an unreachable IdP shows up as a warning
//! there), then by the refresher thread every `refresh_interval`, and sooner — but at most once
//! per `min_refresh_interval` — when a worker saw a token naming an unknown `kid`. Each new key
//! set is published through the feed's `SharedKeys`, which every worker's verifier follows. A
//! failed fetch, or a set without a usable key, keeps the old keys and is logged.
use crate::identity::jwt::{KeySet, SharedKeys, parse_jwks};
use crate::net::url::Url;
use crate::util::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

const NEVER: i64 = i64::MIN;

pub struct Feed {
    url: Url,
    display: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    shared: Arc<SharedKeys>,
    refresh_interval: i64,
    min_refresh_interval: i64,
    last_attempt: AtomicI64,
    /// Unix seconds of the last fetch that published a key set (`NEVER`: none yet).
    last_success: AtomicI64,
    in_flight: AtomicBool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("url", &self.display)
            .field("version", &self.shared.version())
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub fn shared(&self) -> &Arc<SharedKeys> {
        &self.shared
    }

    pub fn url(&self) -> &str {
        &self.display
    }

    /// Unix seconds of the last successful fetch, if any (for `/metrics`).
    pub fn last_success(&self) -> Option<i64> {
        Some(self.last_success.load(Ordering::Acquire)).filter(|&t| t != NEVER)
    }

    /// Usable keys held now.
    pub fn key_count(&self) -> usize {
        self.shared.keys().len()
    }

    /// Is a fetch due at `now_unix`? Periodic, or (at the floor) when keys are wanted or
    /// missing.
    pub fn due(&self, now_unix: i64) -> bool {
        let last = self.last_attempt.load(Ordering::Acquire);
        if last == NEVER {
            return true;
        }
        let since = now_unix.saturating_sub(last);
        since >= self.refresh_interval
            || ((self.shared.refresh_wanted() || self.shared.version() == 0)
                && since >= self.min_refresh_interval)
    }

    /// Claims a fetch (one at a time per feed).
    fn begin(&self, now_unix: i64, force: bool) -> bool {
        if !force && !self.due(now_unix) {
            return false;
        }
        if self
            .in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.last_attempt.store(now_unix, Ordering::Release);
        true
    }

    /// Fetches and publishes the key set (blocking; after `begin`). Returns the usable key
    /// count, or why the old keys stay.
    fn fetch_claimed(&self) -> Result<usize, String> {
        let r = (|| {
            let resp = crate::net::fetch::get(
                &self.url,
                self.tls.as_ref(),
                &crate::net::fetch::Timeouts::default(),
            )
            .map_err(|e| e.to_string())?;
            if !(200..300).contains(&resp.status) {
                return Err(format!("HTTP {}", resp.status));
            }
            let set = parse_jwks(&resp.body).map_err(|e| e.to_string())?;
            let ks = KeySet::from_jwks(&set);
            if ks.is_empty() {
                return Err("the JWKS has no usable RS256/ES256/EdDSA signing key".into());
            }
            let n = ks.len();
            self.shared.publish(Arc::new(ks));
            let now = i64::try_from(crate::util::clock::unix_now().as_secs()).unwrap_or(i64::MAX);
            self.last_success.store(now, Ordering::Release);
            Ok(n)
        })();
        self.in_flight.store(false, Ordering::Release);
        r
    }

    fn log(&self, r: &Result<usize, String>) {
        match r {
            Ok(n) => tracing::info!(jwks = %self.display, keys = n, "JWKS fetched"),
            Err(e) => tracing::warn!(
                jwks = %self.display,
                error = %e,
                keys_kept = self.shared.keys().len(),
                "JWKS fetch failed; keeping the previous keys"
            ),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    url: String,
    ca_file: Option<PathBuf>,
    refresh_interval: i64,
    min_refresh_interval: i64,
}

#[derive(Default)]
pub struct Store {
    feeds: Registry<Key, Feed>,
}

pub fn global() -> &'static Store {
    static STORE: std::sync::OnceLock<Store> = std::sync::OnceLock::new();
    STORE.get_or_init(Store::default)
}

impl Store {
    /// The feed for `url` (the live one, or a new one), fetched now (blocking: config compile
    /// only). `Ok((feed, Some(warning)))` when the fetch failed; `Err` for a config error.
    pub fn attach(
        &self,
        url: &str,
        ca_file: Option<&Path>,
        refresh_interval: i64,
        min_refresh_interval: i64,
        now_unix: i64,
    ) -> Result<(Arc<Feed>, Option<String>), String> {
        let key = Key {
            url: url.to_string(),
            ca_file: ca_file.map(Path::to_path_buf),
            refresh_interval,
            min_refresh_interval,
        };
        let feed = self.feeds.try_get_or_insert_with(key, || {
            let parsed = Url::parse(url)?;
            let tls = if parsed.https {
                Some(crate::net::tls::client_config(ca_file)?)
            } else {
                None
            };
            Ok::<_, String>(Feed {
                url: parsed,
                display: url.to_string(),
                tls,
                shared: Arc::new(SharedKeys::default()),
                refresh_interval,
                min_refresh_interval,
                last_attempt: AtomicI64::new(NEVER),
                last_success: AtomicI64::new(NEVER),
                in_flight: AtomicBool::new(false),
            })
        })?;
        let warning = if feed.begin(now_unix, true) {
            let r = feed.fetch_claimed();
            feed.log(&r);
            r.err().map(|e| {
                let kept = feed.shared.keys().len();
                if kept > 0 {
                    format!("cannot fetch {url}: {e}; keeping the {kept} keys fetched before")
                } else {
                    format!(
                        "cannot fetch {url}: {e}; JWT agents of this issuer are refused until a fetch succeeds (retried every {min_refresh_interval}s)"
                    )
                }
            })
        } else {
            None
        };
        Ok((feed, warning))
    }

    pub fn live(&self) -> Vec<Arc<Feed>> {
        self.feeds.live()
    }
}

/// Starts the fetches that are due (refresher thread), each on its own short-lived thread.
pub fn tick(now_unix: i64) {
    for feed in global().live() {
        if !feed.begin(now_unix, false) {
            continue;
        }
        let f = feed.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-jwks".into())
            .spawn(move || {
                let r = f.fetch_claimed();
                f.log(&r);
            });
        if spawned.is_err() {
            feed.in_flight.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(refresh: i64, min: i64) -> Feed {
        Feed {
            url: Url::parse("http://127.0.0.1:9/jwks").unwrap(),
            display: "x".into(),
            tls: None,
            shared: Arc::new(SharedKeys::default()),
            refresh_interval: refresh,
            min_refresh_interval: min,
            last_attempt: AtomicI64::new(NEVER),
            last_success: AtomicI64::new(NEVER),
            in_flight: AtomicBool::new(false),
        }
    }

    #[test]
    fn refresh_schedule() {
        let f = feed(600, 30);
        assert!(f.due(0), "never fetched");
        assert!(f.begin(100, false));
        assert!(!f.begin(100, true), "one fetch at a time");
        f.in_flight.store(false, Ordering::Release);
        // no keys yet: retried at the floor
        assert!(!f.due(129));
        assert!(f.due(130));
        f.shared.publish(Arc::new(KeySet::empty()));
        assert!(!f.due(130), "keys present: the period");
        assert!(f.due(700));
        f.shared.want_refresh();
        assert!(f.due(130), "unknown kid: the floor");
        assert!(!f.due(129));
    }

    #[test]
    fn unreachable_feed_warns_and_keeps_nothing() {
        let store = Store::default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/jwks");
        let (f, w) = store.attach(&url, None, 600, 30, 1000).unwrap();
        let w = w.unwrap();
        assert!(
            w.contains("cannot fetch") && w.contains("refused until"),
            "{w}"
        );
        assert_eq!(f.shared().version(), 0);
        let (g, _) = store.attach(&url, None, 600, 30, 1001).unwrap();
        assert!(Arc::ptr_eq(&f, &g));
        assert_eq!(store.live().len(), 1);
        drop((f, g));
        assert!(store.live().is_empty());
        assert!(
            store
                .attach("ftp://x/", None, 600, 30, 0)
                .unwrap_err()
                .contains("https")
        );
    }
}
