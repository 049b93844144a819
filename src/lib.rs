//! portcullis: an egress gateway for AI agents. ARCHITECTURE.md (at the repository root) tells the
//! life of a call by file and function; `pipeline/mod.rs` is the one straight-line story of a call.
// `deny`, not `forbid`, so that `observe/audit/ring.rs` alone can `allow` it (each unsafe block
// there has a SAFETY comment). A unit test (`observe::audit::tests::unsafe_only_in_ring`) fails the
// build's tests if any other file under src/ allows or uses `unsafe`.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod credentials;
pub mod error;
pub mod http;
pub mod identity;
pub mod net;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod redact;
pub mod scan;
pub mod secrets;
pub mod server;
pub mod state;
pub mod upstream;
pub mod util;

#[cfg(test)]
mod layering;
