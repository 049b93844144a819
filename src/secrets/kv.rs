//! Secrets from an OpenBao / Vault KV v2 engine: `secret = "kv:PATH#FIELD"` with a
//! `[secrets.kv]` section naming the server.
//!
//! * [`KvClient`]: a blocking client on `fetch.rs` (control plane only: the config compiler, the
//!   refresher thread and its short-lived fetch threads). It reads `GET /v1/{mount}/data/{path}`
//!   with `X-Vault-Token` and takes `data.data[FIELD]` (string values only). Its token comes
//!   from a `token` reference (re-read on every login, so a rotated token file is picked up) or
//!   an AppRole login; it is renewed (`renew-self`) once two thirds of its lease have passed,
//!   and replaced by a new login when renewal or a read says it is no longer valid.
//! * [`KvEntry`]: one (server, path, field), kept in a process-wide store (weak entries, like
//!   `oauth.rs`) so a reload that keeps the reference keeps the cached value. Workers read the
//!   published value per call (`current`: an uncontended `RwLock` read and an `Arc` clone); the
//!   refresher re-reads it every `ttl`. A value serves until `ttl + max_stale` after its last
//!   successful read: during an outage calls keep working for `max_stale`, then fail closed
//!   (502 `secret_unavailable`).
//! * Rotation: when the upstream answers 401/403 to a call that used a kv value, the entry is
//!   re-read once (single flight, at most once per `REREAD_MIN_INTERVAL`), and calls that use
//!   the entry meanwhile wait for that read (bounded), so the next call carries the new value.
//!   The rejected call itself is not retried (its body may not be replayable): the agent gets
//!   the upstream's 401/403.
//!
//! No value, token or secret_id is ever formatted: errors carry the reference, the server's
//! authority, HTTP statuses and the server's own error strings.
// The `Mutex` below guards the client's login session and is locked only by the config compiler
// and the refresher's fetch threads (off the data plane); workers touch the `RwLock`'d value
// and atomics only.
#![allow(clippy::disallowed_types)]
use super::secret::{Secret, resolve};
use crate::net::fetch::{self, Timeouts};
use crate::net::url::Url;
use crate::util::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// Forced re-reads (after an upstream 401/403) of one entry are at least this far apart.
pub const REREAD_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest backoff between failed refreshes (never more than `ttl`).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `kv:PATH#FIELD`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvRef {
    pub path: String,
    pub field: String,
}

impl KvRef {
    /// PATH: segments of `A-Z a-z 0-9 . _ -` joined by '/', no empty, `.` or `..` segment,
    /// at most 512 bytes. FIELD: 1-256 of `A-Z a-z 0-9 . _ -`.
    pub fn parse(reference: &str) -> Result<KvRef, String> {
        let body = reference
            .strip_prefix("kv:")
            .ok_or("a kv reference starts with `kv:`")?;
        let (path, field) = body
            .rsplit_once('#')
            .ok_or("expected `kv:PATH#FIELD` (e.g. `kv:crm/token#value`)")?;
        let seg_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if path.is_empty() || path.len() > 512 || !path.split('/').all(seg_ok) {
            return Err(format!(
                "path '{path}': use segments of A-Z a-z 0-9 . _ - separated by single '/'"
            ));
        }
        if field.len() > 256 || !seg_ok(field) {
            return Err(format!("field '{field}': use 1-256 of A-Z a-z 0-9 . _ -"));
        }
        Ok(KvRef {
            path: path.to_string(),
            field: field.to_string(),
        })
    }
}

impl std::fmt::Display for KvRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kv:{}#{}", self.path, self.field)
    }
}

/// How the client gets its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvAuth {
    /// A token reference (`file:` / `env:`), read at every login.
    Token(String),
    /// AppRole: `role_id` (already resolved: it is an identifier) and a `secret_id` reference.
    AppRole { role_id: String, secret_id: String },
}

/// `[secrets.kv]`, compiled.
pub struct KvSettings {
    pub addr: Url,
    pub mount: String,
    pub auth: KvAuth,
    /// Relative `file:` references resolve against this.
    pub base_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub ttl: Duration,
    pub max_stale: Duration,
    pub timeout: Duration,
}

