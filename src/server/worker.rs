//! One thread per core, each with its own monoio runtime (io_uring, epoll fallback), its own
//! SO_REUSEPORT listeners and its own `Worker` state (`pipeline/state.rs`). Reload (two-phase)
//! and drain arrive as messages; nothing on the request path is shared between workers.
use crate::config::Compiled;
use crate::net::agent_io::{AgentIo, HandshakeFail, PeerTls, accept_intercept, accept_tls};
use crate::pipeline::{self, Scratch, Worker};
use monoio::io::{CancelHandle, Canceller};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Messages from the control thread.
pub enum Msg {
    /// Reload, phase one: build this worker's view of this config; acknowledge with the id.
    /// The state store's handle comes along when the reload started it (`[approvals]` added).
    Prepare(
        Arc<Compiled>,
        Option<crate::state::Store>,
        std::sync::mpsc::Sender<usize>,
    ),
    /// Reload, phase two: every worker prepared; calls that start from now on use it.
    Commit(std::sync::mpsc::Sender<usize>),
    /// Not every worker prepared in time: forget the prepared view.
    Abort,
    /// Stop accepting, finish in-flight calls (bounded by drain_timeout), exit.
    Drain,
}

/// Binds this worker's listeners (SO_REUSEPORT, so every worker binds the same addresses).
pub fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    addrs
        .iter()
        .map(|a| TcpListener::bind_with_config(a, &opts))
        .collect()
}

/// The worker's main task: accept until told to drain, then wait for in-flight calls.
///
/// Accepts are never raced against anything with `select!`: under io_uring, dropping an accept
/// that the kernel has already completed leaks the accepted socket (the client hangs). The
/// control channel is read here while the accept loops run as their own tasks, and draining
/// stops them through a `Canceller`, which lets every accept complete or fail cleanly.
pub async fn run(w: Rc<Worker>, listeners: Vec<TcpListener>, rx: flume::Receiver<Msg>) {
    let canceller = Canceller::new();
    let stop = Rc::new(Cell::new(false));
    let mut loops = Vec::with_capacity(listeners.len());
    for l in listeners {
        let (w, stop, cancel) = (w.clone(), stop.clone(), canceller.handle());
        loops.push(monoio::spawn(async move {
            while !stop.get() {
                accept_one(&l, &w, cancel.clone()).await;
            }
            // `l` drops here: the listening socket closes once every accept is done
        }));
    }
    let sweeper = {
        let w = w.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_secs(1)).await;
                let idle = w.view().cfg.limits.upstream_idle_timeout;
                w.pool.sweep(idle);
                w.metrics.set_pool_idle(w.pool.idle_count());
            }
        })
    };
    // a closed channel (control thread gone) drains like Msg::Drain
    loop {
        match rx.recv_async().await {
            Ok(Msg::Prepare(cfg, store, ack)) => {
                w.prepare(cfg, store);
                let _ = ack.send(w.id);
            }
            Ok(Msg::Commit(ack)) => {
                if w.commit() {
                    let _ = ack.send(w.id);
                }
            }
            Ok(Msg::Abort) => w.abort(),
            Ok(Msg::Drain) | Err(_) => break,
        }
    }
    // drain: stop accepting, let calls in flight finish
    stop.set(true);
    w.draining.set(true);
    let _ = canceller.cancel();
    for l in loops {
        l.await;
    }
    drop(sweeper);
    w.pool.clear();
    let deadline = crate::util::clock::now() + w.view().cfg.limits.drain_timeout;
    while w.inflight.get() > 0 && crate::util::clock::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if w.inflight.get() > 0 {
        tracing::warn!(
            worker = w.id,
            inflight = w.inflight.get(),
            "drain timeout: closing calls still in flight"
        );
    }
}

