//! Test harness: the gateway process, mock upstreams and raw HTTP/1.1 clients.
//!
//! Rules kept throughout: every socket has read and write timeouts, every loop is bounded in
//! iterations and in time, and nothing here parses HTTP leniently — what a test asserts is what
//! went over the wire.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Default read/write timeout of client sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a gateway gets to start listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response / request head either side of the harness accepts.
const MAX_HEAD: usize = 256 * 1024;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Renders bytes for assertion messages: printable ASCII as is, everything else escaped.
pub fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(4096) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n\n"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > 4096 {
        let _ = write!(s, "... ({} bytes total)", bytes.len());
    }
    s
}

// ------------------------------------------------------------------------------------------
// Config helpers
// ------------------------------------------------------------------------------------------

/// A `[[proxies]]` block with `default_effect = "allow"`.
pub fn proxy(name: &str, upstream: &str) -> String {
    format!(
        "[[proxies]]\nname = \"{name}\"\nupstream = \"{upstream}\"\ndefault_effect = \"allow\"\n"
    )
}

/// A full config: listen on `{PORT}`, `workers` workers, the given `[limits]` body and proxies.
pub fn config_with(workers: usize, limits: &str, proxies: &[String]) -> String {
    let mut s = format!("[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = {workers}\n\n");
    if !limits.trim().is_empty() {
        s.push_str("[limits]\n");
        s.push_str(limits.trim());
        s.push_str("\n\n");
    }
    for p in proxies {
        s.push_str(p);
        s.push('\n');
    }
    s
}

/// Two workers, default limits, one allow-all proxy `up` → `upstream`.
pub fn simple_config(upstream: &str) -> String {
    config_with(2, "", &[proxy("up", upstream)])
}

// ------------------------------------------------------------------------------------------
// The gateway process
// ------------------------------------------------------------------------------------------

pub struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    config_path: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
}

impl Gateway {
    /// Writes `toml` (with `{PORT}` replaced by a free port) to a temp dir, runs
    /// `portcullis run -c FILE` and waits until the port accepts connections.
    pub fn start(toml: &str) -> Gateway {
        Self::start_with_files(toml, &[])
    }

    /// Like `start`, with extra files written next to the config first.
    pub fn start_with_files(toml: &str, files: &[(&str, &[u8])]) -> Gateway {
        Self::start_with_env(toml, files, &[])
    }

