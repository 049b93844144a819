//! Request target → proxy. Path-prefix form `/{proxy}/{rest}` and absolute-form
//! `http://host[:port]/base/...`. The path is canonicalised first (the whole of it, proxy
//! segment included), so the path that is routed and checked is the path that is forwarded.
//!
//! Path parameters (`;`, issue 12): the path is first canonicalised keeping `;` as a character,
//! only to find the proxy whose `path_params` policy applies. `refuse` answers 400; `strip`
//! canonicalises again with every segment cut at its `;` (which can lead to another proxy: the
//! path then means what Tomcat would make of it), and that proxy's policy must allow it too.
use crate::config::Compiled;
use crate::error::Refusal;
use crate::http::canon::{self, PathParams};

/// Where a request goes. Offsets refer to the canonical path written into the caller's string
/// and to the raw request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub proxy: usize,
    /// Start of the part of the canonical path below the proxy (its upstream base path is
    /// prepended when forwarding); `rest_start == path.len()` for the bare proxy root.
    pub rest_start: usize,
    /// The query of the raw target, including its '?', as a range into the target.
    pub query: (usize, usize),
}

impl Route {
    /// The canonical path below the proxy, as rules see it (`/` for the bare proxy root).
    pub fn rel_path<'p>(&self, path: &'p str) -> &'p str {
        match &path[self.rest_start..] {
            "" => "/",
            rest => rest,
        }
    }

    /// The raw query string of `target`, without its '?' (empty when there is none).
    pub fn query_str<'t>(&self, target: &'t [u8]) -> &'t [u8] {
        let q = target.get(self.query.0..self.query.1).unwrap_or(b"");
        q.strip_prefix(b"?").unwrap_or(b"")
    }
}

/// `target` is the raw request target; the canonical path is written to `path`.
pub fn resolve(cfg: &Compiled, target: &[u8], path: &mut String) -> Result<Route, Refusal> {
    resolve_for(cfg, None, target, path)
}

/// A request inside an intercepted tunnel to `origin` (`host`, lower-cased, IPv6 in
/// brackets, and port): routed by that origin and the path, as the absolute-form
/// `https://host:port/path` would be. Its `Host` must name the same origin (the port may be
/// left out for 443), and an absolute-form target must too: anything else is 400.
pub fn resolve_in_tunnel(
    cfg: &Compiled,
    origin: (&str, u16),
    host_header: Option<&[u8]>,
    target: &[u8],
    path: &mut String,
) -> Result<Route, Refusal> {
    const OTHER_HOST: Refusal =
        Refusal::BadRequest("the request's Host is not the origin its CONNECT named");
    let h = host_header.ok_or(OTHER_HOST)?;
    let (host, port) = split_authority(h).map_err(|_| OTHER_HOST)?;
    if !same_origin(origin, host, port) {
        return Err(OTHER_HOST);
    }
    resolve_for(cfg, Some(origin), target, path)
}

/// Whether `host[:port]` names `origin` (a missing port means 443: the tunnel carries TLS).
fn same_origin(origin: (&str, u16), host: &str, port: Option<u16>) -> bool {
    host.eq_ignore_ascii_case(origin.0) && port.unwrap_or(443) == origin.1
}

fn resolve_for(
    cfg: &Compiled,
    origin: Option<(&str, u16)>,
    target: &[u8],
    path: &mut String,
) -> Result<Route, Refusal> {
    if !has_params(target) {
        return resolve_with(cfg, origin, target, path, PathParams::Refuse);
    }
    let first = resolve_with(cfg, origin, target, path, PathParams::Keep)?;
    const PARAM: Refusal = Refusal::BadRequest(canon::CanonError::PathParameter.message());
    if cfg.proxies[first.proxy].path_params != PathParams::Strip {
        return Err(PARAM);
    }
    let route = resolve_with(cfg, origin, target, path, PathParams::Strip)?;
    if cfg.proxies[route.proxy].path_params != PathParams::Strip {
        return Err(PARAM);
    }
    Ok(route)
}

/// Whether the path part of `target` holds a `;` or `%3B`.
fn has_params(target: &[u8]) -> bool {
    let path = match memchr::memchr(b'?', target) {
        Some(i) => &target[..i],
        None => target,
    };
    memchr::memchr(b';', path).is_some()
        || memchr::memmem::find_iter(path, b"%3")
            .any(|i| matches!(path.get(i + 2), Some(b'b' | b'B')))
}

