//! `portcullis mcp pins|accept` against the admin API of a running gateway (issue 15, pinned
//! tool definitions): list the pins (and the changed definitions waiting), accept one.
//! Requests go through [`super::approvals::call`] (`--admin`, `--key env:VAR | file:PATH`).
use super::approvals::{Target, call};
use anyhow::{Result, bail};

#[derive(clap::Subcommand, Debug)]
pub enum McpCommand {
    /// The pinned MCP tool definitions, and the changed ones waiting to be accepted.
    Pins {
        #[command(flatten)]
        target: Target,
        /// Only this proxy's pins.
        #[arg(long)]
        proxy: Option<String>,
    },
    /// Accept the changed definition of TOOL on PROXY: it becomes the pin, the tool is listed
    /// and callable again.
    Accept {
        #[command(flatten)]
        target: Target,
        proxy: String,
        tool: String,
    },
}

/// A path segment: every byte but unreserved ones percent-encoded.
fn seg(s: &str) -> Result<String> {
    if s.is_empty() {
        bail!("an empty name");
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

pub fn run(cmd: McpCommand) -> Result<bool> {
    match cmd {
        McpCommand::Pins { target, proxy } => {
            let q = match proxy {
                Some(p) => format!("/v1/mcp/pins?proxy={}", seg(&p)?),
                None => "/v1/mcp/pins".to_string(),
            };
            call(&target, "GET", &q, b"")
        }
        McpCommand::Accept {
            target,
            proxy,
            tool,
        } => call(
            &target,
            "POST",
            &format!("/v1/mcp/pins/{}/{}/accept", seg(&proxy)?, seg(&tool)?),
            b"",
        ),
    }
}
