//! What the state store holds, as types. One schema for both backends: the embedded store
//! (`embedded.rs`, one table per keyspace) and Redis (`redis.rs`, one key prefix per keyspace).
//!
//! | keyspace | key | value | written by |
//! |---|---|---|---|
//! | `approvals` | approval id | [`Approval`] (JSON) | the approvals flow (issue 14) |
//! | `approval_bodies` | approval id | the request body as held (bytes) | the approvals flow |
//! | `approval_bindings` | [`Binding`] (SHA-256 of agent, method, path, query, body digest) | approval id | the approvals flow |
//! | `totp_steps` | admin id | last accepted RFC 6238 time step (u64) | admin sign-off (replay refusal) |
//! | `agents` | agent id | [`ManagedAgent`] (JSON) | the management API (issue 16): agents issued at run time |
//! | `agent_seen` | agent id | last time a managed agent's key was used (unix seconds, coarse) | the store thread, batched |
//! | `revocations` | key SHA-256 (hex) | [`Revocation`] (JSON) | reserved (a revoked agent is its `agents` record with `revoked_us`) |
//! | `tool_pins` | `proxy` NUL `tool` | [`ToolPin`] (JSON) | the pin table (`pins.rs`): pinned MCP tool definitions (issue 15) |
//! | `meta` | `"schema"` | schema version (u64) | the store at open |
//!
//! The reserved keyspaces exist (their tables are created at open, so a later version adds
//! code, not a migration); nothing reads or writes them yet. A managed agent's record holds
//! only SHA-256 hashes of its keys, never a key.
use serde::{Deserialize, Serialize};

/// The schema version written at open; a store with a newer version is refused.
pub const SCHEMA_VERSION: u64 = 1;

/// Where an approval stands. `Approved` stays `Approved` after its single execution
/// ([`Approval::executed_us`] says it ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
        }
    }
}

/// The policy binding of a held call: SHA-256 over the agent, the method, the canonical path,
/// the query and the body's SHA-256 (each length-prefixed). The same agent repeating the same
/// call finds the same approval; any other body is another approval.
pub type Binding = [u8; 32];

/// One approval: the call as held (head fields; the body is kept beside it) and its decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub status: Status,
    /// The agent that made the call (`None`: an anonymous caller on an open proxy).
    pub agent: Option<String>,
    pub proxy: String,
    pub method: String,
    /// The canonical path below the proxy's name, as the rules saw it.
    pub path: String,
    /// The raw query (without `?`), as the agent sent it.
    pub query: String,
    /// The request's header fields as they would be forwarded, credentials removed.
    pub headers: Vec<(String, String)>,
    pub body_sha256: String,
    pub body_len: u64,
    /// Index of the `approve` rule that held the call (`None`: the proxy's default).
    pub rule: Option<u32>,
    /// Hex of the [`Binding`].
    pub binding: String,
    pub created_us: u64,
    /// After this the approval is `expired` (pending or approved and not executed).
    pub expires_us: u64,
    #[serde(default)]
    pub decided_us: Option<u64>,
    /// The admin identity that decided.
    #[serde(default)]
    pub approver: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// When the approved call was sent upstream (it runs once).
    #[serde(default)]
    pub executed_us: Option<u64>,
    /// The request id of the call that executed it.
    #[serde(default)]
    pub executed_by: Option<String>,
}

/// An agent issued at run time (issue 16): only its keys' hashes are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedAgent {
    pub id: String,
    /// SHA-256 (hex) of the current key.
    pub key_sha256: String,
    pub roles: Vec<String>,
    pub created_us: u64,
    /// The keys are refused from then on (`credential_expired`).
    pub expires_us: Option<u64>,
    /// Revoked: every key of the agent is refused from then on (`unauthenticated`).
    pub revoked_us: Option<u64>,
    /// The key a rotation replaced (SHA-256 hex): it keeps working until `prev_until_us`.
    #[serde(default)]
    pub prev_key_sha256: Option<String>,
    #[serde(default)]
    pub prev_until_us: Option<u64>,
    /// The admin identity that issued it.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// Reserved for issue 16: a revoked key (honoured by every worker and replica).
#[allow(dead_code)] // reserved: no code reads or writes it yet (see the table above)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub agent: String,
    pub revoked_us: u64,
    /// The key keeps working until then (rotation grace).
    pub effective_us: u64,
}

/// The pinned digest of an MCP tool definition (issue 15, `state::pins`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolPin {
    pub proxy: String,
    pub tool: String,
    pub definition_sha256: String,
    pub pinned_us: u64,
    /// A changed definition seen since, waiting for an operator to accept it.
    pub pending_sha256: Option<String>,
}
