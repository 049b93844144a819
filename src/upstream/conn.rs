//! An upstream connection: plain TCP or rustls over TCP, one type for the pool and the pipeline,
//! and the check that keeps one caller's response from reaching another: an idle connection
//! on which anything arrived (bytes an upstream wrote after its response, an unsolicited 408,
//! a TLS alert) or that the upstream closed is never reused.
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_rustls::ClientTlsStream;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use std::os::fd::{AsRawFd, RawFd};

pub enum UpConn {
    Plain(TcpStream),
    /// The TLS stream and its socket's descriptor (owned by the stream; read here only to peek).
    Tls(Box<ClientTlsStream<TcpStream>>, RawFd),
}

/// What an idle connection shows without a request outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleState {
    /// Nothing arrived: safe to reuse.
    Quiet,
    /// Bytes are waiting: they belong to no request of ours.
    Bytes,
    /// The upstream closed (or reset) the connection.
    Closed,
}

impl UpConn {
    pub fn tls(stream: ClientTlsStream<TcpStream>, fd: RawFd) -> Self {
        UpConn::Tls(Box::new(stream), fd)
    }

    fn fd(&self) -> RawFd {
        match self {
            UpConn::Plain(s) => s.as_raw_fd(),
            UpConn::Tls(_, fd) => *fd,
        }
    }

    /// Looks at the socket without blocking and without consuming anything.
    pub fn idle_state(&self) -> IdleState {
        let mut b = [0u8; 1];
        match recv(
            self.fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => IdleState::Closed,
            Ok(_) => IdleState::Bytes,
            Err(Errno::EAGAIN | Errno::EINTR) => IdleState::Quiet,
            Err(_) => IdleState::Closed,
        }
    }
}

impl AsyncReadRent for UpConn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.read(buf).await,
            UpConn::Tls(s, _) => s.read(buf).await,
        }
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.readv(buf).await,
            UpConn::Tls(s, _) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpConn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.write(buf).await,
            UpConn::Tls(s, _) => s.write(buf).await,
        }
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.writev(buf).await,
            UpConn::Tls(s, _) => s.writev(buf).await,
        }
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpConn::Plain(s) => s.flush().await,
            UpConn::Tls(s, _) => s.flush().await,
        }
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpConn::Plain(s) => s.shutdown().await,
            UpConn::Tls(s, _) => s.shutdown().await,
        }
    }
}