    /// Like `start_with_files`, with extra environment variables for the process.
    pub fn start_with_env(toml: &str, files: &[(&str, &[u8])], envs: &[(&str, &str)]) -> Gateway {
        let mut last = String::new();
        // A retry only helps when the process died early (e.g. the free port was taken in the
        // meantime); a gateway that never listens fails the first time round.
        for _ in 0..3 {
            match Self::try_start(toml, files, envs) {
                Ok(g) => return g,
                Err((retry, msg)) => {
                    last = msg;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("gateway did not become ready: {last}");
    }

    fn try_start(
        toml: &str,
        files: &[(&str, &[u8])],
        envs: &[(&str, &str)],
    ) -> Result<Gateway, (bool, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).expect("write extra file");
        }
        let port = free_port();
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, toml.replace("{PORT}", &port.to_string())).unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let child = Command::new(bin())
            .envs(envs.iter().copied())
            .env("PORTCULLIS_LOG", "debug")
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn portcullis");
        let mut g = Gateway {
            child,
            dir,
            port,
            config_path,
            stderr_path,
            stdout_path,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..1000 {
            if let Ok(Some(st)) = g.child.try_wait() {
                return Err((
                    true,
                    format!(
                        "exited with {st} before listening; stderr:\n{}",
                        g.stderr_text()
                    ),
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(g);
            }
            if Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err((
            false,
            format!(
                "not listening on {port} after {READY_TIMEOUT:?}; stderr:\n{}",
                g.stderr_text()
            ),
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The gateway's log (stderr + stdout) once `ready` holds for it, or after `timeout`:
    /// lines written by background threads can land just after the effect a test observed.
    pub fn log_when(&self, ready: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let log = || self.stderr_text() + &self.stdout_text();
        poll_until(timeout, Duration::from_millis(20), || {
            Some(log()).filter(|l| ready(l))
        })
        .unwrap_or_else(log)
    }

    /// Waits (bounded) until a call to `path` answers 200: a reload has landed.
    pub fn wait_reloaded(&self, path: &str) {
        let landed = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            (self.conn().roundtrip(&get(path)).status == 200).then_some(())
        });
        assert!(landed.is_some(), "reload did not land");
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    /// Atomically replaces the config file (`{PORT}` → this gateway's port).
    pub fn write_config(&self, toml: &str) {
        let tmp = self.dir.path().join("portcullis.toml.new");
        std::fs::write(&tmp, toml.replace("{PORT}", &self.port.to_string())).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Sends a signal by name ("HUP", "TERM") with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed: {st}", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        for _ in 0..100_000 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size of the gateway in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    pub fn conn(&self) -> Conn {
        Conn::connect(self.port)
    }
}

/// Secret values used by tests (target credentials, vault entries, agent keys). Every gateway
/// started by the suite runs with debug logging, and when it stops its whole log is searched
/// for these: any hit fails the test that started it.
pub const KNOWN_SECRETS: &[&str] = &[
    "tgt-SECRET-7f3a9c1e5b",
    "vlt-SECRET-44d0e2aa91",
    "pcs_TestAgentKey0123456789abcdefghijABCDEFGHIJ",
    "pcs_ExpiredAgentKey0123456789abcdefghijABCDEFG",
    "t0ken-for-tests",
    // metrics.rs: the read-only metrics token
    "metrics-only-token-0123456789",
    // oauth.rs: the OAuth2 client secret and the prefix of every access token issued
    "oauth-client-SECRET-5e1f",
    "oauth-at-7c2d",
    // bao.rs: every kv value written to OpenBao starts with this; and the dev root token
    "kv-SECRET-",
    "bao-root-TOKEN-77e1",
];

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !thread::panicking() {
            let log = self.stderr_text() + &self.stdout_text();
            for s in KNOWN_SECRETS {
                assert!(
                    !log.contains(s),
                    "a secret ({s}) appeared in the gateway's log:\n{log}"
                );
            }
        }
        if thread::panicking() {
            let err = self.stderr_text();
            let tail: String = {
                let lines: Vec<&str> = err.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            };
            eprintln!(
                "---- gateway stderr (last 60 lines) ----\n{tail}\n---- end gateway stderr ----"
            );
        }
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `portcullis ARGS...` to completion (bounded by `timeout`) and returns its output.
pub fn run_portcullis(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn portcullis");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("portcullis {args:?} did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

// ------------------------------------------------------------------------------------------
// Chunked decoding (shared by the mock upstream and the client)
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    SizeLine,
    Data(u64),
    DataCr,
    DataLf,
    TrailerLine,
    Done,
}

/// Strict incremental chunked decoder (CRLF only, hex sizes, extensions ignored).
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: CState,
    line: Vec<u8>,
    pub trailers: Vec<u8>,
    pub chunk_sizes: Vec<u64>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: CState::SizeLine,
            line: Vec::new(),
            trailers: Vec::new(),
            chunk_sizes: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == CState::Done
    }

    /// Consumes bytes from `input`, appending decoded data to `out`; returns how many bytes were
    /// consumed (stops right after the final CRLF).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                CState::Done => break,
                CState::SizeLine | CState::TrailerLine => {
                    let b = input[i];
                    i += 1;
                    self.line.push(b);
                    if self.line.len() > 4096 {
                        return Err("chunk size / trailer line too long".into());
                    }
                    if b == b'\n' {
                        if self.line.len() < 2 || self.line[self.line.len() - 2] != b'\r' {
                            return Err(format!("bare LF in chunk framing: {}", show(&self.line)));
                        }
                        let line = std::mem::take(&mut self.line);
                        let content = &line[..line.len() - 2];
                        if self.state == CState::SizeLine {
                            let hex_part = content.split(|&c| c == b';').next().unwrap();
                            let hex = std::str::from_utf8(hex_part)
                                .map_err(|_| "non-ASCII chunk size")?
                                .trim_end_matches([' ', '\t']);
                            if hex.is_empty() || hex.len() > 15 {
                                return Err(format!("bad chunk size {hex:?}"));
                            }
                            let n = u64::from_str_radix(hex, 16)
                                .map_err(|_| format!("bad chunk size {hex:?}"))?;
                            self.chunk_sizes.push(n);
                            self.state = if n == 0 {
                                CState::TrailerLine
                            } else {
                                CState::Data(n)
                            };
                        } else if content.is_empty() {
                            self.state = CState::Done;
                        } else {
                            self.trailers.extend_from_slice(&line);
                        }
                    }
                }
                CState::Data(n) => {
                    let take = (n as usize).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        CState::DataCr
                    } else {
                        CState::Data(left)
                    };
                }
                CState::DataCr => {
                    if input[i] != b'\r' {
                        return Err(format!(
                            "chunk data not followed by CRLF (got {:?})",
                            input[i] as char
                        ));
                    }
                    i += 1;
                    self.state = CState::DataLf;
                }
                CState::DataLf => {
                    if input[i] != b'\n' {
                        return Err(format!(
                            "chunk data not followed by CRLF (got {:?})",
                            input[i] as char
                        ));
                    }
                    i += 1;
                    self.state = CState::SizeLine;
                }
            }
        }
        Ok(i)
    }
}