impl KvSettings {
    /// Identifies interchangeable clients across reloads (no secret in it).
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.addr.https,
            self.addr.authority,
            self.mount,
            self.auth,
            self.base_dir,
            self.ca_file,
            self.ttl,
            self.max_stale,
            self.timeout
        )
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.timeout,
            io: self.timeout,
            total: self.timeout,
        }
    }
}

/// Why a kv secret could not be read. Never carries a value or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("no secret at {0} (HTTP 404)")]
    NotFound(String),
    #[error("the secret at {0} has no field '{1}'")]
    MissingField(String, String),
    #[error("field '{1}' of the secret at {0} is not a string")]
    NotAString(String, String),
    #[error("permission denied reading {0} (HTTP 403): the token's policies do not allow it")]
    PermissionDenied(String),
    #[error("the KV token is invalid or expired (HTTP 403 from auth/token/lookup-self)")]
    BadToken,
    #[error("AppRole login failed (HTTP {0}): {1}")]
    Login(u16, String),
    #[error("the KV token or AppRole secret_id cannot be read: {0}")]
    Credential(String),
    #[error("the KV server is sealed or unavailable (HTTP {0}: {1})")]
    Unavailable(u16, String),
    #[error("the KV server answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("bad answer from the KV server: {0}")]
    BadResponse(&'static str),
    #[error("{0}")]
    Transport(String),
}

/// The server's `errors` array, joined and made safe to log (printable ASCII, bounded).
fn server_errors(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        errors: Vec<String>,
    }
    let joined = serde_json::from_slice::<E>(body)
        .map(|e| e.errors.join("; "))
        .unwrap_or_default();
    let clean: String = joined
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect();
    if clean.is_empty() {
        "no details".into()
    } else {
        clean
    }
}

/// The login session of a client.
#[derive(Default)]
struct Session {
    token: Option<Secret>,
    /// When to renew (mono ns); 0 = never (a token without expiry, or not renewable).
    renew_at: u64,
}

/// A KV v2 client for one `[secrets.kv]`.
pub struct KvClient {
    pub settings: KvSettings,
    session: Mutex<Session>,
    /// `Session::renew_at`, readable without the lock (refresher tick).
    renew_at: AtomicU64,
    renewing: AtomicBool,
    /// Logins performed (tests and logs).
    logins: AtomicU64,
}

impl std::fmt::Debug for KvClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvClient")
            .field("addr", &self.settings.addr.authority)
            .field("mount", &self.settings.mount)
            .finish_non_exhaustive()
    }
}

fn secs_ns(s: u64) -> u64 {
    s.saturating_mul(1_000_000_000)
}

impl KvClient {
    pub fn new(settings: KvSettings) -> KvClient {
        KvClient {
            settings,
            session: Mutex::new(Session::default()),
            renew_at: AtomicU64::new(0),
            renewing: AtomicBool::new(false),
            logins: AtomicU64::new(0),
        }
    }

    /// Where a reference lives, for messages: `{mount}/data/{path}` on the server.
    pub fn location(&self, r: &KvRef) -> String {
        format!(
            "{}/data/{} on {}",
            self.settings.mount, r.path, self.settings.addr.authority
        )
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&Secret>,
        body: &[u8],
    ) -> Result<fetch::Response, KvError> {
        let url = Url {
            path: path.to_string(),
            ..self.settings.addr.clone()
        };
        let mut headers: Vec<(&str, &[u8])> = vec![("Accept", b"application/json")];
        if let Some(t) = token {
            headers.push(("X-Vault-Token", t.expose()));
        }
        if !body.is_empty() {
            headers.push(("Content-Type", b"application/json"));
        }
        fetch::request(
            &url,
            self.settings.tls.as_ref(),
            method,
            &headers,
            body,
            &self.settings.timeouts(),
        )
        .map_err(|e| KvError::Transport(format!("KV server: {e}")))
    }

