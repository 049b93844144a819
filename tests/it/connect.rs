//! `CONNECT` (issue 17): interception with a CA made by `portcullis ca init`, blind tunnels,
//! `unknown_origin`, the SSRF guard, and real `HTTPS_PROXY` clients (curl, Python `requests`,
//! `httpx`, the `openai` SDK) trusting the test CA. The upstream is a TLS mock on 127.0.0.1
//! named `localhost` (its own test PKI, trusted through the proxy's `ca_file`); what it
//! received, what the client saw and the audit records are asserted.
use crate::forward::{BOT_KEY, OTHER_KEY, TARGET, curl, forward_config, python, wait_audit};
use crate::support::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "t0ken-for-connect-tests";

/// `portcullis ca init --out DIR`: ca.pem and ca.key (0600); a second run refuses to
/// overwrite. Returns the certificate's path.
fn ca_init(dir: &Path) -> PathBuf {
    let out = dir.join("ica");
    let o = run_portcullis(
        &["ca", "init", "--out", out.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("[forward]"), "{text}");
    assert!(text.contains("REQUESTS_CA_BUNDLE"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    let again = run_portcullis(
        &["ca", "init", "--out", out.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    out.join("ca.pem")
}

struct Env {
    _keep: tempfile::TempDir,
    ca_pem: PathBuf,
    mock: MockUpstream,
    gw: Gateway,
    admin: u16,
}

impl Env {
    fn proxy_url(&self, user: &str, key: &str) -> String {
        format!("http://{user}:{key}@127.0.0.1:{}", self.gw.port())
    }
    fn origin(&self) -> String {
        format!("https://localhost:{}", self.mock.port())
    }
    fn metric(&self, name: &str) -> u64 {
        let raw = send_raw(
            self.admin,
            format!(
                "GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        );
        let r = parse_response(&raw).unwrap();
        r.body_str()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }
}

/// The `forward` test config (agents `bot` and `other`, proxy `api` injecting a bearer,
/// allowing /v1/** but /v1/admin/**) for a TLS mock named `localhost`, one worker, with
/// `[forward]` (the CA from `ca init`) followed by `forward_extra`.
fn start(
    handler: impl Fn(&ReceivedRequest) -> Reply + Send + Sync + 'static,
    forward_extra: impl Fn(u16) -> String,
    tail: &str,
) -> Env {
    start_with(handler, forward_extra, tail, false)
}

/// `start`, the agent listener speaking TLS (the test PKI's `localhost` certificate, whose
/// CA is `upstream-ca.pem` beside the interception CA) when `listener_tls`.
fn start_with(
    handler: impl Fn(&ReceivedRequest) -> Reply + Send + Sync + 'static,
    forward_extra: impl Fn(u16) -> String,
    tail: &str,
    listener_tls: bool,
) -> Env {
    let keep = tempfile::tempdir().unwrap();
    let ca_pem = ca_init(keep.path());
    let pki = make_pki();
    let up_ca = keep.path().join("upstream-ca.pem");
    std::fs::write(&up_ca, &pki.ca_pem).unwrap();
    let mut server_tls = String::new();
    if listener_tls {
        let (c, k) = (keep.path().join("gw.pem"), keep.path().join("gw.key"));
        std::fs::write(&c, &pki.leaf_cert_pem).unwrap();
        std::fs::write(&k, &pki.leaf_key_pem).unwrap();
        server_tls = format!(
            "\ntls = {{ cert = \"file:{}\", key = \"file:{}\" }}",
            c.display(),
            k.display()
        );
    }
    let mock = MockUpstream::start_tls(&pki.leaf_cert_pem, &pki.leaf_key_pem, handler);
    let admin = free_port();
    let cfg = forward_config(
        &format!("https://localhost:{}", mock.port()),
        &format!(
            "admin_listen = \"127.0.0.1:{admin}\"\nadmin_token = \"file:admin.token\"{server_tls}"
        ),
        &format!("ca_file = \"{}\"", up_ca.display()),
    )
    .replace("workers = 2", "workers = 1");
    let ica = ca_pem.parent().unwrap();
    let cfg = format!(
        "{cfg}\n[forward]\nca = {{ cert = \"file:{0}/ca.pem\", key = \"file:{0}/ca.key\" }}\n{1}\n{tail}",
        ica.display(),
        forward_extra(mock.port())
    );
    let gw = crate::forward::start_forward(&cfg, &[("admin.token", ADMIN_TOKEN.as_bytes())]);
    Env {
        _keep: keep,
        ca_pem,
        mock,
        gw,
        admin,
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// What the gateway answered a raw CONNECT: status, reason and the head's text.
struct Answer {
    status: u16,
    reason: String,
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A raw CONNECT; returns the stream (positioned after the gateway's answer head, read a byte
/// at a time so nothing after it is consumed) and that answer.
fn raw_connect(port: u16, target: &str, cred: Option<&str>) -> (TcpStream, Answer) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(k) = cred {
        req.push_str(&format!("Proxy-Authorization: Basic {}\r\n", b64(k)));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or("").to_string();
    let mut parts = line.splitn(3, ' ');
    let _ = parts.next();
    let status = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let reason = parts.next().unwrap_or("").to_string();
    (
        s,
        Answer {
            status,
            reason,
            head,
        },
    )
}

/// curl through `HTTPS_PROXY`-style `-x http://bot:KEY@gw` to `https://localhost:PORT`: the
/// TLS is the gateway's (a leaf minted from the `ca init` CA, which curl trusts), the policy
/// applies inside (a denied path is 403 `denied_by_rule`), the upstream receives the injected
/// credential and never the proxy credential, and each call inside is audited with the agent,
/// `auth: proxy_basic` and `tunnel: intercept`. A second CONNECT to the same host reuses the
/// leaf (minted once).
#[test]
fn curl_through_an_intercepted_connect() {
    let env = start(|_| Reply::ok("fine"), |_| String::new(), "");
    let via = env.proxy_url("bot", BOT_KEY);
    let ca = env.ca_pem.to_str().unwrap();
    let url = format!("{}/v1/things?x=1", env.origin());
    let (code, text) = curl(&["-x", &via, "--cacert", ca, &url]);
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("fine"), "{text}");
    // a denied path, inside the tunnel
    let (code, text) = curl(&[
        "-x",
        &via,
        "--cacert",
        ca,
        &format!("{}/v1/admin/x", env.origin()),
    ]);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("denied_by_rule"), "{text}");
    // without the CA the client refuses the minted leaf (it is not the upstream's)
    let (code, _) = curl(&["-x", &via, &url]);
    assert_eq!(code, 0, "an untrusted leaf is refused by curl");

    let reqs = env.mock.requests();
    assert_eq!(reqs.len(), 1, "only the allowed call went upstream");
    assert_eq!(reqs[0].request_line(), "GET /v1/things?x=1 HTTP/1.1");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {TARGET}").as_str())
    );
    assert_eq!(reqs[0].header("proxy-authorization"), None);
    let recs = wait_audit(env.gw.dir(), 2);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in &recs {
        assert_eq!(r["agent"], "bot", "{r}");
        assert_eq!(r["auth"], "proxy_basic", "{r}");
        assert_eq!(r["tunnel"], "intercept", "{r}");
        assert_eq!(r["proxy"], "api", "{r}");
    }
    assert_eq!(recs[0]["status"], 200);
    assert_eq!(recs[0]["path"], "/v1/things");
    assert_eq!(recs[1]["status"], 403);
    assert_eq!(recs[1]["code"], "denied_by_rule");
    // three CONNECTs to localhost (one refused by curl's verification): one leaf
    assert_eq!(env.metric("portcullis_intercept_leaves_minted_total"), 1);
    assert!(env.metric("portcullis_intercept_handshake_errors_total") >= 1);
}

/// Python `requests` (REQUESTS_CA_BUNDLE), `httpx` (SSL_CERT_FILE) and the `openai` SDK, all
/// through `HTTPS_PROXY=http://bot:KEY@gw`: the upstream gets the target credential (never the
/// SDK's dummy key), a denied path is 403 inside the tunnel, the records name the agent.
#[test]
fn python_clients_through_https_proxy() {
    let completion = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi through the tunnel"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let env = start(
        move |r| {
            if r.request_line().starts_with("POST /v1/chat") {
                Reply::with(
                    200,
                    "OK",
                    &[("Content-Type", "application/json")],
                    completion.as_bytes(),
                )
            } else {
                Reply::ok("py-fine")
            }
        },
        |_| String::new(),
        "",
    );
    let o = env.origin();
    let script = format!(
        "import requests, httpx, openai\n\
         r = requests.get('{o}/v1/py')\n\
         print(r.status_code, r.text)\n\
         print(requests.get('{o}/v1/admin/keys').status_code)\n\
         print(httpx.get('{o}/v1/models').status_code)\n\
         c = openai.OpenAI(api_key='sk-agent-dummy-0000', base_url='{o}/v1', max_retries=0)\n\
         r = c.chat.completions.create(model='m', messages=[{{'role': 'user', 'content': 'hello'}}])\n\
         print(r.choices[0].message.content)\n"
    );
    let ca = env.ca_pem.to_str().unwrap();
    let proxy = env.proxy_url("bot", BOT_KEY);
    let out = python(
        &script,
        &[
            ("HTTPS_PROXY", &proxy),
            ("REQUESTS_CA_BUNDLE", ca),
            ("SSL_CERT_FILE", ca),
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["200 py-fine", "403", "200", "hi through the tunnel"],
        "{out}"
    );
    let reqs = env.mock.requests();
    let lines: Vec<_> = reqs.iter().map(|r| r.request_line()).collect();
    assert_eq!(
        lines,
        vec![
            "GET /v1/py HTTP/1.1",
            "GET /v1/models HTTP/1.1",
            "POST /v1/chat/completions HTTP/1.1"
        ]
    );
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TARGET}").as_str())
        );
        assert!(!r.head_str().contains("sk-agent-dummy"), "{}", r.head_str());
        assert_eq!(r.header("proxy-authorization"), None);
    }
    assert!(String::from_utf8_lossy(&reqs[2].body).contains("hello"));
    let recs = wait_audit(env.gw.dir(), 4);
    let got: Vec<_> = recs
        .iter()
        .map(|r| {
            (
                r["agent"].as_str(),
                r["status"].as_u64(),
                r["tunnel"].as_str(),
            )
        })
        .collect();
    let i = Some("intercept");
    assert_eq!(
        got,
        vec![
            (Some("bot"), Some(200), i),
            (Some("bot"), Some(403), i),
            (Some("bot"), Some(200), i),
            (Some("bot"), Some(200), i)
        ]
    );
}

/// Inside one intercepted tunnel: two pipelined requests written at once are answered in
/// order; a request whose Host is not the CONNECT's target is 400 and nothing goes upstream;
/// a CONNECT inside the tunnel is 400. Two tunnels to one host present the same leaf.
#[test]
fn pipelined_requests_and_host_pinning_inside_a_tunnel() {
    let env = start(
        |r| Reply::ok(&format!("echo {}", r.request_line())),
        |_| String::new(),
        "",
    );
    let port = env.mock.port();
    let script = format!(
        r#"
import socket, ssl, base64
ctx = ssl.create_default_context(cafile={ca:?})
def tunnel():
    s = socket.create_connection(("127.0.0.1", {gw}), timeout=10)
    cred = base64.b64encode(b"bot:{key}").decode()
    s.sendall(("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\nProxy-Authorization: Basic " + cred + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    print(head.split(b"\r\n")[0].decode())
    return ctx.wrap_socket(s, server_hostname="localhost")
def read_all(t):
    data = b""
    while True:
        try:
            chunk = t.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data
t = tunnel()
leaf1 = t.getpeercert(binary_form=True)
t.sendall(b"GET /v1/a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\nGET /v1/b HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
data = read_all(t)
print(data.count(b"HTTP/1.1 200"), data.index(b"echo GET /v1/a") < data.index(b"echo GET /v1/b"))
t = tunnel()
leaf2 = t.getpeercert(binary_form=True)
print("same leaf", leaf1 == leaf2)
t.sendall(b"GET /v1/c HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n")
print(read_all(t).split(b"\r\n")[0].decode())
t = tunnel()
t.sendall(b"CONNECT other:443 HTTP/1.1\r\nHost: other:443\r\n\r\n")
print(read_all(t).split(b"\r\n")[0].decode())
"#,
        ca = env.ca_pem.to_str().unwrap(),
        gw = env.gw.port(),
        key = BOT_KEY,
    );
    let out = python(&script, &[]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "HTTP/1.1 200 Connection Established",
            "2 True",
            "HTTP/1.1 200 Connection Established",
            "same leaf True",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 200 Connection Established",
            "HTTP/1.1 400 Bad Request",
        ],
        "{out}"
    );
    let lines: Vec<_> = env
        .mock
        .requests()
        .iter()
        .map(|r| r.request_line())
        .collect();
    assert_eq!(lines, vec!["GET /v1/a HTTP/1.1", "GET /v1/b HTTP/1.1"]);
    assert_eq!(env.metric("portcullis_intercept_leaves_minted_total"), 1);
}

/// A plain TCP peer that echoes what it reads and, at the agent's end of stream (the
/// half-close passed on by the tunnel), writes `<eof>` and closes. Counts its accepts.
fn echo_server() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for _ in 0..100 {
            let Ok((mut s, _)) = l.accept() else { return };
            a.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"<eof>");
            });
        }
    });
    (port, accepted)
}

fn read_to_end_bounded(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// A blind tunnel to an allow-listed origin (`allow_private = true` for 127.0.0.1): bytes
/// both ways, the agent's half-close passed on (the peer answers after it), one audit record
/// with the origin, bytes up and down, duration and agent. curl reaches the TLS mock through
/// a blind tunnel too (its own certificate, no credential injected: nothing is inspected).
/// The same origin without `allow_private` is refused by the SSRF guard, a metadata address
/// even with it; an agent the entry does not name gets `tunnel_denied`; none of these connect.
#[test]
fn blind_tunnels_and_the_ssrf_guard() {
    let (echo, accepted) = echo_server();
    let (echo2, accepted2) = echo_server();
    let env = start(
        |_| Reply::ok("blind-fine"),
        move |mock| {
            format!(
                "tunnel = [{{ host = \"127.0.0.1:{echo}\", allow_private = true }}, \"127.0.0.1:{echo2}\", {{ host = \"169.254.169.254:80\", allow_private = true }}, {{ host = \"127.0.0.1:{mock}\", allow_private = true }}, {{ host = \"localhost:{echo}\", agents = [\"other\"], allow_private = true }}]"
            )
        },
        "",
    );
    let start_t = Instant::now();
    let (mut s, r) = raw_connect(
        env.gw.port(),
        &format!("127.0.0.1:{echo}"),
        Some(&format!("bot:{BOT_KEY}")),
    );
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.reason, "Connection Established");
    s.write_all(b"hello through the tunnel").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = read_to_end_bounded(&mut s);
    assert_eq!(got, b"hello through the tunnel<eof>", "{}", show(&got));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let recs = wait_audit(env.gw.dir(), 1);
    let rec = recs
        .iter()
        .find(|r| r["tunnel"] == "blind")
        .expect("a blind record");
    assert_eq!(rec["agent"], "bot");
    assert_eq!(rec["auth"], "proxy_basic");
    assert_eq!(rec["method"], "CONNECT");
    assert_eq!(rec["path"], format!("127.0.0.1:{echo}"));
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["bytes_in"], 24);
    assert_eq!(rec["bytes_out"], 29);
    assert!(rec["total_us"].as_u64().unwrap() <= start_t.elapsed().as_micros() as u64);

    // curl over a blind tunnel to the TLS mock: end-to-end TLS, nothing injected
    let pki_ca = env.gw.dir().join("mock-ca.pem");
    std::fs::write(
        &pki_ca,
        std::fs::read(env._keep.path().join("upstream-ca.pem")).unwrap(),
    )
    .unwrap();
    let (code, text) = curl(&[
        "-x",
        &env.proxy_url("bot", BOT_KEY),
        "--cacert",
        pki_ca.to_str().unwrap(),
        &format!("https://127.0.0.1:{}/v1/raw", env.mock.port()),
    ]);
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("blind-fine"));
    let reqs = env.mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header("authorization"),
        None,
        "a blind tunnel injects nothing"
    );

    // refusals: no connection is made
    let cases = [
        (format!("127.0.0.1:{echo2}"), "bot", BOT_KEY, "ssrf_blocked"),
        (
            "169.254.169.254:80".to_string(),
            "bot",
            BOT_KEY,
            "ssrf_blocked",
        ),
        (format!("localhost:{echo}"), "bot", BOT_KEY, "tunnel_denied"),
    ];
    for (target, user, key, code) in &cases {
        let (mut s, r) = raw_connect(env.gw.port(), target, Some(&format!("{user}:{key}")));
        assert_eq!(r.status, 403, "{target}: {}", r.head);
        let body = read_to_end_bounded(&mut s);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], *code, "{target}: {}", show(&body));
    }
    assert_eq!(
        accepted2.load(Ordering::SeqCst),
        0,
        "the SSRF guard connects nowhere"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a denied agent connects nowhere"
    );
    // the agent the entry names gets through (localhost resolves to loopback: allowed here)
    let (mut s, r) = raw_connect(
        env.gw.port(),
        &format!("localhost:{echo}"),
        Some(&format!("other:{OTHER_KEY}")),
    );
    assert_eq!(r.status, 200, "{}", r.head);
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end_bounded(&mut s), b"<eof>");
    let recs = wait_audit(env.gw.dir(), 3 + 2);
    let refused: Vec<_> = recs
        .iter()
        .filter(|r| r["method"] == "CONNECT" && r["status"] == 403)
        .map(|r| r["code"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        refused,
        vec!["ssrf_blocked", "ssrf_blocked", "tunnel_denied"]
    );
}

