//! `GET /v1/config` (viewer and up): the running config as JSON, secrets only as the references
//! the file names (`vault:…`, `env:…`, `file:…`, `kv:…`); a value that is not a reference
//! under a secret-bearing key (`*token*`, `*secret*`, `*password*`, `key`, `*_key`) shows as
//! `"<redacted>"`, and so does the password of any URL (`redis://:PASSWORD@host`). Nothing is resolved for it: the answer is built from the text the running
//! config was compiled from, never from the compiled secrets.
//!
//! `POST /v1/config/check` (operator; body: candidate TOML): the same `compile()` that `check`,
//! `run` and reload use, on the admin thread's blocking pool; 200 `{"ok":true,"warnings":[…]}`
//! or 422 `{"ok":false,"errors":["file:line: key: message", …]}`. Nothing is applied.
// Control plane: the admin thread.
#![allow(clippy::disallowed_types)]
use super::admin::Reply;
use super::control::Control;
use crate::config::Compiled;

/// Largest candidate config.
pub const MAX_CONFIG: usize = 1024 * 1024;

/// The name errors in a candidate config are reported under.
const CANDIDATE: &str = "candidate.toml";

/// `GET /v1/config`.
pub fn show(control: &Control) -> Reply {
    let cfg = control.current();
    let config = match redacted(&cfg) {
        Ok(v) => v,
        Err(e) => return Reply::error(500, "internal", &e),
    };
    let body = serde_json::json!({
        "source": cfg.source,
        "generation": control.generation(),
        "config": config,
    });
    Reply {
        status: 200,
        content_type: "application/json",
        body: body.to_string(),
    }
}

/// The running config's text as JSON, with non-reference secrets redacted.
pub fn redacted(cfg: &Compiled) -> Result<serde_json::Value, String> {
    let v: toml::Value = toml::from_str(&cfg.source_text)
        .map_err(|e| format!("the running config no longer parses: {e}"))?;
    let mut j = serde_json::to_value(v).map_err(|e| e.to_string())?;
    redact(&mut j, false);
    Ok(j)
}

fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["token", "secret", "password", "passphrase", "private"]
        .iter()
        .any(|w| k.contains(w))
        || k == "key"
        || k.ends_with("_key")
}

fn is_reference(s: &str) -> bool {
    crate::secrets::SecretRef::parse(s).is_ok()
}

fn redact(v: &mut serde_json::Value, secret: bool) {
    match v {
        serde_json::Value::String(s) if secret && !is_reference(s) => {
            *s = "<redacted>".to_string();
        }
        serde_json::Value::String(s) => {
            if let Some(masked) = mask_url_password(s) {
                *s = masked;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact(i, secret)),
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                redact(x, secret || secret_key(k));
            }
        }
        _ => {}
    }
}

/// A URL's password (`redis://:pw@host`, `https://user:pw@host/…`) as `<redacted>`, wherever
/// the URL stands (a Redis or sink URL is not under a secret-bearing key); `None` when the
/// string has no `scheme://user:password@` part.
fn mask_url_password(s: &str) -> Option<String> {
    let start = s.find("://")? + 3;
    let rest = &s[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some(format!(
        "{}{}:<redacted>{}",
        &s[..start],
        &rest[..colon],
        &rest[at..]
    ))
}

/// `POST /v1/config/check` with the candidate's bytes.
pub async fn check(control: &Control, body: Vec<u8>) -> Reply {
    let text = match String::from_utf8(body) {
        Ok(t) => t,
        Err(_) => return Reply::error(400, "bad_request", "the config is not UTF-8"),
    };
    let cfg = control.current();
    let base = std::path::Path::new(&cfg.source)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let job = move || match crate::config::compile_str(CANDIDATE, &text, &base) {
        Ok(c) => Ok(c.warnings.clone()),
        Err(e) => Err(e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
    };
    let (status, body) = match monoio::spawn_blocking(job).await {
        Ok(Ok(warnings)) => (200, serde_json::json!({"ok": true, "warnings": warnings})),
        Ok(Err(errors)) => (422, serde_json::json!({"ok": false, "errors": errors})),
        Err(_) => return Reply::error(500, "internal", "the check task failed"),
    };
    Reply {
        status,
        content_type: "application/json",
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_show_as_references_or_redacted() {
        let mut v = serde_json::json!({
            "server": {"admin_token": "env:ADMIN", "metrics_token": "plain-token-value",
                       "listen": ["127.0.0.1:1"]},
            "proxies": [{"name": "crm", "credential": {"type": "bearer", "token": "vault:crm"},
                         "headers": {"x": "y"}}],
            "vault": {"key": "file:/k", "path": "/v"},
            "audit": {"signing_key": "literal-signing-key"},
            "agents": [{"id": "a", "key_sha256": "ab"}],
        });
        redact(&mut v, false);
        assert_eq!(v["server"]["admin_token"], "env:ADMIN");
        assert_eq!(v["server"]["metrics_token"], "<redacted>");
        assert_eq!(v["server"]["listen"][0], "127.0.0.1:1");
        assert_eq!(v["proxies"][0]["credential"]["token"], "vault:crm");
        assert_eq!(v["proxies"][0]["headers"]["x"], "y");
        assert_eq!(v["vault"]["key"], "file:/k");
        assert_eq!(v["vault"]["path"], "/v");
        assert_eq!(v["audit"]["signing_key"], "<redacted>");
        assert_eq!(v["agents"][0]["key_sha256"], "ab");
    }

    #[test]
    fn url_passwords_are_masked_wherever_they_stand() {
        let mut v = serde_json::json!({
            "state": {"redis": "redis://:hunter2@10.0.0.5:6379/0"},
            "meters": {"redis": "redis://app:p%40ss@r:6379"},
            "sink": {"url": "https://u:pw@siem.example/path@x?q=a:b@c"},
            "plain": ["https://api.example.com/v1", "redis://r:6379", "user@example.com",
                      "https://user@host/x"],
        });
        redact(&mut v, false);
        assert_eq!(v["state"]["redis"], "redis://:<redacted>@10.0.0.5:6379/0");
        assert_eq!(v["meters"]["redis"], "redis://app:<redacted>@r:6379");
        assert_eq!(
            v["sink"]["url"],
            "https://u:<redacted>@siem.example/path@x?q=a:b@c"
        );
        assert_eq!(v["plain"][0], "https://api.example.com/v1");
        assert_eq!(v["plain"][1], "redis://r:6379");
        assert_eq!(v["plain"][2], "user@example.com");
        assert_eq!(v["plain"][3], "https://user@host/x");
    }
}
