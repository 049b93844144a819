//! The path canonicaliser: a pure function from the raw path of a request target (without the
//! query) to the one canonical form that rules are matched against and that is forwarded.
//!
//! Rules (SPEC "Config"):
//! - the path is absolute (`/...`) and at most [`MAX_PATH_LEN`] bytes;
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!   escape is kept with upper-case hex digits;
//! - escapes that would change the path's structure or smuggle bytes are refused: `%2F` (`/`),
//!   `%5C` (`\`), `%00`, other control characters; a raw `\`, NUL, control character, space or
//!   `#` is refused as well;
//! - raw characters that may not appear in a path (`"<>^`{|}` and every byte ≥ 0x80) are
//!   percent-encoded; after decoding, the path must be valid UTF-8;
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4); a dot segment spelt with an escape
//!   (`%2e`, `.%2E`, ...) is refused, and so is a `..` that would climb above the root;
//! - empty segments are collapsed (`//` → `/`); a trailing slash is kept (one), as is the slash
//!   that a trailing `.` or `..` leaves.
//!
//! - path parameters (issue 12): Tomcat, Jetty and Spring cut every segment at its first `;`
//!   before resolving dot segments, so `/v1/accounts/..;/admin` reaches `/v1/admin` there while
//!   a proxy that keeps `..;` as a name would match it against `/v1/accounts/**`. The policy is
//!   [`PathParams`], per proxy (`path_params`): `Refuse` (the default: any `;` in a segment,
//!   raw or as `%3B`, is a 400) or `Strip` (each segment is cut at its first `;`/`%3B` before
//!   dot segments are resolved, as Tomcat does, and the cut form is what is matched and
//!   forwarded). Either way the forwarded path holds no `;`, so no backend can read a parameter
//!   the rules did not see. `Keep` (a `;` is an ordinary character) is only routing's first
//!   look, to find which proxy's policy applies;
//! - double encoding of a structural byte (`%252e`, `%252F`, `%255c`, `%253B`, `%2525`) is
//!   refused: a backend or a second proxy that decodes twice (IIS did) would see `.`, `/`, `\`,
//!   `;`; `%u` escapes (IIS) are malformed escapes here;
//! - an NTFS stream name (`:$`, raw or escaped: `admin::$INDEX_ALLOCATION`, `x.aspx::$DATA`) is
//!   refused: IIS and ASP.NET on Windows open the named file or directory through it.
//!
//! Not canonicalised, by design (documented in the README): letter case, and the trailing dots
//! and spaces Windows drops from names. Rules match case-sensitively on the exact segment, so on
//! case-insensitive backends (IIS, ASP.NET, Express's default router) an allow rule admits only
//! its exact spelling (other spellings fall to `default_effect`), but a deny rule does not cover
//! `/ADMIN` or `/admin.`: write allow-lists (`default_effect = "deny"`) for those backends.
//!
//! The function is idempotent: the canonical form of a canonical path is itself.
use crate::util::hex;

/// Longest raw path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 8192;

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonError {
    NotAbsolute,
    EncodedSlash,
    Backslash,
    Nul,
    ControlChar,
    EncodedDotSegment,
    AboveRoot,
    BadPercent,
    InvalidUtf8,
    Fragment,
    TooLong,
    /// A `;` (or `%3B`) in a segment under [`PathParams::Refuse`].
    PathParameter,
    /// `%25` followed by the escape of `.`, `/`, `\`, `;` or `%`.
    DoubleEncoded,
    /// `:$` in a segment (an NTFS stream name).
    StreamName,
}

/// What a `;` in a path segment means (`path_params` in a proxy's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParams {
    /// A `;` or `%3B` anywhere in the path is refused (400).
    #[default]
    Refuse,
    /// Each segment is cut at its first `;` or `%3B` before dot segments are resolved (what
    /// Tomcat, Jetty and Spring do): `/a/..;x/b` is `/b`, `/a;v=1/b` is `/a/b`.
    Strip,
    /// A `;` is an ordinary sub-delimiter, kept. Never used for the path that is matched and
    /// forwarded; routing uses it to find the proxy whose policy then applies.
    Keep,
}

