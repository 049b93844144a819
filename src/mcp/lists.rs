//! Filtered MCP lists (issue 15): the answers to `tools/list`, `resources/list`,
//! `resources/templates/list` and `prompts/list` rewritten per caller, so an agent sees only the
//! entries it may call. Sans-io: response body bytes in (JSON or SSE, already de-chunked and
//! decoded), filtered bytes out; the caller decides each entry ([`ListPolicy`]).
//!
//! **Per-message buffering, not byte streaming.** A JSON body is held whole, an SSE stream one
//! event at a time, each up to `max` bytes (default [`DEFAULT_MAX_LIST`]); what goes out is
//! each event (or the body) as soon as it is complete. A message beyond `max`, or one that
//! cannot be read the way every client reads it (not strict JSON: duplicate keys, lone
//! surrogates; a list that is not an array), is never passed unfiltered: the list requests are
//! answered with a JSON-RPC error (`mcp_list_refused`) instead.
//!
//! What is kept byte for byte: everything but the list array's interior (`nextCursor`, `_meta`,
//! the other members, the SSE `id:`/`event:` lines). Inside the array the kept entries are the
//! server's own bytes, joined by the server's own first separator. Only answers whose `id` is
//! one of the list requests' are touched — every such answer, however many the server sends.
//! DLP: on a proxy with scanners, `tools/call` answers ([`ListKind::CallResult`]) go through
//! the same per-message path; each string of `result.content[*].text` and of
//! `result.structuredContent` is replaced by what [`ListPolicy::mask`] returns.
//! Entries that are not objects, have no valid name (`name`, `uri` or `uriTemplate`: a string of
//! 1..=1024 bytes without control characters) or share their name with another entry of the
//! same list are removed too: a client could read either of two same-named tools.
use super::answer::{self, Refused};
use super::jsonrpc::{Id, MAX_NAME_LEN, strict_parse};
use memchr::memchr2;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// Default bound on one buffered list answer (a JSON body, or one SSE event).
pub const DEFAULT_MAX_LIST: usize = 4 << 20;
/// The gateway code in `error.data.code` of a list answer that could not be checked.
pub const LIST_REFUSED: &str = "mcp_list_refused";

/// The list methods and where their entries are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Resources,
    ResourceTemplates,
    Prompts,
    /// Not a list: a `tools/call` answer, whose `result.content[*].text` and every string of
    /// `result.structuredContent` go through [`ListPolicy::mask`] (DLP on tool results).
    CallResult,
}

impl ListKind {
    pub fn of_method(method: &str) -> Option<ListKind> {
        Some(match method {
            "tools/list" => ListKind::Tools,
            "resources/list" => ListKind::Resources,
            "resources/templates/list" => ListKind::ResourceTemplates,
            "prompts/list" => ListKind::Prompts,
            _ => return None,
        })
    }

    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
            ListKind::Prompts => "prompts/list",
            ListKind::CallResult => "tools/call",
        }
    }

    /// The member of `result` holding the entries.
    pub fn key(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
            ListKind::Prompts => "prompts",
            ListKind::CallResult => "content",
        }
    }

    /// The member of an entry naming it.
    pub fn name_key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts | ListKind::CallResult => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
        }
    }
}

/// What the policy says of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Yes,
    /// The caller may not call it.
    Hidden,
    /// Its description matched a scanner (removed for every caller).
    Screened,
    /// Its definition changed since it was pinned (removed for every caller until accepted).
    Changed,
}

/// Decides each entry. `entry` is the whole entry object (description, schema, annotations),
/// already checked to be an object with a valid, unique name.
pub trait ListPolicy {
    fn keep(&mut self, kind: ListKind, name: &str, entry: &Map<String, Value>) -> Keep;

    /// A string of a tool result with its sensitive parts masked, and how many hits were
    /// masked; `None` when nothing matched.
    fn mask(&mut self, _text: &str) -> Option<(String, u32)> {
        None
    }
}

/// What the filter did, for the audit record and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListStats {
    /// List answers filtered.
    pub lists: u32,
    /// Entries the policy removed.
    pub hidden: u32,
    /// Entries removed because a scanner matched their description.
    pub screened: u32,
    /// Tools removed because their definition changed since it was pinned.
    pub changed: u32,
    /// Entries removed as malformed or ambiguous (no valid name, duplicate name).
    pub malformed: u32,
    /// List answers replaced by a JSON-RPC error (too large, unreadable).
    pub refused: u32,
    /// Hits masked in tool results.
    pub masked: u32,
}

