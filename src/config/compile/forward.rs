//! `[forward]` compiled: the interception CA, each proxy's `intercept`, the blind-tunnel
//! allow-list (string or table entries), and `check`'s warning on a proxy upstream that is a
//! cloud metadata address. A child of `compile.rs` (it extends `Cx`); errors are
//! `file:line: key: message` like the rest.
use super::Cx;
use crate::config::raw::RawConfig;
use crate::config::{Forward, Proxy, TunnelRule};
use std::sync::Arc;
use toml::Spanned;

impl Cx<'_> {
    pub(super) fn forward(
        &mut self,
        raw: &RawConfig,
        proxies: &mut [Proxy],
        warnings: &mut Vec<String>,
    ) -> Option<Forward> {
        // a proxy upstream is the operator's choice (not guarded), but a metadata address
        // there is almost certainly a mistake
        for p in proxies.iter() {
            if let Some(a) = p.upstream.addr
                && crate::net::ssrf::is_metadata(a.ip())
            {
                warnings.push(format!(
                    "{}: proxy {:?}: the upstream {} is a cloud metadata address: every agent \
                     allowed on this proxy can read the instance's credentials",
                    self.file,
                    p.name,
                    a.ip()
                ));
            }
        }
        let Some(f) = &raw.forward else {
            for rp in &raw.proxies {
                if let Some(i) = &rp.get_ref().intercept
                    && *i.get_ref()
                {
                    let k = format!("proxies[{}].intercept", proxy_pos(raw, rp));
                    self.err(i, k, "needs [forward] with a ca");
                }
            }
            return None;
        };
        let fr = f.get_ref();
        let ca = fr.ca.as_ref().and_then(|c| self.forward_ca(c));
        for (i, rp) in raw.proxies.iter().enumerate() {
            let r = rp.get_ref();
            let Some(p) = proxies.iter_mut().find(|p| &p.name == r.name.get_ref()) else {
                continue;
            };
            p.intercept = match &r.intercept {
                Some(v) if *v.get_ref() => {
                    if !p.upstream.https {
                        self.err(
                            v,
                            format!("proxies[{i}].intercept"),
                            "only an https:// upstream is reached through CONNECT",
                        );
                    }
                    if fr.ca.is_none() {
                        self.err(
                            v,
                            format!("proxies[{i}].intercept"),
                            "needs [forward] ca (portcullis ca init)",
                        );
                    }
                    true
                }
                Some(_) => false,
                None => p.upstream.https && fr.ca.is_some(),
            };
        }
        let mut tunnels = Vec::new();
        if let Some(list) = &fr.tunnel {
            for (i, e) in list.get_ref().iter().enumerate() {
                if let Some(t) = self.tunnel_entry(e, &format!("forward.tunnel[{i}]")) {
                    if proxies.iter().any(|p| {
                        p.intercept && p.upstream.port == t.port && p.upstream.host == t.host
                    }) {
                        self.err(
                            e,
                            format!("forward.tunnel[{i}]"),
                            "this origin is intercepted by a proxy: a tunnel to it would carry \
                             calls past its rules",
                        );
                    }
                    tunnels.push(t);
                }
            }
        }
        Some(Forward { ca, tunnels })
    }

    fn forward_ca(
        &mut self,
        c: &Spanned<crate::config::raw::RawForwardCa>,
    ) -> Option<Arc<crate::net::mint::InterceptCa>> {
        let line = self.line_at(c.span().start);
        let r = c.get_ref();
        let read = |this: &mut Self, reference: &str, field: &str| {
            let what = format!("{}:{line}: forward.ca.{field}", this.file);
            match this.secret(reference, &what) {
                Ok(s) => Some(s),
                Err(e) => {
                    this.err(c, format!("forward.ca.{field}"), e.to_string());
                    None
                }
            }
        };
        let cert = read(self, &r.cert, "cert");
        let key = read(self, &r.key, "key");
        let (cert, key) = (cert?, key?);
        match crate::net::mint::InterceptCa::from_pem(cert.expose(), key.expose()) {
            Ok(ca) => Some(Arc::new(ca)),
            Err(e) => {
                self.err(c, "forward.ca", e);
                None
            }
        }
    }

    /// `"host:port"` or `{ host = "host:port", agents, roles, allow_private }`.
    fn tunnel_entry(&mut self, e: &Spanned<toml::Value>, key: &str) -> Option<TunnelRule> {
        let mut rule = TunnelRule {
            host: String::new(),
            port: 0,
            agents: Vec::new(),
            roles: Vec::new(),
            allow_private: false,
            meter: None,
        };
        let mut meter: Option<(u64, std::time::Duration, u64)> = None;
        let origin = match e.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Table(t) => {
                let mut origin = None;
                for (k, v) in t {
                    match (k.as_str(), v) {
                        ("host", toml::Value::String(s)) => origin = Some(s.clone()),
                        ("agents" | "roles", toml::Value::Array(a)) => {
                            let mut names = Vec::new();
                            for x in a {
                                match x.as_str() {
                                    Some(n) if !n.is_empty() => names.push(n.to_string()),
                                    _ => {
                                        self.err(
                                            e,
                                            format!("{key}.{k}"),
                                            "must be an array of non-empty strings",
                                        );
                                        return None;
                                    }
                                }
                            }
                            if k == "agents" {
                                rule.agents = names;
                            } else {
                                rule.roles = names;
                            }
                        }
                        ("allow_private", toml::Value::Boolean(b)) => rule.allow_private = *b,
                        ("meter", toml::Value::Table(m)) => match tunnel_meter(m) {
                            Ok(r) => meter = Some(r),
                            Err(msg) => {
                                self.err(e, format!("{key}.meter"), msg);
                                return None;
                            }
                        },
                        ("host" | "agents" | "roles" | "allow_private" | "meter", _) => {
                            self.err(e, format!("{key}.{k}"), "has the wrong type");
                            return None;
                        }
                        _ => {
                            self.err(
                                e,
                                format!("{key}.{k}"),
                                "unknown key (expected host, agents, roles, allow_private, meter)",
                            );
                            return None;
                        }
                    }
                }
                match origin {
                    Some(o) => o,
                    None => {
                        self.err(e, format!("{key}.host"), "is required");
                        return None;
                    }
                }
            }
            _ => {
                self.err(
                    e,
                    key,
                    "must be \"host:port\" or { host = \"host:port\", agents, roles, allow_private }",
                );
                return None;
            }
        };
        match parse_origin(&origin) {
            Ok((host, port)) => {
                if let Some((rate, per, burst)) = meter {
                    use crate::policy::meter::{MeterBy, MeterSpec, Rate};
                    let spec = MeterSpec {
                        by: MeterBy::Agent,
                        rate: Some(Rate { rate, per, burst }),
                        quota: None,
                    };
                    let name = format!("tunnel:{host}:{port}");
                    rule.meter = Some(crate::policy::meter::global().meter_in(
                        &name,
                        spec,
                        self.cluster.as_ref(),
                    ));
                }
                rule.host = host;
                rule.port = port;
                Some(rule)
            }
            Err(m) => {
                self.err(e, key, m);
                None
            }
        }
    }
}

