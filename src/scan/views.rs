//! Decoded views of a request body (issue 12): the text an upstream reads after it decodes what
//! the agent sent, so that a detector or literal spelt `\u0041KIA…`, `%41KIA…`, base64 or inside
//! a base64 multipart part is found as well as one spelt plainly. Sans-io, pure functions from
//! bytes to a freshly written view; every view is at most as long as its source (escapes only
//! shrink), so a body costs at most a bounded number of body-sized buffers (see `ScanSet::views`
//! in `mod.rs` for which views are built from which).
//!
//! - [`json_unescape`]: every JSON string escape (`\uXXXX` with surrogate pairs, `\/`, `\\`,
//!   `\"`, `\n`...) decoded wherever it appears. Lenient on purpose: applied to any body (the
//!   agent chooses the Content-Type, and many backends parse JSON whatever it says); outside a
//!   JSON string a backslash is left as it is. [`json_needs_view`] says whether an escape that
//!   can hide a match is present, so ordinary bodies never pay for the copy.
//! - [`form_decode`]: `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte; a
//!   malformed escape is kept).
//! - [`base64_runs`]: every run of at least [`MIN_BASE64_RUN`] characters of the standard or
//!   URL-safe base64 alphabet holding both upper- and lower-case letters (so hex ids, UUIDs and
//!   `snake_case` names are not decoded), decoded from its start (a trailing partial quantum
//!   gives its whole bytes), runs separated by `\n`. Finding runs reads a few bytes per `MIN_BASE64_RUN` where
//!   the body has no long run (from the last position a run could reach, backwards to the first
//!   byte outside the alphabet, then on from just after it), so prose costs little.
//! - [`multipart`]: the bodies of a `multipart/*` body's parts, with `Content-Transfer-Encoding:
//!   base64` or `quoted-printable` undone, parts separated by `\n`; `None` when no part is so
//!   encoded (the raw scan already sees every part's bytes as sent).
//!
//! Hand-written byte loops rather than a parser crate: they are on the scan path of every body
//! with a trigger, must never fail (a malformed body is scanned as far as it decodes, the raw
//! bytes are scanned anyway) and must not allocate beyond the one output buffer.
use crate::util::hex;

/// Shortest base64 run decoded: 16 characters (12 bytes), so `CONFIDENTIAL` or a 20-byte key
/// id in base64 is seen, while words of prose are not runs.
pub const MIN_BASE64_RUN: usize = 16;

/// Longest multipart boundary accepted (RFC 2046 allows 70).
const MAX_BOUNDARY: usize = 200;

/// Whether `body` holds a JSON escape that can hide a match: `\u`, `\/`, `\\`, and with
/// `all_escapes` (some literal holds `"`, `\` or a control character) any escape.
pub fn json_needs_view(body: &[u8], all_escapes: bool) -> bool {
    memchr::memchr_iter(b'\\', body).any(|i| match body.get(i + 1) {
        Some(b'u' | b'U' | b'/' | b'\\') => true,
        Some(b'"' | b'b' | b'f' | b'n' | b'r' | b't') => all_escapes,
        _ => false,
    })
}

