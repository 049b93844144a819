//! The agent's side of a connection: plain TCP or TLS terminated by the gateway (the agent
//! listener with `[server] tls`, the admin listener with `admin_tls`). One enum, so the
//! pipeline runs unchanged over either, without generics (compile time, DESIGN.md).
//!
//! The handshake is driven here with owned buffers over the `ServerConnection` itself, so
//! what the handshake established (the client certificate of an mTLS listener) can
//! be read before the connection is handed to `monoio_rustls`'s stream for the calls. Every
//! byte read during the handshake is given to rustls (`read_tls` until empty), so application
//! data that arrived with the client's Finished is already in the session's plaintext buffer
//! when the stream takes over: nothing is lost at the hand-over.
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::ServerConnection;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;

pub type ServerTls = monoio_rustls::ServerTlsStream<TcpStream>;

pub enum AgentIo {
    Plain(TcpStream),
    Tls(Box<ServerTls>),
    /// TLS the gateway terminated inside an agent's `CONNECT` (interception), over the
    /// agent's plain or TLS connection.
    Inner(Box<monoio_rustls::ServerTlsStream<Carrier>>),
}

/// The connection an intercepted tunnel runs over (what `AgentIo` was when the CONNECT came).
pub enum Carrier {
    Plain(TcpStream),
    Tls(Box<ServerTls>),
}

impl AgentIo {
    /// The connection as the carrier of a tunnel (`None`: already inside one: a CONNECT in a
    /// tunnel is refused).
    pub fn into_carrier(self) -> Option<Carrier> {
        match self {
            AgentIo::Plain(t) => Some(Carrier::Plain(t)),
            AgentIo::Tls(t) => Some(Carrier::Tls(t)),
            AgentIo::Inner(_) => None,
        }
    }
}

/// Terminates the agent's TLS inside an intercepted CONNECT: the handshake over `carrier`
/// with the minted leaf's config, within `timeout`. `early` holds bytes the agent sent after
/// the CONNECT head before it saw the 200 (its ClientHello, sent eagerly).
pub async fn accept_intercept(
    carrier: Carrier,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    early: &[u8],
) -> Result<AgentIo, HandshakeFail> {
    let mut io = carrier;
    let conn = ServerConnection::new(config).map_err(HandshakeFail::Tls)?;
    match monoio::time::timeout(timeout, handshake(&mut io, conn, early)).await {
        Ok(Ok(conn)) => Ok(AgentIo::Inner(Box::new(
            monoio_rustls::ServerTlsStream::new(io, conn),
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HandshakeFail::Timeout),
    }
}

/// What a TLS handshake established about the agent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The client certificate's subject, as `CN=bot,O=Example` (RFC 4514 order reversed as
    /// OpenSSL prints it: most significant first), when one was presented and verified.
    pub cert_subject: Option<String>,
    /// The first `spiffe://` URI SAN of the client certificate.
    pub spiffe_id: Option<String>,
}

/// Why a handshake failed, for the log line (never sent anywhere).
#[derive(Debug)]
pub enum HandshakeFail {
    Timeout,
    Closed,
    Io(std::io::ErrorKind),
    Tls(rustls::Error),
}

impl std::fmt::Display for HandshakeFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFail::Timeout => f.write_str("handshake timed out"),
            HandshakeFail::Closed => f.write_str("peer closed during the handshake"),
            HandshakeFail::Io(k) => write!(f, "i/o error during the handshake: {k}"),
            HandshakeFail::Tls(e) => write!(f, "{e}"),
        }
    }
}

