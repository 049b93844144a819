//! The operator's metrics, appended to `/metrics` after the call metrics (issue 20):
//!
//! - `portcullis_build_info{version,commit}` — always 1 (`commit` from `build.rs`);
//! - `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//!   `process_start_time_seconds` — read from `/proc/self` at scrape time (Linux only; a
//!   file that cannot be read leaves its series out);
//! - `portcullis_config_generation`, `portcullis_config_last_reload_successful`,
//!   `portcullis_config_last_reload_timestamp_seconds`,
//!   `portcullis_config_last_reload_success_timestamp_seconds`,
//!   `portcullis_config_reloads_total{result}`;
//! - dependency health, one series per live dependency (what some compiled config uses):
//!   `portcullis_meter_redis_up{redis}`, `portcullis_meter_redis_errors_total{redis}`,
//!   `portcullis_meter_redis_outages_total{redis}` (cluster meters);
//!   `portcullis_jwks_keys{jwks}`, `portcullis_jwks_fetch_age_seconds{jwks}` (since the last
//!   successful fetch; absent before one); `portcullis_oauth_token_age_seconds{proxy}`,
//!   `portcullis_oauth_token_expires_in_seconds{proxy}` (absent before a token),
//!   `portcullis_oauth_token_failing{proxy}`; `portcullis_kv_secret_age_seconds{ref}` (since
//!   the last successful read of a `kv:` secret), `portcullis_kv_secret_read_failures{ref}`
//!   (failed reads in a row).
//!
//! Control plane (the admin thread): reads files under `/proc` and takes the registries' locks.
use crate::observe::metrics::{esc, header};
use crate::server::control::Control;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// `/proc/<pid>/stat` times are in USER_HZ, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

/// Appends every family above.
pub fn render(control: &Control, out: &mut String) {
    build_info(out);
    process(out);
    config(control, out);
    dependencies(out);
}

fn build_info(o: &mut String) {
    header(
        o,
        "portcullis_build_info",
        "gauge",
        "Always 1: the running build's version and source commit.",
    );
    let _ = writeln!(
        o,
        "portcullis_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        esc(env!("CARGO_PKG_VERSION")),
        esc(env!("PORTCULLIS_COMMIT"))
    );
}

/// What `/proc/self` says about the process.
#[derive(Debug, Default, PartialEq)]
pub struct ProcStats {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub vsize_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time: Option<f64>,
}

/// Fields of `/proc/self/stat` after the `(comm)` (which may hold spaces and parentheses):
/// index 0 is the state (field 3 of proc(5)).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default()
}

/// Parses the `/proc` texts (sans-io, tested with fixed inputs).
pub fn parse_proc(stat: &str, status: &str, limits: &str, proc_stat: &str) -> ProcStats {
    let f = stat_fields(stat);
    // proc(5): utime 14, stime 15, starttime 22, vsize 23 (1-based) → 11, 12, 19, 20 here
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = match (num(11), num(12)) {
        (Some(u), Some(s)) => Some((u + s) as f64 / USER_HZ),
        _ => None,
    };
    let rss_bytes = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    let btime = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let start_time = match (btime, num(19)) {
        (Some(b), Some(t)) => Some(b as f64 + t as f64 / USER_HZ),
        _ => None,
    };
    ProcStats {
        cpu_seconds,
        rss_bytes,
        vsize_bytes: num(20),
        open_fds: None,
        max_fds,
        start_time,
    }
}

pub fn read_proc() -> ProcStats {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut s = parse_proc(
        &read("/proc/self/stat"),
        &read("/proc/self/status"),
        &read("/proc/self/limits"),
        &read("/proc/stat"),
    );
    s.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    s
}

