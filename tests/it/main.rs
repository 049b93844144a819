//! Black-box integration tests for the `portcullis` binary.
//!
//! Every test starts its own gateway process (see `support::Gateway`) against std-thread mock
//! upstreams (`support::MockUpstream`) and talks raw HTTP/1.1 bytes to it (`support::Conn`,
//! `support::send_raw`), so what is asserted is exactly what goes over the wire.
//!
//! The house rules in clippy.toml (no `Instant::now`, `thread::sleep` or `Mutex`) guard the
//! gateway's data plane; this harness is deliberately blocking std code on its own threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

mod admin;
mod agents_api;
mod approvals;
mod audit;
mod audit_integrity;
mod authz;
mod bao;
mod body_memory;
mod budgets;
mod cli_ident;
mod client_addr;
mod configs;
mod connect;
mod console;
mod forward;
mod forwarding;
mod hardening;
mod identity;
mod lifecycle;
mod listener_tls;
mod mcp;
mod meter;
mod meter_redis;
mod metrics;
mod oauth;
mod operator;
mod redact;
mod routing;
mod secret_mask;
mod siem;
mod smuggling;
mod tls;
mod traces;
mod upstream_errors;
mod upstream_reuse;
