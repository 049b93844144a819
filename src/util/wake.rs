//! The refresher's doorbell. Workers ring it (`wake`, a non-blocking `try_send` on a one-slot
//! channel) when a call finds no OAuth2 token or a `kv:` secret to re-read; the refresher thread
//! (`server/refresher.rs`) waits on it between its ticks. It lives down here so that the
//! credential and secret modules can ring it without importing the server.
use std::sync::OnceLock;
use std::time::Duration;

fn channel() -> &'static (flume::Sender<()>, flume::Receiver<()>) {
    static CH: OnceLock<(flume::Sender<()>, flume::Receiver<()>)> = OnceLock::new();
    CH.get_or_init(|| flume::bounded(1))
}

/// Asks the refresher to look for due work now (never blocks).
pub fn wake() {
    let _ = channel().0.try_send(());
}

/// Waits up to `timeout` for a ring. `false` once nobody can ring any more.
pub fn wait(timeout: Duration) -> bool {
    !matches!(
        channel().1.recv_timeout(timeout),
        Err(flume::RecvTimeoutError::Disconnected)
    )
}
