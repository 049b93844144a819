//! Strict HTTP/1.1 head parsing over offsets (sans-io, zero-copy).
//!
//! `httparse` does the tokenising; this module adds the strictness a gateway needs
//! ("ambiguous HTTP is refused, not guessed"): CRLF-only line endings (one memchr pass over
//! the head), at most one leading empty line, no obs-fold, strict `Content-Length` /
//! `Transfer-Encoding` / `Host` rules, and request-target form checks. Everything parsed is
//! kept as [`Span`]s into the caller's buffer; the only allocation is the reused `headers` Vec.
//!
//! What `httparse` (1.10, default config) already refuses, and is relied on here (the tests
//! pin each one): header names that are not tokens (so `Content-Length ` / ` Host` / `a(b`
//! / empty names), whitespace between name and `:`, a line starting with SP/HTAB (obs-fold,
//! also for the first header line), control bytes other than HTAB (and DEL) in values, bare
//! CR anywhere, spaces/controls in the request target, more than one SP between request-line
//! parts, versions other than `HTTP/1.0` / `HTTP/1.1`, status codes that are not 3 digits.
//! What it tolerates and is refused here: bare LF line endings, any number of leading empty
//! lines, non-ASCII request targets.
use std::mem::MaybeUninit;

/// Byte range [start, end) into the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes of the span; empty if the span does not lie within `buf` (never panics).
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    Http10,
    #[default]
    Http11,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    /// Trimmed of surrounding SP/HTAB.
    pub value: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the connection closes.
    CloseDelimited,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted head, in bytes, including the final CRLFCRLF (and a leading CRLF).
    pub max_head: usize,
    /// Most header fields accepted.
    pub max_headers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    TooManyHeaders,
    /// Malformed or ambiguous; carries a short reason for the 400 body.
    Invalid(&'static str),
}

impl HeadError {
    pub fn message(&self) -> &'static str {
        match self {
            HeadError::TooLarge => "head too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::Invalid(reason) => reason,
        }
    }
}

/// Header storage for httparse: on the stack up to `STACK_HEADERS`, on the heap beyond (the
/// prologue both heads share).
macro_rules! header_storage {
    ($storage:ident, $limits:expr) => {
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::new();
        let $storage: &mut [MaybeUninit<httparse::Header<'_>>] =
            match stack.get_mut(..$limits.max_headers) {
                Some(s) => s,
                None => {
                    heap.resize_with($limits.max_headers, MaybeUninit::uninit);
                    &mut heap
                }
            };
    };
}

/// What httparse said, as both heads read it: the complete head's bytes (line endings
/// checked), `None` to read more, or the error (a partial head that fills `max_head` is too
/// large).
fn complete_head<'w>(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buf: &[u8],
    window: &'w [u8],
    limits: &Limits,
    request: bool,
) -> Result<Option<&'w [u8]>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => {
            let head = window.get(..n).ok_or(INTERNAL)?;
            check_line_endings(head)?;
            Ok(Some(head))
        }
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(map_error(e, window, request)),
    }
}

/// HTTP/1.0 or HTTP/1.1 (httparse's minor version).
fn version(minor: Option<u8>) -> Result<Version, HeadError> {
    match minor {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(HeadError::Invalid("unsupported HTTP version")),
    }
}

/// The value of the first field named `name` (any case) among `headers` of the head in `src`.
pub fn find_header<'a>(headers: &[HeaderSpan], src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.get(src).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(src))
}

#[derive(Debug, Default)]
pub struct RequestHead {
    /// Bytes of the head, including a tolerated leading CRLF and the final CRLFCRLF.
    pub head_len: usize,
    pub method: Span,
    pub target: Span,
    pub version: Version,
    /// In order, all of them (cleared and refilled by each parse).
    pub headers: Vec<HeaderSpan>,
    /// `None`, `Length(n)` or `Chunked` (requests are never `CloseDelimited`).
    pub body: BodyKind,
    /// HTTP/1.1: true unless a `close` token; HTTP/1.0: only with a `keep-alive` token.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// Value of the single `Host` header.
    pub host: Option<Span>,
    /// Value of the single `Connection` header.
    pub connection: Option<Span>,
    /// Some header name holds an `_` (`server.underscore_headers` decides what that means).
    pub underscore_names: bool,
}

#[derive(Debug, Default)]
pub struct ResponseHead {
    pub head_len: usize,
    pub version: Version,
    pub status: u16,
    /// The reason phrase as sent (possibly empty; obs-text kept).
    pub reason: Span,
    pub headers: Vec<HeaderSpan>,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub connection: Option<Span>,
}

/// Header arrays up to this size live on the stack (uninitialised, so free to set up);
/// larger `max_headers` (the config allows at most 256) fall back to a heap buffer.
const STACK_HEADERS: usize = 256;

/// Longest accepted Content-Length value: 18 digits always fits in a u64.
const MAX_CL_DIGITS: usize = 18;

const INTERNAL: HeadError = HeadError::Invalid("malformed head");

/// Iterates comma-separated tokens of a header value, trimmed of SP/HTAB, skipping empties.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

