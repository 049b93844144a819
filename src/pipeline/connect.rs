//! `CONNECT host:port` (forward-proxy mode, served only with `[forward]`): how an
//! `HTTPS_PROXY` client reaches an HTTPS origin through the gateway.
//!
//! `decide` runs on the CONNECT's head, after the call's log is open: authenticate (the
//! CONNECT's `Proxy-Authorization`, 407 on failure), then one of
//! - an origin a proxy serves with `intercept` → `Upgrade::Intercept`: the worker terminates
//!   the agent's TLS with a leaf minted for the host (`net::mint`) and serves every request
//!   inside through the same pipeline, authenticated with the CONNECT's credential (`Tunnel`);
//! - an origin on the `[forward] tunnel` allow-list that admits this agent →
//!   `Upgrade::Blind`: resolved once, every address checked by the SSRF guard
//!   (`net::ssrf`), connected to a checked address, then `splice` carries bytes both ways
//!   and writes one audit record at the end;
//! - anything else: 403 `unknown_origin`, before any connection is made.
use super::stages::authenticate;
use super::{Scratch, Stop, View, Worker};
use crate::error::Refusal;
use crate::http::head::BodyKind;
use crate::net::agent_io::AgentIo;
use crate::observe::audit::record::{AuthVia, TunnelKind};
use crate::observe::audit::{Decision, SmallStr};
use crate::observe::call::CallLog;
use crate::util::clock;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes buffered per direction of a blind tunnel.
const SPLICE_BUF: usize = 16 * 1024;

/// What an intercepted tunnel gives each call inside it.
pub struct Tunnel {
    /// The CONNECT's host (lower-cased; IPv6 in brackets) and port.
    pub host: Box<str>,
    pub port: u16,
    /// The CONNECT's credential-bearing header lines.
    cred: Vec<HeaderLine>,
}

/// A header line kept beyond its request: name and value.
type HeaderLine = (Box<[u8]>, Box<[u8]>);

impl Tunnel {
    /// The CONNECT's credential lines, as `identity::authenticate` reads headers.
    pub fn credentials(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.cred.iter().map(|(n, v)| (&n[..], &v[..]))
    }
}

/// What a connection becomes after its CONNECT was answered 200.
pub enum Upgrade {
    Intercept {
        config: Arc<rustls::ServerConfig>,
        tunnel: Rc<Tunnel>,
        /// Bytes the agent sent after the CONNECT head (an eager ClientHello).
        early: Vec<u8>,
    },
    Blind(Box<Blind>),
}

/// A blind tunnel, connected, waiting for `splice`.
pub struct Blind {
    upstream: TcpStream,
    early: Vec<u8>,
    agent: Option<Arc<str>>,
    auth: Option<AuthVia>,
    /// `host:port`, the record's `path`.
    origin: String,
    client: Option<SocketAddr>,
    forwarded_for: Option<IpAddr>,
    started: Instant,
    ts_us: u64,
}

