//! A small blocking HTTP/1.1 client for control-plane fetches: OAuth2 token requests and JWKS
//! documents. It runs on the refresher thread, its fetch threads, or the thread compiling a
//! config — never on a worker (it blocks on std sockets).
//!
//! One request per connection (`Connection: close`), std `TcpStream` with connect / read /
//! write timeouts and an overall deadline, rustls `StreamOwned` for https (SNI, webpki roots
//! plus the per-proxy `ca_file`, built by `upstream::tls`). The response head is parsed by the
//! gateway's own strict parser (`http::head::parse_response`); bodies may be Content-Length,
//! chunked (`http::chunked`) or close-delimited, and are capped at `MAX_BODY`.
//!
//! Errors never carry request bytes (the request may hold a client secret): only the target's
//! authority, I/O error kinds and short static reasons.
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{self, BodyKind, ResponseHead};
use crate::net::url::Url;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Largest response body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Timeouts of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Per address tried.
    pub connect: Duration,
    /// Per read / write.
    pub io: Duration,
    /// The whole exchange, connect to last body byte.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            io: Duration::from_secs(10),
            total: Duration::from_secs(15),
        }
    }
}

/// A response: status and the decoded body (wiped on drop: it may hold an access token).
pub struct Response {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("I/O error with {0}: {1}")]
    Io(String, String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("bad response from {0}: {1}")]
    BadResponse(String, &'static str),
    #[error("response from {0} is larger than {MAX_BODY} bytes")]
    TooLarge(String),
}

/// A TCP or TLS stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The (plain or TLS) connection plus what errors need to name.
struct RoundTrip {
    stream: Stream,
    who: String,
    https: bool,
    deadline: Instant,
    io: Duration,
}

impl RoundTrip {
    fn io_err(&self, e: &std::io::Error) -> FetchError {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::WouldBlock | K::TimedOut => FetchError::Timeout(self.who.clone()),
            // rustls reports certificate and handshake failures as InvalidData
            K::InvalidData if self.https => FetchError::Tls(self.who.clone(), e.to_string()),
            k => FetchError::Io(self.who.clone(), k.to_string()),
        }
    }

    /// Sets the socket timeout to what is left of the deadline (at most `io`).
    fn arm(&mut self) -> Result<(), FetchError> {
        let left = self
            .deadline
            .saturating_duration_since(crate::util::clock::now());
        if left.is_zero() {
            return Err(FetchError::Timeout(self.who.clone()));
        }
        let t = left.min(self.io);
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        };
        tcp.set_read_timeout(Some(t))
            .and_then(|()| tcp.set_write_timeout(Some(t)))
            .map_err(|e| self.io_err(&e))
    }

    /// Reads more bytes onto `buf`, up to `upto` bytes in all (at least one more is asked
    /// for). `Ok(0)` at end of stream.
    fn read_more(&mut self, buf: &mut Vec<u8>, upto: usize) -> Result<usize, FetchError> {
        self.arm()?;
        let mut chunk = [0u8; 16 * 1024];
        let want = upto.saturating_sub(buf.len()).clamp(1, chunk.len());
        loop {
            let n = match self.stream.read(&mut chunk[..want]) {
                Ok(n) => n,
                // a TLS peer that closes without close_notify: treated as end of stream; every
                // framed body is still checked for completeness by the caller
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(&e)),
            };
            buf.extend_from_slice(&chunk[..n]);
            zeroize::Zeroize::zeroize(&mut chunk[..n]);
            return Ok(n);
        }
    }
}

fn connect(url: &Url, t: &Timeouts, deadline: Instant) -> Result<TcpStream, FetchError> {
    let who = url.authority.clone();
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|_| FetchError::Resolve(who.clone()))?
        .collect();
    if addrs.is_empty() {
        return Err(FetchError::Resolve(who));
    }
    let mut last = String::from("no address");
    for a in addrs {
        let left = deadline.saturating_duration_since(crate::util::clock::now());
        if left.is_zero() {
            return Err(FetchError::Timeout(who));
        }
        match TcpStream::connect_timeout(&a, t.connect.min(left)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e.kind().to_string(),
        }
    }
    Err(FetchError::Connect(who, last))
}