impl PathParams {
    pub fn from_name(s: &str) -> Option<PathParams> {
        match s {
            "refuse" => Some(PathParams::Refuse),
            "strip" => Some(PathParams::Strip),
            _ => None,
        }
    }
}

impl CanonError {
    /// The message that goes into the 400's JSON error.
    pub const fn message(self) -> &'static str {
        match self {
            CanonError::NotAbsolute => "path must start with /",
            CanonError::EncodedSlash => "path holds an encoded slash (%2F)",
            CanonError::Backslash => "path holds a backslash",
            CanonError::Nul => "path holds a NUL byte",
            CanonError::ControlChar => "path holds a control character or space",
            CanonError::EncodedDotSegment => "path holds a percent-encoded dot segment",
            CanonError::AboveRoot => "path climbs above the root with ..",
            CanonError::BadPercent => "path holds a malformed percent-escape",
            CanonError::InvalidUtf8 => "path is not valid UTF-8 once decoded",
            CanonError::Fragment => "request target holds a fragment (#)",
            CanonError::TooLong => "path is too long",
            CanonError::PathParameter => "path segment holds a parameter (;)",
            CanonError::DoubleEncoded => "path holds a double-encoded character (%25..)",
            CanonError::StreamName => "path holds a stream name (:$)",
        }
    }
}

impl std::fmt::Display for CanonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for CanonError {}

#[inline]
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Raw characters that RFC 3986 does not allow in a path but that clients send anyway; they are
/// forwarded percent-encoded.
#[inline]
fn must_encode(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}') || b >= 0x80
}

#[inline]
fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(hex::UPPER[usize::from(b >> 4)] as char);
    out.push(hex::UPPER[usize::from(b & 0xf)] as char);
}

/// Incremental UTF-8 check over the decoded bytes of one segment.
#[derive(Default)]
struct Utf8 {
    buf: [u8; 4],
    have: usize,
    want: usize,
}

impl Utf8 {
    #[inline]
    fn feed(&mut self, b: u8) -> Result<(), CanonError> {
        if self.want == 0 {
            if b < 0x80 {
                return Ok(());
            }
            self.want = match b {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return Err(CanonError::InvalidUtf8),
            };
            self.buf[0] = b;
            self.have = 1;
            return Ok(());
        }
        if !(0x80..=0xBF).contains(&b) {
            return Err(CanonError::InvalidUtf8);
        }
        self.buf[self.have] = b;
        self.have += 1;
        if self.have == self.want {
            // overlong forms, surrogates and values above U+10FFFF are caught here
            std::str::from_utf8(&self.buf[..self.want]).map_err(|_| CanonError::InvalidUtf8)?;
            self.want = 0;
            self.have = 0;
        }
        Ok(())
    }

    #[inline]
    fn finish(&mut self) -> Result<(), CanonError> {
        if self.want != 0 {
            return Err(CanonError::InvalidUtf8);
        }
        Ok(())
    }
}

/// Where the parameters of segment `seg` start: its first `;` or `%3B`.
fn param_start(seg: &[u8]) -> Option<usize> {
    seg.iter().enumerate().find_map(|(i, &b)| match b {
        b';' => Some(i),
        b'%' if seg
            .get(i + 1..i + 3)
            .is_some_and(|e| e.eq_ignore_ascii_case(b"3b")) =>
        {
            Some(i)
        }
        _ => None,
    })
}

/// Whether the escape that `%25` starts at `seg[i]` is followed by (`%25` + hex pair) the
/// escape of a structural byte.
fn double_encoded(seg: &[u8], i: usize) -> bool {
    match (seg.get(i + 3), seg.get(i + 4)) {
        (Some(&h), Some(&l)) => match (hex::digit(h), hex::digit(l)) {
            (Some(h), Some(l)) => matches!((h << 4) | l, b'.' | b'/' | b'\\' | b';' | b'%'),
            _ => false,
        },
        _ => false,
    }
}

