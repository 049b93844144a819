//! `portcullis check`: shipped configs pass; bad configs fail with `FILE:LINE: KEY: MESSAGE`.
use crate::support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ENV: &[(&str, &str)] = &[("PORTCULLIS_ADMIN_TOKEN", "test")];

fn check(path: &Path) -> std::process::Output {
    run_portcullis(
        &["check", "-c", path.to_str().unwrap()],
        ENV,
        Duration::from_secs(20),
    )
}

fn good_config() -> String {
    // Line numbers matter for the table below.
    [
        "[server]",                                   // 1
        "listen = [\"127.0.0.1:18080\"]",             // 2
        "workers = 2",                                // 3
        "",                                           // 4
        "[limits]",                                   // 5
        "head_timeout = \"500ms\"",                   // 6
        "max_request_body = \"1MiB\"",                // 7
        "",                                           // 8
        "[[proxies]]",                                // 9
        "name = \"up\"",                              // 10
        "upstream = \"http://127.0.0.1:18081/base\"", // 11
        "default_effect = \"allow\"",                 // 12
        "",                                           // (trailing newline)
    ]
    .join("\n")
}

/// Replaces line `n` (1-based) of the good config.
fn with_line(n: usize, text: &str) -> String {
    let mut lines: Vec<String> = good_config().lines().map(str::to_string).collect();
    lines[n - 1] = text.to_string();
    lines.join("\n") + "\n"
}

/// Inserts `text` after line `n` (1-based) of the good config.
fn insert_after(n: usize, text: &str) -> String {
    let mut lines: Vec<String> = good_config().lines().map(str::to_string).collect();
    lines.insert(n, text.to_string());
    lines.join("\n") + "\n"
}

