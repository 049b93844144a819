//! The web console `/ui` on the admin listener (issue 16): sign-in with an admin key
//! (`[[admins]]` key or `server.admin_token`) → an in-memory session on the admin thread
//! (cookie `pcs_session`: HttpOnly, SameSite=Strict, Path=/, Secure on TLS; idle and absolute
//! expiry), a CSRF token per session that every unsafe request carries (`X-CSRF-Token` or the
//! form field `csrf`), per-peer sign-in backoff, and the pages' assets, all embedded in the
//! binary (no network, no bundler). The pages are vanilla JS calling the admin JSON API with the
//! session cookie; `session_admin` is how that API recognises a session (the lead folds it into
//! `admin_auth::identify` at merge). `tail` is `GET /v1/requests/tail`, the live audit stream
//! (server-sent events) the Calls page follows.
//
// Control plane: the admin thread (one thread, so the session table is a thread-local).
#![allow(clippy::disallowed_types)]
use super::admin::Reply;
use super::control::Control;
use crate::config::{Admin, Compiled, Role};
use crate::http::head::{BodyKind, RequestHead};
use crate::http::io::{read_append, write_all};
use crate::net::agent_io::AgentIo;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "pcs_session";
/// A session unused this long is gone.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session is gone this long after sign-in, however busy.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest goes first beyond).
const MAX_SESSIONS: usize = 1024;
/// Failed sign-ins from one peer address before it must wait (1 s, then doubling to 60 s).
const FREE_FAILURES: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Peers remembered for backoff at most.
const MAX_PEERS: usize = 4096;
/// Largest sign-in / sign-out form.
const MAX_FORM: usize = 4096;
/// Live tails at once, how long one lasts, and how far back it looks for late completions.
const MAX_TAILS: usize = 16;
const TAIL_LIFETIME: Duration = Duration::from_secs(600);
const TAIL_POLL: Duration = Duration::from_secs(1);
const TAIL_WINDOW_US: u64 = 15 * 60 * 1_000_000;
const TAIL_BATCH: usize = 1000;

/// `Content-Security-Policy` of every `/ui` answer: own origin only, no inline script or style.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'";

/// The embedded assets: (path under `/ui/`, content type, bytes).
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "assets/app.css",
        "text/css; charset=utf-8",
        include_str!("console/app.css"),
    ),
    (
        "assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("console/app.js"),
    ),
    (
        "assets/chart.js",
        "text/javascript; charset=utf-8",
        include_str!("console/chart.js"),
    ),
];
const INDEX_HTML: &str = include_str!("console/index.html");
const LOGIN_HTML: &str = include_str!("console/login.html");
const HTML: &str = "text/html; charset=utf-8";

struct Session {
    admin: String,
    /// SHA-256 of the key signed in with: the session ends when that admin's key changes.
    key: [u8; 32],
    csrf: String,
    created: Instant,
    last: Instant,
}

struct Attempts {
    failures: u32,
    until: Instant,
    last: Instant,
}

thread_local! {
    /// Sessions by the SHA-256 of their cookie value (the value itself is never kept).
    static SESSIONS: RefCell<HashMap<[u8; 32], Session>> = RefCell::new(HashMap::new());
    static ATTEMPTS: RefCell<HashMap<IpAddr, Attempts>> = RefCell::new(HashMap::new());
    static TAILS: Cell<usize> = const { Cell::new(0) };
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // SystemRandom only fails when the OS RNG is unavailable; a session then cannot exist
    if SystemRandom::new().fill(&mut b).is_err() {
        return String::new();
    }
    crate::util::hex::encode(&b)
}

fn header<'b>(head: &RequestHead, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(buf))
}

