//! Process control: readiness, reload and drain (`start.rs` starts the process and turns
//! SIGHUP/SIGTERM into calls here). Reload is two-phase: compile the new config here (on error
//! the old one stays); phase one has every worker build its view of it (`Msg::Prepare`) and
//! acknowledge; only when all have does phase two (`Msg::Commit`) make them use it, so the
//! workers never run a mix of configs. A worker that does not prepare in time aborts the
//! reload.
// Off the data plane: the reload lock and the current-config slot are touched only by the
// signal thread and the admin thread, never by a worker.
#![allow(clippy::disallowed_types)]
use crate::config::{self, Compiled};
use crate::server::worker::Msg;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    /// The quickstart config compiled into the binary.
    Embedded,
}

impl Source {
    pub fn compile(&self) -> Result<Compiled, config::ConfigErrors> {
        match self {
            Source::File(p) => config::compile_file(p),
            Source::Embedded => {
                let cwd = std::env::current_dir().unwrap_or_default();
                config::compile_str("<embedded quickstart.toml>", config::QUICKSTART, &cwd)
            }
        }
    }
}

pub struct Control {
    source: Source,
    workers: Vec<flume::Sender<Msg>>,
    reload_lock: Mutex<()>,
    generation: AtomicU64,
    ready: AtomicBool,
    current: Mutex<Arc<Compiled>>,
    /// Every worker's metric shard, merged by `/metrics`.
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    /// The audit trail as started (a reload cannot move it), for the admin API.
    pub audit: Option<AuditView>,
    /// The state store as started (approvals), for the admin API; set once, at start or by
    /// the reload that adds `[approvals]`.
    pub state: std::sync::OnceLock<crate::state::Store>,
    /// Where the running store lives and the `[approvals]` it was started with (a reload that
    /// changes them says they need a restart).
    state_cfg: std::sync::OnceLock<(crate::state::Location, crate::state::ApprovalsConfig)>,
    /// The trace exporter's counters (`[telemetry] otlp`).
    pub traces: std::sync::OnceLock<Arc<crate::observe::trace::TraceStats>>,
    /// Reload outcomes, for `/metrics`.
    pub reloads: ReloadStats,
}

/// What `/metrics` says about reloads: counts by outcome, and the last one.
#[derive(Debug)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// The last reload (or the start) succeeded.
    pub last_ok: AtomicBool,
    /// Unix seconds of the last reload attempt (the start before any).
    pub last_at: AtomicU64,
    /// Unix seconds of the last config that was installed (the start, or a reload).
    pub last_ok_at: AtomicU64,
}

impl Default for ReloadStats {
    fn default() -> Self {
        let now = crate::util::clock::unix_now().as_secs();
        ReloadStats {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_ok: AtomicBool::new(true),
            last_at: AtomicU64::new(now),
            last_ok_at: AtomicU64::new(now),
        }
    }
}

/// What the admin API reads of the running audit trail.
pub struct AuditView {
    pub dir: PathBuf,
    stats: Arc<crate::observe::audit::AuditStats>,
    ring: Arc<crate::observe::audit::AuditRing>,
    /// `[[audit.sinks]]` counters.
    pub sinks: Vec<Arc<crate::siem::SinkStats>>,
}

impl AuditView {
    pub fn new(
        dir: PathBuf,
        stats: Arc<crate::observe::audit::AuditStats>,
        ring: Arc<crate::observe::audit::AuditRing>,
    ) -> Self {
        AuditView {
            dir,
            stats,
            ring,
            sinks: Vec::new(),
        }
    }

    /// The `[[audit.sinks]]` counters, for `/metrics`.
    pub fn with_sinks(mut self, sinks: Vec<Arc<crate::siem::SinkStats>>) -> Self {
        self.sinks = sinks;
        self
    }

    pub fn snapshot(&self) -> crate::observe::audit::StatsSnapshot {
        self.stats.snapshot(&self.ring)
    }

    /// The ring (a store started by a reload pushes its approval records into it).
    pub fn ring(&self) -> Arc<crate::observe::audit::AuditRing> {
        self.ring.clone()
    }

    /// Audit writes are failing right now.
    pub fn degraded(&self) -> bool {
        self.ring.failing()
    }

    /// Calls are refused while the trail cannot take records (`on_error = "refuse"`).
    pub fn refusing(&self) -> bool {
        !self.ring.accepting()
    }