/// Sends one request to `url` and reads the whole response. `tls` is the client config for
/// https (`upstream::tls::client_config`); `None` builds one with the webpki roots.
/// `headers` must not include Host, Content-Length or Connection (set here).
pub fn request(
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    t: &Timeouts,
) -> Result<Response, FetchError> {
    let deadline = crate::util::clock::now() + t.total;
    let who = url.authority.clone();
    let tcp = connect(url, t, deadline)?;
    let stream = if url.https {
        let cfg = match tls {
            Some(c) => c.clone(),
            None => {
                crate::net::tls::client_config(None).map_err(|m| FetchError::Tls(who.clone(), m))?
            }
        };
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|_| FetchError::Tls(who.clone(), "not a valid TLS server name".into()))?;
        let conn = rustls::ClientConnection::new(cfg, name)
            .map_err(|e| FetchError::Tls(who.clone(), e.to_string()))?;
        Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
    } else {
        Stream::Plain(tcp)
    };
    let mut x = RoundTrip {
        stream,
        who,
        https: url.https,
        deadline,
        io: t.io,
    };

    // the request, in one buffer that is wiped afterwards (it may hold a client secret)
    let mut out = Zeroizing::new(Vec::with_capacity(256 + body.len()));
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(url.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(url.authority.as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: portcullis/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n");
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    x.arm()?;
    if let Err(e) = x.stream.write_all(&out).and_then(|()| x.stream.flush()) {
        return Err(x.io_err(&e));
    }
    drop(out);
    read_response(&mut x, method == "HEAD")
}

fn read_response(x: &mut RoundTrip, head_request: bool) -> Result<Response, FetchError> {
    let limits = head::Limits {
        max_head: MAX_HEAD,
        max_headers: 100,
    };
    // every buffer that may hold body bytes is wiped on drop (best effort: a growing Vec may
    // leave copies behind when it reallocates, so lengths are reserved up front where known)
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let mut resp = ResponseHead::default();
    // the head, skipping interim (1xx) responses
    loop {
        let complete = head::parse_response(&buf, &limits, head_request, &mut resp)
            .map_err(|e| FetchError::BadResponse(x.who.clone(), e.message()))?;
        if complete {
            if (100..200).contains(&resp.status) {
                buf.drain(..resp.head_len);
                continue;
            }
            break;
        }
        if x.read_more(&mut buf, MAX_HEAD + 1)? == 0 {
            return Err(FetchError::BadResponse(
                x.who.clone(),
                "connection closed before the response head",
            ));
        }
    }
    let status = resp.status;
    let mut data = Zeroizing::new(buf.split_off(resp.head_len));
    let body = match resp.body {
        BodyKind::None => Zeroizing::new(Vec::new()),
        BodyKind::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_BODY)
                .ok_or_else(|| FetchError::TooLarge(x.who.clone()))?;
            let more = n.saturating_sub(data.len());
            data.reserve(more);
            while data.len() < n {
                if x.read_more(&mut data, n)? == 0 {
                    return Err(FetchError::BadResponse(
                        x.who.clone(),
                        "connection closed mid-body",
                    ));
                }
            }
            data.truncate(n);
            data
        }
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::new();
            let mut body = Zeroizing::new(Vec::with_capacity(16 * 1024));
            let mut pos = 0;
            loop {
                let step = dec
                    .step(&data[pos..])
                    .map_err(|e| FetchError::BadResponse(x.who.clone(), e.message()))?;
                let range = (pos + step.data.start)..(pos + step.data.end);
                if body.len() + range.len() > MAX_BODY {
                    return Err(FetchError::TooLarge(x.who.clone()));
                }
                body.extend_from_slice(&data[range]);
                pos += step.consumed;
                if step.done {
                    break;
                }
                if step.consumed == 0 {
                    data.drain(..pos);
                    pos = 0;
                    if data.len() > MAX_BODY {
                        return Err(FetchError::TooLarge(x.who.clone()));
                    }
                    if x.read_more(&mut data, usize::MAX)? == 0 {
                        return Err(FetchError::BadResponse(
                            x.who.clone(),
                            "connection closed mid-body",
                        ));
                    }
                }
            }
            body
        }
        BodyKind::CloseDelimited => {
            while x.read_more(&mut data, MAX_BODY + 1)? > 0 {
                if data.len() > MAX_BODY {
                    return Err(FetchError::TooLarge(x.who.clone()));
                }
            }
            data
        }
    };
    Ok(Response { status, body })
}

