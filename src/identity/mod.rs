//! Agent authentication, sans-io: which header carries the proxy credential, agent keys
//! (`pcs_` + base62, stored as SHA-256), the compiled agent table, and the list of request
//! headers that must never reach the upstream. JWT verification lives in `jwt.rs`.
//!
//! Lookup is by SHA-256 of the presented key in a `HashMap<[u8; 32], _>`: the table never
//! compares key bytes, so there is no early-exit comparison on the secret to time; what a timing
//! observer could learn is about the *hash* of the guess, which is useless.
mod error;
pub mod jwks;
pub mod jwt;
use crate::error::Refusal;
use crate::util::datetime::parse_rfc3339;
use crate::util::hex;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
pub use error::AuthnError;
use serde::Deserialize;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// Prefix of every agent key.
pub const KEY_PREFIX: &str = "pcs_";
/// Random base62 characters after the prefix (≥ 32 per SPEC; 40 ≈ 238 bits).
pub const KEY_RANDOM_CHARS: usize = 40;
/// Longest credential we hash or parse; anything longer is refused unread.
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A fresh agent key: `pcs_` + 40 base62 characters from the system CSPRNG (rejection sampling,
/// so every character is uniform).
pub fn generate_key() -> String {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(KEY_PREFIX.len() + KEY_RANDOM_CHARS);
    out.push_str(KEY_PREFIX);
    let mut buf = [0u8; 64];
    while out.len() < KEY_PREFIX.len() + KEY_RANDOM_CHARS {
        // SystemRandom only fails if the OS RNG is unavailable; nothing sane can continue then.
        rng.fill(&mut buf)
            .expect("the operating system's random number generator failed");
        for b in buf {
            // 248 = 4 * 62: accept only bytes that map uniformly.
            if b < 248 && out.len() < KEY_PREFIX.len() + KEY_RANDOM_CHARS {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    out
}

/// SHA-256 of a key, as raw bytes.
pub fn key_sha256(key: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 of a key, lower-case hex (what `[[agents]] key_sha256` holds).
pub fn key_sha256_hex(key: &str) -> String {
    hex::encode(&key_sha256(key.as_bytes()))
}

/// Who may call: agent keys and JWT issuers. When neither is configured, calls are anonymous.
#[derive(Default)]
pub struct Identity {
    pub agents: AgentTable,
    /// Verifier templates; each worker forks its own (the token cache is per worker).
    pub jwt: Vec<jwt::JwtVerifier>,
    /// The https JWKS feeds the verifiers follow (kept alive, and refreshed, while in use).
    pub jwks_feeds: Vec<Arc<jwks::Feed>>,
}

impl Identity {
    /// Whether every call must present a proxy credential.
    pub fn required(&self) -> bool {
        !self.agents.is_empty() || !self.jwt.is_empty()
    }
}

/// `[[agents]]` as written in the config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub id: String,
    pub key_sha256: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 3339 (or a bare `YYYY-MM-DD`, midnight UTC). Note: an *unquoted* TOML datetime is a
    /// TOML datetime value, not a string; the config layer should accept both and pass the text.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// mTLS listeners (`[server] tls.client_ca`): the client certificate that identifies this
    /// agent, by subject (`CN=bot` or `O=Example,CN=bot`: attributes in certificate order,
    /// comma-separated) or by SPIFFE ID (`spiffe://trust.domain/path`, matched against the
    /// certificate's URI SAN). With it, `key_sha256` may be empty (no key).
    #[serde(default)]
    pub cert_subject: Option<String>,
}

/// `CN=a, O=b` → `CN=a,O=b`: the form certificate subjects are compared in.
pub fn normalize_subject(s: &str) -> String {
    s.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

/// A compiled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    pub roles: Vec<String>,
    /// Unix seconds; the key is refused from this second on.
    pub expires_at: Option<i64>,
}

/// Index of an agent in `AgentTable::agents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentIdx(pub u32);

/// Agents by key hash. Built once per config (compile), shared read-only by the workers.
#[derive(Debug, Default)]
pub struct AgentTable {
    agents: Vec<Agent>,
    by_hash: HashMap<[u8; 32], AgentIdx>,
    by_id: HashMap<String, AgentIdx>,
    /// Normalised certificate subjects and SPIFFE IDs (`cert_subject`).
    by_cert: HashMap<String, AgentIdx>,
}

/// Agent ids: what shows up in audit records and rules. Printable, no spaces or quotes.
pub fn valid_agent_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':' | b'/')
        })
}

