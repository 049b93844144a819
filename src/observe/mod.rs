//! Off the request path: the call's record (`call`, a drop guard), per-worker metric shards
//! (`metrics`), the tamper-evident audit trail (`audit`) and the call's W3C trace context and
//! span (`trace`).
pub mod audit;
pub mod call;
pub mod metrics;
pub mod trace;
