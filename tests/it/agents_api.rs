//! Central management (issue 16), end to end against the real binary: agents issued, listed,
//! rotated and revoked through the admin API; their keys authenticate on the data plane at
//! once (roles feed the rules) and stop within a second on every worker (and on a second
//! gateway sharing a real redis-server); named admin roles on every admin endpoint; audit
//! records naming the admin; `GET /v1/config` shows secrets only as references;
//! `POST /v1/config/check` checks without applying; the CLI drives the same API.
use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};

const CONFIG_AGENT_KEY: &str = "pcs_ConfigAgentKey0123456789abcdefghijABCDEF";
const TARGET_SECRET: &str = "tgt-SECRET-agents-9d2c4e";
const ADMIN_TOKEN: &str = "adm-token-for-agents-tests";
const METRICS_TOKEN: &str = "metrics-token-agents-77";
const OPS: &str = "pca_ops-operator-key-00001";
const APPR: &str = "pca_appr-approver-key-0002";
const VIEW: &str = "pca_view-viewer-key-000003";
const SCOPED: &str = "pca_scoped-viewer-key-0004";

fn sha256_hex(b: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// Proxy `crm`: GET /tickets/** for role `support`, default deny; proxy `other`: allow all.
/// Secrets: the upstream's as `env:`, the admin token as `file:`.
fn config(admin_port: u16, workers: usize, upstream: &str, state: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = {workers}
admin_listen = "127.0.0.1:{admin_port}"
admin_token = "file:admin.token"
metrics_token = "env:PCS_TEST_METRICS"

{state}

{extra}

[[agents]]
id = "cfg-bot"
key_sha256 = "{cfg_agent}"
roles = ["support"]

[[admins]]
id = "ops"
key_sha256 = "{ops}"
role = "operator"

[[admins]]
id = "appr"
key_sha256 = "{appr}"
role = "approver"

[[admins]]
id = "view"
key_sha256 = "{view}"
role = "viewer"

[[admins]]
id = "scoped"
key_sha256 = "{scoped}"
role = "viewer"
proxies = ["other"]

[[proxies]]
name = "crm"
upstream = "{upstream}/crm"
default_effect = "deny"
auth = {{ scheme = "bearer", secret = "env:PCS_TEST_TGT" }}

  [[proxies.rules]]
  effect = "allow"
  methods = ["GET"]
  path = "/tickets/**"
  roles = ["support"]

[[proxies]]
name = "other"
upstream = "{upstream}/other"
default_effect = "allow"
"#,
        cfg_agent = sha256_hex(CONFIG_AGENT_KEY.as_bytes()),
        ops = sha256_hex(OPS.as_bytes()),
        appr = sha256_hex(APPR.as_bytes()),
        view = sha256_hex(VIEW.as_bytes()),
        scoped = sha256_hex(SCOPED.as_bytes()),
    )
}

const FILES: &[(&str, &[u8])] = &[("admin.token", b"adm-token-for-agents-tests\n")];
const ENVS: &[(&str, &str)] = &[
    ("PCS_TEST_TGT", TARGET_SECRET),
    ("PCS_TEST_METRICS", METRICS_TOKEN),
];

struct Rig {
    gw: Gateway,
    admin: u16,
}

fn start(mock: &MockUpstream, workers: usize, state: &str, extra: &str) -> Rig {
    let admin = free_port();
    let gw = Gateway::start_with_env(
        &config(admin, workers, &mock.url(), state, extra),
        FILES,
        ENVS,
    );
    wait_admin(admin);
    Rig { gw, admin }
}

fn admin(port: u16, method: &str, path: &str, key: Option<&str>, body: &str) -> Response {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = send_raw(port, req.as_bytes());
    parse_response(&raw).unwrap_or_else(|e| panic!("admin {method} {path}: {e}: {}", show(&raw)))
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&r.raw)))
}

#[track_caller]
fn admin_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", show(&r.raw));
    assert_eq!(json(r)["error"]["code"], code, "{}", show(&r.raw));
}

