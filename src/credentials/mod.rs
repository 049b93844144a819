//! Outbound auth: how the target credential is put on the upstream request (`[[proxies]] auth`).
//! Sans-io: `OutboundAuth::apply` takes the outbound request's method, path, query, headers,
//! body and `now`, and yields the header(s) / query parameter to add. OAuth2 client-credentials
//! tokens come from an `OAuthTokenCache` (a sans-io state machine); the gateway performs the
//! token request I/O with `OAuth2Client::build_token_request` / `parse_token_response`.
//!
//! Header values produced here hold secrets: they are `Zeroizing` and belong in the outbound
//! head buffer only (upstream/request.rs), never in logs or audit records.
mod outbound;
pub mod sigv4;
pub mod token_source;
pub use self::outbound::OutboundRequest;
use self::sigv4::{SigV4Credentials, SigV4Options};
use crate::http::hop::{valid_header_name, valid_header_value};
use crate::net::url::Url;
use crate::secrets::kv::KvEntry;
use crate::secrets::{Secret, SecretRef, SecretRefError};
use crate::util::hex;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Error code (HTTP 502) when the target credential could not be obtained or applied.
/// How often a call waiting for a `kv:` re-read looks again.
const KV_WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(10);

pub const UPSTREAM_AUTH_FAILED: &str = "upstream_auth_failed";

fn d_sig_header() -> String {
    "X-Signature".into()
}
fn d_ts_header() -> String {
    "X-Timestamp".into()
}
fn d_sts() -> String {
    "{method}\n{path}\n{timestamp}\n{body_sha256}".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacEncoding {
    #[default]
    Hex,
    Base64,
}

/// How the client authenticates to the OAuth2 token endpoint.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `Authorization: Basic` (RFC 6749 §2.3.1, the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// `auth = { scheme = "...", ... }` as written. Every `secret` is a reference
/// (`vault:NAME`, `env:VAR`, `file:PATH`), never a literal.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "scheme", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawAuth {
    /// `Authorization: Bearer <secret>`.
    Bearer { secret: String },
    /// `<header>: <secret>`.
    Header { header: String, secret: String },
    /// `Authorization: Basic base64(username:secret)`.
    Basic { username: String, secret: String },
    /// `?<param>=<secret>` appended to the query.
    Query { param: String, secret: String },
    /// HMAC-SHA256 over a string built from the request; signature and timestamp headers.
    Hmac {
        secret: String,
        #[serde(default = "d_sig_header")]
        header: String,
        #[serde(default = "d_ts_header")]
        timestamp_header: String,
        /// Placeholders: {method} {path} {query} {timestamp} {body_sha256}.
        #[serde(default = "d_sts")]
        string_to_sign: String,
        #[serde(default)]
        encoding: HmacEncoding,
    },
    /// AWS SigV4. `access_key_id` may be a literal or a reference; `secret` is the secret
    /// access key; `session_token` (optional) a reference.
    Sigv4 {
        access_key_id: String,
        secret: String,
        region: String,
        service: String,
        #[serde(default)]
        session_token: Option<String>,
    },
    /// OAuth2 client credentials; `secret` is the client secret.
    Oauth2 {
        token_url: String,
        client_id: String,
        secret: String,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        auth_method: ClientAuthMethod,
    },
}

/// A config error in `auth`: the field and the message (the config layer adds file:line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth.{field}: {message}")]
pub struct AuthConfigError {
    pub field: &'static str,
    pub message: String,
}

fn cfg_err(field: &'static str, message: impl Into<String>) -> AuthConfigError {
    AuthConfigError {
        field,
        message: message.into(),
    }
}

/// Why a credential could not be applied (→ 502 `upstream_auth_failed`, or
/// `secret_unavailable` for a `kv:` secret that cannot be served).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthApplyError {
    #[error("no OAuth2 access token is available")]
    NoToken,
    #[error("{0}")]
    SecretUnavailable(&'static str),
    #[error("{0}")]
    SigV4(#[from] sigv4::SigV4Error),
}

impl AuthApplyError {
    pub fn status(&self) -> u16 {
        502
    }
    pub fn code(&self) -> &'static str {
        match self {
            AuthApplyError::SecretUnavailable(_) => "secret_unavailable",
            _ => UPSTREAM_AUTH_FAILED,
        }
    }
}

/// application/x-www-form-urlencoded / query component encoding (unreserved kept).
pub fn form_encode(out: &mut Vec<u8>, v: &[u8]) {
    sigv4::uri_encode(out, v, false);
}

/// A compiled `string_to_sign` piece: a byte range of the template, or a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Lit(usize, usize),
    Method,
    Path,
    Query,
    Timestamp,
    BodySha256,
}

fn compile_template(t: &str) -> Result<Vec<Piece>, AuthConfigError> {
    let mut out = Vec::new();
    let mut lit_start = 0;
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{' {
            let end = t[i..]
                .find('}')
                .map(|e| i + e)
                .ok_or_else(|| cfg_err("string_to_sign", "unclosed '{'"))?;
            let p = match &t[i + 1..end] {
                "method" => Piece::Method,
                "path" => Piece::Path,
                "query" => Piece::Query,
                "timestamp" => Piece::Timestamp,
                "body_sha256" => Piece::BodySha256,
                other => {
                    return Err(cfg_err(
                        "string_to_sign",
                        format!(
                            "unknown placeholder {{{other}}} (use {{method}} {{path}} {{query}} {{timestamp}} {{body_sha256}})"
                        ),
                    ));
                }
            };
            if lit_start < i {
                out.push(Piece::Lit(lit_start, i));
            }
            out.push(p);
            i = end + 1;
            lit_start = i;
        } else {
            i += 1;
        }
    }
    if lit_start < b.len() {
        out.push(Piece::Lit(lit_start, b.len()));
    }
    Ok(out)
}

/// OAuth2 client-credentials client (config side).
pub struct OAuth2Client {
    pub token_url: Url,
    pub client_id: String,
    secret: Secret,
    pub scope: Option<String>,
    pub auth_method: ClientAuthMethod,
}