/// Runs the server side of a TLS handshake on `tcp` within `timeout`.
pub async fn accept_tls(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> Result<(AgentIo, PeerTls), HandshakeFail> {
    let mut tcp = tcp;
    let conn = ServerConnection::new(config).map_err(HandshakeFail::Tls)?;
    match monoio::time::timeout(timeout, handshake(&mut tcp, conn, &[])).await {
        Ok(Ok(conn)) => {
            let peer = peer_tls(&conn);
            let stream = monoio_rustls::ServerTlsStream::new(tcp, conn);
            Ok((AgentIo::Tls(Box::new(stream)), peer))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HandshakeFail::Timeout),
    }
}

async fn handshake<S: AsyncReadRent + AsyncWriteRent>(
    tcp: &mut S,
    mut conn: ServerConnection,
    early: &[u8],
) -> Result<ServerConnection, HandshakeFail> {
    let mut inbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut rd: &[u8] = early;
    while !rd.is_empty() {
        match conn.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(HandshakeFail::Io(e.kind())),
        }
        conn.process_new_packets().map_err(HandshakeFail::Tls)?;
    }
    loop {
        // everything rustls wants to send first (ServerHello..., or an alert)
        while conn.wants_write() {
            out.clear();
            conn.write_tls(&mut out)
                .map_err(|e| HandshakeFail::Io(e.kind()))?;
            let (res, b) = tcp.write_all(std::mem::take(&mut out)).await;
            out = b;
            res.map_err(|e| HandshakeFail::Io(e.kind()))?;
        }
        if !conn.is_handshaking() {
            return Ok(conn);
        }
        inbuf.clear();
        let (res, b) = tcp.read(std::mem::take(&mut inbuf)).await;
        inbuf = b;
        match res {
            Ok(0) => return Err(HandshakeFail::Closed),
            Ok(_) => {}
            Err(e) => return Err(HandshakeFail::Io(e.kind())),
        }
        let mut rd: &[u8] = &inbuf;
        while !rd.is_empty() {
            match conn.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(HandshakeFail::Io(e.kind())),
            }
            if let Err(e) = conn.process_new_packets() {
                // the alert rustls queued tells the client why
                out.clear();
                let _ = conn.write_tls(&mut out);
                let (_, b) = tcp.write_all(std::mem::take(&mut out)).await;
                drop(b);
                return Err(HandshakeFail::Tls(e));
            }
        }
    }
}

fn peer_tls(conn: &ServerConnection) -> PeerTls {
    let mut p = PeerTls::default();
    if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
        let (subject, spiffe) = cert_names(cert);
        p.cert_subject = subject;
        p.spiffe_id = spiffe;
    }
    p
}

/// The subject (`CN=…,O=…`) and the first SPIFFE URI SAN of a DER certificate.
pub fn cert_names(cert: &CertificateDer<'_>) -> (Option<String>, Option<String>) {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return (None, None);
    };
    let subject = x.subject().to_string();
    let subject = (!subject.is_empty()).then(|| subject.replace(", ", ","));
    let spiffe = x.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                Some(u.to_string())
            }
            _ => None,
        })
    });
    (subject, spiffe)
}

impl AsyncReadRent for AgentIo {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            AgentIo::Plain(s) => s.read(buf).await,
            AgentIo::Tls(s) => s.read(buf).await,
            AgentIo::Inner(s) => s.read(buf).await,
        }
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            AgentIo::Plain(s) => s.readv(buf).await,
            AgentIo::Tls(s) => s.readv(buf).await,
            AgentIo::Inner(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for AgentIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            AgentIo::Plain(s) => s.write(buf).await,
            AgentIo::Tls(s) => s.write(buf).await,
            AgentIo::Inner(s) => s.write(buf).await,
        }
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            AgentIo::Plain(s) => s.writev(buf).await,
            AgentIo::Tls(s) => s.writev(buf).await,
            AgentIo::Inner(s) => s.writev(buf).await,
        }
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            AgentIo::Plain(s) => s.flush().await,
            AgentIo::Tls(s) => s.flush().await,
            AgentIo::Inner(s) => s.flush().await,
        }
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            AgentIo::Plain(s) => s.shutdown().await,
            AgentIo::Tls(s) => s.shutdown().await,
            AgentIo::Inner(s) => s.shutdown().await,
        }
    }
}

impl AsyncReadRent for Carrier {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Carrier::Plain(s) => s.read(buf).await,
            Carrier::Tls(s) => s.read(buf).await,
        }
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Carrier::Plain(s) => s.readv(buf).await,
            Carrier::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Carrier {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Carrier::Plain(s) => s.write(buf).await,
            Carrier::Tls(s) => s.write(buf).await,
        }
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Carrier::Plain(s) => s.writev(buf).await,
            Carrier::Tls(s) => s.writev(buf).await,
        }
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Carrier::Plain(s) => s.flush().await,
            Carrier::Tls(s) => s.flush().await,
        }
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Carrier::Plain(s) => s.shutdown().await,
            Carrier::Tls(s) => s.shutdown().await,
        }
    }
}
