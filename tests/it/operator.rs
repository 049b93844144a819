//! What an operator meets (issue 20): `check` without `-c`, its messages and its path probes
//! (`--as-user`), a second instance on a served address, vault rewrites keeping owner and mode,
//! `vault rekey`, the man page and shell completions.
use crate::support::*;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `portcullis ARGS` with `stdin` piped in (not a TTY) and `env` set.
fn run_in(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("PORTCULLIS_VAULT_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn portcullis");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

const DENY_PROXY: &str =
    "[[proxies]]\nname = \"a\"\nupstream = \"http://127.0.0.1:9\"\ndefault_effect = \"deny\"\n";

#[test]
fn check_without_config_checks_the_installed_or_the_embedded_config() {
    let o = run_portcullis(&["check"], &[], T);
    let out = text(&o.stdout);
    if std::path::Path::new("/etc/portcullis/portcullis.toml").exists() {
        // a package is installed on this machine: that file is what `check` looks at
        assert!(
            out.contains("/etc/portcullis/portcullis.toml") || !o.status.success(),
            "{out}"
        );
    } else {
        assert!(o.status.success(), "{out}{}", text(&o.stderr));
        assert!(out.starts_with("<embedded quickstart.toml>: ok\n"), "{out}");
        assert!(
            out.contains("demo             -> http://127.0.0.1:8081  default allow"),
            "{out}"
        );
    }
}

#[test]
fn check_of_a_missing_file_names_the_file_without_a_fake_line_and_key() {
    let o = run_portcullis(&["check", "-c", "/nonexistent-dir/p.toml"], &[], T);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.starts_with("/nonexistent-dir/p.toml: cannot read config file: "),
        "{err}"
    );
    assert!(!err.contains(":0:") && !err.contains(" -: "), "{err}");
}

#[test]
fn check_refuses_an_audit_dir_that_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("audit"), b"not a directory").unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"audit\"\n{DENY_PROXY}"),
    )
    .unwrap();
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "audit.dir: {}/audit exists and is not a directory",
            dir.path().display()
        )),
        "{err}"
    );
    // only the duplicate-free warning set: one "no allow rule" line, not two
    std::fs::remove_file(dir.path().join("audit")).unwrap();
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.matches("warning:").count(), 1, "{out}");
    assert!(out.contains("no allow rule"), "{out}");
}

#[test]
fn check_as_user_proves_the_audit_dir_writable_by_that_user() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"audit\"\n{DENY_PROXY}"),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = cfg.to_str().unwrap();
    let o = run_portcullis(&["check", "-c", c, "--as-user", "no-such-user-x"], &[], T);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--as-user no-such-user-x: no such user"),
        "{}",
        text(&o.stderr)
    );
    let o = run_portcullis(&["check", "-c", c, "--as-user", "nobody"], &[], T);
    if !is_root() {
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("needs root"),
            "{}",
            text(&o.stderr)
        );
        return;
    }
    // root-owned 0700 audit dir: the service user could not write it
    assert!(!o.status.success(), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(
        err.contains("checking as user nobody")
            && err.contains(&format!(
                "audit.dir: {} is not writable by user nobody",
                audit.display()
            )),
        "{err}"
    );
    // chowned to the user: ok, and the summary is printed by the child running as it
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody")).then(|| (f[2].to_string(), f[3].to_string()))
        })
        .expect("a nobody user");
    let st = Command::new("chown")
        .arg(format!("{}:{}", nobody.0, nobody.1))
        .arg(&audit)
        .status()
        .unwrap();
    assert!(st.success());
    let o = run_portcullis(&["check", "-c", c, "--as-user", "nobody"], &[], T);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&format!("{c}: ok")),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn a_second_instance_on_a_served_address_is_refused() {
    let up = MockUpstream::start(echo_request_line);
    let first = Gateway::start(&simple_config(&format!("http://127.0.0.1:{}", up.port())));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("second.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nworkers = 1\n{DENY_PROXY}",
            first.port()
        ),
    )
    .unwrap();
    let o = run_portcullis(&["run", "-c", cfg.to_str().unwrap()], &[], T);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "server.listen 127.0.0.1:{}: the address is already in use by another process",
            first.port()
        )),
        "{err}"
    );
    assert!(!err.contains("portcullis ready"), "{err}");
    // the first instance still answers every call itself (the second never took a share)
    for i in 0..8 {
        let r = parse_response(&send_raw(first.port(), &get(&format!("/up/n{i}")))).unwrap();
        assert_eq!(r.status, 200, "call {i}");
    }
    assert_eq!(up.requests().len(), 8);
}

