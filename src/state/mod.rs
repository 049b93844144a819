//! The durable state store: approvals now (issue 14), managed agents and revocations (issue 16)
//! and pinned MCP tool definitions (issue 15) later, in one schema (`schema.rs`) over two
//! backends behind one trait ([`Backend`]): embedded (`embedded.rs`, redb, one crash-safe file
//! under `[state] dir`) and Redis (`redis.rs`, `[state] redis`, shared by every replica).
//!
//! ```text
//!  worker (data plane) ── Cmd + reply channel ──► store thread ── Backend (redb | Redis)
//!        ▲  awaits the reply / its approval's waker     │  pushes approval audit records
//!  admin thread ─────────── Cmd (decide, list) ────────┘  wakes the held calls it decided
//! ```
//!
//! The data plane never touches the store: a worker sends a [`Cmd`] over a `flume` channel
//! and awaits the answer (`recv_async`, no thread blocked). A held call then awaits its
//! approval's waker (a one-slot channel registered with the store thread), so a held call
//! costs its connection and one small channel, nothing else; the store thread keeps the
//! waiters of each approval and wakes them when it is decided. With Redis the store thread
//! also re-reads every waited-on approval each 500 ms, so a decision made through another
//! gateway releases the call here within a second.
//!
//! The store thread is the only writer, so each command is one atomic read-modify-write on
//! the embedded store (with Redis, decisions and claims are compare-and-set under `WATCH`).
// Control plane: the store thread (blocking I/O, its own loop). The worker-side entry points
// (`Store::hold`, `Store::claim`) only send and await.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod agents;
pub mod embedded;
pub mod notify;
pub mod pins;
pub mod redis;
pub mod schema;
pub mod stats;

pub use schema::{Approval, Binding, ManagedAgent, Status};