/// The `pcs_session` value of the `Cookie` header(s), if any.
fn cookie<'b>(head: &RequestHead, buf: &'b [u8]) -> Option<&'b [u8]> {
    head.headers
        .iter()
        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cookie"))
        .flat_map(|h| h.value.get(buf).split(|b| *b == b';'))
        .find_map(|c| {
            let c = c.trim_ascii();
            c.strip_prefix(COOKIE.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
        })
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_safe(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD")
}

/// The live session a request's cookie names, touched (idle clock reset); `None` when absent,
/// unknown or expired (an expired one is removed).
fn with_session<T>(
    head: &RequestHead,
    buf: &[u8],
    now: Instant,
    f: impl FnOnce(&Session) -> T,
) -> Option<T> {
    let token = cookie(head, buf)?;
    let key = crate::identity::key_sha256(token);
    SESSIONS.with_borrow_mut(|m| {
        let s = m.get_mut(&key)?;
        if now.duration_since(s.last) > IDLE || now.duration_since(s.created) > ABSOLUTE {
            m.remove(&key);
            return None;
        }
        s.last = now;
        Some(f(s))
    })
}

fn csrf_refused() -> Reply {
    Reply::error(
        403,
        "csrf",
        "a console request that changes something needs the session's CSRF token",
    )
}

/// The admin id a request's session cookie names (`"admin_token"` for the shared token) and
/// the SHA-256 of the key it signed in with (for [`lookup`]), or `None` without a live session. A non-GET request with a session must carry the session's
/// CSRF token in `X-CSRF-Token`, else `Err(403 csrf)`.
pub fn session_admin(
    head: &RequestHead,
    buf: &[u8],
    now: Instant,
) -> Result<Option<(String, [u8; 32])>, Reply> {
    let safe = is_safe(head.method.get(buf));
    let given = header(head, buf, b"x-csrf-token");
    match with_session(head, buf, now, |s| {
        let ok = safe || given.is_some_and(|g| ct_eq(g, s.csrf.as_bytes()));
        ((s.admin.clone(), s.key), ok)
    }) {
        None => Ok(None),
        Some((_, false)) => Err(csrf_refused()),
        Some((who, true)) => Ok(Some(who)),
    }
}

/// The role and identity of a session's admin id under the running config; `None` when the
/// identity is gone (removed from the config, the admin token unset) or its key is no longer
/// the one the session signed in with (`key`: its SHA-256).
pub fn lookup<'c>(
    cfg: &'c Compiled,
    id: &str,
    key: &[u8; 32],
) -> Option<(Role, Option<&'c Admin>)> {
    if id == "admin_token" {
        return cfg
            .server
            .admin_token
            .as_ref()
            .filter(|t| ct_eq(&crate::identity::key_sha256(t.expose()), key))
            .map(|_| (Role::Operator, None));
    }
    cfg.admins
        .iter()
        .find(|a| a.id == id && ct_eq(&a.key_sha256, key))
        .map(|a| (a.role, Some(a)))
}

/// Which identity a presented key is: an `[[admins]]` key (by SHA-256, every identity
/// compared) or the shared admin token.
fn identify_key(cfg: &Compiled, key: &[u8]) -> Option<String> {
    let h = crate::identity::key_sha256(key);
    let mut found = None;
    for a in &cfg.admins {
        if ct_eq(&a.key_sha256, &h) {
            found = Some(a.id.clone());
        }
    }
    if found.is_some() {
        return found;
    }
    match &cfg.server.admin_token {
        Some(t) if t.ct_eq(key) => Some("admin_token".into()),
        _ => None,
    }
}

/// An answer of `/ui`, with the page headers.
struct Page {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
}

impl Page {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Page {
        Page {
            status,
            content_type,
            body: body.into(),
            extra: Vec::new(),
        }
    }
    fn redirect(to: &str) -> Page {
        let mut p = Page::new(303, "text/plain; charset=utf-8", &b""[..]);
        p.extra.push(("Location", to.to_string()));
        p
    }
    fn from_reply(r: Reply) -> Page {
        Page::new(r.status, r.content_type, r.body.into_bytes())
    }
    fn with(mut self, name: &'static str, value: String) -> Page {
        self.extra.push((name, value));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        303 => "See Other",
        s => crate::error::reason_phrase(s),
    }
}

/// The common headers of every console answer (pages, assets, JSON, the event stream).
fn push_security_headers(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\nContent-Security-Policy: ");
    out.extend_from_slice(CSP.as_bytes());
    out.extend_from_slice(
        b"\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\
          \r\nX-Frame-Options: DENY\r\nCache-Control: no-store",
    );
}