/// A token request for the gateway to send (`POST token_url.path` to `token_url.authority`).
pub struct TokenRequest {
    pub method: &'static str,
    /// Content-Type, Accept and (client_secret_basic) Authorization.
    pub headers: Vec<(&'static str, Zeroizing<Vec<u8>>)>,
    pub body: Zeroizing<Vec<u8>>,
}

/// Why a token refresh failed. Never carries the token or the client secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("token endpoint refused: {0}")]
    Endpoint(String),
    #[error("token response: {0}")]
    BadResponse(&'static str),
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
}

/// Tokens without `expires_in` are assumed to live this long.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 300;

impl OAuth2Client {
    /// The `client_credentials` request.
    pub fn build_token_request(&self) -> TokenRequest {
        let mut body = Zeroizing::new(b"grant_type=client_credentials".to_vec());
        if let Some(s) = &self.scope {
            body.extend_from_slice(b"&scope=");
            form_encode(&mut body, s.as_bytes());
        }
        let mut headers: Vec<(&'static str, Zeroizing<Vec<u8>>)> = vec![
            (
                "Content-Type",
                Zeroizing::new(b"application/x-www-form-urlencoded".to_vec()),
            ),
            ("Accept", Zeroizing::new(b"application/json".to_vec())),
        ];
        match self.auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                let mut creds = Zeroizing::new(Vec::new());
                form_encode(&mut creds, self.client_id.as_bytes());
                creds.push(b':');
                form_encode(&mut creds, self.secret.expose());
                let mut v = Zeroizing::new(b"Basic ".to_vec());
                let enc = Zeroizing::new(B64.encode(&*creds));
                v.extend_from_slice(enc.as_bytes());
                headers.push(("Authorization", v));
            }
            ClientAuthMethod::ClientSecretPost => {
                body.extend_from_slice(b"&client_id=");
                form_encode(&mut body, self.client_id.as_bytes());
                body.extend_from_slice(b"&client_secret=");
                form_encode(&mut body, self.secret.expose());
            }
        }
        TokenRequest {
            method: "POST",
            headers,
            body,
        }
    }

    /// Parses the token endpoint's answer into (access token, lifetime seconds).
    pub fn parse_token_response(status: u16, body: &[u8]) -> Result<(Secret, u64), OAuthError> {
        #[derive(Deserialize)]
        struct Resp {
            access_token: Option<String>,
            token_type: Option<String>,
            expires_in: Option<serde_json::Value>,
            error: Option<String>,
        }
        let parsed: Option<Resp> = serde_json::from_slice(body).ok();
        if !(200..300).contains(&status) {
            if let Some(Resp { error: Some(e), .. }) = parsed {
                let code: String = e
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect();
                return Err(OAuthError::Endpoint(code));
            }
            return Err(OAuthError::Status(status));
        }
        let r = parsed.ok_or(OAuthError::BadResponse("not a JSON object"))?;
        let tok = r
            .access_token
            .filter(|t| !t.is_empty())
            .map(Zeroizing::new)
            .ok_or(OAuthError::BadResponse("no access_token"))?;
        if !valid_header_value(tok.as_bytes()) || tok.len() > 16 * 1024 {
            return Err(OAuthError::BadResponse(
                "access_token is not a valid header value",
            ));
        }
        if let Some(tt) = &r.token_type
            && !tt.eq_ignore_ascii_case("bearer")
        {
            return Err(OAuthError::BadResponse("token_type is not bearer"));
        }
        let lifetime = match &r.expires_in {
            None | Some(serde_json::Value::Null) => DEFAULT_TOKEN_LIFETIME_SECS,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| *f >= 0.0 && f.is_finite())
                        .map(|f| f as u64)
                })
                .ok_or(OAuthError::BadResponse("bad expires_in"))?,
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| OAuthError::BadResponse("bad expires_in"))?,
            Some(_) => return Err(OAuthError::BadResponse("bad expires_in")),
        };
        Ok((Secret::new(tok.as_bytes().to_vec()), lifetime))
    }
}

/// A compiled outbound auth. No secret in its `Debug`.
pub enum OutboundAuth {
    /// Header name and full value (e.g. `Authorization`, `Bearer tok`).
    Static {
        header: String,
        value: SecretSource,
    },
    Query {
        param: String,
        value: SecretSource,
    },
    Hmac {
        key: SecretSource,
        header: String,
        timestamp_header: String,
        template: String,
        pieces: Vec<Piece>,
        encoding: HmacEncoding,
    },
    SigV4 {
        access_key_id: String,
        secret: SecretSource,
        session_token: Option<SecretSource>,
        region: String,
        service: String,
        opts: SigV4Options,
    },
    /// Shared with the process-wide token source (`oauth.rs`), which sends its requests.
    OAuth2(std::sync::Arc<OAuth2Client>),
}

impl std::fmt::Debug for OutboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundAuth::Static { header, .. } => f
                .debug_struct("Static")
                .field("header", header)
                .finish_non_exhaustive(),
            OutboundAuth::Query { param, .. } => f
                .debug_struct("Query")
                .field("param", param)
                .finish_non_exhaustive(),
            OutboundAuth::Hmac {
                header,
                timestamp_header,
                template,
                encoding,
                ..
            } => f
                .debug_struct("Hmac")
                .field("header", header)
                .field("timestamp_header", timestamp_header)
                .field("string_to_sign", template)
                .field("encoding", encoding)
                .finish_non_exhaustive(),
            OutboundAuth::SigV4 {
                access_key_id,
                region,
                service,
                session_token,
                ..
            } => f
                .debug_struct("SigV4")
                .field("access_key_id", access_key_id)
                .field("region", region)
                .field("service", service)
                .field("session_token", &session_token.as_ref().map(|_| "<secret>"))
                .finish_non_exhaustive(),
            OutboundAuth::OAuth2(c) => f
                .debug_struct("OAuth2")
                .field("token_url", &c.token_url)
                .field("client_id", &c.client_id)
                .field("scope", &c.scope)
                .field("auth_method", &c.auth_method)
                .finish_non_exhaustive(),
        }
    }
}

/// Headers produced by `apply`: name and (secret-bearing) value.
pub type AuthHeaders<'a> = Vec<(&'a str, Zeroizing<Vec<u8>>)>;

/// A resolved secret reference: a value fixed at compile time, or a `kv:` entry whose current
/// value is read per call.
pub enum Resolved {
    Fixed(Secret),
    Kv(Arc<KvEntry>),
}

/// How a secret becomes the bytes put on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// As is, checked to be a valid header value.
    Header,
    /// `Bearer <secret>`.
    Bearer,
    /// `Basic base64(username:secret)`.
    Basic(String),
    /// Form/query-encoded.
    Form,
    /// As is (a signing key).
    Bytes,
}

const CONTROL_CHARS: &str =
    "the secret contains control characters (CR, LF, NUL...) and cannot go in a header";

fn shape_secret(shape: &Shape, raw: &[u8]) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    if raw.is_empty() {
        return Err("the secret is empty");
    }
    let mut v = Zeroizing::new(Vec::with_capacity(raw.len() + 16));
    match shape {
        Shape::Header | Shape::Bytes => v.extend_from_slice(raw),
        Shape::Bearer => {
            v.extend_from_slice(b"Bearer ");
            v.extend_from_slice(raw);
        }
        Shape::Basic(user) => {
            let mut creds = Zeroizing::new(user.as_bytes().to_vec());
            creds.push(b':');
            creds.extend_from_slice(raw);
            v.extend_from_slice(b"Basic ");
            v.extend_from_slice(Zeroizing::new(B64.encode(&*creds)).as_bytes());
        }
        Shape::Form => form_encode(&mut v, raw),
    }
    if matches!(shape, Shape::Header | Shape::Bearer) && !valid_header_value(&v) {
        return Err(CONTROL_CHARS);
    }
    Ok(v)
}

