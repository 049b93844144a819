//! Request-body scanners (SPEC "Config": `[[proxies.scanners]]`): literal strings and built-in
//! detectors, searched in the whole outbound body before a byte goes upstream.
//!
//! One [`ScanSet`] per proxy, compiled once:
//! - every scanner's literals plus the anchors of the enabled text detectors (`-----BEGIN `,
//!   `AKIA`, `ASIA`, `ghp_`..., `github_pat_`, `xox`, `sk-`) are lower-cased, de-duplicated and
//!   mapped back to their scanners and detectors; the body window is ASCII-folded once and
//!   searched case-sensitively, which lets Aho-Corasick use its SIMD (Teddy) prefilter: patterns
//!   go in groups of at most 64 (Teddy's limit), each a leftmost-first "where does the next
//!   pattern start" automaton plus an anchored one that lists every pattern starting there
//!   (so no pattern hides another, e.g. a report scanner's literal around a blocking one);
//!   an anchor hit runs its detector's verifier at that offset;
//! - the digit detectors (`credit_card`, `us_ssn`, `iban`) share one digit-run scan (eight bytes
//!   at a time) that stops only at the start of each digit group; `email` is anchored on `@`
//!   with memchr (a one-byte pattern would blunt the prefilter).
//!
//! So a body costs one fold, one prefiltered pass per 64 patterns, one digit pass and one
//! memchr pass, however many scanners and detectors a proxy has; no pass is per detector.
//! Digits are not automaton patterns: ten one-byte patterns would stop the search on every
//! digit.
//!
//! A hit names the scanner and the detector or literal (by index), and carries the offset and
//! length of the match; the matched bytes are never copied, returned or logged.
//!
//! Semantics: literals match ASCII case-insensitively (non-ASCII bytes exactly). A scanner in
//! `mode = "report"` never blocks; its hits come back in [`ScanOutcome::reports`] (first hit per
//! scanner and detector/literal) for shadow-mode logging. [`ScanOutcome::blocked`] is the
//! blocking hit that starts first in the body (ties: scanner order, then detectors before
//! literals), so the answer does not depend on how the body was cut into chunks.
//!
//! What a request body is scanned as ([`ScanSet::scan_request`], issue 12):
//! - the content codings: every `Content-Encoding` field line, combined as RFC 9110 §5.3 says (a
//!   comma-separated list in order; `identity` is no coding), undone last to first — `gzip`,
//!   `x-gzip`, `deflate`, at most [`MAX_CODINGS`] of them; any other coding is refused
//!   (`UnsupportedEncoding`), so a body the scanner cannot read never passes;
//! - then the decoded body as is, and the decoded views an upstream may read (`views.rs`):
//!   multipart parts with their transfer encodings undone (`multipart/*` content type), the
//!   form decoding (`application/x-www-form-urlencoded`), JSON string escapes undone (any body
//!   holding one that can hide a match), long base64 runs decoded; views are chained (a form
//!   field holding JSON escapes, a JSON document inside a JSON string, base64 inside a JSON
//!   string, base64 of base64) at most three decodings deep, so at most 29 views, each no
//!   longer than the body, one chain (≤ 3 buffers) alive at a time. A view
//!   is built only when its trigger is present (a `\u`, a long base64 run...), so an ordinary
//!   body costs one extra memchr pass and one base64-run probe pass (≈ one byte read in 16).
//!   Hit offsets in a view count from the end of the body plus the views before it.
mod detectors;
mod views;

pub use detectors::Detector;
use detectors::{Anchor, LOOKAHEAD, LOOKBEHIND};

use aho_corasick::{
    AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, Anchored, Input, MatchKind, StartKind,
    automaton::OverlappingState,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;

/// Longest literal accepted in config.
pub const MAX_LITERAL_LEN: usize = 1024;

/// One `[[proxies.scanners]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScanner {
    pub name: String,
    #[serde(default)]
    pub detectors: Vec<String>,
    #[serde(default)]
    pub literals: Vec<String>,
    /// `"block"` (default) or `"report"`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// What a scanner does with a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The call is refused (`payload_blocked`).
    Block,
    /// The hit is reported (audit, metrics) and the call goes on.
    Report,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Block => "block",
            Mode::Report => "report",
        }
    }
}

