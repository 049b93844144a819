//! The audit trail: one hash-chained JSON line per call, written off the request path.
#![deny(unsafe_code)]

pub mod files;
pub mod index;
pub mod record;

pub use record::{AuditRecord, Decision, GapReason, SmallStr, StoredRecord};
pub mod ring;
pub use ring::{OnFull, Ring};