    /// Logs in (token reference or AppRole) and sets the renewal time.
    fn login(&self, s: &mut Session) -> Result<(), KvError> {
        self.logins.fetch_add(1, Ordering::Relaxed);
        let base = &self.settings.base_dir;
        let (token, lease) = match &self.settings.auth {
            KvAuth::Token(reference) => {
                let t = resolve(reference, base).map_err(|e| KvError::Credential(e.to_string()))?;
                if t.expose().is_empty() {
                    return Err(KvError::Credential("the token is empty".into()));
                }
                let lease = self.lookup_self(&t)?;
                (t, lease)
            }
            KvAuth::AppRole { role_id, secret_id } => {
                let sid =
                    resolve(secret_id, base).map_err(|e| KvError::Credential(e.to_string()))?;
                let sid = std::str::from_utf8(sid.expose())
                    .map_err(|_| KvError::Credential("the secret_id is not UTF-8".into()))?;
                let body = Zeroizing::new(
                    serde_json::json!({ "role_id": role_id, "secret_id": sid }).to_string(),
                );
                let r = self.http("POST", "/v1/auth/approle/login", None, body.as_bytes())?;
                if r.status != 200 {
                    return Err(KvError::Login(r.status, server_errors(&r.body)));
                }
                #[derive(serde::Deserialize)]
                struct Auth {
                    client_token: String,
                    #[serde(default)]
                    lease_duration: u64,
                    #[serde(default)]
                    renewable: bool,
                }
                #[derive(serde::Deserialize)]
                struct Login {
                    auth: Option<Auth>,
                }
                let l: Login = serde_json::from_slice(&r.body)
                    .map_err(|_| KvError::BadResponse("AppRole login answer is not JSON"))?;
                let mut a = l
                    .auth
                    .ok_or(KvError::BadResponse("AppRole login answer has no auth"))?;
                let t = Secret::new(a.client_token.as_bytes().to_vec());
                a.client_token.zeroize();
                (t, (a.lease_duration, a.renewable))
            }
        };
        if !crate::http::hop::valid_header_value(token.expose()) {
            return Err(KvError::Credential(
                "the token contains control characters".into(),
            ));
        }
        s.token = Some(token);
        self.schedule(s, lease);
        Ok(())
    }

    /// Renewal at two thirds of a renewable lease; tokens without a TTL are never renewed.
    fn schedule(&self, s: &mut Session, (ttl, renewable): (u64, bool)) {
        s.renew_at = if ttl == 0 || !renewable {
            0
        } else {
            crate::util::clock::mono_ns().saturating_add(secs_ns(ttl) * 2 / 3)
        };
        self.renew_at.store(s.renew_at, Ordering::Release);
    }

    /// `GET auth/token/lookup-self`: (ttl seconds, renewable). 403 = the token is not valid.
    fn lookup_self(&self, token: &Secret) -> Result<(u64, bool), KvError> {
        let r = self.http("GET", "/v1/auth/token/lookup-self", Some(token), b"")?;
        match r.status {
            200 => {}
            403 | 401 => return Err(KvError::BadToken),
            s => return Err(status_error(s, &r.body)),
        }
        #[derive(serde::Deserialize)]
        struct Data {
            #[serde(default)]
            ttl: u64,
            #[serde(default)]
            renewable: bool,
        }
        #[derive(serde::Deserialize)]
        struct L {
            data: Option<Data>,
        }
        let l: L = serde_json::from_slice(&r.body)
            .map_err(|_| KvError::BadResponse("lookup-self answer is not JSON"))?;
        Ok(l.data.map(|d| (d.ttl, d.renewable)).unwrap_or((0, false)))
    }

    /// `POST auth/token/renew-self`.
    fn renew(&self, s: &mut Session) -> Result<(), KvError> {
        let Some(t) = &s.token else {
            return self.login(s);
        };
        let r = self.http("POST", "/v1/auth/token/renew-self", Some(t), b"{}")?;
        if r.status != 200 {
            return Err(status_error(r.status, &r.body));
        }
        #[derive(serde::Deserialize)]
        struct Auth {
            #[serde(default)]
            lease_duration: u64,
            #[serde(default)]
            renewable: bool,
        }
        #[derive(serde::Deserialize)]
        struct R {
            auth: Option<Auth>,
        }
        let mut body: R = serde_json::from_slice(&r.body)
            .map_err(|_| KvError::BadResponse("renew-self answer is not JSON"))?;
        let a = body
            .auth
            .take()
            .ok_or(KvError::BadResponse("renew-self answer has no auth"))?;
        self.schedule(s, (a.lease_duration, a.renewable));
        tracing::debug!(server = %self.settings.addr.authority, lease_s = a.lease_duration, "KV token renewed");
        Ok(())
    }