/// What matched: a built-in detector, or a scanner's literal by its index in `literals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HitKind {
    Detector(Detector),
    Literal(usize),
}

/// One hit. Holds no body bytes: only where the match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit<'a> {
    /// The scanner's configured name (what `payload_blocked` and the audit record name).
    pub scanner: &'a str,
    /// The scanner's index in config order.
    pub scanner_index: usize,
    pub kind: HitKind,
    pub mode: Mode,
    /// Offset of the match in the scanned (decoded) body.
    pub offset: usize,
    pub len: usize,
}

/// The result of scanning one body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOutcome<'a> {
    /// The blocking hit that starts first, if any: the call must be refused.
    pub blocked: Option<Hit<'a>>,
    /// Hits of report-mode scanners (first per scanner and kind), by scanner then kind.
    pub reports: Vec<Hit<'a>>,
}

impl ScanOutcome<'_> {
    /// No hit at all.
    pub fn is_clean(&self) -> bool {
        self.blocked.is_none() && self.reports.is_empty()
    }
}

/// Why an encoded body could not be scanned; the gateway refuses the call in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A content coding other than identity, gzip, x-gzip or deflate, or more than
    /// [`MAX_CODINGS`] of them.
    #[error("unsupported content-encoding: the body cannot be scanned")]
    UnsupportedEncoding,
    /// Decoding would exceed the allowed decoded size.
    #[error("decoded body exceeds the size limit")]
    TooLarge,
    /// The body is not valid for its content coding.
    #[error("body is not valid for its content-encoding")]
    Corrupt,
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Literal { scanner: u16, literal: u32 },
    Anchor(Anchor),
}

#[derive(Debug)]
struct ScannerInfo {
    name: Box<str>,
    mode: Mode,
}

/// The compiled scanners of one proxy.
#[derive(Debug)]
pub struct ScanSet {
    scanners: Vec<ScannerInfo>,
    ac: Option<Literals>,
    /// Per automaton pattern: what a match means.
    roles: Vec<Vec<Role>>,
    /// Per detector: the scanners that enabled it, in config order.
    owners: [Vec<u16>; Detector::COUNT],
    max_pattern: usize,
    /// Whether any scanner asks for a report-mode hit.
    any_report: bool,
    /// Some literal holds `"`, `\\` or a control character: every JSON escape can hide it.
    json_all_escapes: bool,
}

/// Most content codings undone for one body (more is refused as unscannable).
pub const MAX_CODINGS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
}

/// A decoded view (or the body itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Body,
    Multipart,
    Form,
    Json,
    Base64,
}

impl View {
    /// How many decodings deep a view may be: JSON in a JSON string in a base64 blob.
    const MAX_DEPTH: u8 = 3;

    /// The views decoded from this one, at `depth` decodings below the body: multipart and form
    /// apply to the body as sent (the request's Content-Type describes it); JSON escapes and
    /// base64 to anything, repeatedly (a JSON document in a JSON string, base64 of base64).
    fn next(self, depth: u8) -> &'static [View] {
        match self {
            _ if depth >= View::MAX_DEPTH => &[],
            View::Body => &[View::Multipart, View::Form, View::Json, View::Base64],
            _ => &[View::Json, View::Base64],
        }
    }
}

/// What the scanner reads from the request head.
#[derive(Debug, Default)]
struct BodyFields<'a> {
    codings: [Option<Coding>; MAX_CODINGS],
    form: bool,
    boundary: Option<&'a [u8]>,
}

type CompileErrors = Vec<(String, String)>;

