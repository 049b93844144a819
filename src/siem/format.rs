//! What a sink sends, built from audit lines exactly as they are on disk (the JSON record with
//! its `prev` and `hash`, so a receiver can check the chain): HTTP bodies (NDJSON, Splunk HEC,
//! Elastic bulk) and RFC 5424 syslog messages.
#![forbid(unsafe_code)]

use super::config::{HttpFormat, HttpSink, SyslogSink};
use serde_json::Value;

/// The SD-ID of the structured data element (`name@PEN`; 32473 is the private enterprise
/// number RFC 5612 reserves for documentation and examples).
pub const SD_ID: &str = "portcullis@32473";

/// The chain hash of a line (its last 64 hex digits before `"}`), the de-duplication key of
/// every record (call records also carry `id`, but a completion line shares its call's).
pub fn line_hash(line: &[u8]) -> Option<&str> {
    let t = crate::observe::audit::record::split_tail(line)?;
    std::str::from_utf8(t.hash_hex).ok()
}

/// The body of one HTTP delivery and its content type.
pub fn http_body(cfg: &HttpSink, lines: &[&[u8]], out: &mut Vec<u8>) -> &'static str {
    out.clear();
    match cfg.format {
        HttpFormat::Ndjson => {
            for l in lines {
                out.extend_from_slice(l);
                out.push(b'\n');
            }
            "application/x-ndjson"
        }
        HttpFormat::SplunkHec => {
            for l in lines {
                let v: Value = serde_json::from_slice(l).unwrap_or(Value::Null);
                let ts = v.get("ts").and_then(Value::as_str).unwrap_or("");
                let time = crate::observe::audit::record::parse_rfc3339(ts)
                    .map(|us| format!("{}.{:06}", us / 1_000_000, us % 1_000_000))
                    .unwrap_or_else(|| "null".into());
                out.extend_from_slice(b"{\"time\":");
                out.extend_from_slice(time.as_bytes());
                out.extend_from_slice(b",\"source\":\"portcullis\",\"sourcetype\":");
                crate::observe::audit::record::push_json_str(out, &cfg.sourcetype);
                if let Some(i) = &cfg.index {
                    out.extend_from_slice(b",\"index\":");
                    crate::observe::audit::record::push_json_str(out, i);
                }
                out.extend_from_slice(b",\"event\":");
                out.extend_from_slice(l);
                out.extend_from_slice(b"}\n");
            }
            "application/json"
        }
        HttpFormat::ElasticBulk => {
            let index = cfg.index.as_deref().unwrap_or("portcullis-audit");
            for l in lines {
                // `create` with the line's hash as `_id`: a redelivered record is a 409, not a
                // duplicate document (and `create` is what data streams require)
                out.extend_from_slice(b"{\"create\":{\"_index\":");
                crate::observe::audit::record::push_json_str(out, index);
                if let Some(h) = line_hash(l) {
                    out.extend_from_slice(b",\"_id\":\"");
                    out.extend_from_slice(h.as_bytes());
                    out.push(b'"');
                }
                out.extend_from_slice(b"}}\n");
                // `@timestamp` for data streams, then every member of the record unchanged
                let ts = serde_json::from_slice::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("ts").and_then(Value::as_str).map(str::to_string));
                match ts {
                    Some(ts) if l.len() > 1 => {
                        out.extend_from_slice(b"{\"@timestamp\":");
                        crate::observe::audit::record::push_json_str(out, &ts);
                        out.push(b',');
                        out.extend_from_slice(&l[1..]);
                    }
                    _ => out.extend_from_slice(l),
                }
                out.push(b'\n');
            }
            "application/x-ndjson"
        }
        HttpFormat::OtlpLogs => {
            otlp_logs(lines, out);
            "application/x-protobuf"
        }
    }
}

