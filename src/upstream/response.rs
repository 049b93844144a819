//! The upstream's response: head (strictly parsed, 1xx skipped, `upstream_timeout` until the
//! head) and the body streamed to the agent chunk by chunk through one bounded buffer.
use super::conn::UpConn;
use crate::error::Refusal;
use crate::http::body::consume;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{BodyKind, Limits, ResponseHead, parse_response};
use crate::http::io::{IoFail, read_append, write_all, write_range};
use crate::http::write::{Framing, push_chunk};
use monoio::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for streaming bodies; also the most a body chunk waits in the gateway.
pub const STREAM_BUF: usize = 64 * 1024;
const RESPONSE_LIMITS: Limits = Limits {
    max_head: MAX_RESPONSE_HEAD,
    max_headers: 256,
};

#[derive(Debug)]
pub enum HeadFail {
    /// The connection closed (or reset) before a single response byte: a pooled connection
    /// may be retried on a fresh one.
    ClosedEarly,
    Refused(Refusal),
}

/// Reads the response head into `ubuf` (which may hold more than the head afterwards).
pub async fn read_head(
    conn: &mut UpConn,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    method_is_head: bool,
    deadline: Instant,
) -> Result<(), HeadFail> {
    ubuf.clear();
    let mut any = false;
    loop {
        if !ubuf.is_empty() {
            match parse_response(ubuf, &RESPONSE_LIMITS, method_is_head, resp) {
                Ok(true) if (100..200).contains(&resp.status) => {
                    if resp.status == 101 {
                        return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                            "upstream switched protocols",
                        )));
                    }
                    // interim response: the agent's Expect was answered by the gateway already
                    consume(ubuf, resp.head_len);
                    continue;
                }
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(reason = e.message(), "invalid upstream response head");
                    return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                        "invalid response head from upstream",
                    )));
                }
            }
        }
        match read_append(conn, ubuf, STREAM_BUF, deadline).await {
            Ok(0) if !any => return Err(HeadFail::ClosedEarly),
            Ok(0) => {
                return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                    "upstream closed the connection mid-head",
                )));
            }
            Ok(_) => any = true,
            Err(IoFail::Timeout) => return Err(HeadFail::Refused(Refusal::UpstreamTimeout)),
            Err(IoFail::Io(_)) if !any => return Err(HeadFail::ClosedEarly),
            Err(IoFail::Io(_)) => {
                return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                    "upstream connection failed mid-head",
                )));
            }
        }
    }
}

/// The upstream's Content-Length header value, for HEAD and 304 answers that carry one.
pub fn content_length(resp: &ResponseHead, src: &[u8]) -> Option<u64> {
    resp.headers
        .iter()
        .find(|h| h.name.get(src).eq_ignore_ascii_case(b"content-length"))
        .and_then(|h| std::str::from_utf8(h.value.get(src)).ok()?.parse().ok())
}

/// How streaming the body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Body complete; the upstream connection may be reused.
    Reusable,
    /// Body complete, but the upstream connection must be closed.
    Complete,
    /// The upstream failed mid-body: the agent's response is cut (connection closed).
    UpstreamFailed,
    /// The agent went away.
    AgentGone,
}

pub struct StreamIo<'a> {
    pub conn: &'a mut UpConn,
    pub client: &'a mut TcpStream,
    /// Holds the response head at `[..head_len]` and whatever body bytes came with it.
    pub ubuf: &'a mut Vec<u8>,
    /// Holds the agent's response head (already built); body bytes are appended to it.
    pub out: &'a mut Vec<u8>,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub bytes_out: &'a mut u64,
}

