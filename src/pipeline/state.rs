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
use crate::observe::metrics::{BodyGauge, WorkerMetrics};
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
    /// `body`'s reservation against the worker's `max_body_memory` (released when dropped:
    /// when the body is sent, or the scratch set goes back to the pool).
    pub body_lease: Option<BodyLease>,
    /// Inside an intercepted tunnel: its origin and the CONNECT's credential (per connection).
    pub tunnel: Option<Rc<super::connect::Tunnel>>,
    /// A CONNECT the call accepted: what the connection becomes next (taken by the worker's
    /// connection loop).
    pub upgrade: Option<super::connect::Upgrade>,
}

/// The request-body bytes one worker holds in flight, bounded by `[limits] max_body_memory`.
/// A body reserves its length before it is read (a chunked body as its chunks arrive) through
/// a `BodyLease`, whose drop gives it back; so no exit of a call (refusal, upstream error,
/// agent gone, a held approval ending) can leak a reservation. Per worker, single-threaded:
/// a `Cell`, no atomics.
pub struct BodyBudget {
    reserved: Cell<u64>,
    gauge: BodyGauge,
}

impl BodyBudget {
    pub fn new(gauge: BodyGauge) -> Self {
        BodyBudget {
            reserved: Cell::new(0),
            gauge,
        }
    }

    /// Bytes reserved by the bodies in flight.
    pub fn reserved(&self) -> u64 {
        self.reserved.get()
    }

    fn set(&self, v: u64) {
        self.reserved.set(v);
        self.gauge.set_reserved(v);
    }
}

/// One body's reservation (starts at zero bytes).
pub struct BodyLease {
    budget: Rc<BodyBudget>,
    bytes: u64,
    limit: u64,
}

impl BodyLease {
    pub fn new(budget: &Rc<BodyBudget>, limit: u64) -> Self {
        BodyLease {
            budget: budget.clone(),
            bytes: 0,
            limit,
        }
    }
}

impl crate::http::body::Reserve for BodyLease {
    /// Grows the reservation to `total` bytes; `false` (and counted) when the worker's bodies
    /// would then hold more than `max_body_memory`.
    fn grow_to(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        let now = self.budget.reserved();
        if now.saturating_add(more) > self.limit {
            self.budget.gauge.refused();
            return false;
        }
        self.budget.set(now + more);
        self.bytes = total;
        true
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        let b = &self.budget;
        b.set(b.reserved().saturating_sub(self.bytes));
    }
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
    /// A view prepared by phase one of a reload, installed by phase two (with the state
    /// store the reload started, if it started one).
    pending: RefCell<Option<(Rc<View>, Option<crate::state::Store>)>>,
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
    /// The state store's handle (approvals), if `[state]`/`[approvals]` is configured: set at
    /// start, or by the reload that adds `[approvals]` (set once: the store runs until exit).
    state: std::cell::OnceCell<crate::state::Store>,
    /// This worker's copy of the managed agents (refreshed when the store's generation moves).
    managed: RefCell<Option<Rc<crate::state::agents::Local>>>,
    /// Request-body bytes in flight on this worker (`max_body_memory`).
    pub bodies: Rc<BodyBudget>,
    /// This worker's tracer, if `[telemetry] otlp` is configured (set at start).
    pub tracer: Option<crate::observe::trace::Tracer>,
    /// Leaf certificates minted for intercepted CONNECT hosts (`[forward] ca`).
    pub leaves: crate::net::mint::LeafCache,
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
            bodies: Rc::new(BodyBudget::new(metrics.body_gauge())),
            metrics,
            state: std::cell::OnceCell::new(),
            managed: RefCell::new(None),
            tracer: None,
            leaves: Default::default(),
        }
    }

    /// The worker with its tracer (`[telemetry] otlp`).
    pub fn with_tracer(mut self, tracer: Option<crate::observe::trace::Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The worker with the state store's handle (held calls talk to it).
    pub fn with_state(self, state: Option<crate::state::Store>) -> Self {
        if let Some(st) = state {
            let _ = self.state.set(st);
        }
        self
    }

    /// The managed agents as this worker knows them now (`None`: no state store). The
    /// per-call cost is one atomic load of the store's generation; the copy is renewed only
    /// when it moved.
    pub fn managed(&self) -> Option<Rc<crate::state::agents::Local>> {
        let shared = &self.state.get()?.agents;
        let g = shared.generation();
        let mut m = self.managed.borrow_mut();
        match &*m {
            Some(l) if l.generation == g => Some(l.clone()),
            _ => {
                let l = Rc::new(crate::state::agents::Local::copy(shared));
                *m = Some(l.clone());
                Some(l)
            }
        }
    }

    /// The state store's handle, if one runs.
    pub fn state(&self) -> Option<&crate::state::Store> {
        self.state.get()
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
    pub fn prepare(&self, cfg: Arc<Compiled>, store: Option<crate::state::Store>) {
        let view = Rc::new(Self::build_view(&self.metrics, cfg));
        *self.pending.borrow_mut() = Some((view, store));
    }

    /// Reload, phase two: calls that start from now on use the prepared view. `false` if
    /// nothing was prepared.
    pub fn commit(&self) -> bool {
        match self.pending.borrow_mut().take() {
            Some((v, store)) => {
                if let Some(st) = store {
                    // a store started by this reload; one already running stays
                    let _ = self.state.set(st);
                }
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
        s.body_lease = None;
        s.tunnel = None;
        s.upgrade = None;
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_FREE_SCRATCH {
            free.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::Reserve;

    #[test]
    fn body_leases_reserve_within_the_budget_and_give_back_on_drop() {
        let budget = Rc::new(BodyBudget::new(WorkerMetrics::detached(0).body_gauge()));
        let mut a = BodyLease::new(&budget, 100);
        assert!(a.grow_to(60));
        assert!(a.grow_to(40), "shrinking asks for nothing");
        assert_eq!(budget.reserved(), 60);
        let mut b = BodyLease::new(&budget, 100);
        assert!(b.grow_to(40));
        assert!(!b.grow_to(41), "61 + 40 > 100");
        assert_eq!(budget.reserved(), 100);
        drop(a);
        assert_eq!(budget.reserved(), 40);
        assert!(b.grow_to(100), "a chunked body grows as its chunks arrive");
        let mut s = Scratch {
            body_lease: Some(b),
            ..Scratch::default()
        };
        assert_eq!(budget.reserved(), 100);
        s.body_lease = None;
        assert_eq!(budget.reserved(), 0);
    }
}