/// How the response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Json,
    Sse,
}

/// The filter for one response.
pub struct ListFilter<'p> {
    policy: Box<dyn ListPolicy + 'p>,
    mode: Mode,
    /// The list requests of the call: id (as [`id_key`] reads it), id as sent, and kind.
    lists: Vec<(String, Id, ListKind)>,
    /// The request was a batch (a JSON refusal is then an array).
    batch: bool,
    max: usize,
    request_id: String,
    buf: Vec<u8>,
    /// The message being read went over `max`: its bytes are dropped.
    dropping: bool,
    line_len: usize,
    last_cr: bool,
    stats: ListStats,
}

enum Outcome {
    Unchanged,
    Replace(Vec<u8>),
    /// Unreadable: every list request is answered with an error instead.
    RefuseAll,
}

impl<'p> ListFilter<'p> {
    /// `lists`: the list requests of the call (their JSON-RPC ids as sent, and kinds).
    pub fn new(
        policy: Box<dyn ListPolicy + 'p>,
        mode: Mode,
        lists: Vec<(Id, ListKind)>,
        batch: bool,
        max: usize,
        request_id: &str,
    ) -> ListFilter<'p> {
        ListFilter {
            policy,
            mode,
            lists: lists
                .into_iter()
                .map(|(id, k)| {
                    let v = serde_json::from_str(&id.0).unwrap_or(Value::Null);
                    (id_key(&v).unwrap_or_default(), id, k)
                })
                .collect(),
            batch,
            max,
            request_id: request_id.to_string(),
            buf: Vec::new(),
            dropping: false,
            line_len: 0,
            last_cr: false,
            stats: ListStats::default(),
        }
    }

    pub fn stats(&self) -> ListStats {
        self.stats
    }

    /// Takes the next piece of body; appends whatever is complete to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self.mode {
            Mode::Json => {
                if self.dropping {
                    return;
                }
                if self.buf.len() + input.len() > self.max {
                    self.dropping = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(input);
                }
            }
            Mode::Sse => self.feed_sse(input, out),
        }
    }

    /// The end of the body.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.mode {
            Mode::Json => {
                if self.dropping {
                    self.dropping = false;
                    let body = self.refusals("answer too large to check");
                    out.extend_from_slice(body.as_bytes());
                    return;
                }
                let buf = std::mem::take(&mut self.buf);
                match self.filter_text(&buf) {
                    Outcome::Unchanged => out.extend_from_slice(&buf),
                    Outcome::Replace(b) => out.extend_from_slice(&b),
                    Outcome::RefuseAll => {
                        let body = self.refusals("answer unreadable");
                        out.extend_from_slice(body.as_bytes());
                    }
                }
            }
            Mode::Sse => {
                if !self.buf.is_empty() && !self.dropping {
                    let ev = std::mem::take(&mut self.buf);
                    self.process_event(&ev, out);
                }
                self.buf.clear();
                self.dropping = false;
            }
        }
    }

    /// The JSON-RPC errors for every list request (one body: an array for a batch).
    fn refusals(&mut self, why: &str) -> String {
        self.stats.refused += self.lists.len() as u32;
        let items: Vec<Refused> = self
            .lists
            .iter()
            .map(|(_, id, k)| Refused {
                id: id.clone(),
                code: LIST_REFUSED,
                message: format!(
                    "portcullis: the {} {why}; nothing of it was passed",
                    k.method()
                ),
            })
            .collect();
        answer::body(self.batch, &items, &self.request_id)
    }

    /// The same errors as SSE events, one per list request.
    fn refusal_events(&mut self, why: &str, out: &mut Vec<u8>) {
        let lists = std::mem::take(&mut self.lists);
        for (_, id, k) in &lists {
            self.stats.refused += 1;
            let body = answer::body(
                false,
                &[Refused {
                    id: id.clone(),
                    code: LIST_REFUSED,
                    message: format!(
                        "portcullis: the {} {why}; nothing of it was passed",
                        k.method()
                    ),
                }],
                &self.request_id,
            );
            out.extend_from_slice(b"event: message\ndata: ");
            out.extend_from_slice(body.as_bytes());
            out.extend_from_slice(b"\n\n");
        }
        self.lists = lists;
    }

    fn feed_sse(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let n = input.len();
        let mut i = 0;
        while i < n {
            if self.last_cr && input[i] == b'\n' {
                // the LF of a CRLF: no new line; after a dispatched event it goes straight out
                self.last_cr = false;
                if self.buf.is_empty() && !self.dropping {
                    out.push(b'\n');
                } else {
                    self.take(&input[i..=i], out);
                }
                i += 1;
                continue;
            }
            self.last_cr = false;
            match memchr2(b'\n', b'\r', &input[i..]) {
                None => {
                    self.line_len += n - i;
                    self.take(&input[i..], out);
                    i = n;
                }
                Some(k) => {
                    let p = i + k;
                    let blank = self.line_len == 0 && k == 0;
                    self.take(&input[i..=p], out);
                    self.line_len = 0;
                    self.last_cr = input[p] == b'\r';
                    i = p + 1;
                    if blank {
                        self.end_event(out);
                    }
                }
            }
        }
    }

    fn take(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.dropping {
            return;
        }
        if self.buf.len() + bytes.len() > self.max {
            // an event too large to check: dropped, and the lists answered with errors
            self.buf = Vec::new();
            self.dropping = true;
            self.refusal_events("answer too large to check", out);
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn end_event(&mut self, out: &mut Vec<u8>) {
        if self.dropping {
            self.dropping = false;
            return;
        }
        let ev = std::mem::take(&mut self.buf);
        self.process_event(&ev, out);
        self.buf = ev;
        self.buf.clear();
    }

    fn process_event(&mut self, ev: &[u8], out: &mut Vec<u8>) {
        let mut data = Vec::new();
        let mut has_data = false;
        for line in lines(ev) {
            if let Some(v) = data_value(line.0) {
                if has_data {
                    data.push(b'\n');
                }
                has_data = true;
                data.extend_from_slice(v);
            }
        }
        if !has_data {
            out.extend_from_slice(ev);
            return;
        }
        match self.filter_text(&data) {
            Outcome::Unchanged => out.extend_from_slice(ev),
            Outcome::RefuseAll => self.refusal_events("answer unreadable", out),
            Outcome::Replace(new) => {
                // the event's other lines as they were, then the new data (in the event's line
                // ending), then its blank line as it came
                let all: Vec<(&[u8], &[u8])> = lines(ev).collect();
                let nl: &[u8] = all
                    .first()
                    .map(|l| l.1)
                    .filter(|t| !t.is_empty())
                    .unwrap_or(b"\n");
                let blank = all.last().filter(|l| l.0.is_empty()).map(|l| l.1);
                let body_lines = if blank.is_some() {
                    &all[..all.len() - 1]
                } else {
                    &all[..]
                };
                for (content, term) in body_lines {
                    if data_value(content).is_some() {
                        continue;
                    }
                    out.extend_from_slice(content);
                    out.extend_from_slice(if term.is_empty() { nl } else { term });
                }
                for seg in new.split(|&b| b == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(seg);
                    out.extend_from_slice(nl);
                }
                out.extend_from_slice(blank.unwrap_or(nl));
            }
        }
    }

    /// Filters one JSON text: a body, or one event's data.
    fn filter_text(&mut self, text: &[u8]) -> Outcome {
        if self.lists.is_empty() {
            return Outcome::Unchanged;
        }
        let looks_json = matches!(text.trim_ascii_start().first(), Some(b'{' | b'['));
        let Ok(value) = strict_parse(text) else {
            // what a lenient client might still read as a list answer is never passed
            return if looks_json {
                Outcome::RefuseAll
            } else {
                Outcome::Unchanged
            };
        };
        let Ok(s) = std::str::from_utf8(text) else {
            return Outcome::RefuseAll;
        };
        let base = s.as_ptr() as usize;
        let raws: Vec<&RawValue> = match &value {
            Value::Array(_) => match serde_json::from_str(s) {
                Ok(v) => v,
                Err(_) => return Outcome::RefuseAll,
            },
            _ => match serde_json::from_str(s) {
                Ok(v) => vec![v],
                Err(_) => return Outcome::RefuseAll,
            },
        };
        let values: Vec<&Value> = match &value {
            Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (v, raw) in values.into_iter().zip(raws) {
            let Some(o) = v.as_object() else { continue };
            if o.contains_key("method") {
                continue;
            }
            let Some(id) = o.get("id").and_then(id_key) else {
                continue;
            };
            let Some((_, id_text, kind)) = self.lists.iter().find(|(i, _, _)| *i == id).cloned()
            else {
                continue;
            };
            if !o.contains_key("result") {
                // an error answer passes
                continue;
            }
            let start = raw.get().as_ptr() as usize - base;
            let res = if kind == ListKind::CallResult {
                self.mask_result(raw, base, &mut edits).map(|()| None)
            } else {
                self.filter_result(kind, o, raw, base)
            };
            match res {
                Ok(Some(edit)) => edits.push(edit),
                Ok(None) => {}
                Err(why) => {
                    self.stats.refused += 1;
                    let body = answer::body(
                        false,
                        &[Refused {
                            id: id_text,
                            code: LIST_REFUSED,
                            message: format!(
                                "portcullis: the {} answer {why}; nothing of it was passed",
                                kind.method()
                            ),
                        }],
                        &self.request_id,
                    );
                    edits.push((start, start + raw.get().len(), body.into_bytes()));
                }
            }
        }
        if edits.is_empty() {
            return Outcome::Unchanged;
        }
        edits.sort_by_key(|e| e.0);
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for (a, b, bytes) in edits {
            if a < at {
                // overlapping edits cannot happen (distinct messages); refuse rather than guess
                return Outcome::RefuseAll;
            }
            out.extend_from_slice(&text[at..a]);
            out.extend_from_slice(&bytes);
            at = b;
        }
        out.extend_from_slice(&text[at..]);
        Outcome::Replace(out)
    }

    /// DLP on a `tools/call` answer: each `result.content[*].text` and every string of
    /// `result.structuredContent` masked by the policy (edits of those strings only).
    fn mask_result(
        &mut self,
        raw: &RawValue,
        base: usize,
        edits: &mut Vec<(usize, usize, Vec<u8>)>,
    ) -> Result<(), &'static str> {
        let m: BTreeMap<String, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| "is unreadable")?;
        let Some(result) = m.get("result") else {
            return Ok(());
        };
        let Ok(r) = serde_json::from_str::<BTreeMap<String, &RawValue>>(result.get()) else {
            // not an object: nothing of a tool result to mask (a client rejects it)
            return Ok(());
        };
        if let Some(content) = r.get("content")
            && let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(content.get())
        {
            for item in items {
                if let Ok(o) = serde_json::from_str::<BTreeMap<String, &RawValue>>(item.get())
                    && let Some(t) = o.get("text")
                {
                    self.mask_strings(t, base, edits, 0)?;
                }
            }
        }
        if let Some(sc) = r.get("structuredContent") {
            self.mask_strings(sc, base, edits, 0)?;
        }
        Ok(())
    }

    /// Masks every string in `raw` (any depth up to the parser's own limit).
    fn mask_strings(
        &mut self,
        raw: &RawValue,
        base: usize,
        edits: &mut Vec<(usize, usize, Vec<u8>)>,
        depth: usize,
    ) -> Result<(), &'static str> {
        if depth > 128 {
            return Err("is nested too deeply");
        }
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                let s: String = serde_json::from_str(text).map_err(|_| "is unreadable")?;
                if let Some((masked, n)) = self.policy.mask(&s) {
                    self.stats.masked += n;
                    let a = text.as_ptr() as usize - base;
                    let json = serde_json::to_string(&masked).map_err(|_| "is unreadable")?;
                    edits.push((a, a + text.len(), json.into_bytes()));
                }
            }
            Some(b'[') => {
                let items: Vec<&RawValue> =
                    serde_json::from_str(text).map_err(|_| "is unreadable")?;
                for i in items {
                    self.mask_strings(i, base, edits, depth + 1)?;
                }
            }
            Some(b'{') => {
                let o: Vec<(String, &RawValue)> =
                    serde_json::from_str::<BTreeMap<String, &RawValue>>(text)
                        .map_err(|_| "is unreadable")?
                        .into_iter()
                        .collect();
                for (_, v) in o {
                    self.mask_strings(v, base, edits, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The edit of one list answer's entries array (`None`: all kept).
    #[allow(clippy::type_complexity)]
    fn filter_result(
        &mut self,
        kind: ListKind,
        msg: &Map<String, Value>,
        raw: &RawValue,
        base: usize,
    ) -> Result<Option<(usize, usize, Vec<u8>)>, &'static str> {
        let entries = msg
            .get("result")
            .and_then(Value::as_object)
            .and_then(|r| r.get(kind.key()))
            .and_then(Value::as_array)
            .ok_or("is not a list")?;
        // the same message again, for the byte positions of each entry
        let m: BTreeMap<String, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| "is unreadable")?;
        let result = m.get("result").ok_or("is unreadable")?;
        let r: BTreeMap<String, &RawValue> =
            serde_json::from_str(result.get()).map_err(|_| "is unreadable")?;
        let arr = r.get(kind.key()).ok_or("is unreadable")?;
        let items: Vec<&RawValue> = serde_json::from_str(arr.get()).map_err(|_| "is unreadable")?;
        if items.len() != entries.len() {
            return Err("is unreadable");
        }
        self.stats.lists += 1;
        let name_of = |e: &Value| -> Option<String> {
            let n = e.as_object()?.get(kind.name_key())?.as_str()?;
            (!n.is_empty() && n.len() <= MAX_NAME_LEN && !n.chars().any(char::is_control))
                .then(|| n.to_string())
        };
        let names: Vec<Option<String>> = entries.iter().map(name_of).collect();
        let mut count: HashMap<&str, u32> = HashMap::new();
        for n in names.iter().flatten() {
            *count.entry(n.as_str()).or_default() += 1;
        }
        let mut keep = Vec::with_capacity(entries.len());
        for (e, n) in entries.iter().zip(&names) {
            let k = match (e.as_object(), n) {
                (Some(o), Some(n)) if count.get(n.as_str()) == Some(&1) => {
                    match self.policy.keep(kind, n, o) {
                        Keep::Yes => true,
                        Keep::Hidden => {
                            self.stats.hidden += 1;
                            false
                        }
                        Keep::Screened => {
                            self.stats.screened += 1;
                            false
                        }
                        Keep::Changed => {
                            self.stats.changed += 1;
                            false
                        }
                    }
                }
                _ => {
                    self.stats.malformed += 1;
                    false
                }
            };
            keep.push(k);
        }
        if keep.iter().all(|k| *k) || items.is_empty() {
            return Ok(None);
        }
        let span = |r: &RawValue| {
            let a = r.get().as_ptr() as usize - base;
            (a, a + r.get().len())
        };
        let (first, _) = span(items[0]);
        let (_, last) = span(items[items.len() - 1]);
        let mut new = Vec::new();
        let mut sep_text: Option<&str> = None;
        if items.len() >= 2 {
            let a = items[0].get();
            let b = items[1].get();
            let a_end = a.as_ptr() as usize + a.len();
            let b_start = b.as_ptr() as usize;
            let whole = arr.get();
            let w0 = whole.as_ptr() as usize;
            sep_text = whole.get(a_end - w0..b_start - w0);
        }
        let sep = sep_text.unwrap_or(",");
        let mut firstk = true;
        for (item, k) in items.iter().zip(&keep) {
            if !k {
                continue;
            }
            if !firstk {
                new.extend_from_slice(sep.as_bytes());
            }
            firstk = false;
            new.extend_from_slice(item.get().as_bytes());
        }
        Ok(Some((first, last, new)))
    }
}

