//! The URL of a control-plane peer, parsed once at config time.

/// An `http(s)://host[:port]/path` URL of a control-plane peer (OAuth2 token endpoint, JWKS,
/// OpenBao).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` for the Host header.
    pub authority: String,
    /// Path and query, starting with '/'.
    pub path: String,
}

impl Url {
    /// `https://host[:port]/path`; plain `http://` only for loopback hosts (tests, sidecars).
    pub fn parse(url: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("must be an https:// URL".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("needs a host (and no user info)".into());
        }
        if path.contains('#') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("path has characters that need encoding".into());
        }
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let end = h.find(']').ok_or("bad IPv6 literal")?;
            let port = match &h[end + 1..] {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("bad port")?),
            };
            (&authority[..end + 2], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse::<u16>().map_err(|_| "bad port".to_string())?,
        };
        let loopback = matches!(host, "localhost" | "[::1]") || host.starts_with("127.");
        if !https && !loopback {
            return Err("must be https:// (plain http only for localhost)".into());
        }
        Ok(Url {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        for (url, ok) in [
            ("http://127.0.0.1:9000/token", true),
            ("http://localhost/token", true),
            ("https://[::1]:8443/t", true),
            ("https://idp", true),
            ("ftp://idp/t", false),
            ("https://user@idp/t", false),
            ("https://idp:99999/t", false),
            ("https:///t", false),
        ] {
            assert_eq!(Url::parse(url).is_ok(), ok, "{url}");
        }
    }
}
