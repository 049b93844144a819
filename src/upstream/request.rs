//! The outbound request head: the canonical path under the upstream's base path, the agent's
//! query as received, `Host` rewritten to the upstream's, hop-by-hop and gateway-owned fields
//! removed along with every header that could carry a credential, `X-Request-Id` and
//! `Content-Length` set by the gateway, and the target credential injected: this is the only
//! place a `Secret` is exposed on the data plane.
use crate::config::{Proxy, Upstream};
use crate::credentials::OutboundRequest;
use crate::http::head::RequestHead;
use crate::http::write::push_u64;
use crate::http::{hop, query};
use std::ops::Range;
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
                if pair.is_empty() || query::form_name_is(name, param.as_bytes()) {
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

/// The outbound request head, built once per call in the head buffer. `begin` writes the
/// request line, `Host` and the forwarded fields; the credential reads that very text
/// (`request`), so what is signed is what is sent; `finish` adds the credential, the gateway's
/// own fields and the blank line.
pub struct Outbound {
    method: Range<usize>,
    path: Range<usize>,
    /// The query as written, with its '?' (empty when there is none).
    query: Range<usize>,
    /// `Host` and the forwarded field lines.
    headers: Range<usize>,
}

/// Writes the request line, `Host` and the agent's fields that the proxy's compiled filter lets
/// through into `out` (cleared first). `rest` is the canonical path below the proxy (starting
/// with '/', or empty for the bare proxy root); `query` includes its leading '?' (or is empty).
/// `traceparent`: the gateway's own W3C trace context (`[telemetry] otlp`), written after
/// `Host` in place of every `traceparent` the agent sent (a credential that reads the head sees
/// the one that is sent); without it the agent's passes through. `tracestate` always passes
/// unchanged.
pub fn begin(
    out: &mut Vec<u8>,
    src: &[u8],
    head: &RequestHead,
    proxy: &Proxy,
    rest: &str,
    query: &[u8],
    traceparent: Option<&[u8]>,
) -> Outbound {
    out.clear();
    let up = &proxy.upstream;
    out.extend_from_slice(head.method.get(src));
    let method = 0..out.len();
    out.push(b' ');
    let p0 = out.len();
    push_path(out, up, rest);
    let path = p0..out.len();
    let q0 = out.len();
    match proxy.auth.as_ref().and_then(|a| a.owned_query_param()) {
        None => out.extend_from_slice(query),
        owned => push_query(out, query, owned, ""),
    }
    let query = q0..out.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let h0 = out.len();
    out.extend_from_slice(b"Host: ");
    out.extend_from_slice(up.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(tp) = traceparent {
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(tp);
        out.extend_from_slice(b"\r\n");
    }
    let connection = head.connection.map(|c| c.get(src));
    for h in &head.headers {
        let name = h.name.get(src);
        if (traceparent.is_some() && name.eq_ignore_ascii_case(b"traceparent"))
            || proxy.request_filter.contains(name)
            || hop::listed_in_connection(name, connection)
            || hop::drop_underscored(name, proxy.underscore_headers)
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(src));
        out.extend_from_slice(b"\r\n");
    }
    Outbound {
        method,
        path,
        query,
        headers: h0..out.len(),
    }
}

impl Outbound {
    /// `Host` and the forwarded fields as written by `begin`, in order.
    pub fn headers<'a>(&self, out: &'a [u8]) -> Vec<(&'a [u8], &'a [u8])> {
        let lines = out.get(self.headers.clone()).unwrap_or_default();
        lines
            .split(|b| *b == b'\n')
            .filter_map(|l| {
                let l = l.strip_suffix(b"\r")?;
                let i = memchr::memmem::find(l, b": ")?;
                Some((&l[..i], &l[i + 2..]))
            })
            .collect()
    }

    /// The request as the credential sees it (what `begin` wrote, and the body).
    pub fn request<'a>(
        &self,
        out: &'a [u8],
        headers: &'a [(&'a [u8], &'a [u8])],
        body: &'a [u8],
    ) -> OutboundRequest<'a> {
        let text = |r: &Range<usize>| out.get(r.clone()).and_then(|b| std::str::from_utf8(b).ok());
        OutboundRequest {
            method: text(&self.method).unwrap_or("GET"),
            path: text(&self.path).unwrap_or("/"),
            query: text(&self.query)
                .map(|q| q.strip_prefix('?').unwrap_or(q))
                .unwrap_or(""),
            headers,
            body,
        }
    }

    /// Completes the head: the credential's query parameter (after the agent's), its headers,
    /// `Accept-Encoding: identity` for a redacting proxy or one that injects a credential, `X-Request-Id`, `Content-Length`.
    /// This is the only place a `Secret` is written on the data plane.
    pub fn finish(
        &self,
        out: &mut Vec<u8>,
        proxy: &Proxy,
        auth_headers: &[(&str, Zeroizing<Vec<u8>>)],
        auth_query: &str,
        request_id: &str,
        body_len: u64,
    ) {
        if !auth_query.is_empty() {
            let sep = if self.query.is_empty() { b'?' } else { b'&' };
            let at = self.query.end;
            out.splice(at..at, std::iter::once(sep).chain(auth_query.bytes()));
        }
        if proxy.redact.is_some() || proxy.auth.is_some() {
            // redacted or masked (the injected secret) responses: decoded bytes only
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
        let method = out.get(self.method.clone()).unwrap_or_default();
        if body_len > 0 || method_expects_body(method) {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, body_len);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
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
