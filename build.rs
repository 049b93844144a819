//! Build metadata: `PORTCULLIS_COMMIT` (for `portcullis_build_info{commit}` and `--version`
//! output) is the environment variable of that name when set (packagers, CI), else
//! `git rev-parse --short=12 HEAD` of the source tree, else "unknown". No network.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_COMMIT");
    let commit = match std::env::var("PORTCULLIS_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // rebuilt when HEAD moves (a commit, a checkout), not on every build
            for p in ["HEAD", "logs/HEAD"] {
                if let Some(path) = git(&["rev-parse", "--git-path", p]) {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    // only [0-9A-Za-z._-]: it lands in a Prometheus label and a version line
    let commit: String = commit
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    println!("cargo:rustc-env=PORTCULLIS_COMMIT={commit}");
}
