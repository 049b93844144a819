//! `portcullis approvals list|show|approve|deny` (and `agent list|create|rotate|revoke`, whose
//! requests go through [`call`]) against the admin API of a running gateway
//! (`--admin http://127.0.0.1:9901`, `--key env:VAR` | `file:PATH`: a named admin key as a
//! reference, never on the command line). Prints the API's JSON answer; exit 1 on an error.
use crate::net::fetch;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Target {
    /// The admin listener's URL.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// The admin key as a reference: env:VAR or file:PATH.
    #[arg(long)]
    pub key: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Approvals, newest first.
    List {
        #[command(flatten)]
        target: Target,
        /// pending | approved | denied | expired
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One approval: the request as held (headers without credentials, body).
    Show {
        #[command(flatten)]
        target: Target,
        id: String,
    },
    /// Approve: the held call (or the agent's identical retry) executes once.
    Approve {
        #[command(flatten)]
        target: Target,
        id: String,
        #[arg(long)]
        reason: Option<String>,
        /// The current TOTP code, for identities with a totp_secret.
        #[arg(long)]
        totp: Option<String>,
    },
    /// Deny: the held call gets 403 approval_denied.
    Deny {
        #[command(flatten)]
        target: Target,
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        totp: Option<String>,
    },
}

fn valid_id(id: &str) -> Result<&str> {
    let ok = id
        .strip_prefix("apr_")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        bail!("{id:?} is not an approval id (apr_ and 24 hex digits)");
    }
    Ok(id)
}

pub fn call(t: &Target, method: &str, path: &str, body: &[u8]) -> Result<bool> {
    if !(t.key.starts_with("env:") || t.key.starts_with("file:")) {
        bail!("--key: give the admin key as env:VAR or file:PATH, not the key itself");
    }
    let key = crate::secrets::resolve_with(&t.key, Path::new("."), None)
        .map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let key = std::str::from_utf8(key.expose())
        .context("--key: the key is not UTF-8")?
        .trim()
        .to_string();
    let url = crate::net::url::Url::parse(&format!("{}{path}", t.admin.trim_end_matches('/')))
        .map_err(|e| anyhow::anyhow!("--admin: {e}"))?;
    let auth = zeroize::Zeroizing::new(format!("Bearer {key}"));
    let timeouts = fetch::Timeouts {
        connect: Duration::from_secs(5),
        io: Duration::from_secs(10),
        total: Duration::from_secs(15),
    };
    let resp = fetch::request(
        &url,
        None,
        method,
        &[
            ("Authorization", auth.as_bytes()),
            ("Content-Type", b"application/json"),
        ],
        body,
        &timeouts,
    )
    .with_context(|| format!("{method} {}", t.admin))?;
    let text = String::from_utf8_lossy(&resp.body);
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.into_owned());
    if (200..300).contains(&resp.status) {
        println!("{pretty}");
        Ok(true)
    } else {
        eprintln!("HTTP {}: {pretty}", resp.status);
        Ok(false)
    }
}

pub fn run(cmd: ApprovalsCommand) -> Result<bool> {
    match cmd {
        ApprovalsCommand::List {
            target,
            status,
            limit,
        } => {
            let mut q = format!("/v1/approvals?limit={limit}");
            if let Some(s) = status {
                if !["pending", "approved", "denied", "expired"].contains(&s.as_str()) {
                    bail!("--status: expected pending, approved, denied or expired");
                }
                q.push_str(&format!("&status={s}"));
            }
            call(&target, "GET", &q, b"")
        }
        ApprovalsCommand::Show { target, id } => call(
            &target,
            "GET",
            &format!("/v1/approvals/{}", valid_id(&id)?),
            b"",
        ),
        ApprovalsCommand::Approve {
            target,
            id,
            reason,
            totp,
        } => decide(&target, &id, "approve", reason, totp),
        ApprovalsCommand::Deny {
            target,
            id,
            reason,
            totp,
        } => decide(&target, &id, "deny", reason, totp),
    }
}

fn decide(
    t: &Target,
    id: &str,
    verb: &str,
    reason: Option<String>,
    totp: Option<String>,
) -> Result<bool> {
    let mut body = serde_json::Map::new();
    if let Some(r) = reason {
        body.insert("reason".into(), r.into());
    }
    if let Some(c) = totp {
        body.insert("totp".into(), c.into());
    }
    let body = serde_json::Value::Object(body).to_string();
    call(
        t,
        "POST",
        &format!("/v1/approvals/{}/{verb}", valid_id(id)?),
        body.as_bytes(),
    )
}