#[test]
fn check_accepts_every_shipped_config() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if !dir.exists() {
        eprintln!("no configs/ directory yet; nothing to check");
        return;
    }
    assert!(!files.is_empty(), "configs/ exists but holds no *.toml");
    let mut failures = Vec::new();
    for f in &files {
        let out = check(f);
        if out.status.code() != Some(0) {
            failures.push(format!(
                "{}: exit {:?}\nstdout: {}\nstderr: {}",
                f.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        } else if out.stdout.is_empty() && out.stderr.is_empty() {
            failures.push(format!("{}: check printed no summary", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_accepts_a_valid_config_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("good.toml");
    std::fs::write(&f, good_config()).unwrap();
    let out = check(&f);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.stdout.is_empty() || !out.stderr.is_empty(),
        "no summary printed"
    );
}

#[test]
fn relative_ca_file_resolves_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/ca.pem"), pki.ca_pem).unwrap();
    let text = good_config().replace("http://127.0.0.1:18081/base", "https://localhost:18443")
        + "ca_file = \"certs/ca.pem\"\n";
    let f = dir.path().join("tls.toml");
    std::fs::write(&f, &text).unwrap();
    let out = check(&f);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A missing ca_file is an error on its line (13).
    let text = text.replace("certs/ca.pem", "certs/missing.pem");
    std::fs::write(&f, &text).unwrap();
    let out = check(&f);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Err(e) = find_error_line(&stderr, &f, 13, Some("ca_file")) {
        panic!("{e}");
    }
}

/// Finds `FILE:LINE: KEY: MESSAGE` with this line and a KEY mentioning `key`.
fn find_error_line(
    stderr: &str,
    file: &Path,
    line: usize,
    key: Option<&str>,
) -> Result<(), String> {
    let file_s = file.display().to_string();
    let mut candidates = Vec::new();
    for l in stderr.lines() {
        let Some(rest) = l.strip_prefix(&format!("{file_s}:")) else {
            continue;
        };
        let mut parts = rest.splitn(3, ": ");
        let (Some(ln), Some(k), Some(msg)) = (parts.next(), parts.next(), parts.next()) else {
            candidates.push(l.to_string());
            continue;
        };
        if ln.parse::<usize>().ok() == Some(line)
            && key.is_none_or(|key| k.contains(key))
            && !msg.trim().is_empty()
        {
            return Ok(());
        }
        candidates.push(l.to_string());
    }
    Err(format!(
        "no `{file_s}:{line}: <key containing {key:?}>: <message>` line; FILE: lines seen: {candidates:?}\nfull stderr:\n{stderr}"
    ))
}

#[test]
fn check_reports_file_line_and_key_for_bad_configs() {
    let dup =
        good_config() + "\n[[proxies]]\nname = \"up\"\nupstream = \"http://127.0.0.1:18082\"\n";
    // good_config has 12 lines; line 13 is empty, the second [[proxies]] is line 14, its name 15.
    let table: Vec<(&str, String, usize, Option<&str>)> = vec![
        (
            "unknown_key_in_server",
            insert_after(3, "bogus = 1"),
            4,
            Some("bogus"),
        ),
        (
            "unknown_key_in_proxy",
            insert_after(12, "colour = \"red\""),
            13,
            Some("colour"),
        ),
        (
            "unknown_table",
            insert_after(8, "[limitz]\nx = 1"),
            9,
            Some("limitz"),
        ),
        (
            "bad_duration",
            with_line(6, "head_timeout = \"5 parsecs\""),
            6,
            Some("head_timeout"),
        ),
        (
            "zero_duration",
            with_line(6, "head_timeout = \"0s\""),
            6,
            Some("head_timeout"),
        ),
        (
            "bad_size",
            with_line(7, "max_request_body = \"lots\""),
            7,
            Some("max_request_body"),
        ),
        (
            "bad_size_unit",
            with_line(7, "max_request_body = \"16 parsecs\""),
            7,
            Some("max_request_body"),
        ),
        ("missing_upstream", with_line(11, ""), 9, Some("upstream")),
        (
            "ftp_upstream",
            with_line(11, "upstream = \"ftp://127.0.0.1/files\""),
            11,
            Some("upstream"),
        ),
        (
            "bad_default_effect",
            with_line(12, "default_effect = \"maybe\""),
            12,
            Some("default_effect"),
        ),
        ("duplicate_proxy_name", dup, 15, Some("name")),
        (
            "bad_underscore_headers",
            insert_after(3, "underscore_headers = \"fold\""),
            4,
            Some("server.underscore_headers"),
        ),
        (
            "bad_path_params",
            insert_after(12, "path_params = \"keep\""),
            13,
            Some("proxies[0].path_params"),
        ),
        (
            "empty_listen_list",
            with_line(2, "listen = []"),
            2,
            Some("listen"),
        ),
        (
            "bad_listen_address",
            with_line(2, "listen = [\"not an address\"]"),
            2,
            Some("listen"),
        ),
        (
            "toml_syntax_error",
            with_line(3, "workers = = 2"),
            3,
            Some("workers"),
        ),
        (
            "toml_unterminated_string",
            with_line(6, "head_timeout = \"500ms"),
            6,
            None,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (name, text, line, key) in &table {
        let f = dir.path().join(format!("{name}.toml"));
        std::fs::write(&f, text).unwrap();
        let out = check(&f);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() != Some(1) {
            failures.push(format!(
                "[{name}] exit {:?} (want 1); stderr: {stderr}",
                out.status.code()
            ));
            continue;
        }
        if stderr.contains("panicked") {
            failures.push(format!("[{name}] check panicked: {stderr}"));
            continue;
        }
        if let Err(e) = find_error_line(&stderr, &f, *line, *key) {
            failures.push(format!("[{name}] {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n\n")
    );
}

#[test]
fn check_of_a_missing_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("nope.toml");
    let out = check(&f);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("nope.toml"),
        "the error names the file: {stderr}"
    );
}

#[test]
fn run_with_a_bad_config_exits_nonzero_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, with_line(6, "head_timeout = \"5 parsecs\"")).unwrap();
    let out = run_portcullis(
        &["run", "-c", f.to_str().unwrap()],
        ENV,
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "run accepted a bad config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("head_timeout"),
        "the error names the key: {stderr}"
    );
}
