//! `[state]`, `[approvals]`, `[[admins]]` and the `hold`/`ttl` of `approve` rules, compiled.
//! A child of `compile.rs` (it extends `Cx`); errors are `file:line: key: message` like the
//! rest.
use super::Cx;
use crate::config::raw::RawConfig;
use crate::policy::authz::Effect;
use crate::secrets::Secret;
use crate::state::{ApprovalsConfig, Hold, Location, Notify};
use crate::util::units::parse_duration;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// What an admin identity may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Logs, telemetry, metrics; reading approvals.
    Viewer,
    /// + deciding approvals (within `proxies`).
    Approver,
    /// + operations (reload); what `server.admin_token` is.
    Operator,
}

/// One `[[admins]]` identity.
pub struct Admin {
    pub id: String,
    pub key_sha256: [u8; 32],
    pub role: Role,
    /// The proxies this identity may decide for (`None`: all).
    pub proxies: Option<Vec<String>>,
    /// The RFC 6238 secret (raw bytes, decoded from base32): approvals need the current code.
    pub totp: Option<Arc<Secret>>,
}

/// The compiled `[state]` / `[approvals]` / `[[admins]]`.
#[derive(Default)]
pub struct StateSections {
    pub location: Option<Location>,
    pub approvals: Option<ApprovalsConfig>,
    pub admins: Vec<Admin>,
}