/// A CONNECT to an origin no proxy intercepts and no tunnel lists: 403 `unknown_origin`, and
/// the origin's listener sees no connection. A wrong key is 407 with `Proxy-Authenticate`;
/// a CONNECT without a port, or in origin-form, is 400.
#[test]
fn unknown_origin_and_proxy_auth_on_connect() {
    let env = start(|_| Reply::ok("x"), |_| String::new(), "");
    let quiet = TcpListener::bind("127.0.0.1:0").unwrap();
    quiet.set_nonblocking(true).unwrap();
    let qport = quiet.local_addr().unwrap().port();
    let (mut s, r) = raw_connect(
        env.gw.port(),
        &format!("127.0.0.1:{qport}"),
        Some(&format!("bot:{BOT_KEY}")),
    );
    assert_eq!(r.status, 403, "{}", r.head);
    let body = read_to_end_bounded(&mut s);
    assert!(show(&body).contains("unknown_origin"), "{}", show(&body));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        quiet.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "no connection to an unknown origin"
    );
    // wrong key, no key: 407 before anything else
    for cred in [
        Some("bot:pcs_NotTheKey0123456789abcdefghijABCDEFGHIJ"),
        None,
    ] {
        let (_, r) = raw_connect(
            env.gw.port(),
            &format!("localhost:{}", env.mock.port()),
            cred,
        );
        assert_eq!(r.status, 407, "{}", r.head);
        assert_eq!(
            r.header("proxy-authenticate"),
            Some("Basic realm=\"portcullis\"")
        );
    }
    for raw in [
        "CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "CONNECT /v1/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let r = env.gw.conn().roundtrip(raw.as_bytes());
        assert_eq!(r.status, 400, "{raw}");
    }
    assert_eq!(env.mock.count(), 0);
    let recs = wait_audit(env.gw.dir(), 3);
    assert_eq!(recs[0]["code"], "unknown_origin");
    assert_eq!(recs[0]["agent"], "bot");
    assert_eq!(recs[0]["path"], format!("127.0.0.1:{qport}"));
}

