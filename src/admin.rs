//! The admin listener, on its own thread: `/healthz`, `/readyz` (no token) and
//! `POST /v1/reload` (bearer `admin_token`). Same strict head parser as the data plane.
use crate::control::Control;
use crate::http::head::{self, RequestHead};
use crate::http::write::push_u64;
use crate::io::{read_append, write_all};
use monoio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub fn start(addr: SocketAddr, control: Arc<Control>) -> std::io::Result<()> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("portcullis-admin".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut rt) = rt else {
                tracing::error!("admin: cannot start runtime");
                return;
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin: cannot use listener");
                        return;
                    }
                };
                loop {
                    if let Ok((s, _)) = listener.accept().await {
                        monoio::spawn(serve(s, control.clone()));
                    }
                }
            });
        })?;
    Ok(())
}

async fn serve(mut s: TcpStream, control: Arc<Control>) {
    let mut buf = Vec::with_capacity(8192);
    let mut head = RequestHead::default();
    let limits = head::Limits {
        max_head: 8192,
        max_headers: 64,
    };
    let deadline = crate::clock::now() + Duration::from_secs(10);
    loop {
        match head::parse_request(&buf, &limits, &mut head) {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => {
                return respond(
                    &mut s,
                    400,
                    r#"{"error":{"code":"bad_request","message":"bad request"}}"#,
                )
                .await;
            }
        }
        match read_append(&mut s, &mut buf, 8192, deadline).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
    let method = head.method.get(&buf);
    let target = head.target.get(&buf);
    let path = target.split(|b| *b == b'?').next().unwrap_or(b"");
    let (status, body) = match (method, path) {
        (b"GET", b"/healthz") => (200, r#"{"status":"ok"}"#.to_string()),
        (b"GET", b"/readyz") if control.is_ready() => (200, r#"{"status":"ready"}"#.to_string()),
        (b"GET", b"/readyz") => (503, r#"{"status":"not ready"}"#.to_string()),
        (b"POST", b"/v1/reload") => match authorized(&head, &buf, &control) {
            Err(resp) => resp,
            Ok(()) => match control.reload() {
                Ok(generation) => (200, format!(r#"{{"reloaded":true,"generation":{generation}}}"#)),
                Err(e) => (
                    400,
                    serde_json::json!({"error": {"code": "reload_failed", "message": e.to_string()}}).to_string(),
                ),
            },
        },
        _ => (404, r#"{"error":{"code":"not_found","message":"no such admin endpoint"}}"#.to_string()),
    };
    respond(&mut s, status, &body).await;
}

fn authorized(head: &RequestHead, buf: &[u8], control: &Control) -> Result<(), (u16, String)> {
    let cfg = control.current();
    let Some(token) = cfg.server.admin_token.as_ref() else {
        return Err((403, r#"{"error":{"code":"admin_disabled","message":"set server.admin_token to use this endpoint"}}"#.into()));
    };
    let presented = head
        .headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(b"authorization"))
        .and_then(|h| {
            let v = h.value.get(buf);
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
        });
    match presented {
        Some(p) if token.ct_eq(p) => Ok(()),
        _ => Err((401, r#"{"error":{"code":"unauthenticated","message":"a valid admin bearer token is required"}}"#.into())),
    }
}

async fn respond(s: &mut TcpStream, status: u16, body: &str) {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(crate::error::reason_phrase(status).as_bytes());
    out.extend_from_slice(
        b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ",
    );
    push_u64(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    let _ = write_all(s, &mut out, Duration::from_secs(10)).await;
}
