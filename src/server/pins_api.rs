//! The MCP tool pins API on the admin listener (issue 15, rug-pull protection; `state::pins`):
//!
//! - `GET /v1/mcp/pins[?proxy=NAME]` (viewer and up; an admin scoped to proxies sees theirs):
//!   every pin — proxy, tool, pinned digest, when, the changed digest waiting (if any), whether
//!   the config set it, and whether the pins are durable (`[state]`) or in memory only.
//! - `POST /v1/mcp/pins/{proxy}/{tool}/accept` (operator): the changed definition waiting
//!   becomes the pin; the tool is listed and callable again at once on every worker (with
//!   `[state] redis`, on every replica within ~200 ms). 404 when nothing is pending.
//!
//! The segments are percent-decoded; a tool segment that decodes to `/`, `.`/`..`, a control
//! character or more than 1024 bytes is a 400. Each accept is an audit record naming the admin
//! (`kind: "admin"`, action `mcp.pin.accept`, target `proxy/tool`).
use super::admin::Reply;
use super::admin_auth::{self, Who};
use super::control::Control;
use crate::config::Role;
use crate::http::head::RequestHead;
use crate::state::pins::{AcceptError, Pin, registry};

fn json(status: u16, v: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: v.to_string(),
    }
}

fn ts_us(us: u64) -> serde_json::Value {
    crate::util::datetime::format_rfc3339(i64::try_from(us / 1_000_000).unwrap_or(i64::MAX)).into()
}

fn pin_json(proxy: &str, tool: &str, p: &Pin) -> serde_json::Value {
    serde_json::json!({
        "proxy": proxy,
        "tool": tool,
        "sha256": format!("sha256:{}", p.sha256),
        "pinned_at": ts_us(p.pinned_us),
        "pending_sha256": p.pending.as_ref().map(|h| format!("sha256:{h}")),
        "source": if p.from_config { "config" } else { "seen" },
    })
}

/// A path segment naming a proxy or tool: percent-decoded UTF-8, 1..=1024 bytes, no control
/// character, no `/`, not `.` or `..`.
fn segment(raw: &[u8]) -> Result<String, Reply> {
    let bad = |why: &str| Reply::error(400, "bad_request", &format!("bad path segment: {why}"));
    let d = crate::http::query::pct_decode_strict(raw).ok_or_else(|| bad("malformed %-escape"))?;
    let s = String::from_utf8(d).map_err(|_| bad("not UTF-8"))?;
    if s.is_empty() || s.len() > crate::mcp::jsonrpc::MAX_NAME_LEN {
        return Err(bad("empty or too long"));
    }
    if s == "." || s == ".." || s.contains('/') || s.chars().any(char::is_control) {
        return Err(bad(
            "a name may not be '.', '..', or hold '/' or control characters",
        ));
    }
    Ok(s)
}

/// Handles `/v1/mcp/pins…` (the caller matched the prefix).
pub fn handle(head: &RequestHead, buf: &[u8], control: &Control) -> Reply {
    let method = head.method.get(buf);
    let target = head.target.get(buf);
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    let rest = &path[b"/v1/mcp/pins".len()..];
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return Reply::error(404, "not_found", "no such admin endpoint");
    }
    let parts: Vec<&[u8]> = rest.split(|b| *b == b'/').skip(1).collect();
    let cfg = control.current();
    let who = match admin_auth::identify(head, buf, &cfg) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match (method, parts.as_slice()) {
        (b"GET", []) => {
            if let Err(r) = who.require(Role::Viewer) {
                return r;
            }
            list(&who, &cfg, query)
        }
        (b"POST", [proxy, tool, b"accept"]) => {
            if let Err(r) = who.require(Role::Operator) {
                return r;
            }
            let reply = accept(&who, &cfg, proxy, tool);
            let t = format!(
                "{}/{}",
                String::from_utf8_lossy(proxy),
                String::from_utf8_lossy(tool)
            );
            admin_auth::audit(control, &who, "mcp.pin.accept", Some(&t), reply.status);
            reply
        }
        (_, [] | [_, _, b"accept"]) => Reply::error(
            405,
            "method_not_allowed",
            "this admin endpoint does not take that method",
        ),
        _ => Reply::error(404, "not_found", "no such admin endpoint"),
    }
}

fn list(who: &Who<'_>, cfg: &crate::config::Compiled, query: &[u8]) -> Reply {
    let mut want: Option<String> = None;
    for pair in query.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        match k {
            b"proxy" => match segment(v) {
                Ok(p) => want = Some(p),
                Err(r) => return r,
            },
            _ => {
                return Reply::error(
                    400,
                    "bad_request",
                    "unknown query parameter (this endpoint takes proxy=)",
                );
            }
        }
    }
    if let Some(p) = &want {
        if cfg.proxy_index(p).is_none() {
            return Reply::error(404, "not_found", "no such proxy");
        }
        if !who.may_see(p) {
            return Reply::error(403, "forbidden", "this admin may not see that proxy");
        }
    }
    let pins: Vec<serde_json::Value> = registry()
        .list(want.as_deref())
        .iter()
        .filter(|(proxy, _, _)| who.may_see(proxy))
        .map(|(proxy, tool, p)| pin_json(proxy, tool, p))
        .collect();
    json(
        200,
        serde_json::json!({ "pins": pins, "durable": registry().durable() }),
    )
}

fn accept(who: &Who<'_>, cfg: &crate::config::Compiled, proxy: &[u8], tool: &[u8]) -> Reply {
    let proxy = match segment(proxy) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let tool = match segment(tool) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let is_mcp = cfg
        .proxy_index(&proxy)
        .and_then(|i| cfg.proxies.get(i))
        .is_some_and(|p| p.mcp.is_some());
    if !is_mcp {
        return Reply::error(404, "not_found", "no MCP proxy with this name");
    }
    if !who.may_see(&proxy) {
        return Reply::error(403, "forbidden", "this admin may not act on that proxy");
    }
    match registry().accept(&proxy, &tool) {
        Ok(p) => json(200, pin_json(&proxy, &tool, &p)),
        Err(AcceptError::Unknown) => Reply::error(404, "not_found", "no pin for that tool"),
        Err(AcceptError::NothingPending) => Reply::error(
            404,
            "not_found",
            "no changed definition of that tool is waiting to be accepted",
        ),
        Err(AcceptError::FromConfig) => Reply::error(
            409,
            "pinned_in_config",
            "that tool is pinned in the config ([[proxies.tools]] pin): change the config",
        ),
    }
}