/// Where a credential's secret comes from: fixed at compile time (already shaped), or the
/// current value of a `kv:` entry (shaped per call).
pub enum SecretSource {
    Fixed(Secret),
    Kv { entry: Arc<KvEntry>, shape: Shape },
}

/// The bytes of a secret for one call.
pub enum Exposed<'a> {
    Borrowed(&'a [u8]),
    Owned(Zeroizing<Vec<u8>>),
}

impl std::ops::Deref for Exposed<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Exposed::Borrowed(b) => b,
            Exposed::Owned(v) => v,
        }
    }
}

impl SecretSource {
    /// The (shaped) secret for a call (a `kv:` value must still be servable now).
    pub fn get(&self) -> Result<Exposed<'_>, AuthApplyError> {
        match self {
            SecretSource::Fixed(s) => Ok(Exposed::Borrowed(s.expose())),
            SecretSource::Kv { entry, shape } => {
                let v = entry
                    .current(crate::util::clock::mono_ns())
                    .map_err(AuthApplyError::SecretUnavailable)?;
                shape_secret(shape, v.expose())
                    .map(Exposed::Owned)
                    .map_err(|_| {
                        AuthApplyError::SecretUnavailable(
                            "the kv secret is empty or cannot go in a header",
                        )
                    })
            }
        }
    }

    pub fn kv_entry(&self) -> Option<&Arc<KvEntry>> {
        match self {
            SecretSource::Kv { entry, .. } => Some(entry),
            SecretSource::Fixed(_) => None,
        }
    }
}

type Resolver<'r> = dyn FnMut(&str) -> Result<Resolved, SecretRefError> + 'r;

/// A secret field used per call: fixed values are shaped now; `kv:` values are checked now
/// (their current value) and shaped per call.
fn source_field(
    field: &'static str,
    reference: &str,
    resolve: &mut Resolver<'_>,
    shape: Shape,
) -> Result<SecretSource, AuthConfigError> {
    SecretRef::parse(reference).map_err(|e| cfg_err(field, e.to_string()))?;
    match resolve(reference).map_err(|e| cfg_err(field, e.to_string()))? {
        Resolved::Fixed(s) => {
            let v = shape_secret(&shape, s.expose()).map_err(|m| cfg_err(field, m))?;
            Ok(SecretSource::Fixed(Secret::new(v.to_vec())))
        }
        Resolved::Kv(entry) => {
            if let Some(now) = entry.snapshot() {
                shape_secret(&shape, now.expose())
                    .map_err(|m| cfg_err(field, format!("{reference}: {m}")))?;
            }
            Ok(SecretSource::Kv { entry, shape })
        }
    }
}

/// A secret field resolved once per compiled config (a `kv:` value is its current value).
fn secret_field(
    field: &'static str,
    reference: &str,
    resolve: &mut Resolver<'_>,
) -> Result<Secret, AuthConfigError> {
    SecretRef::parse(reference).map_err(|e| cfg_err(field, e.to_string()))?;
    let s = match resolve(reference).map_err(|e| cfg_err(field, e.to_string()))? {
        Resolved::Fixed(s) => s,
        Resolved::Kv(e) => e
            .snapshot()
            .ok_or_else(|| cfg_err(field, format!("{reference}: no current value")))?,
    };
    if s.expose().is_empty() {
        return Err(cfg_err(field, "the secret is empty"));
    }
    Ok(s)
}