/// Decides a CONNECT (its log already open). `Ok`: answer 200 and upgrade.
pub(super) async fn decide(
    view: &View,
    w: &Worker,
    s: &mut Scratch,
    log: &mut CallLog<'_>,
) -> Result<Upgrade, Stop> {
    let cfg = &*view.cfg;
    let Some(forward) = &cfg.forward else {
        // outside forward-proxy mode a tunnel would carry anything past the rules
        return Err(Refusal::BadRequest("unsupported request target").into());
    };
    if s.tunnel.is_some() {
        return Err(Refusal::BadRequest("CONNECT inside a tunnel").into());
    }
    if !matches!(s.head.body, BodyKind::None | BodyKind::Length(0)) {
        return Err(Refusal::BadRequest("CONNECT with a body").into());
    }
    let target = s.head.target.get(&s.rbuf);
    let (host, port) = super::route::split_authority(target)?;
    let port = port.ok_or(Refusal::BadRequest("CONNECT needs host:port"))?;
    let host = host.to_ascii_lowercase();
    log.path.push_str(&host);
    log.path.push(':');
    log.path.push_str(itoa(port).as_str());

    let now_unix = clock::unix_now().as_secs() as i64;
    let managed = w.managed();
    let (caller, via) = authenticate(view, managed.as_deref(), s, now_unix)?;
    log.agent = caller.id().map(Arc::from);
    log.auth = via;

    if let (Some(proxy), Some(ca)) = (cfg.intercepting(&host, port), &forward.ca) {
        log.proxy = Some(proxy);
        log.proxy_name = Some(cfg.proxies[proxy].name_arc.clone());
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let config = w
            .leaves
            .get(ca, name, std::time::SystemTime::now())
            .map_err(|e| {
                tracing::warn!(host = %host, error = %e, "cannot mint a leaf certificate");
                Refusal::BadRequest("no certificate can be minted for this host")
            })?;
        let src = &s.rbuf;
        let cred = s
            .head
            .headers
            .iter()
            .map(|h| (h.name.get(src), h.value.get(src)))
            .filter(|(n, _)| {
                crate::identity::is_credential_header(n, None, true)
                    && !n.eq_ignore_ascii_case(b"cookie")
            })
            .map(|(n, v)| (Box::from(n), Box::from(v)))
            .collect();
        let tunnel = Rc::new(Tunnel {
            host: host.into(),
            port,
            cred,
        });
        log.decision = Decision::Allow;
        return Ok(Upgrade::Intercept {
            config,
            tunnel,
            early: Vec::new(),
        });
    }

    let rule = forward
        .tunnels
        .iter()
        .find(|t| t.matches(&host, port))
        .ok_or(Refusal::UnknownOrigin)?;
    if !rule.admits(caller.id(), caller.roles()) {
        return Err(Refusal::TunnelDenied.into());
    }
    // tunnels opened, per agent (the entry's `meter`)
    if let Some(m) = &rule.meter {
        use crate::policy::meter::Verdict;
        match m.admit(caller.id(), false).await {
            Verdict::Allowed(_) => {}
            Verdict::Limited { retry_after_ns, .. } => {
                let retry_after = Verdict::retry_after_secs(retry_after_ns);
                return Err(Refusal::RateLimited { retry_after }.into());
            }
            Verdict::Pending | Verdict::Unavailable => {
                return Err(Refusal::MeterUnavailable.into());
            }
        }
    }
    let lim = &cfg.limits;
    let addrs = resolve(&host, port, lim.connect_timeout).await?;
    // every address the name resolves to is checked (a name with one private address among
    // public ones is refused: the resolver's order is not the agent's choice to exploit)
    for a in &addrs {
        if let Some(why) = crate::net::ssrf::classify(a.ip())
            && (!rule.allow_private || why == crate::net::ssrf::Blocked::Metadata)
        {
            tracing::info!(origin = %log.path, address = %a.ip(), reason = why.as_str(),
                agent = caller.id().unwrap_or("-"), "tunnel refused by the SSRF guard");
            return Err(Refusal::SsrfBlocked.into());
        }
    }
    // the connection goes to an address that was checked (no second resolution)
    let upstream = connect(&addrs, lim.connect_timeout).await?;
    log.decision = Decision::Allow;
    Ok(Upgrade::Blind(Box::new(Blind {
        upstream,
        early: Vec::new(),
        agent: log.agent.clone(),
        auth: via,
        origin: log.path.clone(),
        client: log.client,
        forwarded_for: log.forwarded_for,
        started: log.started,
        ts_us: log.ts_us,
    })))
}

impl Upgrade {
    /// Bytes the agent sent after the CONNECT head, to be handled before anything it sends
    /// next.
    pub(super) fn set_early(&mut self, bytes: Vec<u8>) {
        match self {
            Upgrade::Intercept { early, .. } => *early = bytes,
            Upgrade::Blind(b) => b.early = bytes,
        }
    }
}

fn itoa(n: u16) -> String {
    n.to_string()
}

/// The host's addresses, looked up once (an IP literal is its own address).
async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, Refusal> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = host.to_string();
    let lookup = monoio::spawn_blocking(move || {
        use std::net::ToSocketAddrs;
        (name.as_str(), port)
            .to_socket_addrs()
            .map(|it| it.collect::<Vec<_>>())
    });
    match monoio::time::timeout(timeout, lookup).await {
        Ok(Ok(Ok(addrs))) if !addrs.is_empty() => Ok(addrs),
        _ => {
            tracing::info!(host, "tunnel: name resolution failed");
            Err(Refusal::UpstreamUnreachable("name resolution failed"))
        }
    }
}

