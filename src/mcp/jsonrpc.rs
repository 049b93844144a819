//! JSON-RPC 2.0 extraction for MCP request bodies: what the policy decides on, read with a real
//! JSON parser (`serde_json`), so strings are compared after unescaping (`"delete\u005faccount"`
//! is `delete_account`), and refused where a parser and a server could disagree: duplicate keys
//! at any depth (serde would keep the last one, a server might keep the first), lone surrogates,
//! a missing or wrong `jsonrpc`, a method that is not a string, an empty batch, more messages than
//! the limit.
//!
//! Sans-io: bytes in, [`Message`]s out. The Streamable HTTP header wire (SEP-2243: `Mcp-Method`
//! and `Mcp-Name`, a value either plain or `=?base64?…?=`) is decoded by [`decode_header_value`]
//! and checked against the body by [`check_headers`].
use base64::Engine;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Most messages one POST body may carry (a batch), by default.
pub const DEFAULT_MAX_BATCH: usize = 100;
/// The longest tool / prompt name or resource URI accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// A JSON-RPC message id as the agent sent it, kept as JSON text so an answer echoes it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub String);

/// One JSON-RPC message of a POST body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request: has a `method` and an `id`.
    Request {
        id: Id,
        method: String,
        target: Target,
    },
    /// A notification: a `method` and no `id`.
    Notification { method: String },
    /// A response (to a server-initiated request): `result` or `error`, and an `id`.
    Response { id: Id },
}

impl Message {
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method } => Some(method),
            Message::Response { .. } => None,
        }
    }

    pub fn target(&self) -> &Target {
        match self {
            Message::Request { target, .. } => target,
            _ => &Target::None,
        }
    }

    pub fn id(&self) -> Option<&Id> {
        match self {
            Message::Request { id, .. } | Message::Response { id } => Some(id),
            Message::Notification { .. } => None,
        }
    }
}