impl AgentTable {
    /// Compiles `[[agents]]`. Errors are `(key, message)` pairs, key like `agents[2].key_sha256`;
    /// every error is reported, not just the first.
    pub fn compile(raw: &[RawAgent]) -> Result<AgentTable, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut t = AgentTable::default();
        for (i, a) in raw.iter().enumerate() {
            let key = |field: &str| format!("agents[{i}].{field}");
            let mut ok = true;
            if !valid_agent_id(&a.id) {
                errors.push((
                    key("id"),
                    "agent id must be 1-128 characters of A-Z a-z 0-9 . _ - @ : /".to_string(),
                ));
                ok = false;
            }
            let cert = a.cert_subject.as_deref().map(|c| {
                if c.starts_with("spiffe://") {
                    c.to_string()
                } else {
                    normalize_subject(c)
                }
            });
            if cert
                .as_deref()
                .is_some_and(|c| c.is_empty() || !c.contains('=') && !c.starts_with("spiffe://"))
            {
                errors.push((
                    key("cert_subject"),
                    "expected a certificate subject like CN=bot or a SPIFFE ID like spiffe://example.org/bot".to_string(),
                ));
                ok = false;
            }
            let keyless = a.key_sha256.is_empty() && cert.is_some();
            let hash = if keyless {
                None
            } else {
                hex::decode32(a.key_sha256.as_bytes())
            };
            if hash.is_none() && !keyless {
                errors.push((
                    key("key_sha256"),
                    "expected 64 hex characters (the SHA-256 printed by `portcullis agent add`)"
                        .to_string(),
                ));
                ok = false;
            }
            let expires_at = match &a.expires_at {
                None => None,
                Some(s) => match parse_rfc3339(s) {
                    Some(t) => Some(t),
                    None => {
                        errors.push((
                            key("expires_at"),
                            format!("'{s}' is not an RFC 3339 date-time like 2027-01-01T00:00:00Z"),
                        ));
                        ok = false;
                        None
                    }
                },
            };
            for (j, r) in a.roles.iter().enumerate() {
                if r.is_empty() || r.len() > 128 || r.chars().any(|c| c.is_whitespace()) {
                    errors.push((
                        format!("agents[{i}].roles[{j}]"),
                        "a role is 1-128 characters without whitespace".to_string(),
                    ));
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            let idx = AgentIdx(t.agents.len() as u32);
            if let Some(c) = &cert {
                match t.by_cert.entry(c.clone()) {
                    Entry::Occupied(o) => {
                        let other = &t.agents[o.get().0 as usize].id;
                        errors.push((
                            key("cert_subject"),
                            format!("same certificate identity as agent '{other}'"),
                        ));
                        continue;
                    }
                    Entry::Vacant(v) => {
                        v.insert(idx);
                    }
                }
            }
            match t.by_id.entry(a.id.clone()) {
                Entry::Occupied(_) => {
                    errors.push((key("id"), format!("duplicate agent id '{}'", a.id)));
                    continue;
                }
                Entry::Vacant(v) => {
                    v.insert(idx);
                }
            }
            if let Some(hash) = hash {
                match t.by_hash.entry(hash) {
                    Entry::Occupied(o) => {
                        let other = &t.agents[o.get().0 as usize].id;
                        errors.push((
                            key("key_sha256"),
                            format!(
                                "same key hash as agent '{other}': every agent needs its own key"
                            ),
                        ));
                        t.by_id.remove(&a.id);
                        if let Some(c) = &cert {
                            t.by_cert.remove(c);
                        }
                        continue;
                    }
                    Entry::Vacant(v) => {
                        v.insert(idx);
                    }
                }
            }
            t.agents.push(Agent {
                id: a.id.clone(),
                roles: a.roles.clone(),
                expires_at,
            });
        }
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Every agent, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter()
    }

    pub fn get(&self, idx: AgentIdx) -> Option<&Agent> {
        self.agents.get(idx.0 as usize)
    }

    pub fn by_id(&self, id: &str) -> Option<&Agent> {
        self.by_id.get(id).and_then(|i| self.get(*i))
    }

    /// The agent a verified client certificate identifies (SPIFFE ID first, then subject),
    /// refused from its `expires_at` on like a key.
    pub fn by_certificate(
        &self,
        subject: Option<&str>,
        spiffe: Option<&str>,
        now_unix: i64,
    ) -> Option<Result<&Agent, AuthnError>> {
        let idx = spiffe
            .and_then(|u| self.by_cert.get(u))
            .or_else(|| subject.and_then(|s| self.by_cert.get(&normalize_subject(s))))?;
        let agent = self.get(*idx)?;
        Some(match agent.expires_at {
            Some(exp) if now_unix >= exp => Err(AuthnError::CredentialExpired),
            _ => Ok(agent),
        })
    }

    /// Looks up a presented API key. `now_unix` comes from `clock::unix_now()`.
    pub fn authenticate(&self, cred: &[u8], now_unix: i64) -> Result<&Agent, AuthnError> {
        self.authenticate_idx(cred, now_unix)
            .and_then(|i| self.get(i).ok_or(AuthnError::Unauthenticated))
    }

    /// As `authenticate`, returning the index (cheap to carry in per-request state).
    pub fn authenticate_idx(&self, cred: &[u8], now_unix: i64) -> Result<AgentIdx, AuthnError> {
        if cred.is_empty() || cred.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthnError::Unauthenticated);
        }
        let idx = *self
            .by_hash
            .get(&key_sha256(cred))
            .ok_or(AuthnError::Unauthenticated)?;
        let agent = self.get(idx).ok_or(AuthnError::Unauthenticated)?;
        match agent.expires_at {
            Some(exp) if now_unix >= exp => Err(AuthnError::CredentialExpired),
            _ => Ok(idx),
        }
    }
}

