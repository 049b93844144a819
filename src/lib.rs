//! portcullis: an egress gateway for AI agents. See DESIGN.md for the shape: one straight-line
//! pipeline (`pipeline.rs`), config compiled once (`config`), one refusal enum (`error.rs`),
//! secrets as a type (`secret.rs`), per-worker state (`worker.rs`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod canon;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod exchange;
pub mod http;
pub mod io;
pub mod pipeline;
pub mod route;
pub mod scan;
pub mod secret;
pub mod upstream;
pub mod worker;
