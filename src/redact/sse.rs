//! `text/event-stream` redaction: whole events out as soon as each is complete, each event's
//! `data` (lines joined with `\n`, as the SSE spec says) redacted as one JSON document.
//!
//! An event is buffered until its blank line (bounded by `max_event`). If its data is JSON and
//! something was redacted, the data is re-emitted as `data:` lines at the place of the first
//! data line (same `data:`/`data: ` style and line ending); otherwise the event's bytes go out
//! unchanged. Data that is not JSON (`[DONE]`, text) passes unchanged; JSON beyond [`Limits`]
//! and events beyond `max_event` follow [`OnInvalid`].

use memchr::{memchr, memchr2};

use super::json::{JsonRedactor, Limits, OnInvalid, RedactError};
use super::path::RedactProgram;

/// Default bound on one buffered event.
pub const DEFAULT_MAX_EVENT: usize = 1 << 20;

/// Streaming `text/event-stream` redactor.
pub struct SseRedactor<'p> {
    json: JsonRedactor<'p>,
    on_invalid: OnInvalid,
    max_event: usize,
    ev: Vec<u8>,
    /// Bytes of the current line seen so far (0 at a line start).
    line_len: usize,
    /// The last byte seen was a CR (an LF next belongs to it).
    last_cr: bool,
    /// Passing the rest of an oversized event straight through (`OnInvalid::Pass`).
    oversized: bool,
    data: Vec<u8>,
    redacted: Vec<u8>,
    redactions: u64,
    events: u64,
    unredacted: u64,
    failed: Option<RedactError>,
}

/// A line of an event: content `start..cend`, terminator `cend..next`.
#[derive(Clone, Copy)]
struct Line {
    start: usize,
    cend: usize,
    next: usize,
}

fn line_at(buf: &[u8], start: usize) -> Line {
    match memchr2(b'\n', b'\r', &buf[start..]) {
        None => Line {
            start,
            cend: buf.len(),
            next: buf.len(),
        },
        Some(k) => {
            let p = start + k;
            let next = if buf[p] == b'\r' && buf.get(p + 1) == Some(&b'\n') {
                p + 2
            } else {
                p + 1
            };
            Line {
                start,
                cend: p,
                next,
            }
        }
    }
}

/// The value of a `data` field line (one leading space stripped) and whether it had that space.
fn data_value(line: &[u8]) -> Option<(&[u8], bool)> {
    if line.first().is_none_or(|&b| b == b':') {
        return None;
    }
    let (name, value) = match memchr(b':', line) {
        Some(c) => (&line[..c], &line[c + 1..]),
        None => (line, &[][..]),
    };
    if name != b"data" {
        return None;
    }
    match value.split_first() {
        Some((b' ', rest)) => Some((rest, true)),
        _ => Some((value, false)),
    }
}

impl<'p> SseRedactor<'p> {
    /// `limits` apply to each event's JSON; `max_event` bounds one buffered event.
    pub fn new(
        prog: &'p RedactProgram,
        limits: Limits,
        on_invalid: OnInvalid,
        max_event: usize,
    ) -> Self {
        SseRedactor {
            json: JsonRedactor::new(prog, limits, OnInvalid::Block),
            on_invalid,
            max_event,
            ev: Vec::new(),
            line_len: 0,
            last_cr: false,
            oversized: false,
            data: Vec::new(),
            redacted: Vec::new(),
            redactions: 0,
            events: 0,
            unredacted: 0,
            failed: None,
        }
    }

    /// Values removed or masked so far, over all events.
    pub fn redactions(&self) -> u64 {
        self.redactions
    }

    /// Moves the values read at capture paths so far (one document per event) to `into`.
    pub fn take_captures(&mut self, into: &mut Vec<super::Captured>) {
        self.json.take_captures(into);
    }

    /// Events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Events passed through unredacted because of a limit (`OnInvalid::Pass`).
    pub fn unredacted_events(&self) -> u64 {
        self.unredacted
    }