fn resolve_with(
    cfg: &Compiled,
    origin: Option<(&str, u16)>,
    target: &[u8],
    path: &mut String,
    params: PathParams,
) -> Result<Route, Refusal> {
    path.clear();
    if target.first() == Some(&b'/') {
        let (p, q) = split_query(target, 0)?;
        canon::canonicalize_with(p, params, path).map_err(|e| Refusal::BadRequest(e.message()))?;
        if let Some((host, port)) = origin {
            // inside an intercepted tunnel: the origin is the CONNECT's
            let proxy = by_origin(cfg, host, Some(port), path)?;
            return Ok(Route {
                proxy,
                rest_start: cfg.proxies[proxy].upstream.base_path.len(),
                query: q,
            });
        }
        let name_end = path[1..].find('/').map_or(path.len(), |i| i + 1);
        return match cfg.proxy_index(&path[1..name_end]) {
            Some(proxy) => Ok(Route {
                proxy,
                rest_start: name_end,
                query: q,
            }),
            None => match cfg.server.default_proxy {
                Some(proxy) => Ok(Route {
                    proxy,
                    rest_start: 0,
                    query: q,
                }),
                None => Err(Refusal::UnknownProxy),
            },
        };
    }
    // absolute-form
    let scheme_len = if starts_with_ci(target, b"http://") {
        7
    } else if starts_with_ci(target, b"https://") {
        8
    } else {
        return Err(Refusal::BadRequest("unsupported request target"));
    };
    let after = &target[scheme_len..];
    let auth_end = after
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(after.len());
    let authority = &after[..auth_end];
    let (host, port) = split_authority(authority)?;
    if let Some(o) = origin
        && !same_origin(o, host, port)
    {
        return Err(Refusal::BadRequest(
            "the request's target is not the origin its CONNECT named",
        ));
    }
    let path_start = scheme_len + auth_end;
    let (p, q) = if target.get(path_start) == Some(&b'/') {
        split_query(target, path_start)?
    } else {
        // `http://host` or `http://host?q`: the path is "/"
        let (_, q) = split_query(target, path_start)?;
        (&b"/"[..], q)
    };
    canon::canonicalize_with(p, params, path).map_err(|e| Refusal::BadRequest(e.message()))?;
    let proxy = by_origin(cfg, host, port, path)?;
    let rest_start = cfg.proxies[proxy].upstream.base_path.len();
    Ok(Route {
        proxy,
        rest_start,
        query: q,
    })
}