async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, Refusal> {
    let attempt = async {
        for a in addrs {
            if let Ok(s) = TcpStream::connect_addr(*a).await {
                return Some(s);
            }
        }
        None
    };
    match monoio::time::timeout(timeout, attempt).await {
        Ok(Some(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(None) => Err(Refusal::UpstreamUnreachable("connection failed")),
        Err(_) => Err(Refusal::UpstreamUnreachable("connect timed out")),
    }
}

/// Carries a blind tunnel's bytes both ways until both sides are done (each side's end is
/// passed on as a half-close) or nothing moved for `idle`; then writes its one audit record
/// (`tunnel: "blind"`, `path` = `host:port`, `bytes_in` up, `bytes_out` down, `total_us`).
pub async fn splice(w: &Worker, agent: AgentIo, b: Box<Blind>, idle: Duration) {
    let b = *b;
    let mut log = CallLog::new(w.next_id(), w.audit.as_deref(), Some(&w.metrics));
    log.started = b.started;
    log.ts_us = b.ts_us;
    log.agent = b.agent;
    log.auth = b.auth;
    log.method = SmallStr::new("CONNECT");
    log.path = b.origin;
    log.client = b.client;
    log.forwarded_for = b.forwarded_for;
    log.tunnel = Some(TunnelKind::Blind);
    log.decision = Decision::Allow;
    log.status = 200;
    let up = Cell::new(0u64);
    let down = Cell::new(0u64);
    let last = Cell::new(clock::now());
    let (ur, uw) = b.upstream.into_split();
    match agent {
        AgentIo::Plain(t) => {
            let (ar, aw) = t.into_split();
            both(ar, aw, ur, uw, b.early, [&up, &down], &last, idle).await;
        }
        AgentIo::Tls(t) => {
            let (ar, aw) = (*t).into_split();
            both(ar, aw, ur, uw, b.early, [&up, &down], &last, idle).await;
        }
        // a CONNECT inside a tunnel never gets here (refused by `decide`)
        AgentIo::Inner(_) => {}
    }
    log.bytes_in = up.get();
    log.bytes_out = down.get();
    crate::observe::metrics::TUNNEL_BYTES
        .fetch_add(up.get() + down.get(), std::sync::atomic::Ordering::Relaxed);
}

#[allow(clippy::too_many_arguments)]
async fn both<AR, AW, UR, UW>(
    ar: AR,
    aw: AW,
    ur: UR,
    uw: UW,
    early: Vec<u8>,
    [up, down]: [&Cell<u64>; 2],
    last: &Cell<Instant>,
    idle: Duration,
) where
    AR: AsyncReadRent,
    AW: AsyncWriteRent,
    UR: AsyncReadRent,
    UW: AsyncWriteRent,
{
    let pumps = async {
        monoio::join!(
            pump(ar, uw, early, up, last),
            pump(ur, aw, Vec::new(), down, last)
        )
    };
    let watch = async {
        loop {
            let tick = idle.min(Duration::from_secs(1));
            monoio::time::sleep(tick).await;
            if clock::now().duration_since(last.get()) >= idle {
                return;
            }
        }
    };
    monoio::select! {
        _ = pumps => {}
        _ = watch => {
            tracing::debug!("blind tunnel idle: closed");
        }
    }
}

/// One direction: read, write all, until the reader ends; then half-close the writer.
async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    mut r: R,
    mut w: W,
    early: Vec<u8>,
    bytes: &Cell<u64>,
    last: &Cell<Instant>,
) {
    if !early.is_empty() {
        let n = early.len() as u64;
        let (res, _) = w.write_all(early).await;
        if res.is_err() {
            return;
        }
        bytes.set(bytes.get() + n);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(SPLICE_BUF);
    loop {
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        last.set(clock::now());
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
        bytes.set(bytes.get() + n as u64);
    }
    // the end of this side passed on: the other direction keeps going
    let _ = w.shutdown().await;
}
