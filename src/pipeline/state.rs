//! A worker's state as the pipeline sees it: the `Worker` (one per thread, for its lifetime:
//! upstream pool, request ids, pooled `Scratch`, drain flag, audit ring, metric shard) and its
//! `View` of the compiled config (built on the worker's own thread when a reload is prepared,
//! installed when every worker has one: JWT verifiers forked with their own token caches,
//! metric slots per proxy). A call clones the view's `Rc`, so nothing on the request path
//! touches a cache line another core writes.
use crate::config::Compiled;
use crate::http::head::{RequestHead, ResponseHead};
use crate::identity::jwt::JwtVerifier;
use crate::observe::audit::AuditRing;
use crate::observe::call::{IdGen, RequestId};
use crate::observe::metrics::WorkerMetrics;
use crate::upstream::pool::Pool;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

/// Per-request working memory, pooled per worker so a call allocates nothing on the way.
#[derive(Default)]
pub struct Scratch {
    /// Bytes read from the agent: the head, then (after the call) any pipelined bytes.
    pub rbuf: Vec<u8>,
    /// Bytes read from the upstream.
    pub ubuf: Vec<u8>,
    /// Bytes being written: the outbound request head, then the agent's response head.
    pub out: Vec<u8>,
    /// The request body.
    pub body: Vec<u8>,
    pub head: RequestHead,
    pub resp: ResponseHead,
    /// The canonical path.
    pub path: String,
    /// Header lines the gateway adds to its answer (`RateLimit-*`).
    pub extra: Vec<u8>,
    /// The agent's address (set per connection).
    pub peer: Option<std::net::SocketAddr>,
    /// The secrets this call's credential put on the request (masked in the response).
    pub marks: crate::credentials::SecretMarks,
    /// What the TLS handshake established (TLS listeners; set per connection).
    pub tls_peer: Option<std::rc::Rc<crate::net::agent_io::PeerTls>>,
    /// An MCP call refused by policy: answered as JSON-RPC errors, not a plain HTTP error.
    pub mcp_refused: Option<McpRefusal>,
}

/// The JSON-RPC answer a refused MCP call gets (`pipeline::refuse`).
#[derive(Debug)]
pub struct McpRefusal {
    pub batch: bool,
    pub items: Vec<crate::mcp::answer::Refused>,
}

/// Scratch sets kept for reuse per worker.
const MAX_FREE_SCRATCH: usize = 256;
/// Buffers larger than this are shrunk before reuse.
const MAX_KEPT_BUF: usize = 256 * 1024;

/// One worker's view of one compiled config.
pub struct View {
    pub cfg: Arc<Compiled>,
    /// This worker's JWT verifiers (with their token caches), forked from the config's.
    pub jwt: RefCell<Vec<JwtVerifier>>,
    /// The metric slot of each proxy (by index).
    pub slots: Vec<u16>,
}

pub struct Worker {
    pub id: usize,
    view: RefCell<Rc<View>>,
    /// A view prepared by phase one of a reload, installed by phase two.
    pending: RefCell<Option<Rc<View>>>,
    pub pool: Pool,
    ids: RefCell<IdGen>,
    #[allow(clippy::vec_box)] // boxed: an idle connection holds only a pointer
    free: RefCell<Vec<Box<Scratch>>>,
    pub draining: Cell<bool>,
    /// Connections currently inside a call.
    pub inflight: Cell<usize>,
    /// The audit ring (shared with the writer thread), if `[audit]` is configured.
    pub audit: Option<Arc<AuditRing>>,
    /// This worker's metric shard (written by this worker only, merged on scrape).
    pub metrics: WorkerMetrics,
    /// The state store's handle (approvals), if `[state]`/`[approvals]` is configured.
    pub state: Option<crate::state::Store>,
    /// This worker's tracer, if `[telemetry] otlp` is configured (set at start).
    pub tracer: Option<crate::observe::trace::Tracer>,
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Compiled>,
        audit: Option<Arc<AuditRing>>,
        metrics: WorkerMetrics,
    ) -> Self {
        let view = Rc::new(Self::build_view(&metrics, cfg));
        Worker {
            id,
            view: RefCell::new(view),
            pending: RefCell::new(None),
            pool: Pool::default(),
            ids: RefCell::new(IdGen::new(id)),
            free: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            inflight: Cell::new(0),
            audit,
            metrics,
            state: None,
            tracer: None,
        }
    }

    /// The worker with its tracer (`[telemetry] otlp`).
    pub fn with_tracer(mut self, tracer: Option<crate::observe::trace::Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The worker with the state store's handle (held calls talk to it).
    pub fn with_state(mut self, state: Option<crate::state::Store>) -> Self {
        self.state = state;
        self
    }

    fn build_view(metrics: &WorkerMetrics, cfg: Arc<Compiled>) -> View {
        let jwt = cfg.identity.jwt.iter().map(JwtVerifier::fork).collect();
        let slots = metrics.slots_for(cfg.proxies.iter().map(|p| &p.name_arc));
        View {
            cfg,
            jwt: RefCell::new(jwt),
            slots,
        }
    }

    /// Reload, phase one: build this worker's view of `cfg` (not used yet).
    pub fn prepare(&self, cfg: Arc<Compiled>) {
        let view = Rc::new(Self::build_view(&self.metrics, cfg));
        *self.pending.borrow_mut() = Some(view);
    }

    /// Reload, phase two: calls that start from now on use the prepared view. `false` if
    /// nothing was prepared.
    pub fn commit(&self) -> bool {
        match self.pending.borrow_mut().take() {
            Some(v) => {
                *self.view.borrow_mut() = v;
                true
            }
            None => false,
        }
    }

    /// A reload that not every worker prepared: forget it.
    pub fn abort(&self) {
        self.pending.borrow_mut().take();
    }

    /// The view for a call that starts now (an `Rc` clone: no shared cache line).
    #[inline]
    pub fn view(&self) -> Rc<View> {
        self.view.borrow().clone()
    }

    #[inline]
    pub fn next_id(&self) -> RequestId {
        self.ids.borrow_mut().next_id()
    }

    pub fn take_scratch(&self) -> Box<Scratch> {
        self.free.borrow_mut().pop().unwrap_or_default()
    }

    pub fn put_scratch(&self, mut s: Box<Scratch>) {
        for b in [&mut s.rbuf, &mut s.ubuf, &mut s.out, &mut s.body] {
            b.clear();
            if b.capacity() > MAX_KEPT_BUF {
                b.shrink_to(MAX_KEPT_BUF);
            }
        }
        s.marks.clear();
        s.mcp_refused = None;
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_FREE_SCRATCH {
            free.push(s);
        }
    }
}
