//! Which header fields stop at the gateway (RFC 9110 §7.6.1 hop-by-hop fields, plus the ones the
//! gateway owns and rewrites itself), and the field syntax every module checks names and values
//! against (`tchar`, tokens, valid values).
//!
//! Header names with `_` (issue 12): many backends (Django/WSGI and PHP through CGI-style
//! `HTTP_*` variables, Rails, some Node/Go frameworks) fold `_` and `-` to the same name, so
//! `Transfer_Encoding` or an agent's `X_Api_Key` beside the gateway's injected `X-Api-Key` would
//! reach them as the field the gateway owns. nginx drops such fields by default; so does the
//! gateway ([`Underscores::Drop`]); `server.underscore_headers` may instead refuse the request
//! (400, decided on the parsed head) or pass the fields on.
use super::head::tokens;

/// What happens to request header fields whose name holds `_` (`server.underscore_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Not forwarded (nginx's `underscores_in_headers off`).
    #[default]
    Drop,
    /// The request is refused with 400 `bad_request`.
    Refuse,
    /// Forwarded as received.
    Pass,
}

impl Underscores {
    pub fn from_name(s: &str) -> Option<Underscores> {
        match s {
            "drop" => Some(Underscores::Drop),
            "refuse" => Some(Underscores::Refuse),
            "pass" => Some(Underscores::Pass),
            _ => None,
        }
    }
}

/// Whether a request field named `name` is kept from the upstream under `policy` because its
/// name holds an `_` (with `Refuse` such a request never gets this far; it is dropped anyway).
#[inline]
pub fn drop_underscored(name: &[u8], policy: Underscores) -> bool {
    policy != Underscores::Pass && memchr::memchr(b'_', name).is_some()
}

/// An RFC 9110 §5.6.2 `tchar`.
#[inline]
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An RFC 9110 token: one or more `tchar`s.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A field name the gateway will write (a token, at most 128 bytes).
pub fn valid_header_name(n: &str) -> bool {
    n.len() <= 128 && is_token(n.as_bytes())
}

/// Bytes that may go in a header value: visible ASCII, space, tab, obs-text; never CR/LF/NUL.
pub fn valid_header_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Request fields never forwarded as received: hop-by-hop fields, framing (re-done by the
/// gateway), `Host` (rewritten to the upstream's), `Expect` (answered by the gateway),
/// `Proxy-Authorization` (a proxy credential) and `X-Request-Id` (set by the gateway).
pub const REQUEST_STRIPPED: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
    b"proxy-authorization",
    b"x-request-id",
];

/// Response fields not passed back to the agent as received.
pub fn strip_from_response(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-request-id",
    ];
    NAMES
        .iter()
        .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
}

/// A set of header names, compiled once (per proxy): the agent's request fields that stop at
/// the gateway. Looked up by length first, so a call's header costs one bucket of compares.
#[derive(Debug, Default)]
pub struct HeaderFilter {
    /// Lower-cased names, bucketed by length.
    by_len: Vec<Vec<Box<[u8]>>>,
}

impl HeaderFilter {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut f = HeaderFilter::default();
        for n in names {
            let n = n.to_ascii_lowercase().into_boxed_slice();
            if f.by_len.len() <= n.len() {
                f.by_len.resize_with(n.len() + 1, Vec::new);
            }
            if !f.by_len[n.len()].contains(&n) {
                f.by_len[n.len()].push(n);
            }
        }
        f
    }

    /// Whether `name` (any case) is in the set.
    #[inline]
    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_len
            .get(name.len())
            .is_some_and(|b| b.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }
}

/// Whether `name` is listed in a `Connection` header value (and so is hop-by-hop).
pub fn listed_in_connection(name: &[u8], connection: Option<&[u8]>) -> bool {
    match connection {
        None => false,
        Some(v) => tokens(v).any(|t| t.eq_ignore_ascii_case(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_filter_matches_any_case_and_only_its_names() {
        let f = HeaderFilter::new([&b"X-Api-Key"[..], b"host", b"Host"]);
        let cases: &[(&str, &[u8], bool)] = &[
            ("exact", b"x-api-key", true),
            ("upper", b"X-API-KEY", true),
            ("duplicate name once", b"HOST", true),
            ("prefix", b"x-api-ke", false),
            ("longer", b"x-api-keys", false),
            ("underscore is another name", b"x_api_key", false),
            ("empty", b"", false),
        ];
        for (name, h, want) in cases {
            assert_eq!(f.contains(h), *want, "{name}");
        }
        assert!(!HeaderFilter::default().contains(b"host"));
    }

    fn strip_from_request(name: &[u8]) -> bool {
        REQUEST_STRIPPED
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    #[test]
    fn hop_by_hop_names() {
        assert!(strip_from_request(b"Transfer-Encoding"));
        assert!(strip_from_request(b"PROXY-AUTHORIZATION"));
        assert!(!strip_from_request(b"Accept"));
        assert!(!strip_from_request(b"Hostile"));
        assert!(strip_from_response(b"connection"));
        assert!(!strip_from_response(b"Content-Type"));
        assert!(listed_in_connection(b"X-Foo", Some(b"close, x-foo")));
        assert!(!listed_in_connection(b"X-Foo", Some(b"close")));
        assert!(!listed_in_connection(b"X-Foo", None));
    }

    #[test]
    fn underscore_table() {
        use Underscores::*;
        // (name, policy, dropped)
        let table: &[(&[u8], Underscores, bool)] = &[
            (b"Transfer_Encoding", Drop, true),
            (b"X_Api_Key", Drop, true),
            (b"x_api_key", Drop, true),
            (b"_", Drop, true),
            (b"Content_Length", Drop, true),
            (b"X-Api-Key", Drop, false),
            (b"Accept", Drop, false),
            (b"X_Api_Key", Refuse, true),
            (b"X-Api-Key", Refuse, false),
            (b"X_Api_Key", Pass, false),
            (b"Transfer_Encoding", Pass, false),
        ];
        for &(name, policy, want) in table {
            assert_eq!(
                drop_underscored(name, policy),
                want,
                "{} {policy:?}",
                String::from_utf8_lossy(name)
            );
        }
        assert_eq!(Underscores::default(), Drop);
        assert_eq!(Underscores::from_name("refuse"), Some(Refuse));
        assert_eq!(Underscores::from_name("Drop"), None);
    }
}