/// An id as loosely as any client might match it: a string's text, a number's value (`7`,
/// `7.0`, `7e0` and `"7"` are one id), so that no spelling of a list request's id escapes the
/// filter.
fn id_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        }),
        _ => None,
    }
}

/// The lines of an event: (content, terminator).
fn lines(ev: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= ev.len() {
            return None;
        }
        let start = pos;
        match memchr2(b'\n', b'\r', &ev[start..]) {
            None => {
                pos = ev.len();
                Some((&ev[start..], &ev[ev.len()..]))
            }
            Some(k) => {
                let p = start + k;
                let next = if ev[p] == b'\r' && ev.get(p + 1) == Some(&b'\n') {
                    p + 2
                } else {
                    p + 1
                };
                pos = next;
                Some((&ev[start..p], &ev[p..next]))
            }
        }
    })
}

/// The value of a `data` field line (one leading space stripped).
fn data_value(line: &[u8]) -> Option<&[u8]> {
    if line.first().is_none_or(|&b| b == b':') {
        return None;
    }
    let (name, value) = match memchr::memchr(b':', line) {
        Some(c) => (&line[..c], &line[c + 1..]),
        None => (line, &[][..]),
    };
    if name != b"data" {
        return None;
    }
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps names starting with `get_` (or URIs/templates under `file:///ok/`).
    struct Allow;
    impl ListPolicy for Allow {
        fn keep(&mut self, _: ListKind, name: &str, _: &Map<String, Value>) -> Keep {
            if name.starts_with("get_") || name.starts_with("file:///ok/") {
                Keep::Yes
            } else {
                Keep::Hidden
            }
        }
    }

    fn filter(
        mode: Mode,
        lists: &[(&str, ListKind)],
        batch: bool,
        max: usize,
    ) -> ListFilter<'static> {
        ListFilter::new(
            Box::new(Allow),
            mode,
            lists.iter().map(|(i, k)| (Id(i.to_string()), *k)).collect(),
            batch,
            max,
            "rid",
        )
    }

    fn run(f: &mut ListFilter<'_>, input: &[u8], split: usize) -> String {
        let mut out = Vec::new();
        let split = split.min(input.len());
        f.feed(&input[..split], &mut out);
        f.feed(&input[split..], &mut out);
        f.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    const T: ListKind = ListKind::Tools;

    #[test]
    fn json_lists_are_filtered_and_the_rest_kept_byte_for_byte() {
        // (name, lists, input, expected)
        type Case<'a> = (&'a str, &'a [(&'a str, ListKind)], &'a str, &'a str);
        let table: &[Case<'_>] = &[
            (
                "filtered, cursor kept",
                &[("1", T)],
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_a"}, {"name":"del_b","description":"x"}, {"name":"get_c"}],"nextCursor":"c2" }}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_a"}, {"name":"get_c"}],"nextCursor":"c2" }}"#,
            ),
            (
                "all kept: unchanged",
                &[("1", T)],
                "{\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"tools\":[ {\"name\":\"get_a\"} ]}}",
                "{\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"tools\":[ {\"name\":\"get_a\"} ]}}",
            ),
            (
                "an escaped name is the name",
                &[("\"x\"", T)],
                r#"{"jsonrpc":"2.0","id":"x","result":{"tools":[{"name":"del\u005fb"},{"name":"g\u0065t_a"}]}}"#,
                r#"{"jsonrpc":"2.0","id":"x","result":{"tools":[{"name":"g\u0065t_a"}]}}"#,
            ),
            (
                "an escaped key is the key",
                &[("1", T)],
                r#"{"jsonrpc":"2.0","id":1,"result":{"t\u006fols":[{"name":"del_b"}]}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"t\u006fols":[]}}"#,
            ),
            (
                "another spelling of the id is the id",
                &[("1", T)],
                r#"[{"jsonrpc":"2.0","id":1.0,"result":{"tools":[{"name":"del_b"}]}},{"jsonrpc":"2.0","id":"1","result":{"tools":[{"name":"del_c"}]}},{"jsonrpc":"2.0","id":1e0,"result":{"tools":[{"name":"del_d"}]}}]"#,
                r#"[{"jsonrpc":"2.0","id":1.0,"result":{"tools":[]}},{"jsonrpc":"2.0","id":"1","result":{"tools":[]}},{"jsonrpc":"2.0","id":1e0,"result":{"tools":[]}}]"#,
            ),
            (
                "another id passes",
                &[("1", T)],
                r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"del_b"}]}}"#,
                r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"del_b"}]}}"#,
            ),
            (
                "duplicates, non-objects and nameless entries go",
                &[("1", T)],
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_a"},{"name":"get_a","description":"evil"},7,{"title":"x"},{"name":"get_\u0001"},{"name":"get_ok"}]}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_ok"}]}}"#,
            ),
            (
                "resources, templates and prompts",
                &[
                    ("1", ListKind::Resources),
                    ("2", ListKind::ResourceTemplates),
                    ("3", ListKind::Prompts),
                ],
                r#"[{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///ok/1"},{"uri":"file:///no/2"}]}},{"jsonrpc":"2.0","id":2,"result":{"resourceTemplates":[{"uriTemplate":"file:///no/{x}"}]}},{"jsonrpc":"2.0","id":3,"result":{"prompts":[{"name":"get_p"},{"name":"p2"}]}}]"#,
                r#"[{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///ok/1"}]}},{"jsonrpc":"2.0","id":2,"result":{"resourceTemplates":[]}},{"jsonrpc":"2.0","id":3,"result":{"prompts":[{"name":"get_p"}]}}]"#,
            ),
            (
                "an error answer passes",
                &[("1", T)],
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}"#,
            ),
            ("an empty body stays empty", &[("1", T)], "", ""),
        ];
        for (name, lists, input, want) in table {
            for split in [0, 7, usize::MAX] {
                let mut f = filter(Mode::Json, lists, lists.len() > 1, 1 << 20);
                assert_eq!(run(&mut f, input.as_bytes(), split), *want, "{name}");
            }
        }
    }

    #[test]
    fn unreadable_or_oversized_lists_are_refused_never_passed() {
        let table: &[(&str, &str, usize)] = &[
            (
                "duplicate key",
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_a"}],"tools":[{"name":"del_b"}]}}"#,
                1 << 20,
            ),
            (
                "duplicate key in an entry",
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_a","name":"del_b"}]}}"#,
                1 << 20,
            ),
            (
                "lone surrogate",
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"del_b","description":"\ud800"}]}}"#,
                1 << 20,
            ),
            (
                "tools not an array",
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"del_b"}}}"#,
                1 << 20,
            ),
            (
                "no tools",
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                1 << 20,
            ),
            (
                "truncated",
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"del_b"}"#,
                1 << 20,
            ),
            (
                "too large",
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"del_b"}]}}"#,
                20,
            ),
        ];
        for (name, input, max) in table {
            let mut f = filter(Mode::Json, &[("1", T)], false, *max);
            let out = run(&mut f, input.as_bytes(), 5);
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{name}: {out}"));
            assert_eq!(v["id"], 1, "{name}");
            assert_eq!(v["error"]["data"]["code"], LIST_REFUSED, "{name}: {out}");
            assert!(!out.contains("del_b"), "{name}");
            assert_eq!(f.stats().refused, 1, "{name}");
        }
    }

    #[test]
    fn sse_events_are_filtered_one_by_one() {
        let input = "event: message\r\nid: 7\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\r\n\r\n\
                     : comment\n\nid: 8\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"del_b\"},{\"name\":\"get_a\"}],\"nextCursor\":\"n\"}}\n\n\
                     data: {\"jsonrpc\":\"2.0\",\"id\":1,\n\
                     data: \"result\":{\"tools\":[{\"name\":\"del_again\"}]}}\n\n";
        let want = "event: message\r\nid: 7\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\r\n\r\n\
                    : comment\n\nid: 8\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"get_a\"}],\"nextCursor\":\"n\"}}\n\n\
                    data: {\"jsonrpc\":\"2.0\",\"id\":1,\n\
                    data: \"result\":{\"tools\":[]}}\n\n";
        for split in [0, 1, 17, 50, 120, 200, usize::MAX] {
            let mut f = filter(Mode::Sse, &[("1", T)], false, 1 << 20);
            assert_eq!(run(&mut f, input.as_bytes(), split), want, "split {split}");
            assert_eq!(f.stats().hidden, 2);
            assert_eq!(f.stats().lists, 2);
        }
        // an oversized event is dropped and the list answered with an error event
        let big = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"tools\":[{{\"name\":\"del_b\",\"description\":\"{}\"}}]}}}}\n\n",
            "x".repeat(300)
        );
        let mut f = filter(Mode::Sse, &[("1", T)], false, 100);
        let out = run(&mut f, big.as_bytes(), 40);
        assert!(!out.contains("del_b"), "{out}");
        assert!(out.starts_with("event: message\ndata: {"), "{out}");
        assert!(out.contains(LIST_REFUSED), "{out}");
        // unreadable data that looks like JSON: refused
        let mut f = filter(Mode::Sse, &[("1", T)], false, 1 << 20);
        let out = run(
            &mut f,
            b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"id\":1,\"result\":{\"tools\":[{\"name\":\"del_b\"}]}}\n\n",
            3,
        );
        assert!(
            !out.contains("del_b") && out.contains(LIST_REFUSED),
            "{out}"
        );
        // not JSON (a priming event): unchanged
        let mut f = filter(Mode::Sse, &[("1", T)], false, 1 << 20);
        assert_eq!(run(&mut f, b"id: 1\ndata: \n\n", 3), "id: 1\ndata: \n\n");
    }
}
