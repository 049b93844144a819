//! `[[audit.sinks]]`: the TOML as written ([`RawSink`]) and its compiled form ([`SinkConfig`]).
//! `config::compile` calls [`compile`] for each entry and places the errors it returns on the
//! line of the value they name (`file:line: audit.sinks[N].key: message`).
#![forbid(unsafe_code)]

use crate::net::url::Url;
use crate::secrets::Secret;
use crate::util::units::parse_duration;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// One `[[audit.sinks]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// `http`: the endpoint (`https://…`; `http://` for loopback only).
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// `http`: `"ndjson"` (default) | `"splunk_hec"` | `"elastic_bulk"`.
    #[serde(default)]
    pub format: Option<Spanned<String>>,
    /// `http`: `{ type = "bearer", token = REF [, scheme = "Bearer"] }` |
    /// `{ type = "header", name = "X-…", value = REF }` | `{ type = "basic", user = "…", password = REF }`.
    #[serde(default)]
    pub auth: Option<Spanned<RawAuth>>,
    /// `elastic_bulk`: the index or data stream (required); `splunk_hec`: the index (optional).
    #[serde(default)]
    pub index: Option<Spanned<String>>,
    /// `splunk_hec`: the sourcetype (default `portcullis:audit`).
    #[serde(default)]
    pub sourcetype: Option<Spanned<String>>,
    /// `syslog`: `host:port` of the receiver.
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    /// `syslog`: `"tcp"` (default) | `"tls"` | `"udp"`.
    #[serde(default)]
    pub transport: Option<Spanned<String>>,
    /// `syslog` with `tls`: the name in the receiver's certificate (default: the host of `address`).
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
    /// `syslog`: APP-NAME (default `portcullis`).
    #[serde(default)]
    pub app_name: Option<Spanned<String>>,
    /// `syslog`: a facility name (`auth`, `authpriv`, `local0` … `local7`, …; default `authpriv`).
    #[serde(default)]
    pub facility: Option<Spanned<String>>,
    /// `syslog`: HOSTNAME (default: this host's name).
    #[serde(default)]
    pub hostname: Option<Spanned<String>>,
    /// Extra CA certificates (PEM) for `https://` / `tls`.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// Records per delivery (default 500, 1 … 10000).
    #[serde(default)]
    pub batch: Option<Spanned<i64>>,
    /// One delivery attempt, connect to acknowledgement (default `10s`).
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// Longest wait between retries (default `30s`; they start at 100 ms and double).
    #[serde(default)]
    pub retry_max: Option<Spanned<String>>,
    /// Retention may delete files this sink has not delivered once they are older than this
    /// (the sink counts a gap). Default: retention waits for the sink.
    #[serde(default)]
    pub max_lag: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// A compiled sink.
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub batch: usize,
    pub timeout: Duration,
    pub retry_max: Duration,
    pub max_lag: Option<Duration>,
}

pub enum SinkKind {
    Http(HttpSink),
    Syslog(SyslogSink),
}

pub struct HttpSink {
    pub url: Url,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub format: HttpFormat,
    pub auth: Option<HttpAuth>,
    pub index: Option<String>,
    pub sourcetype: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFormat {
    Ndjson,
    SplunkHec,
    ElasticBulk,
    /// `type = "otlp"`: OTLP/HTTP logs, protobuf.
    OtlpLogs,
}

/// The header that authenticates to an `http` sink.
pub struct HttpAuth {
    pub header: String,
    /// The whole header value (`Bearer …`, `Basic …`, or the raw value).
    pub value: Secret,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Udp,
}

pub struct SyslogSink {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub app_name: String,
    pub facility: u8,
    pub hostname: String,
}

impl SinkConfig {
    /// What the sink is, without its secrets: a reload compares these to warn that sink
    /// changes take effect at the next start.
    pub fn describe(&self) -> String {
        let dest = match &self.kind {
            SinkKind::Http(h) => format!(
                "{:?} {}{} {:?} {:?}",
                h.format, h.url.authority, h.url.path, h.index, h.sourcetype
            ),
            SinkKind::Syslog(s) => format!(
                "syslog {:?} {}:{} {} {} {}",
                s.transport, s.host, s.port, s.app_name, s.facility, s.hostname
            ),
        };
        format!(
            "{} {dest} {} {:?} {:?} {:?}",
            self.name, self.batch, self.timeout, self.retry_max, self.max_lag
        )
    }
}

/// RFC 5424 facility codes by name.
const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// A config error: byte offset in the file, key (without the `audit.sinks[N].` prefix), message.
pub type SinkError = (usize, String, String);

/// PRINTUSASCII, 1 … `max` characters (RFC 5424 header fields).
fn print_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (33..=126).contains(&b))
}

