//! Budgets' values read out of a response (`[[proxies.budgets]] value = ...`): sans-io.
//!
//! The numbers themselves are read by the redaction engine ([`super::JsonRedactor`], and per
//! event by [`super::SseRedactor`]) at paths compiled with [`super::Action::Capture`], in the
//! same pass as redaction and without a copy of the body: the engine hands out
//! [`Captured`] values (the capture slots whose paths matched, the document they were in, the
//! number). This module turns them into one value per budget:
//!
//! - a budget's value is a weighted sum of terms; each term is fed by one or more capture slots
//!   (the Anthropic preset's input tokens come from `$.message.usage.input_tokens` in
//!   `message_start` or `$.usage.input_tokens` in a JSON body or a `message_delta`);
//! - within one document (a JSON body, or one SSE event's data) a term matched more than once
//!   (duplicate keys, `..` paths) counts its **largest** value: a duplicated key never lowers a
//!   charge;
//! - across documents (SSE) a term keeps the **last** document's value (`aggregate = "last"`,
//!   usage totals that grow) or the **sum** of every document's (`aggregate = "sum"`, per-event
//!   costs);
//! - a value that is not a non-negative JSON number (a string, a boolean, an object, a negative
//!   number) is not counted and marks the reading `invalid`; `null` is ignored (OpenAI streams
//!   `"usage": null` on every chunk but the last); a number longer than
//!   [`super::json::MAX_CAPTURE`] characters or beyond `f64` counts as infinite (the charge
//!   saturates: the budget is spent).
use super::Captured;

/// How an SSE stream's documents combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    Last,
    Sum,
}

/// One term of a budget's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Term {
    /// Capture slots (bits) feeding the term.
    pub slots: u32,
    pub weight: f64,
}

/// A compiled budget value read from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyValue {
    pub terms: Vec<Term>,
    pub aggregate: Aggregate,
}

#[derive(Debug, Clone, Copy, Default)]
struct TermState {
    last: Option<f64>,
    sum: f64,
    /// The open document and the largest value read in it.
    open: Option<(u32, f64)>,
}

impl TermState {
    fn close(&mut self) {
        if let Some((_, v)) = self.open.take() {
            self.last = Some(v);
            self.sum += v;
        }
    }
}

/// One response's reading of one budget value.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    terms: Vec<TermState>,
    invalid: bool,
}

/// What a response said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// The value (weights applied), or `None` when no term read a number.
    pub value: Option<f64>,
    /// Some value at a budget path was not a non-negative number.
    pub invalid: bool,
}

impl Reading {
    pub fn new(spec: &BodyValue) -> Reading {
        Reading {
            terms: vec![TermState::default(); spec.terms.len()],
            invalid: false,
        }
    }

    /// Takes the values the engine read (in order).
    pub fn feed(&mut self, spec: &BodyValue, caps: &[Captured]) {
        for c in caps {
            for (t, st) in spec.terms.iter().zip(self.terms.iter_mut()) {
                if c.slots & t.slots == 0 {
                    continue;
                }
                let v = match c.value {
                    Some(v) if v >= 0.0 => v,
                    _ => {
                        self.invalid = true;
                        continue;
                    }
                };
                match &mut st.open {
                    Some((doc, m)) if *doc == c.doc => *m = m.max(v),
                    _ => {
                        st.close();
                        st.open = Some((c.doc, v));
                    }
                }
            }
        }
    }

    /// The value once the body has ended.
    pub fn outcome(&self, spec: &BodyValue) -> Outcome {
        let mut value: Option<f64> = None;
        for (t, st) in spec.terms.iter().zip(&self.terms) {
            let mut st = *st;
            st.close();
            let v = match spec.aggregate {
                Aggregate::Last => st.last,
                Aggregate::Sum => st.last.map(|_| st.sum),
            };
            if let Some(v) = v {
                value = Some(value.unwrap_or(0.0) + v * t.weight);
            }
        }
        Outcome {
            value,
            invalid: self.invalid,
        }
    }
}