/// Garbage after an intercepted CONNECT's 200 — plain HTTP instead of TLS, a broken
/// ClientHello, nothing at all (cut at `head_timeout`) — closes that connection cleanly,
/// each is counted, and the gateway goes on serving.
#[test]
fn garbage_inside_an_intercepted_tunnel_is_closed_and_counted() {
    let env = start(
        |_| Reply::ok("still-fine"),
        |_| String::new(),
        "[limits]\nhead_timeout = \"1s\"\n",
    );
    let target = format!("localhost:{}", env.mock.port());
    let cred = format!("bot:{BOT_KEY}");
    let payloads: [&[u8]; 3] = [
        b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff",
        b"",
    ];
    for p in payloads {
        let (mut s, r) = raw_connect(env.gw.port(), &target, Some(&cred));
        assert_eq!(r.status, 200, "{}", r.head);
        s.write_all(p).unwrap();
        let t = Instant::now();
        let _ = read_to_end_bounded(&mut s);
        assert!(t.elapsed() < Duration::from_secs(5), "closed, not hung");
    }
    assert_eq!(env.metric("portcullis_intercept_handshake_errors_total"), 3);
    let (code, text) = curl(&[
        "-x",
        &env.proxy_url("bot", BOT_KEY),
        "--cacert",
        env.ca_pem.to_str().unwrap(),
        &format!("{}/v1/ok", env.origin()),
    ]);
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("still-fine"));
    assert_eq!(env.mock.count(), 1);
}