/// Appends the canonical form of the segment `seg` (no slashes in it) to `out`. Returns whether
/// any `.` in it was spelt as an escape.
fn push_segment(seg: &[u8], params: PathParams, out: &mut String) -> Result<bool, CanonError> {
    let seg = match (params, param_start(seg)) {
        (_, None) | (PathParams::Keep, _) => seg,
        (PathParams::Refuse, Some(_)) => return Err(CanonError::PathParameter),
        (PathParams::Strip, Some(i)) => &seg[..i],
    };
    let start = out.len();
    let mut utf8 = Utf8::default();
    let mut encoded_dot = false;
    // the previous decoded byte was a ':'
    let mut colon = false;
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let (h, l) = match (seg.get(i + 1), seg.get(i + 2)) {
                (Some(&h), Some(&l)) => (h, l),
                _ => return Err(CanonError::BadPercent),
            };
            let v = match (hex::digit(h), hex::digit(l)) {
                (Some(h), Some(l)) => (h << 4) | l,
                _ => return Err(CanonError::BadPercent),
            };
            match v {
                b'/' => return Err(CanonError::EncodedSlash),
                b'\\' => return Err(CanonError::Backslash),
                0 => return Err(CanonError::Nul),
                0x01..=0x1f | 0x7f => return Err(CanonError::ControlChar),
                b'%' if double_encoded(seg, i) => return Err(CanonError::DoubleEncoded),
                b'$' if colon => return Err(CanonError::StreamName),
                _ => {}
            }
            colon = v == b':';
            utf8.feed(v)?;
            if is_unreserved(v) {
                encoded_dot |= v == b'.';
                out.push(v as char);
            } else {
                push_escaped(out, v);
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(CanonError::Backslash),
            0 => return Err(CanonError::Nul),
            b'#' => return Err(CanonError::Fragment),
            0x01..=0x20 | 0x7f => return Err(CanonError::ControlChar),
            b'$' if colon => return Err(CanonError::StreamName),
            _ => {}
        }
        colon = b == b':';
        utf8.feed(b)?;
        if must_encode(b) {
            push_escaped(out, b);
        } else {
            out.push(b as char);
        }
        i += 1;
    }
    utf8.finish()?;
    // A double encoding can also be spelt across escapes (`%25` + `2%65` is `%252e` once
    // canonical): look at the output too, so that a canonical path is its own canonical form.
    let written = &out.as_bytes()[start..];
    if (0..written.len()).any(|j| written[j..].starts_with(b"%25") && double_encoded(written, j)) {
        return Err(CanonError::DoubleEncoded);
    }
    Ok(encoded_dot)
}

/// Appends the canonical form of `path` to `out`, with the default [`PathParams::Refuse`]. On
/// error, `out` may hold a partial result.
pub fn canonicalize_into(path: &[u8], out: &mut String) -> Result<(), CanonError> {
    canonicalize_with(path, PathParams::Refuse, out)
}

/// Appends the canonical form of `path` under the path-parameter policy `params` to `out`.
/// On error, `out` may hold a partial result.
pub fn canonicalize_with(
    path: &[u8],
    params: PathParams,
    out: &mut String,
) -> Result<(), CanonError> {
    if path.len() > MAX_PATH_LEN {
        return Err(CanonError::TooLong);
    }
    let rest = match path.split_first() {
        Some((b'/', rest)) => rest,
        _ => return Err(CanonError::NotAbsolute),
    };
    let base = out.len();
    // whether the output must end with a slash (empty last segment, or a dot segment last)
    let mut trailing = false;
    for seg in rest.split(|&b| b == b'/') {
        let start = out.len();
        out.push('/');
        let encoded_dot = push_segment(seg, params, out)?;
        let s = &out[start + 1..];
        let dots = match s {
            "" => 0,
            "." => 1,
            ".." => 2,
            _ => {
                trailing = false;
                continue;
            }
        };
        if encoded_dot {
            return Err(CanonError::EncodedDotSegment);
        }
        out.truncate(start);
        if dots == 2 {
            match out[base..].rfind('/') {
                Some(i) => out.truncate(base + i),
                None => return Err(CanonError::AboveRoot),
            }
        }
        trailing = true;
    }
    if trailing || out.len() == base {
        out.push('/');
    }
    Ok(())
}

