//! Which header fields stop at the gateway (RFC 9110 §7.6.1 hop-by-hop fields, plus the ones the
//! gateway owns and rewrites itself).
use super::head::tokens;

/// Request fields never forwarded as received: hop-by-hop fields, framing (re-done by the
/// gateway), `Host` (rewritten to the upstream's), `Expect` (answered by the gateway),
/// `Proxy-Authorization` (a proxy credential) and `X-Request-Id` (set by the gateway).
pub fn strip_from_request(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
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
    NAMES
        .iter()
        .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
}

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
}