async fn send(s: &mut AgentIo, p: Page) {
    let mut out = Vec::with_capacity(512 + p.body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::http::write::push_u64(&mut out, u64::from(p.status));
    out.push(b' ');
    out.extend_from_slice(reason(p.status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(p.content_type.as_bytes());
    push_security_headers(&mut out);
    for (n, v) in &p.extra {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"\r\nConnection: close\r\nContent-Length: ");
    crate::http::write::push_u64(&mut out, p.body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&p.body);
    let _ = write_all(s, &mut out, Duration::from_secs(10)).await;
}

fn session_cookie(value: &str, max_age: u64, tls: bool) -> String {
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        if tls { "; Secure" } else { "" }
    )
}

/// Handles everything under `/ui`.
pub async fn handle(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    control: &Control,
    peer: IpAddr,
    tls: bool,
) {
    let page = route(s, head, buf, control, peer, tls).await;
    send(s, page).await;
}

async fn route(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    control: &Control,
    peer: IpAddr,
    tls: bool,
) -> Page {
    let now = crate::util::clock::now();
    let method = head.method.get(buf).to_vec();
    let target = head.target.get(buf);
    let path = match memchr::memchr(b'?', target) {
        Some(i) => target[..i].to_vec(),
        None => target.to_vec(),
    };
    let cfg = control.current();
    let live = with_session(head, buf, now, |s| (s.admin.clone(), s.csrf.clone(), s.key))
        .filter(|(id, _, key)| lookup(&cfg, id, key).is_some());
    match (method.as_slice(), path.as_slice()) {
        (b"GET", b"/ui") => Page::redirect("/ui/"),
        (b"GET", b"/ui/") => match live {
            Some(_) => Page::new(200, HTML, INDEX_HTML),
            None => Page::redirect("/ui/login"),
        },
        (b"GET", b"/ui/login") => match live {
            Some(_) => Page::redirect("/ui/"),
            None => login_page(200, ""),
        },
        (b"POST", b"/ui/login") => sign_in(s, head, buf, &cfg, peer, tls, now).await,
        (b"POST", b"/ui/logout") => {
            let Some((id, csrf, _)) = live else {
                return Page::redirect("/ui/login");
            };
            let form = match read_form(s, head, buf).await {
                Ok(f) => f,
                Err(r) => return Page::from_reply(r),
            };
            let given = form_field(&form, b"csrf")
                .or_else(|| header(head, buf, b"x-csrf-token").map(<[u8]>::to_vec));
            if !given.is_some_and(|g| ct_eq(&g, csrf.as_bytes())) {
                tracing::warn!(%peer, admin = %id, "console: sign-out without the CSRF token refused");
                return Page::from_reply(csrf_refused());
            }
            if let Some(t) = cookie(head, buf) {
                let key = crate::identity::key_sha256(t);
                SESSIONS.with_borrow_mut(|m| m.remove(&key));
            }
            tracing::info!(%peer, admin = %id, "console: signed out");
            Page::redirect("/ui/login").with("Set-Cookie", session_cookie("", 0, tls))
        }
        (b"GET", b"/ui/session") => match live {
            None => Page::from_reply(Reply::error(401, "unauthenticated", "sign in at /ui/login")),
            Some((id, csrf, key)) => {
                let (role, admin) = lookup(&cfg, &id, &key).unwrap_or((Role::Viewer, None));
                let v = serde_json::json!({
                    "id": id,
                    "role": role_name(role),
                    "named": admin.is_some(),
                    "totp": admin.is_some_and(|a| a.totp.is_some()),
                    "proxies": admin.and_then(|a| a.proxies.clone()),
                    "csrf": csrf,
                    "idle_secs": IDLE.as_secs(),
                });
                Page::new(200, "application/json", v.to_string())
            }
        },
        (b"GET", p) => match ASSETS
            .iter()
            .find(|(name, _, _)| p.strip_prefix(b"/ui/") == Some(name.as_bytes()))
        {
            Some((_, ct, body)) => Page::new(200, ct, *body),
            None => Page::from_reply(Reply::error(404, "not_found", "no such console page")),
        },
        (_, b"/ui" | b"/ui/" | b"/ui/session") => Page::from_reply(Reply::error(
            405,
            "method_not_allowed",
            "this console page does not take that method",
        )),
        _ => Page::from_reply(Reply::error(404, "not_found", "no such console page")),
    }
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Approver => "approver",
        Role::Operator => "operator",
    }
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn login_page(status: u16, error: &str) -> Page {
    let msg = if error.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
            html_escape(error)
        )
    };
    Page::new(status, HTML, LOGIN_HTML.replace("<!--ERROR-->", &msg))
}

