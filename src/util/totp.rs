//! RFC 6238 time-based one-time passwords (HMAC-SHA-1, 30 s steps, 6 digits: what every
//! authenticator app uses), checked at the current step ±1 (clock skew). The caller refuses a
//! step already used (replay) — see `state` (`totp_steps`).
use aws_lc_rs::hmac;

pub const STEP_SECS: u64 = 30;

/// The 6-digit code of `secret` at time step `step` (RFC 4226 dynamic truncation).
pub fn code(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let h = tag.as_ref();
    let off = usize::from(h[h.len() - 1] & 0x0f);
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    bin % 1_000_000
}

/// The time step `presented` (six ASCII digits) matches at `unix_secs`, if any (the newest of
/// step-1, step, step+1).
pub fn verify(secret: &[u8], presented: &str, unix_secs: u64) -> Option<u64> {
    if presented.len() != 6 || !presented.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = presented.parse().ok()?;
    let now = unix_secs / STEP_SECS;
    let mut found = None;
    for step in [now.saturating_sub(1), now, now + 1] {
        if code(secret, step) == want {
            found = Some(step);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B (SHA-1 rows; the RFC's 8-digit values modulo 10^6).
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(code(secret, t / STEP_SECS), want % 1_000_000, "t={t}");
        }
    }

    #[test]
    fn verify_window_and_shape() {
        let secret = b"12345678901234567890";
        let c = format!("{:06}", code(secret, 1000));
        assert_eq!(verify(secret, &c, 1000 * 30 + 5), Some(1000));
        assert_eq!(verify(secret, &c, 1001 * 30 + 5), Some(1000));
        assert_eq!(verify(secret, &c, 999 * 30 + 5), Some(1000));
        assert_eq!(verify(secret, &c, 1003 * 30), None);
        assert_eq!(verify(secret, "12345", 0), None);
        assert_eq!(verify(secret, "12345a", 0), None);
        assert_eq!(verify(secret, "+12345", 0), None);
    }
}