/// Where the proxy credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredSource {
    ProxyAuthorization,
    Authorization,
    XApiKey,
}

impl CredSource {
    pub fn header_name(self) -> &'static str {
        match self {
            CredSource::ProxyAuthorization => "proxy-authorization",
            CredSource::Authorization => "authorization",
            CredSource::XApiKey => "x-api-key",
        }
    }
}

/// A presented credential, classified by shape (nothing is verified yet).
/// No `Debug`: it holds the secret bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `pcs_...`: look it up in the `AgentTable`.
    ApiKey(&'a [u8]),
    /// `xxx.yyy.zzz` in base64url: verify with a `JwtVerifier`.
    Jwt(&'a str),
    /// `Proxy-Authorization: Basic <base64(user:password)>`, as every HTTP client sends the
    /// credentials of a proxy URL (`HTTPS_PROXY=http://bot:pcs_KEY@gateway:8080`): the
    /// password is the agent key or JWT; the user part must be empty or equal the agent id
    /// (`basic_credential`). Holds the base64 text, still encoded.
    Basic(&'a [u8]),
    /// Anything else: unauthenticated (kept so the caller can say which header held it).
    Other(&'a [u8]),
}

impl<'a> Credential<'a> {
    pub fn classify(v: &'a [u8]) -> Credential<'a> {
        if v.starts_with(KEY_PREFIX.as_bytes()) {
            return Credential::ApiKey(v);
        }
        let b64url = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
        let parts = v.split(|b| *b == b'.');
        let mut n = 0;
        let mut shaped = true;
        for p in parts {
            n += 1;
            shaped &= !p.is_empty() && p.iter().all(b64url);
        }
        if n == 3
            && shaped
            && let Ok(s) = std::str::from_utf8(v)
        {
            return Credential::Jwt(s);
        }
        Credential::Other(v)
    }

    pub fn bytes(&self) -> &'a [u8] {
        match self {
            Credential::ApiKey(b) | Credential::Basic(b) | Credential::Other(b) => b,
            Credential::Jwt(s) => s.as_bytes(),
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// `Bearer <token>` (scheme case-insensitive) → token.
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = trim(v);
    if v.len() < 7 || !v[..6].eq_ignore_ascii_case(b"bearer") || !matches!(v[6], b' ' | b'\t') {
        return None;
    }
    let t = trim(&v[7..]);
    (!t.is_empty() && !t.contains(&b' ')).then_some(t)
}

/// `Basic <base64>` (scheme case-insensitive) → the base64 text.
fn basic(v: &[u8]) -> Option<&[u8]> {
    let v = trim(v);
    if v.len() < 6 || !v[..5].eq_ignore_ascii_case(b"basic") || !matches!(v[5], b' ' | b'\t') {
        return None;
    }
    let t = trim(&v[6..]);
    (!t.is_empty() && !t.contains(&b' ')).then_some(t)
}

/// A decoded `Proxy-Authorization: Basic` credential: the user part and the password (the
/// agent key or JWT). Zeroized on drop; no `Debug`.
pub struct BasicCredential {
    decoded: zeroize::Zeroizing<Vec<u8>>,
    colon: usize,
}

impl BasicCredential {
    /// Decodes the base64 text of a Basic credential (`user:password`, split at the first
    /// `:` as RFC 7617 says). `None` when it is not base64 or holds no `:`.
    pub fn decode(b64: &[u8]) -> Option<BasicCredential> {
        use base64::Engine;
        let decoded =
            zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
        let colon = memchr::memchr(b':', &decoded)?;
        Some(BasicCredential { decoded, colon })
    }

    pub fn user(&self) -> &[u8] {
        &self.decoded[..self.colon]
    }

    pub fn password(&self) -> &[u8] {
        &self.decoded[self.colon + 1..]
    }

    /// The user part is empty (`http://:KEY@gateway`) or names the agent the password proves
    /// (`http://support-bot:KEY@gateway`); any other user is refused rather than ignored, so a
    /// proxy URL that names one agent and carries another's key is caught, not audited under
    /// a name nobody wrote.
    pub fn user_matches(&self, agent_id: Option<&str>) -> bool {
        let u = self.user();
        u.is_empty() || agent_id.is_some_and(|id| id.as_bytes() == u)
    }
}

/// Reads the proxy credential, in the SPEC's order: `Proxy-Authorization: Bearer` or `Basic`
/// (`Credential::Basic`), `Authorization: Bearer`, `x-api-key`. Header names compare
/// case-insensitively; a header of the right name but another scheme (`Authorization: Basic
/// ...`, meant for an upstream) is skipped. If the winning source appears more
/// than once with a credential, the request is ambiguous and `None` is returned (→ 401), rather
/// than guessing which copy the upstream or a log would see.
pub fn extract_credential<'a>(
    headers: &[(&'a [u8], &'a [u8])],
) -> Option<(Credential<'a>, CredSource)> {
    let sources: [(CredSource, &[u8]); 3] = [
        (CredSource::ProxyAuthorization, b"proxy-authorization"),
        (CredSource::Authorization, b"authorization"),
        (CredSource::XApiKey, b"x-api-key"),
    ];
    for (src, name) in sources {
        let mut found: Option<(&'a [u8], bool)> = None;
        let mut count = 0;
        for (n, v) in headers {
            if !n.eq_ignore_ascii_case(name) {
                continue;
            }
            let tok = match src {
                CredSource::XApiKey => {
                    let t = trim(v);
                    (!t.is_empty()).then_some((t, false))
                }
                CredSource::ProxyAuthorization => bearer(v)
                    .map(|t| (t, false))
                    .or_else(|| basic(v).map(|t| (t, true))),
                CredSource::Authorization => bearer(v).map(|t| (t, false)),
            };
            if let Some(t) = tok {
                count += 1;
                found.get_or_insert(t);
            }
        }
        match (count, found) {
            (0, _) => continue,
            (1, Some((t, is_basic))) if t.len() <= MAX_CREDENTIAL_LEN => {
                let cred = if is_basic {
                    Credential::Basic(t)
                } else {
                    Credential::classify(t)
                };
                return Some((cred, src));
            }
            _ => return None,
        }
    }
    None
}

/// The headers an agent's own credential may travel in; never forwarded upstream.
pub const CREDENTIAL_HEADERS: [&[u8]; 3] = [b"authorization", b"proxy-authorization", b"x-api-key"];

/// Request headers that must not be forwarded upstream: anything that could carry a caller's
/// credential (`Authorization`, `Proxy-Authorization`, `x-api-key`), `Cookie` unless a rule
/// allows it, and the header the proxy's own outbound auth sets (`proxy_auth_header`, e.g.
/// `X-Api-Key` for `scheme = "header"`; pass every name from `OutboundAuth::owned_headers`).
pub fn is_credential_header(
    name: &[u8],
    proxy_auth_header: Option<&str>,
    allow_cookie: bool,
) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        || (!allow_cookie && name.eq_ignore_ascii_case(b"cookie"))
        || proxy_auth_header.is_some_and(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Who is calling, once authenticated.
pub enum Caller<'c> {
    /// No `[[agents]]` or `[[jwt]]` configured: calls carry no identity.
    Anonymous,
    Key(&'c Agent),
    /// An agent issued at run time through the admin API (this worker's copy).
    Managed(std::rc::Rc<Agent>),
    Jwt(std::sync::Arc<crate::identity::jwt::JwtAgent>),
}

impl Caller<'_> {
    pub fn id(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(a) => Some(&a.id),
            Caller::Managed(a) => Some(&a.id),
            Caller::Jwt(j) => Some(&j.id),
        }
    }

    pub fn roles(&self) -> &[String] {
        match self {
            Caller::Anonymous => &[],
            Caller::Key(a) => &a.roles,
            Caller::Managed(a) => &a.roles,
            Caller::Jwt(j) => &j.roles,
        }
    }
}

/// Most credential-bearing header lines looked at; more is refused as ambiguous.
const MAX_CRED_HEADERS: usize = 8;

/// The authentication stage: the proxy credential from the request's headers (`headers` yields
/// name/value pairs), checked against the agent table or the JWT issuer that signed it.
#[cfg(test)]
pub fn authenticate<'c, 'h>(
    identity: &'c Identity,
    verifiers: &mut [crate::identity::jwt::JwtVerifier],
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    now_unix: i64,
) -> Result<Caller<'c>, Refusal> {
    authenticate_with(identity, None, verifiers, headers, now_unix)
}

/// Agent keys known beyond the config's table (managed agents, issue 16).
pub trait MoreKeys {
    /// Calls need a credential even if the config names no agent.
    fn required(&self) -> bool;
    /// The agent a key's SHA-256 belongs to (`None`: not one of these keys).
    fn lookup(&self, hash: &[u8; 32]) -> Option<Result<std::rc::Rc<Agent>, AuthnError>>;
}

/// [`authenticate`], with keys also looked up in `more` when the config's table has none.
pub fn authenticate_with<'c, 'h>(
    identity: &'c Identity,
    more: Option<&dyn MoreKeys>,
    verifiers: &mut [crate::identity::jwt::JwtVerifier],
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    now_unix: i64,
) -> Result<Caller<'c>, Refusal> {
    if !identity.required() && !more.is_some_and(|m| m.required()) {
        return Ok(Caller::Anonymous);
    }
    let mut found: [(&[u8], &[u8]); MAX_CRED_HEADERS] = [(b"", b""); MAX_CRED_HEADERS];
    let mut n = 0;
    for (name, value) in headers {
        if is_credential_header(name, None, true) && !name.eq_ignore_ascii_case(b"cookie") {
            if n == MAX_CRED_HEADERS {
                return Err(Refusal::Unauthenticated);
            }
            found[n] = (name, value);
            n += 1;
        }
    }
    let Some((cred, _source)) = extract_credential(&found[..n]) else {
        return Err(Refusal::Unauthenticated);
    };
    if let Credential::Basic(b64) = cred {
        let basic = BasicCredential::decode(b64).ok_or(Refusal::Unauthenticated)?;
        let inner = Credential::classify(basic.password());
        let caller = verify(identity, more, verifiers, inner, now_unix)?;
        if !basic.user_matches(caller.id()) {
            return Err(Refusal::Unauthenticated);
        }
        return Ok(caller);
    }
    verify(identity, more, verifiers, cred, now_unix)
}

/// Checks one credential against the agent table or the JWT issuer that signed it.
fn verify<'c>(
    identity: &'c Identity,
    more: Option<&dyn MoreKeys>,
    verifiers: &mut [crate::identity::jwt::JwtVerifier],
    cred: Credential<'_>,
    now_unix: i64,
) -> Result<Caller<'c>, Refusal> {
    match cred {
        Credential::ApiKey(k) => match (identity.agents.authenticate(k, now_unix), more) {
            (Err(AuthnError::Unauthenticated), Some(m)) if k.len() <= MAX_CREDENTIAL_LEN => {
                match m.lookup(&key_sha256(k)) {
                    Some(r) => Ok(Caller::Managed(r?)),
                    None => Err(Refusal::Unauthenticated),
                }
            }
            (r, _) => Ok(Caller::Key(r?)),
        },
        Credential::Jwt(t) => {
            let iss = crate::identity::jwt::peek_issuer(t).ok_or(Refusal::Unauthenticated)?;
            let v = verifiers
                .iter_mut()
                .find(|v| v.issuer() == iss)
                .ok_or(Refusal::Unauthenticated)?;
            Ok(Caller::Jwt(v.verify(t, now_unix)?))
        }
        // a Basic credential inside a Basic credential, or an unknown shape
        Credential::Basic(_) | Credential::Other(_) => Err(Refusal::Unauthenticated),
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn raw(id: &str, key: &str, exp: Option<&str>) -> RawAgent {
        RawAgent {
            id: id.into(),
            key_sha256: key_sha256_hex(key),
            roles: vec!["support".into()],
            expires_at: exp.map(Into::into),
            cert_subject: None,
        }
    }

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert!(k.starts_with("pcs_"));
            assert_eq!(k.len(), 4 + KEY_RANDOM_CHARS);
            assert!(k[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
            assert!(matches!(
                Credential::classify(k.as_bytes()),
                Credential::ApiKey(_)
            ));
        }
        // sha256("abc")
        assert_eq!(
            key_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn compile_errors_table() {
        let good = raw("a", "pcs_a", None);
        let cases: &[(&str, Vec<RawAgent>, &[&str])] = &[
            (
                "ok",
                vec![
                    good.clone(),
                    raw("b", "pcs_b", Some("2027-01-01T00:00:00Z")),
                ],
                &[],
            ),
            (
                "bad hex",
                vec![RawAgent {
                    key_sha256: "zz".into(),
                    ..good.clone()
                }],
                &["agents[0].key_sha256"],
            ),
            (
                "duplicate id",
                vec![good.clone(), raw("a", "pcs_other", None)],
                &["agents[1].id"],
            ),
            (
                "duplicate hash",
                vec![good.clone(), raw("b", "pcs_a", None)],
                &["agents[1].key_sha256"],
            ),
            (
                "bad date",
                vec![raw("a", "pcs_a", Some("next tuesday"))],
                &["agents[0].expires_at"],
            ),
            (
                "bad id and bad role, all reported",
                vec![RawAgent {
                    id: "has space".into(),
                    roles: vec!["".into()],
                    ..good.clone()
                }],
                &["agents[0].id", "agents[0].roles[0]"],
            ),
        ];
        for (name, agents, want) in cases {
            match AgentTable::compile(agents) {
                Ok(t) => {
                    assert!(want.is_empty(), "{name}: expected errors {want:?}");
                    assert_eq!(t.len(), agents.len(), "{name}");
                }
                Err(errs) => {
                    let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
                    assert_eq!(&keys, want, "{name}: {errs:?}");
                }
            }
        }
    }

    #[test]
    fn authenticate_table() {
        let t = AgentTable::compile(&[
            raw("live", "pcs_live", None),
            raw("dated", "pcs_dated", Some("2027-01-01T00:00:00Z")),
        ])
        .unwrap();
        let exp = 1_798_761_600;
        let cases: &[(&str, &[u8], i64, Result<&str, AuthnError>)] = &[
            ("known key", b"pcs_live", 0, Ok("live")),
            ("before expiry", b"pcs_dated", exp - 1, Ok("dated")),
            (
                "at expiry",
                b"pcs_dated",
                exp,
                Err(AuthnError::CredentialExpired),
            ),
            (
                "after expiry",
                b"pcs_dated",
                exp + 9,
                Err(AuthnError::CredentialExpired),
            ),
            (
                "unknown key",
                b"pcs_nope",
                0,
                Err(AuthnError::Unauthenticated),
            ),
            ("empty", b"", 0, Err(AuthnError::Unauthenticated)),
            (
                "prefix of key",
                b"pcs_liv",
                0,
                Err(AuthnError::Unauthenticated),
            ),
        ];
        for (name, cred, now, want) in cases {
            let got = t.authenticate(cred, *now).map(|a| a.id.as_str());
            assert_eq!(got, *want, "{name}");
        }
        assert_eq!(t.by_id("dated").unwrap().expires_at, Some(exp));
        let huge = vec![b'a'; MAX_CREDENTIAL_LEN + 1];
        assert_eq!(
            t.authenticate(&huge, 0).err(),
            Some(AuthnError::Unauthenticated)
        );
        assert_eq!(
            Refusal::from(AuthnError::CredentialExpired).code(),
            "credential_expired"
        );
    }

    /// `cert_subject`: a subject or SPIFFE ID, unique; with it the key may be absent.
    #[test]
    fn cert_subject_table() {
        let cert = |id: &str, key: &str, c: &str| RawAgent {
            cert_subject: Some(c.into()),
            key_sha256: key.into(),
            ..raw(id, "pcs_unused", None)
        };
        let t = AgentTable::compile(&[
            cert("a", "", "CN=a, O=Example"),
            cert("b", &key_sha256_hex("pcs_b"), "spiffe://example.org/b"),
        ])
        .unwrap();
        let who = |s: Option<&str>, u: Option<&str>| {
            t.by_certificate(s, u, 0).map(|r| r.map(|a| a.id.as_str()))
        };
        assert_eq!(who(Some("CN=a,O=Example"), None), Some(Ok("a")));
        assert_eq!(who(Some("CN=a, O=Example"), None), Some(Ok("a")));
        assert_eq!(who(Some("O=Example,CN=a"), None), None, "order matters");
        assert_eq!(
            who(Some("CN=zz"), Some("spiffe://example.org/b")),
            Some(Ok("b"))
        );
        assert_eq!(who(Some("CN=b"), None), None);
        assert!(t.authenticate(b"pcs_b", 0).is_ok());
        let errs = |agents: &[RawAgent]| {
            AgentTable::compile(agents)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            errs(&[cert("a", "", "CN=a"), cert("b", "", "CN=a")]),
            ["agents[1].cert_subject"]
        );
        assert_eq!(errs(&[cert("a", "", "bot")]), ["agents[0].cert_subject"]);
        assert_eq!(errs(&[cert("a", "", "")]), ["agents[0].cert_subject"]);
        assert_eq!(errs(&[cert("a", "zz", "CN=a")]), ["agents[0].key_sha256"]);
    }

    /// `Proxy-Authorization: Basic base64(user:password)`: the password is the credential,
    /// the user part is empty or the agent id.
    #[test]
    fn proxy_basic_table() {
        use base64::Engine;
        let identity = Identity {
            agents: AgentTable::compile(&[
                raw("bot", "pcs_live", None),
                raw("dated", "pcs_dated", Some("2027-01-01T00:00:00Z")),
            ])
            .unwrap(),
            ..Identity::default()
        };
        let b64 = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let cases: Vec<(&str, Vec<(&str, String)>, Result<&str, Refusal>)> = vec![
            (
                "agent id as user",
                vec![("Proxy-Authorization", b64("bot:pcs_live"))],
                Ok("bot"),
            ),
            (
                "empty user",
                vec![("proxy-authorization", b64(":pcs_live"))],
                Ok("bot"),
            ),
            (
                "scheme case",
                vec![(
                    "proxy-authorization",
                    format!("bAsIc  {}  ", &b64(":pcs_live")[6..]),
                )],
                Ok("bot"),
            ),
            (
                "another agent's name",
                vec![("Proxy-Authorization", b64("dated:pcs_live"))],
                Err(Refusal::Unauthenticated),
            ),
            (
                "unknown user",
                vec![("Proxy-Authorization", b64("x:pcs_live"))],
                Err(Refusal::Unauthenticated),
            ),
            (
                "wrong key",
                vec![("Proxy-Authorization", b64("bot:pcs_nope"))],
                Err(Refusal::Unauthenticated),
            ),
            (
                "no colon",
                vec![("Proxy-Authorization", b64("pcs_live"))],
                Err(Refusal::Unauthenticated),
            ),
            (
                "not base64",
                vec![("Proxy-Authorization", "Basic %%%".into())],
                Err(Refusal::Unauthenticated),
            ),
            (
                "empty basic",
                vec![("Proxy-Authorization", "Basic ".into())],
                Err(Refusal::Unauthenticated),
            ),
            (
                "key as user, empty password",
                vec![("Proxy-Authorization", b64("pcs_live:"))],
                Err(Refusal::Unauthenticated),
            ),
            (
                "nested basic",
                vec![(
                    "Proxy-Authorization",
                    b64(&format!(":{}", b64(":pcs_live"))),
                )],
                Err(Refusal::Unauthenticated),
            ),
            (
                "expired",
                vec![("Proxy-Authorization", b64("dated:pcs_dated"))],
                Err(Refusal::CredentialExpired),
            ),
            (
                "two proxy credentials are ambiguous",
                vec![
                    ("Proxy-Authorization", b64("bot:pcs_live")),
                    ("Proxy-Authorization", "Bearer pcs_live".into()),
                ],
                Err(Refusal::Unauthenticated),
            ),
            (
                "basic in authorization is for the upstream, not us",
                vec![("Authorization", b64("bot:pcs_live"))],
                Err(Refusal::Unauthenticated),
            ),
            (
                "proxy basic wins over authorization bearer",
                vec![
                    ("Authorization", "Bearer pcs_nope".into()),
                    ("Proxy-Authorization", b64("bot:pcs_live")),
                ],
                Ok("bot"),
            ),
        ];
        for (name, headers, want) in cases {
            let h: Vec<(&[u8], &[u8])> = headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect();
            let got = authenticate(&identity, &mut [], h.into_iter(), 1_798_761_600)
                .map(|c| c.id().map(str::to_string));
            let got = got
                .as_ref()
                .map(|o| o.as_deref().unwrap_or(""))
                .map_err(Clone::clone);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn extract_credential_table() {
        type H = &'static [(&'static [u8], &'static [u8])];
        let cases: &[(&str, H, Option<(&[u8], CredSource)>)] = &[
            ("none", &[(b"host", b"x")], None),
            (
                "proxy-authorization wins",
                &[
                    (b"Authorization", b"Bearer pcs_b"),
                    (b"Proxy-Authorization", b"Bearer pcs_a"),
                    (b"x-api-key", b"pcs_c"),
                ],
                Some((b"pcs_a", CredSource::ProxyAuthorization)),
            ),
            (
                "authorization before x-api-key",
                &[
                    (b"x-api-key", b"pcs_c"),
                    (b"AUTHORIZATION", b"bearer   pcs_b  "),
                ],
                Some((b"pcs_b", CredSource::Authorization)),
            ),
            (
                "x-api-key alone",
                &[(b"X-Api-Key", b" pcs_c ")],
                Some((b"pcs_c", CredSource::XApiKey)),
            ),
            (
                "basic authorization is skipped",
                &[
                    (b"Authorization", b"Basic dXNlcjpwYXNz"),
                    (b"x-api-key", b"pcs_c"),
                ],
                Some((b"pcs_c", CredSource::XApiKey)),
            ),
            (
                "bearer without token",
                &[(b"Authorization", b"Bearer ")],
                None,
            ),
            ("bearer glued", &[(b"Authorization", b"Bearerpcs_x")], None),
            (
                "two authorization bearers are ambiguous",
                &[
                    (b"Authorization", b"Bearer pcs_a"),
                    (b"Authorization", b"Bearer pcs_b"),
                ],
                None,
            ),
            (
                "ambiguity is not rescued by a later source",
                &[(b"x-api-key", b"pcs_a"), (b"x-api-key", b"pcs_a")],
                None,
            ),
            ("empty x-api-key", &[(b"x-api-key", b"  ")], None),
        ];
        for (name, headers, want) in cases {
            let got = extract_credential(headers).map(|(c, s)| (c.bytes(), s));
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], &str)] = &[
            (b"pcs_abc", "key"),
            (b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "jwt"),
            (b"a.b", "other"),
            (b"a..c", "other"),
            (b"a.b.c.d", "other"),
            (b"a+b.c.d", "other"),
            (b"sk-live-123", "other"),
        ];
        for (v, want) in cases {
            let got = match Credential::classify(v) {
                Credential::ApiKey(_) => "key",
                Credential::Jwt(_) => "jwt",
                Credential::Basic(_) | Credential::Other(_) => "other",
            };
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn credential_headers_table() {
        let cases: &[(&[u8], Option<&str>, bool, bool)] = &[
            (b"Authorization", None, false, true),
            (b"proxy-authorization", None, false, true),
            (b"X-API-KEY", None, false, true),
            (b"Cookie", None, false, true),
            (b"cookie", None, true, false),
            (b"X-Custom-Token", Some("x-custom-token"), false, true),
            (b"X-Custom-Token", None, false, false),
            (b"Content-Type", Some("x-custom-token"), false, false),
            (b"Authorization2", None, false, false),
        ];
        for (name, own, allow_cookie, want) in cases {
            assert_eq!(
                is_credential_header(name, *own, *allow_cookie),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            (
                prop_oneof![
                    Just(b"authorization".to_vec()),
                    Just(b"Proxy-Authorization".to_vec()),
                    Just(b"X-API-KEY".to_vec()),
                    prop::collection::vec(any::<u8>(), 0..12),
                ],
                prop::collection::vec(any::<u8>(), 0..40),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn extract_never_panics_and_returns_a_trimmed_subslice(
                hs in prop::collection::vec(header(), 0..6)
            ) {
                let pairs: Vec<(&[u8], &[u8])> =
                    hs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
                if let Some((c, _)) = extract_credential(&pairs) {
                    let b = c.bytes();
                    prop_assert!(!b.is_empty());
                    prop_assert!(b[0] != b' ' && b[b.len() - 1] != b' ');
                }
            }

            #[test]
            fn key_hash_lookup_matches_only_the_key(suffix in "[A-Za-z0-9]{1,40}") {
                let key = format!("pcs_{suffix}");
                let t = AgentTable::compile(&[RawAgent {
                    id: "a".into(),
                    key_sha256: key_sha256_hex(&key),
                    roles: vec![],
                    expires_at: None,
                    cert_subject: None,
                }]).unwrap();
                prop_assert!(t.authenticate(key.as_bytes(), 0).is_ok());
                let mut other = key.clone().into_bytes();
                other.push(b'x');
                prop_assert!(t.authenticate(&other, 0).is_err());
            }
        }
    }
}
