//! raw TOML → `Compiled`. `check`, `run` and reload share this one function; every error names
//! the file, the line and the key (`file:line: key: message`), and all errors found are reported
//! at once rather than the first only.
use super::raw::{RawConfig, RawProxy, SizeOrInt};
use super::{Compiled, Effect, Identity, Limits, Proxy, Server, TlsTarget, Upstream};
use crate::http::canon;
use crate::secrets;
use crate::util::units::{parse_duration, parse_size};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 && self.key == "-" {
            // about the file as a whole (it cannot be read): no line, no key
            return write!(f, "{}: {}", self.file, self.message);
        }
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.key, self.message
        )
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// How to compile.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileOptions {
    /// Do not contact the KV server: `kv:` references are checked for syntax only and listed
    /// in `Compiled::skipped` (`check --offline`). A config compiled so must not serve.
    pub offline: bool,
}

/// Reads and compiles a config file.
pub fn compile_file(path: &Path) -> Result<Compiled, ConfigErrors> {
    compile_file_with(path, CompileOptions::default())
}

/// Reads and compiles a config file with `opts`.
pub fn compile_file_with(path: &Path, opts: CompileOptions) -> Result<Compiled, ConfigErrors> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: display.clone(),
            line: 0,
            key: "-".into(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    compile_str_with(&display, &text, &base, opts)
}

/// Compiles config text. `name` is used in error messages, `base_dir` resolves relative paths.
pub fn compile_str(name: &str, text: &str, base_dir: &Path) -> Result<Compiled, ConfigErrors> {
    compile_str_with(name, text, base_dir, CompileOptions::default())
}

fn compile_str_with(
    name: &str,
    text: &str,
    base_dir: &Path,
    opts: CompileOptions,
) -> Result<Compiled, ConfigErrors> {
    let mut cx = Cx {
        opts,
        kv: None,
        kv_bindings: Vec::new(),
        skipped: Vec::new(),
        file: name,
        text,
        errors: Vec::new(),
        base_dir,
        vault: None,
        proxy_warnings: Vec::new(),
        principals: None,
        warnings: Vec::new(),
        cluster: None,
        budget_remote: None,
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => return Err(ConfigErrors(vec![cx.toml_error(&e)])),
    };
    let compiled = cx.compile(raw);
    if cx.errors.is_empty()
        && let Some(c) = compiled
    {
        return Ok(c);
    }
    drop_follow_on_errors(&mut cx.errors);
    cx.errors.sort_by_key(|e| e.line);
    Err(ConfigErrors(cx.errors))
}

/// A `[vault]` (or `[secrets.kv]`) that failed to open already has its error: the references
/// into it then fail too, and "need a `[vault]` section" would be false (there is one).
fn drop_follow_on_errors(errors: &mut Vec<ConfigError>) {
    let vault_msg = secrets::SecretRefError::VaultUnavailable.to_string();
    let kv_msg = secrets::SecretRefError::KvUnavailable.to_string();
    let vault_failed = errors.iter().any(|e| e.key.starts_with("vault."));
    let kv_failed = errors.iter().any(|e| e.key.starts_with("secrets.kv"));
    errors.retain(|e| {
        !(vault_failed && e.message.ends_with(&vault_msg)
            || kv_failed && e.message.ends_with(&kv_msg))
    });
}

pub mod approvals;
mod forward;

struct Cx<'a> {
    opts: CompileOptions,
    /// The `[secrets.kv]` client, for `kv:` references.
    kv: Option<Arc<crate::secrets::kv::KvClient>>,
    kv_bindings: Vec<(
        Arc<crate::secrets::kv::KvEntry>,
        Arc<crate::secrets::kv::KvClient>,
    )>,
    /// `kv:` references not looked up (offline).
    skipped: Vec<String>,
    file: &'a str,
    text: &'a str,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
    /// The opened `[vault]`, for `vault:NAME` references.
    vault: Option<crate::secrets::vault_file::Vault>,
    /// Findings of proxy compilation, merged into `Compiled::warnings`.
    proxy_warnings: Vec<String>,
    /// Agent ids and roles of `[[agents]]`, when they are all the callers there can be (no
    /// `[[jwt]]`): rules naming others are reported.
    principals: Option<(HashSet<String>, HashSet<String>)>,
    /// Non-fatal findings (e.g. an https JWKS that could not be fetched).
    warnings: Vec<String>,
    /// `[meters]`: the cluster backend every proxy meter uses.
    cluster: Option<Arc<crate::policy::meter::cluster::Cluster>>,
    /// `[meters]`: the Redis the budgets share.
    budget_remote: Option<Arc<crate::policy::budget_cluster::Remote>>,
}

