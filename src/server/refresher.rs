//! The refresher thread: OAuth2 tokens (`credentials/token_source.rs`), https JWKS
//! (`identity/jwks.rs`) and `kv:` secrets with their KV token renewals (`secrets/kv.rs`) are
//! fetched off the data plane, on this thread's schedule and the short-lived fetch threads it
//! starts. Workers only ring its doorbell (`util::wake`) when a call finds no token or a
//! `kv:` secret to re-read. Once a minute it also drops idle budget counters
//! (`policy::budget::prune_all`).
use std::sync::OnceLock;
use std::time::Duration;

/// How often due refreshes are looked for when nobody wakes the thread.
const TICK: Duration = Duration::from_millis(250);
/// How often idle budget counters are dropped.
const PRUNE_EVERY_SECS: u64 = 60;

/// Starts the refresher thread (once per process; later calls do nothing).
pub fn start() -> std::io::Result<()> {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("portcullis-refresh".into())
        .spawn(|| {
            let mut pruned_at = crate::util::clock::unix_now().as_secs();
            loop {
                let unix = crate::util::clock::unix_now().as_secs();
                if unix >= pruned_at + PRUNE_EVERY_SECS {
                    pruned_at = unix;
                    let n = crate::policy::budget::prune_all(unix);
                    if n > 0 {
                        tracing::debug!(dropped = n, "idle budget counters dropped");
                    }
                }
                let now = i64::try_from(unix).unwrap_or(i64::MAX);
                crate::credentials::token_source::tick(now);
                crate::identity::jwks::tick(now);
                crate::secrets::kv::tick();
                if !crate::util::wake::wait(TICK) {
                    return;
                }
            }
        })?;
    let _ = STARTED.set(());
    Ok(())
}