fn hex4(s: &[u8]) -> Option<u32> {
    let s = s.get(..4)?;
    s.iter().try_fold(0u32, |acc, &b| {
        hex::digit(b).map(|d| (acc << 4) | u32::from(d))
    })
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Writes `src` with every JSON escape decoded into `out` (cleared first).
pub fn json_unescape(src: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(src.len());
    let mut i = 0;
    while let Some(off) = src.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let at = i + off;
        out.extend_from_slice(&src[i..at]);
        let (decoded, used) = match src.get(at + 1) {
            Some(b'"') => (Some('"'), 2),
            Some(b'\\') => (Some('\\'), 2),
            Some(b'/') => (Some('/'), 2),
            Some(b'b') => (Some('\u{8}'), 2),
            Some(b'f') => (Some('\u{c}'), 2),
            Some(b'n') => (Some('\n'), 2),
            Some(b'r') => (Some('\r'), 2),
            Some(b't') => (Some('\t'), 2),
            Some(b'u' | b'U') => match src.get(at + 2..).and_then(hex4) {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let lo = match (src.get(at + 6), src.get(at + 7)) {
                        (Some(b'\\'), Some(b'u' | b'U')) => src.get(at + 8..).and_then(hex4),
                        _ => None,
                    };
                    match lo {
                        Some(lo @ 0xDC00..=0xDFFF) => {
                            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            (char::from_u32(c), 12)
                        }
                        _ => (Some(char::REPLACEMENT_CHARACTER), 6),
                    }
                }
                Some(0xDC00..=0xDFFF) => (Some(char::REPLACEMENT_CHARACTER), 6),
                Some(c) => (char::from_u32(c), 6),
                None => (None, 1),
            },
            _ => (None, 1),
        };
        match decoded {
            Some(c) => push_char(out, c),
            None => out.push(b'\\'),
        }
        i = at + used;
    }
    out.extend_from_slice(src.get(i..).unwrap_or(&[]));
}

/// Whether a form body holds anything to decode.
pub fn form_needs_view(body: &[u8]) -> bool {
    memchr::memchr2(b'%', b'+', body).is_some()
}

/// Writes the `application/x-www-form-urlencoded` decoding of `src` into `out` (cleared).
pub fn form_decode(src: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(src.len());
    let mut i = 0;
    while let Some(off) = src
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'%', b'+', rest))
    {
        let at = i + off;
        out.extend_from_slice(&src[i..at]);
        if src[at] == b'+' {
            out.push(b' ');
            i = at + 1;
            continue;
        }
        match (
            src.get(at + 1).and_then(|&b| hex::digit(b)),
            src.get(at + 2).and_then(|&b| hex::digit(b)),
        ) {
            (Some(h), Some(l)) => {
                out.push((h << 4) | l);
                i = at + 3;
            }
            _ => {
                out.push(b'%');
                i = at + 1;
            }
        }
    }
    out.extend_from_slice(src.get(i..).unwrap_or(&[]));
}

/// Base64 value of each byte (standard and URL-safe alphabets); 0xFF: not in the alphabet.
const B64: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    t[b'+' as usize] = 62;
    t[b'-' as usize] = 62;
    t[b'/' as usize] = 63;
    t[b'_' as usize] = 63;
    t
};

#[inline]
fn is_b64(b: u8) -> bool {
    B64[usize::from(b)] != 0xFF
}

/// Calls `f(start, end)` for every maximal run of base64-alphabet bytes at least
/// [`MIN_BASE64_RUN`] long, in order.
pub fn for_each_base64_run(src: &[u8], mut f: impl FnMut(usize, usize)) {
    let n = src.len();
    // invariant: `i == 0` or `src[i - 1]` is not in the alphabet, so no run starts before `i`
    // and reaches `i`
    let mut i = 0;
    while i + MIN_BASE64_RUN <= n {
        // a run of MIN_BASE64_RUN starting in i..=probe covers every byte from `i`'s run start
        // to `probe`: check backwards from `probe`, and on the first byte out of the alphabet
        // start again just after it (in prose that is a few bytes back, and the next probe is
        // almost MIN_BASE64_RUN further on)
        let probe = i + MIN_BASE64_RUN - 1;
        match src[i..=probe].iter().rposition(|&b| !is_b64(b)) {
            Some(j) => i += j + 1,
            None => {
                let mut e = probe + 1;
                while e < n && is_b64(src[e]) {
                    e += 1;
                }
                f(i, e);
                i = e + 1;
            }
        }
    }
}

/// Whether `run` holds both an upper- and a lower-case letter. Base64 of 12 or more bytes
/// nearly always does (a 16-character encoding without an upper-case letter has odds of about
/// 1 in 4,000, and the sender of a given secret cannot choose its characters), while the long
/// words of ordinary bodies do not: lower-case hex ids, UUIDs, `snake_case` names, timestamps.
fn mixed_case(run: &[u8]) -> bool {
    run.iter().any(u8::is_ascii_uppercase) && run.iter().any(u8::is_ascii_lowercase)
}

