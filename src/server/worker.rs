//! One thread per core, each with its own monoio runtime (io_uring, epoll fallback), its own
//! SO_REUSEPORT listeners, its own upstream pool and its own `Arc<Compiled>`. Reload and drain
//! arrive as messages; nothing on the request path is shared between workers.
use crate::config::Compiled;
use crate::observe::call::{IdGen, RequestId};
use crate::pipeline::{self, Scratch};
use crate::upstream::pool::Pool;
use monoio::io::{CancelHandle, Canceller};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Messages from the control thread.
pub enum Msg {
    /// Phase two of a reload: use this config for every call that starts from now on.
    Reload(Arc<Compiled>, std::sync::mpsc::Sender<usize>),
    /// Stop accepting, finish in-flight calls (bounded by drain_timeout), exit.
    Drain,
}

/// Scratch sets kept for reuse per worker.
const MAX_FREE_SCRATCH: usize = 256;
/// Buffers larger than this are shrunk before reuse.
const MAX_KEPT_BUF: usize = 256 * 1024;

pub struct Worker {
    pub id: usize,
    cfg: RefCell<Arc<Compiled>>,
    pub pool: Pool,
    ids: RefCell<IdGen>,
    #[allow(clippy::vec_box)] // boxed: an idle connection holds only a pointer
    free: RefCell<Vec<Box<Scratch>>>,
    pub draining: Cell<bool>,
    /// Connections currently inside a call.
    pub inflight: Cell<usize>,
    /// This worker's JWT verifiers (with their token caches), forked from the config they
    /// belong to (by `Compiled::serial`).
    jwt: RefCell<(u64, Vec<crate::identity::jwt::JwtVerifier>)>,
    /// The audit ring (shared with the writer thread), if `[audit]` is configured.
    pub audit: Option<Arc<crate::observe::audit::AuditRing>>,
    /// This worker's metric shard (written by this worker only, merged on scrape).
    pub metrics: crate::observe::metrics::WorkerMetrics,
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Compiled>,
        audit: Option<Arc<crate::observe::audit::AuditRing>>,
        metrics: crate::observe::metrics::WorkerMetrics,
    ) -> Self {
        Worker {
            id,
            cfg: RefCell::new(cfg),
            pool: Pool::default(),
            ids: RefCell::new(IdGen::new(id)),
            free: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            inflight: Cell::new(0),
            jwt: RefCell::new((0, Vec::new())),
            audit,
            metrics,
        }
    }

    /// The JWT verifiers for `cfg`, forked on first use after a reload.
    pub fn jwt_verifiers(
        &self,
        cfg: &Arc<Compiled>,
    ) -> std::cell::RefMut<'_, Vec<crate::identity::jwt::JwtVerifier>> {
        let mut j = self.jwt.borrow_mut();
        let key = cfg.serial;
        if j.0 != key {
            j.1 = cfg.identity.jwt.iter().map(|v| v.fork()).collect();
            j.0 = key;
        }
        std::cell::RefMut::map(j, |j| &mut j.1)
    }

    /// The config for a call that starts now.
    #[inline]
    pub fn config(&self) -> Arc<Compiled> {
        self.cfg.borrow().clone()
    }

    #[inline]
    pub fn next_id(&self) -> RequestId {
        self.ids.borrow_mut().next_id()
    }

    fn take_scratch(&self) -> Box<Scratch> {
        self.free.borrow_mut().pop().unwrap_or_default()
    }

    fn put_scratch(&self, mut s: Box<Scratch>) {
        s.rbuf.clear();
        for b in [&mut s.rbuf, &mut s.ubuf, &mut s.out, &mut s.body] {
            b.clear();
            if b.capacity() > MAX_KEPT_BUF {
                b.shrink_to(MAX_KEPT_BUF);
            }
        }
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_FREE_SCRATCH {
            free.push(s);
        }
    }
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
                let idle = w.config().limits.upstream_idle_timeout;
                w.pool.sweep(idle);
                w.metrics.set_pool_idle(w.pool.idle_count());
            }
        })
    };
    // a closed channel (control thread gone) drains like Msg::Drain
    while let Ok(Msg::Reload(cfg, ack)) = rx.recv_async().await {
        *w.cfg.borrow_mut() = cfg;
        let _ = ack.send(w.id);
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
    let deadline = crate::util::clock::now() + w.config().limits.drain_timeout;
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
            monoio::spawn(serve(stream, w.clone(), peer));
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

/// One agent connection: wait (without holding a buffer) for a request, serve it, repeat.
async fn serve(mut stream: TcpStream, w: Rc<Worker>, peer: std::net::SocketAddr) {
    let mut pending: Option<Box<Scratch>> = None;
    loop {
        if pending.is_none() {
            if w.draining.get() {
                return;
            }
            let idle = w.config().limits.idle_timeout;
            match monoio::time::timeout(idle, stream.readable(false)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        let mut s = pending.take().unwrap_or_else(|| w.take_scratch());
        s.peer = Some(peer);
        w.inflight.set(w.inflight.get() + 1);
        let guard = InFlight(&w.inflight);
        let keep = Box::pin(pipeline::exchange(&w, &mut stream, &mut s)).await;
        drop(guard);
        if !keep {
            w.put_scratch(s);
            return;
        }
        if s.rbuf.is_empty() {
            w.put_scratch(s);
        } else {
            pending = Some(s);
        }
    }
}