/// `meter = { rate = N, per = "1m", burst = M }` of a tunnel entry: (rate, per, burst).
fn tunnel_meter(
    m: &toml::map::Map<String, toml::Value>,
) -> Result<(u64, std::time::Duration, u64), String> {
    let count = |v: &toml::Value, k: &str| match v.as_integer() {
        Some(n) if (1..=1_000_000_000).contains(&n) => Ok(n as u64),
        _ => Err(format!("{k} must be a whole number from 1 to 1000000000")),
    };
    let mut rate = None;
    let mut per = std::time::Duration::from_secs(1);
    let mut burst = None;
    for (k, v) in m {
        match k.as_str() {
            "rate" => rate = Some(count(v, "rate")?),
            "burst" => burst = Some(count(v, "burst")?),
            "per" => {
                per = v
                    .as_str()
                    .ok_or("per must be a duration like \"1m\"".to_string())
                    .and_then(crate::util::units::parse_duration)?;
                if per.is_zero() {
                    return Err("per must be longer than 0".into());
                }
            }
            other => return Err(format!("unknown key {other:?} (expected rate, per, burst)")),
        }
    }
    let rate = rate.ok_or("rate is required")?;
    Ok((rate, per, burst.unwrap_or(rate)))
}

fn proxy_pos(raw: &RawConfig, p: &Spanned<crate::config::raw::RawProxy>) -> usize {
    raw.proxies
        .iter()
        .position(|x| std::ptr::eq(x, p))
        .unwrap_or(0)
}

