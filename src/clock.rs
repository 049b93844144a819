//! The single source of time. Everything else takes `Instant`s from here (clippy.toml bans
//! `Instant::now` elsewhere), so sans-io cores can be driven by an injected clock in tests.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic now.
#[inline]
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock time since the Unix epoch (for ids and audit timestamps).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}