fn header_field(field: &'static str, name: &str) -> Result<String, AuthConfigError> {
    if !valid_header_name(name) {
        return Err(cfg_err(
            field,
            format!("'{name}' is not a valid header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection" | "x-request-id"
    ) {
        return Err(cfg_err(field, format!("'{name}' is set by the gateway")));
    }
    Ok(name.to_string())
}

fn plain_field(field: &'static str, v: &str) -> Result<String, AuthConfigError> {
    if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(cfg_err(field, "must be 1-256 visible ASCII characters"));
    }
    Ok(v.to_string())
}

impl OutboundAuth {
    /// Compiles `auth`, resolving secret references through `resolve` (normally
    /// `|r| secret::resolve_with(r, base_dir, vault)`).
    pub fn compile(
        raw: &RawAuth,
        resolve: &mut dyn FnMut(&str) -> Result<Secret, SecretRefError>,
    ) -> Result<OutboundAuth, AuthConfigError> {
        Self::compile_with(raw, &mut |r: &str| resolve(r).map(Resolved::Fixed))
    }

    /// As `compile`, with a resolver that may also return `kv:` entries (read per call).
    pub fn compile_with(
        raw: &RawAuth,
        resolve: &mut Resolver<'_>,
    ) -> Result<OutboundAuth, AuthConfigError> {
        Ok(match raw {
            RawAuth::Bearer { secret } => OutboundAuth::Static {
                header: "Authorization".into(),
                value: source_field("secret", secret, resolve, Shape::Bearer)?,
            },
            RawAuth::Header { header, secret } => {
                let header = header_field("header", header)?;
                OutboundAuth::Static {
                    header,
                    value: source_field("secret", secret, resolve, Shape::Header)?,
                }
            }
            RawAuth::Basic { username, secret } => {
                if username.contains(':') || !valid_header_value(username.as_bytes()) {
                    return Err(cfg_err(
                        "username",
                        "must not contain ':' or control characters",
                    ));
                }
                OutboundAuth::Static {
                    header: "Authorization".into(),
                    value: source_field("secret", secret, resolve, Shape::Basic(username.clone()))?,
                }
            }
            RawAuth::Query { param, secret } => {
                if param.is_empty()
                    || param.len() > 128
                    || !param.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
                    })
                {
                    return Err(cfg_err("param", "must be 1-128 of A-Z a-z 0-9 - . _ ~"));
                }
                OutboundAuth::Query {
                    param: param.clone(),
                    value: source_field("secret", secret, resolve, Shape::Form)?,
                }
            }
            RawAuth::Hmac {
                secret,
                header,
                timestamp_header,
                string_to_sign,
                encoding,
            } => {
                let header = header_field("header", header)?;
                let timestamp_header = header_field("timestamp_header", timestamp_header)?;
                if header.eq_ignore_ascii_case(&timestamp_header) {
                    return Err(cfg_err("timestamp_header", "must differ from header"));
                }
                let pieces = compile_template(string_to_sign)?;
                OutboundAuth::Hmac {
                    key: source_field("secret", secret, resolve, Shape::Bytes)?,
                    header,
                    timestamp_header,
                    template: string_to_sign.clone(),
                    pieces,
                    encoding: *encoding,
                }
            }
            RawAuth::Sigv4 {
                access_key_id,
                secret,
                region,
                service,
                session_token,
            } => {
                let access_key_id = if SecretRef::parse(access_key_id).is_ok() {
                    let s = secret_field("access_key_id", access_key_id, resolve)?;
                    let id = String::from_utf8(s.expose().to_vec())
                        .map_err(|_| cfg_err("access_key_id", "is not UTF-8"))?;
                    plain_field("access_key_id", &id)?
                } else {
                    plain_field("access_key_id", access_key_id)?
                };
                let region = plain_field("region", region)?;
                let service = plain_field("service", service)?;
                let session_token = match session_token {
                    None => None,
                    Some(r) => Some(source_field("session_token", r, resolve, Shape::Header)?),
                };
                OutboundAuth::SigV4 {
                    opts: SigV4Options::for_service(&service),
                    access_key_id,
                    secret: source_field("secret", secret, resolve, Shape::Bytes)?,
                    session_token,
                    region,
                    service,
                }
            }
            RawAuth::Oauth2 {
                token_url,
                client_id,
                secret,
                scope,
                auth_method,
            } => {
                let token_url = Url::parse(token_url).map_err(|m| cfg_err("token_url", m))?;
                if client_id.is_empty()
                    || client_id.len() > 256
                    || !valid_header_value(client_id.as_bytes())
                    || client_id.contains('\t')
                {
                    return Err(cfg_err(
                        "client_id",
                        "must be 1-256 characters without control characters",
                    ));
                }
                let client_id = client_id.clone();
                if let Some(s) = scope
                    && !valid_header_value(s.as_bytes())
                {
                    return Err(cfg_err("scope", "control characters"));
                }
                OutboundAuth::OAuth2(std::sync::Arc::new(OAuth2Client {
                    token_url,
                    client_id,
                    secret: secret_field("secret", secret, resolve)?,
                    scope: scope.clone(),
                    auth_method: *auth_method,
                }))
            }
        })
    }

    /// The `kv:` entries this auth reads per call.
    pub fn kv_entries(&self) -> impl Iterator<Item = &Arc<KvEntry>> {
        let (a, b) = match self {
            OutboundAuth::Static { value, .. } | OutboundAuth::Query { value, .. } => {
                (Some(value), None)
            }
            OutboundAuth::Hmac { key, .. } => (Some(key), None),
            OutboundAuth::SigV4 {
                secret,
                session_token,
                ..
            } => (Some(secret), session_token.as_ref()),
            OutboundAuth::OAuth2(_) => (None, None),
        };
        a.into_iter().chain(b).filter_map(SecretSource::kv_entry)
    }

    /// Waits (bounded) until no forced re-read of this auth's `kv:` entries is pending, so that
    /// a call after an upstream 401/403 carries the re-read value.
    pub async fn settle_kv(&self, bound: std::time::Duration) {
        if !self.kv_entries().any(|e| e.rereading()) {
            return;
        }
        let deadline = crate::util::clock::now() + bound;
        let settled = |_late| (!self.kv_entries().any(|e| e.rereading())).then_some(());
        crate::util::wait::poll_until(deadline, KV_WAIT_POLL, settled).await;
    }

    /// After the upstream answered a call that carried this credential (read at
    /// `credential_read_ns`, 0 when it has no `kv:` secret): a 401/403 asks for one re-read of
    /// its `kv:` secrets, which may have been rotated.
    pub fn on_upstream_status(&self, status: u16, credential_read_ns: u64) {
        if matches!(status, 401 | 403) && credential_read_ns != 0 {
            for e in self.kv_entries() {
                e.upstream_rejected(credential_read_ns, status);
            }
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            OutboundAuth::Static { header, .. } if header == "Authorization" => "authorization",
            OutboundAuth::Static { .. } => "header",
            OutboundAuth::Query { .. } => "query",
            OutboundAuth::Hmac { .. } => "hmac",
            OutboundAuth::SigV4 { .. } => "sigv4",
            OutboundAuth::OAuth2(_) => "oauth2",
        }
    }

    /// The headers this auth sets. The request builder drops an agent's own copy of each (its
    /// compiled header filter holds them, beside `identity::CREDENTIAL_HEADERS`).
    pub fn owned_headers(&self) -> Vec<&str> {
        match self {
            OutboundAuth::Static { header, .. } => vec![header.as_str()],
            OutboundAuth::Query { .. } => Vec::new(),
            OutboundAuth::Hmac {
                header,
                timestamp_header,
                ..
            } => vec![header.as_str(), timestamp_header.as_str()],
            OutboundAuth::SigV4 { .. } => sigv4::OWNED_HEADERS.to_vec(),
            OutboundAuth::OAuth2(_) => vec!["Authorization"],
        }
    }

    /// Does this auth set `name`?
    pub fn owns_header(&self, name: &[u8]) -> bool {
        match self {
            OutboundAuth::Static { header, .. } => name.eq_ignore_ascii_case(header.as_bytes()),
            OutboundAuth::Query { .. } => false,
            OutboundAuth::Hmac {
                header,
                timestamp_header,
                ..
            } => {
                name.eq_ignore_ascii_case(header.as_bytes())
                    || name.eq_ignore_ascii_case(timestamp_header.as_bytes())
            }
            OutboundAuth::SigV4 { .. } => sigv4::OWNED_HEADERS
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes())),
            OutboundAuth::OAuth2(_) => name.eq_ignore_ascii_case(b"authorization"),
        }
    }

    /// The query parameter this auth appends (the builder should drop the agent's copy).
    pub fn owned_query_param(&self) -> Option<&str> {
        match self {
            OutboundAuth::Query { param, .. } => Some(param),
            _ => None,
        }
    }

    pub fn oauth2(&self) -> Option<&OAuth2Client> {
        self.oauth2_shared().map(|c| &**c)
    }

    pub fn oauth2_shared(&self) -> Option<&std::sync::Arc<OAuth2Client>> {
        match self {
            OutboundAuth::OAuth2(c) => Some(c),
            _ => None,
        }
    }

    /// Produces the credential for one outbound request: headers to add in `out_headers`, and
    /// for `query` the `param=value` pair (encoded, no leading '&' or '?') in `out_query`, to be
    /// appended to the query. `oauth_token` is `OAuthTokenCache::current(now)` for oauth2.
    pub fn apply<'a>(
        &'a self,
        req: &OutboundRequest<'_>,
        now_unix: i64,
        oauth_token: Option<&Secret>,
        out_headers: &mut AuthHeaders<'a>,
        out_query: &mut Zeroizing<String>,
    ) -> Result<(), AuthApplyError> {
        match self {
            OutboundAuth::Static { header, value } => {
                let v = value.get()?;
                out_headers.push((header.as_str(), Zeroizing::new(v.to_vec())));
            }
            OutboundAuth::Query { param, value } => {
                out_query.push_str(param.as_str());
                out_query.push('=');
                // form_encode output is ASCII.
                out_query.push_str(&String::from_utf8_lossy(&value.get()?));
            }
            OutboundAuth::Hmac {
                key,
                header,
                timestamp_header,
                pieces,
                template,
                encoding,
            } => {
                let ts = now_unix.to_string();
                let mut sts = Zeroizing::new(Vec::with_capacity(128));
                for p in pieces {
                    match *p {
                        Piece::Lit(a, b) => sts.extend_from_slice(&template.as_bytes()[a..b]),
                        Piece::Method => sts.extend_from_slice(req.method.as_bytes()),
                        Piece::Path => sts.extend_from_slice(req.path.as_bytes()),
                        Piece::Query => sts.extend_from_slice(req.query.as_bytes()),
                        Piece::Timestamp => sts.extend_from_slice(ts.as_bytes()),
                        Piece::BodySha256 => sts.extend_from_slice(
                            hex::encode(digest(&SHA256, req.body).as_ref()).as_bytes(),
                        ),
                    }
                }
                let k = hmac::Key::new(hmac::HMAC_SHA256, &key.get()?);
                let tag = hmac::sign(&k, &sts);
                let sig = match encoding {
                    HmacEncoding::Hex => hex::encode(tag.as_ref()),
                    HmacEncoding::Base64 => B64.encode(tag.as_ref()),
                };
                out_headers.push((header.as_str(), Zeroizing::new(sig.into_bytes())));
                out_headers.push((timestamp_header.as_str(), Zeroizing::new(ts.into_bytes())));
            }
            OutboundAuth::SigV4 {
                access_key_id,
                secret,
                session_token,
                region,
                service,
                opts,
            } => {
                let signed_headers: Vec<(&[u8], &[u8])> = req
                    .headers
                    .iter()
                    .filter(|(n, _)| {
                        n.eq_ignore_ascii_case(b"host")
                            || n.eq_ignore_ascii_case(b"content-type")
                            || (n.len() > 6 && n[..6].eq_ignore_ascii_case(b"x-amz-"))
                    })
                    .copied()
                    .collect();
                let secret = secret.get()?;
                let session_token = match session_token {
                    Some(t) => Some(t.get()?),
                    None => None,
                };
                let creds = SigV4Credentials {
                    access_key_id,
                    secret_access_key: &secret,
                    session_token: session_token.as_deref(),
                };
                let sreq = OutboundRequest {
                    headers: &signed_headers,
                    ..*req
                };
                let s = sigv4::sign(&creds, region, service, *opts, &sreq, now_unix)?;
                out_headers.push((
                    "Authorization",
                    Zeroizing::new(s.authorization.into_bytes()),
                ));
                out_headers.push(("X-Amz-Date", Zeroizing::new(s.amz_date.into_bytes())));
                if let Some(h) = s.content_sha256 {
                    out_headers.push(("X-Amz-Content-Sha256", Zeroizing::new(h.into_bytes())));
                }
                if let Some(t) = &session_token {
                    out_headers.push(("X-Amz-Security-Token", Zeroizing::new(t.to_vec())));
                }
            }
            OutboundAuth::OAuth2(_) => {
                let t = oauth_token.ok_or(AuthApplyError::NoToken)?;
                let mut v = Zeroizing::new(b"Bearer ".to_vec());
                v.extend_from_slice(t.expose());
                out_headers.push(("Authorization", v));
            }
        }
        Ok(())
    }
}