/// The canonical form of `path`.
pub fn canonicalize(path: &[u8]) -> Result<String, CanonError> {
    let mut s = String::with_capacity(path.len() + 1);
    canonicalize_into(path, &mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CanonError::*;
    use proptest::prelude::*;

    /// (name, input, canonical form or error)
    const TABLE: &[(&str, &str, Result<&str, CanonError>)] = &[
        ("root", "/", Ok("/")),
        ("simple", "/a/b", Ok("/a/b")),
        ("trailing_slash_kept", "/a/b/", Ok("/a/b/")),
        ("double_slash_collapsed", "//a//b", Ok("/a/b")),
        ("many_slashes", "/a///b////", Ok("/a/b/")),
        ("only_slashes", "////", Ok("/")),
        ("dot", "/a/./b", Ok("/a/b")),
        ("leading_dot", "/./a", Ok("/a")),
        ("trailing_dot", "/a/.", Ok("/a/")),
        ("dotdot", "/a/b/../c", Ok("/a/c")),
        ("trailing_dotdot", "/a/b/..", Ok("/a/")),
        ("dotdot_to_root", "/a/..", Ok("/")),
        ("dotdot_twice", "/a/b/../../c", Ok("/c")),
        ("dotdot_after_empty", "/a//../b", Ok("/b")),
        ("dotdot_above_root", "/..", Err(AboveRoot)),
        ("dotdot_above_root_later", "/a/../../b", Err(AboveRoot)),
        ("dot_then_dotdot_above", "/./..", Err(AboveRoot)),
        ("three_dots_is_a_name", "/a/.../b", Ok("/a/.../b")),
        ("dot_prefix_is_a_name", "/a/.b/..c", Ok("/a/.b/..c")),
        ("dotdot_suffix_is_a_name", "/a/b../c", Ok("/a/b../c")),
        ("decode_tilde_lower", "/%7e", Ok("/~")),
        ("decode_tilde_upper", "/%7E", Ok("/~")),
        ("decode_alpha", "/%41%62c", Ok("/Abc")),
        ("decode_digit", "/v%31", Ok("/v1")),
        ("decode_marks", "/a%2Db%2E%5Fc", Ok("/a-b._c")),
        ("keep_colon_upper", "/a%3ab", Ok("/a%3Ab")),
        ("keep_space", "/a%20b", Ok("/a%20b")),
        ("keep_percent", "/100%25", Ok("/100%25")),
        ("keep_question", "/a%3fb", Ok("/a%3Fb")),
        ("keep_hash", "/a%23b", Ok("/a%23b")),
        ("keep_utf8_escape", "/%c3%a9", Ok("/%C3%A9")),
        ("encode_raw_utf8", "/\u{e9}t\u{e9}", Ok("/%C3%A9t%C3%A9")),
        ("encode_raw_emoji", "/\u{1f600}", Ok("/%F0%9F%98%80")),
        ("encode_raw_quote", "/a\"b", Ok("/a%22b")),
        ("encode_raw_braces", "/{id}", Ok("/%7Bid%7D")),
        ("encode_raw_pipe_caret", "/a|b^c", Ok("/a%7Cb%5Ec")),
        ("encode_raw_angle_backtick", "/<a>`", Ok("/%3Ca%3E%60")),
        (
            "raw_subdelims_kept",
            "/a!$&'()*+,=:@b",
            Ok("/a!$&'()*+,=:@b"),
        ),
        ("raw_brackets_kept", "/[x]", Ok("/[x]")),
        ("not_absolute_empty", "", Err(NotAbsolute)),
        ("not_absolute_relative", "a/b", Err(NotAbsolute)),
        ("not_absolute_star", "*", Err(NotAbsolute)),
        ("encoded_slash_lower", "/a%2fb", Err(EncodedSlash)),
        ("encoded_slash_upper", "/a%2Fb", Err(EncodedSlash)),
        ("encoded_backslash", "/a%5cb", Err(Backslash)),
        ("raw_backslash", "/a\\b", Err(Backslash)),
        ("encoded_nul", "/a%00b", Err(Nul)),
        ("raw_nul", "/a\0b", Err(Nul)),
        ("encoded_control", "/a%0ab", Err(ControlChar)),
        ("encoded_del", "/a%7fb", Err(ControlChar)),
        ("raw_tab", "/a\tb", Err(ControlChar)),
        ("raw_space", "/a b", Err(ControlChar)),
        ("raw_del", "/a\x7fb", Err(ControlChar)),
        ("raw_fragment", "/a#b", Err(Fragment)),
        ("encoded_dotdot", "/a/%2e%2e/b", Err(EncodedDotSegment)),
        ("encoded_dotdot_upper", "/a/%2E%2E", Err(EncodedDotSegment)),
        ("half_encoded_dotdot", "/a/.%2e/b", Err(EncodedDotSegment)),
        ("half_encoded_dotdot_2", "/a/%2e./b", Err(EncodedDotSegment)),
        ("encoded_dot", "/a/%2e/b", Err(EncodedDotSegment)),
        ("encoded_dot_in_name_ok", "/a%2eb", Ok("/a.b")),
        ("encoded_dots_in_name_ok", "/%2e%2e%2e", Ok("/...")),
        ("bad_percent_short", "/a%2", Err(BadPercent)),
        ("bad_percent_end", "/a%", Err(BadPercent)),
        ("bad_percent_nonhex", "/a%zz", Err(BadPercent)),
        ("bad_percent_half_hex", "/a%4g", Err(BadPercent)),
        ("bad_percent_before_slash", "/a%/b", Err(BadPercent)),
        ("invalid_utf8_escape", "/%ff", Err(InvalidUtf8)),
        ("invalid_utf8_lone_continuation", "/%80", Err(InvalidUtf8)),
        ("invalid_utf8_truncated", "/%c3", Err(InvalidUtf8)),
        ("invalid_utf8_split_by_slash", "/%c3/%a9", Err(InvalidUtf8)),
        ("invalid_utf8_overlong_slash", "/%c0%af", Err(InvalidUtf8)),
        ("invalid_utf8_overlong_3", "/%e0%80%af", Err(InvalidUtf8)),
        ("invalid_utf8_surrogate", "/%ed%a0%80", Err(InvalidUtf8)),
        ("invalid_utf8_above_max", "/%f4%90%80%80", Err(InvalidUtf8)),
        (
            "mixed_raw_and_escaped_utf8",
            "/\u{e9}%C3%A9",
            Ok("/%C3%A9%C3%A9"),
        ),
    ];

    #[test]
    fn canonicalisation_table() {
        assert!(TABLE.len() >= 60);
        for (name, input, want) in TABLE {
            let got = canonicalize(input.as_bytes());
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{name}");
            if let Ok(c) = &got {
                assert_eq!(
                    canonicalize(c.as_bytes()).as_ref(),
                    Ok(c),
                    "{name}: idempotent"
                );
            }
        }
    }

    /// Issue 12: path parameters and the backend tricks around them, under each policy.
    /// (name, input, with `Refuse`, with `Strip`)
    #[allow(clippy::type_complexity)]
    const PARAMS: &[(
        &str,
        &str,
        Result<&str, CanonError>,
        Result<&str, CanonError>,
    )] = &[
        (
            "tomcat_dotdot_param",
            "/v1/accounts/..;/admin",
            Err(PathParameter),
            Ok("/v1/admin"),
        ),
        (
            "tomcat_dotdot_param_value",
            "/v1/accounts/..;x=1/admin",
            Err(PathParameter),
            Ok("/v1/admin"),
        ),
        (
            "tomcat_dot_param",
            "/v1/accounts/.;/x",
            Err(PathParameter),
            Ok("/v1/accounts/x"),
        ),
        (
            "encoded_semicolon",
            "/v1/accounts/..%3B/admin",
            Err(PathParameter),
            Ok("/v1/admin"),
        ),
        (
            "encoded_semicolon_lower",
            "/v1/accounts/..%3b/admin",
            Err(PathParameter),
            Ok("/v1/admin"),
        ),
        (
            "encoded_dotdot_param",
            "/v1/accounts/%2e%2e;/admin",
            Err(PathParameter),
            Err(EncodedDotSegment),
        ),
        (
            "half_encoded_dotdot_param",
            "/v1/accounts/.%2E;x/admin",
            Err(PathParameter),
            Err(EncodedDotSegment),
        ),
        (
            "param_above_root",
            "/..;/x",
            Err(PathParameter),
            Err(AboveRoot),
        ),
        (
            "jsessionid",
            "/v1/accounts;jsessionid=abc/42",
            Err(PathParameter),
            Ok("/v1/accounts/42"),
        ),
        (
            "matrix_params",
            "/v1/cars;color=red;year=2020/list",
            Err(PathParameter),
            Ok("/v1/cars/list"),
        ),
        (
            "param_only_segment",
            "/v1/;x/accounts",
            Err(PathParameter),
            Ok("/v1/accounts"),
        ),
        (
            "trailing_param",
            "/v1/accounts;",
            Err(PathParameter),
            Ok("/v1/accounts"),
        ),
        (
            "param_holding_slash_escape",
            "/v1/a;%2F/b",
            Err(PathParameter),
            Ok("/v1/a/b"),
        ),
        (
            "param_after_trailing_dotdot",
            "/v1/a/b/..;",
            Err(PathParameter),
            Ok("/v1/a/"),
        ),
        (
            "backslash_param",
            "/v1/a\\..;/b",
            Err(PathParameter),
            Err(Backslash),
        ),
        (
            "encoded_backslash_dotdot",
            "/v1/a/..%5c..%5cadmin",
            Err(Backslash),
            Err(Backslash),
        ),
        (
            "iis_unicode_escape",
            "/v1/a/%u002e%u002e/b",
            Err(BadPercent),
            Err(BadPercent),
        ),
        (
            "double_encoded_dot",
            "/v1/a/%252e%252e/b",
            Err(DoubleEncoded),
            Err(DoubleEncoded),
        ),
        (
            "double_encoding_spelt_across_escapes",
            "/v1/a/%252%65/b",
            Err(DoubleEncoded),
            Err(DoubleEncoded),
        ),
        (
            "double_encoded_percent_across_escapes",
            "/v0+%252%351$",
            Err(DoubleEncoded),
            Err(DoubleEncoded),
        ),
        (
            "double_encoded_slash",
            "/v1/a%252Fb",
            Err(DoubleEncoded),
            Err(DoubleEncoded),
        ),
        (
            "double_encoded_backslash",
            "/v1/a%255cb",
            Err(DoubleEncoded),
            Err(DoubleEncoded),
        ),
        (
            "double_encoded_semicolon",
            "/v1/a/..%253B/b",
            Err(DoubleEncoded),
            Err(DoubleEncoded),
        ),
        (
            "triple_encoded",
            "/v1/a/%25252e",
            Err(DoubleEncoded),
            Err(DoubleEncoded),
        ),
        (
            "percent_literal_ok",
            "/v1/100%25off",
            Ok("/v1/100%25off"),
            Ok("/v1/100%25off"),
        ),
        (
            "percent_then_letter_ok",
            "/v1/100%25ab",
            Ok("/v1/100%25ab"),
            Ok("/v1/100%25ab"),
        ),
        (
            "iis_data_stream",
            "/v1/a/x.aspx::$DATA",
            Err(StreamName),
            Err(StreamName),
        ),
        (
            "iis_index_allocation",
            "/v1/admin::$INDEX_ALLOCATION/x",
            Err(StreamName),
            Err(StreamName),
        ),
        (
            "iis_stream_escaped_dollar",
            "/v1/x:%24DATA",
            Err(StreamName),
            Err(StreamName),
        ),
        (
            "iis_stream_escaped_colon",
            "/v1/x%3A$DATA",
            Err(StreamName),
            Err(StreamName),
        ),
        (
            "google_custom_method_ok",
            "/v1/projects/p:batchGet",
            Ok("/v1/projects/p:batchGet"),
            Ok("/v1/projects/p:batchGet"),
        ),
        (
            "dollar_ok",
            "/v1/$metadata",
            Ok("/v1/$metadata"),
            Ok("/v1/$metadata"),
        ),
        (
            "stream_in_param_stripped",
            "/v1/a;:$DATA/b",
            Err(PathParameter),
            Ok("/v1/a/b"),
        ),
    ];

    #[test]
    fn path_parameter_table() {
        assert!(PARAMS.len() >= 30);
        for (name, input, refuse, strip) in PARAMS {
            for (mode, want) in [(PathParams::Refuse, refuse), (PathParams::Strip, strip)] {
                let mut got = String::new();
                let r = canonicalize_with(input.as_bytes(), mode, &mut got).map(|()| got);
                assert_eq!(r.as_deref().map_err(|e| *e), *want, "{name} {mode:?}");
                if let Ok(c) = &r {
                    assert!(
                        !c.contains(';') && !c.to_ascii_lowercase().contains("%3b"),
                        "{name}"
                    );
                    let mut again = String::new();
                    canonicalize_with(c.as_bytes(), mode, &mut again).unwrap();
                    assert_eq!(&again, c, "{name} {mode:?}: idempotent");
                }
            }
        }
        // the default is Refuse, and `canonicalize` uses it
        assert_eq!(PathParams::default(), PathParams::Refuse);
        assert_eq!(canonicalize(b"/a/..;/b"), Err(PathParameter));
        // Keep (routing's first look) treats `..;` as a name: the bug this policy closes
        let mut kept = String::new();
        canonicalize_with(b"/v1/accounts/..;/admin", PathParams::Keep, &mut kept).unwrap();
        assert_eq!(kept, "/v1/accounts/..;/admin");
        assert_eq!(tomcat(kept.as_bytes()), "/v1/admin");
        assert_eq!(PathParams::from_name("strip"), Some(PathParams::Strip));
        assert_eq!(PathParams::from_name("keep"), None);
    }

    /// A model of how Tomcat / Jetty / Spring resolve a received path: cut each segment at its
    /// first `;`, percent-decode it, then resolve dot segments and collapse empty ones.
    fn tomcat(path: &[u8]) -> String {
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let s = std::str::from_utf8(path).unwrap_or("");
        let parts: Vec<&str> = s.split('/').skip(1).collect();
        let last = parts.len().saturating_sub(1);
        let mut trailing = false;
        for (i, seg) in parts.iter().enumerate() {
            let seg = seg.split(';').next().unwrap_or("");
            let mut d = Vec::new();
            let b = seg.as_bytes();
            let mut j = 0;
            while j < b.len() {
                if b[j] == b'%'
                    && let (Some(h), Some(l)) = (
                        b.get(j + 1).and_then(|&c| hex::digit(c)),
                        b.get(j + 2).and_then(|&c| hex::digit(c)),
                    )
                {
                    d.push((h << 4) | l);
                    j += 3;
                    continue;
                }
                d.push(b[j]);
                j += 1;
            }
            trailing = i == last;
            match &d[..] {
                b"" => {}
                b"." => {}
                b".." => {
                    segs.pop();
                }
                _ => {
                    trailing = false;
                    segs.push(d);
                }
            }
        }
        let mut out = String::new();
        for s in &segs {
            out.push('/');
            out.push_str(&String::from_utf8_lossy(s));
        }
        if trailing || out.is_empty() {
            out.push('/');
        }
        out
    }

    /// The decoded form of a canonical path (what a backend that decodes once sees).
    fn decoded(c: &str) -> String {
        tomcat(c.as_bytes())
    }

    #[test]
    fn raw_invalid_utf8_is_refused() {
        assert_eq!(canonicalize(b"/a\xffb"), Err(InvalidUtf8));
        assert_eq!(canonicalize(b"/\xc3"), Err(InvalidUtf8));
        assert_eq!(canonicalize(b"/\xc3%a9"), Ok("/%C3%A9".to_string()));
    }

    #[test]
    fn length_limit() {
        let mut p = vec![b'/'];
        p.resize(MAX_PATH_LEN, b'a');
        assert!(canonicalize(&p).is_ok());
        p.push(b'a');
        assert_eq!(canonicalize(&p), Err(TooLong));
    }

    #[test]
    fn appends_after_existing_content() {
        let mut s = String::from("prefix");
        canonicalize_into(b"/a/../b", &mut s).unwrap();
        assert_eq!(s, "prefix/b");
        let mut s = String::from("/x");
        assert_eq!(canonicalize_into(b"/..", &mut s), Err(AboveRoot));
    }

    fn path_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"/".to_vec()),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(b"%2e".to_vec()),
            Just(b"%2F".to_vec()),
            Just(b"%41".to_vec()),
            Just(b"%c3%a9".to_vec()),
            Just(b"%".to_vec()),
            Just("\u{e9}".as_bytes().to_vec()),
            "[a-zA-Z0-9._~!$&'()*+,;=:@-]{1,4}".prop_map(|s| s.into_bytes()),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(piece, 0..16).prop_map(|v| {
            let mut p = vec![b'/'];
            for x in v {
                p.extend(x);
            }
            p
        })
    }

    fn param_path_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"/".to_vec()),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(b";".to_vec()),
            Just(b"%3B".to_vec()),
            Just(b"%3b".to_vec()),
            Just(b"=x".to_vec()),
            Just(b"%2e".to_vec()),
            Just(b"%41".to_vec()),
            "[a-z]{1,3}".prop_map(|s| s.into_bytes()),
        ];
        prop::collection::vec(piece, 0..14).prop_map(|v| {
            let mut p = vec![b'/'];
            for x in v {
                p.extend(x);
            }
            p
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_any_bytes(p in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = canonicalize(&p);
        }

        #[test]
        fn output_is_canonical_and_idempotent(p in path_strategy()) {
            if let Ok(c) = canonicalize(&p) {
                prop_assert!(c.starts_with('/'));
                prop_assert!(!c.contains("//"), "{c}");
                prop_assert!(!c.contains("/./") && !c.ends_with("/."), "{c}");
                prop_assert!(!c.contains("/../") && !c.ends_with("/.."), "{c}");
                prop_assert!(c.bytes().all(|b| b.is_ascii_graphic()), "{c}");
                prop_assert!(!c.contains('\\') && !c.contains('#'), "{c}");
                prop_assert_eq!(canonicalize(c.as_bytes()), Ok(c.clone()));
            }
        }

        /// Issue 12: whatever the policy, the path a Tomcat-like backend resolves from the
        /// forwarded (canonical) path is the canonical path itself, decoded: a rule that admits
        /// the canonical path admits what the backend serves. (With `Keep`, `/a/..;/b` breaks it.)
        #[test]
        fn backend_resolves_the_checked_path(p in param_path_strategy(), strip in any::<bool>()) {
            let mode = if strip { PathParams::Strip } else { PathParams::Refuse };
            let mut c = String::new();
            if canonicalize_with(&p, mode, &mut c).is_ok() {
                prop_assert!(!c.contains(';'), "{c}");
                prop_assert_eq!(tomcat(c.as_bytes()), decoded(&c), "{}", c);
                let mut again = String::new();
                prop_assert!(canonicalize_with(c.as_bytes(), mode, &mut again).is_ok());
                prop_assert_eq!(&again, &c);
                // Strip is what Tomcat resolves from the raw path (Tomcat reads `%3B` as a
                // character of the name; Strip cuts there too, which only ever shortens)
                if strip && !p.to_ascii_lowercase().windows(3).any(|w| w == b"%3b") {
                    prop_assert_eq!(decoded(&c), tomcat(&p));
                }
            }
        }

        #[test]
        fn refuse_accepts_exactly_the_paths_without_parameters(p in param_path_strategy()) {
            let has = p.split(|&b| b == b'/').any(|s| param_start(s).is_some());
            let mut c = String::new();
            let r = canonicalize_with(&p, PathParams::Refuse, &mut c);
            if has {
                prop_assert!(r.is_err());
            } else {
                let mut k = String::new();
                let kr = canonicalize_with(&p, PathParams::Keep, &mut k);
                prop_assert_eq!(r.is_ok(), kr.is_ok());
                if r.is_ok() { prop_assert_eq!(c, k); }
            }
        }

        #[test]
        fn escaping_unreserved_never_changes_the_result(
            p in "(/[a-zA-Z0-9._~-]{0,6}){1,6}",
            mask in any::<u64>(),
            upper in any::<bool>(),
        ) {
            let mut enc = String::new();
            for (i, ch) in p.chars().enumerate() {
                if ch != '/' && ch != '.' && mask & (1 << (i % 64)) != 0 {
                    if upper { enc.push_str(&format!("%{:02X}", ch as u8)); }
                    else { enc.push_str(&format!("%{:02x}", ch as u8)); }
                } else {
                    enc.push(ch);
                }
            }
            prop_assert_eq!(canonicalize(enc.as_bytes()), canonicalize(p.as_bytes()));
        }
    }
}