impl ScanSet {
    /// Compiles the scanners of one proxy. Errors are `(key, message)` with keys such as
    /// `scanners[1].detectors[0]`, relative to the proxy.
    pub fn compile(scanners: &[RawScanner]) -> Result<ScanSet, CompileErrors> {
        let mut errors = CompileErrors::new();
        if scanners.len() > usize::from(u16::MAX) {
            return Err(vec![("scanners".into(), "too many scanners".into())]);
        }
        let mut infos = Vec::with_capacity(scanners.len());
        let mut owners: [Vec<u16>; Detector::COUNT] = Default::default();
        let mut patterns: Vec<(Vec<u8>, Vec<Role>)> = Vec::new();
        let mut by_text: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut add_pattern = |text: &[u8], role: Role| {
            let key = text.to_ascii_lowercase();
            let at = *by_text.entry(key.clone()).or_insert_with(|| {
                patterns.push((key, Vec::new()));
                patterns.len() - 1
            });
            patterns[at].1.push(role);
        };
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, s) in scanners.iter().enumerate() {
            let si = i as u16;
            if s.name.is_empty() {
                errors.push((format!("scanners[{i}].name"), "empty scanner name".into()));
            } else if let Some(first) = names.get(s.name.as_str()) {
                errors.push((
                    format!("scanners[{i}].name"),
                    format!(
                        "duplicate scanner name {:?} (first used by scanners[{first}])",
                        s.name
                    ),
                ));
            } else {
                names.insert(s.name.as_str(), i);
            }
            let mode = match s.mode.as_deref() {
                None | Some("block") => Mode::Block,
                Some("report") => Mode::Report,
                Some(m) => {
                    errors.push((
                        format!("scanners[{i}].mode"),
                        format!("unknown mode {m:?}: expected \"block\" (default) or \"report\""),
                    ));
                    Mode::Block
                }
            };
            if s.detectors.is_empty() && s.literals.is_empty() {
                errors.push((
                    format!("scanners[{i}]"),
                    "the scanner has neither detectors nor literals: it never matches".into(),
                ));
            }
            for (j, d) in s.detectors.iter().enumerate() {
                match Detector::from_name(d) {
                    Some(det) => {
                        let o = &mut owners[det.index()];
                        if o.last() != Some(&si) {
                            o.push(si);
                        }
                    }
                    None => errors.push((
                        format!("scanners[{i}].detectors[{j}]"),
                        format!(
                            "unknown detector {d:?}: expected one of {}",
                            Detector::names()
                        ),
                    )),
                }
            }
            for (j, l) in s.literals.iter().enumerate() {
                if l.is_empty() {
                    errors.push((
                        format!("scanners[{i}].literals[{j}]"),
                        "empty literal: it would match every body".into(),
                    ));
                } else if l.len() > MAX_LITERAL_LEN {
                    errors.push((
                        format!("scanners[{i}].literals[{j}]"),
                        format!("literal longer than {MAX_LITERAL_LEN} bytes"),
                    ));
                } else {
                    add_pattern(
                        l.as_bytes(),
                        Role::Literal {
                            scanner: si,
                            literal: j as u32,
                        },
                    );
                }
            }
            infos.push(ScannerInfo {
                name: s.name.as_str().into(),
                mode,
            });
        }
        for d in Detector::ALL {
            if !owners[d.index()].is_empty() {
                for &(text, anchor) in Anchor::of(d) {
                    add_pattern(text, Role::Anchor(anchor));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let max_pattern = patterns.iter().map(|p| p.0.len()).max().unwrap_or(0);
        let ac = if patterns.is_empty() {
            None
        } else {
            match Literals::build(&patterns) {
                Ok(l) => Some(l),
                Err(e) => {
                    return Err(vec![(
                        "scanners".into(),
                        format!("cannot build the literal automaton: {e}"),
                    )]);
                }
            }
        };
        let any_report = infos.iter().any(|s| s.mode == Mode::Report);
        let json_all_escapes = scanners
            .iter()
            .flat_map(|s| &s.literals)
            .any(|l| l.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        Ok(ScanSet {
            json_all_escapes,
            scanners: infos,
            ac,
            roles: patterns.into_iter().map(|p| p.1).collect(),
            owners,
            max_pattern,
            any_report,
        })
    }

    /// Whether the set scans for nothing (no scanners).
    pub fn is_empty(&self) -> bool {
        self.scanners.is_empty()
    }

    /// Whether some scanner is in report mode.
    pub fn has_report_scanners(&self) -> bool {
        self.any_report
    }

    /// The scanner names, in config order.
    pub fn scanner_names(&self) -> impl Iterator<Item = &str> {
        self.scanners.iter().map(|s| &*s.name)
    }

    /// Scans a whole (decoded) body.
    pub fn scan(&self, body: &[u8]) -> ScanOutcome<'_> {
        let mut acc = Acc::default();
        self.scan_window(body, 0, 0, body.len(), &mut acc);
        acc.into_outcome(self)
    }

    /// Scans a body sent with `Content-Encoding: content_encoding` (one field line) and no
    /// Content-Type; see [`ScanSet::scan_request`].
    pub fn scan_encoded(
        &self,
        body: &[u8],
        content_encoding: Option<&[u8]>,
        max_decoded: usize,
    ) -> Result<ScanOutcome<'_>, ScanError> {
        self.scan_request(
            body,
            content_encoding.map(|v| (&b"content-encoding"[..], v)),
            max_decoded,
        )
    }

    /// Scans a request body with the request's header fields (`(name, value)`, in order; only
    /// `Content-Encoding` and `Content-Type` are read): the content codings of every
    /// `Content-Encoding` line undone (at most `max_decoded` bytes at each step), then the
    /// decoded body and its decoded views (module header). A coding other than identity,
    /// `gzip`, `x-gzip` or `deflate`, or more than [`MAX_CODINGS`], is refused, never skipped.
    pub fn scan_request<'h>(
        &self,
        body: &[u8],
        fields: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
        max_decoded: usize,
    ) -> Result<ScanOutcome<'_>, ScanError> {
        let f = BodyFields::read(fields)?;
        let mut decoded: std::borrow::Cow<'_, [u8]> = std::borrow::Cow::Borrowed(body);
        if !body.is_empty() {
            // applied in order by the sender: undone last first
            for c in f.codings.iter().rev().flatten() {
                decoded = std::borrow::Cow::Owned(decode_coding(*c, &decoded, max_decoded)?);
            }
        }
        let mut acc = Acc::default();
        let mut base = 0;
        self.scan_view(&decoded, View::Body, 0, &f, &mut acc, &mut base);
        Ok(acc.into_outcome(self))
    }

    /// Scans `v` (a view of kind `kind`, `depth` decodings below the body), then every view
    /// decoded from it. `base`: the virtual offset of `v`'s first byte.
    fn scan_view(
        &self,
        v: &[u8],
        kind: View,
        depth: u8,
        f: &BodyFields<'_>,
        acc: &mut Acc,
        base: &mut usize,
    ) {
        self.scan_window(v, *base, 0, v.len(), acc);
        *base += v.len();
        let mut out = Vec::new();
        for &next in kind.next(depth) {
            let built = match next {
                View::Multipart => f.boundary.is_some_and(|b| views::multipart(v, b, &mut out)),
                View::Form => {
                    f.form && views::form_needs_view(v) && {
                        views::form_decode(v, &mut out);
                        true
                    }
                }
                View::Json => {
                    views::json_needs_view(v, self.json_all_escapes) && {
                        views::json_unescape(v, &mut out);
                        true
                    }
                }
                View::Base64 => views::base64_runs(v, &mut out),
                View::Body => false,
            };
            if built {
                let view = std::mem::take(&mut out);
                self.scan_view(&view, next, depth + 1, f, acc, base);
                out = view;
            }
        }
    }

    /// An incremental scanner: [`Scanner::finish`] gives exactly what [`ScanSet::scan`] gives
    /// for the concatenation of everything fed, whatever the chunk boundaries.
    pub fn stream(&self) -> Scanner<'_> {
        self.stream_with_batch(16 * 1024)
    }

    /// [`ScanSet::stream`] that scans as soon as `min_batch` new bytes (beyond the look-ahead)
    /// have arrived; small values exercise the window logic (tests, fuzzing).
    #[doc(hidden)]
    pub fn stream_with_batch(&self, min_batch: usize) -> Scanner<'_> {
        Scanner {
            set: self,
            buf: Vec::new(),
            base: 0,
            done: 0,
            acc: Acc::default(),
            min_batch,
        }
    }

    /// Bytes past an anchor that verifying it may read.
    fn lookahead(&self) -> usize {
        LOOKAHEAD.max(self.max_pattern)
    }

    fn digit_pass(&self) -> [bool; 3] {
        [
            !self.owners[Detector::CreditCard.index()].is_empty(),
            !self.owners[Detector::UsSsn.index()].is_empty(),
            !self.owners[Detector::Iban.index()].is_empty(),
        ]
    }

    /// Finds every hit whose anchor starts in `buf[from..to]`. The caller guarantees that
    /// `buf` holds the body's bytes from `from - LOOKBEHIND` (or the body's start) to
    /// `to + lookahead()` (or the body's end); `base` is the body offset of `buf[0]`.
    fn scan_window(&self, buf: &[u8], base: usize, from: usize, to: usize, acc: &mut Acc) {
        if from >= to {
            return;
        }
        if let Some(ac) = &self.ac {
            let end = buf
                .len()
                .min(to.saturating_add(self.max_pattern.saturating_sub(1)));
            if let Some(window) = buf.get(from..end) {
                // Patterns are lower case; fold the window once and search it case-sensitively,
                // which lets the candidate search use a SIMD prefilter.
                let folded = window.to_ascii_lowercase();
                ac.for_each_start(&folded, to - from, |p, pattern, len| {
                    let Some(roles) = self.roles.get(pattern) else {
                        return;
                    };
                    for role in roles {
                        match *role {
                            Role::Literal { scanner, literal } => acc.add(
                                self,
                                RawHit {
                                    offset: base + from + p,
                                    len,
                                    scanner,
                                    kind: HitKind::Literal(literal as usize),
                                },
                            ),
                            Role::Anchor(a) => {
                                if let Some((s, len)) = a.verify(buf, from + p) {
                                    self.detected(acc, a.detector(), base + s, len);
                                }
                            }
                        }
                    }
                });
            }
        }
        if !self.owners[Detector::Email.index()].is_empty()
            && let Some(window) = buf.get(from..to)
        {
            for p in memchr::memchr_iter(b'@', window) {
                if let Some((s, len)) = Anchor::At.verify(buf, from + p) {
                    self.detected(acc, Detector::Email, base + s, len);
                }
            }
        }
        let [card, ssn, iban] = self.digit_pass();
        if card || ssn || iban {
            let mut i = from;
            while let Some(p) = detectors::next_digit(buf, i, to) {
                let g = detectors::digit_run(buf, p);
                i = p + g;
                if p > 0 && buf.get(p - 1).is_some_and(u8::is_ascii_digit) {
                    // Continues a group that started before `from`.
                    continue;
                }
                let next = buf.get(p + g).copied();
                if card
                    && (g >= 13 || (g == 4 && matches!(next, Some(b' ' | b'-'))))
                    && let Some((s, len)) = detectors::credit_card(buf, p)
                {
                    self.detected(acc, Detector::CreditCard, base + s, len);
                }
                if ssn
                    && g == 3
                    && next == Some(b'-')
                    && let Some((s, len)) = detectors::us_ssn(buf, p)
                {
                    self.detected(acc, Detector::UsSsn, base + s, len);
                }
                if iban
                    && g >= 2
                    && p >= 2
                    && buf
                        .get(p - 2..p)
                        .is_some_and(|c| c.iter().all(u8::is_ascii_uppercase))
                    && let Some((s, len)) = detectors::iban(buf, p)
                {
                    self.detected(acc, Detector::Iban, base + s, len);
                }
            }
        }
    }

    fn detected(&self, acc: &mut Acc, d: Detector, offset: usize, len: usize) {
        for &scanner in &self.owners[d.index()] {
            acc.add(
                self,
                RawHit {
                    offset,
                    len,
                    scanner,
                    kind: HitKind::Detector(d),
                },
            );
        }
    }
}