/// Writes the head in `out` and the body to the agent. `kind` is the upstream's framing,
/// `framing` the agent's.
pub async fn stream_body(
    io: StreamIo<'_>,
    head_len: usize,
    kind: BodyKind,
    framing: Framing,
) -> StreamEnd {
    let StreamIo {
        conn,
        client,
        ubuf,
        out,
        read_timeout,
        write_timeout,
        bytes_out,
    } = io;
    let chunked_out = framing == Framing::Chunked;
    macro_rules! flush {
        () => {{
            *bytes_out += out.len() as u64;
            if write_all(client, out, write_timeout).await.is_err() {
                return StreamEnd::AgentGone;
            }
        }};
    }
    match kind {
        BodyKind::None => {
            let extra = ubuf.len() > head_len;
            flush!();
            if extra {
                StreamEnd::Complete
            } else {
                StreamEnd::Reusable
            }
        }
        BodyKind::Length(n) => {
            let avail = (ubuf.len() - head_len) as u64;
            let first = avail.min(n) as usize;
            let extra = avail > n;
            let mut remaining = n - first as u64;
            // the head and the first body bytes in one write
            out.extend_from_slice(&ubuf[head_len..head_len + first]);
            flush!();
            while remaining > 0 {
                ubuf.clear();
                let want = remaining.min(STREAM_BUF as u64) as usize;
                let deadline = crate::util::clock::now() + read_timeout;
                match read_append(conn, ubuf, want, deadline).await {
                    Ok(0) | Err(_) => return StreamEnd::UpstreamFailed,
                    Ok(got) => {
                        remaining -= got as u64;
                        *bytes_out += got as u64;
                        let len = ubuf.len();
                        if write_range(client, ubuf, 0..len, write_timeout)
                            .await
                            .is_err()
                        {
                            return StreamEnd::AgentGone;
                        }
                    }
                }
            }
            if extra {
                StreamEnd::Complete
            } else {
                StreamEnd::Reusable
            }
        }
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::new();
            consume(ubuf, head_len);
            loop {
                let mut pos = 0;
                loop {
                    let step = match dec.step(&ubuf[pos..]) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(
                                reason = e.message(),
                                "invalid chunked body from upstream"
                            );
                            flush!();
                            return StreamEnd::UpstreamFailed;
                        }
                    };
                    let data = &ubuf[pos + step.data.start..pos + step.data.end];
                    if chunked_out {
                        push_chunk(out, data);
                    } else {
                        out.extend_from_slice(data);
                    }
                    pos += step.consumed;
                    if step.done {
                        if chunked_out {
                            out.extend_from_slice(crate::http::chunked::LAST_CHUNK);
                        }
                        let extra = pos < ubuf.len();
                        flush!();
                        return if extra {
                            StreamEnd::Complete
                        } else {
                            StreamEnd::Reusable
                        };
                    }
                    if step.consumed == 0 {
                        break;
                    }
                }
                // everything decoded so far goes out now: events are not held back
                if !out.is_empty() {
                    flush!();
                }
                consume(ubuf, pos);
                let deadline = crate::util::clock::now() + read_timeout;
                match read_append(conn, ubuf, STREAM_BUF, deadline).await {
                    Ok(0) | Err(_) => return StreamEnd::UpstreamFailed,
                    Ok(_) => {}
                }
            }
        }
        BodyKind::CloseDelimited => {
            let first = &ubuf[head_len..];
            if chunked_out {
                push_chunk(out, first);
            } else {
                out.extend_from_slice(first);
            }
            flush!();
            loop {
                ubuf.clear();
                let deadline = crate::util::clock::now() + read_timeout;
                match read_append(conn, ubuf, STREAM_BUF, deadline).await {
                    Ok(0) => {
                        if chunked_out {
                            out.extend_from_slice(crate::http::chunked::LAST_CHUNK);
                            flush!();
                        }
                        return StreamEnd::Complete;
                    }
                    Err(_) => return StreamEnd::UpstreamFailed,
                    Ok(_) => {
                        if chunked_out {
                            push_chunk(out, ubuf);
                        } else {
                            out.extend_from_slice(ubuf);
                        }
                        flush!();
                    }
                }
            }
        }
    }
}

/// A response header's value (the first one named `name`).
pub fn header<'a>(resp: &ResponseHead, src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    resp.headers
        .iter()
        .find(|h| h.name.get(src).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(src))
}

