//! Response redaction (`[[proxies.redact]]`): sans-io, streaming, bounded memory.
//!
//! - [`RedactProgram`] — the compiled paths of one proxy (`$.a.b`, `$.a[*].b`, `$..key`,
//!   `$.a[0]`, `$["quoted key"]`), each with its [`Action`] (`Remove` or `Mask`). Compiled once
//!   with the config; rules from several tables merge with [`RedactProgram::add`].
//! - [`JsonRedactor`] — `application/json` bodies.
//! - [`SseRedactor`] — `text/event-stream` bodies (each event's data redacted as JSON).
//!
//! How the pipeline uses it, per response (the body decoded from chunked/identity framing, and
//! not content-encoded — decompress first or skip redaction):
//!
//! ```
//! use portcullis::internals::redact::{Action, JsonRedactor, Limits, OnInvalid, RedactProgram};
//!
//! let prog = RedactProgram::compile(&["$..ssn"], Action::Remove).expect("paths");
//! let mut r = JsonRedactor::new(&prog, Limits::default(), OnInvalid::Block);
//! let mut out = Vec::new();
//! for chunk in [&b"{\"name\":\"a\",\"ss"[..], &b"n\":\"123\"}"[..]] {
//!     out.clear();
//!     r.feed(chunk, &mut out).expect("valid JSON"); // Err under Block: cut the response
//!     // write `out` as one chunk of the (re-framed, chunked) response body
//! }
//! out.clear();
//! r.finish(&mut out).expect("complete JSON");
//! assert_eq!(r.redactions(), 1);
//! ```
//!
//! The body length changes, so the response goes out with `Transfer-Encoding: chunked` (the
//! upstream `Content-Length` is dropped). `redactions()` feeds the audit record.

mod json;
pub mod mask;
mod path;
pub mod response;
mod sse;
pub mod usage;

pub use json::{Captured, JsonRedactor, Limits, OnInvalid, RedactError};
pub use path::{Action, RedactProgram};
pub use sse::{DEFAULT_MAX_EVENT, SseRedactor};