/// The automata over every literal and anchor of a proxy (lower-cased, searched in a folded
/// copy of the body), in groups of at most [`Literals::GROUP`] patterns.
#[derive(Debug)]
struct Literals {
    groups: Vec<LiteralGroup>,
}

#[derive(Debug)]
struct LiteralGroup {
    /// Leftmost-first: finds the next position where one of the group's patterns starts; it
    /// runs on the crate's SIMD (Teddy) prefilter, which takes at most 64 patterns.
    finder: AhoCorasick,
    /// Standard semantics, anchored: every pattern of the group that starts at a position.
    exact: AhoCorasick,
    /// Group pattern index → index in the set's pattern table.
    ids: Vec<usize>,
}

impl Literals {
    /// Patterns per group: the most the Teddy prefilter accepts. A set with 100 literals costs
    /// two prefiltered passes, far cheaper than one DFA pass over every byte.
    const GROUP: usize = 64;

    fn build(patterns: &[(Vec<u8>, Vec<Role>)]) -> Result<Literals, aho_corasick::BuildError> {
        let build = |texts: &[&[u8]], kind: MatchKind, start: StartKind| {
            AhoCorasickBuilder::new()
                .match_kind(kind)
                .start_kind(start)
                .kind(Some(AhoCorasickKind::DFA))
                .build(texts)
                .or_else(|_| {
                    // Too big for a DFA: let the crate pick (a contiguous NFA).
                    AhoCorasickBuilder::new()
                        .match_kind(kind)
                        .start_kind(start)
                        .build(texts)
                })
        };
        // Longest first, so short patterns (which shorten the prefilter's fingerprint for
        // their whole group) share groups.
        let mut order: Vec<usize> = (0..patterns.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(patterns[i].0.len()));
        let mut groups = Vec::new();
        for ids in order.chunks(Self::GROUP) {
            let texts: Vec<&[u8]> = ids.iter().map(|&i| patterns[i].0.as_slice()).collect();
            groups.push(LiteralGroup {
                finder: build(&texts, MatchKind::LeftmostFirst, StartKind::Unanchored)?,
                exact: build(&texts, MatchKind::Standard, StartKind::Anchored)?,
                ids: ids.to_vec(),
            });
        }
        Ok(Literals { groups })
    }

