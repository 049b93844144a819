//! Everything that talks to upstreams.
pub mod conn;
pub mod pool;
pub mod request;
pub mod response;