/// This host's name for the syslog HOSTNAME field, `-` if unknown.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| print_ascii(h, 255))
        .unwrap_or_else(|| "-".into())
}

/// Compiles one entry. `secret` resolves a reference (`env:`, `file:`, `vault:`, `kv:`).
pub fn compile(
    raw: &RawSink,
    base_dir: &Path,
    secret: &mut dyn FnMut(&str, &str) -> Result<Secret, String>,
) -> Result<SinkConfig, Vec<SinkError>> {
    let mut errs: Vec<SinkError> = Vec::new();
    let at = |s: &Spanned<String>| s.span().start;
    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        errs.push((
            at(&raw.name),
            "name".into(),
            "must be 1 to 64 letters, digits, '_' or '-' (it names the cursor file and the metrics)".into(),
        ));
    }
    let dur = |v: &Option<Spanned<String>>, key: &str, default, errs: &mut Vec<SinkError>| match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push((at(s), key.into(), "must be greater than zero".into()));
                default
            }
            Err(m) => {
                errs.push((at(s), key.into(), m));
                default
            }
        },
    };
    let timeout = dur(&raw.timeout, "timeout", Duration::from_secs(10), &mut errs);
    let retry_max = dur(
        &raw.retry_max,
        "retry_max",
        Duration::from_secs(30),
        &mut errs,
    );
    let max_lag = raw
        .max_lag
        .as_ref()
        .map(|_| dur(&raw.max_lag, "max_lag", Duration::ZERO, &mut errs));
    let batch = match &raw.batch {
        None => 500,
        Some(b) => match usize::try_from(*b.get_ref()) {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                errs.push((
                    b.span().start,
                    "batch".into(),
                    "must be between 1 and 10000 records".into(),
                ));
                500
            }
        },
    };
    let tls = |errs: &mut Vec<SinkError>| -> Option<Arc<rustls::ClientConfig>> {
        let ca = raw.ca_file.as_ref().map(|c| base_dir.join(c.get_ref()));
        match crate::net::tls::client_config(ca.as_deref()) {
            Ok(c) => Some(c),
            Err(m) => {
                let off = raw.ca_file.as_ref().map_or(at(&raw.kind), at);
                errs.push((off, "ca_file".into(), m));
                None
            }
        }
    };
    // keys that belong to the other type are mistakes, not silently ignored
    let not_for = |errs: &mut Vec<SinkError>, keys: &[(&str, Option<usize>)], ty: &str| {
        for (k, off) in keys {
            if let Some(o) = off {
                errs.push((
                    *o,
                    (*k).into(),
                    format!("is not a setting of type = \"{ty}\""),
                ));
            }
        }
    };
    let kind = match raw.kind.get_ref().as_str() {
        ty @ ("http" | "otlp") => {
            not_for(
                &mut errs,
                &[
                    ("address", raw.address.as_ref().map(at)),
                    ("transport", raw.transport.as_ref().map(at)),
                    ("server_name", raw.server_name.as_ref().map(at)),
                    ("app_name", raw.app_name.as_ref().map(at)),
                    ("facility", raw.facility.as_ref().map(at)),
                    ("hostname", raw.hostname.as_ref().map(at)),
                ],
                ty,
            );
            if ty == "otlp" {
                not_for(
                    &mut errs,
                    &[
                        ("format", raw.format.as_ref().map(at)),
                        ("index", raw.index.as_ref().map(at)),
                        ("sourcetype", raw.sourcetype.as_ref().map(at)),
                    ],
                    ty,
                );
            }
            let url = match &raw.url {
                None => {
                    errs.push((
                        at(&raw.kind),
                        "url".into(),
                        format!("is required for type = {ty:?}"),
                    ));
                    None
                }
                Some(u) => match Url::parse(u.get_ref()) {
                    Ok(p) => Some(p),
                    Err(m) => {
                        errs.push((at(u), "url".into(), m));
                        None
                    }
                },
            };
            let format = match raw.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
                _ if ty == "otlp" => HttpFormat::OtlpLogs,
                None | Some((_, "ndjson")) => HttpFormat::Ndjson,
                Some((_, "splunk_hec")) => HttpFormat::SplunkHec,
                Some((_, "elastic_bulk")) => HttpFormat::ElasticBulk,
                Some((f, _)) => {
                    errs.push((
                        at(f),
                        "format".into(),
                        "must be \"ndjson\", \"splunk_hec\" or \"elastic_bulk\"".into(),
                    ));
                    HttpFormat::Ndjson
                }
            };
            let index = raw.index.as_ref().map(|i| i.get_ref().clone());
            if format == HttpFormat::ElasticBulk && index.as_deref().is_none_or(str::is_empty) {
                let off = raw.index.as_ref().map_or(at(&raw.kind), at);
                errs.push((
                    off,
                    "index".into(),
                    "is required for format = \"elastic_bulk\" (the index or data stream)".into(),
                ));
            }
            if ty == "http"
                && format == HttpFormat::Ndjson
                && let Some(i) = &raw.index
            {
                errs.push((
                    at(i),
                    "index".into(),
                    "is a setting of format = \"splunk_hec\" or \"elastic_bulk\"".into(),
                ));
            }
            if ty == "http"
                && format != HttpFormat::SplunkHec
                && let Some(s) = &raw.sourcetype
            {
                errs.push((
                    at(s),
                    "sourcetype".into(),
                    "is a setting of format = \"splunk_hec\"".into(),
                ));
            }
            let auth = raw
                .auth
                .as_ref()
                .and_then(|a| match http_auth(a.get_ref(), secret) {
                    Ok(v) => Some(v),
                    Err(m) => {
                        errs.push((a.span().start, "auth".into(), m));
                        None
                    }
                });
            let tls = match &url {
                Some(u) if u.https => tls(&mut errs),
                _ => None,
            };
            url.map(|url| {
                SinkKind::Http(HttpSink {
                    url,
                    tls,
                    format,
                    auth,
                    index,
                    sourcetype: raw
                        .sourcetype
                        .as_ref()
                        .map_or_else(|| "portcullis:audit".into(), |s| s.get_ref().clone()),
                })
            })
        }
        "syslog" => {
            not_for(
                &mut errs,
                &[
                    ("url", raw.url.as_ref().map(at)),
                    ("format", raw.format.as_ref().map(at)),
                    ("index", raw.index.as_ref().map(at)),
                    ("sourcetype", raw.sourcetype.as_ref().map(at)),
                    ("auth", raw.auth.as_ref().map(|a| a.span().start)),
                ],
                "syslog",
            );
            let transport = match raw.transport.as_ref().map(|t| (t, t.get_ref().as_str())) {
                None | Some((_, "tcp")) => Transport::Tcp,
                Some((_, "tls")) => Transport::Tls,
                Some((_, "udp")) => Transport::Udp,
                Some((t, _)) => {
                    errs.push((
                        at(t),
                        "transport".into(),
                        "must be \"tcp\", \"tls\" or \"udp\"".into(),
                    ));
                    Transport::Tcp
                }
            };
            let addr = match &raw.address {
                None => {
                    errs.push((
                        at(&raw.kind),
                        "address".into(),
                        "is required for type = \"syslog\" (host:port)".into(),
                    ));
                    None
                }
                Some(a) => match host_port(a.get_ref()) {
                    Some(hp) => Some(hp),
                    None => {
                        errs.push((
                            at(a),
                            "address".into(),
                            format!("{:?} is not host:port", a.get_ref()),
                        ));
                        None
                    }
                },
            };
            let app_name = match &raw.app_name {
                None => "portcullis".to_string(),
                Some(a) if print_ascii(a.get_ref(), 48) => a.get_ref().clone(),
                Some(a) => {
                    errs.push((
                        at(a),
                        "app_name".into(),
                        "must be 1 to 48 printable ASCII characters without spaces (RFC 5424)"
                            .into(),
                    ));
                    String::new()
                }
            };
            let hostname = match &raw.hostname {
                None => local_hostname(),
                Some(h) if print_ascii(h.get_ref(), 255) => h.get_ref().clone(),
                Some(h) => {
                    errs.push((
                        at(h),
                        "hostname".into(),
                        "must be 1 to 255 printable ASCII characters without spaces (RFC 5424)"
                            .into(),
                    ));
                    String::new()
                }
            };
            let facility = match &raw.facility {
                None => 10,
                Some(f) => match FACILITIES.iter().find(|(n, _)| n == f.get_ref()) {
                    Some((_, c)) => *c,
                    None => {
                        errs.push((at(f), "facility".into(), "must be a syslog facility name (auth, authpriv, daemon, local0 … local7, …)".into()));
                        10
                    }
                },
            };
            if transport != Transport::Tls {
                if let Some(s) = &raw.server_name {
                    errs.push((
                        at(s),
                        "server_name".into(),
                        "is a setting of transport = \"tls\"".into(),
                    ));
                }
                if let Some(c) = &raw.ca_file {
                    errs.push((
                        at(c),
                        "ca_file".into(),
                        "is a setting of transport = \"tls\"".into(),
                    ));
                }
            }
            let tls = match (&addr, transport) {
                (Some((host, _)), Transport::Tls) => {
                    let sni = raw.server_name.as_ref().map_or_else(
                        || {
                            host.trim_start_matches('[')
                                .trim_end_matches(']')
                                .to_string()
                        },
                        |s| s.get_ref().clone(),
                    );
                    match (tls(&mut errs), rustls::pki_types::ServerName::try_from(sni)) {
                        (Some(c), Ok(n)) => Some((c, n)),
                        (_, Err(_)) => {
                            let off = raw.server_name.as_ref().map_or(at(&raw.kind), at);
                            errs.push((
                                off,
                                "server_name".into(),
                                "is not a valid TLS server name".into(),
                            ));
                            None
                        }
                        (None, Ok(_)) => None,
                    }
                }
                _ => None,
            };
            addr.map(|(host, port)| {
                SinkKind::Syslog(SyslogSink {
                    host,
                    port,
                    transport,
                    tls,
                    app_name,
                    facility,
                    hostname,
                })
            })
        }
        other => {
            errs.push((
                at(&raw.kind),
                "type".into(),
                format!("{other:?}: must be \"http\", \"syslog\" or \"otlp\""),
            ));
            None
        }
    };
    match kind {
        Some(kind) if errs.is_empty() => Ok(SinkConfig {
            name,
            kind,
            batch,
            timeout,
            retry_max,
            max_lag,
        }),
        _ => Err(errs),
    }
}

