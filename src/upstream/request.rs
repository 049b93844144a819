//! The outbound request head: the canonical path under the upstream's base path, the agent's
//! query as received, `Host` rewritten to the upstream's, hop-by-hop and gateway-owned fields
//! removed, `X-Request-Id` and `Content-Length` set by the gateway. (Target credentials are
//! injected here too once identity lands: this is the only place a `Secret` is exposed.)
use crate::config::Upstream;
use crate::http::head::RequestHead;
use crate::http::hop;
use crate::http::write::push_u64;

/// `rest` is the canonical path below the proxy (starting with '/', or empty for the bare
/// proxy root); `query` includes its leading '?' (or is empty).
#[allow(clippy::too_many_arguments)]
pub fn build(
    out: &mut Vec<u8>,
    src: &[u8],
    head: &RequestHead,
    up: &Upstream,
    rest: &str,
    query: &[u8],
    request_id: &str,
    body_len: u64,
) {
    let method = head.method.get(src);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(up.base_path.as_bytes());
    if rest.is_empty() {
        if up.base_path.is_empty() {
            out.push(b'/');
        }
    } else {
        out.extend_from_slice(rest.as_bytes());
    }
    out.extend_from_slice(query);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(up.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection = head.connection.map(|c| c.get(src));
    for h in &head.headers {
        let name = h.name.get(src);
        if hop::strip_from_request(name) || hop::listed_in_connection(name, connection) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(src));
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
