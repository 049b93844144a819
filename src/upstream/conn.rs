//! An upstream connection: plain TCP or rustls over TCP, one type for the pool and the pipeline.
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_rustls::ClientTlsStream;

pub enum UpConn {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl AsyncReadRent for UpConn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.read(buf).await,
            UpConn::Tls(s) => s.read(buf).await,
        }
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.readv(buf).await,
            UpConn::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpConn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.write(buf).await,
            UpConn::Tls(s) => s.write(buf).await,
        }
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpConn::Plain(s) => s.writev(buf).await,
            UpConn::Tls(s) => s.writev(buf).await,
        }
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpConn::Plain(s) => s.flush().await,
            UpConn::Tls(s) => s.flush().await,
        }
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpConn::Plain(s) => s.shutdown().await,
            UpConn::Tls(s) => s.shutdown().await,
        }
    }
}