fn keygen() -> String {
    let o = run_in(&["vault", "keygen"], b"", &[]);
    assert!(o.status.success());
    text(&o.stdout).trim().to_string()
}

#[test]
fn vault_rewrites_keep_owner_group_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let file = dir.path().join("v.pcv");
    let f = file.to_str().unwrap();
    let env = [("K", key.as_str())];
    let set = |name: &str, val: &[u8]| {
        let o = run_in(
            &["vault", "set", name, "--file", f, "--key-ref", "env:K"],
            val,
            &env,
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    set("a", b"one\n");
    // a new vault is 0600
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o7777, 0o600);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let owner = if is_root() {
        let st = Command::new("chown")
            .arg("65534:65534")
            .arg(&file)
            .status()
            .unwrap();
        assert!(st.success());
        (65534, 65534)
    } else {
        let m = std::fs::metadata(&file).unwrap();
        (m.uid(), m.gid())
    };
    set("b", b"two\n");
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (owner.0, owner.1, 0o640)
    );
    let o = run_in(
        &["vault", "rm", "a", "--file", f, "--key-ref", "env:K"],
        b"",
        &env,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (owner.0, owner.1, 0o640)
    );
    // no temp file left next to it
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["v.pcv".to_string()]);
}

#[test]
fn vault_rekey_re_encrypts_under_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (keygen(), keygen());
    assert_ne!(old, new);
    std::fs::write(dir.path().join("new.key"), format!("{new}\n")).unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "[vault]\nfile = \"v.pcv\"\nkey = \"env:OLD\"\n").unwrap();
    let c = cfg.to_str().unwrap();
    let env = [("OLD", old.as_str()), ("NEW", new.as_str())];
    for (n, v) in [("crm-token", &b"tok-1"[..]), ("other", b"tok-2")] {
        let o = run_in(&["vault", "set", n, "-c", c], v, &env);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let before = std::fs::read(dir.path().join("v.pcv")).unwrap();
    // a bad new key reference changes nothing
    let o = run_in(
        &["vault", "rekey", "-c", c, "--new-key-ref", "env:UNSET_X"],
        b"",
        &env,
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--new-key-ref env:UNSET_X"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(dir.path().join("v.pcv")).unwrap(), before);

    let new_ref = format!("file:{}", dir.path().join("new.key").display());
    let o = run_in(
        &["vault", "rekey", "-c", c, "--new-key-ref", &new_ref],
        b"",
        &env,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("re-encrypted 2 secret(s)"),
        "{}",
        text(&o.stderr)
    );
    let f = dir.path().join("v.pcv");
    let f = f.to_str().unwrap();
    // the old key no longer opens it; the new one does, with both secrets
    let o = run_in(
        &["vault", "list", "--file", f, "--key-ref", "env:OLD"],
        b"",
        &env,
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("wrong vault key"),
        "{}",
        text(&o.stderr)
    );
    let o = run_in(
        &["vault", "list", "--file", f, "--key-ref", "env:NEW"],
        b"",
        &env,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "crm-token\nother\n");
}

#[test]
fn man_page_and_completions_cover_every_subcommand() {
    let o = run_portcullis(&["manpage"], &[], T);
    assert!(o.status.success());
    let man = text(&o.stdout);
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq"),
        "{}",
        &man[..man.len().min(200)]
    );
    for sub in [
        "run",
        "check",
        "agent",
        "vault",
        "logs",
        "audit",
        "completions",
    ] {
        assert!(
            man.contains(&format!("PORTCULLIS {}", sub.to_uppercase())),
            "{sub}"
        );
    }
    assert!(
        man.contains("\\-\\-as\\-user"),
        "check's options are in the page"
    );
    assert!(man.contains("PORTCULLIS_LOG"));
    for (shell, marker) in [
        ("bash", "complete -F _portcullis"),
        ("zsh", "#compdef portcullis"),
        ("fish", "complete -c portcullis"),
    ] {
        let o = run_portcullis(&["completions", shell], &[], T);
        assert!(o.status.success(), "{shell}");
        let s = text(&o.stdout);
        assert!(s.contains(marker), "{shell}: {}", &s[..s.len().min(300)]);
        assert!(s.contains("rekey") && s.contains("as-user"), "{shell}");
    }
    let o = run_portcullis(&["completions", "tcsh"], &[], T);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("invalid value 'tcsh'"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn every_reload_outcome_is_logged_once_on_one_line_on_both_paths() {
    let up = MockUpstream::start(echo_request_line);
    let admin_port = free_port();
    let token = "t0ken-for-operator-tests";
    let good = format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 2\nadmin_listen = \"127.0.0.1:{admin_port}\"\nadmin_token = \"file:admin.token\"\n{}",
        proxy("up", &up.url())
    );
    let gw = Gateway::start_with_files(&good, &[("admin.token", token.as_bytes())]);
    let admin = |t: Option<&str>| {
        let auth = t
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req =
            format!("POST /v1/reload HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n");
        parse_response(&send_raw(admin_port, req.as_bytes())).unwrap()
    };
    let ready = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).ok()
    });
    assert!(ready.is_some(), "admin listener");
    // two errors in one file: both on the one log line
    gw.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 2\nadmin_listen = \"127.0.0.1:{admin_port}\"\nadmin_token = \"file:admin.token\"\n[limits]\nhead_timeout = \"0s\"\n[[proxies]]\nname = \"up\"\nupstream = \"gopher://x\"\n"
    ));
    let r = admin(Some(token));
    assert_eq!(r.status, 400, "{}", show(&r.raw));
    let failed = |log: &str| {
        log.lines()
            .filter(|l| l.contains("reload failed"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let log = gw.log_when(|l| failed(l).len() == 1, Duration::from_secs(10));
    let lines = failed(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(lines[0].contains("via=\"POST /v1/reload\""), "{}", lines[0]);
    assert!(
        lines[0].contains("portcullis.toml:10: proxies[0].upstream"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("; "),
        "both errors on the line: {}",
        lines[0]
    );

    gw.signal("HUP");
    let log = gw.log_when(|l| failed(l).len() == 2, Duration::from_secs(10));
    let lines = failed(&log);
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[1].contains("ERROR") && lines[1].contains("via=\"SIGHUP\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("portcullis.toml:10: proxies[0].upstream"),
        "{}",
        lines[1]
    );
    // no continuation line without a level
    assert!(
        !log.lines().any(|l| l.starts_with("portcullis.toml")
            || l.contains("/portcullis.toml:10:") && !l.contains("reload failed")),
        "{log}"
    );
    // the old config kept serving
    assert_eq!(gw.conn().roundtrip(&get("/up/a")).status, 200);

    // successes: once each, with the trigger and the generation
    gw.write_config(&good);
    assert_eq!(admin(Some(token)).status, 200);
    gw.signal("HUP");
    let ok = |log: &str| {
        log.lines()
            .filter(|l| l.contains("config reloaded"))
            .count()
    };
    let log = gw.log_when(|l| ok(l) == 2, Duration::from_secs(10));
    assert_eq!(ok(&log), 2, "{log}");
    assert!(
        log.lines().any(|l| l.contains("config reloaded")
            && l.contains("generation=2")
            && l.contains("via=\"POST /v1/reload\"")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("config reloaded")
            && l.contains("generation=3")
            && l.contains("via=\"SIGHUP\"")),
        "{log}"
    );
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n{DENY_PROXY}"),
    )
    .unwrap();
    let err = std::fs::File::create(dir.path().join("err")).unwrap();
    let mut child = Command::new(bin())
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .env("PORTCULLIS_LOG", "info")
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    let ready = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        Some(read()).filter(|l| l.contains("portcullis ready"))
    });
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let st = poll_until(Duration::from_secs(15), Duration::from_millis(20), || {
        child.try_wait().ok().flatten()
    });
    if st.is_none() {
        let _ = child.kill();
    }
    let log = ready.expect("ready line");
    let log = log + &read();
    let mut n = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for k in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(k).is_some(), "{k} missing: {line}");
        }
        n += 1;
    }
    assert!(n >= 3, "{log}");
    assert!(log.contains(r#""message":"portcullis ready""#), "{log}");
    assert_eq!(st.map(|s| s.success()), Some(true));

    let o = run_portcullis(&["check"], &[("PORTCULLIS_LOG_FORMAT", "xml")], T);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("PORTCULLIS_LOG_FORMAT=\"xml\""),
        "{}",
        text(&o.stderr)
    );
}

