//! Command-line front-ends. No data-plane logic here.
pub mod approvals;
pub mod mcp;
use crate::identity::{self, valid_agent_id};
use crate::secrets::vault_file::{Vault, VaultKey};
pub use crate::server::control::Source;
use crate::util::datetime::{format_rfc3339, parse_rfc3339};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "Egress gateway for AI agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve. SIGHUP or `POST /v1/reload` swaps in a new config; SIGTERM drains and exits.
    Run {
        /// Config file (TOML). Without it, the embedded quickstart config is used.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate and compile a config; print a summary and warnings, or the errors and exit 1.
    Check {
        /// Config file (TOML). Without it: /etc/portcullis/portcullis.toml if it exists, else
        /// the embedded quickstart config.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Do not contact the KV server: `kv:` references are checked for syntax only (the
        /// skipped ones are listed).
        #[arg(long)]
        offline: bool,
        /// Also prove that this user (the service's, e.g. `portcullis`) can read the config's
        /// input files and write the paths the service writes (the audit directory). Needs
        /// root to switch users; an error per path that fails.
        #[arg(long, value_name = "USER")]
        as_user: Option<String>,
    },
    /// Agent identities.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The encrypted vault of target credentials.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Audit records, newest first (a table, or one JSON line per record with --json).
    Logs(LogsArgs),
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `portcullis manpage > portcullis.1`.
    Manpage,
    /// Human approvals of held calls, through a running gateway's admin API.
    Approvals {
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// MCP pinned tool definitions (rug-pull protection), through a running gateway's admin API.
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
    },
    /// The interception CA for forward-proxy mode (`[forward] ca`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create the interception CA: DIR/ca.pem (the certificate agents trust) and DIR/ca.key
    /// (mode 0600). Refuses to overwrite either.
    Init {
        /// Directory to write ca.pem and ca.key into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "portcullis interception CA")]
        name: String,
        /// Limit the CA to these DNS names (and their subdomains) or IP addresses with X.509
        /// name constraints; comma-separated. Clients that honour them refuse a leaf for
        /// anything else, so a stolen CA key cannot impersonate other sites to them.
        #[arg(long, value_delimiter = ',')]
        permit: Vec<String>,
    },
}

/// `portcullis ca init`: writes the CA and prints how to use and trust it.
pub fn ca(cmd: CaCommand) -> Result<bool> {
    match cmd {
        CaCommand::Init { out, name, permit } => {
            let (cert_path, key_path) = ca_init(&out, &name, &permit)?;
            println!(
                "wrote {} and {} (0600)",
                cert_path.display(),
                key_path.display()
            );
            println!();
            println!("in the config:");
            println!("  [forward]");
            println!(
                "  ca = {{ cert = \"file:{}\", key = \"file:{}\" }}",
                cert_path.display(),
                key_path.display()
            );
            println!();
            println!("agents trust {} (never the key):", cert_path.display());
            println!("  curl:              --cacert ca.pem, or CURL_CA_BUNDLE=ca.pem");
            println!(
                "  OpenSSL, httpx:    SSL_CERT_FILE=ca.pem (a bundle: append it to the system one)"
            );
            println!("  Python requests:   REQUESTS_CA_BUNDLE=ca.pem");
            println!("  Node.js:           NODE_EXTRA_CA_CERTS=ca.pem");
            println!(
                "  system store:      cp ca.pem /usr/local/share/ca-certificates/portcullis.crt && update-ca-certificates"
            );
            println!("then HTTPS_PROXY=http://AGENT:KEY@GATEWAY:PORT");
            Ok(true)
        }
    }
}

/// Creates `dir/ca.pem` and `dir/ca.key` (0600, created exclusively: an existing file is an
/// error, never overwritten).
pub fn ca_init(dir: &Path, name: &str, permit: &[String]) -> Result<(PathBuf, PathBuf)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            anyhow::bail!("{} exists: refusing to overwrite it", p.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert, key) = crate::net::mint::generate_ca(name, permit)
        .map_err(|e| anyhow::anyhow!("creating the CA: {e}"))?;
    let mut kf = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("creating {}", key_path.display()))?;
    kf.write_all(key.as_bytes())?;
    kf.sync_all()?;
    let mut cf = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&cert_path)
        .with_context(|| format!("creating {}", cert_path.display()))?;
    cf.write_all(cert.as_bytes())?;
    cf.sync_all()?;
    Ok((cert_path, key_path))
}

/// The installed config, which `check` without `-c` looks at first.
pub const SYSTEM_CONFIG: &str = "/etc/portcullis/portcullis.toml";