/// The readings of one response, one per budget of the proxy (`None`: the budget's value is
/// not in the body), fed from the engine's captures as the body streams (drained after every
/// piece, so memory stays bounded however many events a stream has).
#[derive(Debug, Default)]
pub struct Readings<'p> {
    items: Vec<Option<(&'p BodyValue, Reading)>>,
    caps: Vec<Captured>,
}

impl<'p> Readings<'p> {
    pub fn new(specs: impl Iterator<Item = Option<&'p BodyValue>>) -> Readings<'p> {
        Readings {
            items: specs.map(|s| s.map(|s| (s, Reading::new(s)))).collect(),
            caps: Vec::new(),
        }
    }

    /// Takes what `take` hands over (the engine's captures).
    pub fn drain(&mut self, take: impl FnOnce(&mut Vec<Captured>)) {
        self.caps.clear();
        take(&mut self.caps);
        for (spec, r) in self.items.iter_mut().flatten() {
            r.feed(spec, &self.caps);
        }
        self.caps.clear();
    }

    /// Budget `k`'s outcome (`None` for a budget not read from the body).
    pub fn outcome(&self, k: usize) -> Option<Outcome> {
        let (spec, r) = self.items.get(k)?.as_ref()?;
        Some(r.outcome(spec))
    }
}

/// A header value as a budget value: a non-negative decimal number (surrounding whitespace
/// allowed). `None` for anything else.
pub fn header_value(v: &[u8]) -> Option<f64> {
    let t = std::str::from_utf8(v).ok()?.trim();
    if t.is_empty()
        || t.len() > super::json::MAX_CAPTURE
        || !t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    t.parse::<f64>().ok()
}

/// A value as whole units to charge: rounded up, saturating.
pub fn units(v: f64) -> u64 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v.ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::{Action, JsonRedactor, Limits, OnInvalid, RedactProgram, SseRedactor};
    use proptest::prelude::*;

    /// The presets' shapes (as config/compile builds them): OpenAI total (slot 0), or input
    /// (slot 1) and output (slot 2) with weights; Anthropic input (slots 3|4), output (5|6).
    fn program() -> RedactProgram {
        let mut p = RedactProgram::new();
        for (path, slot) in [
            ("$.usage.total_tokens", 0),
            ("$.usage.prompt_tokens", 1),
            ("$.usage.completion_tokens", 2),
            ("$.usage.input_tokens", 3),
            ("$.message.usage.input_tokens", 4),
            ("$.usage.output_tokens", 5),
            ("$.message.usage.output_tokens", 6),
            ("$..cost", 7),
        ] {
            p.add(path, Action::Capture(1 << slot)).expect(path);
        }
        p
    }

    fn openai_total() -> BodyValue {
        BodyValue {
            terms: vec![Term {
                slots: 1,
                weight: 1.0,
            }],
            aggregate: Aggregate::Last,
        }
    }
    fn openai_cost() -> BodyValue {
        BodyValue {
            terms: vec![
                Term {
                    slots: 2,
                    weight: 1.0,
                },
                Term {
                    slots: 4,
                    weight: 3.0,
                },
            ],
            aggregate: Aggregate::Last,
        }
    }
    fn anthropic() -> BodyValue {
        BodyValue {
            terms: vec![
                Term {
                    slots: 8 | 16,
                    weight: 1.0,
                },
                Term {
                    slots: 32 | 64,
                    weight: 1.0,
                },
            ],
            aggregate: Aggregate::Last,
        }
    }
    fn cost(aggregate: Aggregate) -> BodyValue {
        BodyValue {
            terms: vec![Term {
                slots: 128,
                weight: 1.0,
            }],
            aggregate,
        }
    }

    fn json_read(p: &RedactProgram, spec: &BodyValue, body: &[u8], splits: &[usize]) -> Outcome {
        let mut r = JsonRedactor::new(p, Limits::default(), OnInvalid::Pass);
        let mut out = Vec::new();
        let mut last = 0;
        for &s in splits {
            let _ = r.feed(&body[last..s], &mut out);
            last = s;
        }
        let _ = r.feed(&body[last..], &mut out);
        let _ = r.finish(&mut out);
        assert_eq!(out, body, "capturing never changes the output");
        let mut caps = Vec::new();
        r.take_captures(&mut caps);
        let mut reading = Reading::new(spec);
        reading.feed(spec, &caps);
        reading.outcome(spec)
    }

