//! Owned-buffer I/O helpers with timeouts over monoio's rent traits. A timed-out operation loses
//! its buffer (monoio keeps it until the kernel lets go), so callers close the connection after
//! any `IoFail::Timeout`.
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum IoFail {
    Timeout,
    Io,
}

/// Reads once, appending at most `max` bytes to `buf` (growing it as needed). Ok(0) is EOF.
pub async fn read_append<R: AsyncReadRent>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> Result<usize, IoFail> {
    let len = buf.len();
    if buf.capacity() - len < max {
        buf.reserve(max);
    }
    let end = (len + max).min(buf.capacity());
    let owned = std::mem::take(buf);
    match monoio::time::timeout_at(deadline.into(), r.read(owned.slice_mut(len..end))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map_err(|_| IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes all of `buf`, giving it back (cleared) afterwards.
pub async fn write_all<W: AsyncWriteRent>(
    w: &mut W,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), IoFail> {
    let owned = std::mem::take(buf);
    match monoio::time::timeout(timeout, w.write_all(owned)).await {
        Ok((res, mut b)) => {
            b.clear();
            *buf = b;
            res.map(|_| ()).map_err(|_| IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes `buf[range]`, giving the whole buffer back untouched.
pub async fn write_range<W: AsyncWriteRent>(
    w: &mut W,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
    timeout: Duration,
) -> Result<(), IoFail> {
    use monoio::buf::IoBuf;
    let owned = std::mem::take(buf);
    match monoio::time::timeout(timeout, w.write_all(owned.slice(range))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map(|_| ()).map_err(|_| IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}
