//! Redaction paths: a small JSONPath subset compiled once into an NFA over path steps.
//!
//! Grammar (after the leading `$`), any number of steps:
//! - `.name` — member `name` (any characters but `.`, `[`, `]`, quotes and whitespace)
//! - `["any key"]` / `['any key']` — member by quoted name (`\\`, `\"`, `\'` escapes)
//! - `[N]` — array element N (0-based)
//! - `[*]` / `.*` — any child (array element or object member)
//! - `..` before a step (`..name`, `..*`, `..[0]`, `..["k"]`) — that step at any depth below
//!
//! Matching walks one child label (a decoded key or an index) at a time: the redactor keeps the
//! set of live NFA states per open container and [`RedactProgram::advance`] computes the set for a
//! child, comparing the key bytes it already holds — no allocation, no string work on config.

use std::ops::Range;
use std::str::FromStr;

/// What happens to a matched value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Drop the object member or array element (commas fixed up).
    Remove,
    /// Replace the value, whatever its type, with the string `"[REDACTED]"`.
    Mask,
    /// Keep the value and read it (budgets, `[[proxies.budgets]]`): the bits name the capture
    /// slots (distinct paths) it feeds. Never changes the output.
    Capture(u32),
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "remove" => Ok(Action::Remove),
            "mask" => Ok(Action::Mask),
            other => Err(format!(
                "unknown redact action `{other}` (expected `remove` or `mask`)"
            )),
        }
    }
}

/// When several paths match one value the stronger action wins: `Remove` beats `Mask` beats
/// `Capture` (a removed or masked value is not read); captures of one value merge their slots.
fn strongest(a: Option<Action>, b: Action) -> Action {
    match (a, b) {
        (Some(Action::Remove), _) | (_, Action::Remove) => Action::Remove,
        (Some(Action::Mask), _) | (_, Action::Mask) => Action::Mask,
        (Some(Action::Capture(x)), Action::Capture(y)) => Action::Capture(x | y),
        (None, c) => c,
    }
}

/// One selector of a path step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Selector {
    /// Object member with this (decoded, UTF-8) name.
    Key(Box<[u8]>),
    /// Array element at this index.
    Index(u64),
    /// Any child.
    Any,
}

/// A parsed step: the selector and whether it may match at any depth (`..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) desc: bool,
    pub(crate) sel: Selector,
}

/// The label of one child in the document: a decoded member name or an element index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label<'a> {
    Key(&'a [u8]),
    Index(u64),
}

impl Selector {
    #[inline]
    pub(crate) fn matches(&self, label: Label<'_>) -> bool {
        match (self, label) {
            (Selector::Any, _) => true,
            (Selector::Key(k), Label::Key(x)) => **k == *x,
            (Selector::Index(n), Label::Index(x)) => *n == x,
            _ => false,
        }
    }
}

/// NFA state id.
pub(crate) type StateId = u16;

#[derive(Clone, Debug)]
enum Node {
    Step { sel: Selector, next: StateId },
    Accept(Action),
}

/// A compiled set of redaction rules (each path with its own action). Build once per config;
/// share by reference with every [`super::JsonRedactor`] / [`super::SseRedactor`].
#[derive(Clone, Debug, Default)]
pub struct RedactProgram {
    nodes: Vec<Node>,
    initial: Vec<StateId>,
    rules: Vec<(String, Action)>,
    /// Per state: bit 0 = `..` step, bit 1 = wildcard step (kept apart from `nodes` for speed).
    flags: Vec<u8>,
    /// Bloom-style filter over (length, first byte, last byte) of every key selector: most keys
    /// of a document are rejected without comparing against each live state.
    key_filter: [u64; 16],
}

/// The filter bit of a key.
#[inline(always)]
fn key_bit(key: &[u8]) -> usize {
    let first = key.first().map_or(0, |&b| usize::from(b));
    let last = key.last().map_or(0, |&b| usize::from(b));
    (key.len().wrapping_mul(31) ^ first.wrapping_mul(7) ^ (last << 3)) & 1023
}

impl RedactProgram {
    /// An empty program (redacts nothing; the redactor still validates).
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles `paths`, all with `action`. The error names the first bad path and why.
    pub fn compile(paths: &[&str], action: Action) -> Result<Self, String> {
        let mut p = Self::new();
        for path in paths {
            p.add(path, action)?;
        }
        Ok(p)
    }