    /// Calls `f(start, pattern, len)` for every pattern occurrence in `hay` that starts
    /// before `limit`.
    fn for_each_start(&self, hay: &[u8], limit: usize, mut f: impl FnMut(usize, usize, usize)) {
        for g in &self.groups {
            let mut pos = 0;
            while pos < hay.len() {
                let Some(m) = g.finder.find(Input::new(hay).range(pos..)) else {
                    break;
                };
                let p = m.start();
                if p >= limit {
                    break;
                }
                let at_p = Input::new(hay).range(p..).anchored(Anchored::Yes);
                let mut state = OverlappingState::start();
                // Anchored overlapping search (the iterator refuses anchored input; the
                // stepwise call supports it). It cannot fail: `exact` is built for it.
                while g
                    .exact
                    .try_find_overlapping(at_p.clone(), &mut state)
                    .is_ok()
                {
                    let Some(e) = state.get_match() else { break };
                    // The automaton also reports patterns that end here but start later
                    // (suffixes of a longer one); those are found when the search gets there.
                    if e.start() == p
                        && let Some(&id) = g.ids.get(e.pattern().as_usize())
                    {
                        f(p, id, e.len());
                    }
                }
                pos = p + 1;
            }
        }
    }
}

fn read_bounded(r: &mut impl Read, max: usize) -> Result<Vec<u8>, ScanError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit)
        .read_to_end(&mut out)
        .map_err(|_| ScanError::Corrupt)?;
    if out.len() > max {
        return Err(ScanError::TooLarge);
    }
    Ok(out)
}