/// `check` lints the rules: a rule another one always beats, a duplicate, and names of agents
/// or roles no `[[agents]]` entry has. Warnings (exit 0), each on the rule's line with the fix.
#[test]
fn check_reports_rules_that_never_decide_and_unknown_agents_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("r.toml");
    let rule = |effect: &str, methods: &str, path: &str, extra: &str| {
        format!(
            "\n  [[proxies.rules]]\n  effect = \"{effect}\"\n  methods = {methods}\n  path = \"{path}\"\n{extra}"
        )
    };
    let mut toml = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[agents]]\nid = \"bot\"\nkey_sha256 = \"{}\"\nroles = [\"support\"]\n\n\
         [[proxies]]\nname = \"crm\"\nupstream = \"https://127.0.0.1:9\"\ndefault_effect = \"deny\"\n",
        "0".repeat(64)
    );
    toml += &rule(
        "allow",
        "[\"GET\"]",
        "/v1/accounts/**",
        "  roles = [\"suport\"]\n",
    ); // 0
    toml += &rule("deny", "\"*\"", "/v1/**", ""); // 1: beats 0 and 2
    toml += &rule(
        "allow",
        "[\"GET\"]",
        "/v1/accounts/*",
        "  agents = [\"ghost\"]\n",
    ); // 2
    toml += &rule("allow", "[\"GET\"]", "/v2/x", ""); // 3
    toml += &rule("allow", "[\"GET\"]", "/v2/x", ""); // 4: duplicate of 3
    // not findings: a conditional deny covers nothing; a narrower method set is not covered
    toml += &rule("deny", "[\"GET\"]", "/v3/**", "  query = { a = \"1\" }\n"); // 5
    toml += &rule("allow", "[\"GET\"]", "/v3/x", ""); // 6
    toml += &rule("deny", "[\"POST\"]", "/v4/**", ""); // 7
    toml += &rule("allow", "[\"GET\", \"POST\"]", "/v4/x", ""); // 8
    toml += &rule("deny", "[\"GET\"]", "/v5/*", ""); // 9: * never covers /v5 itself
    toml += &rule("allow", "[\"GET\"]", "/v5/**", ""); // 10
    std::fs::write(&cfg, &toml).unwrap();
    let line_of = |n: usize| {
        // the line of rule n's `[[proxies.rules]]`
        toml.lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with("[[proxies.rules]]"))
            .nth(n)
            .map(|(i, _)| i + 1)
            .unwrap()
    };
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let f = cfg.to_str().unwrap();
    let want = [
        format!(
            "warning: {f}:{}: proxies[0].rules[0] (crm): this allow rule can never decide a call: rules[1] (deny) matches every call this one matches, and deny wins over allow; remove it, or narrow rules[1] (methods, path, agents or roles)",
            line_of(0)
        ),
        format!(
            "warning: {f}:{}: proxies[0].rules[2] (crm): this allow rule can never decide a call: rules[1] (deny) matches every call this one matches, and deny wins over allow; remove it, or narrow rules[1] (methods, path, agents or roles)",
            line_of(2)
        ),
        format!(
            "warning: {f}:{}: proxies[0].rules[4] (crm): this allow rule can never decide a call: rules[3] (allow) comes first and matches every call this one matches; remove it, or narrow rules[3] (methods, path, agents or roles)",
            line_of(4)
        ),
        format!(
            "warning: {f}:{}: proxies[0].rules[0] (crm): names role \"suport\", which no [[agents]] entry holds: it never matches; fix the name, or give an agent the role (`roles = [\"suport\"]`)",
            line_of(0)
        ),
        format!(
            "warning: {f}:{}: proxies[0].rules[2] (crm): names agent \"ghost\", which no [[agents]] entry has: it never matches; fix the name, or add the agent (`portcullis agent add ghost`)",
            line_of(2)
        ),
    ];
    for w in &want {
        assert!(out.lines().any(|l| l == w), "missing:\n{w}\nin:\n{out}");
    }
    assert_eq!(out.matches("warning:").count(), want.len(), "{out}");

    // with [[jwt]], tokens may carry any agent id or role: no unknown-name findings
    let jwt = "[[jwt]]\nissuer = \"https://idp.test/\"\naudience = \"portcullis\"\njwks = \"file:jwks.json\"\n";
    std::fs::write(dir.path().join("jwks.json"), br#"{"keys":[]}"#).unwrap();
    std::fs::write(
        &cfg,
        toml.replacen("[[proxies]]", &format!("{jwt}\n[[proxies]]"), 1),
    )
    .unwrap();
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(!all.contains("which no [[agents]] entry"), "{all}");
}