#[inline]
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Parses a request head at the start of `buf`.
///
/// `Ok(false)`: incomplete, read more (only while `buf.len() < max_head`).
/// `Ok(true)`: complete, `out` is filled; bytes after `out.head_len` are untouched.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    out: &mut RequestHead,
) -> Result<bool, HeadError> {
    out.headers.clear();
    let window = buf.get(..limits.max_head).unwrap_or(buf);
    check_leading(window)?;

    header_storage!(storage, limits);
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, window, storage);
    let Some(head) = complete_head(parsed, buf, window, limits, true)? else {
        return Ok(false);
    };
    let head_len = head.len();

    let base = window.as_ptr() as usize;
    let method = req.method.ok_or(INTERNAL)?.as_bytes();
    let target = req.path.ok_or(INTERNAL)?.as_bytes();
    let version = version(req.version)?;
    check_target(method, target)?;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut host: Option<Span> = None;
    let mut connection: Option<Span> = None;
    let mut expect_continue = false;
    let mut underscore_names = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        underscore_names |= name.contains(&b'_');
        let hs = HeaderSpan {
            name: span_of(base, head_len, name)?,
            value: span_of(base, head_len, trim_ows(h.value))?,
        };
        out.headers.push(hs);
        let value = hs.value.get(head);
        match Field::of(name) {
            Field::ContentLength => {
                if content_length.is_some() {
                    return Err(HeadError::Invalid("repeated Content-Length"));
                }
                content_length = Some(parse_content_length(value)?);
            }
            Field::TransferEncoding => {
                if chunked {
                    return Err(HeadError::Invalid("repeated Transfer-Encoding"));
                }
                if !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::Invalid("unsupported Transfer-Encoding"));
                }
                chunked = true;
            }
            Field::Host => {
                if host.is_some() {
                    return Err(HeadError::Invalid("repeated Host"));
                }
                if value.iter().any(|&b| {
                    matches!(b, b' ' | b'\t' | b',' | b'/' | b'\\' | b'@' | b'?' | b'#')
                        || b >= 0x80
                }) {
                    return Err(HeadError::Invalid("invalid Host"));
                }
                host = Some(hs.value);
            }
            Field::Connection => {
                if connection.is_some() {
                    return Err(HeadError::Invalid("repeated Connection"));
                }
                connection = Some(hs.value);
            }
            Field::Expect => {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(HeadError::Invalid("unsupported Expect"));
                }
                // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
                expect_continue = version == Version::Http11;
            }
            Field::Other => {}
        }
    }

    let body = match (content_length, chunked) {
        (Some(_), true) => {
            return Err(HeadError::Invalid(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (_, true) if version == Version::Http10 => {
            return Err(HeadError::Invalid("Transfer-Encoding in HTTP/1.0 request"));
        }
        (_, true) => BodyKind::Chunked,
        (Some(n), false) => BodyKind::Length(n),
        (None, false) => BodyKind::None,
    };
    if version == Version::Http11 && host.is_none() {
        return Err(HeadError::Invalid("missing Host"));
    }

    out.head_len = head_len;
    out.method = span_of(base, head_len, method)?;
    out.target = span_of(base, head_len, target)?;
    out.version = version;
    out.body = body;
    out.keep_alive = keep_alive(version, connection.map(|c| c.get(head)));
    out.expect_continue = expect_continue;
    out.host = host;
    out.connection = connection;
    out.underscore_names = underscore_names;
    Ok(true)
}

/// Parses a response head at the start of `buf`.
///
/// Responses to HEAD, and 1xx/204/304 responses, have no body. 1xx responses are returned as
/// complete heads (the caller skips them and parses again). Identical repeated Content-Length
/// fields are accepted (RFC 9110 §8.6); differing ones, comma lists, CL+TE, repeated TE or
/// Connection fields and TE in an HTTP/1.0 response are refused.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    request_method_was_head: bool,
    out: &mut ResponseHead,
) -> Result<bool, HeadError> {
    out.headers.clear();
    let window = buf.get(..limits.max_head).unwrap_or(buf);
    check_leading(window)?;

    header_storage!(storage, limits);
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, window, storage);
    let Some(head) = complete_head(parsed, buf, window, limits, false)? else {
        return Ok(false);
    };
    let head_len = head.len();

    let base = window.as_ptr() as usize;
    let version = version(resp.version)?;
    let status = resp.code.ok_or(INTERNAL)?;
    if !(100..=999).contains(&status) {
        return Err(HeadError::Invalid("invalid status code"));
    }
    let reason = reason_span(head)?;

    let mut content_length: Option<u64> = None;
    let mut te: Option<Span> = None;
    let mut connection: Option<Span> = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let hs = HeaderSpan {
            name: span_of(base, head_len, name)?,
            value: span_of(base, head_len, trim_ows(h.value))?,
        };
        out.headers.push(hs);
        let value = hs.value.get(head);
        match Field::of(name) {
            Field::ContentLength => {
                let n = parse_content_length(value)?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(HeadError::Invalid("conflicting Content-Length"));
                }
                content_length = Some(n);
            }
            Field::TransferEncoding => {
                if te.is_some() {
                    return Err(HeadError::Invalid("repeated Transfer-Encoding"));
                }
                te = Some(hs.value);
            }
            Field::Connection => {
                if connection.is_some() {
                    return Err(HeadError::Invalid("repeated Connection"));
                }
                connection = Some(hs.value);
            }
            Field::Host | Field::Expect | Field::Other => {}
        }
    }

    let framed = match (content_length, te) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Invalid(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (None, Some(_)) if version == Version::Http10 => {
            return Err(HeadError::Invalid("Transfer-Encoding in HTTP/1.0 response"));
        }
        (None, Some(te)) => response_te(te.get(head))?,
        (Some(n), None) => BodyKind::Length(n),
        (None, None) => BodyKind::CloseDelimited,
    };
    let body = if request_method_was_head || status < 200 || status == 204 || status == 304 {
        BodyKind::None
    } else {
        framed
    };

    out.head_len = head_len;
    out.version = version;
    out.status = status;
    out.reason = reason;
    out.body = body;
    out.keep_alive =
        body != BodyKind::CloseDelimited && keep_alive(version, connection.map(|c| c.get(head)));
    out.connection = connection;
    Ok(true)
}