/// Parses header lines (without the first line) of a head ending in CRLFCRLF.
fn parse_header_lines(lines: &[&[u8]]) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("header line without colon: {}", show(line)))?;
        let name = String::from_utf8_lossy(&line[..colon]).into_owned();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim_matches([' ', '\t'])
            .to_string();
        headers.push((name, value));
    }
    Ok(headers)
}

fn split_head_lines(head: &[u8]) -> Result<Vec<&[u8]>, String> {
    // head includes the final CRLFCRLF
    let body = &head[..head.len() - 4];
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\n' {
            if i == 0 || body[i - 1] != b'\r' {
                return Err(format!("bare LF in head: {}", show(head)));
            }
            lines.push(&body[start..i - 1]);
            start = i + 1;
        }
        i += 1;
    }
    lines.push(&body[start..]);
    Ok(lines)
}

fn header_get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn last_te_is_chunked(headers: &[(String, String)]) -> bool {
    header_all(headers, "transfer-encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .rfind(|t| !t.is_empty())
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
}

// ------------------------------------------------------------------------------------------
// Mock upstream
// ------------------------------------------------------------------------------------------

/// One request as the mock upstream received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// Which accepted connection (0, 1, 2, ... in accept order) carried it.
    pub conn_id: usize,
    /// Position of the request on its connection (0 = first).
    pub index_on_conn: usize,
    /// Head + body exactly as on the wire.
    pub raw: Vec<u8>,
    /// The head, through the blank line.
    pub head: Vec<u8>,
    /// The body after removing chunked framing (if any).
    pub body: Vec<u8>,
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub chunked: bool,
    /// TLS server name the client sent (TLS mock only).
    pub sni: Option<String>,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_get(&self.headers, name)
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
    pub fn request_line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.version)
    }
}

/// A rendezvous the test opens and a mock reply waits for.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
    /// True when opened within `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.0.0.lock().unwrap();
        let (g, _) = self
            .0
            .1
            .wait_timeout_while(guard, timeout, |open| !*open)
            .unwrap();
        *g
    }
}

/// One step of a mock reply.
#[derive(Clone)]
pub enum Action {
    Write(Vec<u8>),
    /// Writes `bytes` `times` times (for huge bodies without a huge buffer).
    Repeat {
        bytes: Vec<u8>,
        times: u64,
    },
    Sleep(Duration),
    /// Waits (at most 10 s) until the gate is opened.
    Wait(Gate),
    /// Opens a gate (tells the test that the mock got this far).
    Signal(Gate),
    /// Closes the connection (TLS: close_notify first).
    Close,
}

#[derive(Clone)]
pub struct Reply {
    pub actions: Vec<Action>,
}

impl Reply {
    /// Writes these bytes and keeps the connection for the next request.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            actions: vec![Action::Write(bytes.into())],
        }
    }
    pub fn actions(actions: Vec<Action>) -> Reply {
        Reply { actions }
    }
    /// Writes these bytes, then closes the connection.
    pub fn close_after(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            actions: vec![Action::Write(bytes.into()), Action::Close],
        }
    }
    /// `status reason` with the given headers, `Content-Length` and body.
    pub fn with(status: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut s = format!("HTTP/1.1 {status} {reason}\r\n");
        for (n, v) in headers {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n", body.len());
        let mut b = s.into_bytes();
        b.extend_from_slice(body);
        Reply::raw(b)
    }
    /// 200 OK, text/plain, Content-Length.
    pub fn ok(body: &str) -> Reply {
        Reply::with(
            200,
            "OK",
            &[("Content-Type", "text/plain")],
            body.as_bytes(),
        )
    }
}