/// Refresh this long before expiry at least, plus up to `REFRESH_JITTER_SECS` more.
pub const REFRESH_MARGIN_SECS: i64 = 60;
pub const REFRESH_JITTER_SECS: i64 = 120;
/// A token is not handed out in its last seconds (in flight to the upstream).
pub const EXPIRY_SAFETY_SECS: i64 = 5;
/// A refresh that has not completed after this long may be restarted by another caller.
pub const IN_FLIGHT_TIMEOUT_SECS: i64 = 30;
/// Backoff after a failed refresh: 1, 2, 4 ... capped.
pub const MAX_BACKOFF_SECS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshState {
    Idle,
    InFlight { since: i64 },
    Backoff { until: i64 },
}

/// Sans-io OAuth2 access-token cache with single-flight refresh.
///
/// ```text
/// if cache.begin_refresh(now) { spawn: send build_token_request(); cache.complete(now, parse_token_response(..)) }
/// match cache.current(now) { Some(t) => apply(.., Some(t), ..), None => wait or 502 }
/// ```
/// `begin_refresh` returns true to exactly one caller per refresh; others keep using the
/// still-valid token (refresh starts 60–180 s before expiry) or wait.
#[derive(Default)]
pub struct OAuthTokenCache {
    token: Option<Secret>,
    expires_at: i64,
    refresh_at: i64,
    state: Option<RefreshState>,
    failures: u32,
    last_error: Option<OAuthError>,
}

impl std::fmt::Debug for OAuthTokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthTokenCache")
            .field("has_token", &self.token.is_some())
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .field("state", &self.state)
            .field("failures", &self.failures)
            .field("last_error", &self.last_error)
            .finish()
    }
}

impl OAuthTokenCache {
    pub fn new() -> OAuthTokenCache {
        OAuthTokenCache::default()
    }

    /// The token, if it is valid for at least `EXPIRY_SAFETY_SECS` more (the token source keeps
    /// its own copy for the data plane; this reads the cache's state in tests).
    #[cfg(test)]
    pub fn current(&self, now_unix: i64) -> Option<&Secret> {
        self.token
            .as_ref()
            .filter(|_| now_unix < self.expires_at - EXPIRY_SAFETY_SECS)
    }

    /// Is it time to start a refresh (and none is in flight)?
    pub fn needs_refresh(&self, now_unix: i64) -> bool {
        match self.state.unwrap_or(RefreshState::Idle) {
            RefreshState::InFlight { since } => now_unix - since >= IN_FLIGHT_TIMEOUT_SECS,
            RefreshState::Backoff { until } => now_unix >= until,
            RefreshState::Idle => self.token.is_none() || now_unix >= self.refresh_at,
        }
    }

