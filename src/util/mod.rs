//! Small shared vocabulary with no dependency on the rest of the crate.
pub mod clock;
pub mod datetime;
pub mod hex;
pub mod registry;
pub mod totp;
pub mod units;
pub mod wait;
pub mod wake;
