//! Sending a batch to a sink's receiver (blocking std sockets: this runs on the sink's own
//! control-plane thread). `Ok` means acknowledged: an `http` receiver answered 2xx (and, for
//! Splunk HEC and Elastic bulk, said every record was taken); a `syslog` TCP/TLS receiver took
//! every byte (write and flush returned — syslog has no application acknowledgement, so records
//! in flight when a receiver crashes may be lost; `udp` is fire and forget).
#![forbid(unsafe_code)]

use super::config::{HttpSink, SinkConfig, SinkKind, SyslogSink, Transport};
use super::format;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// One sink's connection state.
pub enum Deliverer {
    Http,
    Syslog(Option<Conn>),
}

pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Udp(UdpSocket),
}

impl Conn {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Conn::Tcp(s) => Some(s),
            Conn::Tls(s) => Some(&s.sock),
            Conn::Udp(_) => None,
        }
    }
}

/// Largest datagram sent over UDP; a larger message is logged and skipped (audit lines are
/// far below this).
const UDP_MAX: usize = 65_000;

impl Deliverer {
    pub fn new(cfg: &SinkConfig) -> Deliverer {
        match cfg.kind {
            SinkKind::Http(_) => Deliverer::Http,
            SinkKind::Syslog(_) => Deliverer::Syslog(None),
        }
    }

    /// Sends `lines`; `Ok` once acknowledged. `scratch` is reused between calls.
    pub fn send(
        &mut self,
        cfg: &SinkConfig,
        lines: &[&[u8]],
        scratch: &mut Vec<u8>,
    ) -> Result<(), String> {
        match (self, &cfg.kind) {
            (Deliverer::Http, SinkKind::Http(h)) => send_http(h, cfg.timeout, lines, scratch),
            (Deliverer::Syslog(conn), SinkKind::Syslog(s)) => {
                let r = send_syslog(conn, s, cfg.timeout, lines, scratch);
                if r.is_err() {
                    *conn = None; // reconnect on the next attempt
                }
                r
            }
            _ => Err("sink state does not match its type".into()),
        }
    }
}

fn send_http(
    h: &HttpSink,
    timeout: Duration,
    lines: &[&[u8]],
    body: &mut Vec<u8>,
) -> Result<(), String> {
    let ctype = format::http_body(h, lines, body);
    let mut headers: Vec<(&str, &[u8])> = vec![("Content-Type", ctype.as_bytes())];
    if let Some(a) = &h.auth {
        headers.push((a.header.as_str(), a.value.expose()));
    }
    let t = crate::net::fetch::Timeouts {
        connect: timeout.min(Duration::from_secs(5)),
        io: timeout,
        total: timeout,
    };
    let resp = crate::net::fetch::request(&h.url, h.tls.as_ref(), "POST", &headers, body, &t)
        .map_err(|e| e.to_string())?;
    if !(200..300).contains(&resp.status) {
        return Err(format!("{} answered HTTP {}", h.url.authority, resp.status));
    }
    format::http_acknowledged(h.format, &resp.body)
}

fn resolve(s: &SyslogSink) -> Result<Vec<SocketAddr>, String> {
    let host = s.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, s.port)
        .to_socket_addrs()
        .map_err(|_| format!("cannot resolve {}", s.host))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {}", s.host));
    }
    Ok(addrs)
}

fn connect(s: &SyslogSink, timeout: Duration) -> Result<Conn, String> {
    let addrs = resolve(s)?;
    let who = format!("{}:{}", s.host, s.port);
    if s.transport == Transport::Udp {
        let a = addrs[0];
        let bind: SocketAddr = if a.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).map_err(|e| format!("udp socket: {e}"))?;
        sock.connect(a)
            .map_err(|e| format!("cannot reach {who}: {e}"))?;
        return Ok(Conn::Udp(sock));
    }
    let mut last = String::from("no address");
    let mut tcp = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout.min(Duration::from_secs(5))) {
            Ok(t) => {
                tcp = Some(t);
                break;
            }
            Err(e) => last = e.kind().to_string(),
        }
    }
    let tcp = tcp.ok_or_else(|| format!("cannot connect to {who}: {last}"))?;
    let _ = tcp.set_nodelay(true);
    tcp.set_write_timeout(Some(timeout))
        .and_then(|()| tcp.set_read_timeout(Some(timeout)))
        .map_err(|e| format!("{who}: {e}"))?;
    match &s.tls {
        None => Ok(Conn::Tcp(tcp)),
        Some((cfg, name)) => {
            let conn = rustls::ClientConnection::new(cfg.clone(), name.clone())
                .map_err(|e| format!("TLS with {who}: {e}"))?;
            let mut st = rustls::StreamOwned::new(conn, tcp);
            // the handshake now, so a certificate error names itself
            while st.conn.is_handshaking() {
                st.conn
                    .complete_io(&mut st.sock)
                    .map_err(|e| format!("TLS with {who} failed: {e}"))?;
            }
            Ok(Conn::Tls(Box::new(st)))
        }
    }
}

/// Whether the receiver closed (or reset) a kept connection: a non-blocking peek that sees end
/// of stream or an error. Writing into such a connection would "succeed" into the void.
fn closed_by_peer(c: &Conn) -> bool {
    let Some(t) = c.tcp() else { return false };
    if t.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = t.peek(&mut b);
    let _ = t.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false, // a receiver does not talk; TLS records (e.g. tickets) are fine
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn send_syslog(
    conn: &mut Option<Conn>,
    s: &SyslogSink,
    timeout: Duration,
    lines: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if conn.as_ref().is_some_and(closed_by_peer) {
        *conn = None;
    }
    if conn.is_none() {
        *conn = Some(connect(s, timeout)?);
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let pid = std::process::id();
    let who = format!("{}:{}", s.host, s.port);
    let mut msg = Vec::with_capacity(1024);
    out.clear();
    for l in lines {
        msg.clear();
        format::syslog_message(s, pid, l, &mut msg);
        match c {
            Conn::Udp(u) => {
                if msg.len() > UDP_MAX {
                    // retrying cannot help: say so and go on (use tcp or tls for such records)
                    tracing::error!(sink_address = %who, bytes = msg.len(),
                        "audit sink: a record does not fit a UDP datagram and is not sent");
                    continue;
                }
                u.send(&msg).map_err(|e| format!("udp to {who}: {e}"))?;
            }
            // octet-counting framing (RFC 6587 3.4.1, RFC 5425 4.3)
            _ => {
                out.extend_from_slice(msg.len().to_string().as_bytes());
                out.push(b' ');
                out.extend_from_slice(&msg);
            }
        }
    }
    let w = match c {
        Conn::Udp(_) => return Ok(()),
        Conn::Tcp(t) => t.write_all(out).and_then(|()| t.flush()),
        Conn::Tls(t) => t.write_all(out).and_then(|()| t.flush()),
    };
    // a receiver that closed right after this write shows up on the next batch's peek
    w.map_err(|e| format!("writing to {who}: {e}"))
}