    /// A copy of a valid token: logs in if there is none, renews (or logs in again) when due.
    fn token(&self) -> Result<Secret, KvError> {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if s.token.is_none() {
            self.login(&mut s)?;
        } else if s.renew_at != 0 && crate::util::clock::mono_ns() >= s.renew_at {
            self.renew_or_relogin(&mut s)?;
        }
        s.token
            .as_ref()
            .map(|t| Secret::new(t.expose().to_vec()))
            .ok_or(KvError::BadResponse("no token after login"))
    }

    fn renew_or_relogin(&self, s: &mut Session) -> Result<(), KvError> {
        if let Err(e) = self.renew(s) {
            tracing::info!(server = %self.settings.addr.authority, error = %e,
                "KV token renewal failed; logging in again");
            s.token = None;
            self.login(s)?;
        }
        Ok(())
    }

    /// Drops the session's token if it is still `used` (another thread may have replaced it).
    fn invalidate(&self, used: &Secret) {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if s.token.as_ref().is_some_and(|t| t.ct_eq(used.expose())) {
            s.token = None;
            s.renew_at = 0;
            self.renew_at.store(0, Ordering::Release);
        }
    }

    /// Whether the refresher should renew the token now.
    pub fn renew_due(&self, now_ns: u64) -> bool {
        let at = self.renew_at.load(Ordering::Acquire);
        at != 0 && now_ns >= at
    }

    /// Renews the token if due (refresher fetch thread).
    pub fn maintain(&self) {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if s.renew_at != 0
            && crate::util::clock::mono_ns() >= s.renew_at
            && let Err(e) = self.renew_or_relogin(&mut s)
        {
            tracing::warn!(server = %self.settings.addr.authority, error = %e,
                "cannot renew the KV token or log in again");
            // try again in a while rather than on every tick
            s.renew_at = crate::util::clock::mono_ns().saturating_add(secs_ns(5));
            self.renew_at.store(s.renew_at, Ordering::Release);
        }
    }

    /// Logins performed so far.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Reads `data.data[FIELD]` of `PATH` (blocking). A 403 with a token that turns out to be
    /// invalid is retried once after a new login.
    pub fn read(&self, r: &KvRef) -> Result<Secret, KvError> {
        let mut relogged = false;
        loop {
            let token = self.token()?;
            let path = format!("/v1/{}/data/{}", self.settings.mount, r.path);
            let resp = self.http("GET", &path, Some(&token), b"")?;
            match resp.status {
                200 => return parse_field(&resp.body, r, &self.location(r)),
                404 => return Err(KvError::NotFound(self.location(r))),
                401 | 403 => {
                    // a bad token and a policy that forbids the path look the same: ask
                    match self.lookup_self(&token) {
                        Err(KvError::BadToken) => {
                            self.invalidate(&token);
                            if relogged {
                                return Err(KvError::BadToken);
                            }
                            tracing::info!(server = %self.settings.addr.authority,
                                "the KV token is no longer valid; logging in again");
                            relogged = true;
                        }
                        Ok(_) => return Err(KvError::PermissionDenied(self.location(r))),
                        Err(e) => return Err(e),
                    }
                }
                s => return Err(status_error(s, &resp.body)),
            }
        }
    }
}

fn status_error(status: u16, body: &[u8]) -> KvError {
    match status {
        429 | 472 | 473 | 500..=599 => KvError::Unavailable(status, server_errors(body)),
        s => KvError::Status(s, server_errors(body)),
    }
}