    /// Claims the refresh: true for exactly one caller until `complete` (or the in-flight
    /// timeout).
    pub fn begin_refresh(&mut self, now_unix: i64) -> bool {
        if !self.needs_refresh(now_unix) {
            return false;
        }
        self.state = Some(RefreshState::InFlight { since: now_unix });
        true
    }

    /// Records the refresh outcome, with a random refresh jitter.
    pub fn complete(&mut self, now_unix: i64, result: Result<(Secret, u64), OAuthError>) {
        let mut b = [0u8; 2];
        let jitter = if aws_lc_rs::rand::fill(&mut b).is_ok() {
            i64::from(u16::from_be_bytes(b)) % (REFRESH_JITTER_SECS + 1)
        } else {
            REFRESH_JITTER_SECS / 2
        };
        self.complete_with_jitter(now_unix, result, jitter);
    }

    /// As `complete`, with the jitter (0..=120 s) given (tests).
    pub fn complete_with_jitter(
        &mut self,
        now_unix: i64,
        result: Result<(Secret, u64), OAuthError>,
        jitter_secs: i64,
    ) {
        match result {
            Ok((tok, lifetime)) => {
                let lifetime = i64::try_from(lifetime)
                    .unwrap_or(i64::MAX / 4)
                    .min(i64::MAX / 4);
                self.expires_at = now_unix.saturating_add(lifetime);
                let margin = REFRESH_MARGIN_SECS + jitter_secs.clamp(0, REFRESH_JITTER_SECS);
                self.refresh_at = if lifetime > 2 * margin {
                    self.expires_at - margin
                } else {
                    // Short-lived tokens: refresh at half-life.
                    now_unix + lifetime / 2
                };
                self.token = Some(tok);
                self.state = Some(RefreshState::Idle);
                self.failures = 0;
                self.last_error = None;
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let backoff = 1i64
                    .checked_shl(self.failures.saturating_sub(1).min(16))
                    .unwrap_or(MAX_BACKOFF_SECS)
                    .min(MAX_BACKOFF_SECS);
                self.state = Some(RefreshState::Backoff {
                    until: now_unix + backoff,
                });
                self.last_error = Some(e);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn kv_values_are_shaped_per_call() {
        let cases: &[(Shape, &[u8], Result<&[u8], ()>)] = &[
            (Shape::Bearer, b"tok", Ok(b"Bearer tok")),
            (Shape::Header, b"k-1", Ok(b"k-1")),
            (Shape::Header, b"bad\r\nX: y", Err(())),
            (Shape::Bearer, b"a\nb", Err(())),
            (Shape::Basic("svc".into()), b"pw", Ok(b"Basic c3ZjOnB3")),
            (Shape::Form, b"a b&c", Ok(b"a%20b%26c")),
            (Shape::Bytes, b"\x00raw", Ok(b"\x00raw")),
            (Shape::Bytes, b"", Err(())),
        ];
        for (shape, raw, want) in cases {
            let got = shape_secret(shape, raw).map(|v| v.to_vec()).map_err(|_| ());
            assert_eq!(got, want.map(|w| w.to_vec()), "{shape:?}");
        }
    }
    use std::collections::HashMap;

    fn secrets() -> HashMap<&'static str, &'static [u8]> {
        HashMap::from([
            ("vault:tok", &b"tok-SECRET-1"[..]),
            ("vault:pw", b"pw-SECRET-2"),
            ("vault:spacey", b"a b&c"),
            ("vault:crlf", b"tok\r\nX-Evil: SECRET-3"),
            ("vault:hmac", b"key"),
            ("vault:aws", b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            ("vault:sts", b"session-SECRET-4"),
            ("env:AKID", b"AKIDEXAMPLE"),
            ("vault:client", b"client-SECRET-5"),
            ("vault:empty", b""),
        ])
    }

    fn compile_toml(t: &str) -> Result<OutboundAuth, String> {
        #[derive(Deserialize)]
        struct W {
            auth: RawAuth,
        }
        let w: W = toml::from_str(&format!("auth = {t}")).map_err(|e| format!("toml: {e}"))?;
        let map = secrets();
        let mut resolve = |r: &str| {
            map.get(r)
                .map(|v| Secret::new(v.to_vec()))
                .ok_or_else(|| SecretRefError::EnvMissing(r.trim_start_matches("env:").to_string()))
        };
        OutboundAuth::compile(&w.auth, &mut resolve).map_err(|e| e.to_string())
    }

    fn apply(a: &OutboundAuth, token: Option<&Secret>) -> (Vec<(String, String)>, String) {
        let headers: &[(&[u8], &[u8])] =
            &[(b"Host", b"example.amazonaws.com"), (b"Accept", b"*/*")];
        let req = OutboundRequest {
            method: "GET",
            path: "/",
            query: "",
            headers,
            body: b"",
        };
        let mut out = Vec::new();
        let mut q = Zeroizing::new(String::new());
        a.apply(&req, 1_440_938_160, token, &mut out, &mut q)
            .unwrap();
        let out = out
            .into_iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8(v.to_vec()).unwrap()))
            .collect();
        (out, q.to_string())
    }

    #[test]
    fn compile_and_apply_table() {
        let cases: &[(&str, &str, &[(&str, &str)], &str)] = &[
            (
                "bearer",
                r#"{ scheme = "bearer", secret = "vault:tok" }"#,
                &[("Authorization", "Bearer tok-SECRET-1")],
                "",
            ),
            (
                "header",
                r#"{ scheme = "header", header = "X-Api-Key", secret = "vault:tok" }"#,
                &[("X-Api-Key", "tok-SECRET-1")],
                "",
            ),
            (
                "basic",
                r#"{ scheme = "basic", username = "svc", secret = "vault:pw" }"#,
                // base64("svc:pw-SECRET-2")
                &[("Authorization", "Basic c3ZjOnB3LVNFQ1JFVC0y")],
                "",
            ),
            (
                "query, value encoded",
                r#"{ scheme = "query", param = "api_key", secret = "vault:spacey" }"#,
                &[],
                "api_key=a%20b%26c",
            ),
            (
                "hmac, RFC-style vector (HMAC-SHA256 key=\"key\", quick brown fox)",
                r#"{ scheme = "hmac", secret = "vault:hmac", string_to_sign = "The quick brown fox jumps over the lazy dog" }"#,
                &[
                    (
                        "X-Signature",
                        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
                    ),
                    ("X-Timestamp", "1440938160"),
                ],
                "",
            ),
            (
                "hmac base64, custom headers",
                r#"{ scheme = "hmac", secret = "vault:hmac", header = "Sig", timestamp_header = "Ts", string_to_sign = "The quick brown fox jumps over the lazy dog", encoding = "base64" }"#,
                &[
                    ("Sig", "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="),
                    ("Ts", "1440938160"),
                ],
                "",
            ),
            (
                "sigv4 = the suite's get-vanilla",
                r#"{ scheme = "sigv4", access_key_id = "AKIDEXAMPLE", secret = "vault:aws", region = "us-east-1", service = "service" }"#,
                &[
                    (
                        "Authorization",
                        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                    ),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                "",
            ),
            (
                "sigv4 with a session token and a referenced key id",
                r#"{ scheme = "sigv4", access_key_id = "env:AKID", secret = "vault:aws", region = "us-east-1", service = "service", session_token = "vault:sts" }"#,
                &[
                    (
                        "Authorization",
                        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=",
                    ),
                    ("X-Amz-Date", "20150830T123600Z"),
                    ("X-Amz-Security-Token", "session-SECRET-4"),
                ],
                "",
            ),
        ];
        for (name, t, want_h, want_q) in cases {
            let a = compile_toml(t).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (h, q) = apply(&a, None);
            assert_eq!(h.len(), want_h.len(), "{name}: {h:?}");
            for ((gn, gv), (wn, wv)) in h.iter().zip(want_h.iter()) {
                assert_eq!(gn, wn, "{name}");
                if wv.ends_with("Signature=") {
                    assert!(
                        gv.starts_with(wv) && gv.len() == wv.len() + 64,
                        "{name}: {gv}"
                    );
                } else {
                    assert_eq!(gv, wv, "{name}");
                }
                assert!(a.owns_header(gn.as_bytes()), "{name}: owns {gn}");
            }
            assert_eq!(q, *want_q, "{name}");
        }
    }

    #[test]
    fn compile_errors_table() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "literal secret",
                r#"{ scheme = "bearer", secret = "sk-live-1" }"#,
                "auth.secret: expected a reference",
            ),
            (
                "missing secret",
                r#"{ scheme = "bearer", secret = "env:NOPE" }"#,
                "auth.secret: environment variable NOPE",
            ),
            (
                "empty secret",
                r#"{ scheme = "bearer", secret = "vault:empty" }"#,
                "auth.secret: the secret is empty",
            ),
            (
                "crlf in secret",
                r#"{ scheme = "bearer", secret = "vault:crlf" }"#,
                "control characters",
            ),
            (
                "crlf in header secret",
                r#"{ scheme = "header", header = "X-K", secret = "vault:crlf" }"#,
                "control characters",
            ),
            (
                "bad header name",
                r#"{ scheme = "header", header = "X K", secret = "vault:tok" }"#,
                "auth.header",
            ),
            (
                "gateway header",
                r#"{ scheme = "header", header = "Host", secret = "vault:tok" }"#,
                "set by the gateway",
            ),
            (
                "colon in username",
                r#"{ scheme = "basic", username = "a:b", secret = "vault:pw" }"#,
                "auth.username",
            ),
            (
                "bad param",
                r#"{ scheme = "query", param = "a&b", secret = "vault:tok" }"#,
                "auth.param",
            ),
            (
                "unknown placeholder",
                r#"{ scheme = "hmac", secret = "vault:hmac", string_to_sign = "{verb}" }"#,
                "unknown placeholder {verb}",
            ),
            (
                "unclosed brace",
                r#"{ scheme = "hmac", secret = "vault:hmac", string_to_sign = "{method" }"#,
                "unclosed",
            ),
            (
                "same hmac headers",
                r#"{ scheme = "hmac", secret = "vault:hmac", header = "X", timestamp_header = "x" }"#,
                "must differ",
            ),
            (
                "bad encoding",
                r#"{ scheme = "hmac", secret = "vault:hmac", encoding = "b32" }"#,
                "toml",
            ),
            (
                "http token url",
                r#"{ scheme = "oauth2", token_url = "http://idp.example.com/t", client_id = "c", secret = "vault:client" }"#,
                "auth.token_url",
            ),
            (
                "unknown scheme",
                r#"{ scheme = "kerberos", secret = "vault:tok" }"#,
                "toml",
            ),
            (
                "unknown field",
                r#"{ scheme = "bearer", secret = "vault:tok", header = "X" }"#,
                "toml",
            ),
            (
                "sigv4 empty region",
                r#"{ scheme = "sigv4", access_key_id = "A", secret = "vault:aws", region = "", service = "s3" }"#,
                "auth.region",
            ),
        ];
        for (name, t, frag) in cases {
            match compile_toml(t) {
                Ok(a) => panic!("{name}: compiled to {a:?}"),
                Err(e) => {
                    assert!(e.contains(frag), "{name}: {e}");
                    assert!(!e.contains("SECRET"), "{name}: error leaks the secret: {e}");
                }
            }
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let all = [
            r#"{ scheme = "bearer", secret = "vault:tok" }"#,
            r#"{ scheme = "header", header = "X-Api-Key", secret = "vault:tok" }"#,
            r#"{ scheme = "basic", username = "svc", secret = "vault:pw" }"#,
            r#"{ scheme = "query", param = "k", secret = "vault:tok" }"#,
            r#"{ scheme = "hmac", secret = "vault:pw" }"#,
            r#"{ scheme = "sigv4", access_key_id = "A", secret = "vault:pw", region = "r", service = "s", session_token = "vault:sts" }"#,
            r#"{ scheme = "oauth2", token_url = "https://idp/t", client_id = "c", secret = "vault:client" }"#,
        ];
        for t in all {
            let a = compile_toml(t).unwrap();
            let d = format!("{a:?} {a:#?}");
            assert!(!d.contains("SECRET"), "{d}");
            // base64 of the basic credentials must not show either.
            assert!(!d.contains("c3ZjOnB3"), "{d}");
        }
        let mut c = OAuthTokenCache::new();
        c.complete(0, Ok((Secret::new(b"at-SECRET-9".to_vec()), 3600)));
        let d = format!("{c:?}");
        assert!(
            !d.contains("SECRET") && d.contains("has_token: true"),
            "{d}"
        );
    }

    #[test]
    fn oauth2_token_request_and_apply() {
        let a = compile_toml(
            r#"{ scheme = "oauth2", token_url = "https://idp.example.com:8443/oauth/token", client_id = "my app", secret = "vault:client", scope = "read write" }"#,
        )
        .unwrap();
        let c = a.oauth2().unwrap();
        assert_eq!(c.token_url.authority, "idp.example.com:8443");
        assert_eq!(
            (c.token_url.host.as_str(), c.token_url.port),
            ("idp.example.com", 8443)
        );
        assert_eq!(c.token_url.path, "/oauth/token");
        let r = c.build_token_request();
        assert_eq!(
            &r.body[..],
            b"grant_type=client_credentials&scope=read%20write"
        );
        let auth = r
            .headers
            .iter()
            .find(|(n, _)| *n == "Authorization")
            .unwrap();
        let want = format!("Basic {}", B64.encode("my%20app:client-SECRET-5"));
        assert_eq!(&auth.1[..], want.as_bytes());
        let post = OAuth2Client {
            auth_method: ClientAuthMethod::ClientSecretPost,
            token_url: c.token_url.clone(),
            client_id: "c".into(),
            secret: Secret::new(b"s&t".to_vec()),
            scope: None,
        };
        let r = post.build_token_request();
        assert_eq!(
            &r.body[..],
            b"grant_type=client_credentials&client_id=c&client_secret=s%26t"
        );
        assert!(r.headers.iter().all(|(n, _)| *n != "Authorization"));
        // apply: no token → 502 upstream_auth_failed; with token → Bearer.
        let req = OutboundRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &[],
            body: b"",
        };
        let mut h = Vec::new();
        let mut q = Zeroizing::new(String::new());
        let e = a.apply(&req, 0, None, &mut h, &mut q).unwrap_err();
        assert_eq!((e.status(), e.code()), (502, "upstream_auth_failed"));
        let t = Secret::new(b"at".to_vec());
        let (h, _) = apply(&a, Some(&t));
        assert_eq!(h, [("Authorization".to_string(), "Bearer at".to_string())]);
    }

