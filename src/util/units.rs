//! Sizes (`"16KiB"`) and durations (`"500ms"`) as written in the config.
use std::time::Duration;

/// `"512"`, `"16KiB"`, `"1MiB"`, `"2GiB"`, `"10KB"` (decimal), `"64B"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number and a unit such as \"16KiB\""
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// `"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || unit.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a number and a unit such as \"10s\" or \"500ms\""
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("16KiB", Some(16384)),
            ("1MiB", Some(1 << 20)),
            ("256MiB", Some(256 << 20)),
            ("1GiB", Some(1 << 30)),
            ("10KB", Some(10_000)),
            ("512", Some(512)),
            ("64B", Some(64)),
            ("KiB", None),
            ("1 parsec", None),
            ("-1KiB", None),
            ("99999999999999999999", None),
            ("99999999999GiB", None),
        ] {
            assert_eq!(parse_size(s).ok(), want, "{s}");
        }
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("10s", Some(Duration::from_secs(10))),
            ("500ms", Some(Duration::from_millis(500))),
            ("5m", Some(Duration::from_secs(300))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1d", Some(Duration::from_secs(86400))),
            ("10", None),
            ("5 parsecs", None),
            ("s", None),
            ("1.5s", None),
        ] {
            assert_eq!(parse_duration(s).ok(), want, "{s}");
        }
    }
}