    /// Adds one path with its action (rules from several `[[proxies.redact]]` tables merge into
    /// one program this way).
    pub fn add(&mut self, path: &str, action: Action) -> Result<(), String> {
        let steps = parse_path(path)?;
        let base = self.nodes.len();
        if base + steps.len() + 1 > usize::from(StateId::MAX) {
            return Err(format!(
                "redact path `{path}`: too many redact paths in one proxy"
            ));
        }
        for (k, s) in steps.into_iter().enumerate() {
            if let Selector::Key(key) = &s.sel {
                let bit = key_bit(key);
                self.key_filter[bit / 64] |= 1 << (bit % 64);
            }
            self.flags
                .push(u8::from(s.desc) | (u8::from(s.sel == Selector::Any) << 1));
            self.nodes.push(Node::Step {
                sel: s.sel,
                next: (base + k + 1) as StateId,
            });
        }
        self.nodes.push(Node::Accept(action));
        self.flags.push(0);
        self.initial.push(base as StateId);
        self.rules.push((path.to_owned(), action));
        Ok(())
    }

    /// Adds every rule of `other`.
    pub fn merge(&mut self, other: &RedactProgram) -> Result<(), String> {
        for (path, action) in &other.rules {
            self.add(path, *action)?;
        }
        Ok(())
    }

    /// True when the program has no paths.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True when some path removes or masks (not only captures): the output may differ from
    /// the input.
    pub fn rewrites(&self) -> bool {
        self.rules
            .iter()
            .any(|(_, a)| matches!(a, Action::Remove | Action::Mask))
    }

    /// The source rules, in the order they were added.
    pub fn rules(&self) -> impl Iterator<Item = (&str, Action)> {
        self.rules.iter().map(|(p, a)| (p.as_str(), *a))
    }

    /// The state set of the top-level value's children.
    pub(crate) fn initial(&self) -> &[StateId] {
        &self.initial
    }

    /// Moves the state set `states[from]` over one child `label`: truncates `states` to
    /// `from.end`, appends the states reached by a matching step there and returns the action if
    /// a path ends on this child. The `..` states that stay live below every child are added by
    /// [`Self::add_desc`] only when the child turns out to be a container (most are scalars).
    #[inline]
    pub(crate) fn advance(
        &self,
        states: &mut Vec<StateId>,
        from: Range<usize>,
        label: Label<'_>,
    ) -> Option<Action> {
        let end = from.end;
        states.truncate(end);
        let mut act: Option<Action> = None;
        for k in from {
            let Some(&s) = states.get(k) else { break };
            let Some(Node::Step { sel, next, .. }) = self.nodes.get(usize::from(s)) else {
                continue;
            };
            if sel.matches(label) {
                match self.nodes.get(usize::from(*next)) {
                    Some(Node::Accept(a)) => act = Some(strongest(act, *a)),
                    Some(Node::Step { .. }) if !states[end..].contains(next) => states.push(*next),
                    _ => {}
                }
            }
        }
        act
    }