/// An OTLP `ExportLogsServiceRequest` (protobuf) with one log record per line: the line as the
/// string body, its key fields as `portcullis.*` attributes, `event_name`
/// `portcullis.audit.<kind>`, the record's time, and severity INFO (WARN for refused calls
/// and gaps).
fn otlp_logs(lines: &[&[u8]], out: &mut Vec<u8>) {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    let kv = |k: &str, v: any_value::Value| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let now_ns = crate::util::clock::unix_now().as_nanos() as u64;
    let mut records = Vec::with_capacity(lines.len());
    for l in lines {
        let v: Value = serde_json::from_slice(l).unwrap_or(Value::Null);
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("call");
        let warn = kind == "gap"
            || (kind == "call" && v.get("decision").and_then(Value::as_str) != Some("allow"));
        let mut attributes = vec![kv(
            "portcullis.kind",
            any_value::Value::StringValue(kind.into()),
        )];
        for k in [
            "id", "agent", "proxy", "method", "path", "decision", "code", "reason", "hash",
        ] {
            if let Some(s) = v.get(k).and_then(Value::as_str) {
                attributes.push(kv(
                    &format!("portcullis.{k}"),
                    any_value::Value::StringValue(s.into()),
                ));
            }
        }
        for k in ["status", "dropped", "total_us"] {
            if let Some(n) = v.get(k).and_then(Value::as_i64) {
                attributes.push(kv(
                    &format!("portcullis.{k}"),
                    any_value::Value::IntValue(n),
                ));
            }
        }
        let ts_ns = v
            .get("ts")
            .and_then(Value::as_str)
            .and_then(crate::observe::audit::record::parse_rfc3339)
            .map_or(0, |us| us.saturating_mul(1000));
        // the call's W3C trace id: the log record joins its trace in the collector
        let trace_id = v
            .get("trace_id")
            .and_then(Value::as_str)
            .filter(|t| t.len() == 32)
            .and_then(|t| {
                let b = t.as_bytes();
                (0..16)
                    .map(|i| {
                        let d = |c: u8| crate::util::hex::digit(c);
                        Some((d(b[2 * i])? << 4) | d(b[2 * i + 1])?)
                    })
                    .collect::<Option<Vec<u8>>>()
            })
            .unwrap_or_default();
        records.push(LogRecord {
            time_unix_nano: ts_ns,
            trace_id,
            observed_time_unix_nano: now_ns,
            severity_number: if warn { 13 } else { 9 },
            severity_text: if warn { "WARN" } else { "INFO" }.into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(
                    String::from_utf8_lossy(l).into_owned(),
                )),
            }),
            attributes,
            event_name: format!("portcullis.audit.{kind}"),
            ..Default::default()
        });
    }
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv(
                        "service.name",
                        any_value::Value::StringValue("portcullis".into()),
                    ),
                    kv(
                        "host.name",
                        any_value::Value::StringValue(super::config::local_hostname()),
                    ),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "portcullis.audit".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    out.reserve(req.encoded_len());
    // encoding into a Vec cannot run out of room
    let _ = req.encode(out);
}

