//! The request body, read whole into one buffer (≤ `max_request_body`) before anything goes
//! upstream, so scanners see all of it and the upstream gets an unambiguous Content-Length.
use super::chunked::{ChunkedDecoder, ChunkedError};
use super::head::BodyKind;
use crate::http::io::{IoFail, read_append};
use monoio::io::AsyncReadRent;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum BodyFail {
    TooLarge,
    /// The worker's bodies in flight would exceed `max_body_memory` (`Reserve::grow_to`).
    Overloaded,
    Bad(&'static str),
    /// The agent went away or stalled; nothing more can be said to it.
    Gone,
}

/// The memory account a body is read against: before the body may hold `total` bytes, the
/// reader asks; `false` stops the read (`BodyFail::Overloaded`).
pub trait Reserve {
    fn grow_to(&mut self, total: u64) -> bool;
}

/// Drops the first `n` bytes of `buf` (pipelined bytes after them move to the front).
pub fn consume(buf: &mut Vec<u8>, n: usize) {
    if n >= buf.len() {
        buf.clear();
    } else {
        buf.copy_within(n.., 0);
        buf.truncate(buf.len() - n);
    }
}

/// Drops `buf[from..from + n]`, moving what follows down.
fn consume_at(buf: &mut Vec<u8>, from: usize, n: usize) {
    let end = (from + n).min(buf.len());
    buf.copy_within(end.., from);
    buf.truncate(buf.len() - (end - from));
}

/// Reads the body described by `kind` into `dst`. `rbuf[..head_len]` is the request head and
/// stays untouched; what was read after it is the start of the body. Returns the offset in
/// `rbuf` where the body ends (what follows is a pipelined request). Each read waits at most
/// `read_timeout`, and the whole body must have arrived by `body_deadline`. The body's bytes
/// are reserved on `account` before they are held (a length-delimited body at once, a chunked
/// one as its chunks arrive); the buffer of a length-delimited body is allocated exactly.
#[allow(clippy::too_many_arguments)]
pub async fn read<R: AsyncReadRent>(
    client: &mut R,
    rbuf: &mut Vec<u8>,
    head_len: usize,
    kind: BodyKind,
    max: u64,
    account: &mut impl Reserve,
    dst: &mut Vec<u8>,
    read_timeout: Duration,
    body_deadline: Instant,
) -> Result<usize, BodyFail> {
    dst.clear();
    let deadline = || (crate::util::clock::now() + read_timeout).min(body_deadline);
    match kind {
        BodyKind::None | BodyKind::CloseDelimited => Ok(head_len),
        BodyKind::Length(n) => {
            if n > max {
                return Err(BodyFail::TooLarge);
            }
            if !account.grow_to(n) {
                return Err(BodyFail::Overloaded);
            }
            let n = n as usize;
            dst.reserve_exact(n);
            let avail = rbuf.len().saturating_sub(head_len);
            let take = avail.min(n);
            dst.extend_from_slice(&rbuf[head_len..head_len + take]);
            while dst.len() < n {
                let want = (n - dst.len()).min(256 * 1024);
                match read_append(client, dst, want, deadline()).await {
                    Ok(0) | Err(IoFail::Io) | Err(IoFail::Timeout) => {
                        return Err(BodyFail::Gone);
                    }
                    Ok(_) => {}
                }
            }
            Ok(head_len + take)
        }
        BodyKind::Chunked => {
            // the limit refuses a too-large chunk on its size line, before its data is awaited
            let mut dec = ChunkedDecoder::with_limit(max);
            let mut pos = head_len;
            loop {
                let step = dec.step(&rbuf[pos..]).map_err(|e| match e {
                    ChunkedError::TooLarge => BodyFail::TooLarge,
                    e => BodyFail::Bad(e.message()),
                })?;
                let data = &rbuf[pos + step.data.start..pos + step.data.end];
                let total = (dst.len() + data.len()) as u64;
                if total > max {
                    return Err(BodyFail::TooLarge);
                }
                if !account.grow_to(total) {
                    return Err(BodyFail::Overloaded);
                }
                dst.extend_from_slice(data);
                pos += step.consumed;
                if step.done {
                    consume_at(rbuf, head_len, pos - head_len);
                    return Ok(head_len);
                }
                if step.consumed == 0 {
                    // keep the head, drop the decoded framing, read more
                    consume_at(rbuf, head_len, pos - head_len);
                    pos = head_len;
                    match read_append(client, rbuf, 16 * 1024, deadline()).await {
                        Ok(0) | Err(_) => return Err(BodyFail::Gone),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_helpers() {
        let mut b = b"headBODYnext".to_vec();
        consume_at(&mut b, 4, 4);
        assert_eq!(b, b"headnext");
        consume(&mut b, 4);
        assert_eq!(b, b"next");
        consume(&mut b, 10);
        assert!(b.is_empty());
    }
}