type Handler = Arc<dyn Fn(&ReceivedRequest) -> Reply + Send + Sync + 'static>;

struct MockState {
    requests: Mutex<Vec<ReceivedRequest>>,
    stop: AtomicBool,
    next_conn: AtomicUsize,
    handler: Handler,
    tls: Option<Arc<rustls::ServerConfig>>,
    errors: Mutex<Vec<String>>,
}

pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<MockState>,
    accept_thread: Option<JoinHandle<()>>,
}

enum MockIo {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl MockIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            MockIo::Plain(s) => s,
            MockIo::Tls(s) => &s.sock,
        }
    }
    fn close(&mut self) {
        if let MockIo::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for MockIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MockIo::Plain(s) => s.read(buf),
            MockIo::Tls(s) => s.read(buf),
        }
    }
}

impl Write for MockIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            MockIo::Plain(s) => s.write(buf),
            MockIo::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            MockIo::Plain(s) => s.flush(),
            MockIo::Tls(s) => s.flush(),
        }
    }
}

impl MockUpstream {
    /// A plain-HTTP mock upstream on 127.0.0.1:0 answering every request with `handler`.
    pub fn start(
        handler: impl Fn(&ReceivedRequest) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        Self::start_inner(Arc::new(handler), None)
    }

    /// A TLS mock upstream presenting `cert_chain_pem` / `key_pem`.
    pub fn start_tls(
        cert_chain_pem: &str,
        key_pem: &str,
        handler: impl Fn(&ReceivedRequest) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls_pemfile::certs(&mut cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("cert PEM");
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .expect("key PEM")
            .expect("a private key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
        Self::start_inner(Arc::new(handler), Some(Arc::new(cfg)))
    }

    fn start_inner(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState {
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next_conn: AtomicUsize::new(0),
            handler,
            tls,
            errors: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept_thread = thread::spawn(move || {
            for _ in 0..100_000 {
                let Ok((stream, _)) = listener.accept() else {
                    continue;
                };
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = st.next_conn.fetch_add(1, Ordering::SeqCst);
                let st2 = st.clone();
                thread::spawn(move || serve_mock_conn(st2, stream, id));
            }
        });
        MockUpstream {
            addr,
            state,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state.requests.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.next_conn.load(Ordering::SeqCst)
    }
    /// I/O, TLS and parse errors seen on the mock's connections.
    pub fn errors(&self) -> Vec<String> {
        self.state.errors.lock().unwrap().clone()
    }
    /// Waits until at least `n` requests were received.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(10), || {
            (self.count() >= n).then_some(())
        })
        .is_some()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_mock_conn(st: Arc<MockState>, stream: TcpStream, conn_id: usize) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let mut sni = None;
    let mut io = match &st.tls {
        None => MockIo::Plain(stream),
        Some(cfg) => {
            let mut conn = match rustls::ServerConnection::new(cfg.clone()) {
                Ok(c) => c,
                Err(e) => {
                    st.errors
                        .lock()
                        .unwrap()
                        .push(format!("conn {conn_id}: tls setup: {e}"));
                    return;
                }
            };
            let mut sock = stream;
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut ok = false;
            for _ in 0..10_000 {
                if !conn.is_handshaking() {
                    ok = true;
                    break;
                }
                match conn.complete_io(&mut sock) {
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
                    Err(e) => {
                        st.errors
                            .lock()
                            .unwrap()
                            .push(format!("conn {conn_id}: tls handshake: {e}"));
                        return;
                    }
                }
            }
            if !ok {
                st.errors
                    .lock()
                    .unwrap()
                    .push(format!("conn {conn_id}: tls handshake did not finish"));
                return;
            }
            sni = conn.server_name().map(str::to_string);
            MockIo::Tls(Box::new(rustls::StreamOwned::new(conn, sock)))
        }
    };
    let mut buf: Vec<u8> = Vec::new();
    for index in 0..10_000 {
        let mut req = match read_mock_request(&st, &mut io, &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                st.errors
                    .lock()
                    .unwrap()
                    .push(format!("conn {conn_id}: {e}"));
                return;
            }
        };
        req.conn_id = conn_id;
        req.index_on_conn = index;
        req.sni = sni.clone();
        st.requests.lock().unwrap().push(req.clone());
        let reply = (st.handler)(&req);
        for action in reply.actions {
            let res: io::Result<()> = match action {
                Action::Write(b) => io.write_all(&b).and_then(|_| io.flush()),
                Action::Repeat { bytes, times } => {
                    let mut r = Ok(());
                    for _ in 0..times {
                        if st.stop.load(Ordering::Relaxed) {
                            r = Err(io::Error::other("mock stopped"));
                            break;
                        }
                        if let Err(e) = io.write_all(&bytes) {
                            r = Err(e);
                            break;
                        }
                    }
                    r.and_then(|_| io.flush())
                }
                Action::Sleep(d) => {
                    thread::sleep(d);
                    Ok(())
                }
                Action::Wait(g) => {
                    if g.wait(Duration::from_secs(10)) {
                        Ok(())
                    } else {
                        Err(io::Error::other("gate not opened within 10 s"))
                    }
                }
                Action::Signal(g) => {
                    g.open();
                    Ok(())
                }
                Action::Close => {
                    io.close();
                    return;
                }
            };
            if let Err(e) = res {
                st.errors
                    .lock()
                    .unwrap()
                    .push(format!("conn {conn_id}: reply: {e}"));
                return;
            }
        }
        if req
            .header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        {
            io.close();
            return;
        }
    }
}

/// Reads one request; Ok(None) on a clean EOF between requests or when the mock stops.
fn read_mock_request(
    st: &MockState,
    io: &mut MockIo,
    buf: &mut Vec<u8>,
) -> Result<Option<ReceivedRequest>, String> {
    let idle_deadline = Instant::now() + Duration::from_secs(120);
    let mut tmp = vec![0u8; 64 * 1024];
    let mut fill = |buf: &mut Vec<u8>| -> Result<bool, String> {
        for _ in 0..100_000 {
            if st.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            match io.read(&mut tmp) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e) if is_timeout(&e) => {
                    if Instant::now() > idle_deadline {
                        return Ok(false);
                    }
                }
                Err(e) if is_reset(&e) => return Ok(false),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(false)
    };
    // head
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        if !fill(buf)? {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(format!("EOF inside request head: {}", show(buf)));
        }
    };
    let head = buf[..head_end].to_vec();
    let lines = split_head_lines(&head)?;
    let first = String::from_utf8_lossy(lines[0]).into_owned();
    let mut parts = first.splitn(3, ' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    let headers = parse_header_lines(&lines[1..])?;
    let chunked = last_te_is_chunked(&headers);
    let mut body = Vec::new();
    let total;
    if chunked {
        let mut dec = ChunkedDecoder::new();
        let mut pos = head_end;
        for _ in 0..1_000_000 {
            pos += dec.feed(&buf[pos..], &mut body)?;
            if dec.is_done() {
                break;
            }
            if !fill(buf)? {
                return Err("EOF inside chunked request body".into());
            }
        }
        total = pos;
    } else if let Some(cl) = header_get(&headers, "content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        for _ in 0..1_000_000 {
            if buf.len() >= head_end + n {
                break;
            }
            if !fill(buf)? {
                return Err(format!(
                    "EOF inside request body ({} of {n})",
                    buf.len() - head_end
                ));
            }
        }
        body = buf[head_end..head_end + n].to_vec();
        total = head_end + n;
    } else {
        total = head_end;
    }
    let raw: Vec<u8> = buf.drain(..total).collect();
    Ok(Some(ReceivedRequest {
        conn_id: 0,
        index_on_conn: 0,
        raw,
        head,
        body,
        method,
        target,
        version,
        headers,
        chunked,
        sni: None,
    }))
}