/// RFC 4648 base32 (no padding needed, case-insensitive, spaces ignored): how TOTP secrets
/// are written.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            b'=' | b' ' => continue,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl Cx<'_> {
    fn opt_duration(
        &mut self,
        v: &Option<String>,
        span: &Spanned<impl Sized>,
        key: &str,
    ) -> Option<Duration> {
        let s = v.as_ref()?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(span, key, m);
                None
            }
        }
    }

    /// The hold and ttl of each rule of proxy `i` (by rule index) and of its default.
    pub(super) fn rule_holds(
        &mut self,
        i: usize,
        rules: &[Spanned<crate::policy::authz::RawRule>],
        default_effect: Effect,
        approvals: bool,
    ) -> Vec<Hold> {
        let mut out = Vec::with_capacity(rules.len());
        let mut any_approve = default_effect == Effect::Approve;
        for (j, r) in rules.iter().enumerate() {
            let raw = r.get_ref();
            let is_approve = raw.effect == "approve";
            any_approve |= is_approve && raw.mode.as_deref() != Some("report");
            let key = |f: &str| format!("proxies[{i}].rules[{j}].{f}");
            let mut h = Hold::default();
            for (field, v) in [("hold", &raw.hold), ("ttl", &raw.ttl)] {
                if v.is_some() && !is_approve {
                    self.err(r, key(field), "only an approve rule holds calls");
                }
            }
            if let Some(d) = self.opt_duration(&raw.hold, r, &key("hold")) {
                if d > Duration::from_secs(3600) {
                    self.err(
                        r,
                        key("hold"),
                        "must be at most 1h (the agent's connection waits that long)",
                    );
                }
                h.hold = d;
            }
            if let Some(d) = self.opt_duration(&raw.ttl, r, &key("ttl")) {
                if d.is_zero() {
                    self.err(r, key("ttl"), "must be greater than zero");
                }
                h.ttl = d;
            }
            if h.ttl < h.hold {
                self.err(r, key("ttl"), "must be at least the rule's hold");
            }
            out.push(h);
        }
        if any_approve && !approvals {
            let span = rules.first().map(|r| r.span().start).unwrap_or(0);
            self.push_error(
                span,
                format!("proxies[{i}]"),
                "approve rules hold calls for a human decision: they need an [approvals] section (with [state] dir or redis)".into(),
            );
        }
        out
    }

    /// `[state]`, `[approvals]`, `[[admins]]`.
    pub(super) fn state_sections(&mut self, raw: &RawConfig) -> StateSections {
        let mut out = StateSections::default();
        let state = raw.state.as_ref();
        let appr = raw.approvals.as_ref();
        // the store location: [state], else [approvals] dir | redis
        let (dir, redis, prefix, section) = match (state, appr) {
            (Some(s), a) => {
                if let Some(a) = a {
                    let a = a.get_ref();
                    for v in [&a.dir, &a.redis].into_iter().flatten() {
                        self.err(
                            v,
                            "approvals",
                            "the store is [state]'s: set dir or redis there only",
                        );
                    }
                }
                let s = s.get_ref();
                (
                    s.dir.as_ref(),
                    s.redis.as_ref(),
                    s.key_prefix.as_ref(),
                    "state",
                )
            }
            (None, Some(a)) => {
                let a = a.get_ref();
                (a.dir.as_ref(), a.redis.as_ref(), None, "approvals")
            }
            (None, None) => (None, None, None, "state"),
        };
        out.location = match (dir, redis) {
            (Some(d), Some(_)) => {
                self.err(d, section, "set dir or redis, not both");
                None
            }
            (Some(d), None) if d.get_ref().is_empty() => {
                self.err(d, format!("{section}.dir"), "must name a directory");
                None
            }
            (Some(d), None) => Some(Location::Dir(self.base_dir.join(d.get_ref()))),
            (None, Some(r)) => {
                if !r.get_ref().starts_with("redis://") {
                    self.err(
                        r,
                        format!("{section}.redis"),
                        "must be a redis://host:port/db URL",
                    );
                    None
                } else {
                    let key_prefix = prefix
                        .map(|p| p.get_ref().clone())
                        .unwrap_or_else(|| "portcullis:".into());
                    Some(Location::Redis {
                        url: r.get_ref().clone(),
                        key_prefix,
                    })
                }
            }
            (None, None) => {
                if let Some(s) = state {
                    self.err(s, "state", "set dir (embedded store) or redis");
                } else if let Some(a) = appr {
                    self.err(
                        a,
                        "approvals",
                        "set [state] dir or redis (or dir / redis here)",
                    );
                }
                None
            }
        };
        if let Some(a) = appr {
            let span = a;
            let a = a.get_ref();
            let max_pending = match &a.max_pending {
                None => 1000,
                Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
                Some(n) => {
                    self.err(n, "approvals.max_pending", "must be between 1 and 1000000");
                    1000
                }
            };
            let retention = self.duration(
                &a.retention,
                "approvals.retention",
                Duration::from_secs(30 * 86_400),
            );
            let console_url = a.console_url.as_ref().and_then(|u| {
                let v = u.get_ref().trim_end_matches('/');
                if v.starts_with("https://") || v.starts_with("http://") {
                    Some(v.to_string())
                } else {
                    self.err(u, "approvals.console_url", "must be an http(s):// URL");
                    None
                }
            });
            let notify = a.notify.as_ref().and_then(|n| {
                let nr = n.get_ref();
                let url = nr.url.get_ref();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    self.err(&nr.url, "approvals.notify.url", "must be an http(s):// URL");
                    return None;
                }
                if let Err(m) = crate::net::url::Url::parse(url) {
                    self.err(&nr.url, "approvals.notify.url", m);
                    return None;
                }
                let slack = match nr.format.as_ref().map(|f| f.get_ref().as_str()) {
                    None | Some("json") => false,
                    Some("slack") => true,
                    Some(_) => {
                        if let Some(f) = &nr.format {
                            self.err(
                                f,
                                "approvals.notify.format",
                                "expected \"json\" or \"slack\"",
                            );
                        }
                        false
                    }
                };
                Some(Notify {
                    url: url.clone(),
                    slack,
                })
            });
            if out.location.is_some() {
                out.approvals = Some(ApprovalsConfig {
                    max_pending,
                    retention,
                    console_url,
                    notify,
                });
            } else {
                let _ = span;
            }
        }
        out.admins = self.admins(raw);
        out
    }

    fn admins(&mut self, raw: &RawConfig) -> Vec<Admin> {
        let agent_keys: Vec<String> = raw
            .agents
            .iter()
            .filter_map(|a| {
                a.get_ref()
                    .key_sha256
                    .as_ref()
                    .map(|k| k.get_ref().to_ascii_lowercase())
            })
            .collect();
        let mut out: Vec<Admin> = Vec::new();
        for (i, a) in raw.admins.iter().enumerate() {
            let r = a.get_ref();
            let key = |f: &str| format!("admins[{i}].{f}");
            let id = r.id.get_ref().clone();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
            {
                self.err(
                    &r.id,
                    key("id"),
                    "1 to 64 characters: letters, digits, - _ . @",
                );
                continue;
            }
            if out.iter().any(|o| o.id == id) {
                self.err(&r.id, key("id"), format!("duplicate admin id {id:?}"));
                continue;
            }
            let hex = r.key_sha256.get_ref().to_ascii_lowercase();
            let Some(key_sha256) = crate::util::hex::decode32(hex.as_bytes()) else {
                self.err(
                    &r.key_sha256,
                    key("key_sha256"),
                    "must be 64 hex digits (SHA-256 of the admin key)",
                );
                continue;
            };
            if agent_keys.contains(&hex) {
                self.err(
                    &r.key_sha256,
                    key("key_sha256"),
                    "is an agent's key: an agent key can never be an admin key",
                );
                continue;
            }
            if out.iter().any(|o| o.key_sha256 == key_sha256) {
                self.err(
                    &r.key_sha256,
                    key("key_sha256"),
                    "two admins share this key",
                );
                continue;
            }
            let role = match r.role.get_ref().as_str() {
                "viewer" => Role::Viewer,
                "approver" => Role::Approver,
                "operator" => Role::Operator,
                _ => {
                    self.err(
                        &r.role,
                        key("role"),
                        "expected \"viewer\", \"approver\" or \"operator\"",
                    );
                    continue;
                }
            };
            let proxies = r.proxies.as_ref().map(|p| {
                for name in p.get_ref() {
                    if !raw
                        .proxies
                        .iter()
                        .any(|x| x.get_ref().name.get_ref() == name)
                    {
                        self.err(p, key("proxies"), format!("no proxy named {name:?}"));
                    }
                }
                p.get_ref().clone()
            });
            let totp = match &r.totp_secret {
                None => None,
                Some(t) => {
                    let what = format!(
                        "{}:{}: {}",
                        self.file,
                        self.line_at(t.span().start),
                        key("totp_secret")
                    );
                    match self.secret(t.get_ref(), &what) {
                        Ok(sec) => {
                            let text = std::str::from_utf8(sec.expose()).ok().map(str::trim);
                            match text.and_then(base32_decode) {
                                Some(b) if b.len() >= 10 => Some(Arc::new(Secret::new(b))),
                                _ => {
                                    self.err(
                                        t,
                                        key("totp_secret"),
                                        "the secret must be base32 (RFC 4648) of at least 80 bits",
                                    );
                                    None
                                }
                            }
                        }
                        Err(e) => {
                            self.err(t, key("totp_secret"), e.to_string());
                            None
                        }
                    }
                }
            };
            out.push(Admin {
                id,
                key_sha256,
                role,
                proxies,
                totp,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::base32_decode;
    use crate::config::compile_str;
    use std::path::Path;
    use std::time::Duration;

    fn errs(toml: &str) -> Vec<String> {
        match compile_str("t.toml", toml, Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const HEAD: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\n";
    const PROXY: &str = "[[proxies]]\nname = \"crm\"\nupstream = \"http://127.0.0.1:9\"\n[[proxies.rules]]\neffect = \"approve\"\nmethods = [\"POST\"]\npath = \"/**\"\n";

    #[test]
    fn approve_rules_need_approvals_and_take_hold_and_ttl() {
        // an approve rule without [approvals]
        let e = errs(&format!("{HEAD}{PROXY}"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:6: proxies[0]: approve rules hold calls"),
            "{e:?}"
        );
        let ok = format!(
            "{HEAD}[state]\ndir = \"st\"\n[approvals]\n{PROXY}hold = \"5s\"\nttl = \"1h\"\n"
        );
        let c = compile_str("t.toml", &ok, Path::new("/base")).unwrap();
        assert_eq!(c.proxies[0].hold_of(Some(0)).hold, Duration::from_secs(5));
        assert_eq!(c.proxies[0].hold_of(Some(0)).ttl, Duration::from_secs(3600));
        assert_eq!(c.proxies[0].hold_of(None).hold, Duration::from_secs(120));
        assert_eq!(
            c.state,
            Some(crate::state::Location::Dir("/base/st".into()))
        );
        assert_eq!(c.approvals.as_ref().map(|a| a.max_pending), Some(1000));
        // [approvals] dir when [state] is absent
        let alt = format!("{HEAD}[approvals]\ndir = \"st2\"\nmax_pending = 3\n{PROXY}");
        let c = compile_str("t.toml", &alt, Path::new("/b")).unwrap();
        assert_eq!(c.state, Some(crate::state::Location::Dir("/b/st2".into())));
        assert_eq!(c.approvals.as_ref().map(|a| a.max_pending), Some(3));
    }

    #[test]
    fn state_and_admin_errors_name_file_line_and_key() {
        let st = "[state]\ndir = \"st\"\n[approvals]\n";
        let cases: &[(&str, &str)] = &[
            (
                "[state]\n",
                "t.toml:3: state: set dir (embedded store) or redis",
            ),
            (
                "[state]\ndir = \"a\"\nredis = \"redis://x\"\n",
                "t.toml:4: state: set dir or redis, not both",
            ),
            (
                "[state]\nredis = \"http://x\"\n[approvals]\n",
                "t.toml:4: state.redis: must be a redis://host:port/db URL",
            ),
            (
                "[state]\ndir = \"a\"\n[approvals]\ndir = \"b\"\n",
                "t.toml:6: approvals: the store is [state]'s",
            ),
            (
                "[approvals]\nmax_pending = 0\ndir = \"a\"\n",
                "t.toml:4: approvals.max_pending: must be between 1 and 1000000",
            ),
            (
                "[approvals]\ndir = \"a\"\nnotify = { url = \"ftp://x\" }\n",
                "t.toml:5: approvals.notify.url: must be an http(s):// URL",
            ),
            (
                "[approvals]\ndir = \"a\"\nnotify = { url = \"http://127.0.0.1:9/hook\", format = \"xml\" }\n",
                "t.toml:5: approvals.notify.format: expected \"json\" or \"slack\"",
            ),
            (
                "[[admins]]\nid = \"a\"\nkey_sha256 = \"zz\"\nrole = \"approver\"\n",
                "t.toml:5: admins[0].key_sha256: must be 64 hex digits",
            ),
            (
                "[[admins]]\nid = \"a\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nrole = \"boss\"\n",
                "t.toml:6: admins[0].role: expected",
            ),
            (
                "[[admins]]\nid = \"a\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nrole = \"viewer\"\nproxies = [\"nope\"]\n",
                "t.toml:7: admins[0].proxies: no proxy named \"nope\"",
            ),
            (
                "[[agents]]\nid = \"bot\"\nkey_sha256 = \"1111111111111111111111111111111111111111111111111111111111111111\"\n[[admins]]\nid = \"a\"\nkey_sha256 = \"1111111111111111111111111111111111111111111111111111111111111111\"\nrole = \"approver\"\n",
                "t.toml:8: admins[0].key_sha256: is an agent's key",
            ),
            (
                "[[admins]]\nid = \"a\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nrole = \"approver\"\ntotp_secret = \"plain\"\n",
                "t.toml:7: admins[0].totp_secret:",
            ),
        ];
        for (body, want) in cases {
            let e = errs(&format!(
                "{HEAD}{body}[[proxies]]\nname = \"crm\"\nupstream = \"http://127.0.0.1:9\"\n"
            ));
            assert!(
                e.iter().any(|x| x.starts_with(want)),
                "{body}: want {want}, got {e:?}"
            );
        }
        // hold on an allow rule; a ttl shorter than the hold
        let e = errs(&format!(
            "{HEAD}{st}[[proxies]]\nname = \"crm\"\nupstream = \"http://127.0.0.1:9\"\n[[proxies.rules]]\neffect = \"allow\"\nmethods = \"*\"\npath = \"/**\"\nhold = \"1s\"\n"
        ));
        assert!(
            e.iter()
                .any(|x| x.contains("proxies[0].rules[0].hold: only an approve rule holds calls")),
            "{e:?}"
        );
        let e = errs(&format!("{HEAD}{st}{PROXY}hold = \"10s\"\nttl = \"5s\"\n"));
        assert!(
            e.iter()
                .any(|x| x.contains("proxies[0].rules[0].ttl: must be at least the rule's hold")),
            "{e:?}"
        );
        let e = errs(&format!("{HEAD}{st}{PROXY}hold = \"soon\"\n"));
        assert!(
            e.iter()
                .any(|x| x.contains("proxies[0].rules[0].hold: invalid duration")),
            "{e:?}"
        );
    }

    #[test]
    fn base32_rfc4648_vectors() {
        assert_eq!(base32_decode("").unwrap(), b"");
        assert_eq!(base32_decode("MY======").unwrap(), b"f");
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw6ytboi").unwrap(), b"foobar");
        assert!(base32_decode("MZ1W").is_none());
    }
}
