//! The audit trail: one hash-chained JSON line per call, written off the request path.
//!
//! ```text
//!  worker 0 ─┐ CallLog::drop → AuditRecord ─┐
//!  worker 1 ─┼───────────────────────────────┼─► Ring (lock-free, bounded) ─► writer thread ─► dir/audit-…jsonl (+ .idx)
//!  worker N ─┘        push: never waits      ┘   drops counted → gap records   chain, rotate, fsync
//!                                                                              ▲
//!  `audit verify`  ─ verify::verify_dir ───────────────────────────────────────┤
//!  `logs`, `GET /v1/requests` ─ query::query (sparse index, newest first) ─────┘
//! ```
//!
//! - [`record`]: the record, its line encoding and the chain hash; [`StoredRecord`] read back.
//! - [`ring`]: the only `unsafe` code of the crate.
//! - [`gate`]: [`AuditRing`], the ring plus what the data plane needs of the writer's health
//!   (`on_error = "refuse"`: [`AuditRing::accepting`], durable-before-response tickets).
//! - [`sign`]: Ed25519 checkpoint keys.
//! - [`writer`]: the dedicated thread; [`AuditConfig`], [`Handle`], exported [`AuditStats`].
//! - [`verify`]: chain verification with file:line breaks, checkpoint signatures, the expected
//!   head and retention anchors; a line reader.
//! - [`query`]: filtered newest-first queries over the index.
//! - [`index`], [`files`]: the sidecar index format, file names and listing.
//!
//! # Integration
//!
//! `server::start::run` builds one ring from `[audit]` ([`AuditConfig::ring`]) and starts the writer
//! ([`start`]) before the workers; each worker keeps a clone of the `Arc<AuditRing>`, and an
//! `CallLog` borrows it from its worker; its `Drop` builds an [`AuditRecord`] and calls
//! [`Ring::push`] (never waits under `on_full = "drop"`; at most the block budget under
//! `"block"`). On SIGTERM the workers drain first, then [`Handle::flush_and_stop`]. Metrics read
//! [`Handle::snapshot`] (queue depth, drops, write errors).
//!
//! Every file here carries its own `#![forbid(unsafe_code)]` except `ring.rs`; this module
//! cannot (a `forbid` here would cover `ring` too).
#![deny(unsafe_code)]

pub mod files;
pub mod gate;
pub mod index;
pub mod query;
pub mod record;
pub mod ring;
pub mod sign;
pub mod telemetry;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

pub use gate::{AuditRing, OnError};
pub use query::{Query, StatusFilter, query};
pub use record::{AuditRecord, Decision, SmallStr, StoredRecord};
pub use ring::{OnFull, Ring};
pub use sign::SigningKey;
pub use verify::{VerifyError, VerifyOptions, verify_dir_with};
pub use writer::{AuditConfig, AuditStats, AuditWriter, FsyncPolicy, Handle, StatsSnapshot};

use std::sync::Arc;

/// Builds the ring for `cfg` and starts the writer on it.
pub fn start(cfg: AuditConfig) -> std::io::Result<(Arc<AuditRing>, Handle)> {
    let ring = cfg.ring();
    let handle = AuditWriter::spawn(cfg, ring.clone())?;
    Ok((ring, handle))
}
