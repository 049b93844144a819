//! MCP (Model Context Protocol) awareness, sans-io (issue 15): what a Streamable HTTP POST body
//! asks for, read the way a server will read it, so that rules can name MCP methods, tools,
//! resources and prompts.
//!
//! - [`jsonrpc`] — JSON-RPC 2.0 messages out of a POST body (single or batch), with the refusals
//!   that keep the gateway and the server reading the same thing (duplicate keys, escapes, lone
//!   surrogates), and the `Mcp-Method` / `Mcp-Name` header wire checked against the body.
//! - [`glob`] — the name patterns rules use (`get_*`, `file:///reports/**`).
//! - [`answer`] — JSON-RPC error answers for refused messages.
//! - [`lists`] — list answers (`tools/list`, ...) filtered per caller, JSON and SSE.
//! - [`pins`] — the digest of a tool's definition (rug-pull protection).
pub mod answer;
pub mod glob;
pub mod jsonrpc;
pub mod lists;
pub mod pins;