/// Issues agent `id` as `ops`; returns its key.
#[track_caller]
fn create(port: u16, id: &str, roles: &[&str], expires: Option<&str>) -> String {
    let body = serde_json::json!({"id": id, "roles": roles, "expires_at": expires}).to_string();
    let r = admin(port, "POST", "/v1/agents", Some(OPS), &body);
    assert_eq!(r.status, 201, "{}", show(&r.raw));
    let v = json(&r);
    assert_eq!(v["id"], id);
    assert_eq!(v["roles"], serde_json::json!(roles));
    assert_eq!(v["expires_at"], serde_json::json!(expires));
    let created = v["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    let key = v["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("pcs_") && key.len() == 44, "{key}");
    key
}

fn get_ticket(key: &str) -> Vec<u8> {
    format!("GET /crm/tickets/7 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n")
        .into_bytes()
}

fn call(port: u16, key: &str) -> Response {
    let req = format!(
        "GET /crm/tickets/7 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let raw = send_raw(port, req.as_bytes());
    parse_response(&raw).unwrap_or_else(|e| panic!("{e}: {}", show(&raw)))
}

fn agents(port: u16, key: &str) -> Vec<serde_json::Value> {
    let r = admin(port, "GET", "/v1/agents", Some(key), "");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    json(&r)["agents"].as_array().cloned().unwrap()
}

fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for l in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            out.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")));
        }
    }
    out
}

fn rfc3339_in(secs: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let (days, rem) = ((t / 86_400) as i64, t % 86_400);
    // civil from days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[test]
fn every_admin_endpoint_checks_the_role_and_a_missing_key_is_401() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let rig = start(&mock, 2, "[state]\ndir = \"state\"\n", "");
    let p = rig.admin;
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "/v1/agents", ""),
        ("POST", "/v1/agents", r#"{"id":"x1"}"#),
        ("POST", "/v1/agents/x1/rotate", ""),
        ("DELETE", "/v1/agents/x1", ""),
        ("GET", "/v1/config", ""),
        ("POST", "/v1/config/check", "[server]\n"),
        ("POST", "/v1/reload", ""),
        ("GET", "/v1/requests", ""),
        ("GET", "/v1/budgets", ""),
        ("GET", "/v1/audit/head", ""),
        ("GET", "/v1/approvals", ""),
        ("GET", "/metrics", ""),
    ];
    for (m, path, body) in cases {
        admin_error(&admin(p, m, path, None, body), 401, "unauthenticated");
        admin_error(
            &admin(p, m, path, Some("pca_nobody-at-all-000000"), body),
            401,
            "unauthenticated",
        );
        // an agent key is not an admin key
        admin_error(
            &admin(p, m, path, Some(CONFIG_AGENT_KEY), body),
            401,
            "unauthenticated",
        );
    }
    // viewer and approver: reads yes, operator actions 403 forbidden (and nothing happens)
    for key in [VIEW, APPR] {
        for (m, path, body) in &cases[1..4] {
            admin_error(&admin(p, m, path, Some(key), body), 403, "forbidden");
        }
        for (m, path, body) in [cases[5], cases[6]] {
            admin_error(&admin(p, m, path, Some(key), body), 403, "forbidden");
        }
        for path in ["/v1/agents", "/v1/config", "/v1/budgets", "/metrics"] {
            let r = admin(p, "GET", path, Some(key), "");
            assert_eq!(r.status, 200, "{path}: {}", show(&r.raw));
        }
    }
    assert!(
        agents(p, OPS).iter().all(|a| a["id"] != "x1"),
        "a forbidden create created nothing"
    );
    // the operator and the shared admin_token may do everything
    for key in [OPS, ADMIN_TOKEN] {
        let r = admin(p, "POST", "/v1/reload", Some(key), "");
        assert_eq!(r.status, 200, "{}", show(&r.raw));
    }
    // the metrics token reads /metrics and nothing else
    let r = admin(p, "GET", "/metrics", Some(METRICS_TOKEN), "");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    for (m, path, body) in &cases[..7] {
        admin_error(
            &admin(p, m, path, Some(METRICS_TOKEN), body),
            401,
            "unauthenticated",
        );
    }
    // a scoped identity reads the log of its proxies only
    admin_error(
        &admin(p, "GET", "/v1/requests", Some(SCOPED), ""),
        403,
        "out_of_scope",
    );
    admin_error(
        &admin(p, "GET", "/v1/requests?proxy=crm", Some(SCOPED), ""),
        403,
        "out_of_scope",
    );
    admin_error(
        &admin(p, "GET", "/v1/telemetry?proxy=crm", Some(SCOPED), ""),
        403,
        "out_of_scope",
    );
    // no [audit]: a permitted read of its proxy gets past the scope check
    admin_error(
        &admin(p, "GET", "/v1/requests?proxy=other", Some(SCOPED), ""),
        404,
        "audit_disabled",
    );
}

