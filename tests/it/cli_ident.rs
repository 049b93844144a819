//! `portcullis vault set/list/rm/keygen` and `portcullis agent add`, end to end.
use crate::support::bin;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn vault_set_list_rm_through_the_config_section() {
    let dir = tempfile::tempdir().unwrap();
    let key = run(&["vault", "keygen"], b"", &[]);
    assert!(key.status.success());
    let key = text(&key.stdout).trim().to_string();
    assert_eq!(key.len(), 44);
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        "[vault]\nfile = \"vault.pcv\"\nkey = \"env:PORTCULLIS_VAULT_KEY\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let env = [("PORTCULLIS_VAULT_KEY", key.as_str())];

    let o = run(
        &["vault", "set", "crm-token", "-c", c],
        b"tok-SECRET\n",
        &env,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&["vault", "set", "other", "-c", c], b"x", &env);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&["vault", "set", "empty", "-c", c], b"\n", &env);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("empty"), "{}", text(&o.stderr));

    let o = run(&["vault", "list", "-c", c], b"", &env);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "crm-token\nother\n");
    assert!(!text(&o.stdout).contains("SECRET") && !text(&o.stderr).contains("SECRET"));

    let raw = std::fs::read(dir.path().join("vault.pcv")).unwrap();
    assert!(raw.starts_with(b"PCV1"));
    assert!(!raw.windows(6).any(|w| w == b"SECRET"));

    let o = run(&["vault", "rm", "other", "-c", c], b"", &env);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&["vault", "rm", "other", "-c", c], b"", &env);
    assert!(!o.status.success());
    let o = run(&["vault", "list", "-c", c], b"", &env);
    assert_eq!(text(&o.stdout), "crm-token\n");

    // Wrong key: a clear error naming the entry, non-zero exit.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let o = run(
        &["vault", "list", "-c", c],
        b"",
        &[("PORTCULLIS_VAULT_KEY", wrong)],
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("wrong vault key or corrupt vault: entry 'crm-token'"),
        "{}",
        text(&o.stderr)
    );
    // Flags instead of a config.
    let f = dir.path().join("vault.pcv");
    let o = run(
        &[
            "vault",
            "list",
            "--file",
            f.to_str().unwrap(),
            "--key-ref",
            "env:PORTCULLIS_VAULT_KEY",
        ],
        b"",
        &env,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "crm-token\n");
}

#[test]
fn agent_add_prints_key_once_and_config_lines() {
    let o = run(
        &[
            "agent",
            "add",
            "support-bot",
            "--expires",
            "2027-01-01",
            "--roles",
            "support,ops",
        ],
        b"",
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let mut lines = out.lines();
    let key = lines.next().unwrap();
    assert!(key.starts_with("pcs_") && key.len() >= 36, "{key}");
    let rest: String = lines.collect::<Vec<_>>().join("\n");
    let v: toml::Value = toml::from_str(&rest).unwrap();
    let a = &v["agents"][0];
    assert_eq!(a["id"].as_str(), Some("support-bot"));
    assert_eq!(a["expires_at"].as_str(), Some("2027-01-01T00:00:00Z"));
    assert_eq!(
        a["key_sha256"].as_str().unwrap(),
        portcullis::internals::identity::key_sha256_hex(key)
    );
    assert!(
        !rest.contains(key),
        "the key is printed once, not in the config lines"
    );
    let bad = run(&["agent", "add", "bad id"], b"", &[]);
    assert!(!bad.status.success());
}