use crate::observe::audit::record::ApprovalNote;
use crate::observe::audit::{AuditRecord, AuditRing, SmallStr};
use crate::util::clock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A store failure (I/O, corrupt record, Redis down), as text for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the state lives (`[state] dir` | `[state] redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    Redis { url: String, key_prefix: String },
}

/// `[approvals]` compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    /// Pending approvals beyond which a new one is refused (503 `approval_queue_full`).
    pub max_pending: usize,
    /// Decided (and expired) approvals are removed this long after their decision.
    pub retention: Duration,
    /// `console_url`: the link in notifications is `console_url/approvals/ID`.
    pub console_url: Option<String>,
    pub notify: Option<Notify>,
}

/// `[state]` without `[approvals]`: the store still runs (managed agents, tool pins) with the
/// approval defaults `[approvals]` would compile to.
impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            max_pending: 1000,
            retention: Duration::from_secs(30 * 86_400),
            console_url: None,
            notify: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub url: String,
    pub slack: bool,
}

/// The per-rule hold and time-to-live (`hold`, `ttl` on `approve` rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub hold: Duration,
    pub ttl: Duration,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            hold: Duration::from_secs(120),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a backend does; both backends implement it, the store thread is its only caller.
pub trait Backend: Send {
    fn get(&mut self, id: &str) -> Result<Option<Approval>, StoreError>;
    fn body(&mut self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The approval a binding points at.
    fn bound(&mut self, b: &Binding) -> Result<Option<String>, StoreError>;
    /// Writes `a` (and its body, and the binding changes) in one transaction, only if the
    /// stored record is still `prev` (`None`: a new record). `Ok(false)`: it changed meanwhile
    /// (another replica wrote it); nothing was written.
    fn put(
        &mut self,
        a: &Approval,
        prev: Option<&Approval>,
        body: Option<&[u8]>,
        bind: Option<&Binding>,
        unbind: Option<&Binding>,
    ) -> Result<bool, StoreError>;
    /// Removes an approval and its body (retention), and its binding if it still points here.
    fn remove(&mut self, a: &Approval, binding: Option<&Binding>) -> Result<(), StoreError>;
    /// Visits every approval.
    fn scan(&mut self, visit: &mut dyn FnMut(Approval)) -> Result<(), StoreError>;
    /// Records `step` as `admin`'s last TOTP step; `Ok(false)` if it is not newer (a replay).
    fn set_totp_step(&mut self, admin: &str, step: u64) -> Result<bool, StoreError>;
    /// Every managed agent (issue 16).
    fn agents(&mut self) -> Result<Vec<ManagedAgent>, StoreError>;
    /// Writes a managed agent; with `create`, only if no agent has its id (`Ok(false)`: one has).
    /// Bumps the shared agents generation (Redis), so every replica republishes.
    fn put_agent(&mut self, a: &ManagedAgent, create: bool) -> Result<bool, StoreError>;
    /// The shared agents generation (Redis: moved by any replica's write; embedded: 0, this
    /// process is the only writer).
    fn agents_generation(&mut self) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// "Last seen" (unix seconds) by agent id.
    fn agents_seen(&mut self) -> Result<HashMap<String, u64>, StoreError>;
    /// Raises the stored "last seen" of each agent to at least the given time.
    fn put_agents_seen(&mut self, seen: &[(String, u64)]) -> Result<(), StoreError>;
    /// Group commit: the writes until [`Backend::end_batch`] may be made durable together.
    /// Every stored tool pin (issue 15).
    fn pins(&mut self) -> Result<Vec<schema::ToolPin>, StoreError>;
    /// Writes a tool pin (Redis: and moves the shared pins generation).
    fn put_pin(&mut self, p: &schema::ToolPin) -> Result<(), StoreError>;
    /// The shared pins generation (Redis; embedded: 0).
    fn pins_generation(&mut self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn begin_batch(&mut self) {}
    /// Makes every write since [`Backend::begin_batch`] durable (one fsync for the batch).
    fn end_batch(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A call to hold, as the pipeline gives it.
pub struct HoldRequest {
    pub binding: Binding,
    pub agent: Option<String>,
    pub proxy: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub body_sha256: String,
    pub rule: Option<u32>,
    pub ttl: Duration,
    /// The call's request id (recorded as `executed_by` if it executes an approval).
    pub request_id: String,
}

/// How a decided approval ends a held call's wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Denied(Option<String>),
    Expired,
}

/// The store's answer to [`Cmd::Hold`].
pub enum HoldAnswer {
    /// An approved, unused approval matched: it is now claimed; send the call.
    Execute(String),
    /// Pending (new or matched): wait on the receiver for the decision.
    Pending(String, flume::Receiver<Outcome>),
    Denied(String, Option<String>),
    Expired(String),
    QueueFull,
    Unavailable,
}

/// The store's answer to [`Cmd::Claim`].
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This call executes the approval (single use).
    Granted,
    /// Someone else executed it first, or it was decided otherwise meanwhile.
    Lost(Outcome),
    Unavailable,
}

/// Why a decision was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideError {
    NotFound,
    /// Not pending any more (its current status).
    NotPending(Status),
    /// This TOTP time step was already used by this admin.
    TotpReplayed,
    Unavailable(String),
}

/// An approval and its body as held.
pub type Held = (Approval, Vec<u8>);

/// Why a managed-agent change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// `create`: the id is taken.
    Exists,
    NotFound,
    /// `rotate`: the agent is revoked.
    Revoked,
    Unavailable(String),
}

/// A managed agent as listed: its record and when it was last seen (unix seconds).
pub type AgentListing = (ManagedAgent, Option<u64>);

/// What the workers and the admin API ask of the store.
pub enum Cmd {
    /// A tool pin as the pin table now holds it (`state::pins`, write-through).
    PinPut(schema::ToolPin),
    /// A new managed agent (its key hash in the record).
    AgentCreate {
        agent: ManagedAgent,
        reply: flume::Sender<Result<ManagedAgent, AgentError>>,
    },
    AgentList {
        reply: flume::Sender<Result<Vec<AgentListing>, StoreError>>,
    },
    /// A new key (SHA-256 hex); the old one works until `grace_until_us`.
    AgentRotate {
        id: String,
        key_sha256: String,
        grace_until_us: u64,
        reply: flume::Sender<Result<ManagedAgent, AgentError>>,
    },
    /// Revokes every key of the agent (again: the first revocation's record).
    AgentRevoke {
        id: String,
        reply: flume::Sender<Result<ManagedAgent, AgentError>>,
    },
    Hold(Box<HoldRequest>, flume::Sender<HoldAnswer>),
    Claim {
        id: String,
        request_id: String,
        reply: flume::Sender<Claim>,
    },
    List {
        status: Option<Status>,
        limit: usize,
        reply: flume::Sender<Result<Vec<Approval>, StoreError>>,
    },
    Get {
        id: String,
        reply: flume::Sender<Result<Option<Held>, StoreError>>,
    },
    Decide {
        id: String,
        approve: bool,
        approver: String,
        reason: Option<String>,
        /// The TOTP time step the approver's code matched (refused if already used).
        totp_step: Option<u64>,
        reply: flume::Sender<Result<Approval, DecideError>>,
    },
}

/// The handle workers and the admin thread hold (a channel sender: cloning is cheap).
#[derive(Clone)]
pub struct Store {
    tx: flume::Sender<Cmd>,
    /// Approval metrics (written by the store thread).
    pub stats: Arc<stats::ApprovalStats>,
    /// The managed agents as published to the workers.
    pub agents: Arc<agents::Shared>,
}

/// Commands queued for the store thread beyond which a hold is refused (never waits).
const QUEUE: usize = 4096;
/// How often the store thread reads the shared agents generation (Redis).
const AGENTS_POLL: Duration = Duration::from_millis(200);
/// How often the "last seen" times are written to the store (one batch).
const SEEN_WRITE: Duration = Duration::from_secs(2);
/// Commands handled in one group commit at most: 64 holds share one fsync, and the batch's one
/// transaction holds at most that many records' dirty pages in memory (256 cost ~2 KB more per
/// held call when 1,000 arrive at once, perf.md).
const BATCH: usize = 64;

impl Store {
    /// Opens the backend and starts the store thread.
    pub fn start(
        location: &Location,
        cfg: ApprovalsConfig,
        audit: Option<Arc<AuditRing>>,
    ) -> Result<Store, StoreError> {
        let (backend, poll): (Box<dyn Backend>, bool) = match location {
            Location::Dir(d) => (Box::new(embedded::Embedded::open(d)?), false),
            Location::Redis { url, key_prefix } => {
                (Box::new(redis::RedisBackend::open(url, key_prefix)?), true)
            }
        };
        let notifier = match &cfg.notify {
            Some(n) => Some(
                notify::Notifier::start(n, cfg.console_url.clone())
                    .map_err(|e| StoreError(format!("approvals.notify: {e}")))?,
            ),
            None => None,
        };
        let (tx, rx) = flume::bounded(QUEUE);
        let stats = Arc::new(stats::ApprovalStats::default());
        let shared = Arc::new(agents::Shared::default());
        let mut eng = Engine {
            agents: shared.clone(),
            agent_list: Vec::new(),
            agents_gen: 0,
            pins_gen: 0,
            seen_written: HashMap::new(),
            outbox: Vec::new(),
            stats: stats.clone(),
            notifier,
            backend,
            cfg,
            audit,
            waiters: HashMap::new(),
            pending: 0,
            poll,
        };
        let n = eng.count_pending();
        eng.set_pending(n);
        eng.agents_gen = eng.backend.agents_generation()?;
        eng.agent_list = eng.backend.agents()?;
        eng.agents.publish(&eng.agent_list);
        eng.pins_gen = eng.backend.pins_generation()?;
        pins::registry().load(eng.backend.pins()?);
        std::thread::Builder::new()
            .name("portcullis-state".into())
            .spawn(move || eng.run(rx))
            .map_err(|e| StoreError(format!("cannot start the store thread: {e}")))?;
        pins::registry().attach(tx.clone());
        Ok(Store {
            tx,
            stats,
            agents: shared,
        })
    }

    /// Data plane: asks the store about a call to hold (never blocks the worker).
    pub async fn hold(&self, req: HoldRequest) -> HoldAnswer {
        let (tx, rx) = flume::bounded(1);
        if self.tx.try_send(Cmd::Hold(Box::new(req), tx)).is_err() {
            return HoldAnswer::QueueFull;
        }
        rx.recv_async().await.unwrap_or(HoldAnswer::Unavailable)
    }

    /// Data plane: claims an approved approval for this call (single use).
    pub async fn claim(&self, id: String, request_id: String) -> Claim {
        let (reply, rx) = flume::bounded(1);
        if self
            .tx
            .try_send(Cmd::Claim {
                id,
                request_id,
                reply,
            })
            .is_err()
        {
            return Claim::Unavailable;
        }
        rx.recv_async().await.unwrap_or(Claim::Unavailable)
    }

    /// Control plane: sends a command (the caller awaits its reply channel).
    pub fn send(&self, cmd: Cmd) -> bool {
        self.tx.try_send(cmd).is_ok()
    }
}

/// The store thread's state.
struct Engine {
    /// Managed agents: the publication point, the records as last read, the shared
    /// generation they were read at (Redis), and the "last seen" times written so far.
    agents: Arc<agents::Shared>,
    agent_list: Vec<ManagedAgent>,
    agents_gen: u64,
    /// The shared pins generation the tool pins were last read at (Redis).
    pins_gen: u64,
    seen_written: HashMap<String, u64>,
    /// Answers and wake-ups waiting for the batch's commit.
    outbox: Vec<Box<dyn FnOnce() + Send>>,
    stats: Arc<stats::ApprovalStats>,
    notifier: Option<notify::Notifier>,
    backend: Box<dyn Backend>,
    cfg: ApprovalsConfig,
    audit: Option<Arc<AuditRing>>,
    /// Held calls waiting per approval id.
    waiters: HashMap<String, Vec<flume::Sender<Outcome>>>,
    /// Pending approvals (for `max_pending`).
    pending: usize,
    /// Re-read waited-on approvals (Redis: decisions made on another gateway).
    poll: bool,
}

fn now_us() -> u64 {
    u64::try_from(clock::unix_now().as_micros()).unwrap_or(u64::MAX)
}

/// A fresh approval id: `apr_` and 24 random hex digits.
fn new_id() -> String {
    let mut b = [0u8; 12];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // never expected; ids must still differ
        let n = now_us().to_le_bytes();
        b[..8].copy_from_slice(&n);
    }
    format!("apr_{}", crate::util::hex::encode(&b))
}

/// The binding of a call (see [`Binding`]).
pub fn binding(
    agent: Option<&str>,
    proxy: &str,
    method: &[u8],
    path: &str,
    query: &[u8],
    body_sha256: &[u8; 32],
) -> Binding {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let agent = agent.unwrap_or("");
    for part in [
        agent.as_bytes(),
        proxy.as_bytes(),
        method,
        path.as_bytes(),
        query,
        &body_sha256[..],
    ] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn binding_of(a: &Approval) -> Option<Binding> {
    crate::util::hex::decode32(a.binding.as_bytes())
}

impl Engine {
    fn run(mut self, rx: flume::Receiver<Cmd>) {
        let tick = Duration::from_millis(if self.poll { 500 } else { 1000 });
        // Redis: another replica's agent change is seen within this
        let wait = if self.poll { AGENTS_POLL } else { tick };
        let mut last_sweep = clock::now();
        let mut last_retention = clock::now();
        let mut last_seen = clock::now();
        let mut last_poll = clock::now();
        loop {
            let first = match rx.recv_timeout(wait) {
                Ok(cmd) => Some(cmd),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => return,
            };
            // group commit: what queued up meanwhile is handled in the same batch, and every
            // answer and wake-up leaves only once the batch is durable
            self.backend.begin_batch();
            if let Some(cmd) = first {
                self.handle(cmd);
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(cmd) => self.handle(cmd),
                        Err(_) => break,
                    }
                }
            }
            if last_sweep.elapsed() >= tick {
                last_sweep = clock::now();
                self.sweep_waiters();
            }
            if last_retention.elapsed() >= Duration::from_secs(30) {
                last_retention = clock::now();
                self.sweep_store();
            }
            if self.poll && last_poll.elapsed() >= AGENTS_POLL {
                last_poll = clock::now();
                self.poll_agents();
                self.poll_pins();
            }
            if last_seen.elapsed() >= SEEN_WRITE {
                last_seen = clock::now();
                self.write_seen();
            }
            if let Err(e) = self.backend.end_batch() {
                tracing::error!(error = %e, "state: cannot make the store's writes durable");
            }
            for send in self.outbox.drain(..) {
                send();
            }
        }
    }

    /// Queues an answer (or a wake-up) until the batch is durable.
    fn defer(&mut self, f: impl FnOnce() + Send + 'static) {
        self.outbox.push(Box::new(f));
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            // (our own write moves the shared generation too: the next poll re-reads the pins
            // once, so that another replica's write in between is never skipped)
            Cmd::PinPut(p) => {
                if let Err(e) = self.backend.put_pin(&p) {
                    tracing::error!(error = %e, proxy = %p.proxy, tool = %p.tool,
                        "state: cannot store a tool pin (kept in memory)");
                }
            }
            Cmd::AgentCreate { agent, reply } => {
                let r = self.agent_create(agent);
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            Cmd::AgentList { reply } => {
                let r = self.agent_listing();
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            Cmd::AgentRotate {
                id,
                key_sha256,
                grace_until_us,
                reply,
            } => {
                let r = self.agent_change(&id, |a| {
                    if a.revoked_us.is_some() {
                        return Err(AgentError::Revoked);
                    }
                    let now = now_us();
                    let old = std::mem::replace(&mut a.key_sha256, key_sha256);
                    if grace_until_us > now {
                        a.prev_key_sha256 = Some(old);
                        a.prev_until_us = Some(grace_until_us);
                    } else {
                        a.prev_key_sha256 = None;
                        a.prev_until_us = None;
                    }
                    Ok(true)
                });
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            Cmd::AgentRevoke { id, reply } => {
                let r = self.agent_change(&id, |a| {
                    if a.revoked_us.is_some() {
                        return Ok(false);
                    }
                    a.revoked_us = Some(now_us());
                    a.prev_key_sha256 = None;
                    a.prev_until_us = None;
                    Ok(true)
                });
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            Cmd::Hold(req, reply) => {
                let ans = self.hold(*req);
                self.defer(move || {
                    let _ = reply.send(ans);
                });
            }
            Cmd::Claim {
                id,
                request_id,
                reply,
            } => {
                let ans = self.claim(&id, &request_id);
                self.defer(move || {
                    let _ = reply.send(ans);
                });
            }
            Cmd::List {
                status,
                limit,
                reply,
            } => {
                let ans = self.list(status, limit);
                self.defer(move || {
                    let _ = reply.send(ans);
                });
            }
            Cmd::Get { id, reply } => {
                let r = self.get(&id).and_then(|a| match a {
                    None => Ok(None),
                    Some(a) => {
                        let body = self.backend.body(&a.id)?.unwrap_or_default();
                        Ok(Some((a, body)))
                    }
                });
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            Cmd::Decide {
                id,
                approve,
                approver,
                reason,
                totp_step,
                reply,
            } => {
                let r = self.decide(&id, approve, &approver, reason, totp_step);
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
        }
    }

    /// Re-reads the agents from the backend and publishes them to the workers.
    fn reload_agents(&mut self) -> Result<(), StoreError> {
        self.agent_list = self.backend.agents()?;
        self.agents.publish(&self.agent_list);
        Ok(())
    }

    /// Redis: republishes when another replica (or this one) moved the shared generation.
    fn poll_agents(&mut self) {
        match self.backend.agents_generation() {
            Ok(g) if g != self.agents_gen => match self.reload_agents() {
                Ok(()) => self.agents_gen = g,
                Err(e) => tracing::warn!(error = %e, "state: cannot read the managed agents"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "state: cannot read the agents generation"),
        }
    }

    /// Redis: re-reads the tool pins when another replica moved the shared generation.
    fn poll_pins(&mut self) {
        match self.backend.pins_generation() {
            Ok(g) if g != self.pins_gen => match self.backend.pins() {
                Ok(list) => {
                    pins::registry().load(list);
                    self.pins_gen = g;
                }
                Err(e) => tracing::warn!(error = %e, "state: cannot read the tool pins"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "state: cannot read the pins generation"),
        }
    }

    fn agent_create(&mut self, agent: ManagedAgent) -> Result<ManagedAgent, AgentError> {
        let un = |e: StoreError| AgentError::Unavailable(e.0);
        if !self.backend.put_agent(&agent, true).map_err(un)? {
            return Err(AgentError::Exists);
        }
        // the batch commits before the answer leaves; publish now so the key works at once
        self.reload_agents().map_err(un)?;
        tracing::info!(agent = %agent.id, "managed agent created");
        Ok(agent)
    }

    /// Reads the agent `id` fresh, applies `f` (`Ok(false)`: nothing to write) and publishes.
    fn agent_change(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut ManagedAgent) -> Result<bool, AgentError>,
    ) -> Result<ManagedAgent, AgentError> {
        let un = |e: StoreError| AgentError::Unavailable(e.0);
        let all = self.backend.agents().map_err(un)?;
        let Some(mut a) = all.into_iter().find(|a| a.id == id) else {
            return Err(AgentError::NotFound);
        };
        if f(&mut a)? {
            self.backend.put_agent(&a, false).map_err(un)?;
            self.reload_agents().map_err(un)?;
        }
        Ok(a)
    }

    fn agent_listing(&mut self) -> Result<Vec<AgentListing>, StoreError> {
        let mut seen = self.backend.agents_seen()?;
        for (id, s) in self.agents.seen() {
            let e = seen.entry(id).or_insert(0);
            *e = (*e).max(s);
        }
        let mut list: Vec<AgentListing> = self
            .backend
            .agents()?
            .into_iter()
            .map(|a| {
                let s = seen.get(&a.id).copied().filter(|s| *s > 0);
                (a, s)
            })
            .collect();
        list.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(list)
    }

    /// Writes the "last seen" times that moved since the last write (one batch).
    fn write_seen(&mut self) {
        let moved: Vec<(String, u64)> = self
            .agents
            .seen()
            .into_iter()
            .filter(|(id, s)| self.seen_written.get(id).is_none_or(|w| w < s))
            .collect();
        if moved.is_empty() {
            return;
        }
        match self.backend.put_agents_seen(&moved) {
            Ok(()) => self.seen_written.extend(moved),
            Err(e) => tracing::warn!(error = %e, "state: cannot record when agents were last seen"),
        }
    }

    /// The approval `id`, expired first if its time is up.
    fn get(&mut self, id: &str) -> Result<Option<Approval>, StoreError> {
        let Some(mut a) = self.backend.get(id)? else {
            return Ok(None);
        };
        self.expire_if_due(&mut a, now_us())?;
        Ok(Some(a))
    }

    /// Marks `a` expired (pending, or approved and not executed, past `expires_us`).
    fn expire_if_due(&mut self, a: &mut Approval, now: u64) -> Result<bool, StoreError> {
        let live = a.status == Status::Pending
            || (a.status == Status::Approved && a.executed_us.is_none());
        if !live || now < a.expires_us {
            return Ok(false);
        }
        let was_pending = a.status == Status::Pending;
        let prev = a.clone();
        a.status = Status::Expired;
        a.decided_us = Some(now);
        if !self.backend.put(a, Some(&prev), None, None, None)? {
            // decided through another replica meanwhile: take what is stored
            if let Some(cur) = self.backend.get(&a.id)? {
                *a = cur;
            }
            return Ok(false);
        }
        if was_pending {
            self.set_pending(self.pending.saturating_sub(1));
        }
        self.audit_event(a, "expired");
        self.stats
            .decided("expired", now.saturating_sub(a.created_us));
        self.wake(&a.id, Outcome::Expired);
        Ok(true)
    }

    fn hold(&mut self, req: HoldRequest) -> HoldAnswer {
        match self.try_hold(req) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "state: cannot hold a call for approval");
                HoldAnswer::Unavailable
            }
        }
    }

    fn try_hold(&mut self, req: HoldRequest) -> Result<HoldAnswer, StoreError> {
        // a write that loses a race with another replica reads again (bounded)
        for _ in 0..3 {
            if let Some(ans) = self.match_bound(&req)? {
                return Ok(ans);
            }
            if let Some(ans) = self.create(&req)? {
                return Ok(ans);
            }
        }
        Ok(HoldAnswer::Unavailable)
    }

    /// The answer from the approval the call's binding points at, if that decides it.
    /// `Ok(None)`: no live approval (create one), or a lost race (read again).
    fn match_bound(&mut self, req: &HoldRequest) -> Result<Option<HoldAnswer>, StoreError> {
        let now = now_us();
        if let Some(id) = self.backend.bound(&req.binding)?
            && let Some(mut a) = self.backend.get(&id)?
        {
            self.expire_if_due(&mut a, now)?;
            let prev = a.clone();
            return Ok(match a.status {
                Status::Pending => {
                    let (tx, rx) = flume::bounded(1);
                    self.waiters.entry(a.id.clone()).or_default().push(tx);
                    Some(HoldAnswer::Pending(a.id, rx))
                }
                Status::Approved if a.executed_us.is_none() => {
                    // single use: claimed now, and the binding is released for the next call
                    a.executed_us = Some(now);
                    a.executed_by = Some(req.request_id.clone());
                    if !self
                        .backend
                        .put(&a, Some(&prev), None, None, Some(&req.binding))?
                    {
                        return Ok(None);
                    }
                    Some(HoldAnswer::Execute(a.id))
                }
                // a denial answers the identical call until the approval's ttl, then it may ask anew
                Status::Denied if now >= a.expires_us => {
                    self.backend
                        .put(&a, Some(&prev), None, None, Some(&req.binding))?;
                    None
                }
                Status::Denied => Some(HoldAnswer::Denied(a.id, a.reason)),
                Status::Expired => {
                    // answered once; the next identical call asks anew
                    self.backend
                        .put(&a, Some(&prev), None, None, Some(&req.binding))?;
                    Some(HoldAnswer::Expired(a.id))
                }
                // executed: a new approval
                Status::Approved => None,
            });
        }
        Ok(None)
    }

    /// A new pending approval for the call (`Ok(None)`: another replica bound one first).
    fn create(&mut self, req: &HoldRequest) -> Result<Option<HoldAnswer>, StoreError> {
        let now = now_us();
        if self.pending >= self.cfg.max_pending {
            tracing::warn!(
                pending = self.pending,
                max_pending = self.cfg.max_pending,
                "approvals: the pending queue is full; refusing a new approval"
            );
            return Ok(Some(HoldAnswer::QueueFull));
        }
        let ttl_us = u64::try_from(req.ttl.as_micros()).unwrap_or(u64::MAX);
        let a = Approval {
            id: new_id(),
            status: Status::Pending,
            agent: req.agent.clone(),
            proxy: req.proxy.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            headers: req.headers.clone(),
            body_sha256: req.body_sha256.clone(),
            body_len: req.body.len() as u64,
            rule: req.rule,
            binding: crate::util::hex::encode(&req.binding),
            created_us: now,
            expires_us: now.saturating_add(ttl_us),
            decided_us: None,
            approver: None,
            reason: None,
            executed_us: None,
            executed_by: None,
        };
        if !self
            .backend
            .put(&a, None, Some(&req.body), Some(&req.binding), None)?
        {
            return Ok(None);
        }
        self.set_pending(self.pending + 1);
        tracing::info!(approval = %a.id, proxy = %a.proxy, agent = a.agent.as_deref().unwrap_or("-"),
            method = %a.method, path = %a.path, "approval requested");
        self.audit_event(&a, "requested");
        if let Some(n) = &self.notifier {
            n.pending(&a);
        }
        let (tx, rx) = flume::bounded(1);
        self.waiters.entry(a.id.clone()).or_default().push(tx);
        Ok(Some(HoldAnswer::Pending(a.id, rx)))
    }

    fn claim(&mut self, id: &str, request_id: &str) -> Claim {
        let r = (|| -> Result<Claim, StoreError> {
            let Some(mut a) = self.get(id)? else {
                return Ok(Claim::Lost(Outcome::Expired));
            };
            match a.status {
                Status::Approved if a.executed_us.is_none() => {
                    let prev = a.clone();
                    a.executed_us = Some(now_us());
                    a.executed_by = Some(request_id.to_string());
                    let b = binding_of(&a);
                    if self.backend.put(&a, Some(&prev), None, None, b.as_ref())? {
                        Ok(Claim::Granted)
                    } else {
                        Ok(Claim::Lost(Outcome::Expired))
                    }
                }
                Status::Denied => Ok(Claim::Lost(Outcome::Denied(a.reason))),
                // executed by another call, or expired
                _ => Ok(Claim::Lost(Outcome::Expired)),
            }
        })();
        r.unwrap_or_else(|e| {
            tracing::error!(error = %e, "state: cannot claim an approval");
            Claim::Unavailable
        })
    }

    fn list(&mut self, status: Option<Status>, limit: usize) -> Result<Vec<Approval>, StoreError> {
        let now = now_us();
        let mut all = Vec::new();
        self.backend.scan(&mut |a| all.push(a))?;
        let mut out = Vec::new();
        for mut a in all {
            self.expire_if_due(&mut a, now)?;
            if status.is_none_or(|s| s == a.status) {
                out.push(a);
            }
        }
        // newest first
        out.sort_by_key(|a| std::cmp::Reverse(a.created_us));
        out.truncate(limit);
        Ok(out)
    }

    fn decide(
        &mut self,
        id: &str,
        approve: bool,
        approver: &str,
        reason: Option<String>,
        totp_step: Option<u64>,
    ) -> Result<Approval, DecideError> {
        let un = |e: StoreError| DecideError::Unavailable(e.0);
        let Some(mut a) = self.get(id).map_err(un)? else {
            return Err(DecideError::NotFound);
        };
        if a.status != Status::Pending {
            return Err(DecideError::NotPending(a.status));
        }
        if let Some(step) = totp_step
            && !self.backend.set_totp_step(approver, step).map_err(un)?
        {
            return Err(DecideError::TotpReplayed);
        }
        let prev = a.clone();
        a.status = if approve {
            Status::Approved
        } else {
            Status::Denied
        };
        a.decided_us = Some(now_us());
        a.approver = Some(approver.to_string());
        a.reason = reason;
        if !self
            .backend
            .put(&a, Some(&prev), None, None, None)
            .map_err(un)?
        {
            let now = self.backend.get(id).map_err(un)?.map(|c| c.status);
            return Err(DecideError::NotPending(now.unwrap_or(Status::Expired)));
        }
        self.set_pending(self.pending.saturating_sub(1));
        tracing::info!(approval = %a.id, approver, decision = a.status.as_str(), "approval decided");
        // the decision's record goes into the audit ring before any held call is released
        self.audit_event(&a, a.status.as_str());
        let waited = a.decided_us.unwrap_or(0).saturating_sub(a.created_us);
        self.stats.decided(a.status.as_str(), waited);
        let outcome = if approve {
            Outcome::Approved
        } else {
            Outcome::Denied(a.reason.clone())
        };
        self.wake(&a.id, outcome);
        Ok(a)
    }

    fn set_pending(&mut self, n: usize) {
        self.pending = n;
        self.stats
            .pending
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn wake(&mut self, id: &str, outcome: Outcome) {
        if let Some(ws) = self.waiters.remove(id) {
            self.defer(move || {
                for w in ws {
                    let _ = w.try_send(outcome.clone());
                }
            });
        }
    }

    /// Drops waiters whose call has gone; expires waited-on approvals whose time is up; with
    /// Redis, wakes the waiters of approvals decided through another gateway.
    fn sweep_waiters(&mut self) {
        self.waiters.retain(|_, ws| {
            ws.retain(|w| !w.is_disconnected());
            !ws.is_empty()
        });
        let ids: Vec<String> = self.waiters.keys().cloned().collect();
        let now = now_us();
        for id in ids {
            match self.backend.get(&id) {
                Ok(Some(mut a)) => {
                    if let Err(e) = self.expire_if_due(&mut a, now) {
                        tracing::warn!(error = %e, "state: cannot expire an approval");
                        continue;
                    }
                    match a.status {
                        Status::Pending => {}
                        Status::Approved => self.wake(&id, Outcome::Approved),
                        Status::Denied => self.wake(&id, Outcome::Denied(a.reason)),
                        Status::Expired => self.wake(&id, Outcome::Expired),
                    }
                }
                Ok(None) => self.wake(&id, Outcome::Expired),
                Err(e) => tracing::warn!(error = %e, "state: cannot read an approval"),
            }
        }
    }

    /// Expires what is due and removes what is past `retention`; recounts the pending.
    fn sweep_store(&mut self) {
        let now = now_us();
        let mut all = Vec::new();
        if let Err(e) = self.backend.scan(&mut |a| all.push(a)) {
            tracing::warn!(error = %e, "state: cannot scan approvals");
            return;
        }
        let keep_us = u64::try_from(self.cfg.retention.as_micros()).unwrap_or(u64::MAX);
        let mut pending = 0;
        for mut a in all {
            if let Err(e) = self.expire_if_due(&mut a, now) {
                tracing::warn!(error = %e, "state: cannot expire an approval");
            }
            if a.status == Status::Pending {
                pending += 1;
                continue;
            }
            let done = a.decided_us.unwrap_or(a.created_us);
            if now.saturating_sub(done) > keep_us
                && let Err(e) = self.backend.remove(&a, binding_of(&a).as_ref())
            {
                tracing::warn!(error = %e, "state: cannot remove an old approval");
            }
        }
        self.set_pending(pending);
    }

    fn count_pending(&mut self) -> usize {
        let mut n = 0;
        let r = self.backend.scan(&mut |a| {
            if a.status == Status::Pending {
                n += 1;
            }
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "state: cannot count pending approvals");
        }
        n
    }

    /// One audit record for an approval event (requested / approved / denied / expired).
    fn audit_event(&self, a: &Approval, event: &'static str) {
        let Some(ring) = &self.audit else { return };
        let rec = AuditRecord {
            ts_us: now_us(),
            id: SmallStr::new(&a.id),
            agent: a.agent.as_deref().map(Arc::from),
            proxy: Some(Arc::from(a.proxy.as_str())),
            method: SmallStr::new(&a.method),
            path: a.path.clone(),
            rule: a.rule,
            bytes_in: a.body_len,
            approval: Some(Arc::new(ApprovalNote {
                id: a.id.clone(),
                event: Some(event),
                approver: a.approver.clone(),
                reason: a.reason.clone(),
                body_sha256: Some(a.body_sha256.clone()),
            })),
            ..AuditRecord::default()
        };
        if ring.push_record(rec).is_none() {
            tracing::warn!(approval = %a.id, event, "audit: the approval record was dropped (queue full)");
        }
    }
}