#[test]
fn issued_keys_work_at_once_rotation_grace_expiry_revocation_on_every_worker_and_the_audit_names_the_admin()
 {
    let mock = MockUpstream::start(|r| Reply::ok(&format!("seen {}", r.target)));
    let rig = start(
        &mock,
        4,
        "[state]\ndir = \"state\"\n",
        "[audit]\ndir = \"audit\"\nfsync = \"always\"\n",
    );
    let (p, gw) = (rig.admin, rig.gw.port());

    // issued, and the key works on the very next call; its role feeds the rules
    let k1 = create(p, "bot-1", &["support"], None);
    let r = call(gw, &k1);
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(r.body_str(), "seen /crm/tickets/7");
    let got = mock.requests();
    let last = got.last().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {TARGET_SECRET}").as_str())
    );
    assert!(
        !last.head_str().contains(&k1),
        "the agent key never goes upstream"
    );
    // no role: the default deny
    let k0 = create(p, "bot-norole", &[], None);
    assert_gateway_error(&call(gw, &k0), 403, "no_rule_matched");

    // bad input: clear 4xx, nothing created
    for (body, status, code) in [
        (r#"{"id":"bot-1"}"#, 409, "agent_exists"),
        (r#"{"id":"cfg-bot"}"#, 409, "agent_exists"),
        ("{not json", 400, "bad_request"),
        (r#"{"id":"ok-id","admin":true}"#, 400, "bad_request"),
        (r#"{"id":"a b"}"#, 400, "bad_request"),
        (r#"{"id":"../etc"}"#, 400, "bad_request"),
        (r#"{"id":"x/y"}"#, 400, "bad_request"),
        (r#"{"id":"caf\u00e9"}"#, 400, "bad_request"),
        (r#"{"id":""}"#, 400, "bad_request"),
        (
            r#"{"id":"ok-id","roles":["has space"]}"#,
            400,
            "bad_request",
        ),
        (r#"{"id":"ok-id","roles":"support"}"#, 400, "bad_request"),
        (
            r#"{"id":"ok-id","expires_at":"2001-01-01T00:00:00Z"}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"id":"ok-id","expires_at":"tomorrow"}"#,
            400,
            "bad_request",
        ),
    ] {
        admin_error(
            &admin(p, "POST", "/v1/agents", Some(OPS), body),
            status,
            code,
        );
    }
    let long_id = "a".repeat(129);
    admin_error(
        &admin(
            p,
            "POST",
            "/v1/agents",
            Some(OPS),
            &format!(r#"{{"id":"{long_id}"}}"#),
        ),
        400,
        "bad_request",
    );
    // a huge body is refused from its Content-Length, unread
    let raw = send_raw(
        p,
        format!(
            "POST /v1/agents HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {OPS}\r\nContent-Length: 50000000\r\n\r\n{{"
        )
        .as_bytes(),
    );
    admin_error(&parse_response(&raw).unwrap(), 413, "body_too_large");
    admin_error(
        &admin(
            p,
            "POST",
            "/v1/agents/bot-1/rotate",
            Some(OPS),
            r#"{"grace":"soon"}"#,
        ),
        400,
        "bad_request",
    );
    admin_error(
        &admin(
            p,
            "POST",
            "/v1/agents/bot-1/rotate",
            Some(OPS),
            r#"{"grace":"400d"}"#,
        ),
        400,
        "bad_request",
    );
    admin_error(
        &admin(p, "DELETE", "/v1/agents/nope", Some(OPS), ""),
        404,
        "not_found",
    );
    admin_error(
        &admin(p, "DELETE", "/v1/agents/%2e%2e", Some(OPS), ""),
        404,
        "not_found",
    );
    admin_error(
        &admin(p, "DELETE", "/v1/agents/cfg-bot", Some(OPS), ""),
        409,
        "read_only",
    );
    admin_error(
        &admin(p, "POST", "/v1/agents/cfg-bot/rotate", Some(OPS), ""),
        409,
        "read_only",
    );
    admin_error(
        &admin(p, "PUT", "/v1/agents", Some(OPS), ""),
        405,
        "method_not_allowed",
    );
    let ids: Vec<String> = agents(p, VIEW)
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["cfg-bot", "bot-1", "bot-norole"]);

    // the listing: config agent read-only, managed with created / last seen
    let list = agents(p, VIEW);
    assert_eq!(list[0]["source"], "config");
    assert_eq!(list[0]["read_only"], true);
    assert_eq!(list[1]["source"], "managed");
    assert_eq!(list[1]["read_only"], false);
    assert_eq!(list[1]["roles"], serde_json::json!(["support"]));
    assert_eq!(list[1]["created_by"], "ops");
    assert!(list[1]["last_seen"].is_string(), "{}", list[1]);
    assert!(list[1]["revoked_at"].is_null());
    assert!(
        list[2]["last_seen"].is_string(),
        "refused by a rule, still seen"
    );
    let text = serde_json::to_string(&list).unwrap();
    assert!(!text.contains(&k1) && !text.contains(&sha256_hex(k1.as_bytes())));

    // revocation reaches every worker: 24 kept-alive connections (spread over 4 workers by
    // SO_REUSEPORT) each make a call, then the agent is revoked, then each calls again
    let mut conns: Vec<Conn> = (0..24).map(|_| rig.gw.conn()).collect();
    for c in &mut conns {
        let r = c.roundtrip(&get_ticket(&k1));
        assert_eq!(r.status, 200, "{}", show(&r.raw));
    }
    let r = admin(p, "DELETE", "/v1/agents/bot-1", Some(OPS), "");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let revoked_at = json(&r)["revoked_at"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    for c in &mut conns {
        let r = c.roundtrip(&get_ticket(&k1));
        assert_gateway_error(&r, 401, "unauthenticated");
    }
    for _ in 0..8 {
        assert_gateway_error(&call(gw, &k1), 401, "unauthenticated");
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // revoking again: the first revocation stands
    let r = admin(p, "DELETE", "/v1/agents/bot-1", Some(OPS), "");
    assert_eq!(json(&r)["revoked_at"], revoked_at.as_str());
    admin_error(
        &admin(p, "POST", "/v1/agents/bot-1/rotate", Some(OPS), ""),
        409,
        "revoked",
    );
    let list = agents(p, OPS);
    assert_eq!(list[1]["revoked_at"], revoked_at.as_str());
    // the config agent is untouched
    assert_eq!(call(gw, CONFIG_AGENT_KEY).status, 200);

    // rotation with a grace: both keys work until it ends, then only the new one
    let old = create(p, "bot-2", &["support"], None);
    let r = admin(
        p,
        "POST",
        "/v1/agents/bot-2/rotate",
        Some(OPS),
        r#"{"grace":"2s"}"#,
    );
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let v = json(&r);
    let new = v["key"].as_str().unwrap().to_string();
    assert!(v["grace_until"].is_string(), "{v}");
    let rotated = Instant::now();
    assert_ne!(new, old);
    assert_eq!(call(gw, &new).status, 200);
    assert_eq!(
        call(gw, &old).status,
        200,
        "the old key works during the grace"
    );
    let refused = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        (call(gw, &old).status == 401).then_some(())
    });
    assert!(refused.is_some(), "the old key still works after its grace");
    assert!(
        rotated.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        rotated.elapsed()
    );
    assert_gateway_error(&call(gw, &old), 401, "unauthenticated");
    assert_eq!(call(gw, &new).status, 200);
    // rotation without a grace: the old key stops at once
    let r = admin(p, "POST", "/v1/agents/bot-2/rotate", Some(OPS), "");
    assert_eq!(json(&r)["grace_until"], serde_json::Value::Null);
    let newer = json(&r)["key"].as_str().unwrap().to_string();
    assert_gateway_error(&call(gw, &new), 401, "unauthenticated");
    assert_eq!(call(gw, &newer).status, 200);

    // expiry: refused from expires_at on, as credential_expired
    let exp = rfc3339_in(2);
    let k3 = create(p, "bot-3", &["support"], Some(&exp));
    assert_eq!(call(gw, &k3).status, 200);
    let expired = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        (call(gw, &k3).status == 401).then_some(())
    });
    assert!(expired.is_some(), "never expired");
    assert_gateway_error(&call(gw, &k3), 401, "credential_expired");

    // the CLI drives the same API (key as a reference)
    let key_file = rig.gw.dir().join("ops.key");
    std::fs::write(&key_file, OPS).unwrap();
    let key_ref = format!("file:{}", key_file.display());
    let url = format!("http://127.0.0.1:{p}");
    let cli = |args: &[&str]| {
        let mut all = vec!["agent"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--admin", &url, "--key", &key_ref]);
        run_portcullis(&all, &[], Duration::from_secs(30))
    };
    let out = cli(&["create", "bot-cli", "--roles", "support"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kc = v["key"].as_str().unwrap().to_string();
    assert_eq!(call(gw, &kc).status, 200);
    let out = cli(&["list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"bot-cli\""));
    let out = cli(&["rotate", "bot-cli", "--grace", "10m"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(gw, &kc).status, 200, "within the 10m grace");
    let out = cli(&["revoke", "bot-cli"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_gateway_error(&call(gw, &kc), 401, "unauthenticated");
    let out = cli(&["revoke", "bot-cli/../x"]);
    assert!(!out.status.success());
    let out = cli(&["revoke", "no-such-bot"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));

    // every admin action is an audit record naming the admin; no key in the trail
    let dir = rig.gw.dir().join("audit");
    let ok = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let lines = audit_lines(&dir);
        lines
            .iter()
            .any(|l| l["action"] == "agent.revoke" && l["target"] == "bot-cli")
            .then_some(lines)
    });
    let lines = ok.expect("the CLI's revoke was never recorded");
    let admin_recs: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["kind"] == "admin").collect();
    let find = |action: &str, target: &str, status: u64| {
        admin_recs.iter().any(|l| {
            l["action"] == action
                && l["target"] == target
                && l["status"] == status
                && l["admin"] == "ops"
                && l["role"] == "operator"
        })
    };
    assert!(find("agent.create", "bot-1", 201), "{admin_recs:?}");
    assert!(
        find("agent.create", "bot-1", 409),
        "the refused duplicate too"
    );
    assert!(find("agent.revoke", "bot-1", 200));
    assert!(find("agent.rotate", "bot-2", 200));
    assert!(find("agent.revoke", "cfg-bot", 409));
    assert!(find("agent.create", "bot-cli", 201));
    // the managed agent's calls carry its id
    assert!(
        lines
            .iter()
            .any(|l| l["agent"] == "bot-1" && l["status"] == 200)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["agent"].is_null() && l["code"] == "unauthenticated")
    );
    let all = lines.iter().map(|l| l.to_string()).collect::<String>();
    for k in [&k1, &old, &new, &newer, &k3, &kc] {
        assert!(!all.contains(k.as_str()), "a key in the audit trail");
    }
    assert!(!all.contains(OPS) && !all.contains(TARGET_SECRET));
    crate::audit::portcullis_ok(&["audit", "verify", dir.to_str().unwrap()]);
}

#[test]
fn a_restart_keeps_managed_agents_and_their_revocations() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let state = tempfile::tempdir().unwrap();
    let section = format!("[state]\ndir = \"{}\"\n", state.path().display());
    let (live, gone) = {
        let rig = start(&mock, 2, &section, "");
        let live = create(rig.admin, "keeper", &["support"], None);
        let gone = create(rig.admin, "goner", &["support"], None);
        let r = admin(rig.admin, "DELETE", "/v1/agents/goner", Some(OPS), "");
        assert_eq!(r.status, 200);
        assert_eq!(call(rig.gw.port(), &live).status, 200);
        // "last seen" goes to the store in batches (every 2 s)
        std::thread::sleep(Duration::from_millis(2600));
        (live, gone)
    };
    let rig = start(&mock, 2, &section, "");
    assert_eq!(
        call(rig.gw.port(), &live).status,
        200,
        "kept across the restart"
    );
    assert_gateway_error(&call(rig.gw.port(), &gone), 401, "unauthenticated");
    let list = agents(rig.admin, VIEW);
    let keeper = list.iter().find(|a| a["id"] == "keeper").unwrap();
    assert!(keeper["revoked_at"].is_null());
    assert!(
        keeper["last_seen"].is_string(),
        "last seen before the restart was written to the store: {keeper}"
    );
    let goner = list.iter().find(|a| a["id"] == "goner").unwrap();
    assert!(goner["revoked_at"].is_string());
    // the id stays taken
    admin_error(
        &admin(
            rig.admin,
            "POST",
            "/v1/agents",
            Some(OPS),
            r#"{"id":"goner"}"#,
        ),
        409,
        "agent_exists",
    );
}

#[test]
fn a_second_gateway_sharing_redis_honours_issue_and_revocation_within_a_second() {
    let redis = crate::meter_redis::Redis::start();
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let state = format!(
        "[state]\nredis = \"{}\"\nkey_prefix = \"agents-test:\"\n",
        redis.url()
    );
    let a = start(&mock, 2, &state, "");
    let b = start(&mock, 2, &state, "");
    let key = create(a.admin, "shared-bot", &["support"], None);
    let t0 = Instant::now();
    let works = poll_until(Duration::from_secs(2), Duration::from_millis(20), || {
        (call(b.gw.port(), &key).status == 200).then_some(())
    });
    assert!(works.is_some(), "B never took A's agent");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // B lists it too, and the id is taken on B
    assert!(
        agents(b.admin, VIEW)
            .iter()
            .any(|x| x["id"] == "shared-bot")
    );
    admin_error(
        &admin(
            b.admin,
            "POST",
            "/v1/agents",
            Some(OPS),
            r#"{"id":"shared-bot"}"#,
        ),
        409,
        "agent_exists",
    );
    // revoked through B: A refuses within a second
    let mut conn = a.gw.conn();
    assert_eq!(conn.roundtrip(&get_ticket(&key)).status, 200);
    let r = admin(b.admin, "DELETE", "/v1/agents/shared-bot", Some(OPS), "");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let t0 = Instant::now();
    let refused = poll_until(Duration::from_secs(3), Duration::from_millis(10), || {
        (conn.roundtrip(&get_ticket(&key)).status == 401).then_some(())
    });
    assert!(refused.is_some(), "A still takes the revoked key");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_gateway_error(&call(a.gw.port(), &key), 401, "unauthenticated");
    // rotation through A with a grace: B takes the new key and the old until the grace ends
    let k2 = create(a.admin, "shared-2", &["support"], None);
    let r = admin(
        a.admin,
        "POST",
        "/v1/agents/shared-2/rotate",
        Some(OPS),
        r#"{"grace":"1m"}"#,
    );
    let k2n = json(&r)["key"].as_str().unwrap().to_string();
    let both = poll_until(Duration::from_secs(2), Duration::from_millis(20), || {
        (call(b.gw.port(), &k2n).status == 200).then_some(())
    });
    assert!(both.is_some());
    assert_eq!(call(b.gw.port(), &k2).status, 200);
}

#[test]
fn config_shows_secrets_as_references_and_check_applies_nothing() {
    const VAULT_VALUE: &str = "vlt-value-agents-5be01c";
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    // a vault entry for proxy `other` (env: for `crm`, file: for the admin token)
    let vdir = tempfile::tempdir().unwrap();
    let out = run_portcullis(&["vault", "keygen"], &[], Duration::from_secs(30));
    assert!(out.status.success());
    let vkey = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let vault = format!(
        "[vault]\nfile = \"{}\"\nkey = \"env:PCS_TEST_VAULT_KEY\"\n",
        vdir.path().join("v.pcv").display()
    );
    let vcfg = vdir.path().join("v.toml");
    std::fs::write(&vcfg, &vault).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["vault", "set", "other-token", "-c", vcfg.to_str().unwrap()])
        .env("PCS_TEST_VAULT_KEY", &vkey)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), VAULT_VALUE.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let admin_port = free_port();
    let toml = config(
        admin_port,
        2,
        &mock.url(),
        "[state]\ndir = \"state\"\n",
        &format!("[audit]\ndir = \"audit\"\n\n{vault}"),
    )
    .replace(
        "upstream = \"{upstream}/other\"\ndefault_effect = \"allow\"\n"
            .replace("{upstream}", &mock.url())
            .as_str(),
        &format!(
            "upstream = \"{}/other\"\ndefault_effect = \"allow\"\nauth = {{ scheme = \"bearer\", secret = \"vault:other-token\" }}\n",
            mock.url()
        ),
    );
    assert!(toml.contains("vault:other-token"));
    let mut envs = ENVS.to_vec();
    envs.push(("PCS_TEST_VAULT_KEY", vkey.as_str()));
    let gw = Gateway::start_with_env(&toml, FILES, &envs);
    wait_admin(admin_port);
    let rig = Rig {
        gw,
        admin: admin_port,
    };
    // the vault secret is live: the upstream receives it
    let raw = send_raw(
        rig.gw.port(),
        format!("GET /other/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CONFIG_AGENT_KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(parse_response(&raw).unwrap().status, 200, "{}", show(&raw));
    assert_eq!(
        mock.requests().last().unwrap().header("authorization"),
        Some(format!("Bearer {VAULT_VALUE}").as_str())
    );
    let p = rig.admin;
    let r = admin(p, "GET", "/v1/config", Some(VIEW), "");
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let v = json(&r);
    let text = String::from_utf8_lossy(&r.raw).into_owned();
    for secret in [
        TARGET_SECRET,
        ADMIN_TOKEN,
        METRICS_TOKEN,
        VAULT_VALUE,
        vkey.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "a secret's value in /v1/config: {text}"
        );
    }
    assert_eq!(
        v["config"]["proxies"][1]["auth"]["secret"],
        "vault:other-token"
    );
    assert_eq!(v["config"]["vault"]["key"], "env:PCS_TEST_VAULT_KEY");
    assert_eq!(v["config"]["server"]["admin_token"], "file:admin.token");
    assert_eq!(
        v["config"]["server"]["metrics_token"],
        "env:PCS_TEST_METRICS"
    );
    assert_eq!(
        v["config"]["proxies"][0]["auth"]["secret"],
        "env:PCS_TEST_TGT"
    );
    assert_eq!(v["config"]["proxies"][0]["name"], "crm");
    let generation = v["generation"].as_u64().unwrap();

    // a good candidate: ok, with nothing applied
    let good = config(p, 2, &mock.url(), "[state]\ndir = \"state\"\n", "")
        .replace("{PORT}", &rig.gw.port().to_string())
        .replace("workers = 2", "workers = 3");
    let r = admin(p, "POST", "/v1/config/check", Some(OPS), &good);
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(json(&r)["ok"], true);
    assert!(json(&r)["warnings"].is_array());
    // a bad one: 422 with file:line: key: message
    let bad = good.replace("default_effect = \"deny\"", "default_effect = \"perhaps\"");
    let r = admin(p, "POST", "/v1/config/check", Some(OPS), &bad);
    assert_eq!(r.status, 422, "{}", show(&r.raw));
    let v = json(&r);
    assert_eq!(v["ok"], false);
    let errs = v["errors"].as_array().unwrap();
    let line = bad
        .lines()
        .position(|l| l.contains("perhaps"))
        .map(|i| i + 1)
        .unwrap();
    assert!(
        errs.iter().any(|e| e
            .as_str()
            .unwrap()
            .starts_with(&format!("candidate.toml:{line}: default_effect: "))),
        "{errs:?}"
    );
    let r = admin(p, "POST", "/v1/config/check", Some(OPS), "not = [toml");
    assert_eq!(r.status, 422, "{}", show(&r.raw));
    let r = admin(p, "POST", "/v1/config/check", Some(OPS), "\u{0}\u{1}");
    assert!(r.status == 422 || r.status == 400, "{}", show(&r.raw));
    // nothing was applied
    let v = json(&admin(p, "GET", "/v1/config", Some(VIEW), ""));
    assert_eq!(v["generation"].as_u64(), Some(generation));
    assert_eq!(v["config"]["server"]["workers"], 2);
    assert_eq!(call(rig.gw.port(), CONFIG_AGENT_KEY).status, 200);
    // recorded, naming the admin
    let dir = rig.gw.dir().join("audit");
    let lines = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let l = audit_lines(&dir);
        (l.iter().filter(|x| x["action"] == "config.check").count() >= 4).then_some(l)
    })
    .expect("config checks never recorded");
    assert!(
        lines
            .iter()
            .any(|l| l["action"] == "config.check" && l["admin"] == "ops" && l["status"] == 422)
    );
}