/// `portcullis completions SHELL`: the completion script on `out` (a closed pipe is an error,
/// not a panic).
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "portcullis", &mut buf);
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// `portcullis manpage`: the man page (section 1, subcommands included) on `out`.
pub fn manpage(out: &mut dyn std::io::Write) -> Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    // each subcommand's own options, as `portcullis-SUB` sections
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("portcullis {}", sub.get_name());
        let m = clap_mangen::Man::new(sub.clone().bin_name(name.clone()));
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        m.render_synopsis_section(out)?;
        m.render_description_section(out)?;
        m.render_options_section(out)?;
        m.render_subcommands_section(out)?;
    }
    writeln!(
        out,
        ".SH ENVIRONMENT\n.TP\n\\fBPORTCULLIS_LOG\\fR\nLog filter (default \\fBinfo\\fR; \\fBinfo,access=debug\\fR adds one line per call).\n\
         .TP\n\\fBPORTCULLIS_LOG_FORMAT\\fR\n\\fBjson\\fR: one JSON object per log line.\n\
         .TP\n\\fBMONOIO_FORCE_LEGACY_DRIVER\\fR\n\\fB1\\fR: epoll instead of io_uring.\n\
         .SH FILES\n.TP\n\\fI{SYSTEM_CONFIG}\\fR\nThe config \\fBcheck\\fR looks at without \\fB-c\\fR (the unit's \\fB-c\\fR).\n\
         .TP\n\\fI/var/lib/portcullis/audit\\fR\nAudit records of the packaged config.\n\
         .SH SEE ALSO\n/usr/share/doc/portcullis/ (config reference, error codes, audit format, admin API)"
    )?;
    man.render_version_section(out)?;
    Ok(())
}

/// Where the audit directory is: `--dir`, else the config's `[audit].dir`, else `./audit`.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditLocation {
    /// Config file whose `[audit].dir` names the directory (relative to the config file).
    #[arg(short, long, conflicts_with = "dir")]
    pub config: Option<PathBuf>,
    /// The audit directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Only calls of this proxy.
    #[arg(long)]
    pub proxy: Option<String>,
    /// Only calls of this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// From this time: RFC 3339 (2026-01-01T00:00:00Z), a date, or a duration ago (15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// A status (403) or a class (4xx).
    #[arg(long)]
    pub status: Option<String>,
    /// Only calls a report-mode rule would have decided differently.
    #[arg(long)]
    pub shadow: bool,
    /// MCP: only calls that named this tool (or resource URI, or prompt name).
    #[arg(long)]
    pub tool: Option<String>,
    /// MCP: only calls with this JSON-RPC method (tools/call, resources/read, ...).
    #[arg(long)]
    pub mcp_method: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = crate::observe::audit::query::DEFAULT_LIMIT)]
    pub limit: usize,
    /// One JSON object per line (the records as stored) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub at: AuditLocation,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain of the audit files; print each break as file:line and exit 1 on any.
    Verify {
        /// The audit directory (default: the `[audit].dir` of -c CONFIG, else ./audit).
        dir: Option<PathBuf>,
        /// Config file whose `[audit].dir` names the directory.
        #[arg(short, long, conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// Every checkpoint must be signed by this Ed25519 public key (a file: 64 hex digits
        /// or base64).
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// A published head (64 hex digits) that must be in the log: detects records removed
        /// from its end beyond the last checkpoint.
        #[arg(long, conflicts_with = "head_file")]
        expect_head: Option<String>,
        /// The published head file (`[audit] head_file`); its signature is checked with
        /// --pubkey.
        #[arg(long)]
        head_file: Option<PathBuf>,
    },
    /// Make an Ed25519 checkpoint signing key: prints the secret (store it in the vault and
    /// point `[audit] signing_key` at it) and the public key (for `audit verify --pubkey`).
    Keygen {
        /// Also write the public key to this file.
        #[arg(long)]
        pubkey_out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create an agent key: prints the key once, and the `[[agents]]` lines for the config.
    Add {
        /// Agent id (A-Z a-z 0-9 . _ - @ : /).
        id: String,
        /// Expiry: RFC 3339 (2027-01-01T00:00:00Z) or a date (2027-01-01, midnight UTC).
        #[arg(long)]
        expires: Option<String>,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// List the agents of a running gateway (config-file agents read-only, managed ones with
    /// created / expires / last seen / revoked), through its admin API.
    List {
        #[command(flatten)]
        target: approvals::Target,
    },
    /// Issue a managed agent through the admin API: prints its key once.
    Create {
        #[command(flatten)]
        target: approvals::Target,
        id: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Expiry: RFC 3339 (2027-01-01T00:00:00Z) or a date (2027-01-01, midnight UTC).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Give a managed agent a new key; the old one keeps working for --grace.
    Rotate {
        #[command(flatten)]
        target: approvals::Target,
        id: String,
        /// How long the old key keeps working (10m, 1h; default 0).
        #[arg(long)]
        grace: Option<String>,
    },
    /// Revoke a managed agent: every gateway refuses its keys within a second.
    Revoke {
        #[command(flatten)]
        target: approvals::Target,
        id: String,
    },
}

/// Where the vault is: the config's `[vault]` section, or explicit flags (which win).
#[derive(clap::Args, Debug, Clone)]
pub struct VaultLocation {
    /// Config file whose `[vault]` section (file, key) names the vault.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Vault file (overrides the config's `[vault].file`).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Vault key reference, `env:VAR` or `file:PATH` (overrides `[vault].key`).
    #[arg(long)]
    pub key_ref: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// Store a secret read from stdin (one trailing newline is dropped; empty is refused).
    /// Creates the vault file if it does not exist.
    Set {
        name: String,
        #[command(flatten)]
        at: VaultLocation,
    },
    /// List the secret names (never the values).
    List {
        #[command(flatten)]
        at: VaultLocation,
    },
    /// Remove a secret.
    Rm {
        name: String,
        #[command(flatten)]
        at: VaultLocation,
    },
    /// Print a new random vault key (base64, 32 bytes) for `[vault].key`.
    Keygen,
    /// Re-encrypt every secret under a new key (keeps the file's owner, group and mode). Then
    /// put the new key where `[vault].key` points and reload: `portcullis vault keygen >
    /// vault.key.new; portcullis vault rekey -c CONFIG --new-key-ref file:vault.key.new; mv
    /// vault.key.new vault.key`.
    Rekey {
        /// The new key, `env:VAR` or `file:PATH` (base64, 32 bytes: `portcullis vault keygen`).
        #[arg(long, value_name = "REF")]
        new_key_ref: String,
        #[command(flatten)]
        at: VaultLocation,
    },
}

/// The log format `[log] format` in `path` asks for: `"text"` or `"json"` (`"text"` when
/// the file cannot be read or says nothing valid; its compile reports why).
pub fn configured_log_format(path: &Path) -> &'static str {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match crate::config::log_format_of(&text) {
        Some(crate::config::LogFormat::Json) => "json",
        _ => "text",
    }
}

