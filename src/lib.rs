//! portcullis: an egress gateway for AI agents. See DESIGN.md for the shape: one straight-line
//! pipeline (`pipeline.rs`), config compiled once (`config`), one refusal enum (`error.rs`),
//! secrets as a type (`secret.rs`), per-worker state (`worker.rs`).
// `deny`, not `forbid`, so that `audit/ring.rs` alone can `allow` it (each unsafe block there has
// a SAFETY comment). A unit test (`audit::tests::unsafe_only_in_ring`) fails the build's tests if
// any other file under src/ allows or uses `unsafe`.
#![deny(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth_out;
pub mod authn;
pub mod authz;
pub mod canon;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod control;
pub mod datetime;
pub mod demo;
pub mod error;
pub mod exchange;
pub mod fetch;
pub mod http;
pub mod io;
pub mod jwks;
pub mod jwt;
pub mod kv;
pub mod meter;
pub mod metrics;
pub mod oauth;
pub mod pipeline;
pub mod redact;
pub mod refresher;
pub mod route;
pub mod scan;
pub mod secret;
pub mod sigv4;
pub mod upstream;
pub mod vault;
pub mod worker;