/// Decodes one run of alphabet bytes (no padding), appending to `out`.
fn decode_run(run: &[u8], out: &mut Vec<u8>) {
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &b in run {
        let v = B64[usize::from(b)];
        if v == 0xFF {
            continue;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
}

/// Writes the decoding of every long base64 run of `src` into `out` (cleared), each followed by
/// `\n`. Returns whether there was any.
pub fn base64_runs(src: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut any = false;
    for_each_base64_run(src, |s, e| {
        let run = &src[s..e];
        if !mixed_case(run) {
            return;
        }
        any = true;
        decode_run(run, out);
        out.push(b'\n');
    });
    any
}

/// The `boundary` parameter of a `multipart/*` media type, if `content_type` is one.
pub fn multipart_boundary(content_type: &[u8]) -> Option<&[u8]> {
    let mut params = content_type.split(|&b| b == b';');
    let media = params.next()?.trim_ascii();
    if media.len() < 10 || !media[..10].eq_ignore_ascii_case(b"multipart/") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p
            .trim_ascii()
            .split_at(p.trim_ascii().iter().position(|&b| b == b'=')?);
        if !name.trim_ascii().eq_ignore_ascii_case(b"boundary") {
            return None;
        }
        let v = value.get(1..)?.trim_ascii();
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        (!v.is_empty() && v.len() <= MAX_BOUNDARY).then_some(v)
    })
}

/// How a part's body is transfer-encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cte {
    Plain,
    Base64,
    QuotedPrintable,
}

fn part_cte(headers: &[u8]) -> Cte {
    for line in headers.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-transfer-encoding")
        {
            continue;
        }
        let v = line[colon + 1..].trim_ascii();
        if v.eq_ignore_ascii_case(b"base64") {
            return Cte::Base64;
        }
        if v.eq_ignore_ascii_case(b"quoted-printable") {
            return Cte::QuotedPrintable;
        }
    }
    Cte::Plain
}

fn quoted_printable(src: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(off) = src.get(i..).and_then(|rest| memchr::memchr(b'=', rest)) {
        let at = i + off;
        out.extend_from_slice(&src[i..at]);
        match (src.get(at + 1), src.get(at + 2)) {
            (Some(b'\r'), Some(b'\n')) => i = at + 3,
            (Some(b'\n'), _) => i = at + 2,
            (Some(&h), Some(&l)) => match (hex::digit(h), hex::digit(l)) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i = at + 3;
                }
                _ => {
                    out.push(b'=');
                    i = at + 1;
                }
            },
            _ => {
                out.push(b'=');
                i = at + 1;
            }
        }
    }
    out.extend_from_slice(src.get(i..).unwrap_or(&[]));
}