    fn sse_read(p: &RedactProgram, spec: &BodyValue, body: &[u8], splits: &[usize]) -> Outcome {
        let mut r = SseRedactor::new(p, Limits::default(), OnInvalid::Pass, 1 << 20);
        let mut out = Vec::new();
        let mut reading = Reading::new(spec);
        let mut caps = Vec::new();
        let mut last = 0;
        for &s in splits.iter().chain(std::iter::once(&body.len())) {
            r.feed(&body[last..s], &mut out).expect("sse");
            last = s;
            caps.clear();
            r.take_captures(&mut caps);
            reading.feed(spec, &caps);
        }
        r.finish(&mut out).expect("sse");
        caps.clear();
        r.take_captures(&mut caps);
        reading.feed(spec, &caps);
        assert_eq!(out, body, "capturing never changes the output");
        reading.outcome(spec)
    }

    const OPENAI_JSON: &str = r#"{"id":"c1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
    const OPENAI_SSE: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"h\"}}],\"usage\":null}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"i\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5,\"total_tokens\":12}}\n\ndata: [DONE]\n\n";
    const ANTHROPIC_JSON: &str = r#"{"type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":20,"output_tokens":9}}"#;
    const ANTHROPIC_SSE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn named_cases() {
        let p = program();
        type Case = (
            &'static str,
            bool,
            fn() -> BodyValue,
            &'static str,
            Option<f64>,
            bool,
        );
        let cases: &[Case] = &[
            (
                "openai json total",
                false,
                openai_total,
                OPENAI_JSON,
                Some(42.0),
                false,
            ),
            (
                "openai json weighted",
                false,
                openai_cost,
                OPENAI_JSON,
                Some(12.0 + 90.0),
                false,
            ),
            (
                "openai sse final chunk",
                true,
                openai_total,
                OPENAI_SSE,
                Some(12.0),
                false,
            ),
            (
                "openai sse weighted",
                true,
                openai_cost,
                OPENAI_SSE,
                Some(7.0 + 15.0),
                false,
            ),
            (
                "anthropic json",
                false,
                anthropic,
                ANTHROPIC_JSON,
                Some(29.0),
                false,
            ),
            (
                "anthropic sse start + delta",
                true,
                anthropic,
                ANTHROPIC_SSE,
                Some(40.0),
                false,
            ),
            (
                "no usage",
                false,
                openai_total,
                r#"{"choices":[]}"#,
                None,
                false,
            ),
            (
                "sse without usage",
                true,
                openai_total,
                "data: {\"a\":1}\n\ndata: [DONE]\n\n",
                None,
                false,
            ),
            (
                "usage null",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":null}}"#,
                None,
                false,
            ),
            (
                "value as a string",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":"42"}}"#,
                None,
                true,
            ),
            (
                "negative",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":-5}}"#,
                None,
                true,
            ),
            (
                "object",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":{"n":1}}}"#,
                None,
                true,
            ),
            (
                "fraction",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":1.5e1}}"#,
                Some(15.0),
                false,
            ),
            (
                "huge",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":1e400}}"#,
                Some(f64::INFINITY),
                false,
            ),
            (
                "duplicate keys: the largest",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":50,"total_tokens":7}}"#,
                Some(50.0),
                false,
            ),
            (
                "duplicate usage objects",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":3},"usage":{"total_tokens":9}}"#,
                Some(9.0),
                false,
            ),
            (
                "escaped key",
                false,
                openai_total,
                r#"{"usage":{"total\u005ftokens":8}}"#,
                Some(8.0),
                false,
            ),
            (
                "deeper path not matched",
                false,
                openai_total,
                r#"{"x":{"usage":{"total_tokens":8}}}"#,
                None,
                false,
            ),
            (
                "malformed after the value",
                false,
                openai_total,
                r#"{"usage":{"total_tokens":8}"#,
                Some(8.0),
                false,
            ),
            (
                "malformed before the value",
                false,
                openai_total,
                r#"{"usage":{"total_tokens" 8}}"#,
                None,
                false,
            ),
            (
                "sse last",
                true,
                || cost(Aggregate::Last),
                "data: {\"cost\":2}\n\ndata: {\"cost\":3}\n\n",
                Some(3.0),
                false,
            ),
            (
                "sse sum",
                true,
                || cost(Aggregate::Sum),
                "data: {\"cost\":2}\n\ndata: {\"cost\":3}\n\ndata: {\"x\":{\"cost\":4}}\n\n",
                Some(9.0),
                false,
            ),
            (
                "sse malformed event still read up to the error",
                true,
                || cost(Aggregate::Sum),
                "data: {\"cost\":2,\n\ndata: {\"cost\":3}\n\n",
                Some(5.0),
                false,
            ),
        ];
        for (name, sse, spec, body, want, invalid) in cases {
            let spec = spec();
            let got = if *sse {
                sse_read(&p, &spec, body.as_bytes(), &[])
            } else {
                json_read(&p, &spec, body.as_bytes(), &[])
            };
            assert_eq!(got.value, *want, "{name}");
            assert_eq!(got.invalid, *invalid, "{name}");
        }
    }