/// Whether a 2xx answer acknowledges the whole batch. Splunk HEC answers `{"code":0}`; an
/// Elastic bulk answer lists each item, and only `created` or a 409 conflict (the document
/// exists: a redelivery) count as delivered.
pub fn http_acknowledged(format: HttpFormat, body: &[u8]) -> Result<(), String> {
    match format {
        HttpFormat::Ndjson => Ok(()),
        HttpFormat::OtlpLogs => {
            use prost::Message;
            // a partial success names records the collector will never take: retrying cannot
            // help, so it is logged and the batch counts as delivered
            if let Ok(r) =
                opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(
                    body,
                )
                && let Some(p) = r.partial_success
                && p.rejected_log_records > 0
            {
                tracing::warn!(rejected = p.rejected_log_records, message = %p.error_message,
                    "audit sink: the OTLP collector rejected some records");
            }
            Ok(())
        }
        HttpFormat::SplunkHec => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| "Splunk HEC answered with something that is not JSON".to_string())?;
            match v.get("code").and_then(Value::as_i64) {
                Some(0) => Ok(()),
                c => Err(format!(
                    "Splunk HEC refused the batch: code {:?}, {}",
                    c,
                    v.get("text").and_then(Value::as_str).unwrap_or("")
                )),
            }
        }
        HttpFormat::ElasticBulk => {
            let v: Value = serde_json::from_slice(body).map_err(|_| {
                "Elasticsearch answered with something that is not JSON".to_string()
            })?;
            if v.get("errors").and_then(Value::as_bool) == Some(false) {
                return Ok(());
            }
            let items = v
                .get("items")
                .and_then(Value::as_array)
                .ok_or("Elasticsearch answered errors without items")?;
            for it in items {
                let op = it
                    .as_object()
                    .and_then(|o| o.values().next())
                    .ok_or("Elasticsearch answered a malformed item")?;
                let status = op.get("status").and_then(Value::as_u64).unwrap_or(0);
                if !((200..300).contains(&status) || status == 409) {
                    let reason = op
                        .pointer("/error/reason")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(format!(
                        "Elasticsearch refused a record: {status}: {reason}"
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Appends one RFC 5424 message for `line` (no framing): `<PRI>1 TIMESTAMP HOSTNAME APP-NAME
/// PROCID MSGID [portcullis@32473 …] JSON`. MSGID is `call` or the record's `kind` (gap,
/// checkpoint, anchor, completion); severity info for allowed calls and checkpoints, notice for
/// refused calls, warning for gaps.
pub fn syslog_message(cfg: &SyslogSink, pid: u32, line: &[u8], out: &mut Vec<u8>) {
    let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let kind = s("kind").unwrap_or("call");
    let severity: u8 = match kind {
        "gap" => 4,
        "call" if s("decision") != Some("allow") => 5,
        _ => 6,
    };
    let pri = u16::from(cfg.facility) * 8 + u16::from(severity);
    let ts = s("ts").filter(|t| t.len() <= 32 && t.bytes().all(|b| (33..=126).contains(&b)));
    out.extend_from_slice(format!("<{pri}>1 ").as_bytes());
    out.extend_from_slice(ts.unwrap_or("-").as_bytes());
    out.push(b' ');
    out.extend_from_slice(cfg.hostname.as_bytes());
    out.push(b' ');
    out.extend_from_slice(cfg.app_name.as_bytes());
    out.extend_from_slice(format!(" {pid} ").as_bytes());
    out.extend_from_slice(
        if kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            kind.as_bytes()
        } else {
            b"-"
        },
    );
    out.extend_from_slice(b" [");
    out.extend_from_slice(SD_ID.as_bytes());
    let mut param = |name: &str, value: &str| {
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        for c in value.chars() {
            if matches!(c, '"' | '\\' | ']') {
                out.push(b'\\');
            }
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
        out.push(b'"');
    };
    for k in [
        "id", "agent", "proxy", "method", "decision", "code", "reason",
    ] {
        if let Some(val) = s(k) {
            param(k, val);
        }
    }
    for k in ["status", "dropped"] {
        if let Some(n) = v.get(k).and_then(Value::as_u64) {
            param(k, &n.to_string());
        }
    }
    if let Some(h) = line_hash(line) {
        param("hash", h);
    }
    out.extend_from_slice(b"] ");
    out.extend_from_slice(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::siem::config::Transport;

    fn line(extra: &str) -> Vec<u8> {
        format!(
            "{{\"ts\":\"2026-11-24T09:59:27.123456Z\",\"id\":\"r1\",\"agent\":\"bot \\\"x]\",\"proxy\":\"crm\",\"method\":\"GET\",\"status\":403,\"decision\":\"deny\"{extra},\"prev\":\"{}\",\"hash\":\"{}\"}}",
            "0".repeat(64),
            "a".repeat(64)
        )
        .into_bytes()
    }

    #[test]
    fn syslog_5424_with_escaped_structured_data() {
        let cfg = SyslogSink {
            host: "h".into(),
            port: 1,
            transport: Transport::Tcp,
            tls: None,
            app_name: "portcullis".into(),
            facility: 10,
            hostname: "gw1".into(),
        };
        let l = line("");
        let mut out = Vec::new();
        syslog_message(&cfg, 42, &l, &mut out);
        let text = String::from_utf8(out).unwrap();
        let want = format!(
            "<85>1 2026-11-24T09:59:27.123456Z gw1 portcullis 42 call [portcullis@32473 id=\"r1\" agent=\"bot \\\"x\\]\" proxy=\"crm\" method=\"GET\" decision=\"deny\" status=\"403\" hash=\"{}\"] {}",
            "a".repeat(64),
            String::from_utf8(l).unwrap()
        );
        assert_eq!(text, want);
    }

    #[test]
    fn elastic_answers() {
        let f = HttpFormat::ElasticBulk;
        assert!(http_acknowledged(f, br#"{"errors":false,"items":[]}"#).is_ok());
        assert!(
            http_acknowledged(
                f,
                br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409}}]}"#
            )
            .is_ok()
        );
        let e = http_acknowledged(
            f,
            br#"{"errors":true,"items":[{"create":{"status":400,"error":{"reason":"mapper"}}}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("400: mapper"), "{e}");
        assert!(http_acknowledged(f, b"<html>").is_err());
        assert!(
            http_acknowledged(HttpFormat::SplunkHec, br#"{"text":"Success","code":0}"#).is_ok()
        );
        assert!(
            http_acknowledged(
                HttpFormat::SplunkHec,
                br#"{"text":"Invalid token","code":4}"#
            )
            .is_err()
        );
    }

    #[test]
    fn bodies() {
        let l = line("");
        let mut cfg = HttpSink {
            url: crate::net::url::Url::parse("http://127.0.0.1:1/x").unwrap(),
            tls: None,
            format: HttpFormat::ElasticBulk,
            auth: None,
            index: Some("audit".into()),
            sourcetype: "portcullis:audit".into(),
        };
        let mut out = Vec::new();
        http_body(&cfg, &[&l], &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let mut it = text.lines();
        let action: Value = serde_json::from_str(it.next().unwrap()).unwrap();
        assert_eq!(action["create"]["_id"], "a".repeat(64));
        let doc: Value = serde_json::from_str(it.next().unwrap()).unwrap();
        assert_eq!(doc["@timestamp"], "2026-11-24T09:59:27.123456Z");
        assert_eq!(doc["id"], "r1");
        cfg.format = HttpFormat::SplunkHec;
        http_body(&cfg, &[&l, &l], &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let ev: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(ev["time"].as_f64(), Some(1_795_514_367.123_456));
        assert_eq!(ev["index"], "audit");
        assert_eq!(ev["event"]["hash"], "a".repeat(64));
        assert_eq!(text.lines().count(), 2);
    }
}