/// The header fields this module interprets.
enum Field {
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    Expect,
    Other,
}

impl Field {
    #[inline]
    fn of(name: &[u8]) -> Field {
        // dispatch on length first: most fields compare nothing
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => Field::Host,
            6 if name.eq_ignore_ascii_case(b"expect") => Field::Expect,
            10 if name.eq_ignore_ascii_case(b"connection") => Field::Connection,
            14 if name.eq_ignore_ascii_case(b"content-length") => Field::ContentLength,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => Field::TransferEncoding,
            _ => Field::Other,
        }
    }
}

/// `1*DIGIT`, at most 18 digits (so no overflow); no sign, no inner spaces, no lists.
fn parse_content_length(v: &[u8]) -> Result<u64, HeadError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Invalid("invalid Content-Length"));
    }
    if v.len() > MAX_CL_DIGITS {
        return Err(HeadError::Invalid("Content-Length too large"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// RFC 9112 §6.3: chunked as the final coding frames the body; a Transfer-Encoding without a
/// final chunked makes a response close-delimited. chunked more than once, or an empty list,
/// is refused.
fn response_te(v: &[u8]) -> Result<BodyKind, HeadError> {
    let mut last_chunked = false;
    let mut chunked = 0usize;
    let mut any = false;
    for t in tokens(v) {
        any = true;
        last_chunked = t.eq_ignore_ascii_case(b"chunked");
        chunked += usize::from(last_chunked);
    }
    match (any, chunked, last_chunked) {
        (false, _, _) => Err(HeadError::Invalid("invalid Transfer-Encoding")),
        (true, 0, _) | (true, 1, false) => Ok(BodyKind::CloseDelimited),
        (true, 1, true) => Ok(BodyKind::Chunked),
        _ => Err(HeadError::Invalid("chunked applied more than once")),
    }
}

fn keep_alive(version: Version, connection: Option<&[u8]>) -> bool {
    let (mut close, mut keep) = (false, false);
    for t in connection.into_iter().flat_map(tokens) {
        close |= t.eq_ignore_ascii_case(b"close");
        keep |= t.eq_ignore_ascii_case(b"keep-alive");
    }
    !close && (version == Version::Http11 || keep)
}

/// RFC 9112 §2.2 lets a server ignore at least one empty line before the start line:
/// exactly one CRLF is tolerated, a bare LF or a second empty line is refused.
/// (Checked on partial input too, so a stream of CRLFs fails fast.)
#[inline]
fn check_leading(buf: &[u8]) -> Result<(), HeadError> {
    match buf {
        [b'\n', ..] | [b'\r', b'\n', b'\n', ..] => Err(HeadError::Invalid("bare LF line ending")),
        [b'\r', b'\n', b'\r', ..] => Err(HeadError::Invalid("more than one leading empty line")),
        _ => Ok(()),
    }
}

/// Every LF is preceded by CR and every CR is followed by LF: for each adjacent pair of bytes,
/// "second is LF" must equal "first is CR" (a branch-free pass the compiler vectorises).
#[inline]
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    let next = head.get(1..).unwrap_or_default();
    let bad = head
        .iter()
        .zip(next)
        .fold(false, |bad, (&a, &b)| bad | ((a == b'\r') != (b == b'\n')));
    if !bad && head.first() != Some(&b'\n') && head.last() != Some(&b'\r') {
        return Ok(());
    }
    Err(line_ending_error(head))
}

/// Which line-ending rule `head` breaks first (cold path, for the 400 reason).
#[cold]
fn line_ending_error(head: &[u8]) -> HeadError {
    for i in memchr::memchr2_iter(b'\r', b'\n', head) {
        if head.get(i) == Some(&b'\r') {
            if head.get(i + 1) != Some(&b'\n') {
                return HeadError::Invalid("bare CR in head");
            }
        } else if i == 0 || head.get(i - 1) != Some(&b'\r') {
            return HeadError::Invalid("bare LF line ending");
        }
    }
    INTERNAL
}

/// Origin-form, absolute-form, or `*` for OPTIONS; `CONNECT` (exactly so spelled) with an
/// authority-form target `host:port` only (whether CONNECT is served at all is the pipeline's
/// decision: `[forward]`). httparse already refused empty targets, spaces and controls;
/// non-ASCII is refused here.
fn check_target(method: &[u8], target: &[u8]) -> Result<(), HeadError> {
    if method == b"CONNECT" {
        return match authority_form(target) {
            true => Ok(()),
            false => Err(HeadError::Invalid("unsupported request target")),
        };
    }
    if method.eq_ignore_ascii_case(b"CONNECT") {
        return Err(HeadError::Invalid("unsupported request target"));
    }
    if !target.is_ascii() {
        return Err(HeadError::Invalid("invalid request target"));
    }
    match target {
        [b'/', ..] => Ok(()),
        b"*" if method == b"OPTIONS" => Ok(()),
        [first, rest @ ..] if first.is_ascii_alphabetic() => {
            let scheme_len = rest
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                .count();
            match rest.get(scheme_len..) {
                Some([b':', b'/', b'/', ..]) => Ok(()),
                _ => Err(HeadError::Invalid("unsupported request target")),
            }
        }
        _ => Err(HeadError::Invalid("unsupported request target")),
    }
}

/// `host:port` (RFC 9110 authority-form, without userinfo): a reg-name or IPv4 literal, or an
/// IPv6 literal in brackets, then a 1-5 digit port.
pub fn authority_form(target: &[u8]) -> bool {
    let Some(colon) = memchr::memrchr(b':', target) else {
        return false;
    };
    let (host, port) = (&target[..colon], &target[colon + 1..]);
    let port_ok = (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit);
    let host_ok = match host {
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        _ => {
            !host.is_empty()
                && host
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    port_ok && host_ok
}

/// The reason phrase: after `HTTP/1.x SP 3DIGIT SP` up to the CR ending the status line.
/// (Computed here because httparse hands back a static "" for reasons with obs-text.)
fn reason_span(head: &[u8]) -> Result<Span, HeadError> {
    let line_start = if head.starts_with(b"\r\n") { 2 } else { 0 };
    let line = head.get(line_start..).ok_or(INTERNAL)?;
    let cr = memchr::memchr(b'\r', line).ok_or(INTERNAL)?;
    let start = if cr > 12 { 13 } else { cr };
    let to_u32 = |n: usize| u32::try_from(n + line_start).map_err(|_| INTERNAL);
    Ok(Span {
        start: to_u32(start)?,
        end: to_u32(cr)?,
    })
}

/// Offset of `s` (a subslice httparse returned) within the first `len` bytes at `base`.
#[inline]
fn span_of(base: usize, len: usize, s: &[u8]) -> Result<Span, HeadError> {
    let start = (s.as_ptr() as usize).wrapping_sub(base);
    let end = start.checked_add(s.len()).ok_or(INTERNAL)?;
    if end > len {
        return Err(INTERNAL);
    }
    Ok(Span {
        start: u32::try_from(start).map_err(|_| INTERNAL)?,
        end: u32::try_from(end).map_err(|_| INTERNAL)?,
    })
}

/// Maps an httparse error to a short reason (a second look at the bytes only on this cold path).
#[cold]
fn map_error(e: httparse::Error, window: &[u8], request: bool) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName
            if memchr::memmem::find(window, b"\n ").is_some()
                || memchr::memmem::find(window, b"\n\t").is_some() =>
        {
            HeadError::Invalid("obs-fold in header")
        }
        httparse::Error::HeaderName => HeadError::Invalid("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Invalid("invalid header value"),
        httparse::Error::NewLine => HeadError::Invalid("invalid line ending"),
        httparse::Error::Version => HeadError::Invalid("unsupported HTTP version"),
        httparse::Error::Status => HeadError::Invalid("invalid status line"),
        httparse::Error::Token if request => HeadError::Invalid("invalid request line"),
        httparse::Error::Token => HeadError::Invalid("invalid status line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIM: Limits = Limits {
        max_head: 8192,
        max_headers: 16,
    };

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        /// Complete: body kind and keep-alive.
        Ok(BodyKind, bool),
        Partial,
        Bad(&'static str),
    }
    use BodyKind::{Chunked, CloseDelimited, Length, None as NoBody};
    use Expect::{Bad, Ok as Good, Partial};

    const BOTH: Expect = Bad("both Content-Length and Transfer-Encoding");
    const BAD_CL: Expect = Bad("invalid Content-Length");
    const BIG_CL: Expect = Bad("Content-Length too large");
    const BAD_TE: Expect = Bad("unsupported Transfer-Encoding");
    const BAD_NAME: Expect = Bad("invalid header name");
    const BAD_VALUE: Expect = Bad("invalid header value");
    const FOLD: Expect = Bad("obs-fold in header");
    const BARE_LF: Expect = Bad("bare LF line ending");
    const BAD_LINE: Expect = Bad("invalid request line");
    const BAD_VERSION: Expect = Bad("unsupported HTTP version");
    const BAD_TARGET: Expect = Bad("unsupported request target");

    #[rustfmt::skip]
    const CASES: &[(&str, &[u8], Expect)] = &[
        // ---- basics
        ("simple GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("lowercase method is a valid token", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("odd but valid token method", b"M-SEARCH! / HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("query string", b"GET /a?b=c&d HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", Good(NoBody, false)),
        ("one leading CRLF tolerated", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("obs-text in value allowed", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n", Good(NoBody, true)),
        ("empty value allowed", b"GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\n\r\n", Good(NoBody, true)),
        ("Content-Lengthx is another field", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Lengthx: 5\r\n\r\n", Good(NoBody, true)),
        ("empty input", b"", Partial),
        ("partial head", b"GET / HTTP/1.1\r\nHost: a\r\n", Partial),
        ("partial after one CR", b"GET / HTTP/1.1\r\nHost: a\r\n\r", Partial),
        // ---- Content-Length
        ("CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Good(Length(5), true)),
        ("CL lowercase name", b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n\r\n", Good(Length(5), true)),
        ("CL surrounding spaces trimmed", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5  \r\n\r\n", Good(Length(5), true)),
        ("CL surrounding tabs trimmed", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\t5\t\r\n\r\n", Good(Length(5), true)),
        ("CL zero", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", Good(Length(0), true)),
        ("CL leading zeros", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", Good(Length(7), true)),
        ("CL 18 digits", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999999\r\n\r\n", Good(Length(999_999_999_999_999_999), true)),
        ("CL 19 digits", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000000\r\n\r\n", BIG_CL),
        ("CL u64 overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999999\r\n\r\n", BIG_CL),
        ("CL plus sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", BAD_CL),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BAD_CL),
        ("CL inner space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", BAD_CL),
        ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", BAD_CL),
        ("CL list of equal values", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", BAD_CL),
        ("CL list no space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n", BAD_CL),
        ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", BAD_CL),
        ("CL decimal point", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n", BAD_CL),
        ("CL non-ascii digit", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa5\r\n\r\n", BAD_CL),
        ("CL duplicate same value", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Bad("repeated Content-Length")),
        ("CL duplicate different values", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n", Bad("repeated Content-Length")),
        // ---- smuggling: CL vs TE
        ("CL.TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", BOTH),
        ("TE.CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", BOTH),
        ("TE.CL with invalid TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\n", BAD_TE),
        ("TE + CL in HTTP/1.0", b"POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", BOTH),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Bad("Transfer-Encoding in HTTP/1.0 request")),
        ("TE chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Good(Chunked, true)),
        ("TE CHUNKED uppercase", b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: CHUNKED\r\n\r\n", Good(Chunked, true)),
        ("TE chunked trailing space trimmed", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n", Good(Chunked, true)),
        ("TE chunked, identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", BAD_TE),
        ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", BAD_TE),
        ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", BAD_TE),
        ("TE chunked, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", BAD_TE),
        ("TE chunked trailing comma", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", BAD_TE),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", BAD_TE),
        ("TE chunked with parameter", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x\r\n\r\n", BAD_TE),
        ("TE empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", BAD_TE),
        ("TE with vertical tab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n", BAD_VALUE),
        ("TE repeated", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Bad("repeated Transfer-Encoding")),
        // ---- header-name tricks
        ("space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", BAD_NAME),
        ("tab before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n", BAD_NAME),
        ("leading space on name (obs-fold)", b"POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", FOLD),
        ("leading space on first header", b"POST / HTTP/1.1\r\n Host: a\r\n\r\n", FOLD),
        ("invalid name char", b"POST / HTTP/1.1\r\nHost: a\r\nConte(nt-Length: 5\r\n\r\n", BAD_NAME),
        ("empty header name", b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", BAD_NAME),
        ("non-ascii header name", b"GET / HTTP/1.1\r\nHost: a\r\nX-\xff: x\r\n\r\n", BAD_NAME),
        ("NUL in header name", b"GET / HTTP/1.1\r\nHost: a\r\nX\x00A: x\r\n\r\n", BAD_NAME),
        ("header line without colon", b"GET / HTTP/1.1\r\nHost: a\r\nJunk\r\n\r\n", BAD_NAME),
        // ---- obs-fold, line endings, controls
        ("obs-fold SP", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", FOLD),
        ("obs-fold HTAB", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n\tb\r\n\r\n", FOLD),
        ("bare LF everywhere", b"GET / HTTP/1.1\nHost: a\n\n", BARE_LF),
        ("bare LF after request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", BARE_LF),
        ("bare LF in one header", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", BARE_LF),
        ("bare LF ending the head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", BARE_LF),
        ("bare CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", BAD_VALUE),
        ("bare CR ending a header", b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n", BAD_VALUE),
        ("bare CR after request line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", Bad("invalid line ending")),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", BAD_VALUE),
        ("SOH in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n", BAD_VALUE),
        ("DEL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n", BAD_VALUE),
        ("two leading CRLFs", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Bad("more than one leading empty line")),
        ("leading bare LF", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", BARE_LF),
        ("leading CRLF then bare LF", b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", BARE_LF),
        // ---- request line
        ("NUL in target", b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", BAD_LINE),
        ("tab in target", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", BAD_LINE),
        ("non-ascii target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", Bad("invalid request target")),
        ("double space after method", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_LINE),
        ("double space before version", b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", BAD_VERSION),
        ("trailing space after version", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", Bad("invalid line ending")),
        ("leading space before method", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_LINE),
        ("invalid method char", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_LINE),
        ("HTTP/0.9 request line", b"GET /\r\n\r\n", BAD_LINE),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", BAD_VERSION),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", BAD_VERSION),
        ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n", BAD_VERSION),
        ("CONNECT authority-form", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", Good(NoBody, true)),
        ("CONNECT IPv6", b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", Good(NoBody, true)),
        ("CONNECT origin-form", b"CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        ("CONNECT absolute-form", b"CONNECT http://a:443/ HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        ("CONNECT without port", b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        ("CONNECT userinfo", b"CONNECT u@a:443 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        ("CONNECT long port", b"CONNECT a:443443 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        ("lowercase connect", b"connect a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", BAD_TARGET),
        ("asterisk-form with GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        ("asterisk-form with OPTIONS", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("authority-form without CONNECT", b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        ("absolute-form", b"GET http://a/x?y HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("relative path target", b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
        // ---- Host
        ("missing Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", Bad("missing Host")),
        ("double Host", b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", Bad("repeated Host")),
        ("Host list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", Bad("invalid Host")),
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Bad("invalid Host")),
        ("Host with port and IPv6", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", Good(NoBody, true)),
        // ---- keep-alive matrix
        ("1.1 no Connection", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Good(NoBody, true)),
        ("1.1 close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Good(NoBody, false)),
        ("1.1 CLOSE in a list", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo, CLOSE\r\n\r\n", Good(NoBody, false)),
        ("1.1 keep-alive", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", Good(NoBody, true)),
        ("1.1 keep-alive and close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", Good(NoBody, false)),
        ("1.0 none", b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", Good(NoBody, false)),
        ("1.0 keep-alive", b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n", Good(NoBody, true)),
        ("1.0 close", b"GET / HTTP/1.0\r\nHost: a\r\nConnection: close\r\n\r\n", Good(NoBody, false)),
        ("closed is not close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", Good(NoBody, true)),
        ("repeated Connection", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nConnection: close\r\n\r\n", Bad("repeated Connection")),
        // ---- Expect
        ("Expect 100-continue", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", Good(Length(1), true)),
        ("Expect mixed case", b"POST / HTTP/1.1\r\nHost: a\r\nexpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", Good(Length(1), true)),
        ("Expect other", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", Bad("unsupported Expect")),
        ("Expect list", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n", Bad("unsupported Expect")),
        ("Expect empty", b"POST / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n", Bad("unsupported Expect")),
    ];

    fn run(input: &[u8], limits: &Limits) -> (Result<bool, HeadError>, RequestHead) {
        let mut out = RequestHead::default();
        let r = parse_request(input, limits, &mut out);
        (r, out)
    }

    fn check_spans(head_len: usize, spans: impl IntoIterator<Item = Span>) {
        for s in spans {
            assert!(
                s.start <= s.end && s.end as usize <= head_len,
                "{s:?} outside {head_len}"
            );
        }
    }

    #[test]
    fn request_table() {
        assert!(CASES.len() >= 50);
        let mut names = std::collections::HashSet::new();
        for &(name, input, expect) in CASES {
            assert!(names.insert(name), "duplicate case name {name}");
            let (r, out) = run(input, &LIM);
            let got = match r {
                Ok(true) => Good(out.body, out.keep_alive),
                Ok(false) => Partial,
                Err(e) => Bad(e.message()),
            };
            assert_eq!(got, expect, "case {name:?}");
            if let Good(..) = got {
                assert_eq!(out.head_len, input.len(), "case {name:?}: head_len");
                check_spans(
                    out.head_len,
                    [out.method, out.target]
                        .into_iter()
                        .chain(out.headers.iter().flat_map(|h| [h.name, h.value])),
                );
            }
        }
    }

    #[test]
    fn request_fields() {
        let buf = b"\r\nPOST /x?y HTTP/1.1\r\nHost:  api.example:8443 \r\nX-Empty:\t\r\nConnection: keep-alive, x-hop\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello";
        let mut out = RequestHead::default();
        assert_eq!(parse_request(buf, &LIM, &mut out), Ok(true));
        assert_eq!(out.method.get(buf), b"POST");
        assert_eq!(out.target.get(buf), b"/x?y");
        assert_eq!(out.version, Version::Http11);
        assert_eq!(out.host.map(|h| h.get(buf)), Some(&b"api.example:8443"[..]));
        assert_eq!(
            out.connection.map(|h| h.get(buf)),
            Some(&b"keep-alive, x-hop"[..])
        );
        assert!(out.expect_continue && out.keep_alive);
        assert_eq!(out.body, BodyKind::Chunked);
        let names: Vec<&[u8]> = out.headers.iter().map(|h| h.name.get(buf)).collect();
        assert_eq!(
            names,
            [
                &b"Host"[..],
                b"X-Empty",
                b"Connection",
                b"Expect",
                b"Transfer-Encoding"
            ]
        );
        assert_eq!(out.headers[1].value.get(buf), b"");
        assert!(out.headers[1].value.is_empty());
        assert_eq!(&buf[out.head_len..], b"5\r\nhello");

        // the Vec is reused: a second parse replaces everything
        let buf2 = b"GET / HTTP/1.0\r\nX-A:  b  \r\n\r\n";
        assert_eq!(parse_request(buf2, &LIM, &mut out), Ok(true));
        assert_eq!(out.headers.len(), 1);
        assert_eq!(out.headers[0].value.get(buf2), b"b");
        assert_eq!(out.host, None);
        assert_eq!(out.connection, None);
        assert!(!out.expect_continue && !out.keep_alive);
        assert_eq!(out.body, BodyKind::None);
        assert_eq!(out.version, Version::Http10);

        // Expect on HTTP/1.0 is ignored (RFC 9110 §10.1.1)
        let buf3 = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(parse_request(buf3, &LIM, &mut out), Ok(true));
        assert!(!out.expect_continue);
    }

    #[test]
    fn underscore_names_are_noticed() {
        // (name, head, whether some header name holds an `_`)
        let table: &[(&str, &[u8], bool)] = &[
            ("none", b"GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: k\r\n\r\n", false),
            ("value only", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a_b\r\n\r\n", false),
            ("x_api_key", b"GET / HTTP/1.1\r\nHost: a\r\nX_Api_Key: k\r\n\r\n", true),
            ("transfer_encoding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n", true),
            ("last of many", b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nc_: 3\r\n\r\n", true),
        ];
        let mut out = RequestHead::default();
        for &(name, buf, want) in table {
            assert_eq!(parse_request(buf, &LIM, &mut out), Ok(true), "{name}");
            assert_eq!(out.underscore_names, want, "{name}");
        }
        // a later head without one clears it
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &LIM, &mut out).unwrap();
        assert!(!out.underscore_names);
    }

    #[test]
    fn every_prefix_is_partial() {
        for &(name, input, expect) in CASES {
            if !matches!(expect, Good(..)) {
                continue;
            }
            for n in 0..input.len() {
                let (r, _) = run(&input[..n], &LIM);
                assert_eq!(r, Ok(false), "case {name:?} prefix {n}");
            }
        }
    }

    #[test]
    fn pipelined_bytes_untouched() {
        let first = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        let mut buf = first.to_vec();
        buf.extend_from_slice(b"abcGET /b HTTP/1.1\r\nHost: a\r\n\r\n");
        let (r, out) = run(&buf, &LIM);
        assert_eq!(r, Ok(true));
        assert_eq!(out.head_len, first.len());
        assert_eq!(out.body, BodyKind::Length(3));
        let (r, out) = run(&buf[first.len() + 3..], &LIM);
        assert_eq!((r, out.head_len), (Ok(true), buf.len() - first.len() - 3));
    }

    #[test]
    fn head_size_limit() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let n = head.len();
        let at = Limits {
            max_head: n,
            max_headers: 16,
        };
        let under = Limits {
            max_head: n - 1,
            max_headers: 16,
        };
        assert_eq!(run(head, &at).0, Ok(true));
        assert_eq!(run(head, &under).0, Err(HeadError::TooLarge));
        // pipelined bytes beyond the limit do not matter when the head fits
        let mut more = head.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(run(&more, &at).0, Ok(true));
        assert_eq!(run(&more, &under).0, Err(HeadError::TooLarge));
        // incomplete: more is needed while below the limit, TooLarge once at it
        assert_eq!(run(&head[..n - 1], &at).0, Ok(false));
        assert_eq!(run(&head[..n - 1], &under).0, Err(HeadError::TooLarge));
        // a stream of junk header lines never completes
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        while endless.len() < 9000 {
            endless.extend_from_slice(b"X: y\r\n");
        }
        let lim = Limits {
            max_head: 8192,
            max_headers: 10_000,
        };
        assert_eq!(run(&endless, &lim).0, Err(HeadError::TooLarge));
    }

    #[test]
    fn header_count_limit() {
        let mk = |n: usize| {
            let mut v = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
            for i in 1..n {
                v.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            v.extend_from_slice(b"\r\n");
            v
        };
        let lim = Limits {
            max_head: 1 << 20,
            max_headers: 3,
        };
        assert_eq!(run(&mk(3), &lim).0, Ok(true));
        assert_eq!(run(&mk(4), &lim).0, Err(HeadError::TooManyHeaders));
        let lim0 = Limits {
            max_head: 1 << 20,
            max_headers: 0,
        };
        assert_eq!(run(b"GET / HTTP/1.0\r\n\r\n", &lim0).0, Ok(true));
        assert_eq!(run(&mk(1), &lim0).0, Err(HeadError::TooManyHeaders));
        // the stack array's size exactly, and beyond it (heap fallback)
        for max in [256usize, 300] {
            let lim = Limits {
                max_head: 1 << 20,
                max_headers: max,
            };
            let (r, out) = run(&mk(max), &lim);
            assert_eq!((r, out.headers.len()), (Ok(true), max));
            assert_eq!(run(&mk(max + 1), &lim).0, Err(HeadError::TooManyHeaders));
        }
    }

    #[test]
    fn line_ending_pass() {
        let bare_cr = Err(HeadError::Invalid("bare CR in head"));
        let bare_lf = Err(HeadError::Invalid("bare LF line ending"));
        for (input, expect) in [
            (&b"a\r\nb\r\n\r\n"[..], Ok(())),
            (b"", Ok(())),
            (b"a\rb\r\n", bare_cr),
            (b"a\r", bare_cr),
            (b"\r\r\n", bare_cr),
            (b"\n", bare_lf),
            (b"a\nb", bare_lf),
            (b"a\r\n\n", bare_lf),
        ] {
            assert_eq!(check_line_endings(input), expect, "{input:?}");
        }
    }

    #[test]
    fn tokens_split_and_trim() {
        let t: Vec<&[u8]> = tokens(b" close ,, \tX-Foo\t,").collect();
        assert_eq!(t, [&b"close"[..], b"X-Foo"]);
        assert_eq!(tokens(b"").count(), 0);
        assert_eq!(tokens(b" , ").count(), 0);
    }

    #[test]
    fn span_helpers() {
        let s = Span { start: 2, end: 5 };
        assert_eq!(s.get(b"abcdefg"), b"cde");
        assert_eq!(s.get(b"abc"), b"");
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty() && Span::default().is_empty());
        assert_eq!(Span { start: 5, end: 2 }.len(), 0);
        assert_eq!(HeadError::TooLarge.message(), "head too large");
        assert_eq!(HeadError::Invalid("x").message(), "x");
    }

    // ---------------------------------------------------------------- responses

    #[rustfmt::skip]
    const RESPONSES: &[(&str, &[u8], bool, Expect)] = &[
        ("200 CL", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, Good(Length(5), true)),
        ("200 chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, Good(Chunked, true)),
        ("200 close-delimited", b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n", false, Good(CloseDelimited, false)),
        ("200 no reason", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, Good(Length(0), true)),
        ("HEAD response with CL", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, Good(NoBody, true)),
        ("HEAD response without framing", b"HTTP/1.1 200 OK\r\n\r\n", true, Good(NoBody, true)),
        ("204", b"HTTP/1.1 204 No Content\r\n\r\n", false, Good(NoBody, true)),
        ("304 with CL", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", false, Good(NoBody, true)),
        ("100 Continue", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", false, Good(NoBody, true)),
        ("103 Early Hints", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false, Good(NoBody, true)),
        ("CL+TE", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, BOTH),
        ("CL+TE on 304", b"HTTP/1.1 304 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", false, BOTH),
        ("TE gzip without chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, Good(CloseDelimited, false)),
        ("TE gzip, chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, Good(Chunked, true)),
        ("TE chunked, gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false, Good(CloseDelimited, false)),
        ("TE chunked twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", false, Bad("chunked applied more than once")),
        ("TE empty", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", false, Bad("invalid Transfer-Encoding")),
        ("TE repeated", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", false, Bad("repeated Transfer-Encoding")),
        ("TE in HTTP/1.0", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, Bad("Transfer-Encoding in HTTP/1.0 response")),
        ("CL duplicate identical", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", false, Good(Length(5), true)),
        ("CL duplicate different", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false, Bad("conflicting Content-Length")),
        ("CL list", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false, BAD_CL),
        ("CL negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, BAD_CL),
        ("1.1 close", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false, Good(Length(1), false)),
        ("1.0 CL", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, Good(Length(1), false)),
        ("1.0 CL keep-alive", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false, Good(Length(1), true)),
        ("1.0 close-delimited keep-alive", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", false, Good(CloseDelimited, false)),
        ("repeated Connection", b"HTTP/1.1 200 OK\r\nConnection: a\r\nConnection: b\r\n\r\n", false, Bad("repeated Connection")),
        ("status 099", b"HTTP/1.1 099 X\r\n\r\n", false, Bad("invalid status code")),
        ("status two digits", b"HTTP/1.1 20 OK\r\n\r\n", false, Bad("invalid status line")),
        ("status four digits", b"HTTP/1.1 2000 OK\r\n\r\n", false, Bad("invalid status line")),
        ("HTTP/2", b"HTTP/2.0 200 OK\r\n\r\n", false, BAD_VERSION),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", false, FOLD),
        ("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", false, BAD_NAME),
        ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", false, BARE_LF),
        ("bare CR in reason", b"HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n", false, Bad("invalid status line")),
        ("NUL in value", b"HTTP/1.1 200 OK\r\nX-A: \x00\r\n\r\n", false, BAD_VALUE),
        ("partial", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", false, Partial),
    ];

    #[test]
    fn response_table() {
        let mut names = std::collections::HashSet::new();
        for &(name, input, head, expect) in RESPONSES {
            assert!(names.insert(name), "duplicate case name {name}");
            let mut out = ResponseHead::default();
            let got = match parse_response(input, &LIM, head, &mut out) {
                Ok(true) => Good(out.body, out.keep_alive),
                Ok(false) => Partial,
                Err(e) => Bad(e.message()),
            };
            assert_eq!(got, expect, "case {name:?}");
            if let Good(..) = got {
                check_spans(
                    out.head_len,
                    std::iter::once(out.reason)
                        .chain(out.headers.iter().flat_map(|h| [h.name, h.value])),
                );
                for n in 0..out.head_len {
                    assert_eq!(
                        parse_response(&input[..n], &LIM, head, &mut ResponseHead::default()),
                        Ok(false),
                        "{name:?} prefix {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn response_fields() {
        let buf =
            b"\r\nHTTP/1.1 404 Not \xe9 Found\r\nConnection: x-a\r\nContent-Length: 2\r\n\r\nhi";
        let mut out = ResponseHead::default();
        assert_eq!(parse_response(buf, &LIM, false, &mut out), Ok(true));
        assert_eq!(out.status, 404);
        assert_eq!(out.reason.get(buf), b"Not \xe9 Found");
        assert_eq!(out.connection.map(|c| c.get(buf)), Some(&b"x-a"[..]));
        assert_eq!(&buf[out.head_len..], b"hi");
        for (line, reason) in [
            (&b"HTTP/1.1 200\r\n\r\n"[..], &b""[..]),
            (b"HTTP/1.1 200 \r\n\r\n", b""),
            (b"HTTP/1.0 200 A B\r\n\r\n", b"A B"),
        ] {
            assert_eq!(parse_response(line, &LIM, false, &mut out), Ok(true));
            assert_eq!(out.reason.get(line), reason);
        }
        let lim = Limits {
            max_head: 20,
            max_headers: 4,
        };
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nX-A: bbbbbbb", &lim, false, &mut out),
            Err(HeadError::TooLarge)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_and_spans_inside(data in proptest::collection::vec(any::<u8>(), 0..300), max_head in 0usize..400, max_headers in 0usize..8) {
            let lim = Limits { max_head, max_headers };
            let mut req = RequestHead::default();
            if let Ok(true) = parse_request(&data, &lim, &mut req) {
                prop_assert!(req.head_len <= data.len() && req.head_len <= max_head);
                check_spans(req.head_len, [req.method, req.target].into_iter().chain(req.host).chain(req.connection).chain(req.headers.iter().flat_map(|h| [h.name, h.value])));
            }
            let mut resp = ResponseHead::default();
            if let Ok(true) = parse_response(&data, &lim, false, &mut resp) {
                prop_assert!(resp.head_len <= data.len() && resp.head_len <= max_head);
                check_spans(resp.head_len, std::iter::once(resp.reason).chain(resp.connection).chain(resp.headers.iter().flat_map(|h| [h.name, h.value])));
            }
        }

        #[test]
        fn structured_requests_roundtrip(
            method in "[A-Za-z]{1,8}",
            path in "/[a-zA-Z0-9/?=&%.-]{0,20}",
            headers in proptest::collection::vec(("X-[A-Za-z0-9-]{1,10}", "[ \t]{0,2}", "[!-~]([ -~]{0,10}[!-~])?", "[ \t]{0,2}"), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            prop_assume!(!method.eq_ignore_ascii_case("CONNECT"));
            let mut buf = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n").into_bytes();
            for (n, pre, v, post) in &headers {
                buf.extend_from_slice(format!("{n}:{pre}{v}{post}\r\n").as_bytes());
            }
            buf.extend_from_slice(b"\r\n");
            let head_len = buf.len();
            buf.extend_from_slice(&tail);
            let mut out = RequestHead::default();
            prop_assert_eq!(parse_request(&buf, &LIM, &mut out), Ok(true));
            prop_assert_eq!(out.head_len, head_len);
            prop_assert_eq!(out.method.get(&buf), method.as_bytes());
            prop_assert_eq!(out.target.get(&buf), path.as_bytes());
            prop_assert_eq!(out.headers.len(), headers.len() + 1);
            for (h, (n, _, v, _)) in out.headers.iter().skip(1).zip(&headers) {
                prop_assert_eq!(h.name.get(&buf), n.as_bytes());
                prop_assert_eq!(h.value.get(&buf), v.as_bytes());
            }
        }
    }
}