    /// The latest published head (JSON), if a checkpoint was written.
    pub fn head(&self) -> Option<String> {
        self.stats.head()
    }
}

#[derive(Debug)]
pub enum ReloadError {
    Config(config::ConfigErrors),
    Incomplete(usize, usize),
    /// `[approvals]` was added and its store could not be started.
    State(String),
}

impl ReloadError {
    /// The error on one line (several config errors joined by `; `), for a log line that a
    /// level filter keeps whole.
    pub fn one_line(&self) -> String {
        self.to_string().lines().collect::<Vec<_>>().join("; ")
    }
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Incomplete(n, of) => {
                write!(f, "only {n} of {of} workers took the new config")
            }
            ReloadError::State(e) => write!(f, "starting the state store: {e}"),
        }
    }
}

/// A committed reload.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    /// What the new config changes that the running process keeps until a restart (each
    /// logged as a warning, and listed in the answer to `POST /v1/reload`).
    pub restart_required: Vec<String>,
}

/// How long a reload waits for each worker's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

impl Control {
    pub fn new(
        source: Source,
        workers: Vec<flume::Sender<Msg>>,
        current: Arc<Compiled>,
        metrics: Arc<crate::observe::metrics::Metrics>,
        audit: Option<AuditView>,
    ) -> Self {
        Control {
            source,
            workers,
            reload_lock: Mutex::new(()),
            generation: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            state: std::sync::OnceLock::new(),
            state_cfg: std::sync::OnceLock::new(),
            traces: std::sync::OnceLock::new(),
            current: Mutex::new(current),
            metrics,
            audit,
            reloads: ReloadStats::default(),
        }
    }

    /// The state store started with the process (`[state]`/`[approvals]` at start).
    pub fn set_state(
        &self,
        store: crate::state::Store,
        location: crate::state::Location,
        cfg: crate::state::ApprovalsConfig,
    ) {
        let _ = self.state.set(store);
        let _ = self.state_cfg.set((location, cfg));
    }