    #[test]
    fn parse_token_response_table() {
        let cases: &[(&str, u16, &str, Result<(&str, u64), OAuthError>)] = &[
            (
                "ok",
                200,
                r#"{"access_token":"at1","token_type":"Bearer","expires_in":3600}"#,
                Ok(("at1", 3600)),
            ),
            (
                "string expires_in",
                200,
                r#"{"access_token":"at1","expires_in":"120"}"#,
                Ok(("at1", 120)),
            ),
            (
                "no expires_in",
                200,
                r#"{"access_token":"at1","token_type":"bearer"}"#,
                Ok(("at1", DEFAULT_TOKEN_LIFETIME_SECS)),
            ),
            (
                "mac token",
                200,
                r#"{"access_token":"at1","token_type":"mac"}"#,
                Err(OAuthError::BadResponse("token_type is not bearer")),
            ),
            (
                "no token",
                200,
                r#"{"token_type":"bearer"}"#,
                Err(OAuthError::BadResponse("no access_token")),
            ),
            (
                "empty token",
                200,
                r#"{"access_token":""}"#,
                Err(OAuthError::BadResponse("no access_token")),
            ),
            (
                "crlf token",
                200,
                r#"{"access_token":"a\r\nb"}"#,
                Err(OAuthError::BadResponse(
                    "access_token is not a valid header value",
                )),
            ),
            (
                "negative expiry",
                200,
                r#"{"access_token":"a","expires_in":-5}"#,
                Err(OAuthError::BadResponse("bad expires_in")),
            ),
            (
                "not json",
                200,
                "<html>",
                Err(OAuthError::BadResponse("not a JSON object")),
            ),
            (
                "oauth error",
                400,
                r#"{"error":"invalid_client","error_description":"bad secret"}"#,
                Err(OAuthError::Endpoint("invalid_client".into())),
            ),
            (
                "odd error code sanitised",
                401,
                r#"{"error":"x\ny<script>"}"#,
                Err(OAuthError::Endpoint("xyscript".into())),
            ),
            ("plain 503", 503, "busy", Err(OAuthError::Status(503))),
        ];
        for (name, status, body, want) in cases {
            let got = OAuth2Client::parse_token_response(*status, body.as_bytes());
            let got = got.map(|(s, l)| (String::from_utf8(s.expose().to_vec()).unwrap(), l));
            let want = want.clone().map(|(s, l)| (s.to_string(), l));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn token_cache_single_flight_refresh_and_backoff() {
        let mut c = OAuthTokenCache::new();
        assert!(c.current(0).is_none());
        assert!(c.needs_refresh(0));
        assert!(c.begin_refresh(0), "first caller gets the refresh");
        assert!(!c.begin_refresh(0), "single flight");
        assert!(!c.begin_refresh(IN_FLIGHT_TIMEOUT_SECS - 1));
        // Token for 1h, jitter 30s → refresh at exp - 90.
        c.complete_with_jitter(10, Ok((Secret::new(b"t1".to_vec()), 3600)), 30);
        assert_eq!(c.current(10).map(Secret::expose), Some(&b"t1"[..]));
        assert!(!c.needs_refresh(3610 - 91));
        assert!(c.needs_refresh(3610 - 90));
        assert!(c.begin_refresh(3610 - 90));
        assert!(!c.begin_refresh(3610 - 89));
        assert!(
            c.current(3610 - 89).is_some(),
            "still valid while refreshing"
        );
        assert!(
            c.current(3610 - EXPIRY_SAFETY_SECS).is_none(),
            "not in its last seconds"
        );
        // Refresh fails: old token still served until it expires; then none.
        c.complete_with_jitter(3520, Err(OAuthError::Status(500)), 0);
        assert!(c.current(3600).is_some());
        assert!(c.current(3700).is_none());
        // Backoff 1s, then 2s, 4s...
        assert!(!c.needs_refresh(3520));
        assert!(c.begin_refresh(3521));
        c.complete_with_jitter(3521, Err(OAuthError::Transport("refused".into())), 0);
        assert!(!c.needs_refresh(3522));
        assert!(c.needs_refresh(3523));
        for i in 0..20 {
            assert!(c.begin_refresh(4000 + i * 100));
            c.complete_with_jitter(4000 + i * 100, Err(OAuthError::Status(502)), 0);
        }
        assert!(!c.needs_refresh(5900 + MAX_BACKOFF_SECS - 1));
        assert!(c.needs_refresh(5900 + MAX_BACKOFF_SECS));
        // A stuck in-flight refresh can be taken over after the timeout.
        assert!(c.begin_refresh(6000));
        assert!(!c.begin_refresh(6000 + IN_FLIGHT_TIMEOUT_SECS - 1));
        assert!(c.begin_refresh(6000 + IN_FLIGHT_TIMEOUT_SECS));
        // Success resets; short-lived token refreshes at half-life.
        c.complete_with_jitter(7000, Ok((Secret::new(b"t2".to_vec()), 100)), 120);
        assert_eq!(c.current(7000).map(Secret::expose), Some(&b"t2"[..]));
        assert!(!c.needs_refresh(7049));
        assert!(c.needs_refresh(7050));
        // Random jitter stays within 60..=180 s before expiry.
        for _ in 0..50 {
            let mut c = OAuthTokenCache::new();
            c.complete(0, Ok((Secret::new(b"t".to_vec()), 3600)));
            let first = (3000..3600).find(|t| c.needs_refresh(*t)).unwrap();
            assert!((3600 - 180..=3600 - 60).contains(&first), "{first}");
        }
    }
}