impl Cx<'_> {
    fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + memchr::memchr_iter(b'\n', &self.text.as_bytes()[..end]).count()
    }

    fn push_error(&mut self, offset: usize, key: String, message: String) {
        let line = self.line_at(offset);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            key,
            message,
        });
    }

    /// Errors a sub-compiler reported against entries of a TOML array (`("rules[2].path",
    /// message)` for `list = "rules"`), placed on the line of the entry they name and keyed
    /// with `key_prefix` (e.g. `proxies[0].`).
    fn list_errors<T>(
        &mut self,
        errs: Vec<(String, String)>,
        list: &str,
        items: &[Spanned<T>],
        key_prefix: &str,
    ) {
        for (key, msg) in errs {
            let span = key
                .strip_prefix(list)
                .and_then(|rest| rest.strip_prefix('['))
                .and_then(|rest| rest[..rest.find(']')?].parse::<usize>().ok())
                .and_then(|j| items.get(j))
                .map(|r| r.span().start)
                .unwrap_or(0);
            self.push_error(span, format!("{key_prefix}{key}"), msg);
        }
    }

    fn err<T>(&mut self, spanned: &Spanned<T>, key: impl Into<String>, msg: impl Into<String>) {
        let line = self.line_at(spanned.span().start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            key: key.into(),
            message: msg.into(),
        });
    }

    /// Turns a TOML/serde error into `file:line: key: message`, finding the key from the message
    /// (missing/unknown field) or from the text of the offending line.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let line = self.line_at(offset);
        let msg = e.message().trim().to_string();
        let line_text = self.text.lines().nth(line.saturating_sub(1)).unwrap_or("");
        let quoted = |prefix: &str| -> Option<String> {
            let rest = &msg[msg.find(prefix)? + prefix.len()..];
            let end = rest.find('`')?;
            Some(rest[..end].to_string())
        };
        let key = quoted("missing field `")
            .or_else(|| quoted("unknown field `"))
            .or_else(|| {
                line_text
                    .split_once('=')
                    .map(|(k, _)| k.trim().to_string())
                    .filter(|k| !k.is_empty() && !k.starts_with('['))
            })
            .or_else(|| {
                let t = line_text.trim();
                (!t.is_empty()).then(|| t.chars().take(60).collect())
            })
            .unwrap_or_else(|| "-".into());
        let message = msg.lines().next().unwrap_or("invalid TOML").to_string();
        ConfigError {
            file: self.file.to_string(),
            line,
            key,
            message,
        }
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if d.is_zero() => {
                    self.err(s, key, "must be greater than zero");
                    default
                }
                Ok(d) => d,
                Err(m) => {
                    self.err(s, key, m);
                    default
                }
            },
        }
    }

    fn size(&mut self, v: &Option<Spanned<SizeOrInt>>, key: &str, default: u64) -> u64 {
        let Some(s) = v else { return default };
        let parsed = match s.get_ref() {
            SizeOrInt::Int(n) if *n > 0 => Ok(*n as u64),
            SizeOrInt::Int(_) => Err("must be greater than zero".to_string()),
            SizeOrInt::Text(t) => parse_size(t),
        };
        match parsed {
            Ok(0) => {
                self.err(s, key, "must be greater than zero");
                default
            }
            Ok(n) => n,
            Err(m) => {
                self.err(s, key, m);
                default
            }
        }
    }

    fn socket_addr(&mut self, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    v,
                    key,
                    format!("{:?} is not an IP:port address", v.get_ref()),
                );
                None
            }
        }
    }

    /// Opens `[vault]` (every entry is decrypted now, so a wrong key fails the config, not a
    /// request).
    fn open_vault(&mut self, raw: &RawConfig) {
        let Some(v) = &raw.vault else { return };
        let v = v.get_ref();
        let key = match crate::secrets::vault_file::VaultKey::from_reference(
            v.key.get_ref(),
            self.base_dir,
        ) {
            Ok(k) => k,
            Err(e) => {
                self.err(&v.key, "vault.key", e.to_string());
                return;
            }
        };
        let path = self.base_dir.join(v.file.get_ref());
        match crate::secrets::vault_file::Vault::open(&path, &key) {
            Ok(vault) => self.vault = Some(vault),
            Err(e) => self.err(&v.file, "vault.file", e.to_string()),
        }
    }

    /// `check` findings: rules naming an agent or a role no `[[agents]]` entry has (only
    /// when there is no `[[jwt]]`, whose tokens may carry any id or role). Such a rule never
    /// matches that name: a typo, or an agent not added yet.
    fn unknown_principals(&mut self, i: usize, name: &str, p: &RawProxy) {
        let Some((ids, roles)) = &self.principals else {
            return;
        };
        let mut found = Vec::new();
        for (j, r) in p.rules.iter().enumerate() {
            let rule = r.get_ref();
            for a in rule.agents.iter().flatten().filter(|a| !ids.contains(*a)) {
                found.push((r.span().start, j, format!(
                    "names agent {a:?}, which no [[agents]] entry has: it never matches; fix the \
                     name, or add the agent (`portcullis agent add {a}`)"
                )));
            }
            for role in rule.roles.iter().flatten().filter(|x| !roles.contains(*x)) {
                found.push((r.span().start, j, format!(
                    "names role {role:?}, which no [[agents]] entry holds: it never matches; fix \
                     the name, or give an agent the role (`roles = [\"{role}\"]`)"
                )));
            }
        }
        for (at, j, msg) in found {
            let line = self.line_at(at);
            self.proxy_warnings.push(format!(
                "{}:{line}: proxies[{i}].rules[{j}] ({name}): {msg}",
                self.file
            ));
        }
    }

    /// Resolves a secret reference (`env:`, `file:`, `vault:`) once; a `kv:` reference gives
    /// its current value (`what` names the key for `check --offline`'s list).
    fn secret(
        &mut self,
        reference: &str,
        what: &str,
    ) -> Result<crate::secrets::Secret, secrets::SecretRefError> {
        match self.resolve(reference, what)? {
            crate::credentials::Resolved::Fixed(s) => Ok(s),
            crate::credentials::Resolved::Kv(e) => e.snapshot().ok_or_else(|| {
                secrets::SecretRefError::Kv(format!("{reference}: no current value"))
            }),
        }
    }

    /// Resolves a secret reference; `kv:` references become store entries (read now unless
    /// the store already holds a servable value), or placeholders when offline.
    fn resolve(
        &mut self,
        reference: &str,
        what: &str,
    ) -> Result<crate::credentials::Resolved, secrets::SecretRefError> {
        use crate::credentials::Resolved;
        let kref = match secrets::SecretRef::parse(reference)? {
            secrets::SecretRef::Kv(k) => k,
            _ => {
                return secrets::resolve_with(reference, self.base_dir, self.vault.as_ref())
                    .map(Resolved::Fixed);
            }
        };
        let Some(client) = self.kv.clone() else {
            return Err(secrets::SecretRefError::KvUnavailable);
        };
        if self.opts.offline {
            self.skipped.push(format!("{what}: {reference}"));
            return Ok(Resolved::Fixed(crate::secrets::Secret::new(
                b"offline-placeholder".to_vec(),
            )));
        }
        match crate::secrets::kv::global().bind(&client, &kref) {
            Ok(e) => {
                self.kv_bindings.push((e.clone(), client));
                Ok(Resolved::Kv(e))
            }
            Err(e) => Err(secrets::SecretRefError::Kv(format!("{reference}: {e}"))),
        }
    }

    /// `[secrets.kv]`.
    fn kv_settings(&mut self, raw: &RawConfig) {
        use crate::secrets::kv::{KvAuth, KvSettings};
        let Some(sec) = &raw.secrets else { return };
        let Some(kv) = &sec.get_ref().kv else { return };
        let k = kv.get_ref();
        let mut ok = true;
        let addr = match crate::net::url::Url::parse(k.addr.get_ref()) {
            Ok(u) if u.path == "/" => Some(u),
            Ok(_) => {
                self.err(
                    &k.addr,
                    "secrets.kv.addr",
                    "must be scheme://host[:port] without a path",
                );
                None
            }
            Err(m) => {
                let m = m.replace(
                    "plain http only for localhost",
                    "plain http only for a loopback address",
                );
                self.err(&k.addr, "secrets.kv.addr", m);
                None
            }
        };
        let mount = match &k.mount {
            None => "secret".to_string(),
            Some(m) => {
                let v = m.get_ref();
                let good = !v.is_empty()
                    && v.len() <= 128
                    && v.split('/').all(|seg| {
                        !seg.is_empty()
                            && seg != "."
                            && seg != ".."
                            && seg.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
                            })
                    });
                if !good {
                    self.err(
                        m,
                        "secrets.kv.mount",
                        "must be 1-128 of A-Z a-z 0-9 . _ - in '/'-separated segments",
                    );
                    ok = false;
                }
                v.clone()
            }
        };
        let check_ref = |cx: &mut Self, r: &Spanned<String>, key: &str| -> bool {
            match secrets::SecretRef::parse(r.get_ref()) {
                Ok(secrets::SecretRef::Env(_) | secrets::SecretRef::File(_)) => {
                    // read at every login; a missing file or variable is reported now
                    if let Err(e) = secrets::resolve(r.get_ref(), cx.base_dir) {
                        cx.err(r, key, e.to_string());
                        return false;
                    }
                    true
                }
                Ok(_) => {
                    cx.err(r, key, "must be an `env:VAR` or `file:PATH` reference");
                    false
                }
                Err(e) => {
                    cx.err(r, key, e.to_string());
                    false
                }
            }
        };
        let auth = match (&k.token, &k.approle) {
            (Some(t), None) => {
                ok &= check_ref(self, t, "secrets.kv.token");
                Some(KvAuth::Token(t.get_ref().clone()))
            }
            (None, Some(a)) => {
                let a = a.get_ref();
                ok &= check_ref(self, &a.secret_id, "secrets.kv.approle.secret_id");
                let role_id = match secrets::SecretRef::parse(a.role_id.get_ref()) {
                    Ok(secrets::SecretRef::Env(_) | secrets::SecretRef::File(_)) => {
                        match secrets::resolve(a.role_id.get_ref(), self.base_dir) {
                            Ok(s) => String::from_utf8(s.expose().to_vec()).ok(),
                            Err(e) => {
                                self.err(&a.role_id, "secrets.kv.approle.role_id", e.to_string());
                                None
                            }
                        }
                    }
                    _ => Some(a.role_id.get_ref().clone()),
                };
                match role_id {
                    Some(r)
                        if !r.is_empty()
                            && r.len() <= 256
                            && r.bytes().all(|b| b.is_ascii_graphic()) =>
                    {
                        Some(KvAuth::AppRole {
                            role_id: r,
                            secret_id: a.secret_id.get_ref().clone(),
                        })
                    }
                    _ => {
                        self.err(
                            &a.role_id,
                            "secrets.kv.approle.role_id",
                            "must be 1-256 visible ASCII characters (or an env:/file: reference)",
                        );
                        None
                    }
                }
            }
            (Some(_), Some(a)) => {
                self.err(
                    a,
                    "secrets.kv.approle",
                    "give either `token` or `approle`, not both",
                );
                None
            }
            (None, None) => {
                self.err(
                    kv,
                    "secrets.kv",
                    "needs `token = \"file:...\"` (or env:) or `approle = { role_id, secret_id }`",
                );
                None
            }
        };
        let ca_file = k.ca_file.as_ref().map(|c| self.base_dir.join(c.get_ref()));
        let tls = match (&addr, &k.ca_file) {
            (Some(a), _) if a.https => match crate::net::tls::client_config(ca_file.as_deref()) {
                Ok(c) => Some(c),
                Err(m) => {
                    match &k.ca_file {
                        Some(c) => self.err(c, "secrets.kv.ca_file", m),
                        None => self.err(&k.addr, "secrets.kv.addr", m),
                    }
                    ok = false;
                    None
                }
            },
            (Some(_), Some(c)) => {
                self.err(
                    c,
                    "secrets.kv.ca_file",
                    "ca_file is only used with an https addr",
                );
                ok = false;
                None
            }
            _ => None,
        };
        let ttl = self.duration(&k.ttl, "secrets.kv.ttl", Duration::from_secs(300));
        let max_stale = self.duration(
            &k.max_stale,
            "secrets.kv.max_stale",
            Duration::from_secs(3600),
        );
        let timeout = self.duration(&k.timeout, "secrets.kv.timeout", Duration::from_secs(5));
        let (Some(addr), Some(auth), true) = (addr, auth, ok) else {
            return;
        };
        let settings = KvSettings {
            addr,
            mount,
            auth,
            base_dir: self.base_dir.to_path_buf(),
            ca_file,
            tls,
            ttl,
            max_stale,
            timeout,
        };
        self.kv = Some(if self.opts.offline {
            Arc::new(crate::secrets::kv::KvClient::new(settings))
        } else {
            crate::secrets::kv::global().client(settings)
        });
    }

    /// `[audit]`.
    fn audit(&mut self, raw: &RawConfig) -> Option<crate::observe::audit::AuditConfig> {
        use crate::observe::audit::{AuditConfig, FsyncPolicy, OnFull};
        let a = raw.audit.as_ref()?.get_ref();
        if a.dir.get_ref().is_empty() {
            self.err(&a.dir, "audit.dir", "must name a directory");
            return None;
        }
        let mut cfg = AuditConfig::new(self.base_dir.join(a.dir.get_ref()));
        cfg.rotate_bytes = self.size(&a.rotate, "audit.rotate", cfg.rotate_bytes);
        if let Some(f) = &a.fsync {
            match FsyncPolicy::parse(f.get_ref()) {
                Ok(p) => cfg.fsync = p,
                Err(m) => self.err(f, "audit.fsync", m),
            }
        }
        if let Some(o) = &a.on_full {
            match OnFull::parse(o.get_ref()) {
                Some(p) => cfg.on_full = p,
                None => self.err(o, "audit.on_full", "must be \"drop\" or \"block\""),
            }
        }
        if let Some(q) = &a.queue {
            match usize::try_from(*q.get_ref()) {
                Ok(n) if (16..=1 << 24).contains(&n) => cfg.queue_capacity = n,
                _ => self.err(q, "audit.queue", "must be between 16 and 16777216 records"),
            }
        }
        if let Some(b) = &a.backlog {
            match usize::try_from(*b.get_ref()) {
                Ok(n) if (1..=1 << 24).contains(&n) => cfg.pending_max = n,
                _ => self.err(b, "audit.backlog", "must be between 1 and 16777216 records"),
            }
        }
        if let Some(o) = &a.on_error {
            match crate::observe::audit::OnError::parse(o.get_ref()) {
                Some(p) => cfg.on_error = p,
                None => self.err(o, "audit.on_error", "must be \"continue\" or \"refuse\""),
            }
        }
        if let Some(k) = &a.signing_key {
            match self.secret(k.get_ref(), "audit.signing_key") {
                Ok(sec) if self.opts.offline && sec.expose() == b"offline-placeholder" => {}
                Ok(sec) => match crate::observe::audit::SigningKey::from_secret(sec.expose()) {
                    Ok(key) => cfg.signing_key = Some(Arc::new(key)),
                    Err(m) => self.err(k, "audit.signing_key", m),
                },
                Err(e) => self.err(k, "audit.signing_key", e.to_string()),
            }
        }
        if let Some(n) = &a.checkpoint_records {
            match u64::try_from(*n.get_ref()) {
                Ok(v) if (1..=1 << 30).contains(&v) => cfg.checkpoint_records = v,
                _ => self.err(
                    n,
                    "audit.checkpoint_records",
                    "must be between 1 and 1073741824 records",
                ),
            }
        }
        cfg.checkpoint_interval = self.duration(
            &a.checkpoint_interval,
            "audit.checkpoint_interval",
            cfg.checkpoint_interval,
        );
        if cfg.checkpoint_interval.is_zero()
            && let Some(v) = &a.checkpoint_interval
        {
            self.err(v, "audit.checkpoint_interval", "must be more than 0");
        }
        if let Some(h) = &a.head_file {
            let path = self.base_dir.join(h.get_ref());
            if h.get_ref().is_empty() {
                self.err(h, "audit.head_file", "must name a file");
            } else if path.starts_with(&cfg.dir) {
                self.err(
                    h,
                    "audit.head_file",
                    "must be outside the audit directory (whoever can cut the log could cut it too)",
                );
            } else {
                cfg.head_file = Some(path);
            }
        }
        if let Some(n) = &a.retain_files {
            match usize::try_from(*n.get_ref()) {
                Ok(v) if v >= 2 => cfg.retain_files = Some(v),
                _ => self.err(n, "audit.retain_files", "must be at least 2 files"),
            }
        }
        if a.retain.is_some() {
            let d = self.duration(&a.retain, "audit.retain", Duration::ZERO);
            if !d.is_zero() {
                cfg.retain_age = Some(d);
            }
        }
        Some(cfg)
    }

    /// `[[audit.sinks]]`; retention of `audit` waits for each sink.
    fn sinks(
        &mut self,
        raw: &RawConfig,
        audit: Option<&mut crate::observe::audit::AuditConfig>,
    ) -> Vec<Arc<crate::siem::SinkConfig>> {
        let Some(a) = raw.audit.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<Arc<crate::siem::SinkConfig>> = Vec::new();
        let base_dir = self.base_dir;
        let mut names = std::collections::HashSet::new();
        for (i, s) in a.get_ref().sinks.iter().enumerate() {
            let name = &s.get_ref().name;
            if !names.insert(name.get_ref().clone()) {
                self.err(
                    name,
                    format!("audit.sinks[{i}].name"),
                    format!("duplicate sink name {:?}", name.get_ref()),
                );
                continue;
            }
            let mut secret = |r: &str, what: &str| {
                self.secret(r, &format!("audit.sinks[{i}].auth.{what}"))
                    .map_err(|e| e.to_string())
            };
            match crate::siem::config::compile(s.get_ref(), base_dir, &mut secret) {
                Ok(c) => out.push(Arc::new(c)),
                Err(errs) => {
                    for (off, key, msg) in errs {
                        self.push_error(off, format!("audit.sinks[{i}].{key}"), msg);
                    }
                }
            }
        }
        if let Some(cfg) = audit {
            cfg.sink_holds = out
                .iter()
                .map(|s| crate::observe::audit::cursor::SinkHold {
                    name: s.name.clone(),
                    max_lag: s.max_lag,
                })
                .collect();
        }
        out
    }

    /// `[telemetry] otlp`: the trace exporter.
    fn telemetry(&mut self, raw: &RawConfig) -> Option<Arc<crate::siem::traces::TraceConfig>> {
        let t = raw.telemetry.as_ref()?;
        let o = t.get_ref().otlp.as_ref()?;
        let r = o.get_ref();
        let sample = match r.sample.as_ref().map(|s| (s, s.get_ref())) {
            None => None,
            Some((_, toml::Value::Float(f))) => Some(*f),
            Some((_, toml::Value::Integer(i))) => Some(*i as f64),
            Some((s, _)) => {
                self.err(
                    s,
                    "telemetry.otlp.sample",
                    "must be a number between 0 and 1",
                );
                return None;
            }
        };
        let fields = crate::siem::traces::OtlpFields {
            url: r.url.get_ref(),
            sample,
            auth: r.auth.as_ref().map(|a| a.get_ref()),
            ca_file: r.ca_file.as_ref().map(|c| c.get_ref().as_str()),
            timeout: r.timeout.as_ref().map(|c| c.get_ref().as_str()),
            batch: r.batch.as_ref().map(|b| *b.get_ref()),
            queue: r.queue.as_ref().map(|b| *b.get_ref()),
        };
        let base_dir = self.base_dir;
        let mut secret = |reference: &str, what: &str| {
            self.secret(reference, &format!("telemetry.otlp.auth.{what}"))
                .map_err(|e| e.to_string())
        };
        match crate::siem::traces::compile(&fields, base_dir, &mut secret) {
            Ok(c) => Some(Arc::new(c)),
            Err(errs) => {
                for (key, msg) in errs {
                    let off = match key {
                        "url" => Some(r.url.span().start),
                        "sample" => r.sample.as_ref().map(|v| v.span().start),
                        "auth" => r.auth.as_ref().map(|v| v.span().start),
                        "ca_file" => r.ca_file.as_ref().map(|v| v.span().start),
                        "timeout" => r.timeout.as_ref().map(|v| v.span().start),
                        "batch" => r.batch.as_ref().map(|v| v.span().start),
                        "queue" => r.queue.as_ref().map(|v| v.span().start),
                        _ => None,
                    };
                    self.push_error(
                        off.unwrap_or(o.span().start),
                        format!("telemetry.otlp.{key}"),
                        msg,
                    );
                }
                None
            }
        }
    }

    /// `[[agents]]` and `[[jwt]]`.
    fn identity(&mut self, raw: &RawConfig) -> Identity {
        let mut agents = Vec::with_capacity(raw.agents.len());
        for (i, a) in raw.agents.iter().enumerate() {
            let r = a.get_ref();
            let expires_at = match &r.expires_at {
                None => None,
                Some(v) => match v.get_ref() {
                    toml::Value::String(s) => Some(s.clone()),
                    toml::Value::Datetime(d) => Some(d.to_string()),
                    _ => {
                        self.err(
                            v,
                            format!("agents[{i}].expires_at"),
                            "must be an RFC 3339 date-time like 2027-01-01T00:00:00Z",
                        );
                        None
                    }
                },
            };
            if r.key_sha256.is_none() && r.cert_subject.is_none() {
                self.err(
                    a,
                    format!("agents[{i}].key_sha256"),
                    "missing: an agent needs key_sha256 (or cert_subject on an mTLS listener)",
                );
            }
            agents.push(crate::identity::RawAgent {
                id: r.id.get_ref().clone(),
                key_sha256: r
                    .key_sha256
                    .as_ref()
                    .map(|k| k.get_ref().clone())
                    .unwrap_or_default(),
                roles: r.roles.clone(),
                expires_at,
                cert_subject: r.cert_subject.as_ref().map(|c| c.get_ref().clone()),
            });
        }
        let table = match crate::identity::AgentTable::compile(&agents) {
            Ok(t) => t,
            Err(errs) => {
                self.list_errors(errs, "agents", &raw.agents, "");
                Default::default()
            }
        };
        let mut jwt = Vec::with_capacity(raw.jwt.len());
        let mut jwks_feeds = Vec::new();
        for (i, j) in raw.jwt.iter().enumerate() {
            let v = match crate::identity::jwt::JwtVerifier::new(j.get_ref(), self.base_dir) {
                Ok(v) => v,
                Err(e) => {
                    self.err(j, format!("jwt[{i}]"), e.to_string());
                    continue;
                }
            };
            let crate::identity::jwt::JwksSource::Https(url) = v.source().clone() else {
                jwt.push(v);
                continue;
            };
            // fetched now, so `check`, `run` and reload all see an unreachable IdP (a warning:
            // the refresher keeps trying)
            let ca_file = j.get_ref().ca_file.as_ref().map(|c| self.base_dir.join(c));
            let now = i64::try_from(crate::util::clock::unix_now().as_secs()).unwrap_or(i64::MAX);
            match crate::identity::jwks::global().attach(
                &url,
                ca_file.as_deref(),
                v.refresh_interval(),
                v.min_refresh_interval(),
                now,
            ) {
                Ok((feed, warning)) => {
                    if let Some(w) = warning {
                        let line = self.line_at(j.span().start);
                        self.warnings
                            .push(format!("{}:{line}: jwt[{i}].jwks: {w}", self.file));
                    }
                    jwt.push(v.with_shared(feed.shared().clone()));
                    jwks_feeds.push(feed);
                }
                Err(m) => self.err(j, format!("jwt[{i}].jwks"), m),
            }
        }
        Identity {
            agents: table,
            jwt,
            jwks_feeds,
        }
    }

    fn compile(&mut self, raw: RawConfig) -> Option<Compiled> {
        self.open_vault(&raw);
        self.kv_settings(&raw);
        let identity = self.identity(&raw);
        if raw.jwt.is_empty() {
            let ids = raw.agents.iter().map(|a| a.get_ref().id.get_ref().clone());
            let roles = raw
                .agents
                .iter()
                .flat_map(|a| a.get_ref().roles.iter().cloned());
            self.principals = Some((ids.collect(), roles.collect()));
        }
        let mut audit = self.audit(&raw);
        let sinks = self.sinks(&raw, audit.as_mut());
        let telemetry = self.telemetry(&raw);
        let server = self.server(&raw);
        let limits = self.limits(&raw);
        self.cluster = self.meters(&raw);
        let st = self.state_sections(&raw);
        let demo = raw.demo.as_ref().and_then(|d| {
            let a = self.socket_addr(&d.get_ref().listen, "demo.listen")?;
            if !a.ip().is_loopback() {
                self.err(
                    &d.get_ref().listen,
                    "demo.listen",
                    "the demo upstream listens on loopback only",
                );
            }
            Some(a)
        });
        let mut proxies = Vec::with_capacity(raw.proxies.len());
        let mut by_name = HashMap::new();
        let mut tls_cache: HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>> = HashMap::new();
        let mut warnings = std::mem::take(&mut self.warnings);
        for (i, p) in raw.proxies.iter().enumerate() {
            if let Some(mut proxy) = self.proxy(i, p, &mut tls_cache) {
                proxy.holds = self.rule_holds(
                    i,
                    &p.get_ref().rules,
                    proxy.default_effect,
                    st.approvals.is_some(),
                );
                if by_name.contains_key(&proxy.name) {
                    self.err(
                        &p.get_ref().name,
                        format!("proxies[{i}].name"),
                        format!("duplicate proxy name {:?}", proxy.name),
                    );
                    continue;
                }
                // (a proxy that refuses every call is reported once, by the rule set's own
                // "no allow rule" warning)
                by_name.insert(proxy.name.clone(), proxies.len());
                proxies.push(proxy);
            }
        }
        for p in &mut proxies {
            p.underscore_headers = limits.underscore_headers;
        }
        for (i, a) in proxies.iter().enumerate() {
            for b in &proxies[i + 1..] {
                let (x, y) = (&a.upstream, &b.upstream);
                if x.host == y.host && x.port == y.port && x.base_path == y.base_path {
                    warnings.push(format!(
                        "{}: proxies {:?} and {:?} have the same upstream ({}{}): absolute-form \
                         requests to it are refused as ambiguous (/{{proxy}}/ paths are unaffected)",
                        self.file, a.name, b.name, x.authority, x.base_path
                    ));
                }
            }
        }
        warnings.append(&mut self.proxy_warnings);
        if proxies.is_empty() && self.errors.is_empty() {
            warnings.push(format!(
                "{}: no [[proxies]] configured: every call gets unknown_proxy",
                self.file
            ));
        }
        let forward = self.forward(&raw, &mut proxies, &mut warnings);
        if st.location.is_none() {
            for p in proxies
                .iter()
                .filter(|p| p.mcp.as_ref().is_some_and(|m| m.pin_tools))
            {
                warnings.push(format!(
                    "{}: proxy {:?}: MCP tool pins (pin_tools) live in memory only without [state] \
                     dir or redis: they do not survive a restart, and a definition changed while \
                     the gateway was down is pinned afresh",
                    self.file, p.name
                ));
            }
        }
        let mut server = server?;
        warnings.extend(posture_warnings(self.file, &server, &identity, &proxies));
        // the same finding twice (two proxies sharing a cause) is printed once
        let mut seen = HashSet::new();
        warnings.retain(|w| seen.insert(w.clone()));
        if let Some(d) = &raw.server.get_ref().default_proxy {
            match by_name.get(d.get_ref()) {
                Some(i) => server.default_proxy = Some(*i),
                None => self.err(
                    d,
                    "server.default_proxy",
                    format!("no proxy named {:?}", d.get_ref()),
                ),
            }
        }
        let log_format = match raw.log.as_ref().and_then(|l| l.get_ref().format.as_ref()) {
            None => super::LogFormat::default(),
            Some(f) => super::LogFormat::from_name(f.get_ref()).unwrap_or_else(|| {
                self.err(
                    f,
                    "log.format",
                    format!(
                        "unknown log format {:?}: expected \"text\" or \"json\"",
                        f.get_ref()
                    ),
                );
                super::LogFormat::default()
            }),
        };
        Some(Compiled {
            source: self.file.to_string(),
            source_text: Arc::from(self.text),
            log_format,
            server,
            limits,
            demo,
            proxies,
            identity,
            audit,
            sinks,
            telemetry,
            by_name,
            warnings,
            kv: std::mem::take(&mut self.kv_bindings),
            skipped: std::mem::take(&mut self.skipped),
            state: st.location,
            approvals: st.approvals,
            admins: st.admins,
            forward,
        })
    }

    fn server(&mut self, raw: &RawConfig) -> Option<Server> {
        let s = raw.server.get_ref();
        let mut listen = Vec::new();
        if s.listen.get_ref().is_empty() {
            self.err(
                &s.listen,
                "server.listen",
                "at least one listen address is required",
            );
        }
        for (i, l) in s.listen.get_ref().iter().enumerate() {
            if let Some(a) = self.socket_addr(l, &format!("server.listen[{i}]")) {
                listen.push(a);
            }
        }
        let workers = match &s.workers {
            None => 0,
            Some(w) if (0..=1024).contains(w.get_ref()) => *w.get_ref() as usize,
            Some(w) => {
                self.err(
                    w,
                    "server.workers",
                    "must be between 0 (one per core) and 1024",
                );
                0
            }
        };
        let admin_listen = s
            .admin_listen
            .as_ref()
            .and_then(|a| self.socket_addr(a, "server.admin_listen"));
        let token = |this: &mut Self, t: &Option<Spanned<String>>, key: &str| match t {
            None => None,
            Some(t) => match this.secret(
                t.get_ref(),
                &format!("{}:{}: {key}", this.file, this.line_at(t.span().start)),
            ) {
                Ok(sec) => Some(sec),
                Err(e) => {
                    this.err(t, key, e.to_string());
                    None
                }
            },
        };
        let admin_token = token(self, &s.admin_token, "server.admin_token");
        let metrics_token = token(self, &s.metrics_token, "server.metrics_token");
        if let (Some(a), Some(m), Some(t)) = (&admin_token, &metrics_token, &s.metrics_token)
            && a.expose() == m.expose()
        {
            self.err(
                t,
                "server.metrics_token",
                "is the admin token: a scraper holding it could reload the config and read the \
                 audit trail; give metrics their own token",
            );
        }
        if let Some(t) = &s.metrics_token
            && admin_listen.is_none()
        {
            self.err(t, "server.metrics_token", "needs server.admin_listen");
        }
        let tls = s
            .tls
            .as_ref()
            .and_then(|t| self.listener_tls(t, "server.tls"));
        let admin_tls = s
            .admin_tls
            .as_ref()
            .and_then(|t| self.listener_tls(t, "server.admin_tls"));
        if admin_tls.is_some() && admin_listen.is_none() {
            self.err(
                s.admin_tls.as_ref()?,
                "server.admin_tls",
                "needs server.admin_listen",
            );
        }
        let mut trusted_proxies = Vec::new();
        if let Some(list) = &s.trusted_proxies {
            for (i, c) in list.get_ref().iter().enumerate() {
                match crate::http::forwarded::Cidr::parse(c.get_ref()) {
                    Ok(c) => trusted_proxies.push(c),
                    Err(m) => self.err(c, format!("server.trusted_proxies[{i}]"), m),
                }
            }
        }
        Some(Server {
            listen,
            workers,
            admin_listen,
            admin_token: admin_token.map(Arc::new),
            metrics_token: metrics_token.map(Arc::new),
            default_proxy: None,
            tls,
            admin_tls,
            trusted_proxies,
        })
    }

    /// `tls = { cert, key, client_ca }`: each a secret reference to PEM text.
    fn listener_tls(
        &mut self,
        t: &Spanned<super::raw::RawListenerTls>,
        key: &str,
    ) -> Option<Arc<rustls::ServerConfig>> {
        let line = self.line_at(t.span().start);
        let r = t.get_ref();
        let read = |this: &mut Self, reference: &str, field: &str| {
            let what = format!("{}:{line}: {key}.{field}", this.file);
            match this.secret(reference, &what) {
                Ok(s) => Some(s),
                Err(e) => {
                    this.err(t, format!("{key}.{field}"), e.to_string());
                    None
                }
            }
        };
        let cert = read(self, &r.cert, "cert");
        let pkey = read(self, &r.key, "key");
        let ca = match &r.client_ca {
            None => None,
            Some(c) => Some(read(self, c, "client_ca")?),
        };
        let (cert, pkey) = (cert?, pkey?);
        let pem = crate::net::tls::ServerTlsPem {
            cert_chain: cert.expose(),
            key: pkey.expose(),
            client_ca: ca.as_ref().map(|c| c.expose()),
        };
        match crate::net::tls::server_config(&pem) {
            Ok(c) => Some(c),
            Err(e) => {
                self.err(t, key, e);
                None
            }
        }
    }

    fn limits(&mut self, raw: &RawConfig) -> Limits {
        let l = &raw.limits;
        let d = Limits::default();
        let max_headers = match &l.max_headers {
            None => d.max_headers,
            Some(n) if (1..=256).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.err(n, "limits.max_headers", "must be between 1 and 256");
                d.max_headers
            }
        };
        let max_head = self.size(
            &l.max_request_head,
            "limits.max_request_head",
            d.max_head as u64,
        );
        if let Some(s) = &l.max_request_head
            && !(1024..=1 << 20).contains(&max_head)
        {
            self.err(
                s,
                "limits.max_request_head",
                "must be between 1KiB and 1MiB",
            );
        }
        let max_body = self.size(&l.max_request_body, "limits.max_request_body", d.max_body);
        if let Some(s) = &l.max_request_body
            && max_body > 1 << 30
        {
            self.err(
                s,
                "limits.max_request_body",
                "must be at most 1GiB (bodies are held whole for scanning)",
            );
        }
        // unset: 256 MiB, or one body of max_request_body if that is larger
        let max_body_memory = self.size(
            &l.max_body_memory,
            "limits.max_body_memory",
            d.max_body_memory.max(max_body),
        );
        if let Some(s) = &l.max_body_memory
            && max_body_memory < max_body
        {
            self.err(
                s,
                "limits.max_body_memory",
                "must be at least limits.max_request_body (one body of the largest size must fit)",
            );
        }
        let underscore_headers = match &raw.server.get_ref().underscore_headers {
            None => d.underscore_headers,
            Some(v) => crate::http::hop::Underscores::from_name(v.get_ref()).unwrap_or_else(|| {
                self.err(
                    v,
                    "server.underscore_headers",
                    format!("unknown value {:?} (drop | refuse | pass)", v.get_ref()),
                );
                d.underscore_headers
            }),
        };
        Limits {
            max_head: max_head.min(1 << 20) as usize,
            max_headers,
            max_body,
            max_body_memory,
            head_timeout: self.duration(&l.head_timeout, "limits.head_timeout", d.head_timeout),
            idle_timeout: self.duration(&l.idle_timeout, "limits.idle_timeout", d.idle_timeout),
            connect_timeout: self.duration(
                &l.upstream_connect_timeout,
                "limits.upstream_connect_timeout",
                d.connect_timeout,
            ),
            upstream_timeout: self.duration(
                &l.upstream_timeout,
                "limits.upstream_timeout",
                d.upstream_timeout,
            ),
            upstream_idle_timeout: self.duration(
                &l.upstream_idle_timeout,
                "limits.upstream_idle_timeout",
                d.upstream_idle_timeout,
            ),
            upstream_stream_timeout: self.duration(
                &l.upstream_stream_timeout,
                "limits.upstream_stream_timeout",
                d.upstream_stream_timeout,
            ),
            body_timeout: self.duration(&l.body_timeout, "limits.body_timeout", d.body_timeout),
            drain_timeout: self.duration(&l.drain_timeout, "limits.drain_timeout", d.drain_timeout),
            underscore_headers,
        }
    }

    /// `[[proxies.redact]]` tables of proxy `i`, merged into one program.
    /// `protocol` and `[[proxies.tools]]`: `Some(None)` for an HTTP proxy, `None` on an error.
    fn mcp_proxy(
        &mut self,
        i: usize,
        p: &RawProxy,
        rules: &crate::policy::authz::RuleSet,
    ) -> Option<Option<super::McpProxy>> {
        let mcp = match p.protocol.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "http")) => false,
            Some((_, "mcp")) => true,
            Some((v, other)) => {
                self.err(
                    v,
                    format!("proxies[{i}].protocol"),
                    format!("unknown protocol {other:?} (http | mcp)"),
                );
                return None;
            }
        };
        if !mcp {
            if let Some(t) = p.tools.first() {
                self.err(
                    t,
                    format!("proxies[{i}].tools"),
                    "tools are MCP tools: set protocol = \"mcp\" on this proxy",
                );
                return None;
            }
            if let Some(m) = &p.tags_from_annotations {
                self.err(
                    m,
                    format!("proxies[{i}].tags_from_annotations"),
                    "tags_from_annotations reads MCP tool lists: set protocol = \"mcp\" on this proxy",
                );
                return None;
            }
            if let Some(m) = &p.pin_tools {
                self.err(
                    m,
                    format!("proxies[{i}].pin_tools"),
                    "pin_tools pins MCP tool definitions: set protocol = \"mcp\" on this proxy",
                );
                return None;
            }
            if let Some(m) = &p.mcp_max_list {
                self.err(
                    m,
                    format!("proxies[{i}].mcp_max_list"),
                    "mcp_max_list bounds MCP list answers: set protocol = \"mcp\" on this proxy",
                );
                return None;
            }
            if rules.has_mcp_rules() {
                self.err(
                    &p.name,
                    format!("proxies[{i}].rules"),
                    "rules naming mcp_methods, tools, tool_tags, resources or prompts decide MCP \
                     messages: set protocol = \"mcp\" on this proxy",
                );
                return None;
            }
            return Some(None);
        }
        let before = self.errors.len();
        let mut out = super::McpProxy {
            max_list: usize::try_from(self.size(
                &p.mcp_max_list,
                &format!("proxies[{i}].mcp_max_list"),
                crate::mcp::lists::DEFAULT_MAX_LIST as u64,
            ))
            .unwrap_or(usize::MAX),
            tags_from_annotations: p
                .tags_from_annotations
                .as_ref()
                .is_some_and(|v| *v.get_ref()),
            pin_tools: p.pin_tools.as_ref().is_none_or(|v| *v.get_ref()),
            ..Default::default()
        };
        for (j, t) in p.tools.iter().enumerate() {
            let r = t.get_ref();
            if r.name.is_empty() || r.name.chars().any(char::is_control) {
                self.err(
                    t,
                    format!("proxies[{i}].tools[{j}].name"),
                    "empty or invalid tool name",
                );
                continue;
            }
            if r.tags.iter().any(|x| x.is_empty()) {
                self.err(t, format!("proxies[{i}].tools[{j}].tags"), "empty tag");
                continue;
            }
            if let Some(pin) = &r.pin {
                match crate::mcp::pins::parse_pin(pin) {
                    Some(hex) => {
                        out.pins.insert(r.name.as_str().into(), hex.into());
                    }
                    None => {
                        self.err(
                            t,
                            format!("proxies[{i}].tools[{j}].pin"),
                            "a pin is \"sha256:\" and 64 hex digits (the digest `portcullis mcp pins` shows)",
                        );
                        continue;
                    }
                }
            }
            let tags: Box<[Box<str>]> = r.tags.iter().map(|x| x.as_str().into()).collect();
            if out.tags.insert(r.name.as_str().into(), tags).is_some() {
                self.err(
                    t,
                    format!("proxies[{i}].tools[{j}].name"),
                    format!("tool {:?} is listed twice", r.name),
                );
            }
        }
        (self.errors.len() == before).then_some(Some(out))
    }

    fn redaction(&mut self, i: usize, p: &RawProxy) -> Option<super::Redaction> {
        use crate::redact::{Action, OnInvalid, RedactProgram};
        if p.redact.is_empty() {
            return None;
        }
        let mut program = RedactProgram::new();
        let mut on_invalid = OnInvalid::Block;
        let mut pass_votes = 0;
        for (j, r) in p.redact.iter().enumerate() {
            let r = r.get_ref();
            let action = match r.action.as_ref().map(|a| a.get_ref().as_str()) {
                None | Some("remove") => Action::Remove,
                Some("mask") => Action::Mask,
                Some(other) => {
                    let at = r.action.as_ref().map_or(0, |a| a.span().start);
                    self.push_error(
                        at,
                        format!("proxies[{i}].redact[{j}].action"),
                        format!("unknown action {other:?} (remove | mask)"),
                    );
                    continue;
                }
            };
            match r.on_invalid.as_ref().map(|o| o.get_ref().as_str()) {
                None | Some("block") => {}
                Some("pass") => pass_votes += 1,
                Some(other) => {
                    if let Some(o) = &r.on_invalid {
                        self.err(
                            o,
                            format!("proxies[{i}].redact[{j}].on_invalid"),
                            format!("unknown value {other:?} (block | pass)"),
                        );
                    }
                }
            }
            if r.paths.get_ref().is_empty() {
                self.err(
                    &r.paths,
                    format!("proxies[{i}].redact[{j}].paths"),
                    "lists no path",
                );
            }
            for path in r.paths.get_ref() {
                if let Err(m) = program.add(path, action) {
                    self.err(&r.paths, format!("proxies[{i}].redact[{j}].paths"), m);
                }
            }
        }
        // "pass" only when every table asks for it: one "block" keeps the safe policy
        if pass_votes == p.redact.len() {
            on_invalid = OnInvalid::Pass;
        }
        Some(super::Redaction {
            program,
            on_invalid,
        })
    }

    /// `[[proxies.budgets]]` of proxy `i`: their values' paths join the redaction program (one
    /// pass over the body reads and redacts), their counters come from the ledger registry.
    fn budgets(
        &mut self,
        i: usize,
        p: &RawProxy,
        redact: &mut Option<super::Redaction>,
    ) -> Vec<crate::policy::budget::Budget> {
        use crate::policy::budget::{self, Budget, BudgetBy, LedgerKey, Source};
        use crate::redact::usage::{Aggregate, BodyValue, Term};
        use crate::redact::{Action, OnInvalid, RedactProgram};
        let mut out = Vec::new();
        // distinct capture paths of this proxy → slot bits
        let mut slots: Vec<String> = Vec::new();
        let mut captures: Vec<(String, u32)> = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (j, b) in p.budgets.iter().enumerate() {
            let r = b.get_ref();
            let key = |k: &str| format!("proxies[{i}].budgets[{j}].{k}");
            let before = self.errors.len();
            let name = r.name.get_ref();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            {
                self.err(
                    &r.name,
                    key("name"),
                    "must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
                );
            } else if !names.insert(name.clone()) {
                self.err(
                    &r.name,
                    key("name"),
                    format!("budget {name:?} is defined twice"),
                );
            }
            let limit = match u64::try_from(*r.limit.get_ref()) {
                Ok(n) if (1..=budget::MAX_LIMIT).contains(&n) => n,
                _ => {
                    self.err(
                        &r.limit,
                        key("limit"),
                        format!("must be between 1 and {}", budget::MAX_LIMIT),
                    );
                    0
                }
            };
            let per_secs = match parse_duration(r.per.get_ref()) {
                Ok(d) if d.as_secs() >= 1 && d.subsec_nanos() == 0 => d.as_secs(),
                Ok(_) => {
                    self.err(&r.per, key("per"), "must be whole seconds, at least \"1s\"");
                    0
                }
                Err(m) => {
                    self.err(&r.per, key("per"), m);
                    0
                }
            };
            let by = match r.by.as_ref().map(|v| v.get_ref().as_str()) {
                None | Some("agent") => BudgetBy::Agent,
                Some("proxy") => BudgetBy::Proxy,
                Some("role") => BudgetBy::Role,
                Some(other) => {
                    if let Some(v) = &r.by {
                        self.err(
                            v,
                            key("by"),
                            format!("unknown value {other:?} (agent | proxy | role)"),
                        );
                    }
                    BudgetBy::Agent
                }
            };
            let aggregate = match r.aggregate.as_ref().map(|v| v.get_ref().as_str()) {
                None | Some("last") => Aggregate::Last,
                Some("sum") => Aggregate::Sum,
                Some(other) => {
                    if let Some(v) = &r.aggregate {
                        self.err(
                            v,
                            key("aggregate"),
                            format!("unknown value {other:?} (last | sum)"),
                        );
                    }
                    Aggregate::Last
                }
            };
            let weights = r.weights.as_ref().map(|w| w.get_ref().clone());
            if let Some(w) = &r.weights {
                for (k, v) in w.get_ref() {
                    if !matches!(k.as_str(), "input" | "output") {
                        self.err(
                            w,
                            key("weights"),
                            format!("unknown weight {k:?} (input | output)"),
                        );
                    } else if !v.is_finite() || *v < 0.0 || *v > 1e9 {
                        self.err(
                            w,
                            key("weights"),
                            format!("weight {k} must be a number from 0 to 1e9"),
                        );
                    }
                }
            }
            let value = r.value.get_ref().as_str();
            let weight = |k: &str| {
                weights
                    .as_ref()
                    .and_then(|w| w.get(k).copied())
                    .unwrap_or(1.0)
            };
            // (paths feeding each term, weight)
            let terms: Option<Vec<(Vec<&str>, f64)>> = match value {
                "openai_tokens" if weights.is_none() => Some(vec![(
                    vec!["$.usage.total_tokens", "$.response.usage.total_tokens"],
                    1.0,
                )]),
                "openai_tokens" => Some(vec![
                    (
                        vec![
                            "$.usage.prompt_tokens",
                            "$.usage.input_tokens",
                            "$.response.usage.input_tokens",
                        ],
                        weight("input"),
                    ),
                    (
                        vec![
                            "$.usage.completion_tokens",
                            "$.usage.output_tokens",
                            "$.response.usage.output_tokens",
                        ],
                        weight("output"),
                    ),
                ]),
                "anthropic_tokens" => Some(vec![
                    (
                        vec!["$.usage.input_tokens", "$.message.usage.input_tokens"],
                        weight("input"),
                    ),
                    (
                        vec!["$.usage.output_tokens", "$.message.usage.output_tokens"],
                        weight("output"),
                    ),
                ]),
                v if v.starts_with('$') => Some(vec![(vec![v], 1.0)]),
                _ => None,
            };
            let preset = matches!(value, "openai_tokens" | "anthropic_tokens");
            if !preset && let Some(w) = &r.weights {
                self.err(
                    w,
                    key("weights"),
                    "weights apply to the presets openai_tokens and anthropic_tokens",
                );
            }
            if preset
                && let Some(a) = &r.aggregate
                && aggregate != Aggregate::Last
            {
                self.err(
                    a,
                    key("aggregate"),
                    "the presets read usage totals: aggregate is \"last\"",
                );
            }
            let source = if let Some(h) = value.strip_prefix("header:") {
                let h = h.trim();
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
                {
                    self.err(&r.value, key("value"), format!("invalid header name {h:?}"));
                }
                if let Some(a) = &r.aggregate {
                    self.err(
                        a,
                        key("aggregate"),
                        "a header value has no events to aggregate",
                    );
                }
                Source::Header(h.to_ascii_lowercase().into())
            } else if let Some(terms) = terms {
                let mut compiled = Vec::new();
                for (paths, w) in terms {
                    let mut bits = 0u32;
                    for path in paths {
                        if path == "$" {
                            self.err(&r.value, key("value"), "the path must name a member or element (e.g. \"$.usage.total_tokens\")");
                            continue;
                        }
                        if let Err(m) =
                            crate::redact::RedactProgram::compile(&[path], Action::Remove)
                        {
                            self.err(&r.value, key("value"), m.replacen("redact path", "path", 1));
                            continue;
                        }
                        let slot = match slots.iter().position(|s| s == path) {
                            Some(k) => k,
                            None if slots.len() < 32 => {
                                slots.push(path.to_owned());
                                slots.len() - 1
                            }
                            None => {
                                self.err(
                                    &r.value,
                                    key("value"),
                                    "more than 32 distinct budget paths on one proxy",
                                );
                                continue;
                            }
                        };
                        bits |= 1 << slot;
                    }
                    compiled.push(Term {
                        slots: bits,
                        weight: w,
                    });
                }
                Source::Body(BodyValue {
                    terms: compiled,
                    aggregate,
                })
            } else {
                self.err(
                    &r.value,
                    key("value"),
                    format!("unknown value {value:?} (a JSON path \"$.a.b\", \"header:Name\", openai_tokens or anthropic_tokens)"),
                );
                continue;
            };
            let reserve = match &r.reserve {
                None => None,
                Some(v) => {
                    let t = v.get_ref();
                    let mut prog = RedactProgram::new();
                    match prog.add(t, Action::Capture(1)) {
                        Ok(()) if t != "$" => Some(prog),
                        Ok(()) => {
                            self.err(
                                v,
                                key("reserve"),
                                "invalid path \"$\": name a member, e.g. \"$.max_tokens\"",
                            );
                            None
                        }
                        Err(m) => {
                            self.err(
                                v,
                                key("reserve"),
                                format!("invalid path: {}", m.replacen("redact path ", "", 1)),
                            );
                            None
                        }
                    }
                }
            };
            let rule = match &r.rule {
                None => None,
                Some(v) => {
                    let k = p
                        .rules
                        .iter()
                        .position(|x| x.get_ref().name.as_deref() == Some(v.get_ref().as_str()));
                    match k.and_then(|k| u32::try_from(k).ok()) {
                        Some(k) => Some(k),
                        None => {
                            self.err(
                                v,
                                key("rule"),
                                format!("no rule of this proxy is named {:?}", v.get_ref()),
                            );
                            None
                        }
                    }
                }
            };
            if self.errors.len() != before {
                continue;
            }
            let remote = self.budget_remote.clone();
            let ledger = budget::ledger(
                LedgerKey {
                    proxy: Arc::from(p.name.get_ref().as_str()),
                    name: Arc::from(name.as_str()),
                    limit,
                    per_secs,
                    by,
                    value: format!(
                        "{value}|{aggregate:?}|rule={:?}|{:?}",
                        r.rule.as_ref().map(|v| v.get_ref()),
                        weights.as_ref().map(|w| w
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>())
                    ),
                    remote: remote.as_ref().map_or(0, |r| r.id),
                },
                remote.as_ref(),
            );
            out.push(Budget {
                source,
                reserve,
                rule,
                ledger,
            });
        }
        for (k, path) in slots.iter().enumerate() {
            captures.push((path.clone(), 1 << k));
        }
        if !captures.is_empty() {
            let r = redact.get_or_insert_with(|| super::Redaction {
                program: RedactProgram::new(),
                on_invalid: OnInvalid::Pass,
            });
            for (path, bits) in captures {
                if let Err(m) = r.program.add(&path, Action::Capture(bits)) {
                    self.err(&p.name, format!("proxies[{i}].budgets"), m);
                }
            }
        }
        out
    }

    /// `meter` and `quota` of proxy `i` → its (reload-surviving) buckets.
    fn meter(&mut self, i: usize, p: &RawProxy) -> Option<Arc<crate::policy::meter::ProxyMeter>> {
        use crate::config::raw::MeterByRaw;
        use crate::policy::meter::{MeterBy, MeterSpec, Rate};
        if p.meter.is_none() && p.quota.is_none() {
            return None;
        }
        let mut ok = true;
        let positive = |cx: &mut Self, v: &Spanned<i64>, key: String, ok: &mut bool| -> u64 {
            match u64::try_from(*v.get_ref()) {
                Ok(n) if n > 0 && n <= 1_000_000_000 => n,
                _ => {
                    cx.err(v, key, "must be a whole number from 1 to 1000000000");
                    *ok = false;
                    1
                }
            }
        };
        let mut by = None;
        let rate = p.meter.as_ref().map(|m| {
            let m = m.get_ref();
            let rate = positive(self, &m.rate, format!("proxies[{i}].meter.rate"), &mut ok);
            let burst = match &m.burst {
                Some(b) => positive(self, b, format!("proxies[{i}].meter.burst"), &mut ok),
                None => rate,
            };
            let per = self.duration(
                &m.per,
                &format!("proxies[{i}].meter.per"),
                Duration::from_secs(1),
            );
            by = m.by.as_ref().map(|b| (*b.get_ref(), b.span()));
            Rate { rate, per, burst }
        });
        let quota = p.quota.as_ref().map(|q| {
            let q = q.get_ref();
            let limit = positive(self, &q.limit, format!("proxies[{i}].quota.limit"), &mut ok);
            let per = self.duration(
                &Some(q.per.clone()),
                &format!("proxies[{i}].quota.per"),
                Duration::from_secs(86_400),
            );
            if let Some(b) = &q.by {
                match by {
                    Some((prev, _)) if prev != *b.get_ref() => {
                        self.err(
                            b,
                            format!("proxies[{i}].quota.by"),
                            "must be the same as meter.by (one set of buckets per proxy)",
                        );
                        ok = false;
                    }
                    _ => by = Some((*b.get_ref(), b.span())),
                }
            }
            Rate {
                rate: limit,
                per,
                burst: limit,
            }
        });
        if !ok {
            return None;
        }
        let by = match by.map(|(b, _)| b) {
            Some(MeterByRaw::Agent) => MeterBy::Agent,
            Some(MeterByRaw::Proxy) | None => MeterBy::Proxy,
        };
        let spec = MeterSpec { by, rate, quota };
        Some(crate::policy::meter::global().meter_in(p.name.get_ref(), spec, self.cluster.as_ref()))
    }

    /// `[meters]` → the (reload-surviving) cluster backend. Nothing connects here: the refill
    /// thread starts on the first metered call.
    fn meters(&mut self, raw: &RawConfig) -> Option<Arc<crate::policy::meter::cluster::Cluster>> {
        use crate::config::raw::{BatchRaw, OnRedisDownRaw};
        use crate::policy::meter::cluster::{OnDown, Settings};
        let m = raw.meters.as_ref()?.get_ref();
        let mut ok = true;
        let password = match &m.password {
            None => None,
            Some(r) => match self.secret(r.get_ref(), "meters.password") {
                Ok(sec) => match std::str::from_utf8(sec.expose()) {
                    Ok(p) => Some(zeroize::Zeroizing::new(p.to_string())),
                    Err(_) => {
                        self.err(r, "meters.password", "the password is not UTF-8");
                        ok = false;
                        None
                    }
                },
                Err(e) => {
                    self.err(r, "meters.password", e.to_string());
                    ok = false;
                    None
                }
            },
        };
        let conn = match crate::policy::meter::redis_store::connection_info(
            m.redis.get_ref(),
            password.as_deref().map(String::as_str),
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                self.err(&m.redis, "meters.redis", e);
                ok = false;
                None
            }
        };
        let key_prefix = match &m.key_prefix {
            None => "portcullis:".to_string(),
            Some(p)
                if p.get_ref().len() <= 64
                    && p.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}') =>
            {
                p.get_ref().clone()
            }
            Some(p) => {
                self.err(
                    p,
                    "meters.key_prefix",
                    "must be at most 64 printable ASCII characters without spaces or braces",
                );
                ok = false;
                String::new()
            }
        };
        let batch = match m.batch.as_ref().map(|b| (b, b.get_ref())) {
            None => None,
            Some((_, BatchRaw::Text(t))) if t == "auto" => None,
            Some((_, BatchRaw::Int(n))) if (1..=1_000_000).contains(n) => Some(*n as u64),
            Some((b, _)) => {
                self.err(
                    b,
                    "meters.batch",
                    "must be \"auto\" or a whole number from 1 to 1000000",
                );
                ok = false;
                None
            }
        };
        let on_down = match m.on_redis_down.as_ref().map(|o| *o.get_ref()) {
            Some(OnRedisDownRaw::Closed) => OnDown::Closed,
            Some(OnRedisDownRaw::Open) => OnDown::Open,
            Some(OnRedisDownRaw::OpenReads) | None => OnDown::OpenReads,
        };
        let (info, display) = conn?;
        if !ok {
            return None;
        }
        let connection_id = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            m.redis.get_ref().hash(&mut h);
            password.as_deref().hash(&mut h);
            h.finish()
        };
        self.budget_remote = Some(crate::policy::budget_cluster::remote(
            connection_id,
            info.clone(),
            display.clone(),
            key_prefix.clone(),
        ));
        let settings = Settings {
            display,
            connection_id,
            key_prefix,
            batch,
            on_down,
        };
        Some(crate::policy::meter::global().cluster(settings, || {
            crate::policy::meter::redis_store::connector(info)
        }))
    }

    fn proxy(
        &mut self,
        i: usize,
        p: &Spanned<RawProxy>,
        tls_cache: &mut HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>>,
    ) -> Option<Proxy> {
        let p_span = p.span().start;
        let p = p.get_ref();
        let name = p.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            self.err(
                &p.name,
                format!("proxies[{i}].name"),
                "must be 1-64 characters of a-z, 0-9, '-' or '_' (it is the first path segment)",
            );
        }
        let key = format!("proxies[{i}].upstream");
        let parsed = match parse_upstream(p.upstream.get_ref()) {
            Ok(u) => Some(u),
            Err(m) => {
                self.err(&p.upstream, &key, m);
                None
            }
        };
        let ca_file = p
            .ca_file
            .as_ref()
            .map(|c| (c, self.base_dir.join(c.get_ref())));
        let oauth_https = matches!(
            p.auth.as_ref().map(|a| a.get_ref()),
            Some(crate::credentials::RawAuth::Oauth2 { token_url, .. }) if token_url.starts_with("https://")
        );
        let mut tls = None;
        if let Some(u) = &parsed {
            if u.https {
                let cache_key = ca_file.as_ref().map(|(_, p)| p.clone());
                let config = match tls_cache.get(&cache_key) {
                    Some(c) => Some(c.clone()),
                    None => match crate::net::tls::client_config(cache_key.as_deref()) {
                        Ok(c) => {
                            tls_cache.insert(cache_key, c.clone());
                            Some(c)
                        }
                        Err(m) => {
                            match &ca_file {
                                Some((s, _)) => self.err(s, format!("proxies[{i}].ca_file"), m),
                                None => self.err(&p.upstream, &key, m),
                            }
                            None
                        }
                    },
                };
                let server_name = rustls::pki_types::ServerName::try_from(u.host.clone());
                match (config, server_name) {
                    (Some(config), Ok(server_name)) => {
                        tls = Some(TlsTarget {
                            config,
                            server_name,
                        })
                    }
                    (_, Err(_)) => {
                        self.err(&p.upstream, &key, "host is not a valid TLS server name")
                    }
                    _ => {}
                }
            } else if let Some((s, _)) = &ca_file
                && !oauth_https
            {
                self.err(
                    s,
                    format!("proxies[{i}].ca_file"),
                    "ca_file is only used with an https upstream or OAuth2 token_url",
                );
            }
        }
        let u = parsed?;
        if u.https && tls.is_none() {
            return None;
        }
        if !name_ok {
            return None;
        }
        let addr = u
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, u.port));
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (u.https, &u.host, u.port, ca_file.as_ref().map(|(_, p)| p)).hash(&mut h);
            h.finish()
        };
        let meter = self.meter(i, p);
        let auth = match &p.auth {
            None => None,
            Some(a) => {
                let what = format!(
                    "{}:{}: proxies[{i}].auth",
                    self.file,
                    self.line_at(a.span().start)
                );
                let mut resolve = |r: &str| self.resolve(r, &what);
                match crate::credentials::OutboundAuth::compile_with(a.get_ref(), &mut resolve) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        self.err(a, format!("proxies[{i}].auth.{}", e.field), e.message);
                        return None;
                    }
                }
            }
        };
        let mut redact = self.redaction(i, p);
        let budgets = self.budgets(i, p, &mut redact);
        let path_params = match &p.path_params {
            None => crate::http::canon::PathParams::default(),
            Some(v) => {
                crate::http::canon::PathParams::from_name(v.get_ref()).unwrap_or_else(|| {
                    self.err(
                        v,
                        format!("proxies[{i}].path_params"),
                        format!("unknown value {:?} (refuse | strip)", v.get_ref()),
                    );
                    crate::http::canon::PathParams::default()
                })
            }
        };
        let default_effect = p
            .default_effect
            .as_ref()
            .map(|e| *e.get_ref())
            .unwrap_or(Effect::Deny);
        let raw_rules: Vec<crate::policy::authz::RawRule> =
            p.rules.iter().map(|r| r.get_ref().clone()).collect();
        let rules = match crate::policy::authz::RuleSet::compile(&raw_rules, default_effect) {
            Ok((set, warnings)) => {
                for w in warnings {
                    // a finding about one rule sits on that rule's line
                    let rule = w
                        .strip_prefix("rules[")
                        .and_then(|r| r.split_once("]: "))
                        .and_then(|(j, rest)| {
                            Some((p.rules.get(j.parse::<usize>().ok()?)?, j, rest))
                        });
                    match rule {
                        Some((r, j, rest)) => {
                            let line = self.line_at(r.span().start);
                            self.proxy_warnings.push(format!(
                                "{}:{line}: proxies[{i}].rules[{j}] ({name}): {rest}",
                                self.file
                            ));
                        }
                        None => {
                            let line = self.line_at(p_span);
                            self.proxy_warnings
                                .push(format!("{}:{line}: proxies[{i}] ({name}): {w}", self.file));
                        }
                    }
                }
                self.unknown_principals(i, name, p);
                Some(set)
            }
            Err(errs) => {
                self.list_errors(errs, "rules", &p.rules, &format!("proxies[{i}]."));
                None
            }
        };
        let raw_scanners: Vec<crate::scan::RawScanner> =
            p.scanners.iter().map(|r| r.get_ref().clone()).collect();
        let scanners = match crate::scan::ScanSet::compile(&raw_scanners) {
            Ok(set) if set.is_empty() => None,
            Ok(set) => Some(set),
            Err(errs) => {
                self.list_errors(errs, "scanners", &p.scanners, &format!("proxies[{i}]."));
                None
            }
        };
        let rules = rules?;
        let mcp = self.mcp_proxy(i, p, &rules)?;
        // the token endpoint's TLS: the proxy's ca_file (if any) plus the webpki roots
        let oauth = match auth.as_ref().and_then(|a| a.oauth2_shared()) {
            None => None,
            Some(client) => {
                let tls = if client.token_url.https {
                    let cache_key = ca_file.as_ref().map(|(_, p)| p.clone());
                    match tls_cache.get(&cache_key) {
                        Some(c) => Some(c.clone()),
                        None => match crate::net::tls::client_config(cache_key.as_deref()) {
                            Ok(c) => {
                                tls_cache.insert(cache_key, c.clone());
                                Some(c)
                            }
                            Err(m) => {
                                self.err(&p.upstream, format!("proxies[{i}].ca_file"), m);
                                return None;
                            }
                        },
                    }
                } else {
                    None
                };
                Some(crate::credentials::token_source::global().bind(name, client, tls))
            }
        };
        let forward_cookies = p.forward_cookies.unwrap_or(false);
        let request_filter = {
            let mut names: Vec<&[u8]> = crate::http::hop::REQUEST_STRIPPED.to_vec();
            names.extend(crate::identity::CREDENTIAL_HEADERS);
            if !forward_cookies {
                names.push(b"cookie");
            }
            if redact.is_some() || auth.is_some() {
                // redacted responses, and responses that may reflect the injected secret
                // (masked), are asked for uncompressed (request::Outbound::finish)
                names.push(b"accept-encoding");
            }
            if let Some(a) = &auth {
                names.extend(a.owned_headers().into_iter().map(str::as_bytes));
            }
            crate::http::hop::HeaderFilter::new(names)
        };
        Some(Proxy {
            // set by `forward()` once `[forward]` is read
            intercept: false,
            mcp,
            holds: Vec::new(),
            rules,
            scanners,
            request_filter,
            name_arc: Arc::from(name.as_str()),
            meter,
            auth,
            redact,
            budgets,
            oauth,
            forward_cookies,
            path_params,
            underscore_headers: crate::http::hop::Underscores::default(),
            name: name.clone(),
            upstream: Upstream {
                https: u.https,
                host: u.host,
                port: u.port,
                explicit_port: u.explicit_port,
                authority: u.authority,
                base_path: u.base_path,
                addr,
                tls,
                pool_key,
            },
            default_effect,
        })
    }
}

