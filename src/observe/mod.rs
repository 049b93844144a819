//! Off the request path: the call's record (`call`, a drop guard), per-worker metric shards
//! (`metrics`) and the tamper-evident audit trail (`audit`).
pub mod audit;
pub mod call;
pub mod metrics;