/// Writes the bodies of the parts of a multipart `body` delimited by `boundary` into `out`
/// (cleared), base64 and quoted-printable parts decoded, each followed by `\n`. Returns whether
/// some part was transfer-encoded (otherwise the view adds nothing to the raw bytes).
pub fn multipart(body: &[u8], boundary: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut delim = Vec::with_capacity(boundary.len() + 2);
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delim);
    let mut encoded = false;
    let Some(first) = finder.find(body) else {
        return false;
    };
    let mut pos = first + delim.len();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            break;
        }
        // the rest of the delimiter line
        let Some(eol) = memchr::memchr(b'\n', rest) else {
            break;
        };
        let part_start = pos + eol + 1;
        let part = &body[part_start..];
        let (next, part_len) = match finder.find(part) {
            Some(i) => (Some(part_start + i + delim.len()), i),
            None => (None, part.len()),
        };
        let part = &part[..part_len];
        // the CRLF before the next delimiter belongs to it
        let part = part
            .strip_suffix(b"\r\n")
            .or_else(|| part.strip_suffix(b"\n"))
            .unwrap_or(part);
        let (headers, content) = match memchr::memmem::find(part, b"\r\n\r\n") {
            Some(i) => (&part[..i], &part[i + 4..]),
            None => match memchr::memmem::find(part, b"\n\n") {
                Some(i) => (&part[..i], &part[i + 2..]),
                None => (&part[..0], part),
            },
        };
        match part_cte(headers) {
            Cte::Plain => out.extend_from_slice(content),
            Cte::Base64 => {
                encoded = true;
                decode_run(content, out);
            }
            Cte::QuotedPrintable => {
                encoded = true;
                quoted_printable(content, out);
            }
        }
        out.push(b'\n');
        match next {
            Some(n) => pos = n,
            None => break,
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unescape(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        json_unescape(s.as_bytes(), &mut out);
        out
    }

    #[test]
    fn json_unescape_table() {
        // (name, input, view)
        let table: &[(&str, &str, &[u8])] = &[
            ("plain", r#"{"a":"b"}"#, br#"{"a":"b"}"#),
            ("unicode upper", r#""\u0041KIA""#, br#""AKIA""#),
            (
                "unicode lower hex",
                r#""CONFIDENTI\u004cl""#,
                br#""CONFIDENTILl""#,
            ),
            ("unicode U", r#""\U0041""#, br#""A""#),
            ("digits", r#""\u0034111""#, br#""4111""#),
            ("non-ascii", r#""caf\u00e9""#, "\"caf\u{e9}\"".as_bytes()),
            (
                "surrogate pair",
                r#""\ud83d\ude00""#,
                "\"\u{1f600}\"".as_bytes(),
            ),
            (
                "lone high surrogate",
                r#""\ud83dx""#,
                "\"\u{fffd}x\"".as_bytes(),
            ),
            (
                "lone low surrogate",
                r#""\ude00""#,
                "\"\u{fffd}\"".as_bytes(),
            ),
            (
                "high then non-low",
                r#""\ud83d\u0041""#,
                "\"\u{fffd}A\"".as_bytes(),
            ),
            ("solidus", r#""a\/b""#, br#""a/b""#),
            ("backslash", r#""C:\\secret""#, br#""C:\secret""#),
            ("quote", r#""say \"hi\"""#, br#""say "hi"""#),
            ("controls", r#""\b\f\n\r\t""#, b"\"\x08\x0c\n\r\t\""),
            ("unknown escape kept", r#""\x41""#, br#""\x41""#),
            ("short unicode kept", r#""\u004""#, br#""\u004""#),
            ("bad hex kept", r#""\u00zz""#, br#""\u00zz""#),
            ("trailing backslash kept", "ab\\", b"ab\\"),
            ("escaped backslash then u", r#""\\u0041""#, br#""\u0041""#),
        ];
        for (name, input, want) in table {
            assert_eq!(unescape(input), *want, "{name}");
        }
    }

    #[test]
    fn json_trigger_table() {
        // (name, input, all_escapes, needs a view)
        let table: &[(&str, &str, bool, bool)] = &[
            ("none", r#"{"a":"b"}"#, false, false),
            ("newline only", r#"{"a":"b\nc \"q\""}"#, false, false),
            ("newline, literal needs all", r#"{"a":"b\nc"}"#, true, true),
            ("unicode", r#""\u0041""#, false, true),
            ("solidus", r#""a\/b""#, false, true),
            ("backslash", r#""a\\b""#, false, true),
            ("trailing backslash", "a\\", true, false),
        ];
        for (name, input, all, want) in table {
            assert_eq!(json_needs_view(input.as_bytes(), *all), *want, "{name}");
        }
    }

    #[test]
    fn form_decode_table() {
        let table: &[(&str, &str, &[u8])] = &[
            ("plain", "a=b&c=d", b"a=b&c=d"),
            ("plus", "q=top+secret", b"q=top secret"),
            ("escapes", "k=%41KIA%2f%2F", b"k=AKIA//"),
            ("lower hex", "k=%4b%4B", b"k=KK"),
            ("bad escape kept", "k=%zz%4", b"k=%zz%4"),
            ("percent at end", "k=%", b"k=%"),
            ("binary", "k=%00%ff", b"k=\x00\xff"),
            ("double encoding decoded once", "k=%2541", b"k=%41"),
        ];
        for (name, input, want) in table {
            let mut out = Vec::new();
            form_decode(input.as_bytes(), &mut out);
            assert_eq!(out, *want, "{name}");
        }
        assert!(form_needs_view(b"a+b"));
        assert!(!form_needs_view(b"a=b"));
    }

    #[test]
    fn base64_runs_table() {
        use base64::Engine;
        let std = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let akia = std.encode("AKIAIOSFODNN7EXAMPLE");
        // (name, input, decoded runs)
        let table: Vec<(&str, String, Vec<u8>)> = vec![
            ("prose", "the customer asked about invoices".into(), vec![]),
            ("hex id", "msg_3f2a9c0e1b7d4a65".into(), vec![]),
            (
                "uuid",
                "3f2a9c0e-1b7d-4a65-a123-0123456789ab".into(),
                vec![],
            ),
            ("upper hex", "3F2A9C0E1B7D4A65A1230123".into(), vec![]),
            ("snake case", "customer_account_history".into(), vec![]),
            (
                "aws key id",
                format!("{{\"k\":\"{akia}\"}}"),
                b"AKIAIOSFODNN7EXAMPLE\n".to_vec(),
            ),
            (
                "padded",
                std.encode("CONFIDENTIAL!"),
                b"CONFIDENTIAL!\n".to_vec(),
            ),
            (
                "url safe",
                url.encode(b"\xfb\xff\xfeconfidential"),
                b"\xfb\xff\xfeconfidential\n".to_vec(),
            ),
            (
                "data url",
                format!("data:image/png;base64,{}", std.encode("CONFIDENTIAL stuff")),
                b"CONFIDENTIAL stuff\n".to_vec(),
            ),
            (
                "15 chars is not a run",
                "QUJDREVGR0hJSktM".get(..15).unwrap_or("").into(),
                vec![],
            ),
            (
                "16 chars is",
                "QUJDREVGR0hJSktM".into(),
                b"ABCDEFGHIJKL\n".to_vec(),
            ),
            (
                "two runs",
                format!(
                    "{} {}",
                    std.encode("0123456789ab"),
                    std.encode("cdefghijklmn")
                ),
                b"0123456789ab\ncdefghijklmn\n".to_vec(),
            ),
            (
                "partial quantum",
                "QUJDREVGR0hJSktMTQ".into(),
                b"ABCDEFGHIJKLM\n".to_vec(),
            ),
        ];
        for (name, input, want) in table {
            let mut out = Vec::new();
            let any = base64_runs(input.as_bytes(), &mut out);
            assert_eq!(any, !want.is_empty(), "{name}");
            assert_eq!(out, want, "{name}");
        }
    }

    #[test]
    fn multipart_table() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nplain value\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"k.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\nQUtJQUlPU0ZP\r\nRE5ON0VYQU1Q\r\nTEU=\r\n--XyZ\r\ncontent-transfer-encoding: Quoted-Printable\r\n\r\nCONFIDENTI=41L=\r\n text\r\n--XyZ--\r\nepilogue";
        // (name, content type, boundary)
        type Row = (&'static str, &'static [u8], Option<&'static [u8]>);
        let types: &[Row] = &[
            (
                "form-data",
                b"multipart/form-data; boundary=XyZ",
                Some(b"XyZ"),
            ),
            (
                "quoted",
                b"Multipart/Mixed; charset=x; boundary=\"XyZ\"",
                Some(b"XyZ"),
            ),
            (
                "spaces",
                b"multipart/form-data ; boundary = XyZ ",
                Some(b"XyZ"),
            ),
            ("not multipart", b"application/json; boundary=XyZ", None),
            ("no boundary", b"multipart/form-data", None),
            ("empty boundary", b"multipart/form-data; boundary=", None),
        ];
        for (name, ct, want) in types {
            assert_eq!(multipart_boundary(ct), *want, "{name}");
        }
        let mut out = Vec::new();
        assert!(multipart(body, b"XyZ", &mut out));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "plain value\nAKIAIOSFODNN7EXAMPLE\nCONFIDENTIAL text\n"
        );
        // no transfer-encoded part: nothing the raw bytes do not already show
        let plain = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--b--\r\n";
        assert!(!multipart(plain, b"b", &mut out));
        // truncated and boundary-less bodies never panic
        assert!(!multipart(b"--b", b"b", &mut out));
        assert!(!multipart(b"no delimiter", b"b", &mut out));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Escaping any string as JSON (every char as \uXXXX or the short escapes) and
        /// unescaping it gives the string back.
        #[test]
        fn json_unescape_inverts_json_escaping(s in "\\PC{0,40}", all_u in any::<bool>()) {
            let mut esc = String::new();
            for c in s.chars() {
                if all_u {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        esc.push_str(&format!("\\u{:04x}", u));
                    }
                } else {
                    let j = serde_json::to_string(&c.to_string()).unwrap_or_default();
                    esc.push_str(j.get(1..j.len().saturating_sub(1)).unwrap_or(""));
                }
            }
            prop_assert_eq!(unescape(&esc), s.as_bytes());
        }

        #[test]
        fn views_never_grow_and_never_panic(body in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut out = Vec::new();
            json_unescape(&body, &mut out);
            prop_assert!(out.len() <= body.len());
            form_decode(&body, &mut out);
            prop_assert!(out.len() <= body.len());
            base64_runs(&body, &mut out);
            prop_assert!(out.len() <= body.len());
            multipart(&body, b"b", &mut out);
            prop_assert!(out.len() <= body.len());
        }

        #[test]
        fn form_decode_inverts_form_encoding(s in prop::collection::vec(any::<u8>(), 0..100)) {
            let enc: String = s.iter().map(|&b| match b {
                b' ' => "+".to_string(),
                b if b.is_ascii_alphanumeric() => (b as char).to_string(),
                b => format!("%{b:02X}"),
            }).collect();
            let mut out = Vec::new();
            form_decode(enc.as_bytes(), &mut out);
            prop_assert_eq!(out, s);
        }

        /// Every long run is found, whatever surrounds it, and decoded exactly.
        #[test]
        fn base64_of_anything_embedded_in_prose_is_decoded(
            data in prop::collection::vec(any::<u8>(), 12..80),
            before in "[a-z ]{0,30}",
            after in "[a-z ]{0,30}",
            url in any::<bool>(),
        ) {
            use base64::Engine;
            let enc = if url {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data)
            } else {
                base64::engine::general_purpose::STANDARD.encode(&data)
            };
            // (about 1 encoding in 4,000 of 12 bytes has no upper-case letter and is skipped)
            prop_assume!(mixed_case(enc.as_bytes()));
            let body = format!("{before} \"{enc}\" {after}");
            let mut out = Vec::new();
            prop_assert!(base64_runs(body.as_bytes(), &mut out));
            prop_assert!(out.windows(data.len()).any(|w| w == data.as_slice()));
        }

        /// The skipping run finder finds exactly the runs a byte-by-byte search finds.
        #[test]
        fn run_finder_matches_naive(body in prop::collection::vec(prop_oneof![
            Just(b'A'), Just(b'z'), Just(b'0'), Just(b'+'), Just(b'_'), Just(b' '), Just(b'"'), Just(b'=')
        ], 0..300)) {
            let mut fast = Vec::new();
            for_each_base64_run(&body, |s, e| fast.push((s, e)));
            let mut naive = Vec::new();
            let mut i = 0;
            while i < body.len() {
                if is_b64(body[i]) {
                    let s = i;
                    while i < body.len() && is_b64(body[i]) { i += 1; }
                    if i - s >= MIN_BASE64_RUN { naive.push((s, i)); }
                } else {
                    i += 1;
                }
            }
            prop_assert_eq!(fast, naive);
        }
    }
}
