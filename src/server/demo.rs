//! The built-in demo upstream for the quickstart (`[demo] listen = "127.0.0.1:8081"`, loopback
//! only): answers every request with a JSON echo of what it received, so `curl` through the
//! gateway works offline and shows exactly what was forwarded. `/sse` streams five events.
//! Plain threads and blocking sockets: it is a demo, not part of the data plane.
#![allow(clippy::disallowed_methods)]
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{self, BodyKind, RequestHead};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const MAX_CONNS: usize = 128;

pub fn start(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let live = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("portcullis-demo".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if live.load(Ordering::Relaxed) >= MAX_CONNS {
                    continue; // dropped: closes
                }
                live.fetch_add(1, Ordering::Relaxed);
                let live = live.clone();
                let spawned = std::thread::Builder::new()
                    .name("portcullis-demo-conn".into())
                    .spawn(move || {
                        let _ = serve(conn);
                        live.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    tracing::warn!("demo upstream: cannot spawn a connection thread");
                }
            }
        })?;
    Ok(())
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let limits = head::Limits {
        max_head: 64 * 1024,
        max_headers: 128,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut head = RequestHead::default();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        // head
        loop {
            match head::parse_request(&buf, &limits, &mut head) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    let body = format!("{{\"demo\":true,\"error\":{:?}}}", e.message());
                    return respond(&mut s, 400, "application/json", body.as_bytes(), false);
                }
            }
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        // body
        let mut body_len = 0usize;
        let mut pos = head.head_len;
        match head.body {
            BodyKind::Length(n) => {
                let n = n as usize;
                while buf.len() < head.head_len + n {
                    let r = s.read(&mut tmp)?;
                    if r == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&tmp[..r]);
                }
                body_len = n;
                pos += n;
            }
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::new();
                loop {
                    let step = dec
                        .step(&buf[pos..])
                        .map_err(|e| std::io::Error::other(e.message()))?;
                    body_len += step.data.len();
                    pos += step.consumed;
                    if step.done {
                        break;
                    }
                    if step.consumed == 0 {
                        let r = s.read(&mut tmp)?;
                        if r == 0 {
                            return Ok(());
                        }
                        buf.extend_from_slice(&tmp[..r]);
                    }
                }
            }
            BodyKind::None | BodyKind::CloseDelimited => {}
        }
        let method = String::from_utf8_lossy(head.method.get(&buf)).into_owned();
        let target = String::from_utf8_lossy(head.target.get(&buf)).into_owned();
        let keep = head.keep_alive;
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if path == "/sse" {
            sse(&mut s)?;
            return Ok(());
        }
        let headers: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(h.name.get(&buf)).into_owned(),
                    String::from_utf8_lossy(h.value.get(&buf)).into_owned(),
                )
            })
            .collect();
        let echo = serde_json::json!({
            "demo": true,
            "message": "hello from the portcullis demo upstream",
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "body_bytes": body_len,
        });
        let mut body = serde_json::to_vec_pretty(&echo).unwrap_or_default();
        body.push(b'\n');
        respond(&mut s, 200, "application/json", &body, keep)?;
        if !keep {
            return Ok(());
        }
        buf.drain(..pos.min(buf.len()));
    }
}

fn respond(
    s: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    keep: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}\r\n",
        crate::error::reason_phrase(status),
        body.len(),
        if keep { "" } else { "Connection: close\r\n" }
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)
}

fn sse(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    for i in 1..=5 {
        let event = format!("id: {i}\ndata: {{\"n\":{i},\"text\":\"event {i} of 5\"}}\n\n");
        s.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
        std::thread::sleep(Duration::from_millis(300));
    }
    s.write_all(b"0\r\n\r\n")?;
    Ok(())
}