// ------------------------------------------------------------------------------------------
// Test PKI
// ------------------------------------------------------------------------------------------

pub struct TestPki {
    pub ca_pem: String,
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
}

/// A CA and a leaf for `localhost` and 127.0.0.1 signed by it.
pub fn make_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        leaf_cert_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

// ------------------------------------------------------------------------------------------
// Client side
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by rule (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Delimited by the connection closing.
    Close,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Head + body bytes exactly as received.
    pub raw: Vec<u8>,
    /// Head bytes, through the blank line.
    pub head: Vec<u8>,
    pub framing: Framing,
    /// Trailer lines of a chunked body (raw).
    pub trailers: Vec<u8>,
    /// Chunk sizes of a chunked body, terminal 0 included.
    pub chunk_sizes: Vec<u64>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_get(&self.headers, name)
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
    pub fn status_line(&self) -> String {
        format!("{} {} {}", self.version, self.status, self.reason)
    }
    /// Header names in order, lower-cased.
    pub fn header_names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect()
    }
    /// Whether the headers say the connection will close.
    pub fn says_close(&self) -> bool {
        self.headers_named("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

/// Buffered HTTP response reader over any byte source.
pub struct Reader<R: Read> {
    pub inner: R,
    buf: Vec<u8>,
    tmp: Vec<u8>,
    eof: bool,
    body: Option<BodyState>,
    /// Raw bytes of the response being read (capped at RAW_CAP).
    raw: Vec<u8>,
}

/// Raw bytes kept per response; huge streamed bodies are decoded but not kept raw.
const RAW_CAP: usize = 32 << 20;

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: Vec::new(),
            tmp: vec![0u8; 64 * 1024],
            eof: false,
            body: None,
            raw: Vec::new(),
        }
    }

    fn keep_raw(&mut self, bytes: &[u8]) {
        if self.raw.len() + bytes.len() <= RAW_CAP {
            self.raw.extend_from_slice(bytes);
        }
    }

    /// Reads more bytes into the buffer; Ok(false) at EOF (or reset).
    fn fill(&mut self) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        match self.inner.read(&mut self.tmp) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&self.tmp[..n]);
                Ok(true)
            }
            Err(e) if is_reset(&e) => {
                self.eof = true;
                Ok(false)
            }
            Err(e) if is_timeout(&e) => Err(format!(
                "read timed out; buffered so far: {}",
                show(&self.buf)
            )),
            Err(e) => Err(format!("read error: {e}")),
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Reads a response head. `is_head_request`: the request was HEAD (no body follows).
    pub fn read_head(&mut self, is_head_request: bool) -> Result<Response, String> {
        if self.body.is_some() {
            return Err("previous response body not fully read".into());
        }
        self.raw.clear();
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err("response head too large".into());
            }
            if !self.fill()? {
                return Err(format!(
                    "connection closed before a complete response head; got: {}",
                    show(&self.buf)
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        self.raw.extend_from_slice(&head);
        let lines = split_head_lines(&head)?;
        let first = String::from_utf8_lossy(lines[0]).into_owned();
        let mut parts = first.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| format!("bad status line {first:?}"))?;
        let reason = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {first:?}"));
        }
        let headers = parse_header_lines(&lines[1..])?;
        let framing =
            if is_head_request || (100..200).contains(&status) || status == 204 || status == 304 {
                Framing::None
            } else if !header_all(&headers, "transfer-encoding").is_empty() {
                if last_te_is_chunked(&headers) {
                    Framing::Chunked
                } else {
                    Framing::Close
                }
            } else if let Some(cl) = header_get(&headers, "content-length") {
                Framing::Length(
                    cl.parse()
                        .map_err(|_| format!("bad Content-Length {cl:?}"))?,
                )
            } else {
                Framing::Close
            };
        self.body = match framing {
            Framing::None | Framing::Length(0) => None,
            Framing::Length(n) => Some(BodyState::Length(n)),
            Framing::Chunked => Some(BodyState::Chunked(ChunkedDecoder::new())),
            Framing::Close => Some(BodyState::Close),
        };
        Ok(Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            raw: head.clone(),
            head,
            framing,
            trailers: Vec::new(),
            chunk_sizes: Vec::new(),
        })
    }

    /// Next piece of decoded body; Ok(None) once the body is complete.
    pub fn read_body_part(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.read_body_part_inner(None)
    }

    fn read_body_part_inner(
        &mut self,
        resp: Option<&mut Response>,
    ) -> Result<Option<Vec<u8>>, String> {
        let Some(state) = self.body.as_mut() else {
            return Ok(None);
        };
        // Decode from what is buffered first.
        let mut out = Vec::new();
        let finished;
        match state {
            BodyState::Length(left) => {
                let take = (*left).min(self.buf.len() as u64) as usize;
                out.extend_from_slice(&self.buf[..take]);
                if self.raw.len() + take <= RAW_CAP {
                    self.raw.extend_from_slice(&self.buf[..take]);
                }
                self.buf.drain(..take);
                *left -= take as u64;
                finished = *left == 0;
            }
            BodyState::Chunked(dec) => {
                let used = dec.feed(&self.buf, &mut out)?;
                if self.raw.len() + used <= RAW_CAP {
                    self.raw.extend_from_slice(&self.buf[..used]);
                }
                self.buf.drain(..used);
                finished = dec.is_done();
                if finished && let Some(r) = resp {
                    r.trailers = dec.trailers.clone();
                    r.chunk_sizes = dec.chunk_sizes.clone();
                }
            }
            BodyState::Close => {
                out.append(&mut self.buf);
                if self.raw.len() + out.len() <= RAW_CAP {
                    self.raw.extend_from_slice(&out);
                }
                finished = self.eof;
            }
        }
        if finished {
            self.body = None;
        }
        if !out.is_empty() {
            return Ok(Some(out));
        }
        if finished {
            return Ok(None);
        }
        if !self.fill()? {
            return match self.body {
                Some(BodyState::Close) => {
                    self.body = None;
                    Ok(None)
                }
                _ => Err(format!(
                    "connection closed inside the response body; raw so far: {}",
                    show(&self.raw)
                )),
            };
        }
        Ok(Some(Vec::new()))
    }

    /// Reads a whole response (head + body).
    pub fn read_response(&mut self, is_head_request: bool) -> Result<Response, String> {
        let mut resp = self.read_head(is_head_request)?;
        for _ in 0..10_000_000 {
            match self.read_body_part_inner(Some(&mut resp))? {
                Some(part) => resp.body.extend_from_slice(&part),
                None => break,
            }
            if resp.body.len() > 256 << 20 {
                return Err("response body over 256 MiB; use read_body_part".into());
            }
        }
        resp.raw = self.raw.clone();
        Ok(resp)
    }
}