fn decode(mut r: impl Read, max: usize) -> Result<Vec<u8>, ScanError> {
    read_bounded(&mut r, max)
}

/// Undoes one content coding: `gzip` (every member), `deflate` (zlib, or raw deflate as some
/// clients send it); the whole input must be consumed.
fn decode_coding(c: Coding, body: &[u8], max: usize) -> Result<Vec<u8>, ScanError> {
    match c {
        Coding::Gzip => decode(flate2::read::MultiGzDecoder::new(body), max),
        Coding::Deflate => {
            let mut z = flate2::read::ZlibDecoder::new(body);
            match read_bounded(&mut z, max) {
                Ok(d) if z.total_in() == body.len() as u64 => Ok(d),
                Ok(_) => Err(ScanError::Corrupt),
                Err(ScanError::Corrupt) => {
                    let mut r = flate2::read::DeflateDecoder::new(body);
                    let d = read_bounded(&mut r, max)?;
                    if r.total_in() != body.len() as u64 {
                        return Err(ScanError::Corrupt);
                    }
                    Ok(d)
                }
                Err(e) => Err(e),
            }
        }
    }
}

impl<'a> BodyFields<'a> {
    /// Combines the field lines: every `Content-Encoding` line's list in order (RFC 9110 §5.3),
    /// and the `Content-Type` lines (a form or multipart type on any of them counts).
    fn read(
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<BodyFields<'a>, ScanError> {
        let mut f = BodyFields::default();
        let mut n = 0;
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"content-encoding") {
                for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let c = if t.is_empty() || t.eq_ignore_ascii_case(b"identity") {
                        continue;
                    } else if t.eq_ignore_ascii_case(b"gzip") || t.eq_ignore_ascii_case(b"x-gzip") {
                        Coding::Gzip
                    } else if t.eq_ignore_ascii_case(b"deflate") {
                        Coding::Deflate
                    } else {
                        return Err(ScanError::UnsupportedEncoding);
                    };
                    let slot = f.codings.get_mut(n).ok_or(ScanError::UnsupportedEncoding)?;
                    *slot = Some(c);
                    n += 1;
                }
            } else if name.eq_ignore_ascii_case(b"content-type") {
                let media = value
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii();
                f.form |= media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded");
                if f.boundary.is_none() {
                    f.boundary = views::multipart_boundary(value);
                }
            }
        }
        Ok(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawHit {
    offset: usize,
    len: usize,
    scanner: u16,
    kind: HitKind,
}

impl RawHit {
    fn key(&self) -> (usize, u16, HitKind) {
        (self.offset, self.scanner, self.kind)
    }
}

#[derive(Debug, Default)]
struct Acc {
    block: Option<RawHit>,
    reports: Vec<RawHit>,
}

impl Acc {
    fn add(&mut self, set: &ScanSet, h: RawHit) {
        let Some(info) = set.scanners.get(usize::from(h.scanner)) else {
            return;
        };
        match info.mode {
            Mode::Block => {
                if self.block.is_none_or(|b| h.key() < b.key()) {
                    self.block = Some(h);
                }
            }
            Mode::Report => {
                match self
                    .reports
                    .iter_mut()
                    .find(|r| r.scanner == h.scanner && r.kind == h.kind)
                {
                    Some(r) => {
                        if h.key() < r.key() {
                            *r = h;
                        }
                    }
                    None => self.reports.push(h),
                }
            }
        }
    }

    fn into_outcome(mut self, set: &ScanSet) -> ScanOutcome<'_> {
        let hit = |h: RawHit| {
            let info = set.scanners.get(usize::from(h.scanner))?;
            Some(Hit {
                scanner: &info.name,
                scanner_index: usize::from(h.scanner),
                kind: h.kind,
                mode: info.mode,
                offset: h.offset,
                len: h.len,
            })
        };
        self.reports.sort_unstable_by_key(|r| (r.scanner, r.kind));
        ScanOutcome {
            blocked: self.block.and_then(hit),
            reports: self.reports.into_iter().filter_map(hit).collect(),
        }
    }
}

