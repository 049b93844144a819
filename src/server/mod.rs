//! The process: start-up, control (signals, reload, readiness), the workers' accept loops and
//! drain, the admin listener, the control-plane refresher and the demo upstream.
pub mod admin;
pub mod admin_auth;
pub mod agents_api;
pub mod approvals;
pub mod config_api;
pub mod console;
pub mod control;
pub mod demo;
pub mod ops_metrics;
pub mod pins_api;
pub mod refresher;
pub mod start;
pub mod worker;