/// `data.data[FIELD]` of a KV v2 read; every other string of the document is wiped.
fn parse_field(body: &[u8], r: &KvRef, location: &str) -> Result<Secret, KvError> {
    let mut doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| KvError::BadResponse("the read answer is not JSON"))?;
    let out = match doc
        .get_mut("data")
        .and_then(|d| d.get_mut("data"))
        .and_then(|d| d.as_object_mut())
    {
        None => Err(KvError::BadResponse(
            "no data.data in the answer (is the mount a KV v2 engine?)",
        )),
        Some(map) => match map.get_mut(&r.field) {
            None => Err(KvError::MissingField(location.into(), r.field.clone())),
            Some(serde_json::Value::String(s)) => {
                let v = Secret::new(s.as_bytes().to_vec());
                s.zeroize();
                Ok(v)
            }
            Some(_) => Err(KvError::NotAString(location.into(), r.field.clone())),
        },
    };
    wipe(&mut doc);
    out
}

fn wipe(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(o) => o.values_mut().for_each(wipe),
        _ => {}
    }
}

/// One (server, path, field): its cached value and refresh state.
pub struct KvEntry {
    kref: KvRef,
    client: RwLock<Arc<KvClient>>,
    value: RwLock<Option<Arc<Secret>>>,
    /// mono ns of the last successful read (0 = none yet).
    fetched_ns: AtomicU64,
    /// The value serves until this mono ns (`fetched + ttl + max_stale`).
    serve_until_ns: AtomicU64,
    /// The next scheduled refresh (mono ns).
    next_due_ns: AtomicU64,
    in_flight: AtomicBool,
    /// An upstream rejected the value: re-read at the next tick.
    want_reread: AtomicBool,
    /// A forced re-read is wanted or running: calls wait for it (bounded).
    rereading: AtomicBool,
    last_forced_ns: AtomicU64,
    failures: AtomicU32,
    /// Successful reads so far.
    reads: AtomicU64,
    /// The value has gone past max_stale and this was logged (cleared by the next read).
    expired_logged: AtomicBool,
}