/// A client connection to the gateway for keep-alive / pipelining sequences.
pub struct Conn {
    pub r: Reader<TcpStream>,
}

impl Conn {
    pub fn connect(port: u16) -> Conn {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to gateway on {port}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { r: Reader::new(s) }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.r.inner
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.r.inner.set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("write to gateway: {e}"));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.r.inner.write_all(bytes)?;
        self.r.inner.flush()
    }

    /// Reads a whole response to a non-HEAD request; panics with context on failure.
    pub fn read_response(&mut self) -> Response {
        self.r
            .read_response(false)
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    /// Reads a whole response to a HEAD request.
    pub fn read_head_response(&mut self) -> Response {
        self.r
            .read_response(true)
            .unwrap_or_else(|e| panic!("reading HEAD response: {e}"))
    }

    pub fn try_read_response(&mut self) -> Result<Response, String> {
        self.r.read_response(false)
    }

    /// Sends a request and reads the response, reporting failures instead of panicking.
    pub fn try_roundtrip(&mut self, req: &[u8]) -> Result<Response, String> {
        self.try_send(req).map_err(|e| format!("write: {e}"))?;
        self.r.read_response(false)
    }

    /// Sends a request and reads the response.
    pub fn roundtrip(&mut self, req: &[u8]) -> Response {
        self.send(req);
        self.read_response()
    }

    /// Waits up to `timeout` for the peer to close (EOF or reset), discarding any bytes.
    /// Ok(elapsed) when closed; Err(description) otherwise.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let (closed, extra) = self.wait_closed_collect(timeout);
        if closed {
            Ok(start.elapsed())
        } else {
            Err(format!(
                "still open after {timeout:?}; received meanwhile: {}",
                show(&extra)
            ))
        }
    }

    /// Waits up to `timeout` for the peer to close; returns (closed, bytes received meanwhile).
    pub fn wait_closed_collect(&mut self, timeout: Duration) -> (bool, Vec<u8>) {
        let start = Instant::now();
        let mut extra = Vec::new();
        extra.append(&mut self.r.buf);
        if self.r.eof {
            return (true, extra);
        }
        let mut tmp = vec![0u8; 16 * 1024];
        let mut closed = false;
        for _ in 0..1_000_000 {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            self.r
                .inner
                .set_read_timeout(Some(
                    left.min(Duration::from_millis(100))
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
            match self.r.inner.read(&mut tmp) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => extra.extend_from_slice(&tmp[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => {
                    // reset or any other error: the connection is gone
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.r.eof = true;
        }
        self.r.inner.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        (closed, extra)
    }

    /// Reads exactly `n` raw bytes (for asserting interim responses byte for byte).
    pub fn read_exact_raw(&mut self, n: usize) -> Result<Vec<u8>, String> {
        for _ in 0..100_000 {
            if self.r.buf.len() >= n {
                return Ok(self.r.buf.drain(..n).collect());
            }
            if !self.r.fill()? {
                return Err(format!(
                    "EOF after {} of {n} bytes: {}",
                    self.r.buf.len(),
                    show(&self.r.buf)
                ));
            }
        }
        Err("too many reads".into())
    }

    /// Returns what arrives within `timeout` without waiting for more (may be empty).
    pub fn read_available(&mut self, timeout: Duration) -> Vec<u8> {
        let mut out: Vec<u8> = self.r.buf.drain(..).collect();
        self.r.inner.set_read_timeout(Some(timeout)).unwrap();
        let mut tmp = vec![0u8; 64 * 1024];
        if let Ok(n) = self.r.inner.read(&mut tmp) {
            if n == 0 {
                self.r.eof = true;
            }
            out.extend_from_slice(&tmp[..n]);
        }
        self.r.inner.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        out
    }
}

/// The result of a one-shot raw exchange.
pub struct RawExchange {
    pub bytes: Vec<u8>,
    /// The gateway closed the connection (EOF or reset) within the timeout.
    pub closed: bool,
    pub elapsed: Duration,
}

/// Writes `req`, then reads until EOF or `timeout`.
pub fn send_raw_exchange(port: u16, req: &[u8], timeout: Duration) -> RawExchange {
    let start = Instant::now();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to gateway on {port}: {e}"));
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    // The gateway may answer and close before everything is written; that's fine.
    let _ = s.write_all(req);
    let mut bytes = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let mut closed = false;
    for _ in 0..1_000_000 {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut tmp) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&tmp[..n]),
            Err(e) if is_timeout(&e) => break,
            Err(e) if is_reset(&e) => {
                closed = true;
                break;
            }
            Err(e) => panic!("read from gateway: {e}"),
        }
    }
    RawExchange {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// Writes `req`, then reads until EOF or a 5 s timeout.
pub fn send_raw(port: u16, req: &[u8]) -> Vec<u8> {
    send_raw_exchange(port, req, IO_TIMEOUT).bytes
}

/// Parses the first response in `bytes` (as from `send_raw`).
pub fn parse_response(bytes: &[u8]) -> Result<Response, String> {
    Reader::new(bytes).read_response(false)
}

/// Parses every response in `bytes`, in order.
pub fn parse_responses(bytes: &[u8]) -> Result<Vec<Response>, String> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    for _ in 0..1000 {
        if r.buffered().is_empty() && !r.fill()? {
            break;
        }
        out.push(r.read_response(false)?);
    }
    Ok(out)
}

/// `(code, message, request_id)` of a gateway JSON error body.
pub fn parse_error_body(resp: &Response) -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", show(&resp.raw)));
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("no \"error\" object in {v}"));
    let get = |k: &str| {
        err.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_else(|| panic!("error.{k} missing or not a string in {v}"))
            .to_string()
    };
    (get("code"), get("message"), get("request_id"))
}

