//! HTTP/1.1 framing, hand-written for the hot path: head parsing over offsets (`head`), the
//! chunked decoder (`chunked`), hop-by-hop rules (`hop`) and the response writer (`write`).
pub mod body;
pub mod canon;
pub mod chunked;
pub mod forwarded;
pub mod head;
pub mod hop;
pub mod io;
pub mod query;
pub mod write;