    #[test]
    fn a_long_number_counts_as_infinite() {
        let p = program();
        let body = format!(r#"{{"usage":{{"total_tokens":{}}}}}"#, "9".repeat(200));
        for split in [0, 20, 30, 100, body.len()] {
            let got = json_read(&p, &openai_total(), body.as_bytes(), &[split]);
            assert_eq!(got.value, Some(f64::INFINITY));
        }
        assert_eq!(units(f64::INFINITY), u64::MAX);
        assert_eq!(units(1.2), 2);
        assert_eq!(units(0.0), 0);
        assert_eq!(units(f64::NAN), 0);
    }

    #[test]
    fn a_captured_value_under_a_mask_is_not_read() {
        let mut p = program();
        p.add("$.usage", Action::Mask).unwrap();
        let mut r = JsonRedactor::new(&p, Limits::default(), OnInvalid::Pass);
        let mut out = Vec::new();
        r.feed(OPENAI_JSON.as_bytes(), &mut out).unwrap();
        r.finish(&mut out).unwrap();
        assert!(r.captures().is_empty());
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains(r#""usage":"[REDACTED]""#)
        );
    }

    #[test]
    fn header_values() {
        assert_eq!(header_value(b" 12 "), Some(12.0));
        assert_eq!(header_value(b"0.25"), Some(0.25));
        for bad in [&b""[..], b"-1", b"1e3", b"abc", b"1 2", b"\xff", b"1.2.3"] {
            assert!(header_value(bad).is_none(), "{}", bad.escape_ascii());
        }
    }

    proptest! {
        /// Chunk boundaries anywhere give the same value (JSON and SSE, every preset shape).
        #[test]
        fn any_chunking_reads_the_same(cuts in proptest::collection::vec(0usize..400, 0..6)) {
            let p = program();
            for (sse, spec, body) in [
                (false, openai_total(), OPENAI_JSON),
                (false, openai_cost(), OPENAI_JSON),
                (true, openai_total(), OPENAI_SSE),
                (false, anthropic(), ANTHROPIC_JSON),
                (true, anthropic(), ANTHROPIC_SSE),
            ] {
                let mut splits: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
                splits.sort_unstable();
                let whole = if sse { sse_read(&p, &spec, body.as_bytes(), &[]) } else { json_read(&p, &spec, body.as_bytes(), &[]) };
                let cut = if sse { sse_read(&p, &spec, body.as_bytes(), &splits) } else { json_read(&p, &spec, body.as_bytes(), &splits) };
                prop_assert_eq!(whole, cut);
            }
        }

        /// Any bytes: no panic, and the output is the input.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..200) {
            let p = program();
            let cut = cut.min(body.len());
            let _ = json_read(&p, &openai_total(), &body, &[cut]);
        }
    }
}