    /// False when no key selector of the program can match `key` (a fast, exact-negative test).
    #[inline(always)]
    pub(crate) fn key_may_match(&self, key: &[u8]) -> bool {
        let bit = key_bit(key);
        self.key_filter[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// True when some state of `states` has a wildcard step (matches any key or index).
    pub(crate) fn has_wildcard(&self, states: &[StateId]) -> bool {
        states
            .iter()
            .any(|&s| self.flags.get(usize::from(s)).is_some_and(|f| f & 2 != 0))
    }

    /// Completes a container child's state set (after [`Self::advance`] put the matched steps at
    /// `states[parent.end..]`) with the parent's `..` states, which stay live at every depth.
    #[inline]
    pub(crate) fn add_desc(&self, states: &mut Vec<StateId>, parent: Range<usize>) {
        let end = parent.end;
        for k in parent {
            let Some(&s) = states.get(k) else { break };
            if self.flags.get(usize::from(s)).is_some_and(|f| f & 1 != 0)
                && !states[end..].contains(&s)
            {
                states.push(s);
            }
        }
    }
}

/// Parses one path into steps. Errors read `redact path `…`: why`.
pub(crate) fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let err = |why: &str| format!("redact path `{path}`: {why}");
    let b = path.as_bytes();
    if b.first() != Some(&b'$') {
        return Err(err("must start with `$`"));
    }
    let mut i = 1;
    let mut steps = Vec::new();
    while i < b.len() {
        match b[i] {
            b'.' => {
                i += 1;
                let desc = b.get(i) == Some(&b'.');
                if desc {
                    i += 1;
                }
                match b.get(i) {
                    None => return Err(err("ends with `.`")),
                    Some(b'.') => return Err(err("`...` is not a step")),
                    Some(b'[') if desc => {
                        let (sel, n) = parse_bracket(&b[i..]).map_err(|w| err(&w))?;
                        i += n;
                        steps.push(Step { desc, sel });
                    }
                    Some(b'[') => {
                        return Err(err("`.` followed by `[` (write `$.a[0]` or `$[\"a\"]`)"));
                    }
                    Some(b'*') => {
                        i += 1;
                        steps.push(Step {
                            desc,
                            sel: Selector::Any,
                        });
                    }
                    Some(_) => {
                        let start = i;
                        while i < b.len() && !matches!(b[i], b'.' | b'[') {
                            let c = b[i];
                            if matches!(c, b']' | b'"' | b'\'' | b'*')
                                || c.is_ascii_whitespace()
                                || c < 0x20
                            {
                                return Err(err(&format!(
                                    "character `{}` not allowed in a dotted name (use [\"...\"])",
                                    c.escape_ascii()
                                )));
                            }
                            i += 1;
                        }
                        steps.push(Step {
                            desc,
                            sel: Selector::Key(b[start..i].into()),
                        });
                    }
                }
            }
            b'[' => {
                let (sel, n) = parse_bracket(&b[i..]).map_err(|w| err(&w))?;
                i += n;
                steps.push(Step { desc: false, sel });
            }
            c => {
                return Err(err(&format!(
                    "unexpected `{}` at offset {i} (expected `.` or `[`)",
                    c.escape_ascii()
                )));
            }
        }
    }
    if steps.is_empty() {
        return Err(err(
            "selects the whole document (needs at least one step after `$`)",
        ));
    }
    Ok(steps)
}

/// Parses `[...]` at the start of `b`; returns the selector and the bytes used.
fn parse_bracket(b: &[u8]) -> Result<(Selector, usize), String> {
    match b.get(1) {
        Some(b'*') => {
            if b.get(2) == Some(&b']') {
                Ok((Selector::Any, 3))
            } else {
                Err("expected `]` after `[*`".into())
            }
        }
        Some(b'0'..=b'9') => {
            let mut j = 1;
            let mut n: u64 = 0;
            while let Some(d @ b'0'..=b'9') = b.get(j) {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d - b'0')))
                    .ok_or_else(|| "array index too large".to_string())?;
                j += 1;
            }
            if b.get(j) == Some(&b']') {
                Ok((Selector::Index(n), j + 1))
            } else {
                Err("expected `]` after an array index".into())
            }
        }
        Some(b'-') => Err("negative array indexes are not supported".into()),
        Some(&q @ (b'"' | b'\'')) => {
            let mut key = Vec::new();
            let mut j = 2;
            loop {
                match b.get(j) {
                    None => return Err("unterminated quoted key".into()),
                    Some(b'\\') => match b.get(j + 1) {
                        Some(&c @ (b'\\' | b'"' | b'\'')) => {
                            key.push(c);
                            j += 2;
                        }
                        _ => {
                            return Err(
                                "bad escape in quoted key (only \\\\, \\\", \\' allowed)".into()
                            );
                        }
                    },
                    Some(&c) if c == q => {
                        j += 1;
                        break;
                    }
                    Some(&c) => {
                        key.push(c);
                        j += 1;
                    }
                }
            }
            if b.get(j) == Some(&b']') {
                Ok((Selector::Key(key.into()), j + 1))
            } else {
                Err("expected `]` after a quoted key".into())
            }
        }
        _ => Err("expected `*`, an index or a quoted key after `[`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Selector {
        Selector::Key(s.as_bytes().into())
    }
    fn st(desc: bool, sel: Selector) -> Step {
        Step { desc, sel }
    }

    #[test]
    fn parse_table() {
        let cases: &[(&str, Vec<Step>)] = &[
            ("$.a", vec![st(false, key("a"))]),
            ("$.a.b", vec![st(false, key("a")), st(false, key("b"))]),
            ("$..ssn", vec![st(true, key("ssn"))]),
            (
                "$.data[*].account_number",
                vec![
                    st(false, key("data")),
                    st(false, Selector::Any),
                    st(false, key("account_number")),
                ],
            ),
            (
                "$.a[0]",
                vec![st(false, key("a")), st(false, Selector::Index(0))],
            ),
            ("$[12]", vec![st(false, Selector::Index(12))]),
            ("$[\"quoted key\"]", vec![st(false, key("quoted key"))]),
            ("$['it''s']", vec![]),
            ("$['a\\'b']", vec![st(false, key("a'b"))]),
            ("$[\"k\\\"q\"]", vec![st(false, key("k\"q"))]),
            ("$.*", vec![st(false, Selector::Any)]),
            ("$..*", vec![st(true, Selector::Any)]),
            ("$..[0]", vec![st(true, Selector::Index(0))]),
            (
                "$..[\"x y\"].z",
                vec![st(true, key("x y")), st(false, key("z"))],
            ),
            ("$.x-api-key", vec![st(false, key("x-api-key"))]),
            ("$.é", vec![st(false, key("é"))]),
        ];
        for (path, want) in cases {
            if want.is_empty() {
                assert!(parse_path(path).is_err(), "{path} should fail");
            } else {
                assert_eq!(parse_path(path).as_ref(), Ok(want), "{path}");
            }
        }
    }

    #[test]
    fn parse_errors_name_the_path_and_why() {
        let cases: &[(&str, &str)] = &[
            ("", "must start with `$`"),
            ("a.b", "must start with `$`"),
            ("$", "whole document"),
            ("$.", "ends with `.`"),
            ("$..", "ends with `.`"),
            ("$...a", "`...`"),
            ("$.a b", "not allowed"),
            ("$.[0]", "followed by `[`"),
            ("$[", "expected `*`"),
            ("$[*", "expected `]`"),
            ("$[-1]", "negative"),
            ("$[99999999999999999999999]", "too large"),
            ("$[1", "expected `]`"),
            ("$[\"abc", "unterminated"),
            ("$[\"abc\"", "expected `]`"),
            ("$[\"a\\nb\"]", "bad escape"),
            ("$a", "unexpected `a`"),
        ];
        for (path, why) in cases {
            let e = parse_path(path).expect_err(path);
            assert!(e.contains(&format!("`{path}`")), "{e}");
            assert!(e.contains(why), "{path}: {e}");
        }
    }

    #[test]
    fn compile_reports_bad_path() {
        let e = RedactProgram::compile(&["$.ok", "nope"], Action::Remove).expect_err("bad");
        assert!(e.contains("`nope`"), "{e}");
        assert_eq!("mask".parse::<Action>(), Ok(Action::Mask));
        assert_eq!("remove".parse::<Action>(), Ok(Action::Remove));
        assert!("drop".parse::<Action>().is_err());
    }

    #[test]
    fn advance_walks_the_nfa() {
        let mut p =
            RedactProgram::compile(&["$..ssn", "$.data[*].acct"], Action::Remove).expect("ok");
        p.add("$.data[0]", Action::Mask).expect("ok");
        let mut states: Vec<StateId> = p.initial().to_vec();
        let root = 0..states.len();
        assert_eq!(
            p.advance(&mut states, root.clone(), Label::Key(b"ssn")),
            Some(Action::Remove)
        );
        assert_eq!(
            p.advance(&mut states, root.clone(), Label::Key(b"data")),
            None
        );
        p.add_desc(&mut states, root.clone());
        let data = root.end..states.len();
        // children of data: ..ssn (desc), [*] of acct path, [0] of mask path
        assert_eq!(data.len(), 3);
        assert_eq!(
            p.advance(&mut states, data.clone(), Label::Index(0)),
            Some(Action::Mask)
        );
        assert_eq!(p.advance(&mut states, data.clone(), Label::Index(1)), None);
        p.add_desc(&mut states, data.clone());
        let elem = data.end..states.len();
        assert_eq!(
            p.advance(&mut states, elem.clone(), Label::Key(b"acct")),
            Some(Action::Remove)
        );
        assert_eq!(
            p.advance(&mut states, elem.clone(), Label::Key(b"ssn")),
            Some(Action::Remove)
        );
        assert_eq!(p.advance(&mut states, elem, Label::Key(b"other")), None);
        // merge keeps every rule
        let mut q = RedactProgram::new();
        q.merge(&p).expect("merge");
        assert_eq!(q.rules().count(), 3);
    }
}
