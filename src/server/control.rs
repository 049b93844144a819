//! Process control: start the workers, report readiness to systemd, and handle SIGHUP (reload),
//! SIGTERM/SIGINT (drain and exit). Reload is two-phase: compile the new config here (on error
//! the old one stays), then hand the same `Arc<Compiled>` to every worker and wait for each to
//! acknowledge.
// Off the data plane: the reload lock and the current-config slot are touched only by the
// signal thread and the admin thread, never by a worker.
#![allow(clippy::disallowed_types)]
use crate::config::{self, Compiled};
use crate::server::worker::{self, Msg, Worker};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::rc::Rc;
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
}

/// What the admin API reads of the running audit trail.
pub struct AuditView {
    pub dir: PathBuf,
    stats: Arc<crate::observe::audit::AuditStats>,
    ring: Arc<crate::observe::audit::AuditRing>,
}

impl AuditView {
    pub fn snapshot(&self) -> crate::observe::audit::StatsSnapshot {
        self.stats.snapshot(&self.ring)
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
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Incomplete(n, of) => {
                write!(f, "only {n} of {of} workers took the new config")
            }
        }
    }
}

impl Control {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

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
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        let result = self.reload_locked();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        result
    }

    fn reload_locked(&self) -> Result<u64, ReloadError> {
        let new = Arc::new(self.source.compile().map_err(ReloadError::Config)?);
        let old = self.current();
        if new.server.listen != old.server.listen || new.server.workers != old.server.workers {
            tracing::warn!(
                "server.listen / server.workers changed: they take effect on restart only"
            );
        }
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sent = 0;
        for w in &self.workers {
            if w.send(Msg::Reload(new.clone(), tx.clone())).is_ok() {
                sent += 1;
            }
        }
        drop(tx);
        let mut acked = 0;
        while acked < sent {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(_) => acked += 1,
                Err(_) => break,
            }
        }
        // token requests use the new config's client secrets from now on
        crate::credentials::token_source::commit(&new);
        // kv: entries kept from the old config read through the new [secrets.kv] from now on
        crate::secrets::kv::commit(&new.kv);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = new;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if acked < self.workers.len() {
            return Err(ReloadError::Incomplete(acked, self.workers.len()));
        }
        tracing::info!(generation, workers = acked, "config reloaded");
        Ok(generation)
    }

    fn drain(&self) {
        for w in &self.workers {
            let _ = w.send(Msg::Drain);
        }
    }
}

fn worker_count(cfg: &Compiled) -> usize {
    if cfg.server.workers > 0 {
        cfg.server.workers
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// `portcullis run`: serve until SIGTERM/SIGINT.
pub fn run(source: Source) -> Result<()> {
    let cfg = Arc::new(source.compile().map_err(|e| anyhow::anyhow!("{e}"))?);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    // signals first, so an early SIGTERM/SIGHUP is not lost
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;

    if let Some(addr) = cfg.demo {
        crate::server::demo::start(addr)
            .with_context(|| format!("starting the demo upstream on {addr}"))?;
        tracing::info!(%addr, "demo upstream listening (quickstart only)");
    }

    // the audit writer starts before the first call can be accepted
    let audit = match &cfg.audit {
        Some(a) => {
            let (ring, handle) = crate::observe::audit::start(a.clone())
                .with_context(|| format!("starting the audit writer in {}", a.dir.display()))?;
            tracing::info!(dir = %a.dir.display(), "audit trail enabled");
            Some((ring, handle))
        }
        None => None,
    };
    // OAuth2 tokens and https JWKS are fetched and refreshed on their own thread
    crate::server::refresher::start().context("starting the refresher thread")?;

    let n = worker_count(&cfg);
    let metrics = Arc::new(crate::observe::metrics::Metrics::new(n));
    let mut senders = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    for id in 0..n {
        let (tx, rx) = flume::unbounded();
        senders.push(tx);
        let cfg = cfg.clone();
        let bound_tx = bound_tx.clone();
        let ring = audit.as_ref().map(|(r, _)| r.clone());
        let wm = metrics.worker_metrics(id);
        let h = std::thread::Builder::new()
            .name(format!("portcullis-w{id}"))
            .spawn(move || worker_thread(id, cfg, ring, wm, rx, bound_tx))
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    drop(bound_tx);
    for _ in 0..n {
        match bound_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("a worker exited during startup"),
        }
    }
    let control = Arc::new(Control {
        source,
        workers: senders,
        reload_lock: Mutex::new(()),
        generation: AtomicU64::new(1),
        ready: AtomicBool::new(false),
        current: Mutex::new(cfg.clone()),
        metrics,
        audit: match (&cfg.audit, &audit) {
            (Some(a), Some((ring, handle))) => Some(AuditView {
                dir: a.dir.clone(),
                stats: handle.stats().clone(),
                ring: ring.clone(),
            }),
            _ => None,
        },
    });
    if let Some(addr) = cfg.server.admin_listen {
        crate::server::admin::start(addr, control.clone())
            .with_context(|| format!("starting the admin listener on {addr}"))?;
        tracing::info!(%addr, "admin listening");
    }
    control.ready.store(true, Ordering::Release);
    tracing::info!(listen = ?cfg.server.listen, workers = n, config = %cfg.source, "portcullis ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    for sig in signals.forever() {
        match sig {
            signal_hook::consts::SIGHUP => {
                tracing::info!("SIGHUP: reloading config");
                if let Err(e) = control.reload() {
                    tracing::error!("reload failed, keeping the running config:\n{e}");
                }
            }
            _ => {
                tracing::info!("shutting down: draining in-flight calls");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                control.ready.store(false, Ordering::Release);
                control.drain();
                break;
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some((_, handle)) = audit {
        let st = handle.flush_and_stop();
        tracing::info!(
            written = st.written,
            dropped = st.dropped_queue + st.dropped_backlog,
            "audit trail closed"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

fn worker_thread(
    id: usize,
    cfg: Arc<Compiled>,
    audit: Option<Arc<crate::observe::audit::AuditRing>>,
    metrics: crate::observe::metrics::WorkerMetrics,
    rx: flume::Receiver<Msg>,
    bound: std::sync::mpsc::Sender<Result<usize, String>>,
) {
    // COOP_TASKRUN: completions raised from another core (loopback receive runs on the
    // sender's core) are run at this thread's next syscall instead of interrupting it with an
    // IPI; SINGLE_ISSUER: only this thread submits. Kernels without them (< 6.0) fall back to
    // epoll through the fusion driver.
    let mut urb = io_uring::IoUring::builder();
    if std::env::var_os("PORTCULLIS_URING_PLAIN").is_none() {
        urb.setup_coop_taskrun().setup_single_issuer();
    }
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(4096)
        .uring_builder(urb)
        .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(1)))
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(format!("worker {id}: cannot start the runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let driver = if monoio::utils::is_legacy() {
            "epoll (io_uring unavailable)"
        } else {
            "io_uring"
        };
        let listeners = match worker::bind(&cfg.server.listen) {
            Ok(l) => l,
            Err(e) => {
                let _ = bound.send(Err(format!(
                    "cannot listen on {:?}: {e}",
                    cfg.server.listen
                )));
                return;
            }
        };
        tracing::info!(worker = id, driver, "worker started");
        let _ = bound.send(Ok(id));
        let w = Rc::new(Worker::new(id, cfg, audit, metrics));
        worker::run(w, listeners, rx).await;
    });
}
