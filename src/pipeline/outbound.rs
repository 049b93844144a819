//! Stage 8: the outbound request, with the target credential for this call. Runs after the
//! body has been read and scanned; may wait (bounded by `connect_timeout`) for a `kv:` secret
//! being re-read and for the proxy's first OAuth2 token; must not touch the upstream. The head
//! is written once (`upstream::request::begin`), the credential signs exactly that text, and
//! `finish` adds the credential: one `Outbound`, used to sign and to send.
use super::route::Route;
use super::{Scratch, Stop};
use crate::config::{Limits, Proxy};
use crate::credentials::AuthApplyError;
use crate::credentials::token_source::{self, Token};
use crate::error::Refusal;
use crate::upstream::request;
use crate::util::clock;
use zeroize::Zeroizing;

impl From<AuthApplyError> for Stop {
    fn from(e: AuthApplyError) -> Stop {
        Stop::Refuse(match e {
            AuthApplyError::SecretUnavailable(why) => Refusal::SecretUnavailable(why),
            AuthApplyError::NoToken => {
                Refusal::UpstreamAuthFailed("no OAuth2 access token is available")
            }
            AuthApplyError::SigV4(_) => {
                Refusal::UpstreamAuthFailed("the request could not be signed")
            }
        })
    }
}

/// Writes the outbound head into `s.out`. Returns when the credential was read (monotonic
/// ns; 0 when it holds no `kv:` secret), for `OutboundAuth::on_upstream_status`.
pub async fn prepare(
    proxy: &Proxy,
    lim: &Limits,
    s: &mut Scratch,
    route: &Route,
    request_id: &str,
    traceparent: Option<&[u8; crate::observe::trace::TRACEPARENT_LEN]>,
) -> Result<u64, Stop> {
    let target = s.head.target.get(&s.rbuf);
    let query = target.get(route.query.0..route.query.1).unwrap_or(b"");
    let rest = &s.path[route.rest_start..];
    let ob = request::begin(
        &mut s.out,
        &s.rbuf,
        &s.head,
        proxy,
        rest,
        query,
        traceparent.map(|t| &t[..]),
    );
    let mut credential_read_ns = 0;
    s.marks.clear();
    let mut auth_headers = Vec::new();
    let mut auth_query = Zeroizing::new(String::new());
    if let Some(auth) = &proxy.auth {
        // a kv: secret being re-read after an upstream rejected it: wait (bounded) for it
        if auth.kv_entries().next().is_some() {
            auth.settle_kv(lim.connect_timeout).await;
            credential_read_ns = clock::mono_ns();
        }
        // an OAuth2 proxy's access token: waits (bounded) for the first one
        let token = match &proxy.oauth {
            None => None,
            Some(b) => Some(
                token_source::token(&b.source, lim.connect_timeout)
                    .await
                    .inspect_err(|why| {
                        tracing::warn!(proxy = %proxy.name, reason = why, "no OAuth2 access token for the call");
                    })
                    .map_err(Refusal::UpstreamAuthFailed)?,
            ),
        };
        let headers = ob.headers(&s.out);
        let req = ob.request(&s.out, &headers, &s.body);
        let now = clock::unix_now().as_secs() as i64;
        let secret = token.as_deref().map(Token::secret);
        auth.apply(
            &req,
            now,
            secret,
            &mut auth_headers,
            &mut auth_query,
            &mut s.marks,
        )
        .inspect_err(|e| {
            tracing::warn!(proxy = %proxy.name, error = %e, "cannot produce the target credential");
        })?;
    }
    ob.finish(
        &mut s.out,
        proxy,
        &auth_headers,
        &auth_query,
        request_id,
        s.body.len() as u64,
    );
    Ok(credential_read_ns)
}