fn process(o: &mut String) {
    let p = read_proc();
    let mut one = |name: &str, kind: &str, help: &str, v: Option<String>| {
        if let Some(v) = v {
            header(o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
    };
    one(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        p.cpu_seconds.map(|v| v.to_string()),
    );
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.rss_bytes.map(|v| v.to_string()),
    );
    one(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.vsize_bytes.map(|v| v.to_string()),
    );
    one(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        p.open_fds.map(|v| v.to_string()),
    );
    one(
        "process_max_fds",
        "gauge",
        "The limit on open file descriptors.",
        p.max_fds.map(|v| v.to_string()),
    );
    one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        p.start_time.map(|v| v.to_string()),
    );
}

fn config(control: &Control, o: &mut String) {
    let r = &control.reloads;
    header(
        o,
        "portcullis_config_generation",
        "gauge",
        "The running config's generation: 1 at start, +1 per successful reload.",
    );
    let _ = writeln!(o, "portcullis_config_generation {}", control.generation());
    header(
        o,
        "portcullis_config_last_reload_successful",
        "gauge",
        "1 if the last reload (or the start) installed its config, 0 if it failed.",
    );
    let _ = writeln!(
        o,
        "portcullis_config_last_reload_successful {}",
        u8::from(r.last_ok.load(Ordering::Acquire))
    );
    header(
        o,
        "portcullis_config_last_reload_timestamp_seconds",
        "gauge",
        "When the last reload was tried (the start before any), Unix seconds.",
    );
    let _ = writeln!(
        o,
        "portcullis_config_last_reload_timestamp_seconds {}",
        r.last_at.load(Ordering::Acquire)
    );
    header(
        o,
        "portcullis_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the running config was installed (the start or the last successful reload), Unix seconds.",
    );
    let _ = writeln!(
        o,
        "portcullis_config_last_reload_success_timestamp_seconds {}",
        r.last_ok_at.load(Ordering::Acquire)
    );
    header(
        o,
        "portcullis_config_reloads_total",
        "counter",
        "Reloads (SIGHUP and POST /v1/reload) by outcome.",
    );
    let _ = writeln!(
        o,
        "portcullis_config_reloads_total{{result=\"success\"}} {}",
        r.ok.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "portcullis_config_reloads_total{{result=\"failure\"}} {}",
        r.failed.load(Ordering::Relaxed)
    );
}

fn secs_since(now: i64, t: i64) -> i64 {
    now.saturating_sub(t).max(0)
}