    /// What the new config changes in `[state]`/`[approvals]`: a store to start (the section
    /// was added), or notes for what takes effect on restart only (a running store's location
    /// and settings are fixed; removing the section leaves it running, unused by any rule).
    fn state_change(&self, new: &Compiled) -> (Option<crate::state::Store>, Vec<String>) {
        let mut notes = Vec::new();
        match (self.state_cfg.get(), &new.state, &new.approvals) {
            (None, Some(loc), appr) => {
                let ring = self.audit.as_ref().map(|a| a.ring());
                let appr = appr.clone().unwrap_or_default();
                return match crate::state::Store::start(loc, appr, ring) {
                    Ok(store) => (Some(store), notes),
                    Err(e) => {
                        notes.push(e.to_string());
                        (None, notes)
                    }
                };
            }
            (Some((loc, appr)), new_loc, new_appr) => {
                if new_loc.as_ref() != Some(loc) {
                    notes.push(
                        "[state] dir / redis changed or removed: the running store stays where it is until a restart"
                            .into(),
                    );
                }
                match new_appr {
                    None if *appr != crate::state::ApprovalsConfig::default() => notes.push(
                        "[approvals] removed: the running store keeps its approvals until a restart"
                            .into(),
                    ),
                    None => {}
                    Some(a) if a != appr => notes.push(
                        "[approvals] max_pending / retention / notify / console_url changed: they take effect on restart only"
                            .into(),
                    ),
                    Some(_) => {}
                }
            }
            _ => {}
        }
        (None, notes)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The generation of the running config (1 at start, +1 per committed reload).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Compiled> {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Recompiles the config and swaps it into every worker. On a config error nothing changes.
    /// `via` names the trigger (`SIGHUP`, `POST /v1/reload`); the outcome is logged here, once
    /// and on one line, whichever path asked.
    pub fn reload(&self, via: &'static str) -> Result<u64, ReloadError> {
        self.reload_noting(via).map(|r| r.generation)
    }

    /// Like `reload`, with what the new config changes that takes effect on restart only.
    pub fn reload_noting(&self, via: &'static str) -> Result<Reloaded, ReloadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        let result = self.reload_locked();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let now = crate::util::clock::unix_now().as_secs();
        let r = &self.reloads;
        r.last_at.store(now, Ordering::Release);
        r.last_ok.store(result.is_ok(), Ordering::Release);
        if result.is_ok() {
            r.ok.fetch_add(1, Ordering::Relaxed);
            r.last_ok_at.store(now, Ordering::Release);
        } else {
            r.failed.fetch_add(1, Ordering::Relaxed);
        }
        match &result {
            Ok(r) => tracing::info!(
                generation = r.generation,
                via,
                workers = self.workers.len(),
                restart_required = r.restart_required.len(),
                "config reloaded"
            ),
            Err(e) => tracing::error!(
                via,
                generation = self.generation(),
                "reload failed, keeping the running config: {}",
                e.one_line()
            ),
        }
        result
    }

    fn reload_locked(&self) -> Result<Reloaded, ReloadError> {
        let new = Arc::new(self.source.compile().map_err(ReloadError::Config)?);
        let old = self.current();
        let mut restart_required = Vec::new();
        if new.server.listen != old.server.listen || new.server.workers != old.server.workers {
            restart_required.push(
                "server.listen / server.workers changed: they take effect on restart only".into(),
            );
        }
        if new.server.admin_listen != old.server.admin_listen {
            restart_required
                .push("server.admin_listen changed: it takes effect on restart only".into());
        }
        if new.audit.as_ref().map(|a| &a.dir) != old.audit.as_ref().map(|a| &a.dir) {
            restart_required
                .push("[audit] changed: the audit trail is started once, restart to apply".into());
        }
        if new.log_format != old.log_format {
            restart_required.push("[log] format changed: it takes effect on restart only".into());
        }
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let sinks = |c: &Compiled| c.sinks.iter().map(|s| s.describe()).collect::<Vec<_>>();
        if sinks(&new) != sinks(&old) {
            restart_required.push(
                "[[audit.sinks]] changed: sinks are started once, the change takes effect on restart only"
                    .into(),
            );
        }
        let telemetry = |c: &Compiled| c.telemetry.as_ref().map(|t| t.describe());
        if telemetry(&new) != telemetry(&old) {
            restart_required.push(
                "[telemetry] changed: the trace exporter and its sampling are set at start, the change takes effect on restart only"
                    .into(),
            );
        }
        // [approvals] added: its store starts now (a failure fails the reload: approve rules
        // would otherwise answer 503); other [state]/[approvals] changes need a restart
        let (store, notes) = self.state_change(&new);
        if store.is_none() && self.state.get().is_none() && new.state.is_some() {
            return Err(ReloadError::State(notes.join("; ")));
        }
        restart_required.extend(notes);
        for r in &restart_required {
            tracing::warn!("{r}");
        }
        if store.is_some() {
            tracing::info!("[state] added: the state store started");
        }
        // phase one: every worker builds its view of the new config (nothing changes yet)
        let n = self.workers.len();
        let prepared = self.broadcast(|ack| Msg::Prepare(new.clone(), store.clone(), ack));
        if prepared < n {
            for w in &self.workers {
                let _ = w.send(Msg::Abort);
            }
            return Err(ReloadError::Incomplete(prepared, n));
        }
        // phase two: every worker installs the view it prepared
        let acked = self.broadcast(Msg::Commit);
        if let (Some(st), Some(loc)) = (store, &new.state) {
            let _ = self.state.set(st);
            let appr = new.approvals.clone().unwrap_or_default();
            let _ = self.state_cfg.set((loc.clone(), appr));
        }
        // token requests use the new config's client secrets from now on
        for b in new.proxies.iter().filter_map(|p| p.oauth.as_ref()) {
            b.commit();
        }
        // kv: entries kept from the old config read through the new [secrets.kv] from now on
        crate::secrets::kv::commit(&new.kv);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = new;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if acked < n {
            // a worker that prepared but did not commit in time is gone (it exits only by
            // draining); the others run the new config
            return Err(ReloadError::Incomplete(acked, n));
        }
        Ok(Reloaded {
            generation,
            restart_required,
        })
    }

    /// Sends every worker `msg(ack)` and counts the acknowledgements that arrive within
    /// `ACK_TIMEOUT` of each other.
    fn broadcast(&self, msg: impl Fn(std::sync::mpsc::Sender<usize>) -> Msg) -> usize {
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = self
            .workers
            .iter()
            .filter(|w| w.send(msg(tx.clone())).is_ok())
            .count();
        drop(tx);
        let mut acked = 0;
        while acked < sent && rx.recv_timeout(ACK_TIMEOUT).is_ok() {
            acked += 1;
        }
        acked
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn drain(&self) {
        for w in &self.workers {
            let _ = w.send(Msg::Drain);
        }
    }
}
