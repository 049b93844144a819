//! `portcullis run`: compile the config, start the demo upstream, the audit writer, the
//! refresher and one worker thread per core (each with its own monoio runtime), then the admin
//! listener; report readiness to systemd and serve until SIGTERM/SIGINT, reloading on SIGHUP.
// Off the data plane: start-up and the signal loop.
#![allow(clippy::disallowed_types)]
use super::control::{AuditView, Control, Source};
use super::worker::{self, Msg};
use crate::config::Compiled;
use crate::pipeline::Worker;
use anyhow::{Context, Result, bail};
use std::rc::Rc;
use std::sync::Arc;

fn worker_count(cfg: &Compiled) -> usize {
    if cfg.server.workers > 0 {
        cfg.server.workers
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// Refuses a listen address that another process already serves. The workers share each
/// address through SO_REUSEPORT, which would also let a second gateway (a stale instance, a
/// test run, another config) bind it and silently take part of the calls. This probe binds
/// each address once without SO_REUSEPORT (SO_REUSEADDR only, so sockets in TIME_WAIT do not
/// count): that fails while anything listens there. Port 0 (a fresh port) is not probed.
pub fn refuse_served_addresses(addrs: &[std::net::SocketAddr]) -> Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    for a in addrs.iter().filter(|a| a.port() != 0) {
        let probe = Socket::new(Domain::for_address(*a), Type::STREAM, Some(Protocol::TCP))
            .context("creating a socket to probe the listen addresses")?;
        probe
            .set_reuse_address(true)
            .context("probing the listen addresses")?;
        if a.is_ipv6() {
            let _ = probe.set_only_v6(true);
        }
        match probe.bind(&(*a).into()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "server.listen {a}: the address is already in use by another process (another \
                 portcullis?); stop it (`ss -ltnp 'sport = :{}'` shows who) or listen elsewhere",
                a.port()
            ),
            Err(e) => bail!("server.listen {a}: cannot bind: {e}"),
        }
    }
    Ok(())
}

/// `portcullis run`: serve until SIGTERM/SIGINT.
pub fn run(source: Source) -> Result<()> {
    let cfg = Arc::new(source.compile().map_err(|e| anyhow::anyhow!("{e}"))?);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    refuse_served_addresses(&cfg.server.listen)?;
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
    // `[[audit.sinks]]` read the files the writer writes, each on its own thread
    let sinks = match (&cfg.audit, cfg.sinks.is_empty()) {
        (Some(a), false) => {
            let s = crate::siem::Sinks::start(&a.dir, &cfg.sinks)
                .context("starting the audit sink threads")?;
            tracing::info!(sinks = cfg.sinks.len(), "audit sinks started");
            Some(s)
        }
        _ => None,
    };
    // `[telemetry] otlp`: the span exporter's thread; each worker gets a sender
    let traces = match &cfg.telemetry {
        Some(t) => {
            let (e, queue) = crate::siem::traces::Exporter::start(t.clone())
                .context("starting the trace exporter thread")?;
            Some((e, queue))
        }
        None => None,
    };
    // the state store (approvals, managed agents, tool pins): `[state]` (or `[approvals] dir |
    // redis`) starts it, before the first call can be held
    let appr = cfg.approvals.clone().unwrap_or_default();
    let store = match &cfg.state {
        Some(loc) => Some(
            crate::state::Store::start(loc, appr.clone(), audit.as_ref().map(|(r, _)| r.clone()))
                .map_err(|e| anyhow::anyhow!("starting the state store: {e}"))?,
        ),
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
        let st = store.clone();
        let parts = WorkerParts {
            audit: ring,
            metrics: wm,
            store: st,
            tracer: traces.as_ref().map(|(e, q)| (q.clone(), e.stats.clone())),
        };
        let h = std::thread::Builder::new()
            .name(format!("portcullis-w{id}"))
            .spawn(move || worker_thread(id, cfg, parts, rx, bound_tx))
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
    let audit_view = match (&cfg.audit, &audit) {
        (Some(a), Some((ring, handle))) => Some(
            AuditView::new(a.dir.clone(), handle.stats().clone(), ring.clone())
                .with_sinks(sinks.as_ref().map(|s| s.stats.clone()).unwrap_or_default()),
        ),
        _ => None,
    };
    let control = Arc::new(Control::new(
        source,
        senders,
        cfg.clone(),
        metrics,
        audit_view,
    ));
    if let (Some(s), Some(loc)) = (&store, &cfg.state) {
        control.set_state(s.clone(), loc.clone(), appr);
    }
    let traces = traces.map(|(e, _)| {
        let _ = control.traces.set(e.stats.clone());
        e
    });
    if let Some(addr) = cfg.server.admin_listen {
        crate::server::admin::start(addr, control.clone())
            .with_context(|| format!("starting the admin listener on {addr}"))?;
        tracing::info!(%addr, "admin listening");
    }
    control.set_ready(true);
    tracing::info!(listen = ?cfg.server.listen, workers = n, config = %cfg.source, "portcullis ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    for sig in signals.forever() {
        match sig {
            signal_hook::consts::SIGHUP => {
                // the outcome is logged by `reload`, on one line
                let _ = control.reload("SIGHUP");
            }
            _ => {
                tracing::info!("shutting down: draining in-flight calls");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                control.set_ready(false);
                control.drain();
                break;
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    // the workers are gone: the exporter exports what it holds and ends
    if let Some(e) = traces {
        e.stop();
    }
    if let Some((_, handle)) = audit {
        let st = handle.flush_and_stop();
        tracing::info!(
            written = st.written,
            dropped = st.dropped_queue + st.dropped_backlog,
            "audit trail closed"
        );
    }
    // after the writer's last records: a sink that is up delivers them on its next poll, or
    // after the next start
    if let Some(s) = sinks {
        s.stop();
    }
    tracing::info!("stopped");
    Ok(())
}

/// What a worker thread is handed besides its config: the process-wide handles it keeps.
struct WorkerParts {
    audit: Option<Arc<crate::observe::audit::AuditRing>>,
    metrics: crate::observe::metrics::WorkerMetrics,
    store: Option<crate::state::Store>,
    /// The trace exporter's queue and counters (`[telemetry] otlp`).
    tracer: Option<(
        Arc<crate::observe::trace::SpanQueue>,
        Arc<crate::observe::trace::TraceStats>,
    )>,
}

fn worker_thread(
    id: usize,
    cfg: Arc<Compiled>,
    parts: WorkerParts,
    rx: flume::Receiver<Msg>,
    bound: std::sync::mpsc::Sender<Result<usize, String>>,
) {
    let WorkerParts {
        audit,
        metrics,
        store,
        tracer,
    } = parts;
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
        let tracer = match (&cfg.telemetry, tracer) {
            (Some(t), Some((queue, stats))) => {
                Some(crate::observe::trace::Tracer::new(t.sample, queue, stats))
            }
            _ => None,
        };
        let w = Rc::new(
            Worker::new(id, cfg, audit, metrics)
                .with_state(store)
                .with_tracer(tracer),
        );
        worker::run(w, listeners, rx).await;
    });
}
