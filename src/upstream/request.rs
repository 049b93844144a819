//! The outbound request head: the canonical path under the upstream's base path, the agent's
//! query as received, `Host` rewritten to the upstream's, hop-by-hop and gateway-owned fields
//! removed along with every header that could carry a credential, `X-Request-Id` and
//! `Content-Length` set by the gateway, and the target credential injected: this is the only
//! place a `Secret` is exposed on the data plane.
use crate::config::{Proxy, Upstream};
use crate::credentials::{AuthApplyError, AuthHeaders, OutboundAuth, OutboundRequest};
use crate::http::head::RequestHead;
use crate::http::hop;
use crate::http::write::push_u64;
use crate::identity;
use crate::secrets::Secret;
use zeroize::Zeroizing;

/// Writes the outbound path: the upstream's base path, then the canonical rest.
fn push_path(out: &mut Vec<u8>, up: &Upstream, rest: &str) {
    out.extend_from_slice(up.base_path.as_bytes());
    if rest.is_empty() {
        if up.base_path.is_empty() {
            out.push(b'/');
        }
    } else {
        out.extend_from_slice(rest.as_bytes());
    }
}

/// Writes the agent's query (with its '?', or nothing), without the parameter the proxy's own
/// credential owns, then the credential's `param=value` if any.
fn push_query(out: &mut Vec<u8>, query: &[u8], owned: Option<&str>, auth_query: &str) {
    let mut first = true;
    let body = query.strip_prefix(b"?").unwrap_or(query);
    match owned {
        None => {
            if !body.is_empty() || query == b"?" {
                out.extend_from_slice(query);
                first = false;
            }
        }
        Some(param) => {
            for pair in body.split(|b| *b == b'&') {
                let name = pair.split(|b| *b == b'=').next().unwrap_or(b"");
                if pair.is_empty() || query_name_is(name, param) {
                    continue;
                }
                out.push(if first { b'?' } else { b'&' });
                out.extend_from_slice(pair);
                first = false;
            }
        }
    }
    if !auth_query.is_empty() {
        out.push(if first { b'?' } else { b'&' });
        out.extend_from_slice(auth_query.as_bytes());
    }
}

/// Whether a raw query parameter name is `param` once percent-decoded (so `api%5Fkey` cannot
/// smuggle a second credential past the filter).
fn query_name_is(raw: &[u8], param: &str) -> bool {
    let p = param.as_bytes();
    let mut i = 0;
    let mut j = 0;
    while i < raw.len() {
        let b = if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (hex(raw[i + 1]), hex(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    i += 3;
                    (h * 16 + l) as u8
                }
                _ => {
                    i += 1;
                    b'%'
                }
            }
        } else if raw[i] == b'+' {
            i += 1;
            b' '
        } else {
            i += 1;
            raw[i - 1]
        };
        if j >= p.len() || p[j] != b {
            return false;
        }
        j += 1;
    }
    j == p.len()
}

/// Whether the agent's header `name` stops here: hop-by-hop, gateway-owned, or able to carry a
/// credential (the agent's own, or one that would collide with the proxy's target credential).
fn stripped(name: &[u8], connection: Option<&[u8]>, proxy: &Proxy) -> bool {
    // a proxy that redacts responses asks for them uncompressed (below)
    (proxy.redact.is_some() && name.eq_ignore_ascii_case(b"accept-encoding"))
        || hop::strip_from_request(name)
        || hop::listed_in_connection(name, connection)
        || hop::drop_underscored(name, proxy.underscore_headers)
        || identity::is_credential_header(name, None, proxy.forward_cookies)
        || proxy.auth.as_ref().is_some_and(|a| a.owns_header(name))
}

