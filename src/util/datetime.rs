//! Tiny UTC calendar helpers (no chrono): RFC 3339 parsing for `expires_at`, RFC 3339 and
//! SigV4 `YYYYMMDDTHHMMSSZ` formatting. Pure functions over Unix seconds.

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) for days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, b| {
        acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

/// Parses RFC 3339 (`2027-01-01T00:00:00Z`, `2027-01-01T02:00:00.5+02:00`, `t`/space as the
/// separator, `z` accepted) or a bare date `2027-01-01` (midnight UTC) into Unix seconds.
/// Fractional seconds are truncated. Leap second `:60` is refused.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = i64::from(digits(&b[0..4])?);
    let mo = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if b.len() == 10 {
        return Some(days * 86_400);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 20 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let h = digits(&b[11..13])?;
    let mi = digits(&b[14..16])?;
    let sec = digits(&b[17..19])?;
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = digits(&[*oh1, *oh2])?;
            let om = digits(&[*om1, *om2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    Some(days * 86_400 + i64::from(h * 3600 + mi * 60 + sec) - offset)
}

fn split(unix: i64) -> (i64, u32, u32, i64, i64, i64) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, secs / 3600, (secs % 3600) / 60, secs % 60)
}

/// `2027-01-01T00:00:00Z`.
pub fn format_rfc3339(unix: i64) -> String {
    let (y, m, d, h, mi, s) = split(unix);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// SigV4's `x-amz-date`: `20150830T123600Z`.
pub fn format_amz_date(unix: i64) -> String {
    let (y, m, d, h, mi, s) = split(unix);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_table() {
        let table: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2015-08-30T12:36:00Z", Some(1_440_938_160)),
            ("2027-01-01T00:00:00Z", Some(1_798_761_600)),
            ("2027-01-01", Some(1_798_761_600)),
            ("2027-01-01T02:00:00+02:00", Some(1_798_761_600)),
            ("2026-12-31T23:00:00-01:00", Some(1_798_761_600)),
            ("2027-01-01t00:00:00.999z", Some(1_798_761_600)),
            ("2027-01-01 00:00:00Z", Some(1_798_761_600)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800)),
            ("2023-02-29T00:00:00Z", None),
            ("2027-13-01T00:00:00Z", None),
            ("2027-01-01T24:00:00Z", None),
            ("2027-01-01T00:00:60Z", None),
            ("2027-01-01T00:00:00", None),
            ("2027-01-01T00:00:00.Z", None),
            ("2027-01-01T00:00:00+0200", None),
            ("2027-1-01", None),
            ("", None),
            ("２０２７-01-01", None),
        ];
        for (s, want) in table {
            assert_eq!(parse_rfc3339(s), *want, "{s}");
        }
    }

    #[test]
    fn format_round_trips() {
        for t in [0i64, 1_440_938_160, 1_798_761_600, 951_782_400, -86_400] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(format_amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        proptest! {
            #[test]
            fn format_then_parse_round_trips(t in -62_000_000_000i64..253_402_300_799i64) {
                prop_assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
            }
            #[test]
            fn parse_never_panics(s in "\\PC{0,40}") {
                let _ = parse_rfc3339(&s);
            }
        }
    }
}