/// A vault that cannot be opened is one error; the references into it add no false
/// "need a [vault] section".
#[test]
fn check_vault_error_has_no_false_follow_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vault.key"), b"garbage\n").unwrap();
    let cfg = dir.path().join("v.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[vault]\nfile = \"vault.bin\"\nkey = \"file:vault.key\"\n\
         [[proxies]]\nname = \"a\"\nupstream = \"https://127.0.0.1:9\"\ndefault_effect = \"deny\"\n\
         auth = { scheme = \"bearer\", secret = \"vault:crm\" }\n",
    )
    .unwrap();
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "{}:5: vault.key: vault key: not valid base64",
            cfg.display()
        ),
        "{err}"
    );
    // without a [vault] section the message is true, and kept
    std::fs::write(
        &cfg,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\
         [[proxies]]\nname = \"a\"\nupstream = \"https://127.0.0.1:9\"\ndefault_effect = \"deny\"\n\
         auth = { scheme = \"bearer\", secret = \"vault:crm\" }\n",
    )
    .unwrap();
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert!(
        text(&o.stderr).contains("`vault:` references need a `[vault]` section"),
        "{}",
        text(&o.stderr)
    );
}

/// Sizes: the message names the accepted forms, not serde's `untagged enum SizeOrInt`.
#[test]
fn check_size_message_names_the_forms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nmax_request_body = 1.5\n{DENY_PROXY}"
        ),
    )
    .unwrap();
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        !err.contains("SizeOrInt") && !err.contains("untagged"),
        "{err}"
    );
    assert!(
        err.contains(":4: max_request_body: ") && err.contains("\"16KiB\""),
        "{err}"
    );
}

