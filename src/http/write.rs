//! Writers for what goes on the wire towards the agent: response heads (from an upstream head,
//! filtered), the gateway's own JSON errors, and chunk framing.
use super::head::{HeaderSpan, Version};
use super::hop;
use crate::error::Refusal;

pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the body of a response to the agent is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Body ends when the connection closes (HTTP/1.0 agents only).
    Close,
    /// No body (HEAD, 204, 304); `Content-Length` is repeated when the upstream sent one.
    NoBody(Option<u64>),
}

pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
}

/// Status line, the upstream's end-to-end headers in order, then the gateway's own headers.
#[allow(clippy::too_many_arguments)]
pub fn response_head(
    out: &mut Vec<u8>,
    status: u16,
    reason: &[u8],
    src: &[u8],
    headers: &[HeaderSpan],
    connection: Option<&[u8]>,
    request_id: &str,
    extra: &[u8],
    framing: Framing,
    keep_alive: bool,
    agent_version: Version,
    drop_encoding: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    for h in headers {
        let name = h.name.get(src);
        if hop::strip_from_response(name)
            || hop::listed_in_connection(name, connection)
            || (drop_encoding && name.eq_ignore_ascii_case(b"content-encoding"))
        {
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
    out.extend_from_slice(extra);
    match framing {
        Framing::Length(n) | Framing::NoBody(Some(n)) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Close | Framing::NoBody(None) => {}
    }
    connection_header(out, keep_alive, agent_version);
    out.extend_from_slice(b"\r\n");
}

fn connection_header(out: &mut Vec<u8>, keep_alive: bool, agent_version: Version) {
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if agent_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

/// A 200 `application/json` answer the gateway writes itself: the JSON-RPC error answer to an
/// MCP call its policy refused (the MCP client reads it as the call's result).
pub fn json_answer(
    out: &mut Vec<u8>,
    body: &str,
    request_id: &str,
    extra: &[u8],
    keep_alive: bool,
    agent_version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ");
    push_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\nX-Request-Id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    connection_header(out, keep_alive, agent_version);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// The gateway's own answer: `{"error":{"code","message","request_id"}}`.
pub fn error_response(
    out: &mut Vec<u8>,
    refusal: &Refusal,
    request_id: &str,
    extra: &[u8],
    keep_alive: bool,
    agent_version: Version,
) {
    let mut err = serde_json::json!({
        "code": refusal.code(),
        "message": refusal.message(),
        "request_id": request_id,
    });
    if let Some(id) = refusal.approval_id() {
        err["approval_id"] = id.into();
    }
    if let Refusal::ApprovalPending { retry_after, .. } = refusal {
        err["retry_after"] = (*retry_after).into();
    }
    let body = serde_json::json!({ "error": err }).to_string();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(refusal.status()));
    out.push(b' ');
    out.extend_from_slice(refusal.reason().as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    push_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\nX-Request-Id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    match refusal {
        Refusal::RateLimited { retry_after } => {
            out.extend_from_slice(b"Retry-After: ");
            push_u64(out, *retry_after);
            out.extend_from_slice(b"\r\n");
        }
        Refusal::BudgetExhausted {
            budget,
            limit,
            per_secs,
            retry_after,
        } => {
            out.extend_from_slice(b"Retry-After: ");
            push_u64(out, *retry_after);
            out.extend_from_slice(b"\r\n");
            rate_limit_headers(out, *limit, 0, *retry_after);
            // the name is config text of token characters (checked by compile)
            out.extend_from_slice(b"RateLimit-Policy: \"");
            out.extend_from_slice(budget.as_bytes());
            out.extend_from_slice(b"\";q=");
            push_u64(out, *limit);
            out.extend_from_slice(b";w=");
            push_u64(out, *per_secs);
            out.extend_from_slice(b"\r\nPortcullis-Budget: ");
            out.extend_from_slice(budget.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // the refill thread retries Redis within 2 s
        // the refill thread retries Redis within 2 s; bodies in flight finish within seconds
        Refusal::MeterUnavailable | Refusal::Overloaded => {
            out.extend_from_slice(b"Retry-After: 1\r\n")
        }
        Refusal::ProxyAuthRequired { .. } => {
            out.extend_from_slice(b"Proxy-Authenticate: Basic realm=\"portcullis\"\r\n");
        }
        Refusal::ApprovalPending { id, retry_after } => {
            out.extend_from_slice(b"Retry-After: ");
            push_u64(out, *retry_after);
            // generated ids (`apr_` + hex): safe in a header
            out.extend_from_slice(b"\r\nPortcullis-Approval: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Refusal::ApprovalQueueFull | Refusal::ApprovalUnavailable => {
            out.extend_from_slice(b"Retry-After: 5\r\n")
        }
        _ => {}
    }
    out.extend_from_slice(extra);
    connection_header(out, keep_alive, agent_version);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds) header lines.
pub fn rate_limit_headers(out: &mut Vec<u8>, limit: u64, remaining: u64, reset_secs: u64) {
    out.extend_from_slice(b"RateLimit-Limit: ");
    push_u64(out, limit);
    out.extend_from_slice(b"\r\nRateLimit-Remaining: ");
    push_u64(out, remaining);
    out.extend_from_slice(b"\r\nRateLimit-Reset: ");
    push_u64(out, reset_secs);
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk (nothing for empty data: an empty chunk would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    super::chunked::encode_chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_spec_json() {
        let mut out = Vec::new();
        error_response(
            &mut out,
            &Refusal::UnknownProxy,
            "rid-1",
            b"",
            true,
            Version::Http11,
        );
        let s = String::from_utf8(out).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("\r\nContent-Type: application/json\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        assert!(head.contains("\r\nX-Request-Id: rid-1"));
        assert!(!head.contains("Connection"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "unknown_proxy");
        assert_eq!(v["error"]["request_id"], "rid-1");
    }

    #[test]
    fn chunk_framing() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello, world!!!!");
        push_chunk(&mut out, b"");
        assert_eq!(out, b"10\r\nhello, world!!!!\r\n");
    }
}
