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

/// Monotonic nanoseconds since the first call in this process (for meters).
#[inline]
pub fn mono_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(now);
    u64::try_from(now().duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}