/// `host:port` with a port, `*.` only as the whole first label; host lower-cased, IPv6 in
/// brackets.
pub(crate) fn parse_origin(s: &str) -> Result<(String, u16), String> {
    let bad =
        || format!("{s:?} is not host:port (e.g. \"api.github.com:443\", \"*.pypi.internal:443\")");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() {
        return Err(bad());
    }
    let host = host.to_ascii_lowercase();
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        return Ok((host, port));
    }
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use crate::config::compile_str;

    fn compile(extra: &str) -> Result<crate::config::Compiled, String> {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"https://api.example.com\"\ndefault_effect = \"allow\"\n{extra}"
        );
        compile_str("t.toml", &text, std::path::Path::new("/tmp")).map_err(|e| e.to_string())
    }

    #[test]
    fn tunnel_entries_compile_in_both_forms() {
        let c = compile(
            "[forward]\ntunnel = [\"api.github.com:443\", { host = \"*.pypi.internal:443\", agents = [\"bot\"], roles = [\"ci\"], allow_private = true }, \"[::1]:8443\"]\n",
        )
        .unwrap();
        let f = c.forward.as_ref().unwrap();
        assert_eq!(f.tunnels.len(), 3);
        assert_eq!(f.tunnels[0].host, "api.github.com");
        assert!(f.tunnels[1].allow_private);
        assert_eq!(f.tunnels[1].agents, vec!["bot".to_string()]);
        assert!(f.tunnels[1].matches("files.pypi.internal", 443));
        assert!(!f.tunnels[1].matches("pypi.internal", 443));
        assert!(!f.tunnels[1].matches("evilpypi.internal", 443));
        assert!(!f.tunnels[1].matches("files.pypi.internal", 80));
        assert!(f.tunnels[2].matches("[::1]", 8443));
        assert!(f.tunnels[1].admits(Some("bot"), &[]));
        assert!(f.tunnels[1].admits(Some("x"), &["ci".into()]));
        assert!(!f.tunnels[1].admits(Some("x"), &["dev".into()]));
        assert!(f.tunnels[0].admits(None, &[]));
        // no CA: nothing intercepted
        assert!(!c.proxies[0].intercept);
    }

    #[test]
    fn forward_errors_name_file_line_and_key() {
        let rows: &[(&str, &str)] = &[
            (
                "[forward]\ntunnel = [\"api.github.com\"]\n",
                "t.toml:8: forward.tunnel[0]: ",
            ),
            ("[forward]\ntunnel = [\"a:0\"]\n", "forward.tunnel[0]: "),
            ("[forward]\ntunnel = [\"a b:443\"]\n", "forward.tunnel[0]: "),
            (
                "[forward]\ntunnel = [{ host = \"a:1\", nope = 1 }]\n",
                "forward.tunnel[0].nope: unknown key",
            ),
            (
                "[forward]\ntunnel = [{ agents = [\"x\"] }]\n",
                "forward.tunnel[0].host: is required",
            ),
            (
                "[forward]\ntunnel = [{ host = \"a:1\", allow_private = \"yes\" }]\n",
                "forward.tunnel[0].allow_private: has the wrong type",
            ),
            ("[forward]\ntunnel = [7]\n", "forward.tunnel[0]: must be"),
            (
                "[forward]\nca = { cert = \"file:/nonexistent/ca.pem\", key = \"file:/nonexistent/ca.key\" }\n",
                "forward.ca.cert",
            ),
            ("[forward]\nbogus = 1\n", "bogus"),
            (
                "[forward]\ntunnel = [{ host = \"a:1\", meter = { rate = 0 } }]\n",
                "forward.tunnel[0].meter: rate must be",
            ),
            (
                "[forward]\ntunnel = [{ host = \"a:1\", meter = { per = \"1m\" } }]\n",
                "forward.tunnel[0].meter: rate is required",
            ),
            (
                "[forward]\ntunnel = [{ host = \"a:1\", meter = { rate = 1, per = \"soon\" } }]\n",
                "forward.tunnel[0].meter: ",
            ),
        ];
        for (extra, want) in rows {
            let e = compile(extra).err().unwrap_or_default();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        // intercept without [forward] ca
        let e = compile("").err();
        assert!(e.is_none());
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"https://api.example.com\"\nintercept = true\n";
        let e = compile_str("t.toml", text, std::path::Path::new("/tmp"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("t.toml:6: proxies[0].intercept: needs [forward]"),
            "{e}"
        );
    }

    #[test]
    fn ca_makes_https_proxies_intercept_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::net::mint::generate_ca("t", &[]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert).unwrap();
        std::fs::write(dir.path().join("ca.key"), key).unwrap();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"a\"\nupstream = \"https://api.example.com\"\n[[proxies]]\nname = \"b\"\nupstream = \"https://b.example.com\"\nintercept = false\n[[proxies]]\nname = \"c\"\nupstream = \"http://c.example.com\"\n[forward]\nca = {{ cert = \"file:{0}/ca.pem\", key = \"file:{0}/ca.key\" }}\n",
            dir.path().display()
        );
        let c = compile_str("t.toml", &text, dir.path()).unwrap();
        assert!(c.proxies[0].intercept);
        assert!(!c.proxies[1].intercept);
        assert!(!c.proxies[2].intercept);
        assert_eq!(c.intercepting("api.example.com", 443), Some(0));
        assert_eq!(c.intercepting("b.example.com", 443), None);
        // a tunnel to an intercepted origin is refused
        let bad = format!("{text}tunnel = [\"api.example.com:443\"]\n");
        let e = compile_str("t.toml", &bad, dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("forward.tunnel[0]: this origin is intercepted"),
            "{e}"
        );
    }

    #[test]
    fn check_warns_on_a_metadata_upstream() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[proxies]]\nname = \"m\"\nupstream = \"http://169.254.169.254/latest\"\n";
        let c = compile_str("t.toml", text, std::path::Path::new("/tmp")).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("cloud metadata address")),
            "{:?}",
            c.warnings
        );
    }
}
