//! The refresher thread: OAuth2 tokens (`oauth.rs`), https JWKS (`jwks.rs`) and `kv:` secrets
//! with their KV token renewals (`kv.rs`) are fetched off
//! the data plane, on this thread's schedule and the short-lived fetch threads it starts.
//! Workers only wake it (`wake`, a non-blocking `try_send` on a one-slot channel) when a call
//! finds no token or a token names an unknown key.
use std::sync::OnceLock;
use std::time::Duration;

/// How often due refreshes are looked for when nobody wakes the thread.
const TICK: Duration = Duration::from_millis(250);

fn channel() -> &'static (flume::Sender<()>, flume::Receiver<()>) {
    static CH: OnceLock<(flume::Sender<()>, flume::Receiver<()>)> = OnceLock::new();
    CH.get_or_init(|| flume::bounded(1))
}

/// Asks the refresher to look for due work now (never blocks).
pub fn wake() {
    let _ = channel().0.try_send(());
}

/// Starts the refresher thread (once per process; later calls do nothing).
pub fn start() -> std::io::Result<()> {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("portcullis-refresh".into())
        .spawn(|| {
            let rx = channel().1.clone();
            loop {
                let now =
                    i64::try_from(crate::util::clock::unix_now().as_secs()).unwrap_or(i64::MAX);
                crate::credentials::token_source::tick(now);
                crate::identity::jwks::tick(now);
                crate::secrets::kv::tick();
                if let Err(flume::RecvTimeoutError::Disconnected) = rx.recv_timeout(TICK) {
                    return;
                }
            }
        })?;
    let _ = STARTED.set(());
    Ok(())
}
