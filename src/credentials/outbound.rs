//! The request as the upstream will see it, as the credential schemes read it (HMAC templates,
//! SigV4). The pipeline builds it once per call (`upstream::request::Outbound`) from the very
//! bytes it then sends, so what is signed is what is sent.

/// The outbound request as it will be sent (after routing and canonicalisation).
pub struct OutboundRequest<'r> {
    pub method: &'r str,
    /// Full upstream path as sent (base path + canonical rest), percent-encoded.
    pub path: &'r str,
    /// Query as sent, without '?'.
    pub query: &'r str,
    /// Headers being forwarded, `Host` first (SigV4 signs `Host`, `Content-Type` and
    /// `x-amz-*` of these).
    pub headers: &'r [(&'r [u8], &'r [u8])],
    pub body: &'r [u8],
}