fn dependencies(o: &mut String) {
    let now = i64::try_from(crate::util::clock::unix_now().as_secs()).unwrap_or(i64::MAX);

    let clusters = crate::policy::meter::global().clusters();
    if !clusters.is_empty() {
        let mut up = String::new();
        let mut errors = String::new();
        let mut outages = String::new();
        for c in &clusters {
            let l = esc(&c.settings.display);
            let h = &c.health;
            let _ = writeln!(
                up,
                "portcullis_meter_redis_up{{redis=\"{l}\"}} {}",
                u8::from(!h.is_down())
            );
            let _ = writeln!(
                errors,
                "portcullis_meter_redis_errors_total{{redis=\"{l}\"}} {}",
                h.errors.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                outages,
                "portcullis_meter_redis_outages_total{{redis=\"{l}\"}} {}",
                h.outages.load(Ordering::Relaxed)
            );
        }
        header(
            o,
            "portcullis_meter_redis_up",
            "gauge",
            "1 while the cluster meters' Redis answers, 0 while it is down.",
        );
        o.push_str(&up);
        header(
            o,
            "portcullis_meter_redis_errors_total",
            "counter",
            "Redis calls of the cluster meters that failed.",
        );
        o.push_str(&errors);
        header(
            o,
            "portcullis_meter_redis_outages_total",
            "counter",
            "Times the cluster meters' Redis went from up to down.",
        );
        o.push_str(&outages);
    }

    let feeds = crate::identity::jwks::global().live();
    if !feeds.is_empty() {
        let mut keys = String::new();
        let mut age = String::new();
        for f in &feeds {
            let l = esc(f.url());
            let _ = writeln!(
                keys,
                "portcullis_jwks_keys{{jwks=\"{l}\"}} {}",
                f.key_count()
            );
            if let Some(t) = f.last_success() {
                let _ = writeln!(
                    age,
                    "portcullis_jwks_fetch_age_seconds{{jwks=\"{l}\"}} {}",
                    secs_since(now, t)
                );
            }
        }
        header(
            o,
            "portcullis_jwks_keys",
            "gauge",
            "Usable signing keys held from each JWKS.",
        );
        o.push_str(&keys);
        if !age.is_empty() {
            header(
                o,
                "portcullis_jwks_fetch_age_seconds",
                "gauge",
                "Seconds since each JWKS was last fetched successfully.",
            );
            o.push_str(&age);
        }
    }

    let sources = crate::credentials::token_source::global().live();
    if !sources.is_empty() {
        let mut age = String::new();
        let mut left = String::new();
        let mut failing = String::new();
        for s in &sources {
            let l = esc(s.proxy());
            if let Some((obtained, expires)) = s.token_times() {
                let _ = writeln!(
                    age,
                    "portcullis_oauth_token_age_seconds{{proxy=\"{l}\"}} {}",
                    secs_since(now, obtained)
                );
                let _ = writeln!(
                    left,
                    "portcullis_oauth_token_expires_in_seconds{{proxy=\"{l}\"}} {}",
                    expires.saturating_sub(now)
                );
            }
            let _ = writeln!(
                failing,
                "portcullis_oauth_token_failing{{proxy=\"{l}\"}} {}",
                u8::from(s.failed())
            );
        }
        if !age.is_empty() {
            header(
                o,
                "portcullis_oauth_token_age_seconds",
                "gauge",
                "Seconds since each proxy's OAuth2 access token was obtained.",
            );
            o.push_str(&age);
            header(
                o,
                "portcullis_oauth_token_expires_in_seconds",
                "gauge",
                "Seconds until each proxy's OAuth2 access token expires (negative: expired).",
            );
            o.push_str(&left);
        }
        header(
            o,
            "portcullis_oauth_token_failing",
            "gauge",
            "1 when the last token request of the proxy failed.",
        );
        o.push_str(&failing);
    }

    let entries = crate::secrets::kv::global().live_entries();
    if !entries.is_empty() {
        let mut age = String::new();
        let mut failures = String::new();
        for e in &entries {
            let l = esc(&e.reference().to_string());
            let (a, f) = e.health();
            if let Some(a) = a {
                let _ = writeln!(
                    age,
                    "portcullis_kv_secret_age_seconds{{ref=\"{l}\"}} {a:.3}"
                );
            }
            let _ = writeln!(
                failures,
                "portcullis_kv_secret_read_failures{{ref=\"{l}\"}} {f}"
            );
        }
        if !age.is_empty() {
            header(
                o,
                "portcullis_kv_secret_age_seconds",
                "gauge",
                "Seconds since each kv: secret was last read from the KV server.",
            );
            o.push_str(&age);
        }
        header(
            o,
            "portcullis_kv_secret_read_failures",
            "gauge",
            "Failed reads in a row of each kv: secret (0 after a successful read).",
        );
        o.push_str(&failures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_parse() {
        let stat = "4242 (port cullis) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 3 0 12345 987654321 2048 18446744073709551615";
        let status = "Name:\tportcullis\nVmRSS:\t   8192 kB\nThreads:\t3\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\n";
        let p = parse_proc(stat, status, limits, proc_stat);
        assert_eq!(p.cpu_seconds, Some(3.25));
        assert_eq!(p.rss_bytes, Some(8192 * 1024));
        assert_eq!(p.vsize_bytes, Some(987_654_321));
        assert_eq!(p.max_fds, Some(1024));
        assert_eq!(p.start_time, Some(1_700_000_123.45));
        // unreadable files: nothing, not garbage
        assert_eq!(parse_proc("", "", "", ""), ProcStats::default());
        // this process: something sensible
        let me = read_proc();
        assert!(me.rss_bytes.unwrap_or(0) > 0, "{me:?}");
        assert!(me.open_fds.unwrap_or(0) > 0, "{me:?}");
        assert!(me.cpu_seconds.is_some(), "{me:?}");
    }
}