/// GET `url` (for JWKS documents).
pub fn get(
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
    t: &Timeouts,
) -> Result<Response, FetchError> {
    request(url, tls, "GET", &[("Accept", b"application/json")], b"", t)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::type_complexity)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection: reads the request head (+ Content-Length body), sends `reply`
    /// (in pieces, to exercise partial reads), returns what it received.
    fn serve_once(reply: Vec<u8>) -> (Url, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            loop {
                let n = s.read(&mut b).unwrap_or(0);
                got.extend_from_slice(&b[..n]);
                if n == 0 {
                    break;
                }
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let cl = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + cl {
                        break;
                    }
                }
            }
            for piece in reply.chunks(7) {
                if s.write_all(piece).is_err() {
                    break;
                }
            }
            got
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/token?x=1")).unwrap();
        (url, h)
    }

    fn quick() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            io: Duration::from_secs(2),
            total: Duration::from_secs(5),
        }
    }

    #[test]
    fn bodies_in_every_framing() {
        let cases: &[(&str, &[u8], Result<(u16, &[u8]), &str>)] = &[
            (
                "content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Ok((200, b"hello")),
            ),
            (
                "chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nT: v\r\n\r\n",
                Ok((200, b"hello")),
            ),
            (
                "close-delimited",
                b"HTTP/1.1 503 Busy\r\n\r\nlater",
                Ok((503, b"later")),
            ),
            (
                "interim 100 skipped",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                Ok((204, b"")),
            ),
            (
                "truncated length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
                Err("closed mid-body"),
            ),
            (
                "truncated chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                Err("closed mid-body"),
            ),
            (
                "CL and TE",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err("both Content-Length and Transfer-Encoding"),
            ),
            (
                "too large",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
                Err("larger than"),
            ),
            ("no head", b"", Err("before the response head")),
            ("junk", b"SSH-2.0-x\r\n\r\n", Err("bad response")),
        ];
        for (name, reply, want) in cases {
            let (url, h) = serve_once(reply.to_vec());
            let got = request(
                &url,
                None,
                "POST",
                &[("Content-Type", b"text/plain")],
                b"a=1",
                &quick(),
            );
            let sent = h.join().unwrap();
            let sent = String::from_utf8_lossy(&sent);
            assert!(
                sent.starts_with("POST /token?x=1 HTTP/1.1\r\nHost: 127.0.0.1:"),
                "{name}: {sent}"
            );
            assert!(sent.contains("\r\nContent-Length: 3\r\n"), "{name}: {sent}");
            assert!(sent.contains("\r\nContent-Type: text/plain\r\n"), "{name}");
            assert!(sent.ends_with("\r\n\r\na=1"), "{name}: {sent}");
            match (got, want) {
                (Ok(r), Ok((status, body))) => {
                    assert_eq!((r.status, &r.body[..]), (*status, *body), "{name}")
                }
                (Err(e), Err(frag)) => assert!(e.to_string().contains(frag), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn large_chunked_body_is_capped() {
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..17 {
            reply.extend_from_slice(b"10000\r\n");
            reply.extend_from_slice(&chunk);
            reply.extend_from_slice(b"\r\n");
        }
        reply.extend_from_slice(b"0\r\n\r\n");
        let (url, h) = serve_once(reply);
        let e = get(&url, None, &quick()).unwrap_err();
        assert!(matches!(e, FetchError::TooLarge(_)), "{e}");
        let _ = h.join();
    }

    #[test]
    fn unreachable_and_silent_peers_fail_in_bounded_time() {
        // nothing listening
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let e = get(&url, None, &quick()).unwrap_err();
        assert!(matches!(e, FetchError::Connect(..)), "{e}");
        // a peer that accepts and never answers
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            io: Duration::from_millis(200),
            total: Duration::from_secs(1),
        };
        let started = crate::util::clock::now();
        let e = get(&url, None, &t).unwrap_err();
        assert!(matches!(e, FetchError::Timeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(l);
    }

    #[test]
    fn https_without_a_trusted_certificate_fails_as_tls() {
        // a plain-text server on an https URL: the handshake fails cleanly
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(300));
        });
        let url = Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap();
        let e = get(&url, None, &quick()).unwrap_err();
        assert!(matches!(e, FetchError::Tls(..)), "{e}");
        let _ = h.join();
    }
}