/// What a request acts on, for the methods the policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    None,
    /// `tools/call` → `params.name`.
    Tool(String),
    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe` → `params.uri`.
    Resource(String),
    /// `prompts/get` → `params.name`.
    Prompt(String),
}

impl Target {
    /// The value `Mcp-Name` mirrors.
    pub fn name(&self) -> Option<&str> {
        match self {
            Target::None => None,
            Target::Tool(s) | Target::Resource(s) | Target::Prompt(s) => Some(s),
        }
    }
}

/// A parsed POST body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// Sent as a JSON array (even of one element).
    pub batch: bool,
    pub messages: Vec<Message>,
}

/// Why a body or a header was refused. `Display` is the message the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpError {
    /// Not JSON, or JSON the gateway will not read the same way as every server.
    Json(String),
    /// JSON, but not a JSON-RPC 2.0 message.
    NotJsonRpc(String),
    EmptyBatch,
    BatchTooLarge(usize),
    /// `Mcp-Method` / `Mcp-Name` disagree with the body, or cannot be decoded.
    Header(String),
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpError::Json(m) => write!(f, "invalid JSON: {m}"),
            McpError::NotJsonRpc(m) => write!(f, "not a JSON-RPC 2.0 message: {m}"),
            McpError::EmptyBatch => f.write_str("empty JSON-RPC batch"),
            McpError::BatchTooLarge(n) => write!(f, "JSON-RPC batch over {n} messages"),
            McpError::Header(m) => f.write_str(m),
        }
    }
}

/// Parses a POST body: one JSON-RPC message or a batch of at most `max_batch`.
pub fn parse_body(body: &[u8], max_batch: usize) -> Result<Body, McpError> {
    let value = strict_parse(body)?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(McpError::EmptyBatch);
            }
            if items.len() > max_batch {
                return Err(McpError::BatchTooLarge(max_batch));
            }
            let messages = items
                .into_iter()
                .map(message)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Body {
                batch: true,
                messages,
            })
        }
        other => Ok(Body {
            batch: false,
            messages: vec![message(other)?],
        }),
    }
}

fn not_rpc(m: impl Into<String>) -> McpError {
    McpError::NotJsonRpc(m.into())
}

fn message(v: Value) -> Result<Message, McpError> {
    let Value::Object(mut o) = v else {
        return Err(not_rpc("a message must be a JSON object"));
    };
    match o.get("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        _ => return Err(not_rpc("\"jsonrpc\" must be \"2.0\"")),
    }
    let id = match o.remove("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(Id(v.to_string())),
        Some(Value::Null) => return Err(not_rpc("\"id\" must not be null")),
        Some(_) => return Err(not_rpc("\"id\" must be a string or a number")),
    };
    match o.remove("method") {
        Some(Value::String(method)) => {
            if o.contains_key("result") || o.contains_key("error") {
                return Err(not_rpc("a request has no \"result\" or \"error\""));
            }
            if method.is_empty() || method.chars().any(char::is_control) {
                return Err(not_rpc("\"method\" must be a non-empty name"));
            }
            let params = o.remove("params");
            match &params {
                None | Some(Value::Object(_) | Value::Array(_)) => {}
                Some(_) => return Err(not_rpc("\"params\" must be an object or an array")),
            }
            match id {
                None => Ok(Message::Notification { method }),
                Some(id) => {
                    let target = target(&method, params.as_ref())?;
                    Ok(Message::Request { id, method, target })
                }
            }
        }
        Some(_) => Err(not_rpc("\"method\" must be a string")),
        None => {
            let Some(id) = id else {
                return Err(not_rpc("a message needs \"method\" or \"id\""));
            };
            match (o.contains_key("result"), o.contains_key("error")) {
                (true, false) | (false, true) => Ok(Message::Response { id }),
                _ => Err(not_rpc(
                    "a response has exactly one of \"result\" and \"error\"",
                )),
            }
        }
    }
}

/// The name or URI a method acts on; required (and a string) for the methods the policy names.
fn target(method: &str, params: Option<&Value>) -> Result<Target, McpError> {
    let (key, make): (&str, fn(String) -> Target) = match method {
        "tools/call" => ("name", Target::Tool),
        "prompts/get" => ("name", Target::Prompt),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            ("uri", Target::Resource)
        }
        _ => return Ok(Target::None),
    };
    let value = params
        .and_then(|p| p.as_object())
        .and_then(|p| p.get(key))
        .ok_or_else(|| not_rpc(format!("{method} needs params.{key}")))?;
    let Value::String(s) = value else {
        return Err(not_rpc(format!("params.{key} must be a string")));
    };
    if s.is_empty() || s.len() > MAX_NAME_LEN || s.chars().any(char::is_control) {
        return Err(not_rpc(format!(
            "params.{key} must be 1 to {MAX_NAME_LEN} bytes without control characters"
        )));
    }
    Ok(make(s.clone()))
}

/// Decodes an `Mcp-Method` / `Mcp-Name` value: plain visible ASCII, or `=?base64?B64?=` (the
/// sentinel is case-sensitive: any other spelling is a literal value) holding UTF-8.
pub fn decode_header_value(v: &[u8]) -> Result<String, McpError> {
    const PRE: &[u8] = b"=?base64?";
    const POST: &[u8] = b"?=";
    if v.len() >= PRE.len() + POST.len() && v.starts_with(PRE) && v.ends_with(POST) {
        let inner = &v[PRE.len()..v.len() - POST.len()];
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .map_err(|_| McpError::Header("an Mcp-* header has invalid base64".into()))?;
        return String::from_utf8(bytes)
            .map_err(|_| McpError::Header("an Mcp-* header decodes to invalid UTF-8".into()));
    }
    if v.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        // Visible ASCII: bytes are chars.
        Ok(v.iter().map(|&b| b as char).collect())
    } else {
        Err(McpError::Header(
            "an Mcp-* header holds bytes outside visible ASCII without base64".into(),
        ))
    }
}

/// Checks the header wire against the body: when `Mcp-Method` is sent the body must be one
/// request with that method; when `Mcp-Name` is sent that request's target must be that name.
/// Either header on a batch, or `Mcp-Name` without `Mcp-Method`, is refused (nothing defines it).
pub fn check_headers(
    body: &Body,
    mcp_method: Option<&[u8]>,
    mcp_name: Option<&[u8]>,
) -> Result<(), McpError> {
    if mcp_method.is_none() && mcp_name.is_none() {
        return Ok(());
    }
    let Some(m) = mcp_method else {
        return Err(McpError::Header("Mcp-Name without Mcp-Method".into()));
    };
    if body.batch || body.messages.len() != 1 {
        return Err(McpError::Header(
            "Mcp-Method on a batch: the headers can mirror one message only".into(),
        ));
    }
    let msg = &body.messages[0];
    let method = decode_header_value(m)?;
    if msg.method() != Some(method.as_str()) {
        return Err(McpError::Header(format!(
            "Mcp-Method {method:?} disagrees with the body's method {:?}",
            msg.method().unwrap_or("")
        )));
    }
    match (mcp_name, msg.target().name()) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(McpError::Header(format!(
            "{method} needs an Mcp-Name header when Mcp-Method is sent"
        ))),
        (Some(_), None) => Err(McpError::Header(format!(
            "Mcp-Name on {method}, which names nothing"
        ))),
        (Some(n), Some(want)) => {
            let got = decode_header_value(n)?;
            if got == want {
                Ok(())
            } else {
                Err(McpError::Header(format!(
                    "Mcp-Name {got:?} disagrees with the body's {want:?}"
                )))
            }
        }
    }
}

/// `serde_json` into a `Value`, refusing duplicate object keys at any depth.
pub(crate) fn strict_parse(body: &[u8]) -> Result<Value, McpError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Strict
        .deserialize(&mut de)
        .map_err(|e| McpError::Json(e.to_string()))?;
    de.end().map_err(|e| McpError::Json(e.to_string()))?;
    Ok(v)
}

/// A `DeserializeSeed` building a `Value` like serde_json's own, but refusing duplicate keys.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format_args!("duplicate key {k:?}")));
            }
            let v = map.next_value_seed(Strict)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Message, McpError> {
        let b = parse_body(body.as_bytes(), DEFAULT_MAX_BATCH)?;
        assert!(!b.batch);
        Ok(b.messages.into_iter().next().unwrap())
    }

    fn tool(body: &str) -> Option<String> {
        match one(body).ok()?.target() {
            Target::Tool(t) => Some(t.clone()),
            _ => None,
        }
    }

    #[test]
    fn tools_call_name_is_read_after_unescaping() {
        let table: &[(&str, &str)] = &[
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_account","arguments":{}}}"#,
                "get_account",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete\u005faccount"}}"#,
                "delete_account",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"\u0064elete_account"}}"#,
                "delete_account",
            ),
            (
                " \n{ \"params\" : { \"name\" : \"x\" } , \"method\" : \"tools/call\", \"id\":\"a\", \"jsonrpc\":\"2.0\" }\r\n",
                "x",
            ),
        ];
        for (body, want) in table {
            assert_eq!(tool(body).as_deref(), Some(*want), "{body}");
        }
    }

    #[test]
    fn refused_bodies() {
        // (name, body)
        let table: &[(&str, &str)] = &[
            ("not json", "tools/call"),
            (
                "trailing bytes",
                r#"{"jsonrpc":"2.0","method":"ping","id":1} x"#,
            ),
            (
                "two documents",
                r#"{"jsonrpc":"2.0","method":"ping","id":1}{"jsonrpc":"2.0","method":"ping","id":2}"#,
            ),
            (
                "duplicate name",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get","name":"delete"}}"#,
            ),
            (
                "duplicate escaped name",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get","n\u0061me":"delete"}}"#,
            ),
            (
                "duplicate method",
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}"#,
            ),
            (
                "duplicate deep",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1,"a":2}}}"#,
            ),
            (
                "lone surrogate",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800"}}"#,
            ),
            ("jsonrpc 1.0", r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            ("jsonrpc missing", r#"{"id":1,"method":"ping"}"#),
            (
                "jsonrpc number",
                r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
            ),
            ("method number", r#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            ("method empty", r#"{"jsonrpc":"2.0","id":1,"method":""}"#),
            (
                "method control",
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\\u0000\"}",
            ),
            ("id null", r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#),
            ("id object", r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#),
            (
                "tools/call without name",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            ),
            (
                "tools/call without params",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            ),
            (
                "tools/call name number",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            ),
            (
                "tools/call name empty",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
            ),
            (
                "tools/call name newline",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\nb"}}"#,
            ),
            (
                "params string",
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
            ),
            (
                "resources/read without uri",
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"x"}}"#,
            ),
            ("neither method nor id", r#"{"jsonrpc":"2.0"}"#),
            (
                "response with both",
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            ),
            (
                "request with result",
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            ),
            ("scalar", "5"),
            ("empty batch", "[]"),
            (
                "batch with a scalar",
                r#"[{"jsonrpc":"2.0","method":"ping","id":1}, 5]"#,
            ),
            ("empty body", ""),
        ];
        for (name, body) in table {
            let r = parse_body(body.as_bytes(), DEFAULT_MAX_BATCH);
            assert!(r.is_err(), "{name}: {r:?}");
        }
    }

    #[test]
    fn kinds_and_targets() {
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            Message::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":"r1","result":{}}"#).unwrap(),
            Message::Response {
                id: Id("\"r1\"".into())
            }
        );
        let m = one(r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///reports/q1.pdf"}}"#).unwrap();
        assert_eq!(
            m.target(),
            &Target::Resource("file:///reports/q1.pdf".into())
        );
        assert_eq!(m.id(), Some(&Id("3".into())));
        let m =
            one(r#"{"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"summarise"}}"#)
                .unwrap();
        assert_eq!(m.target(), &Target::Prompt("summarise".into()));
        let m = one(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{"cursor":"abc"}}"#)
            .unwrap();
        assert_eq!(m.target(), &Target::None);
        assert_eq!(m.method(), Some("tools/list"));
    }

    #[test]
    fn batches() {
        let b = parse_body(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},
                 {"jsonrpc":"2.0","method":"notifications/progress"},
                 {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"b"}}]"#,
            DEFAULT_MAX_BATCH,
        )
        .unwrap();
        assert!(b.batch);
        assert_eq!(b.messages.len(), 3);
        assert_eq!(b.messages[2].target(), &Target::Tool("b".into()));
        let many = format!(
            "[{}]",
            [r#"{"jsonrpc":"2.0","method":"ping","id":1}"#; 4].join(",")
        );
        assert_eq!(
            parse_body(many.as_bytes(), 3),
            Err(McpError::BatchTooLarge(3))
        );
        assert!(parse_body(many.as_bytes(), 4).is_ok());
    }

    #[test]
    fn header_values() {
        // (raw, decoded or None for an error)
        let table: &[(&[u8], Option<&str>)] = &[
            (b"tools/call", Some("tools/call")),
            (b"=?base64?dG9vbHMvY2FsbA==?=", Some("tools/call")),
            (
                b"=?base64?dMO2w7ZsX3VuaWNvZGU=?=",
                Some("t\u{f6}\u{f6}l_unicode"),
            ),
            // Another spelling of the sentinel is a literal value.
            (
                b"=?BASE64?dG9vbHMvY2FsbA==?=",
                Some("=?BASE64?dG9vbHMvY2FsbA==?="),
            ),
            (b"=?base64?not base64!?=", None),
            (b"=?base64?/w==?=", None), // 0xff: not UTF-8
            (b"caf\xc3\xa9", None),     // raw non-ASCII
            (b"a\tb", None),
            (b"", Some("")),
        ];
        for (raw, want) in table {
            let got = decode_header_value(raw).ok();
            assert_eq!(got.as_deref(), *want, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn headers_against_body() {
        let call = parse_body(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_account"}}"#,
            9,
        )
        .unwrap();
        let ping = parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, 9).unwrap();
        let batch = parse_body(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, 9).unwrap();
        // (name, body, Mcp-Method, Mcp-Name, ok)
        type Row<'a> = (&'a str, &'a Body, Option<&'a [u8]>, Option<&'a [u8]>, bool);
        let table: &[Row] = &[
            ("no headers", &call, None, None, true),
            (
                "both agree",
                &call,
                Some(b"tools/call"),
                Some(b"get_account"),
                true,
            ),
            (
                "base64 name",
                &call,
                Some(b"tools/call"),
                Some(b"=?base64?Z2V0X2FjY291bnQ=?="),
                true,
            ),
            (
                "name differs",
                &call,
                Some(b"tools/call"),
                Some(b"delete_account"),
                false,
            ),
            (
                "name case differs",
                &call,
                Some(b"tools/call"),
                Some(b"Get_Account"),
                false,
            ),
            (
                "method differs",
                &call,
                Some(b"tools/list"),
                Some(b"get_account"),
                false,
            ),
            ("name missing", &call, Some(b"tools/call"), None, false),
            (
                "name without method",
                &call,
                None,
                Some(b"get_account"),
                false,
            ),
            ("ping with method", &ping, Some(b"ping"), None, true),
            ("ping with a name", &ping, Some(b"ping"), Some(b"x"), false),
            ("batch", &batch, Some(b"ping"), None, false),
        ];
        for (name, body, m, n, ok) in table {
            let r = check_headers(body, *m, *n);
            assert_eq!(r.is_ok(), *ok, "{name}: {r:?}");
        }
    }

    proptest::proptest! {
        /// Any escaping of a tool name reads back as the same name.
        #[test]
        fn any_escaping_reads_the_same_name(name in "[a-z_]{1,20}", mask in proptest::collection::vec(proptest::bool::ANY, 20)) {
            let mut esc = String::new();
            for (i, c) in name.chars().enumerate() {
                if mask[i] { esc.push_str(&format!("\\u{:04x}", c as u32)); } else { esc.push(c); }
            }
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{esc}"}}}}"#);
            proptest::prop_assert_eq!(tool(&body), Some(name));
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_body(&bytes, 4);
            let _ = decode_header_value(&bytes);
        }
    }
}