/// Produces the target credential for this call (the only place a `Secret` is exposed): headers
/// into `out_headers`, a query parameter into `out_query`. `oauth_token` is the proxy's current
/// OAuth2 access token (`oauth::token`), for `scheme = "oauth2"`.
#[allow(clippy::too_many_arguments)]
pub fn credential<'a>(
    auth: &'a OutboundAuth,
    src: &[u8],
    head: &RequestHead,
    proxy: &Proxy,
    rest: &str,
    query: &[u8],
    body: &[u8],
    now_unix: i64,
    oauth_token: Option<&Secret>,
    out_headers: &mut AuthHeaders<'a>,
    out_query: &mut Zeroizing<String>,
) -> Result<(), AuthApplyError> {
    let up = &proxy.upstream;
    let mut path = Vec::with_capacity(up.base_path.len() + rest.len() + 1);
    push_path(&mut path, up, rest);
    let mut q = Vec::with_capacity(query.len());
    push_query(&mut q, query, auth.owned_query_param(), "");
    let q = q.strip_prefix(b"?").unwrap_or(&q);
    // what the upstream will see: Host first, then the forwarded fields (the same filter as
    // `build`, so what is signed is what is sent)
    let connection = head.connection.map(|c| c.get(src));
    let mut headers: Vec<(&[u8], &[u8])> = Vec::with_capacity(head.headers.len() + 1);
    headers.push((b"host", up.authority.as_bytes()));
    for h in &head.headers {
        let name = h.name.get(src);
        if !stripped(name, connection, proxy) {
            headers.push((name, h.value.get(src)));
        }
    }
    let req = OutboundRequest {
        method: std::str::from_utf8(head.method.get(src)).unwrap_or("GET"),
        path: std::str::from_utf8(&path).unwrap_or("/"),
        query: std::str::from_utf8(q).unwrap_or(""),
        headers: &headers,
        body,
    };
    auth.apply(&req, now_unix, oauth_token, out_headers, out_query)
}

/// A short static reason for a credential failure (the 502's message).
pub fn credential_failure(e: &AuthApplyError) -> &'static str {
    match e {
        AuthApplyError::NoToken => "no OAuth2 access token is available",
        AuthApplyError::SecretUnavailable(why) => why,
        AuthApplyError::SigV4(_) => "the request could not be signed",
    }
}

/// `rest` is the canonical path below the proxy (starting with '/', or empty for the bare
/// proxy root); `query` includes its leading '?' (or is empty).
#[allow(clippy::too_many_arguments)]
pub fn build(
    out: &mut Vec<u8>,
    src: &[u8],
    head: &RequestHead,
    proxy: &Proxy,
    rest: &str,
    query: &[u8],
    request_id: &str,
    body_len: u64,
    auth_headers: &[(&str, Zeroizing<Vec<u8>>)],
    auth_query: &str,
) {
    let up = &proxy.upstream;
    let method = head.method.get(src);
    out.extend_from_slice(method);
    out.push(b' ');
    push_path(out, up, rest);
    let owned = proxy.auth.as_ref().and_then(|a| a.owned_query_param());
    if owned.is_none() && auth_query.is_empty() {
        out.extend_from_slice(query);
    } else {
        push_query(out, query, owned, auth_query);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(up.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection = head.connection.map(|c| c.get(src));
    for h in &head.headers {
        let name = h.name.get(src);
        if stripped(name, connection, proxy) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(src));
        out.extend_from_slice(b"\r\n");
    }
    if proxy.redact.is_some() {
        out.extend_from_slice(b"Accept-Encoding: identity\r\n");
    }
    for (name, value) in auth_headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Request-Id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    if body_len > 0 || method_expects_body(method) {
        out.extend_from_slice(b"Content-Length: ");
        push_u64(out, body_len);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn method_expects_body(m: &[u8]) -> bool {
    matches!(m, b"POST" | b"PUT" | b"PATCH")
}

/// Methods that may be retried on a fresh connection when a pooled one turns out dead.
pub fn idempotent(m: &[u8]) -> bool {
    matches!(
        m,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_query_parameter_is_dropped_in_every_spelling() {
        let table: &[(&[u8], Option<&str>, &str, &str)] = &[
            (b"", None, "", ""),
            (b"?a=1", None, "", "?a=1"),
            (b"?", None, "", "?"),
            (
                b"?a=1&api_key=x&b=2",
                Some("api_key"),
                "api_key=S",
                "?a=1&b=2&api_key=S",
            ),
            (b"?api%5Fkey=x", Some("api_key"), "api_key=S", "?api_key=S"),
            (
                b"?API_KEY=x",
                Some("api_key"),
                "api_key=S",
                "?API_KEY=x&api_key=S",
            ),
            (b"?api_key", Some("api_key"), "api_key=S", "?api_key=S"),
            (b"?a&&b", Some("k"), "k=S", "?a&b&k=S"),
            (b"", Some("k"), "k=S", "?k=S"),
        ];
        for (query, owned, auth, want) in table {
            let mut out = Vec::new();
            push_query(&mut out, query, *owned, auth);
            assert_eq!(
                String::from_utf8_lossy(&out),
                *want,
                "{:?}",
                String::from_utf8_lossy(query)
            );
        }
    }
}
