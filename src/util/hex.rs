//! Hex digits, the one copy: decoding a digit (percent escapes, chunk sizes, JSON `\u`
//! escapes), lower-case encoding (hashes, request ids, signatures) and 32-byte hashes.

/// Lower-case digits.
pub const LOWER: &[u8; 16] = b"0123456789abcdef";
/// Upper-case digits (percent escapes, RFC 3986 §2.1).
pub const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The value of one hex digit, either case.
#[inline]
pub fn digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of `bytes` into `out`, which holds exactly two bytes per input byte.
#[inline]
pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = LOWER[usize::from(b >> 4)];
        pair[1] = LOWER[usize::from(b & 0xf)];
    }
}

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(LOWER[usize::from(b >> 4)]));
        s.push(char::from(LOWER[usize::from(b & 0xf)]));
    }
    s
}

/// 64 hex digits (either case) → 32 bytes.
pub fn decode32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// An even number of hex digits (either case) → bytes.
pub fn decode(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

/// The value of up to 16 hex digits (`None` on any other byte or on none at all).
pub fn value(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter()
        .try_fold(0u64, |v, &b| Some(v << 4 | u64::from(digit(b)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_round_trip() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("empty", b"", ""),
            ("one", b"\x00", "00"),
            (
                "all nibbles",
                b"\x01\x23\x45\x67\x89\xab\xcd\xef",
                "0123456789abcdef",
            ),
        ];
        for (name, bytes, hex) in cases {
            assert_eq!(encode(bytes), *hex, "{name}");
            let mut out = vec![0u8; bytes.len() * 2];
            encode_into(bytes, &mut out);
            assert_eq!(out, hex.as_bytes(), "{name}");
        }
        for b in 0..=255u8 {
            let ok = b.is_ascii_hexdigit();
            assert_eq!(digit(b).is_some(), ok, "{b}");
        }
        let h = [0xabu8; 32];
        assert_eq!(decode32(encode(&h).as_bytes()), Some(h));
        assert_eq!(decode32(encode(&h).to_uppercase().as_bytes()), Some(h));
        assert_eq!(decode32(b"ab"), None);
        assert_eq!(decode32(&[b'g'; 64]), None);
        assert_eq!(value(b"1F"), Some(31));
        assert_eq!(value(b""), None);
        assert_eq!(value(b"x"), None);
    }
}