/// Like `stream_body`, with every piece of the decoded body passed through `redactor` first.
/// The agent's framing is chunked (HTTP/1.1) or close-delimited (HTTP/1.0); a redaction error
/// cuts the response.
pub async fn stream_redacted(
    io: StreamIo<'_>,
    head_len: usize,
    kind: BodyKind,
    framing: Framing,
    redactor: &mut crate::redact::response::ResponseRedactor<'_>,
) -> StreamEnd {
    let StreamIo {
        conn,
        client,
        ubuf,
        out,
        read_timeout,
        write_timeout,
        bytes_out,
    } = io;
    let chunked_out = framing == Framing::Chunked;
    let mut red = Vec::with_capacity(STREAM_BUF);
    macro_rules! emit {
        ($data:expr) => {{
            red.clear();
            if let Err(e) = redactor.feed($data, &mut red) {
                tracing::warn!(error = %e, "response redaction failed: cutting the response");
                *bytes_out += out.len() as u64;
                let _ = write_all(client, out, write_timeout).await;
                return StreamEnd::UpstreamFailed;
            }
            if chunked_out {
                push_chunk(out, &red);
            } else {
                out.extend_from_slice(&red);
            }
            if !out.is_empty() {
                *bytes_out += out.len() as u64;
                if write_all(client, out, write_timeout).await.is_err() {
                    return StreamEnd::AgentGone;
                }
            }
        }};
    }
    macro_rules! finish {
        ($end:expr) => {{
            red.clear();
            if let Err(e) = redactor.finish(&mut red) {
                tracing::warn!(error = %e, "response redaction failed: cutting the response");
                *bytes_out += out.len() as u64;
                let _ = write_all(client, out, write_timeout).await;
                return StreamEnd::UpstreamFailed;
            }
            if chunked_out {
                push_chunk(out, &red);
                out.extend_from_slice(crate::http::chunked::LAST_CHUNK);
            } else {
                out.extend_from_slice(&red);
            }
            *bytes_out += out.len() as u64;
            if write_all(client, out, write_timeout).await.is_err() {
                return StreamEnd::AgentGone;
            }
            return $end;
        }};
    }
    match kind {
        BodyKind::None => finish!(if ubuf.len() > head_len {
            StreamEnd::Complete
        } else {
            StreamEnd::Reusable
        }),
        BodyKind::Length(n) => {
            let avail = (ubuf.len() - head_len) as u64;
            let first = avail.min(n) as usize;
            let extra = avail > n;
            let mut remaining = n - first as u64;
            let body = ubuf[head_len..head_len + first].to_vec();
            emit!(&body);
            while remaining > 0 {
                ubuf.clear();
                let want = remaining.min(STREAM_BUF as u64) as usize;
                let deadline = crate::util::clock::now() + read_timeout;
                match read_append(conn, ubuf, want, deadline).await {
                    Ok(0) | Err(_) => return StreamEnd::UpstreamFailed,
                    Ok(got) => {
                        remaining -= got as u64;
                        let chunk = std::mem::take(ubuf);
                        emit!(&chunk);
                        *ubuf = chunk;
                    }
                }
            }
            finish!(if extra {
                StreamEnd::Complete
            } else {
                StreamEnd::Reusable
            })
        }
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::new();
            consume(ubuf, head_len);
            loop {
                let mut pos = 0;
                let mut data = Vec::new();
                let mut done = false;
                loop {
                    let step = match dec.step(&ubuf[pos..]) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(
                                reason = e.message(),
                                "invalid chunked body from upstream"
                            );
                            return StreamEnd::UpstreamFailed;
                        }
                    };
                    data.extend_from_slice(&ubuf[pos + step.data.start..pos + step.data.end]);
                    pos += step.consumed;
                    if step.done {
                        done = true;
                        break;
                    }
                    if step.consumed == 0 {
                        break;
                    }
                }
                if !data.is_empty() {
                    emit!(&data);
                }
                if done {
                    let extra = pos < ubuf.len();
                    finish!(if extra {
                        StreamEnd::Complete
                    } else {
                        StreamEnd::Reusable
                    });
                }
                consume(ubuf, pos);
                let deadline = crate::util::clock::now() + read_timeout;
                match read_append(conn, ubuf, STREAM_BUF, deadline).await {
                    Ok(0) | Err(_) => return StreamEnd::UpstreamFailed,
                    Ok(_) => {}
                }
            }
        }
        BodyKind::CloseDelimited => {
            let first = ubuf[head_len..].to_vec();
            emit!(&first);
            loop {
                ubuf.clear();
                let deadline = crate::util::clock::now() + read_timeout;
                match read_append(conn, ubuf, STREAM_BUF, deadline).await {
                    Ok(0) => finish!(StreamEnd::Complete),
                    Err(_) => return StreamEnd::UpstreamFailed,
                    Ok(_) => {
                        let chunk = std::mem::take(ubuf);
                        emit!(&chunk);
                        *ubuf = chunk;
                    }
                }
            }
        }
    }
}
