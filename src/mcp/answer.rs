//! JSON-RPC error answers for refused MCP messages, so an agent's model reads the gateway's
//! reason ("portcullis: tool delete_account not allowed for agent support-bot
//! (denied_by_rule)") instead of a transport error. Sans-io: the pipeline writes the bytes.
use super::jsonrpc::Id;

/// The JSON-RPC error code for a message the gateway's policy refused (the implementation-
/// defined server-error range, -32000 to -32099).
pub const POLICY_REFUSED: i64 = -32001;

/// One message of a refused call that needs an answer (requests do; notifications and
/// responses get none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub id: Id,
    /// The gateway's error code (`denied_by_rule`, ...).
    pub code: &'static str,
    /// What the model reads.
    pub message: String,
}

/// The answer body: one error object, or an array for a batch (in message order).
pub fn body(batch: bool, items: &[Refused], request_id: &str) -> String {
    let one = |r: &Refused| {
        // `id` is kept as the JSON text the agent sent (a number or a string)
        let id: serde_json::Value =
            serde_json::from_str(&r.id.0).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": POLICY_REFUSED,
                "message": r.message,
                "data": { "code": r.code, "request_id": request_id },
            },
        })
    };
    if batch {
        serde_json::Value::Array(items.iter().map(one).collect()).to_string()
    } else {
        items
            .first()
            .map(|r| one(r).to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_answers_echo_the_ids() {
        let r = |id: &str, code| Refused {
            id: Id(id.into()),
            code,
            message: format!("portcullis: {code}"),
        };
        let one: serde_json::Value =
            serde_json::from_str(&body(false, &[r("7", "denied_by_rule")], "abc")).unwrap();
        assert_eq!(one["id"], 7);
        assert_eq!(one["jsonrpc"], "2.0");
        assert_eq!(one["error"]["code"], POLICY_REFUSED);
        assert_eq!(one["error"]["data"]["code"], "denied_by_rule");
        assert_eq!(one["error"]["data"]["request_id"], "abc");
        let many: serde_json::Value = serde_json::from_str(&body(
            true,
            &[r("\"a\"", "no_rule_matched"), r("2", "batch_refused")],
            "x",
        ))
        .unwrap();
        assert_eq!(many[0]["id"], "a");
        assert_eq!(many[1]["id"], 2);
        assert_eq!(many[1]["error"]["data"]["code"], "batch_refused");
    }
}