/// `HTTPS_PROXY=https://…`: the agent reaches the gateway's TLS listener, CONNECTs inside that
/// TLS, and the intercepted TLS runs inside it (TLS in TLS); the policy applies as ever. Python
/// `requests` does the same through an `https://` proxy URL.
#[test]
fn intercept_over_the_tls_listener() {
    let env = start_with(
        |_| Reply::ok("tls-in-tls"),
        |mock| format!("tunnel = [{{ host = \"127.0.0.1:{mock}\", allow_private = true }}]"),
        "",
        true,
    );
    let listener_ca = env._keep.path().join("upstream-ca.pem");
    let via = format!("https://bot:{BOT_KEY}@localhost:{}", env.gw.port());
    let ca = env.ca_pem.to_str().unwrap();
    let (code, text) = curl(&[
        "-x",
        &via,
        "--proxy-cacert",
        listener_ca.to_str().unwrap(),
        "--cacert",
        ca,
        &format!("{}/v1/inner", env.origin()),
    ]);
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("tls-in-tls"), "{text}");
    let (code, text) = curl(&[
        "-x",
        &via,
        "--proxy-cacert",
        listener_ca.to_str().unwrap(),
        "--cacert",
        ca,
        &format!("{}/v1/admin/x", env.origin()),
    ]);
    assert_eq!(code, 403, "{text}");
    let reqs = env.mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].request_line(), "GET /v1/inner HTTP/1.1");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {TARGET}").as_str())
    );
    let recs = wait_audit(env.gw.dir(), 2);
    assert_eq!(recs[0]["tunnel"], "intercept");
    assert_eq!(recs[0]["agent"], "bot");
    assert_eq!(recs[1]["code"], "denied_by_rule");
    // a blind tunnel inside the listener's TLS: the mock's own certificate end to end
    let (code, text) = curl(&[
        "-x",
        &via,
        "--proxy-cacert",
        listener_ca.to_str().unwrap(),
        "--cacert",
        listener_ca.to_str().unwrap(),
        &format!("https://127.0.0.1:{}/v1/blind", env.mock.port()),
    ]);
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("tls-in-tls"), "{text}");
    let reqs = env.mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].request_line(), "GET /v1/blind HTTP/1.1");
    assert_eq!(reqs[1].header("authorization"), None);
    let recs = wait_audit(env.gw.dir(), 3);
    assert_eq!(recs[2]["tunnel"], "blind", "{recs:?}");
    assert_eq!(recs[2]["path"], format!("127.0.0.1:{}", env.mock.port()));
    assert!(
        recs[2]["bytes_in"].as_u64().unwrap() > 100,
        "a TLS handshake went up"
    );
    assert!(recs[2]["bytes_out"].as_u64().unwrap() > 100);
}