/// The incremental form of [`ScanSet::scan`]; see [`ScanSet::stream`].
///
/// It keeps the unscanned bytes plus a window of [`LOOKBEHIND`] bytes before them, and scans
/// an anchor only once the look-ahead its verifier may read has arrived, so a literal or token
/// cut by a chunk boundary is found exactly once.
pub struct Scanner<'s> {
    set: &'s ScanSet,
    buf: Vec<u8>,
    /// Body offset of `buf[0]`.
    base: usize,
    /// Anchors before `buf[done]` have been scanned.
    done: usize,
    acc: Acc,
    min_batch: usize,
}

impl<'s> Scanner<'s> {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let ahead = self.set.lookahead();
        if self.buf.len() < self.done + ahead + self.min_batch.max(1) {
            return;
        }
        let to = self.buf.len() - ahead;
        self.set
            .scan_window(&self.buf, self.base, self.done, to, &mut self.acc);
        self.done = to;
        let keep_from = self.done.saturating_sub(LOOKBEHIND);
        self.buf.drain(..keep_from);
        self.base += keep_from;
        self.done -= keep_from;
    }

    /// Scans what is left and returns the outcome for everything fed.
    pub fn finish(mut self) -> ScanOutcome<'s> {
        let len = self.buf.len();
        self.set
            .scan_window(&self.buf, self.base, self.done, len, &mut self.acc);
        self.acc.into_outcome(self.set)
    }
}

#[cfg(test)]
mod tests;