pub(crate) struct ParsedUpstream {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub explicit_port: bool,
    pub authority: String,
    pub base_path: String,
}

/// `http[s]://host[:port][/base/path]`. No userinfo, query or fragment. The base path must be
/// canonical; a trailing slash is dropped (`/api/` and `/api` are the same base).
pub(crate) fn parse_upstream(url: &str) -> Result<ParsedUpstream, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{url:?}: the upstream must be an http:// or https:// URL"
        ));
    };
    if rest.contains(['?', '#']) {
        return Err(format!("{url:?}: an upstream URL has no query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "{url:?}: credentials in the URL are not allowed; use auth"
        ));
    }
    let (host, port_str) = if let Some(h) = authority.strip_prefix('[') {
        let end = h
            .find(']')
            .ok_or_else(|| format!("{url:?}: unterminated IPv6 address"))?;
        let after = &h[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{url:?}: invalid authority")),
        };
        (format!("[{}]", &h[..end]), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok {
        return Err(format!("{url:?}: invalid host"));
    }
    if host.starts_with('[')
        && host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_err()
    {
        return Err(format!("{url:?}: invalid IPv6 address"));
    }
    let default_port = if https { 443 } else { 80 };
    let port = match port_str {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{url:?}: invalid port"))?,
    };
    let base_path = if path.is_empty() || path == "/" {
        String::new()
    } else {
        let c =
            canon::canonicalize(path.as_bytes()).map_err(|e| format!("{url:?}: base path: {e}"))?;
        let c = c.trim_end_matches('/').to_string();
        if c != path.trim_end_matches('/') {
            return Err(format!(
                "{url:?}: base path is not canonical (it would be {c:?})"
            ));
        }
        c
    };
    let explicit_port = port_str.is_some();
    let authority = if explicit_port {
        format!("{host}:{port}")
    } else {
        host.clone()
    };
    Ok(ParsedUpstream {
        https,
        host,
        port,
        explicit_port,
        authority,
        base_path,
    })
}

/// Findings about the security posture of a valid config (`check` prints them; `run` logs
/// them): each names the risk and the fix. Warnings, not errors: the config is what the
/// operator wrote, and a lab setup may mean it.
fn posture_warnings(
    file: &str,
    server: &Server,
    identity: &crate::identity::Identity,
    proxies: &[Proxy],
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = &server.admin_token {
        let b = t.expose();
        let lower = String::from_utf8_lossy(b).to_ascii_lowercase();
        if ["example", "change-me", "changeme", "change_me"]
            .iter()
            .any(|w| lower.contains(w))
        {
            out.push(format!(
                "{file}: server.admin_token is the example token from the docs: anyone who has \
                 read them can reload the config and read the audit trail; make a random one \
                 (`head -c 32 /dev/urandom | base64 > admin.token`)"
            ));
        } else if b.len() < 16 {
            out.push(format!(
                "{file}: server.admin_token is only {} bytes: a guessable token opens reload \
                 and audit reads; use at least 32 random bytes (`head -c 32 /dev/urandom | base64`)",
                b.len()
            ));
        }
    }
    if let Some(a) = server.admin_listen
        && !a.ip().is_loopback()
    {
        out.push(format!(
            "{file}: server.admin_listen {a} is not loopback: the admin API is plain HTTP, so \
             its bearer token crosses the network in clear; listen on 127.0.0.1 (and reach it \
             through an SSH tunnel or a TLS-terminating proxy)"
        ));
    }
    let open: Vec<String> = server
        .listen
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
    if !identity.required() && !open.is_empty() {
        let injecting: Vec<&str> = proxies
            .iter()
            .filter(|p| p.auth.is_some() || p.oauth.is_some())
            .map(|p| p.name.as_str())
            .collect();
        if !injecting.is_empty() {
            out.push(format!(
                "{file}: calls are anonymous (no [[agents]] or [[jwt]]) on {} and proxies {:?} \
                 inject a credential: anyone who can reach the gateway calls those APIs as you; \
                 add agent keys (`portcullis agent add`) or listen on 127.0.0.1 only",
                open.join(", "),
                injecting
            ));
        }
    }
    for p in proxies {
        let u = &p.upstream;
        let loopback = u.host == "localhost" || u.host == "[::1]" || u.host.starts_with("127.");
        if !u.https && !loopback && (p.auth.is_some() || p.oauth.is_some()) {
            out.push(format!(
                "{file}: proxy {:?} sends its credential over plain http to {}: anyone on the \
                 path can read it; use an https:// upstream (with `ca_file` for an internal CA)",
                p.name, u.authority
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posture_warnings_name_the_risk_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("weak"), "abc\n").unwrap();
        std::fs::write(dir.path().join("ex"), "example-admin-token-change-me\n").unwrap();
        std::fs::write(
            dir.path().join("good"),
            "Zk3pQ9vL0sX2mN7bR4tW8yC1dF6hJ5aE\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("cred"), "tok\n").unwrap();
        let warn = |server: &str, proxy: &str| -> Vec<String> {
            let toml = format!(
                "[server]\n{server}\n[[proxies]]\nname = \"p\"\n{proxy}\ndefault_effect = \"allow\"\n"
            );
            compile_str("t.toml", &toml, dir.path())
                .unwrap_or_else(|e| panic!("{e}"))
                .warnings
        };
        let plain = "upstream = \"http://127.0.0.1:9\"";
        let w = warn(
            "listen = [\"127.0.0.1:1\"]\nadmin_listen = \"127.0.0.1:2\"\nadmin_token = \"file:weak\"",
            plain,
        );
        assert!(
            w.iter().any(|w| w.contains("admin_token is only 3 bytes")),
            "{w:?}"
        );
        let w = warn(
            "listen = [\"127.0.0.1:1\"]\nadmin_listen = \"127.0.0.1:2\"\nadmin_token = \"file:ex\"",
            plain,
        );
        assert!(w.iter().any(|w| w.contains("the example token")), "{w:?}");
        let w = warn(
            "listen = [\"127.0.0.1:1\"]\nadmin_listen = \"0.0.0.0:2\"\nadmin_token = \"file:good\"",
            plain,
        );
        assert_eq!(
            w.iter().filter(|w| w.contains("admin_token")).count(),
            0,
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("admin_listen 0.0.0.0:2 is not loopback")),
            "{w:?}"
        );
        // anonymous on a non-loopback listener with an injected credential
        let cred = "upstream = \"https://api.example.com\"\nauth = { scheme = \"bearer\", secret = \"file:cred\" }";
        let w = warn("listen = [\"0.0.0.0:1\"]", cred);
        assert!(
            w.iter()
                .any(|w| w.contains("calls are anonymous") && w.contains("[\"p\"]")),
            "{w:?}"
        );
        let w = warn("listen = [\"127.0.0.1:1\"]", cred);
        assert!(!w.iter().any(|w| w.contains("anonymous")), "{w:?}");
        let w = warn(
            "listen = [\"0.0.0.0:1\"]",
            "upstream = \"https://api.example.com\"",
        );
        assert!(
            !w.iter().any(|w| w.contains("anonymous")),
            "no credential, no finding: {w:?}"
        );
        // a credential over plain http to a non-loopback host; loopback is fine
        let w = warn(
            "listen = [\"127.0.0.1:1\"]",
            "upstream = \"http://10.0.0.5:8080\"\nauth = { scheme = \"bearer\", secret = \"file:cred\" }",
        );
        assert!(
            w.iter()
                .any(|w| w.contains("over plain http to 10.0.0.5:8080")),
            "{w:?}"
        );
        let w = warn(
            "listen = [\"127.0.0.1:1\"]",
            "upstream = \"http://127.0.0.1:8080\"\nauth = { scheme = \"bearer\", secret = \"file:cred\" }",
        );
        assert!(!w.iter().any(|w| w.contains("plain http")), "{w:?}");
    }

    fn errs(toml: &str) -> Vec<String> {
        match compile_str("t.toml", toml, Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const OK: &str = "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[proxies]]\nname = \"crm\"\nupstream = \"http://127.0.0.1:9/api/\"\ndefault_effect = \"allow\"\n";

    #[test]
    fn minimal_compiles() {
        let c = compile_str("t.toml", OK, Path::new(".")).unwrap();
        let p = &c.proxies[0];
        assert_eq!(p.upstream.base_path, "/api");
        assert_eq!(p.upstream.authority, "127.0.0.1:9");
        assert_eq!(p.upstream.addr, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(c.proxy_index("crm"), Some(0));
        assert_eq!(c.limits.max_head, 16 * 1024);
    }

    #[test]
    fn proxies_sharing_an_upstream_are_warned_about() {
        let toml = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"https://x.example/api\"\n[[proxies]]\nname = \"b\"\nupstream = \"https://x.example/api/\"\n[[proxies]]\nname = \"c\"\nupstream = \"https://x.example/api/v2\"\n";
        let c = compile_str("t.toml", toml, Path::new(".")).unwrap();
        let w: Vec<&String> = c
            .warnings
            .iter()
            .filter(|w| w.contains("ambiguous"))
            .collect();
        assert_eq!(w.len(), 1, "{:?}", c.warnings);
        assert!(w[0].contains("\"a\" and \"b\""), "{w:?}");
    }

    #[test]
    fn error_table_names_file_line_and_key() {
        let table: &[(&str, &str, &str)] = &[
            (
                "unknown key",
                "[server]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n",
                "t.toml:3: bogus: unknown field",
            ),
            (
                "bad duration",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nhead_timeout = \"5 parsecs\"\n",
                "t.toml:4: limits.head_timeout: invalid duration",
            ),
            (
                "bad size",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nmax_request_body = \"1 lots\"\n",
                "t.toml:4: limits.max_request_body: invalid size",
            ),
            (
                "body memory below one body",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nmax_request_body = \"2MiB\"\nmax_body_memory = \"1MiB\"\n",
                "t.toml:5: limits.max_body_memory: must be at least limits.max_request_body",
            ),
            (
                "missing upstream",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\n",
                "upstream: missing field",
            ),
            (
                "ftp",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"ftp://x\"\n",
                "t.toml:5: proxies[0].upstream: \"ftp://x\": the upstream must be",
            ),
            (
                "dup name",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"http://x\"\n[[proxies]]\nname = \"a\"\nupstream = \"http://y\"\n",
                "t.toml:7: proxies[1].name: duplicate proxy name",
            ),
            (
                "empty listen",
                "[server]\nlisten = []\n",
                "t.toml:2: server.listen: at least one",
            ),
            (
                "bad addr",
                "[server]\nlisten = [\"localhost\"]\n",
                "t.toml:2: server.listen[0]: \"localhost\" is not an IP:port",
            ),
            ("syntax", "[server\nlisten = []\n", "t.toml:1:"),
            (
                "bad name",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"A/B\"\nupstream = \"http://x\"\n",
                "t.toml:4: proxies[0].name: must be",
            ),
            (
                "base not canonical",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"http://x/a/../b\"\n",
                "base path is not canonical",
            ),
            (
                "ca_file on http",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"http://x\"\nca_file = \"ca.pem\"\n",
                "t.toml:6: proxies[0].ca_file: ca_file is only used",
            ),
            (
                "bad effect",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"http://x\"\ndefault_effect = \"maybe\"\n",
                "t.toml:6: default_effect: unknown variant",
            ),
            (
                "bad default proxy",
                "[server]\nlisten = [\"127.0.0.1:1\"]\ndefault_proxy = \"x\"\n",
                "t.toml:3: server.default_proxy: no proxy named \"x\"",
            ),
            (
                "bad underscore_headers",
                "[server]\nlisten = [\"127.0.0.1:1\"]\nunderscore_headers = \"fold\"\n",
                "t.toml:3: server.underscore_headers: unknown value \"fold\" (drop | refuse | pass)",
            ),
            (
                "bad path_params",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"http://x\"\npath_params = \"keep\"\n",
                "t.toml:6: proxies[0].path_params: unknown value \"keep\" (refuse | strip)",
            ),
            (
                "literal token",
                "[server]\nlisten = [\"127.0.0.1:1\"]\nadmin_token = \"hunter2\"\n",
                "t.toml:3: server.admin_token: expected a reference",
            ),
            (
                "audit on_error",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"a\"\non_error = \"ignore\"\n",
                "t.toml:5: audit.on_error: must be \"continue\" or \"refuse\"",
            ),
            (
                "audit head_file inside dir",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"a\"\nhead_file = \"a/head.json\"\n",
                "t.toml:5: audit.head_file: must be outside the audit directory",
            ),
            (
                "audit literal signing key",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"a\"\nsigning_key = \"00ff\"\n",
                "t.toml:5: audit.signing_key: expected a reference",
            ),
            (
                "audit signing key not a key",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"a\"\nsigning_key = \"env:PORTCULLIS_TEST_NOT_A_KEY_XYZ\"\n",
                "t.toml:5: audit.signing_key: environment variable",
            ),
            (
                "audit retain_files",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"a\"\nretain_files = 1\n",
                "t.toml:5: audit.retain_files: must be at least 2",
            ),
            (
                "audit checkpoint_records",
                "[server]\nlisten = [\"127.0.0.1:1\"]\n[audit]\ndir = \"a\"\ncheckpoint_records = 0\n",
                "t.toml:5: audit.checkpoint_records: must be between",
            ),
        ];
        for (name, toml, want) in table {
            let e = errs(toml);
            assert!(
                e.iter().any(|l| l.contains(want)),
                "{name}: got {e:?}, want {want:?}"
            );
        }
        // a literal secret is never echoed in the error
        assert!(
            !errs("[server]\nlisten = [\"127.0.0.1:1\"]\nadmin_token = \"hunter2\"\n")
                .concat()
                .contains("hunter2")
        );
    }

    #[test]
    fn all_errors_are_reported() {
        let e = errs(
            "[server]\nlisten = [\"x\"]\n[limits]\nhead_timeout = \"1y\"\nidle_timeout = \"0s\"\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn upstream_urls() {
        let u = parse_upstream("https://API.example.com").unwrap();
        assert!(
            u.https && u.port == 443 && u.authority == "api.example.com" && u.base_path.is_empty()
        );
        let u = parse_upstream("http://[::1]:8080/v2/").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.base_path.as_str()
            ),
            ("[::1]", 8080, "[::1]:8080", "/v2")
        );
        for bad in [
            "http://",
            "http://u:p@x",
            "http://x:0",
            "http://x:99999",
            "http://x/?q",
            "http://x y",
            "http://[::1",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}