/// A tunnel entry's `meter` counts the tunnels each agent opens: `bot`'s second tunnel within
/// the window is 429 `rate_limited` (with `Retry-After`) and connects nowhere; `other` has its
/// own allowance.
#[test]
fn tunnel_meter_is_per_agent() {
    let (echo, accepted) = echo_server();
    let env = start(
        |_| Reply::ok("x"),
        move |_| {
            format!(
                "tunnel = [{{ host = \"127.0.0.1:{echo}\", allow_private = true, meter = {{ rate = 1, per = \"1m\", burst = 1 }} }}]"
            )
        },
        "",
    );
    let target = format!("127.0.0.1:{echo}");
    let open = |user: &str, key: &str| {
        let (mut s, r) = raw_connect(env.gw.port(), &target, Some(&format!("{user}:{key}")));
        let _ = s.shutdown(Shutdown::Write);
        let rest = read_to_end_bounded(&mut s);
        (r, rest)
    };
    let (r, rest) = open("bot", BOT_KEY);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(rest, b"<eof>");
    let (r, rest) = open("bot", BOT_KEY);
    assert_eq!(r.status, 429, "{}", r.head);
    assert!(r.header("retry-after").is_some(), "{}", r.head);
    assert!(show(&rest).contains("rate_limited"), "{}", show(&rest));
    let (r, _) = open("other", OTHER_KEY);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A client that sends its ClientHello right behind the CONNECT head (before the 200): the
/// bytes that came with the head start the handshake, nothing is lost, and the call inside
/// goes through.
#[test]
fn client_hello_sent_with_the_connect_head() {
    let env = start(|_| Reply::ok("eager-fine"), |_| String::new(), "");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&env.ca_pem).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100 && hello[0] == 0x16, "a ClientHello");
    let target = format!("localhost:{}", env.mock.port());
    let mut s = TcpStream::connect(("127.0.0.1", env.gw.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut first = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {}\r\n\r\n",
        b64(&format!("bot:{BOT_KEY}"))
    )
    .into_bytes();
    first.extend_from_slice(&hello);
    s.write_all(&first).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200 "), "{}", show(&head));
    let mut tls = rustls::StreamOwned::new(conn, s);
    tls.write_all(
        format!("GET /v1/eager HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("eager-fine"), "{text}");
    assert_eq!(
        env.mock.requests()[0].request_line(),
        "GET /v1/eager HTTP/1.1"
    );
}

/// A blind tunnel counts as in flight: after SIGTERM the gateway stops accepting but keeps
/// splicing the open tunnel until it ends, then exits.
#[test]
fn a_drain_waits_for_an_open_blind_tunnel() {
    let (echo, _accepted) = echo_server();
    let mut env = start(
        |_| Reply::ok("unused"),
        move |_| format!("tunnel = [{{ host = \"127.0.0.1:{echo}\", allow_private = true }}]"),
        "",
    );
    let (mut s, r) = raw_connect(
        env.gw.port(),
        &format!("127.0.0.1:{echo}"),
        Some(&format!("bot:{BOT_KEY}")),
    );
    assert_eq!(r.status, 200, "{}", r.head);
    s.write_all(b"before ").unwrap();
    env.gw.signal("TERM");
    // the drain has begun: new connections are refused, the tunnel still carries bytes
    let refused = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        TcpStream::connect(("127.0.0.1", env.gw.port())).err()
    });
    assert!(
        refused.is_some(),
        "the listener still accepts after SIGTERM"
    );
    assert!(
        env.gw.wait_exit(Duration::from_millis(300)).is_none(),
        "exited with a tunnel open"
    );
    s.write_all(b"after the signal").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = read_to_end_bounded(&mut s);
    assert_eq!(got, b"before after the signal<eof>", "{}", show(&got));
    let st = env.gw.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}