/// The body of a form post (`Content-Length`, at most `MAX_FORM`).
async fn read_form(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, Reply> {
    let n = match head.body {
        BodyKind::None => return Ok(Vec::new()),
        BodyKind::Length(n) if n as usize <= MAX_FORM => n as usize,
        BodyKind::Length(_) => {
            return Err(Reply::error(400, "bad_request", "the form is too large"));
        }
        _ => {
            return Err(Reply::error(
                400,
                "bad_request",
                "send the form with Content-Length",
            ));
        }
    };
    let start = head.head_len;
    let deadline = crate::util::clock::now() + Duration::from_secs(10);
    while buf.len() < start + n {
        match read_append(s, buf, start + n - buf.len(), deadline).await {
            Ok(k) if k > 0 => {}
            _ => return Err(Reply::error(400, "bad_request", "the body ended early")),
        }
    }
    Ok(buf[start..start + n].to_vec())
}

fn form_field(form: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    crate::http::query::pairs(form)
        .find(|(k, _)| crate::http::query::form_name_is(k, name))
        .map(|(_, v)| crate::http::query::form_decode(v))
}

/// A cross-site form post is refused (login CSRF): `Sec-Fetch-Site` (sent by current
/// browsers) must say `same-origin` (or `none`: typed by the user); without it, an `Origin`
/// must name this host. `Origin: null` is what the console's own `Referrer-Policy:
/// no-referrer` makes a browser send, so it counts only with `Sec-Fetch-Site`. A client with
/// neither header (curl) is not a browser being abused.
fn same_origin(head: &RequestHead, buf: &[u8]) -> bool {
    if let Some(site) = header(head, buf, b"sec-fetch-site") {
        return site == b"same-origin" || site == b"none";
    }
    let Some(origin) = header(head, buf, b"origin") else {
        return true;
    };
    let Some(host) = header(head, buf, b"host") else {
        return false;
    };
    let rest = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    rest == Some(host)
}

/// Whether `peer` must wait before another sign-in attempt (and how long).
fn backoff_wait(peer: IpAddr, now: Instant) -> Option<Duration> {
    ATTEMPTS.with_borrow(|m| {
        m.get(&peer)
            .filter(|a| a.until > now)
            .map(|a| a.until - now)
    })
}

fn note_attempt(peer: IpAddr, ok: bool, now: Instant) {
    ATTEMPTS.with_borrow_mut(|m| {
        if ok {
            m.remove(&peer);
            return;
        }
        if m.len() >= MAX_PEERS && !m.contains_key(&peer) {
            // forget peers quiet for a while; if all are recent, the oldest
            m.retain(|_, a| now.duration_since(a.last) < MAX_BACKOFF * 10);
            if m.len() >= MAX_PEERS
                && let Some(k) = m.iter().min_by_key(|(_, a)| a.last).map(|(k, _)| *k)
            {
                m.remove(&k);
            }
        }
        let a = m.entry(peer).or_insert(Attempts {
            failures: 0,
            until: now,
            last: now,
        });
        a.failures = a.failures.saturating_add(1);
        a.last = now;
        if a.failures >= FREE_FAILURES {
            let exp = (a.failures - FREE_FAILURES).min(6);
            a.until = now + Duration::from_secs(1 << exp).min(MAX_BACKOFF);
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn sign_in(
    s: &mut AgentIo,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    cfg: &Compiled,
    peer: IpAddr,
    tls: bool,
    now: Instant,
) -> Page {
    if !same_origin(head, buf) {
        tracing::warn!(%peer, "console: cross-origin sign-in refused");
        return Page::from_reply(Reply::error(
            403,
            "csrf",
            "a sign-in from another origin is refused",
        ));
    }
    if let Some(wait) = backoff_wait(peer, now) {
        tracing::warn!(%peer, "console: sign-in refused (too many failed attempts)");
        let secs = wait.as_secs().max(1);
        return login_page(
            429,
            &format!("Too many failed sign-ins from your address: wait {secs} s."),
        )
        .with("Retry-After", secs.to_string());
    }
    let form = match read_form(s, head, buf).await {
        Ok(f) => f,
        Err(r) => return Page::from_reply(r),
    };
    let key = form_field(&form, b"key").unwrap_or_default();
    let key = key.trim_ascii();
    let who = if key.is_empty() || key.len() > crate::identity::MAX_CREDENTIAL_LEN {
        None
    } else {
        identify_key(cfg, key)
    };
    let Some(id) = who else {
        note_attempt(peer, false, now);
        tracing::warn!(%peer, "console: sign-in with an unknown key refused");
        return login_page(401, "That key is not an admin key.");
    };
    note_attempt(peer, true, now);
    let token = random_token();
    if token.is_empty() {
        return Page::from_reply(Reply::error(500, "internal", "no random numbers"));
    }
    SESSIONS.with_borrow_mut(|m| {
        m.retain(|_, s| {
            now.duration_since(s.last) <= IDLE && now.duration_since(s.created) <= ABSOLUTE
        });
        if m.len() >= MAX_SESSIONS
            && let Some(k) = m.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k)
        {
            m.remove(&k);
        }
        m.insert(
            crate::identity::key_sha256(token.as_bytes()),
            Session {
                admin: id.clone(),
                key: crate::identity::key_sha256(key),
                csrf: random_token(),
                created: now,
                last: now,
            },
        );
    });
    tracing::info!(%peer, admin = %id, "console: signed in");
    Page::redirect("/ui/").with(
        "Set-Cookie",
        session_cookie(&token, ABSOLUTE.as_secs(), tls),
    )
}

/// Decrements the live-tail count when a tail ends, however it ends.
struct TailSlot;
impl Drop for TailSlot {
    fn drop(&mut self) {
        TAILS.with(|t| t.set(t.get().saturating_sub(1)));
    }
}

/// `GET /v1/requests/tail?proxy=&agent=&status=&decision=` (authorised by the caller): new
/// audit records as server-sent events (`event: record`, `data:` the record as on disk), a
/// comment line each second as a heartbeat (a closed client is noticed at the next write),
/// at most `MAX_TAILS` at once, each closed after `TAIL_LIFETIME` with `event: end` (an
/// `EventSource` reconnects by itself).
pub async fn tail(s: &mut AgentIo, control: &Control, query: &[u8]) -> Option<Reply> {
    let Some(audit) = control.audit.as_ref() else {
        return Some(Reply::error(
            404,
            "audit_disabled",
            "no [audit] section in the running config: there are no records to read",
        ));
    };
    let now_us = || u64::try_from(crate::util::clock::unix_now().as_micros()).unwrap_or(u64::MAX);
    let mut q = match super::admin::requests_query(query, now_us()) {
        Ok(q)
            if q.since.is_none()
                && q.until.is_none()
                && q.limit == crate::observe::audit::query::DEFAULT_LIMIT =>
        {
            q
        }
        Ok(_) => {
            return Some(Reply::error(
                400,
                "bad_request",
                "the tail takes proxy, agent, status, decision and shadow (no since, until or limit)",
            ));
        }
        Err(m) => return Some(Reply::error(400, "bad_request", &m)),
    };
    if TAILS.with(|t| t.get()) >= MAX_TAILS {
        return Some(Reply::error(
            503,
            "too_many_tails",
            "too many live tails are open; close one and retry",
        ));
    }
    TAILS.with(|t| t.set(t.get() + 1));
    let _slot = TailSlot;
    q.limit = TAIL_BATCH;
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8");
    push_security_headers(&mut out);
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\nretry: 2000\n\n");
    if write_all(s, &mut out, Duration::from_secs(10))
        .await
        .is_err()
    {
        return None;
    }
    // ids already seen (sent, or present before the tail began), with their ts
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut first = true;
    let end = crate::util::clock::now() + TAIL_LIFETIME;
    loop {
        let now = now_us();
        let since = now.saturating_sub(TAIL_WINDOW_US);
        seen.retain(|_, ts| *ts >= since);
        q.since = Some(since);
        let dir = audit.dir.clone();
        let qq = q.clone();
        let res = monoio::spawn_blocking(move || crate::observe::audit::query(&dir, &qq)).await;
        let records = match res {
            Ok(Ok(r)) => r.records,
            _ => {
                out.extend_from_slice(b"event: error\ndata: {\"error\":\"audit_unreadable\"}\n\n");
                let _ = write_all(s, &mut out, Duration::from_secs(10)).await;
                return None;
            }
        };
        // oldest first on the wire
        for r in records.iter().rev() {
            let Some(id) = r.id.clone() else { continue };
            if seen.contains_key(&id) {
                continue;
            }
            seen.insert(id.clone(), r.ts_us().unwrap_or(now));
            if first {
                continue;
            }
            let Ok(json) = serde_json::to_string(r) else {
                continue;
            };
            out.extend_from_slice(b"event: record\nid: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\ndata: ");
            out.extend_from_slice(json.as_bytes());
            out.extend_from_slice(b"\n\n");
        }
        if first {
            out.extend_from_slice(b"event: ready\ndata: {}\n\n");
        }
        first = false;
        if crate::util::clock::now() >= end {
            out.extend_from_slice(b"event: end\ndata: {}\n\n");
            let _ = write_all(s, &mut out, Duration::from_secs(10)).await;
            return None;
        }
        out.extend_from_slice(b": ping\n\n");
        if write_all(s, &mut out, Duration::from_secs(10))
            .await
            .is_err()
        {
            return None;
        }
        out.clear();
        monoio::time::sleep(TAIL_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{Limits, parse_request};

    fn parsed(raw: &[u8]) -> (RequestHead, Vec<u8>) {
        let mut h = RequestHead::default();
        let lim = Limits {
            max_head: 8192,
            max_headers: 64,
        };
        assert!(parse_request(raw, &lim, &mut h).unwrap());
        (h, raw.to_vec())
    }

    fn add_session(token: &str, admin: &str, csrf: &str, created: Instant) {
        SESSIONS.with_borrow_mut(|m| {
            m.insert(
                crate::identity::key_sha256(token.as_bytes()),
                Session {
                    admin: admin.into(),
                    key: [0; 32],
                    csrf: csrf.into(),
                    created,
                    last: created,
                },
            )
        });
    }

    #[test]
    fn sessions_csrf_and_expiry() {
        let t0 = crate::util::clock::now();
        add_session("tok-a", "alice", "csrf-a", t0);
        // no cookie, unknown cookie: no session
        let (h, b) = parsed(b"GET /v1/requests HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(session_admin(&h, &b, t0).unwrap(), None);
        let (h, b) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: pcs_session=nope\r\n\r\n");
        assert_eq!(session_admin(&h, &b, t0).unwrap(), None);
        // among other cookies
        let (h, b) =
            parsed(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; pcs_session=tok-a; b=2\r\n\r\n");
        assert_eq!(
            session_admin(&h, &b, t0).unwrap().map(|w| w.0).as_deref(),
            Some("alice")
        );
        // unsafe method: the CSRF token, exactly
        let (h, b) = parsed(b"POST /x HTTP/1.1\r\nHost: x\r\nCookie: pcs_session=tok-a\r\n\r\n");
        assert_eq!(session_admin(&h, &b, t0).unwrap_err().status, 403);
        let (h, b) = parsed(
            b"POST /x HTTP/1.1\r\nHost: x\r\nCookie: pcs_session=tok-a\r\nX-CSRF-Token: csrf-b\r\n\r\n",
        );
        assert_eq!(session_admin(&h, &b, t0).unwrap_err().status, 403);
        let (h, b) = parsed(
            b"DELETE /x HTTP/1.1\r\nHost: x\r\nCookie: pcs_session=tok-a\r\nX-CSRF-Token: csrf-a\r\n\r\n",
        );
        assert_eq!(
            session_admin(&h, &b, t0).unwrap().map(|w| w.0).as_deref(),
            Some("alice")
        );
        // idle expiry (touching resets it), then gone for good
        let (h, b) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: pcs_session=tok-a\r\n\r\n");
        let t1 = t0 + IDLE - Duration::from_secs(1);
        assert!(session_admin(&h, &b, t1).unwrap().is_some());
        let t2 = t1 + IDLE + Duration::from_secs(1);
        assert_eq!(session_admin(&h, &b, t2).unwrap(), None);
        assert_eq!(session_admin(&h, &b, t1).unwrap(), None);
        // absolute expiry however busy
        add_session("tok-b", "bob", "c", t0);
        let (h, b) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: pcs_session=tok-b\r\n\r\n");
        let mut t = t0;
        while t < t0 + ABSOLUTE - IDLE {
            t += IDLE / 2;
            assert!(session_admin(&h, &b, t).unwrap().is_some());
        }
        assert_eq!(
            session_admin(&h, &b, t0 + ABSOLUTE + Duration::from_secs(1)).unwrap(),
            None
        );
    }

    #[test]
    fn backoff_grows_and_resets() {
        let t0 = crate::util::clock::now();
        let p: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..FREE_FAILURES - 1 {
            note_attempt(p, false, t0);
            assert_eq!(backoff_wait(p, t0), None);
        }
        note_attempt(p, false, t0);
        assert_eq!(backoff_wait(p, t0), Some(Duration::from_secs(1)));
        note_attempt(p, false, t0);
        assert_eq!(backoff_wait(p, t0), Some(Duration::from_secs(2)));
        for _ in 0..20 {
            note_attempt(p, false, t0);
        }
        assert_eq!(backoff_wait(p, t0), Some(MAX_BACKOFF));
        // another peer is not affected; success forgets
        assert_eq!(backoff_wait("192.0.2.8".parse().unwrap(), t0), None);
        note_attempt(p, true, t0);
        assert_eq!(backoff_wait(p, t0), None);
    }

    #[test]
    fn origin_check() {
        let (h, b) = parsed(b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:9901\r\nOrigin: http://127.0.0.1:9901\r\n\r\n");
        assert!(same_origin(&h, &b));
        let (h, b) = parsed(b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:9901\r\nOrigin: http://evil.example\r\n\r\n");
        assert!(!same_origin(&h, &b));
        let (h, b) =
            parsed(b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:9901\r\nOrigin: null\r\n\r\n");
        assert!(!same_origin(&h, &b));
        let (h, b) = parsed(b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:9901\r\n\r\n");
        assert!(same_origin(&h, &b));
        let (h, b) = parsed(b"POST /ui/login HTTP/1.1\r\nHost: a\r\nOrigin: null\r\nSec-Fetch-Site: same-origin\r\n\r\n");
        assert!(same_origin(&h, &b));
        let (h, b) = parsed(b"POST /ui/login HTTP/1.1\r\nHost: a\r\nOrigin: http://a\r\nSec-Fetch-Site: cross-site\r\n\r\n");
        assert!(!same_origin(&h, &b));
    }

    #[test]
    fn assets_are_self_contained() {
        for (name, _, body) in ASSETS.iter().chain(
            [
                ("index.html", "", INDEX_HTML),
                ("login.html", "", LOGIN_HTML),
            ]
            .iter(),
        ) {
            // the SVG namespace name is an identifier, never fetched; no other URL may appear
            let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
            for bad in [
                "http:", "https:", "//cdn", "<script>", " style=", "onclick=", "@import", "url(",
            ] {
                assert!(!body.contains(bad), "{name} contains {bad}");
            }
        }
    }
}
