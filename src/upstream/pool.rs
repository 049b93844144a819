//! Per-worker upstream connections: a keep-alive pool keyed by upstream identity, name
//! resolution with a small per-worker cache, and connect (+ TLS handshake) under
//! `upstream_connect_timeout`. Nothing here is shared between workers.
use super::conn::{IdleState, UpConn};
use crate::config::Upstream;
use crate::error::Refusal;
use crate::util::clock;
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Idle connections kept per upstream per worker.
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// How long a resolved host name is reused.
const DNS_TTL: Duration = Duration::from_secs(30);

struct Idle {
    conn: UpConn,
    since: Instant,
}

/// Whether an idle connection may carry another request; a connection with stray bytes is
/// logged and counted.
fn reusable(conn: &UpConn) -> bool {
    match conn.idle_state() {
        IdleState::Quiet => true,
        IdleState::Closed => false,
        IdleState::Bytes => {
            crate::observe::metrics::UPSTREAM_STRAY_BYTES
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                "bytes arrived on an idle upstream connection: closing it, not reusing it"
            );
            false
        }
    }
}

type DnsCache = HashMap<(String, u16), (Vec<SocketAddr>, Instant)>;

#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<u64, Vec<Idle>>>,
    dns: RefCell<DnsCache>,
    idle_total: Cell<usize>,
}

impl Pool {
    /// The most recently used idle connection that is younger than `max_idle` and on which
    /// nothing arrived while it was idle (checked now, without blocking).
    pub fn take(&self, key: u64, max_idle: Duration) -> Option<UpConn> {
        let mut map = self.idle.borrow_mut();
        let list = map.get_mut(&key)?;
        let now = clock::now();
        while let Some(idle) = list.pop() {
            self.idle_total.set(self.idle_total.get() - 1);
            if now.duration_since(idle.since) < max_idle && reusable(&idle.conn) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Pools `conn` (checked when taken again: one non-blocking peek per reuse).
    pub fn put(&self, key: u64, conn: UpConn) {
        let mut map = self.idle.borrow_mut();
        let list = map.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                conn,
                since: clock::now(),
            });
            self.idle_total.set(self.idle_total.get() + 1);
        }
    }

    /// Closes idle connections older than `max_idle`, and those on which anything arrived or
    /// that the upstream closed (run periodically by the worker: the watch on idle
    /// connections; `take` checks again at reuse).
    pub fn sweep(&self, max_idle: Duration) {
        let now = clock::now();
        let mut map = self.idle.borrow_mut();
        let mut total = 0;
        for list in map.values_mut() {
            list.retain(|i| now.duration_since(i.since) < max_idle && reusable(&i.conn));
            total += list.len();
        }
        map.retain(|_, l| !l.is_empty());
        self.idle_total.set(total);
    }

    /// Closes every idle connection (drain).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
        self.idle_total.set(0);
    }

    pub fn idle_count(&self) -> usize {
        self.idle_total.get()
    }

    async fn resolve(&self, up: &Upstream) -> Result<Vec<SocketAddr>, Refusal> {
        if let Some(a) = up.addr {
            return Ok(vec![a]);
        }
        let key = (up.host.clone(), up.port);
        if let Some((addrs, at)) = self.dns.borrow().get(&key)
            && clock::now().duration_since(*at) < DNS_TTL
        {
            return Ok(addrs.clone());
        }
        let lookup = key.clone();
        let res = monoio::spawn_blocking(move || {
            use std::net::ToSocketAddrs;
            (lookup.0.as_str(), lookup.1)
                .to_socket_addrs()
                .map(|it| it.collect::<Vec<_>>())
        })
        .await;
        match res {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                self.dns
                    .borrow_mut()
                    .insert(key, (addrs.clone(), clock::now()));
                Ok(addrs)
            }
            Ok(Ok(_)) | Ok(Err(_)) => {
                crate::observe::metrics::UPSTREAM_CONNECT_ERRORS
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(host = %up.host, "upstream name resolution failed");
                Err(Refusal::UpstreamUnreachable("name resolution failed"))
            }
            Err(_) => Err(Refusal::UpstreamUnreachable("name resolution failed")),
        }
    }

    /// A new connection to `up`: resolve, TCP connect (each address in turn) and TLS handshake,
    /// all within `connect_timeout`.
    pub async fn connect(
        &self,
        up: &Upstream,
        connect_timeout: Duration,
    ) -> Result<UpConn, Refusal> {
        match monoio::time::timeout(connect_timeout, self.connect_inner(up)).await {
            Ok(r) => r,
            Err(_) => {
                crate::observe::metrics::UPSTREAM_CONNECT_ERRORS
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(upstream = %up.authority, "upstream connect timed out");
                Err(Refusal::UpstreamUnreachable("connect timed out"))
            }
        }
    }

    async fn connect_inner(&self, up: &Upstream) -> Result<UpConn, Refusal> {
        let addrs = self.resolve(up).await?;
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_addr(a).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(tcp) = tcp else {
            crate::observe::metrics::UPSTREAM_CONNECT_ERRORS
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(upstream = %up.authority, error = ?last.map(|e| e.kind()), "upstream connect failed");
            return Err(Refusal::UpstreamUnreachable("connection failed"));
        };
        let _ = tcp.set_nodelay(true);
        match &up.tls {
            None => Ok(UpConn::Plain(tcp)),
            Some(t) => {
                let connector = monoio_rustls::TlsConnector::from(t.config.clone());
                let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
                match connector.connect(t.server_name.clone(), tcp).await {
                    Ok(s) => Ok(UpConn::tls(s, fd)),
                    Err(e) => {
                        crate::observe::metrics::TLS_HANDSHAKE_ERRORS
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(upstream = %up.authority, reason = %crate::net::tls::handshake_reason(&e), "upstream TLS handshake failed");
                        Err(Refusal::UpstreamUnreachable("TLS handshake failed"))
                    }
                }
            }
        }
    }
}
