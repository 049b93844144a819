//! The control-plane client side: blocking HTTP(S) fetches (OAuth2 tokens, JWKS, OpenBao) and the
//! rustls client configuration shared with the data plane's upstream connections.
pub mod agent_io;
pub mod fetch;
pub mod mint;
pub mod ssrf;
pub mod tls;
pub mod url;
