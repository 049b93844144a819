//! Stages 4 and 5 of a call: may this caller make this call (`authz`), and how often (`meter`).
pub mod authz;
pub mod budget;
pub mod budget_cluster;
pub mod meter;