    /// Takes one chunk; appends every event it completes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RedactError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let n = input.len();
        let mut i = 0;
        while i < n {
            if self.last_cr && input[i] == b'\n' {
                // The LF of a CRLF: no new line. After a dispatched event it goes straight out.
                self.last_cr = false;
                if self.ev.is_empty() && !self.oversized {
                    out.push(b'\n');
                } else {
                    self.take(&input[i..=i], out)?;
                }
                i += 1;
                continue;
            }
            self.last_cr = false;
            match memchr2(b'\n', b'\r', &input[i..]) {
                None => {
                    self.line_len += n - i;
                    self.take(&input[i..], out)?;
                    i = n;
                }
                Some(k) => {
                    let p = i + k;
                    let blank = self.line_len == 0 && k == 0;
                    self.take(&input[i..=p], out)?;
                    self.line_len = 0;
                    self.last_cr = input[p] == b'\r';
                    i = p + 1;
                    if blank {
                        self.end_event(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: an unterminated last event is redacted and emitted as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RedactError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if !self.ev.is_empty() {
            self.end_event(out)?;
        }
        Ok(())
    }

    fn take(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RedactError> {
        if self.oversized {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        if self.ev.len() + bytes.len() > self.max_event {
            return match self.on_invalid {
                OnInvalid::Pass => {
                    out.extend_from_slice(&self.ev);
                    self.ev.clear();
                    out.extend_from_slice(bytes);
                    self.oversized = true;
                    self.unredacted += 1;
                    Ok(())
                }
                OnInvalid::Block => {
                    let e = RedactError::EventTooLarge {
                        limit: self.max_event,
                    };
                    self.failed = Some(e.clone());
                    Err(e)
                }
            };
        }
        self.ev.extend_from_slice(bytes);
        Ok(())
    }

    fn end_event(&mut self, out: &mut Vec<u8>) -> Result<(), RedactError> {
        self.events += 1;
        if self.oversized {
            self.oversized = false;
            return Ok(());
        }
        let ev = std::mem::take(&mut self.ev);
        let r = self.process(&ev, out);
        self.ev = ev;
        self.ev.clear();
        r
    }

    fn process(&mut self, ev: &[u8], out: &mut Vec<u8>) -> Result<(), RedactError> {
        self.data.clear();
        let mut first: Option<(Line, bool)> = None;
        let mut pos = 0;
        while pos < ev.len() {
            let line = line_at(ev, pos);
            if let Some((value, space)) = data_value(&ev[line.start..line.cend]) {
                if first.is_some() {
                    self.data.push(b'\n');
                } else {
                    first = Some((line, space));
                }
                self.data.extend_from_slice(value);
            }
            pos = line.next;
        }
        let Some((fl, space)) = first else {
            out.extend_from_slice(ev);
            return Ok(());
        };
        self.redacted.clear();
        self.json.reset();
        let r = match self.json.feed(&self.data, &mut self.redacted) {
            Ok(()) => self.json.finish(&mut self.redacted),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) if self.json.redactions() > 0 => {
                self.redactions += self.json.redactions();
                out.extend_from_slice(&ev[..fl.start]);
                let term = &ev[fl.cend..fl.next];
                let sep: &[u8] = if term.is_empty() { b"\n" } else { term };
                let mut segs = self.redacted.split(|&b| b == b'\n').peekable();
                while let Some(seg) = segs.next() {
                    out.extend_from_slice(if space { b"data: " } else { b"data:" });
                    out.extend_from_slice(seg);
                    out.extend_from_slice(if segs.peek().is_some() { sep } else { term });
                }
                let mut pos = fl.next;
                while pos < ev.len() {
                    let line = line_at(ev, pos);
                    if data_value(&ev[line.start..line.cend]).is_none() {
                        out.extend_from_slice(&ev[line.start..line.next]);
                    }
                    pos = line.next;
                }
                Ok(())
            }
            // Nothing redacted, or the data is not JSON (`[DONE]`, text): unchanged.
            Ok(()) | Err(RedactError::Invalid { .. }) => {
                out.extend_from_slice(ev);
                Ok(())
            }
            // JSON we could not check (limits).
            Err(e) => match self.on_invalid {
                OnInvalid::Pass => {
                    self.unredacted += 1;
                    out.extend_from_slice(ev);
                    Ok(())
                }
                OnInvalid::Block => {
                    self.failed = Some(e.clone());
                    Err(e)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Action;

    fn program() -> RedactProgram {
        let mut p = RedactProgram::compile(&["$..ssn"], Action::Remove).expect("paths");
        p.add("$.secret", Action::Mask).expect("path");
        p
    }

    fn run(
        p: &RedactProgram,
        limits: Limits,
        pol: OnInvalid,
        max_event: usize,
        input: &[u8],
        splits: &[usize],
    ) -> Result<(Vec<u8>, u64, u64), RedactError> {
        let mut r = SseRedactor::new(p, limits, pol, max_event);
        let mut out = Vec::new();
        let mut last = 0;
        for &s in splits {
            r.feed(&input[last..s], &mut out)?;
            last = s;
        }
        r.feed(&input[last..], &mut out)?;
        r.finish(&mut out)?;
        Ok((out, r.redactions(), r.unredacted_events()))
    }

    const CASES: &[(&str, &str, &str)] = &[
        (
            "simple",
            "data: {\"ssn\":1,\"a\":2}\n\n",
            "data: {\"a\":2}\n\n",
        ),
        ("done", "data: [DONE]\n\n", "data: [DONE]\n\n"),
        ("no_space", "data:{\"ssn\":1}\n\n", "data:{}\n\n"),
        (
            "multiline_join",
            "data: {\"a\":1,\ndata: \"ssn\":2}\n\n",
            "data: {\"a\":1}\n\n",
        ),
        (
            "multiline_pretty",
            "data: {\ndata:   \"a\": 1,\ndata:   \"ssn\": 2\ndata: }\n\n",
            "data: {\ndata:   \"a\": 1\ndata: }\n\n",
        ),
        (
            "crlf",
            "event: x\r\ndata: {\"ssn\":1}\r\n\r\n",
            "event: x\r\ndata: {}\r\n\r\n",
        ),
        ("cr_only", "data: {\"ssn\":1}\r\r", "data: {}\r\r"),
        (
            "other_fields",
            ": comment\nid: 5\ndata: {\"ssn\":1,\"b\":[1]}\nretry: 10\n\n",
            ": comment\nid: 5\ndata: {\"b\":[1]}\nretry: 10\n\n",
        ),
        (
            "interleaved_fields",
            "data: {\"a\":1,\nevent: e\ndata: \"ssn\":2}\n\n",
            "data: {\"a\":1}\nevent: e\n\n",
        ),
        (
            "two_events",
            "data: {\"ssn\":1}\n\ndata: {\"x\":1}\n\n",
            "data: {}\n\ndata: {\"x\":1}\n\n",
        ),
        ("no_data", "event: ping\n\n", "event: ping\n\n"),
        (
            "text_data",
            "data: hello world\n\n",
            "data: hello world\n\n",
        ),
        (
            "mask",
            "data: {\"secret\":{\"k\":1}}\n\n",
            "data: {\"secret\":\"[REDACTED]\"}\n\n",
        ),
        (
            "leading_blank",
            "\n\ndata: {\"ssn\":1}\n\n",
            "\n\ndata: {}\n\n",
        ),
        ("empty_data_field", "data\n\n", "data\n\n"),
        ("unterminated_at_finish", "data: {\"ssn\":1}", "data: {}"),
        (
            "crlf_multiline",
            "data: {\"ssn\":1,\r\ndata: \"a\":2}\r\n\r\n",
            "data: {\r\ndata: \"a\":2}\r\n\r\n",
        ),
        (
            "done_after_json",
            "data: {\"ssn\":1}\n\ndata: [DONE]\n\n",
            "data: {}\n\ndata: [DONE]\n\n",
        ),
        (
            "openai_like",
            "event: message\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\",\"ssn\":\"1\"}}]}\n\n: keepalive\n\n",
            "event: message\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n: keepalive\n\n",
        ),
        (
            "crlf_blank_start",
            "\r\n\r\ndata: 1\r\n\r\n",
            "\r\n\r\ndata: 1\r\n\r\n",
        ),
    ];

    #[test]
    fn table_every_split() {
        let p = program();
        for (name, input, want) in CASES {
            let b = input.as_bytes();
            for k in 0..=b.len() {
                let (out, ..) = run(
                    &p,
                    Limits::default(),
                    OnInvalid::Block,
                    DEFAULT_MAX_EVENT,
                    b,
                    &[k],
                )
                .unwrap_or_else(|e| panic!("{name} split {k}: {e}"));
                assert_eq!(String::from_utf8_lossy(&out), *want, "{name} split {k}");
            }
            let bytewise: Vec<usize> = (1..b.len()).collect();
            let (out, ..) = run(
                &p,
                Limits::default(),
                OnInvalid::Block,
                DEFAULT_MAX_EVENT,
                b,
                &bytewise,
            )
            .expect(name);
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name} bytewise");
            if b.len() <= 40 {
                for x in 0..=b.len() {
                    for y in x..=b.len() {
                        let (out, ..) = run(
                            &p,
                            Limits::default(),
                            OnInvalid::Block,
                            DEFAULT_MAX_EVENT,
                            b,
                            &[x, y],
                        )
                        .expect(name);
                        assert_eq!(
                            String::from_utf8_lossy(&out),
                            *want,
                            "{name} splits {x},{y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn events_go_out_when_complete() {
        let p = program();
        let mut r = SseRedactor::new(&p, Limits::default(), OnInvalid::Block, DEFAULT_MAX_EVENT);
        let mut out = Vec::new();
        r.feed(b"data: {\"ssn\":1}\n", &mut out).expect("ok");
        assert!(out.is_empty());
        r.feed(b"\ndata: {\"a\"", &mut out).expect("ok");
        assert_eq!(out, b"data: {}\n\n");
        r.feed(b":2}\n\n", &mut out).expect("ok");
        assert_eq!(out, b"data: {}\n\ndata: {\"a\":2}\n\n");
        r.finish(&mut out).expect("ok");
        assert_eq!((r.events(), r.redactions()), (2, 1));
    }

    #[test]
    fn oversized_event_follows_policy() {
        let p = program();
        let big = format!("data: {{\"ssn\":\"{}\"}}\n\n", "x".repeat(50));
        let input = format!("{big}data: {{\"ssn\":1}}\n\n");
        let b = input.as_bytes();
        for k in 0..=b.len() {
            let (out, n, un) =
                run(&p, Limits::default(), OnInvalid::Pass, 32, b, &[k]).expect("pass");
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("{big}data: {{}}\n\n"),
                "split {k}"
            );
            assert_eq!((n, un), (1, 1));
            match run(&p, Limits::default(), OnInvalid::Block, 32, b, &[k]) {
                Err(RedactError::EventTooLarge { limit: 32 }) => {}
                other => panic!("split {k}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_limits_follow_policy() {
        let p = program();
        let lim = Limits {
            max_depth: 1,
            ..Limits::default()
        };
        let input = b"data: {\"a\":{\"ssn\":1}}\n\ndata: [DONE]\n\n";
        let (out, n, un) =
            run(&p, lim, OnInvalid::Pass, DEFAULT_MAX_EVENT, input, &[]).expect("pass");
        assert_eq!(out, input.as_slice());
        assert_eq!((n, un), (0, 1));
        assert!(matches!(
            run(&p, lim, OnInvalid::Block, DEFAULT_MAX_EVENT, input, &[]),
            Err(RedactError::TooDeep { .. })
        ));
    }
}
