//! One bounded wait on a worker: look at something every `every` until it answers or the
//! deadline passes. Used where a call waits for work done off the data plane (a `kv:` re-read,
//! an OAuth2 token, a cluster meter's refill from Redis); each of those gives up at its bound.
use std::time::{Duration, Instant};

/// Calls `f(late)` until it returns `Some`, sleeping `every` in between. `late` is true on the
/// call made at or after `deadline`; if that one also returns `None`, so does this.
pub async fn poll_until<T>(
    deadline: Instant,
    every: Duration,
    mut f: impl FnMut(bool) -> Option<T>,
) -> Option<T> {
    loop {
        let late = super::clock::now() >= deadline;
        if let Some(v) = f(late) {
            return Some(v);
        }
        if late {
            return None;
        }
        monoio::time::sleep(every).await;
    }
}