async fn accept_one(l: &TcpListener, w: &Rc<Worker>, cancel: CancelHandle) {
    match l.cancelable_accept(cancel).await {
        Ok((stream, peer)) => {
            let _ = stream.set_nodelay(true);
            match w.view().cfg.server.tls.clone() {
                None => {
                    monoio::spawn(serve(AgentIo::Plain(stream), w.clone(), peer, None));
                }
                Some(tls) => {
                    monoio::spawn(serve_tls(stream, tls, w.clone(), peer));
                }
            }
        }
        Err(_) if w.draining.get() => {}
        Err(e) => {
            // EMFILE and friends: back off instead of spinning
            tracing::warn!(worker = w.id, error = %e, "accept failed");
            monoio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Decrements the in-flight count however the call ends.
struct InFlight<'a>(&'a Cell<usize>);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A connection to a TLS agent listener: the handshake (bounded by `head_timeout`), then the
/// calls. A failed handshake is logged with rustls's reason and counted.
async fn serve_tls(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    w: Rc<Worker>,
    peer: std::net::SocketAddr,
) {
    let timeout = w.view().cfg.limits.head_timeout;
    // boxed: the handshake's state is freed once it ends, the connection's task keeps the loop's
    match Box::pin(accept_tls(stream, tls, timeout)).await {
        Ok((io, tls_peer)) => serve(io, w, peer, Some(Rc::new(tls_peer))).await,
        // a connection closed before a ClientHello (a port probe) is not worth a log line
        Err(HandshakeFail::Closed) => {
            tracing::debug!(worker = w.id, %peer, "agent closed before the TLS handshake ended");
        }
        Err(e) => {
            crate::observe::metrics::AGENT_TLS_HANDSHAKE_ERRORS
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(worker = w.id, %peer, reason = %e, "agent TLS handshake failed");
        }
    }
}

/// One agent connection: wait (without holding a buffer) for a request, serve it, repeat.
/// Over TLS the wait is the head read itself (rustls may already hold the next request's
/// bytes), so an idle TLS connection closes after `head_timeout` rather than `idle_timeout`.
/// A CONNECT the pipeline accepted (`Scratch::upgrade`) turns the connection into an
/// intercepted tunnel (the TLS handshake with a minted leaf, then calls as before, each
/// knowing its `Tunnel`) or a blind tunnel (`pipeline::connect::splice`, to its end).
async fn serve(
    mut stream: AgentIo,
    w: Rc<Worker>,
    peer: std::net::SocketAddr,
    tls_peer: Option<Rc<PeerTls>>,
) {
    let mut pending: Option<Box<Scratch>> = None;
    let mut tunnel: Option<Rc<pipeline::connect::Tunnel>> = None;
    loop {
        if pending.is_none() {
            if w.draining.get() {
                return;
            }
            if let AgentIo::Plain(tcp) = &stream {
                let idle = w.view().cfg.limits.idle_timeout;
                match monoio::time::timeout(idle, tcp.readable(false)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        }
        let mut s = pending.take().unwrap_or_else(|| w.take_scratch());
        s.peer = Some(peer);
        s.tls_peer.clone_from(&tls_peer);
        s.tunnel.clone_from(&tunnel);
        w.inflight.set(w.inflight.get() + 1);
        let guard = InFlight(&w.inflight);
        let keep = Box::pin(pipeline::serve_call(&w, &mut stream, &mut s)).await;
        drop(guard);
        let upgrade = s.upgrade.take();
        if !keep {
            w.put_scratch(s);
            return;
        }
        if let Some(up) = upgrade {
            w.put_scratch(s);
            match up {
                pipeline::connect::Upgrade::Intercept {
                    config,
                    tunnel: t,
                    early,
                } => {
                    let Some(carrier) = stream.into_carrier() else {
                        return;
                    };
                    let timeout = w.view().cfg.limits.head_timeout;
                    // boxed, like the call: an idle connection's task keeps only this loop's
                    // state, not the handshake's or the splice's
                    match Box::pin(accept_intercept(carrier, config, timeout, &early)).await {
                        Ok(io) => {
                            stream = io;
                            tunnel = Some(t);
                            continue;
                        }
                        Err(e) => {
                            crate::observe::metrics::INTERCEPT_HANDSHAKE_ERRORS
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!(worker = w.id, %peer, host = %t.host, reason = %e,
                                "intercepted CONNECT: the agent's TLS handshake failed");
                            return;
                        }
                    }
                }
                pipeline::connect::Upgrade::Blind(b) => {
                    let idle = w.view().cfg.limits.idle_timeout;
                    // a blind tunnel counts as in flight: a drain waits for it (up to
                    // `drain_timeout`, after which the process exits and closes it)
                    w.inflight.set(w.inflight.get() + 1);
                    let guard = InFlight(&w.inflight);
                    Box::pin(pipeline::connect::splice(&w, stream, b, idle)).await;
                    drop(guard);
                    return;
                }
            }
        }
        if s.rbuf.is_empty() {
            w.put_scratch(s);
        } else {
            pending = Some(s);
        }
    }
}