impl std::fmt::Debug for KvEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvEntry")
            .field("reference", &self.kref.to_string())
            .field("reads", &self.reads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KvEntry {
    /// Seconds since the last successful read (`None`: never read), and the failed reads in
    /// a row since then.
    pub fn health(&self) -> (Option<f64>, u32) {
        let at = self.fetched_ns.load(Ordering::Acquire);
        let age = (at != 0).then(|| crate::util::clock::mono_ns().saturating_sub(at) as f64 / 1e9);
        (age, self.failures.load(Ordering::Relaxed))
    }

    fn new(kref: KvRef, client: Arc<KvClient>) -> KvEntry {
        KvEntry {
            kref,
            client: RwLock::new(client),
            value: RwLock::new(None),
            fetched_ns: AtomicU64::new(0),
            serve_until_ns: AtomicU64::new(0),
            next_due_ns: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
            want_reread: AtomicBool::new(false),
            rereading: AtomicBool::new(false),
            last_forced_ns: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            reads: AtomicU64::new(0),
            expired_logged: AtomicBool::new(false),
        }
    }

    pub fn reference(&self) -> &KvRef {
        &self.kref
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn client(&self) -> Arc<KvClient> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The value for a call (the hot path), or why there is none.
    #[inline]
    pub fn current(&self, now_ns: u64) -> Result<Arc<Secret>, &'static str> {
        let v = self.value.read().unwrap_or_else(|p| p.into_inner()).clone();
        match v {
            Some(v) if now_ns <= self.serve_until_ns.load(Ordering::Acquire) => Ok(v),
            Some(_) => {
                if !self.expired_logged.swap(true, Ordering::Relaxed) {
                    tracing::error!(reference = %self.kref,
                        "the cached kv secret is older than ttl + max_stale and the KV server cannot be read: calls that need it fail with 502 secret_unavailable");
                }
                Err("the kv secret could not be refreshed within max_stale")
            }
            None => Err("the kv secret has not been read"),
        }
    }

    /// A copy of the current value (for settings resolved once per config, not per call).
    pub fn snapshot(&self) -> Option<Secret> {
        self.current(crate::util::clock::mono_ns())
            .ok()
            .map(|v| Secret::new(v.expose().to_vec()))
    }

    fn servable(&self) -> bool {
        self.current(crate::util::clock::mono_ns()).is_ok()
    }

    /// Reads the value now (blocking) and publishes it; a failure is logged.
    pub fn refresh_blocking(&self) -> Result<(), KvError> {
        self.refresh(true)
    }

    /// As `refresh_blocking`; failures are logged only if `log_failure` (the config compiler
    /// reports them as config errors instead).
    fn refresh(&self, log_failure: bool) -> Result<(), KvError> {
        let client = self.client();
        let started = crate::util::clock::mono_ns();
        let result = client.read(&self.kref);
        let now = crate::util::clock::mono_ns();
        let s = &client.settings;
        match result {
            Ok(v) => {
                let changed = {
                    let mut g = self.value.write().unwrap_or_else(|p| p.into_inner());
                    let changed = g.as_ref().is_some_and(|old| !old.ct_eq(v.expose()));
                    *g = Some(Arc::new(v));
                    changed
                };
                let ttl = u64::try_from(s.ttl.as_nanos()).unwrap_or(u64::MAX);
                let stale = u64::try_from(s.max_stale.as_nanos()).unwrap_or(u64::MAX);
                self.fetched_ns.store(now.max(1), Ordering::Release);
                self.serve_until_ns.store(
                    now.saturating_add(ttl).saturating_add(stale),
                    Ordering::Release,
                );
                self.next_due_ns
                    .store(now.saturating_add(ttl), Ordering::Release);
                self.expired_logged.store(false, Ordering::Relaxed);
                let failures = self.failures.swap(0, Ordering::Relaxed);
                self.reads.fetch_add(1, Ordering::Relaxed);
                if changed {
                    tracing::info!(reference = %self.kref, "kv secret changed on the server: the new value is used from now on");
                } else if failures > 0 {
                    tracing::info!(reference = %self.kref, "kv secret read again after {failures} failed attempt(s)");
                } else {
                    tracing::debug!(reference = %self.kref, ms = (now - started) / 1_000_000, "kv secret read");
                }
                Ok(())
            }
            Err(e) => {
                let f = self
                    .failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                let backoff = Duration::from_secs(1u64 << f.min(6).saturating_sub(1))
                    .min(MAX_BACKOFF)
                    .min(s.ttl);
                self.next_due_ns.store(
                    now.saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX)),
                    Ordering::Release,
                );
                let until = self.serve_until_ns.load(Ordering::Acquire);
                if !log_failure {
                    // reported by the caller
                } else if self.fetched_ns.load(Ordering::Acquire) != 0 && now <= until {
                    tracing::warn!(reference = %self.kref, error = %e,
                        serves_for_s = (until - now) / 1_000_000_000,
                        "cannot refresh the kv secret; the cached value keeps serving until max_stale");
                } else {
                    tracing::error!(reference = %self.kref, error = %e,
                        "cannot read the kv secret; calls that need it fail with 502 secret_unavailable");
                }
                Err(e)
            }
        }
    }

    /// The upstream answered 401/403 to a call whose credential was read at `used_ns`: ask
    /// for one re-read unless a read has completed since, or one is already wanted/running.
    pub fn upstream_rejected(&self, used_ns: u64, status: u16) {
        if self.fetched_ns.load(Ordering::Acquire) > used_ns {
            return;
        }
        let now = crate::util::clock::mono_ns();
        let last = self.last_forced_ns.load(Ordering::Acquire);
        let min = u64::try_from(REREAD_MIN_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < min {
            return;
        }
        if self
            .rereading
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        self.last_forced_ns.store(now, Ordering::Release);
        self.want_reread.store(true, Ordering::Release);
        tracing::info!(reference = %self.kref, status,
            "the upstream rejected a kv credential: re-reading it once");
        crate::util::wake::wake();
    }

    /// Whether a forced re-read is pending or running.
    pub fn rereading(&self) -> bool {
        self.rereading.load(Ordering::Acquire)
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct EntryKey {
    server: (bool, String, String),
    kref: KvRef,
}

/// Every live client and entry (weak: they live as long as a compiled config uses them).
#[derive(Default)]
pub struct Store {
    clients: Registry<String, KvClient>,
    entries: Registry<EntryKey, KvEntry>,
}

/// The process-wide store.
pub fn global() -> &'static Store {
    static STORE: std::sync::OnceLock<Store> = std::sync::OnceLock::new();
    STORE.get_or_init(Store::default)
}

impl Store {
    /// The live client with these settings (keeping its login across reloads), or a new one.
    pub fn client(&self, settings: KvSettings) -> Arc<KvClient> {
        self.clients
            .get_or_insert_with(settings.fingerprint(), || KvClient::new(settings))
    }

    /// The entry for `kref` on `client`'s server: the live one (its cached value kept) or a
    /// new one. An entry without a servable value is read now; the error names the reason.
    /// An existing entry's client is not changed here (see `commit`).
    pub fn bind(&self, client: &Arc<KvClient>, kref: &KvRef) -> Result<Arc<KvEntry>, KvError> {
        let s = &client.settings;
        let key = EntryKey {
            server: (s.addr.https, s.addr.authority.clone(), s.mount.clone()),
            kref: kref.clone(),
        };
        let entry = self
            .entries
            .get_or_insert_with(key, || KvEntry::new(kref.clone(), client.clone()));
        if !entry.servable() {
            // an entry of a live config reads through its own client; a new one through this
            let _ = std::mem::replace(
                &mut *entry.client.write().unwrap_or_else(|p| p.into_inner()),
                client.clone(),
            );
            entry.refresh(false)?;
        }
        Ok(entry)
    }

    /// Every entry some config still uses (for `/metrics`).
    pub fn live_entries(&self) -> Vec<Arc<KvEntry>> {
        self.entries.live()
    }

    fn live_clients(&self) -> Vec<Arc<KvClient>> {
        self.clients.live()
    }
}

/// After a config has been swapped in: its entries read through its client from now on.
pub fn commit(bindings: &[(Arc<KvEntry>, Arc<KvClient>)]) {
    for (e, c) in bindings {
        *e.client.write().unwrap_or_else(|p| p.into_inner()) = c.clone();
    }
}

/// Starts due token renewals and reads (refresher thread), each on its own short-lived
/// thread so that a slow KV server holds up nothing else.
pub fn tick() {
    let now = crate::util::clock::mono_ns();
    for c in global().live_clients() {
        if c.renew_due(now) && !c.renewing.swap(true, Ordering::AcqRel) {
            let c2 = c.clone();
            let spawned = std::thread::Builder::new()
                .name("portcullis-kv".into())
                .spawn(move || {
                    c2.maintain();
                    c2.renewing.store(false, Ordering::Release);
                });
            if spawned.is_err() {
                c.renewing.store(false, Ordering::Release);
            }
        }
    }
    for e in global().live_entries() {
        let forced = e.want_reread.load(Ordering::Acquire);
        if !forced && now < e.next_due_ns.load(Ordering::Acquire) {
            continue;
        }
        if e.in_flight.swap(true, Ordering::AcqRel) {
            continue;
        }
        let e2 = e.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-kv".into())
            .spawn(move || {
                let forced = e2.want_reread.swap(false, Ordering::AcqRel);
                let _ = e2.refresh_blocking();
                if forced {
                    e2.rereading.store(false, Ordering::Release);
                }
                e2.in_flight.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            e.in_flight.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_table() {
        let ok = |p: &str, f: &str| {
            Ok(KvRef {
                path: p.into(),
                field: f.into(),
            })
        };
        let cases: &[(&str, Result<KvRef, ()>)] = &[
            ("kv:crm/token#value", ok("crm/token", "value")),
            ("kv:a#b", ok("a", "b")),
            (
                "kv:team-1/svc.api/key_2#api-key",
                ok("team-1/svc.api/key_2", "api-key"),
            ),
            ("kv:crm/token", Err(())),
            ("kv:#value", Err(())),
            ("kv:crm/token#", Err(())),
            ("kv:/crm#v", Err(())),
            ("kv:crm/#v", Err(())),
            ("kv:crm//x#v", Err(())),
            ("kv:../x#v", Err(())),
            ("kv:a/./b#v", Err(())),
            ("kv:a b#v", Err(())),
            ("kv:a%2f#v", Err(())),
            ("kv:a?x=1#v", Err(())),
            ("kv:a#v#w", Err(())),
            ("env:X", Err(())),
        ];
        for (r, want) in cases {
            let got = KvRef::parse(r).map_err(|_| ());
            assert_eq!(&got, want, "{r}");
            if let Ok(k) = got {
                assert_eq!(k.to_string(), *r);
            }
        }
    }

    #[test]
    fn field_parsing_and_wiping() {
        let r = KvRef::parse("kv:crm/token#value").unwrap();
        let body = br#"{"data":{"data":{"value":"s3cr3t","n":5,"other":"x"},"metadata":{}}}"#;
        assert_eq!(parse_field(body, &r, "loc").unwrap().expose(), b"s3cr3t");
        let r2 = KvRef::parse("kv:crm/token#n").unwrap();
        assert_eq!(
            parse_field(body, &r2, "loc").err(),
            Some(KvError::NotAString("loc".into(), "n".into()))
        );
        let r3 = KvRef::parse("kv:crm/token#missing").unwrap();
        assert_eq!(
            parse_field(body, &r3, "loc").err(),
            Some(KvError::MissingField("loc".into(), "missing".into()))
        );
        assert!(matches!(
            parse_field(br#"{"data":{"value":"x"}}"#, &r, "loc"),
            Err(KvError::BadResponse(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(body).unwrap();
        wipe(&mut v);
        assert!(!v.to_string().contains("s3cr3t"));
    }

    #[test]
    fn server_errors_are_bounded_and_printable() {
        assert_eq!(
            server_errors(b"{\"errors\":[\"1 error occurred:\\n\\t* permission denied\\n\\n\"]}"),
            "1 error occurred: * permission denied"
        );
        assert_eq!(server_errors(b"<html>"), "no details");
        assert_eq!(server_errors(&[b'{'; 10]), "no details");
        let long = format!("{{\"errors\":[\"{}\"]}}", "x".repeat(1000));
        assert_eq!(server_errors(long.as_bytes()).len(), 200);
        assert!(matches!(
            status_error(503, b"{\"errors\":[\"Vault is sealed\"]}"),
            KvError::Unavailable(503, _)
        ));
        assert!(matches!(status_error(400, b""), KvError::Status(400, _)));
    }

    fn settings(ttl: Duration, max_stale: Duration) -> KvSettings {
        KvSettings {
            addr: Url::parse("http://127.0.0.1:9").unwrap(),
            mount: "secret".into(),
            auth: KvAuth::Token("env:PORTCULLIS_TEST_UNSET_TOKEN".into()),
            base_dir: PathBuf::from("."),
            ca_file: None,
            tls: None,
            ttl,
            max_stale,
            timeout: Duration::from_millis(200),
        }
    }

    #[test]
    fn entry_serves_until_ttl_plus_max_stale_and_rereads_once() {
        let c = Arc::new(KvClient::new(settings(
            Duration::from_secs(10),
            Duration::from_secs(20),
        )));
        let e = KvEntry::new(KvRef::parse("kv:a#b").unwrap(), c);
        assert_eq!(e.current(1).err(), Some("the kv secret has not been read"));
        *e.value.write().unwrap() = Some(Arc::new(Secret::new(b"v1".to_vec())));
        e.fetched_ns.store(100, Ordering::Release);
        e.serve_until_ns.store(100 + secs_ns(30), Ordering::Release);
        assert_eq!(e.current(100 + secs_ns(30)).unwrap().expose(), b"v1");
        assert!(e.current(101 + secs_ns(30)).is_err());
        // a rejection of a value read before the last read is ignored
        e.upstream_rejected(50, 401);
        assert!(!e.rereading());
        e.upstream_rejected(150, 401);
        assert!(e.rereading() && e.want_reread.load(Ordering::Acquire));
        // single flight
        e.want_reread.store(false, Ordering::Release);
        e.upstream_rejected(150, 403);
        assert!(!e.want_reread.load(Ordering::Acquire));
        assert!(!format!("{e:?}").contains("v1"));
    }

    #[test]
    fn a_failed_read_names_the_reason_not_the_value() {
        let c = Arc::new(KvClient::new(settings(
            Duration::from_secs(10),
            Duration::from_secs(20),
        )));
        let e = KvEntry::new(KvRef::parse("kv:a#b").unwrap(), c);
        let err = e.refresh_blocking().unwrap_err();
        assert!(matches!(err, KvError::Credential(_)), "{err}");
        assert!(err.to_string().contains("PORTCULLIS_TEST_UNSET_TOKEN"));
    }
}