pub fn run(source: Source) -> Result<()> {
    crate::server::start::run(source)
}

/// What `check` checks: `-c FILE`, else the installed config if there is one, else the
/// embedded quickstart.
fn check_source(config: Option<PathBuf>) -> Source {
    match config {
        Some(p) => Source::File(p),
        None if Path::new(SYSTEM_CONFIG).exists() => Source::File(PathBuf::from(SYSTEM_CONFIG)),
        None => Source::Embedded,
    }
}

/// `portcullis check`: prints a summary of a compiled config (and its warnings), or its errors;
/// also that the paths the service writes are writable by this process's user (with
/// `--as-user`, by that user: the whole check is re-run as it).
pub fn check(config: Option<PathBuf>, offline: bool, as_user: Option<String>) -> Result<bool> {
    let source = check_source(config);
    if let Some(user) = as_user {
        return check_as_user(&source, offline, &user);
    }
    let (result, shown) = match &source {
        Source::File(path) => {
            let opts = crate::config::CompileOptions { offline };
            (
                crate::config::compile_file_with(path, opts),
                path.display().to_string(),
            )
        }
        Source::Embedded => (source.compile(), "<embedded quickstart.toml>".to_string()),
    };
    match result {
        Ok(c) => {
            let mut path_errors = Vec::new();
            if let Some(a) = &c.audit {
                if let Err(e) = probe_writable_dir(&a.dir) {
                    path_errors.push(format!("{shown}: audit.dir: {e}"));
                }
                if let Some(h) = &a.head_file
                    && let Err(e) = probe_writable_file(h)
                {
                    path_errors.push(format!("{shown}: audit.head_file: {e}"));
                }
            }
            if !path_errors.is_empty() {
                for e in &path_errors {
                    eprintln!("{e}");
                }
                return Ok(false);
            }
            let path = &shown;
            println!("{path}: ok");
            println!(
                "  listen: {}",
                c.server
                    .listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let workers = if c.server.workers == 0 {
                "one per core".to_string()
            } else {
                c.server.workers.to_string()
            };
            println!("  workers: {workers}");
            if let Some(a) = c.server.admin_listen {
                println!("  admin: {a}");
            }
            println!("  proxies: {}", c.proxies.len());
            for p in &c.proxies {
                let u = &p.upstream;
                println!(
                    "    {:<16} -> {}://{}{}  default {}",
                    p.name,
                    if u.https { "https" } else { "http" },
                    u.authority,
                    u.base_path,
                    format!("{:?}", p.default_effect).to_lowercase()
                );
                let mut parts = vec![format!("{} rule(s)", p.rules.len())];
                if let Some(sc) = &p.scanners {
                    parts.push(format!(
                        "scanners: {}",
                        sc.scanner_names().collect::<Vec<_>>().join(", ")
                    ));
                }
                if p.redact.is_some() {
                    parts.push("redaction".into());
                }
                if let Some(a) = &p.auth {
                    parts.push(format!("auth: {}", a.scheme()));
                }
                if p.meter.is_some() {
                    parts.push("meter".into());
                }
                println!("      {}", parts.join("; "));
            }
            println!(
                "  agents: {} key(s), {} JWT issuer(s){}",
                c.identity.agents.len(),
                c.identity.jwt.len(),
                if c.identity.required() {
                    ""
                } else {
                    " (calls are anonymous)"
                }
            );
            if let Some(a) = &c.audit {
                println!("  audit: {}", a.dir.display());
            }
            if !c.kv.is_empty() {
                println!("  kv secrets: {} read", c.kv.len());
            }
            if let (Some(loc), Some(_)) = (&c.state, &c.approvals) {
                let at = match loc {
                    crate::state::Location::Dir(d) => d.display().to_string(),
                    crate::state::Location::Redis { .. } => "redis".to_string(),
                };
                println!(
                    "  approvals: store {at} (a reload that adds [approvals] starts the store; \
                     changing or removing [state]/[approvals] of a running gateway takes effect \
                     on restart)"
                );
            }
            for r in &c.skipped {
                println!("skipped (offline): {r}");
            }
            for w in &c.warnings {
                println!("warning: {w}");
            }
            if let Some(w) = sandbox_warning(&source, &c) {
                println!("warning: {w}");
            }
            Ok(true)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(false)
        }
    }
}

/// The shipped unit (`ProtectSystem=strict`) lets the service write only under its state and
/// logs directories: an audit directory elsewhere, in a config under /etc/portcullis, fails
/// at start although the path itself is writable.
fn sandbox_warning(source: &Source, c: &crate::config::Compiled) -> Option<String> {
    let Source::File(p) = source else { return None };
    if !p.starts_with("/etc/portcullis") {
        return None;
    }
    let a = c.audit.as_ref()?;
    let writable = ["/var/lib/portcullis", "/var/log/portcullis"];
    let mut out = Vec::new();
    let mut paths = vec![("audit.dir", a.dir.as_path())];
    if let Some(h) = &a.head_file {
        paths.push(("audit.head_file", h.as_path()));
    }
    for (key, path) in paths {
        if !writable.iter().any(|w| path.starts_with(w)) {
            out.push(format!(
                "{key} {} is outside /var/lib/portcullis and /var/log/portcullis: the shipped \
                 unit (ProtectSystem=strict) makes it read-only; move it there, or add \
                 `ReadWritePaths={}` in `systemctl edit portcullis`",
                path.display(),
                path.display()
            ));
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

/// The directory is writable by this process (or, if it does not exist yet, can be created in
/// its nearest existing ancestor). Nothing is created.
fn probe_writable_dir(dir: &Path) -> Result<(), String> {
    use nix::unistd::{AccessFlags, access};
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!(
            "{} exists and is not a directory: point the key at a directory (or remove the file)",
            dir.display()
        )),
        Ok(_) => access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
            format!(
                "{} is not writable by {}: {} (chown it to the service user, or pick a directory \
                 under /var/lib/portcullis)",
                dir.display(),
                whoami(),
                e.desc()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut up = dir.parent();
            while let Some(p) = up {
                let p = if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                };
                if p.exists() {
                    return probe_writable_dir(p).map_err(|e| {
                        format!(
                            "{} does not exist and cannot be created: {e}",
                            dir.display()
                        )
                    });
                }
                up = p.parent();
            }
            Ok(())
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// The file is writable (or creatable in its directory) by this process.
fn probe_writable_file(file: &Path) -> Result<(), String> {
    use nix::unistd::{AccessFlags, access};
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => Err(format!("{} is a directory, not a file", file.display())),
        Ok(_) => access(file, AccessFlags::W_OK).map_err(|e| {
            format!(
                "{} is not writable by {}: {}",
                file.display(),
                whoami(),
                e.desc()
            )
        }),
        Err(_) => match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_writable_dir(p),
            _ => probe_writable_dir(Path::new(".")),
        },
    }
}

/// The effective user's name (or uid), for messages.
fn whoami() -> String {
    let uid = nix::unistd::Uid::effective();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("user {}", u.name),
        _ => format!("uid {uid}"),
    }
}

/// `check --as-user USER`: the same check, run by USER (its uid and primary group, as the
/// service runs), so every file the config reads and every path it writes is tried with
/// that user's rights.
fn check_as_user(source: &Source, offline: bool, user: &str) -> Result<bool> {
    use std::os::unix::process::CommandExt;
    let u = nix::unistd::User::from_name(user)
        .with_context(|| format!("--as-user {user}: looking up the user"))?
        .with_context(|| format!("--as-user {user}: no such user"))?;
    let me = nix::unistd::Uid::effective();
    let exe = std::env::current_exe().context("--as-user: finding this program")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("check");
    if let Source::File(p) = source {
        // the child may start elsewhere: give it an absolute path
        let p = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        cmd.arg("-c").arg(p);
    }
    if offline {
        cmd.arg("--offline");
    }
    if me != u.uid {
        if !me.is_root() {
            bail!("--as-user {user}: switching to another user needs root (run it with sudo)");
        }
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    eprintln!("checking as user {user} (uid {}, gid {})", u.uid, u.gid);
    let status = cmd
        .status()
        .with_context(|| format!("--as-user {user}: running the check as {user}"))?;
    Ok(status.success())
}

/// `portcullis agent add`: prints the key (stdout, first line) and the config lines.
pub fn agent(cmd: AgentCommand) -> Result<bool> {
    match cmd {
        AgentCommand::Add { id, expires, roles } => {
            let (key, toml) = agent_add(&id, expires.as_deref(), &roles)?;
            println!("{}", &*key);
            println!();
            print!("{toml}");
            eprintln!(
                "The key on the first line is shown only once: hand it to the agent now. \
                 Add the [[agents]] lines to the config (it stores only the key's SHA-256)."
            );
            Ok(true)
        }
        AgentCommand::List { target } => approvals::call(&target, "GET", "/v1/agents", b""),
        AgentCommand::Create {
            target,
            id,
            roles,
            expires,
        } => {
            let expires_at = match expires {
                None => None,
                Some(e) => Some(format_rfc3339(parse_rfc3339(&e).with_context(|| {
                    format!("--expires '{e}': expected 2027-01-01 or 2027-01-01T00:00:00Z")
                })?)),
            };
            let roles: Vec<&str> = roles
                .iter()
                .map(|r| r.trim())
                .filter(|r| !r.is_empty())
                .collect();
            let body = serde_json::json!({"id": id, "roles": roles, "expires_at": expires_at});
            approvals::call(&target, "POST", "/v1/agents", body.to_string().as_bytes())
        }
        AgentCommand::Rotate { target, id, grace } => {
            let body = match grace {
                Some(g) => serde_json::json!({ "grace": g }),
                None => serde_json::json!({}),
            };
            approvals::call(
                &target,
                "POST",
                &format!("/v1/agents/{}/rotate", agent_path_id(&id)?),
                body.to_string().as_bytes(),
            )
        }
        AgentCommand::Revoke { target, id } => approvals::call(
            &target,
            "DELETE",
            &format!("/v1/agents/{}", agent_path_id(&id)?),
            b"",
        ),
    }
}

/// A managed agent id as it goes into the API's path (no `/`).
fn agent_path_id(id: &str) -> Result<&str> {
    if !valid_agent_id(id) || id.contains('/') {
        bail!("{id:?} is not a managed agent id (1-128 characters of A-Z a-z 0-9 . _ - @ :)");
    }
    Ok(id)
}

/// A new key and the `[[agents]]` TOML for it.
pub fn agent_add(
    id: &str,
    expires: Option<&str>,
    roles: &[String],
) -> Result<(Zeroizing<String>, String)> {
    if !valid_agent_id(id) {
        bail!("agent id must be 1-128 characters of A-Z a-z 0-9 . _ - @ : /");
    }
    let expires_at = match expires {
        None => None,
        Some(e) => Some(format_rfc3339(parse_rfc3339(e).with_context(|| {
            format!("--expires '{e}': expected 2027-01-01 or 2027-01-01T00:00:00Z")
        })?)),
    };
    let roles: Vec<&str> = roles
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .collect();
    for r in &roles {
        if r.len() > 128 || r.chars().any(char::is_whitespace) {
            bail!("role '{r}': a role is 1-128 characters without whitespace");
        }
    }
    let key = Zeroizing::new(identity::generate_key());
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut t = String::from("[[agents]]\n");
    t.push_str(&format!("id = {}\n", q(id)));
    t.push_str(&format!(
        "key_sha256 = \"{}\"\n",
        identity::key_sha256_hex(&key)
    ));
    t.push_str(&format!(
        "roles = [{}]\n",
        roles.iter().copied().map(q).collect::<Vec<_>>().join(", ")
    ));
    if let Some(e) = expires_at {
        t.push_str(&format!("expires_at = \"{e}\"\n"));
    }
    Ok((key, t))
}

#[derive(serde::Deserialize)]
struct AuditOnlyConfig {
    audit: Option<AuditSection>,
}

#[derive(serde::Deserialize)]
struct AuditSection {
    dir: String,
}

/// The audit directory: `dir` if given, else the config's `[audit].dir` (relative to the config
/// file; only that table is read), else `./audit`.
pub fn audit_dir(config: Option<&Path>, dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    let Some(c) = config else {
        return Ok(PathBuf::from("audit"));
    };
    let text = std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?;
    let v: AuditOnlyConfig =
        toml::from_str(&text).with_context(|| format!("{}: [audit]", c.display()))?;
    let Some(a) = v.audit else {
        bail!("{} has no [audit] section", c.display());
    };
    let base = c
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(base.join(a.dir))
}

/// `portcullis audit verify`: a summary, or every break as `file:line: kind` and `false`.
pub fn audit(cmd: AuditCommand) -> Result<bool> {
    let (dir, config, pubkey, expect_head, head_file) = match cmd {
        AuditCommand::Keygen { pubkey_out } => {
            let (secret, public) =
                crate::observe::audit::sign::generate().map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "secret key (store it, e.g. `portcullis vault set audit-signing`): {}",
                *secret
            );
            println!("public key: {public}");
            if let Some(p) = pubkey_out {
                std::fs::write(&p, format!("{public}\n"))
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            return Ok(true);
        }
        AuditCommand::Verify {
            dir,
            config,
            pubkey,
            expect_head,
            head_file,
        } => (dir, config, pubkey, expect_head, head_file),
    };
    let dir = audit_dir(config.as_deref(), dir.as_deref())?;
    if !dir.is_dir() {
        bail!("{}: no such audit directory", dir.display());
    }
    let mut opts = crate::observe::audit::VerifyOptions::default();
    if let Some(p) = &pubkey {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        opts.pubkey = Some(
            crate::observe::audit::sign::parse_public_key(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        );
    }
    if let Some(h) = &expect_head {
        opts.expect_head = Some(
            crate::util::hex::decode32(h.trim().as_bytes())
                .with_context(|| format!("--expect-head '{h}': expected 64 hex digits"))?,
        );
    }
    if let Some(p) = &head_file {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        opts.expect_head = Some(
            crate::observe::audit::verify::read_head(&text, opts.pubkey.as_ref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        );
    }
    match crate::observe::audit::verify_dir_with(&dir, &opts) {
        Ok(r) => {
            println!("{}: ok", dir.display());
            println!(
                "  files: {}  records: {}  gaps: {} ({} records dropped)",
                r.files, r.records, r.gaps, r.dropped
            );
            println!("  head: {}", r.head);
            if r.checkpoints > 0 {
                println!(
                    "  checkpoints: {} ({} signed{}){}",
                    r.checkpoints,
                    r.signed_checkpoints,
                    if opts.pubkey.is_some() {
                        " by the given key"
                    } else {
                        ""
                    },
                    match &r.last_checkpoint {
                        Some(h) => format!(", last {h}, {} record(s) after it", r.after_checkpoint),
                        None => String::new(),
                    }
                );
            }
            if let Some(n) = r.after_head {
                println!("  expected head found; {n} record(s) after it");
            }
            if let Some(f) = &r.anchored {
                println!("  starts at a retention anchor: {f}");
            }
            for g in &r.gap_list {
                println!("  gap: {g}");
            }
            for w in &r.warnings {
                println!("warning: {w}");
            }
            Ok(true)
        }
        Err(crate::observe::audit::VerifyError::Broken {
            breaks,
            count,
            report,
        }) => {
            for b in &breaks {
                println!("{b}");
            }
            if count > breaks.len() {
                println!("... and {} more", count - breaks.len());
            }
            for w in &report.warnings {
                println!("warning: {w}");
            }
            eprintln!(
                "{}: {count} break(s) in the audit chain ({} files, {} records)",
                dir.display(),
                report.files,
                report.records
            );
            Ok(false)
        }
        Err(e @ crate::observe::audit::VerifyError::Io { .. }) => Err(e.into()),
    }
}

/// `portcullis logs`.
pub fn logs(a: LogsArgs) -> Result<bool> {
    let dir = audit_dir(a.at.config.as_deref(), a.at.dir.as_deref())?;
    if !dir.is_dir() {
        bail!("{}: no such audit directory", dir.display());
    }
    let now = u64::try_from(crate::util::clock::unix_now().as_micros()).unwrap_or(u64::MAX);
    let time = |flag: &str, v: &Option<String>| -> Result<Option<u64>> {
        v.as_deref()
            .map(|s| {
                crate::observe::audit::query::parse_time_arg(s, now).with_context(|| {
                    format!("--{flag} '{s}': expected RFC 3339, a date, or a duration ago (15m)")
                })
            })
            .transpose()
    };
    let q = crate::observe::audit::Query {
        proxy: a.proxy,
        agent: a.agent,
        status: a
            .status
            .as_deref()
            .map(|s| {
                crate::observe::audit::StatusFilter::parse(s)
                    .with_context(|| format!("--status '{s}': expected 403 or 4xx"))
            })
            .transpose()?,
        decision: None,
        since: time("since", &a.since)?,
        until: time("until", &a.until)?,
        shadow: a.shadow,
        tool: a.tool,
        mcp_method: a.mcp_method,
        limit: a.limit,
    };
    let res = crate::observe::audit::query(&dir, &q)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    use std::io::Write as _;
    if a.json {
        for r in &res.records {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
    } else {
        out.write_all(logs_table(&res.records).as_bytes())?;
    }
    out.flush()?;
    if res.malformed > 0 {
        eprintln!(
            "warning: {} unreadable line(s) skipped; run `portcullis audit verify`",
            res.malformed
        );
    }
    Ok(true)
}

/// The human table of `portcullis logs`.
pub fn logs_table(records: &[crate::observe::audit::StoredRecord]) -> String {
    const HEAD: [&str; 10] = [
        "TS", "ID", "AGENT", "PROXY", "METHOD", "PATH", "STATUS", "DECISION", "CODE", "TOTAL_US",
    ];
    let clean = |s: Option<&str>| -> String {
        match s {
            None | Some("") => "-".into(),
            Some(s) => s
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        }
    };
    let num = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let rows: Vec<[String; 10]> = records
        .iter()
        .map(|r| {
            [
                clean(Some(&r.ts)),
                clean(r.id.as_deref()),
                clean(r.agent.as_deref()),
                clean(r.proxy.as_deref()),
                clean(r.method.as_deref()),
                clean(r.path.as_deref()),
                num(r.status.map(u64::from)),
                clean(r.decision.as_deref()),
                clean(r.code.as_deref()),
                num(r.total_us),
            ]
        })
        .collect();
    let mut w = HEAD.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.extend(std::iter::repeat_n(' ', w[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&HEAD);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[derive(serde::Deserialize)]
struct VaultOnlyConfig {
    vault: Option<VaultSection>,
}

#[derive(serde::Deserialize)]
struct VaultSection {
    file: String,
    key: String,
}

/// Resolves the vault file and key: flags first, then the config's `[vault]` section (paths
/// relative to the config file). Only that table is read, not the whole config.
pub fn vault_location(at: &VaultLocation) -> Result<(PathBuf, VaultKey)> {
    let mut section: Option<VaultSection> = None;
    let mut base = PathBuf::from(".");
    if let Some(c) = &at.config {
        let text =
            std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?;
        let v: VaultOnlyConfig =
            toml::from_str(&text).with_context(|| format!("{}: [vault]", c.display()))?;
        section = v.vault;
        if let Some(p) = c.parent().filter(|p| !p.as_os_str().is_empty()) {
            base = p.to_path_buf();
        }
    }
    let file = match (&at.file, &section) {
        (Some(f), _) => f.clone(),
        (None, Some(s)) => base.join(&s.file),
        (None, None) => {
            bail!("no vault: give -c CONFIG (with a [vault] section) or --file and --key-ref")
        }
    };
    let key_ref = match (&at.key_ref, &section) {
        (Some(k), _) => k.clone(),
        (None, Some(s)) => s.key.clone(),
        (None, None) => bail!("no vault key: give --key-ref env:VAR|file:PATH or -c CONFIG"),
    };
    let key_base = if at.key_ref.is_some() {
        Path::new(".")
    } else {
        base.as_path()
    };
    let key = VaultKey::from_reference(&key_ref, key_base)?;
    Ok((file, key))
}

/// Strips one trailing newline (LF or CRLF).
pub fn strip_one_newline(v: &mut Vec<u8>) {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
}

/// `portcullis vault ...`.
pub fn vault(cmd: VaultCommand) -> Result<bool> {
    match cmd {
        VaultCommand::Keygen => {
            println!("{}", &*VaultKey::generate_base64()?);
            Ok(true)
        }
        VaultCommand::Set { name, at } => {
            if !crate::secrets::vault_file::valid_name(&name) {
                bail!("bad secret name '{name}': use 1-128 characters of A-Z a-z 0-9 . _ -");
            }
            let (file, key) = vault_location(&at)?;
            let mut v = Vault::open_or_create(&file, &key)?;
            let stdin = std::io::stdin();
            let mut buf = Zeroizing::new(Vec::new());
            if stdin.is_terminal() {
                // typed: not echoed, asked twice
                let first = Zeroizing::new(
                    rpassword::prompt_password(format!("secret for '{name}' (not echoed): "))
                        .context("reading the secret from the terminal")?,
                );
                let again = Zeroizing::new(
                    rpassword::prompt_password("again: ")
                        .context("reading the secret from the terminal")?,
                );
                if *first != *again {
                    bail!("the two entries differ: nothing stored");
                }
                buf.extend_from_slice(first.as_bytes());
            } else {
                stdin
                    .lock()
                    .read_to_end(&mut buf)
                    .context("reading the secret from stdin")?;
                strip_one_newline(&mut buf);
            }
            if buf.is_empty() {
                bail!("refusing to store an empty secret (nothing on stdin)");
            }
            let existed = v.contains(&name);
            v.set(&name, &buf)?;
            v.save()?;
            eprintln!(
                "{} '{name}' in {}",
                if existed { "replaced" } else { "stored" },
                file.display()
            );
            Ok(true)
        }
        VaultCommand::List { at } => {
            let (file, key) = vault_location(&at)?;
            let v = Vault::open(&file, &key)?;
            if let Some(m) = v.loose_permissions() {
                eprintln!(
                    "warning: {} has mode {m:o}; it should be 600",
                    file.display()
                );
            }
            for n in v.names() {
                println!("{n}");
            }
            Ok(true)
        }
        VaultCommand::Rekey { new_key_ref, at } => {
            let (file, key) = vault_location(&at)?;
            let new_key = VaultKey::from_reference(&new_key_ref, Path::new("."))
                .with_context(|| format!("--new-key-ref {new_key_ref}"))?;
            let mut v = Vault::open(&file, &key)?;
            v.rekey(&new_key)?;
            v.save()?;
            // prove the file opens under the new key before telling the operator to swap keys
            let n = Vault::open(&file, &new_key)?.len();
            eprintln!(
                "re-encrypted {n} secret(s) in {} under the new key: now put the new key where \
                 [vault].key points, and reload (until then a reload or restart cannot open the vault)",
                file.display()
            );
            Ok(true)
        }
        VaultCommand::Rm { name, at } => {
            let (file, key) = vault_location(&at)?;
            let mut v = Vault::open(&file, &key)?;
            if !v.remove(&name) {
                eprintln!("no secret named '{name}' in {}", file.display());
                return Ok(false);
            }
            v.save()?;
            eprintln!("removed '{name}' from {}", file.display());
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_add_prints_matching_hash_and_toml() {
        let (key, toml_text) = agent_add(
            "support-bot",
            Some("2027-01-01"),
            &["support".into(), " ops ".into()],
        )
        .unwrap();
        assert!(key.starts_with("pcs_"));
        let parsed: toml::Value = toml::from_str(&toml_text).unwrap();
        let a = &parsed["agents"][0];
        assert_eq!(a["id"].as_str(), Some("support-bot"));
        assert_eq!(
            a["key_sha256"].as_str(),
            Some(identity::key_sha256_hex(&key).as_str())
        );
        assert_eq!(a["expires_at"].as_str(), Some("2027-01-01T00:00:00Z"));
        assert_eq!(a["roles"].as_array().unwrap().len(), 2);
        let raw: crate::identity::RawAgent = a.clone().try_into().unwrap();
        let t = crate::identity::AgentTable::compile(&[raw]).unwrap();
        assert_eq!(t.authenticate(key.as_bytes(), 0).unwrap().id, "support-bot");
        assert!(agent_add("bad id", None, &[]).is_err());
        assert!(agent_add("a", Some("tomorrow"), &[]).is_err());
        assert!(agent_add("a", None, &["has space".into()]).is_err());
    }

    #[test]
    fn vault_location_from_config_section_or_flags() {
        let dir = tempfile::tempdir().unwrap();
        let k = VaultKey::generate_base64().unwrap();
        std::fs::write(dir.path().join("vault.key"), &*k).unwrap();
        let cfg = dir.path().join("portcullis.toml");
        std::fs::write(
            &cfg,
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[vault]\nfile = \"vault.pcv\"\nkey = \"file:vault.key\"\n",
        )
        .unwrap();
        let at = VaultLocation {
            config: Some(cfg.clone()),
            file: None,
            key_ref: None,
        };
        let (file, key) = vault_location(&at).unwrap();
        assert_eq!(file, dir.path().join("vault.pcv"));
        let mut v = Vault::open_or_create(&file, &key).unwrap();
        v.set("x", b"1").unwrap();
        v.save().unwrap();
        let other = dir.path().join("other.pcv");
        let at = VaultLocation {
            config: Some(cfg),
            file: Some(other.clone()),
            key_ref: None,
        };
        assert_eq!(vault_location(&at).unwrap().0, other);
        let none = VaultLocation {
            config: None,
            file: None,
            key_ref: None,
        };
        assert!(vault_location(&none).is_err());
        let mut b = b"tok\r\n".to_vec();
        strip_one_newline(&mut b);
        assert_eq!(b, b"tok");
        let mut b = b"tok\n\n".to_vec();
        strip_one_newline(&mut b);
        assert_eq!(b, b"tok\n");
    }
}