/// `host:port` (`[v6]:port` for IPv6).
fn host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let port: u16 = p.parse().ok().filter(|&p| p != 0)?;
    if h.is_empty() || h.contains(char::is_whitespace) {
        return None;
    }
    if h.contains(':') && !(h.starts_with('[') && h.ends_with(']')) {
        return None;
    }
    Some((h.to_string(), port))
}

pub fn http_auth(
    a: &RawAuth,
    secret: &mut dyn FnMut(&str, &str) -> Result<Secret, String>,
) -> Result<HttpAuth, String> {
    let need = |v: &Option<String>, k: &str| -> Result<String, String> {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("type = {:?} needs {k}", a.kind))
    };
    let unexpected = |keys: &[(&str, bool)]| -> Result<(), String> {
        match keys.iter().find(|(_, set)| *set) {
            Some((k, _)) => Err(format!("{k} is not a setting of type = {:?}", a.kind)),
            None => Ok(()),
        }
    };
    match a.kind.as_str() {
        "bearer" => {
            unexpected(&[
                ("name", a.name.is_some()),
                ("value", a.value.is_some()),
                ("user", a.user.is_some()),
                ("password", a.password.is_some()),
            ])?;
            let token = secret(&need(&a.token, "token")?, "token")?;
            let scheme = a.scheme.clone().unwrap_or_else(|| "Bearer".into());
            if !print_ascii(&scheme, 32) {
                return Err("scheme must be one word".into());
            }
            let mut v = Vec::with_capacity(scheme.len() + 1 + token.expose().len());
            v.extend_from_slice(scheme.as_bytes());
            v.push(b' ');
            v.extend_from_slice(token.expose());
            header_value(&v)?;
            Ok(HttpAuth {
                header: "Authorization".into(),
                value: Secret::new(v),
            })
        }
        "header" => {
            unexpected(&[
                ("token", a.token.is_some()),
                ("scheme", a.scheme.is_some()),
                ("user", a.user.is_some()),
                ("password", a.password.is_some()),
            ])?;
            let name = need(&a.name, "name")?;
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
            {
                return Err(format!("name {name:?} is not a header name"));
            }
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "host" | "content-length" | "connection" | "transfer-encoding" | "content-type"
            ) {
                return Err(format!("name {name:?} is set by the gateway"));
            }
            let value = secret(&need(&a.value, "value")?, "value")?;
            header_value(value.expose())?;
            Ok(HttpAuth {
                header: name,
                value,
            })
        }
        "basic" => {
            unexpected(&[
                ("token", a.token.is_some()),
                ("scheme", a.scheme.is_some()),
                ("name", a.name.is_some()),
                ("value", a.value.is_some()),
            ])?;
            use base64::Engine;
            let user = need(&a.user, "user")?;
            if user.contains(':') {
                return Err("user must not contain ':'".into());
            }
            let password = secret(&need(&a.password, "password")?, "password")?;
            let mut plain = zeroize::Zeroizing::new(Vec::new());
            plain.extend_from_slice(user.as_bytes());
            plain.push(b':');
            plain.extend_from_slice(password.expose());
            let mut v = b"Basic ".to_vec();
            v.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(plain.as_slice())
                    .as_bytes(),
            );
            Ok(HttpAuth {
                header: "Authorization".into(),
                value: Secret::new(v),
            })
        }
        other => Err(format!(
            "type {other:?}: must be \"bearer\", \"header\" or \"basic\""
        )),
    }
}

/// A header value may not carry CR, LF or NUL (it would split the request).
fn header_value(v: &[u8]) -> Result<(), String> {
    if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        Err("the secret holds a line break or NUL; it cannot be sent as a header".into())
    } else {
        Ok(())
    }
}