/// Asserts the response is the gateway's own JSON error with this status and code; returns the
/// request id.
#[track_caller]
pub fn assert_gateway_error(resp: &Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status, status, "status of {}", show(&resp.raw));
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "Content-Type of {}",
        show(&resp.raw)
    );
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str()),
        "Content-Length of {}",
        show(&resp.raw)
    );
    let (c, msg, id) = parse_error_body(resp);
    assert_eq!(c, code, "error code in {}", show(&resp.raw));
    assert!(
        !msg.is_empty(),
        "empty error message in {}",
        show(&resp.raw)
    );
    assert_eq!(
        resp.header("x-request-id"),
        Some(id.as_str()),
        "X-Request-Id vs body request_id in {}",
        show(&resp.raw)
    );
    assert!(
        valid_request_id(&id),
        "request id {id:?} is not 1..=128 chars of [A-Za-z0-9._:-]"
    );
    id
}

/// 1..=128 chars of [A-Za-z0-9._:-]
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// `GET target HTTP/1.1` with `Host: gw`.
pub fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes()
}

/// Echo handler: replies 200 with the request line as the body.
pub fn echo_request_line(req: &ReceivedRequest) -> Reply {
    Reply::ok(&req.request_line())
}

/// The one bounded wait of the suite: calls `f` every `every` until it answers, at most for
/// `timeout` (then `None`). Tests wait for effects of background threads with this, never
/// with a bare sleep.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// Waits (bounded) until the admin port listens.
pub fn wait_admin(port: u16) {
    let up = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "admin port {port} never listened");
}