/// Runs `portcullis run -c cfg` with `env` until it is ready, stops it with SIGTERM; its log.
fn run_until_ready(dir: &std::path::Path, cfg: &std::path::Path, env: &[(&str, &str)]) -> String {
    let err_path = dir.join("err");
    let err = std::fs::File::create(&err_path).unwrap();
    let mut c = Command::new(bin());
    c.env_remove("PORTCULLIS_LOG_FORMAT")
        .env("PORTCULLIS_LOG", "info")
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let read = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let ready = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        Some(read()).filter(|l| l.contains("portcullis ready"))
    });
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let st = poll_until(Duration::from_secs(15), Duration::from_millis(20), || {
        child.try_wait().ok().flatten()
    });
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(ready.is_some(), "not ready: {}", read());
    read()
}

/// `[log] format = "json"` in the config; `PORTCULLIS_LOG_FORMAT` wins over it; a bad value
/// is a config error.
#[test]
fn log_format_from_the_config_and_the_variable_wins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n[log]\nformat = \"json\"\n{DENY_PROXY}"
        ),
    )
    .unwrap();
    let log = run_until_ready(dir.path(), &cfg, &[]);
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(log.contains(r#""message":"portcullis ready""#), "{log}");

    let log = run_until_ready(dir.path(), &cfg, &[("PORTCULLIS_LOG_FORMAT", "text")]);
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("portcullis ready")),
        "{log}"
    );
    assert!(!log.trim_start().starts_with('{'), "{log}");

    std::fs::write(
        &cfg,
        format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\nformat = \"xml\"\n{DENY_PROXY}"),
    )
    .unwrap();
    let o = run_portcullis(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr)
            .contains(":4: log.format: unknown log format \"xml\": expected \"text\" or \"json\""),
        "{}",
        text(&o.stderr)
    );
}