fn by_origin(cfg: &Compiled, host: &str, port: Option<u16>, path: &str) -> Result<usize, Refusal> {
    cfg.proxy_for_origin(host, port, path).map_err(|m| match m {
        crate::config::OriginMiss::Unknown => Refusal::UnknownOrigin,
        crate::config::OriginMiss::Ambiguous(..) => Refusal::BadRequest(
            "the absolute-form target matches several proxies equally: use /{proxy}/...",
        ),
    })
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Splits `target[from..]` at the first '?': (path bytes, query range incl. '?').
fn split_query(target: &[u8], from: usize) -> Result<(&[u8], (usize, usize)), Refusal> {
    let rest = &target[from..];
    match memchr::memchr(b'?', rest) {
        None => Ok((rest, (target.len(), target.len()))),
        Some(i) => {
            if memchr::memchr(b'#', &rest[i..]).is_some() {
                return Err(Refusal::BadRequest("fragment in request target"));
            }
            Ok((&rest[..i], (from + i, target.len())))
        }
    }
}

pub(crate) fn split_authority(a: &[u8]) -> Result<(&str, Option<u16>), Refusal> {
    const BAD: Refusal = Refusal::BadRequest("invalid authority in request target");
    let s = std::str::from_utf8(a).map_err(|_| BAD)?;
    if s.is_empty() || s.contains('@') {
        return Err(BAD);
    }
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or(BAD)?;
        let after = &s[end + 1..];
        (&s[..=end], after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| BAD)?),
    };
    if host.is_empty() {
        return Err(BAD);
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_str;
    use std::path::Path;

    fn cfg() -> Compiled {
        compile_str(
            "t.toml",
            r#"
[server]
listen = ["127.0.0.1:1"]
[[proxies]]
name = "crm"
upstream = "https://crm.example.com/api"
default_effect = "allow"
[[proxies]]
name = "crm2"
upstream = "https://crm.example.com/api/v2"
default_effect = "allow"
[[proxies]]
name = "local"
upstream = "http://127.0.0.1:8081"
default_effect = "allow"
"#,
            Path::new("."),
        )
        .unwrap()
    }

    #[test]
    fn default_proxy_takes_unmatched_paths_whole() {
        let c = compile_str(
            "t.toml",
            "[server]\nlisten = [\"127.0.0.1:1\"]\ndefault_proxy = \"b\"\n[[proxies]]\nname = \"a\"\nupstream = \"http://127.0.0.1:2\"\n[[proxies]]\nname = \"b\"\nupstream = \"http://127.0.0.1:3/base\"\n",
            Path::new("."),
        )
        .unwrap();
        let mut path = String::new();
        let r = resolve(&c, b"/a/x", &mut path).unwrap();
        assert_eq!((r.proxy, &path[r.rest_start..]), (0, "/x"));
        let r = resolve(&c, b"/1m.bin?q", &mut path).unwrap();
        assert_eq!((r.proxy, &path[r.rest_start..]), (1, "/1m.bin"));
        let r = resolve(&c, b"/", &mut path).unwrap();
        assert_eq!((r.proxy, &path[r.rest_start..]), (1, "/"));
    }

    /// Issue 12: several proxies on one origin: the longest base path decides, in whatever order
    /// the proxies are written; equal matches are refused, never given to the first.
    #[test]
    fn absolute_form_takes_the_longest_base_path_in_any_config_order() {
        let proxies = [
            ("root", "https://api.example.com"),
            ("v1", "https://api.example.com/v1"),
            ("v1-admin", "https://api.example.com/v1/admin"),
            ("other-port", "https://api.example.com:8443/v1/admin/x"),
            ("twin-a", "http://twin.example.com/t"),
            ("twin-b", "http://twin.example.com/t"),
            ("plain", "http://mixed.example.com/m"),
            ("tls", "https://mixed.example.com/m"),
        ];
        // (target, proxy or refusal code)
        let table: &[(&str, Result<&str, &str>)] = &[
            ("http://api.example.com/v1/admin/users", Ok("v1-admin")),
            ("http://api.example.com/v1/admin", Ok("v1-admin")),
            ("http://api.example.com/v1/administrators", Ok("v1")),
            ("http://api.example.com/v1/accounts", Ok("v1")),
            ("http://api.example.com/v2", Ok("root")),
            ("http://api.example.com", Ok("root")),
            ("http://api.example.com:8443/v1/admin/x/y", Ok("other-port")),
            ("http://api.example.com:8443/v1", Err("unknown_origin")),
            ("http://twin.example.com/t/x", Err("bad_request")),
            ("http://twin.example.com/u", Err("unknown_origin")),
            // a port-less target matches the http (80) and https (443) twins equally
            ("http://mixed.example.com/m/x", Err("bad_request")),
            ("http://mixed.example.com:443/m/x", Ok("tls")),
            ("http://mixed.example.com:80/m/x", Ok("plain")),
        ];
        for reversed in [false, true] {
            let mut order: Vec<_> = proxies.to_vec();
            if reversed {
                order.reverse();
            }
            let mut toml = String::from("[server]\nlisten = [\"127.0.0.1:1\"]\n");
            for (name, up) in &order {
                toml.push_str(&format!(
                    "[[proxies]]\nname = \"{name}\"\nupstream = \"{up}\"\ndefault_effect = \"allow\"\n"
                ));
            }
            let c = compile_str("t.toml", &toml, Path::new(".")).unwrap();
            let mut path = String::new();
            for (target, want) in table {
                let got = resolve(&c, target.as_bytes(), &mut path)
                    .map(|r| c.proxies[r.proxy].name.as_str())
                    .map_err(|e| e.code());
                assert_eq!(got, *want, "{target} (reversed: {reversed})");
            }
        }
    }

    #[test]
    fn path_params_policy_table() {
        let c = compile_str(
            "t.toml",
            r#"
[server]
listen = ["127.0.0.1:1"]
[[proxies]]
name = "refuse"
upstream = "https://api.example.com/r"
default_effect = "allow"
[[proxies]]
name = "strip"
upstream = "https://api.example.com/s"
default_effect = "allow"
path_params = "strip"
[[proxies]]
name = "strip2"
upstream = "http://127.0.0.1:8082"
default_effect = "allow"
path_params = "strip"
"#,
            Path::new("."),
        )
        .unwrap();
        // (target, proxy name and rest below it, or the refusal code)
        type Want = Result<(&'static str, &'static str), &'static str>;
        let table: &[(&str, Want)] = &[
            ("/refuse/v1/accounts/42", Ok(("refuse", "/v1/accounts/42"))),
            ("/refuse/v1/accounts/..;/admin", Err("bad_request")),
            ("/refuse/v1/accounts/..%3b/admin", Err("bad_request")),
            ("/refuse/v1/a;jsessionid=1", Err("bad_request")),
            ("/refuse/v1/a?x=;", Ok(("refuse", "/v1/a"))),
            ("/strip/v1/accounts/..;/admin", Ok(("strip", "/v1/admin"))),
            (
                "/strip/v1/accounts;v=2/42",
                Ok(("strip", "/v1/accounts/42")),
            ),
            ("/strip/v1/..%3B/..;/strip2/x", Ok(("strip2", "/x"))),
            // stripping leads into a proxy that refuses parameters
            ("/strip/..;/refuse/admin", Err("bad_request")),
            // a refusing proxy's path that strips into a stripping one is refused all the same
            ("/refuse/..;/strip/x", Err("bad_request")),
            ("/strip/%2e%2e;/x", Err("bad_request")),
            (
                "http://api.example.com/s/v1/a/..;/b",
                Ok(("strip", "/v1/b")),
            ),
            ("http://api.example.com/r/v1/a/..;/b", Err("bad_request")),
            // what Tomcat makes of it: /s/../r/admin is /r/admin, the refusing proxy
            ("http://api.example.com/s/..;/r/admin", Err("bad_request")),
        ];
        let mut path = String::new();
        for (target, want) in table {
            let got = resolve(&c, target.as_bytes(), &mut path);
            match (got, want) {
                (Ok(r), Ok((name, rest))) => {
                    assert_eq!(&c.proxies[r.proxy].name, name, "{target}");
                    assert_eq!(&path[r.rest_start..], *rest, "{target}");
                    assert!(!path.contains(';'), "{target}");
                }
                (Err(e), Err(code)) => assert_eq!(e.code(), *code, "{target}"),
                (got, want) => panic!("{target}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn routing_table() {
        let c = cfg();
        // (target, proxy name, canonical path, rest, query) or the refusal code
        type Want = Result<(&'static str, &'static str, &'static str, &'static str), &'static str>;
        let table: &[(&str, Want)] = &[
            (
                "/crm/v1/accounts/42?x=1",
                Ok(("crm", "/crm/v1/accounts/42", "/v1/accounts/42", "?x=1")),
            ),
            ("/crm", Ok(("crm", "/crm", "", ""))),
            ("/crm/", Ok(("crm", "/crm/", "/", ""))),
            ("/crm//v1/./a/../b", Ok(("crm", "/crm/v1/b", "/v1/b", ""))),
            ("/local/x?", Ok(("local", "/local/x", "/x", "?"))),
            ("/other/../crm/x", Ok(("crm", "/crm/x", "/x", ""))),
            ("/nope/x", Err("unknown_proxy")),
            ("/", Err("unknown_proxy")),
            ("/CRM/x", Err("unknown_proxy")),
            ("/crm/a%2fb", Err("bad_request")),
            ("/crm/x?a#b", Err("bad_request")),
            (
                "http://crm.example.com/api/v1/x?q",
                Ok(("crm", "/api/v1/x", "/v1/x", "?q")),
            ),
            (
                "http://CRM.example.com:443/api",
                Ok(("crm", "/api", "", "")),
            ),
            (
                "http://crm.example.com/api/v2/y",
                Ok(("crm2", "/api/v2/y", "/y", "")),
            ),
            (
                "http://crm.example.com/api/v20",
                Ok(("crm", "/api/v20", "/v20", "")),
            ),
            ("http://crm.example.com/apix", Err("unknown_origin")),
            ("http://crm.example.com:8443/api/x", Err("unknown_origin")),
            ("http://evil.example.com/api/x", Err("unknown_origin")),
            ("http://127.0.0.1:8081", Ok(("local", "/", "/", ""))),
            ("http://127.0.0.1:8081/a/%2e%2e/b", Err("bad_request")),
            ("http://user@crm.example.com/api", Err("bad_request")),
            ("ftp://crm.example.com/api", Err("bad_request")),
            ("*", Err("bad_request")),
        ];
        let mut path = String::new();
        for (target, want) in table {
            let got = resolve(&c, target.as_bytes(), &mut path);
            match (got, want) {
                (Ok(r), Ok((name, canon, rest, query))) => {
                    assert_eq!(&c.proxies[r.proxy].name, name, "{target}");
                    assert_eq!(&path, canon, "{target}");
                    assert_eq!(&path[r.rest_start..], *rest, "{target}");
                    assert_eq!(&target[r.query.0..r.query.1], *query, "{target}");
                }
                (Err(e), Err(code)) => assert_eq!(e.code(), *code, "{target}"),
                (got, want) => panic!("{target}: got {got:?}, want {want:?}"),
            }
        }
    }
}
