//! Sans-io streaming JSON redactor.
//!
//! A byte-level state machine with an explicit container stack. Output is produced by spans:
//! `span_start` marks the first byte of the chunk not yet written, and kept input is copied in
//! one `extend_from_slice` only when something must be cut out (or the chunk ends). Strings are
//! scanned with `memchr2` to the next `"` or `\`.
//!
//! Inside a container that some path can still reach ("active"), the separator before a child
//! (`,` plus whitespace) and an object key are undecided until the key (or element index)
//! decides: keep (nothing to do — unless nothing was kept before in this container, then the
//! comma and the whitespace before it are cut), remove (cut the separator, key and value) or
//! mask (write `"[REDACTED]"` for the value). Undecided bytes stay in the input; only when a
//! chunk ends among them are they carried over in a small hold buffer. Skipped values are
//! parsed (for validity and to find their end) but never buffered. Memory is bounded by the
//! depth (one frame plus a few NFA states per level), the longest key, and the whitespace of one
//! separator (emitted early at chunk ends beyond `HOLD_WS_MAX`).

use crate::util::hex;
use memchr::memchr2;

use super::path::{Action, Label, RedactProgram, StateId};

/// The replacement for masked values.
pub const MASK: &[u8] = b"\"[REDACTED]\"";

/// Held separator whitespace beyond this (at a chunk end) is emitted early.
const HOLD_WS_MAX: usize = 1024;

/// Bounds on what the redactor keeps in memory. Exceeding one counts as invalid input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting of objects and arrays.
    pub max_depth: usize,
    /// Maximum length of an object key, in raw (escaped) bytes.
    pub max_key_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 128,
            max_key_len: 4096,
        }
    }
}

/// What to do with input that is not valid JSON (or exceeds [`Limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInvalid {
    /// Emit the rest of the input unmodified from the point of error and stop redacting.
    Pass,
    /// Return an error; the caller cuts the response.
    Block,
}

/// Why redaction stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    #[error("invalid JSON at byte {offset}: {reason}")]
    Invalid { offset: u64, reason: &'static str },
    #[error("JSON nested deeper than {limit} at byte {offset}")]
    TooDeep { offset: u64, limit: usize },
    #[error("JSON object key longer than {limit} bytes at byte {offset}")]
    KeyTooLong { offset: u64, limit: usize },
    #[error("event-stream event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// A position in the undecided bytes: in the hold buffer or in the current chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    Hold(usize),
    Input(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpInt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Before the top-level value.
    TopStart,
    /// After the top-level value: whitespace only.
    TopDone,
    /// After `{`: whitespace, a key or `}`.
    ObjFirst,
    /// After `,` in an object: whitespace, then a key.
    ObjNext,
    /// After a key: whitespace, then `:`.
    Colon,
    /// After `:`: whitespace, then a value.
    AfterColon,
    /// After `[`: whitespace, a value or `]`.
    ArrFirst,
    /// After `,` in an array: whitespace, then a value.
    ArrNext,
    /// After a value inside a container: whitespace, `,` or the closing bracket.
    AfterValue,
    /// Inside a string (key or value, see `str_is_key`).
    Str,
    /// After `\` in a string.
    Esc,
    /// Inside `\uXXXX`, that many hex digits seen.
    Hex(u8),
    Num(Num),
    /// Inside `true`/`false`/`null` (index into `LITS`, bytes matched).
    Lit(u8, u8),
    /// Invalid input under [`OnInvalid::Pass`]: everything is copied verbatim.
    Passing,
    /// Invalid input under [`OnInvalid::Block`].
    Failed,
}

const LITS: [&[u8]; 3] = [b"true", b"false", b"null"];

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in (at least) the lowest zero byte of `v`, none below it.
#[inline(always)]
fn zero_byte(v: u64) -> u64 {
    v.wrapping_sub(LO) & !v & HI
}

/// Bytes that end a plain run inside a string: `"`, `\\` and control characters.
static STR_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

#[derive(Clone, Copy, Debug)]
struct Frame {
    obj: bool,
    /// Some path can match below this container: separators and keys are held for decisions.
    active: bool,
    /// Some live state has a wildcard step (the key filter cannot be used).
    wildcard: bool,
    emitted_any: bool,
    removed_any: bool,
    st_start: u32,
    st_end: u32,
    index: u64,
}

struct Fail {
    pos: usize,
    err: RedactError,
}

#[inline(always)]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline]
fn has_ctrl(s: &[u8]) -> bool {
    s.iter().fold(false, |acc, &b| acc | (b < 0x20))
}

fn ctrl_pos(s: &[u8]) -> usize {
    s.iter().position(|&b| b < 0x20).unwrap_or(0)
}

/// Streaming JSON redactor: feed response bytes in any chunking, get redacted bytes out.
pub struct JsonRedactor<'p> {
    prog: &'p RedactProgram,
    limits: Limits,
    on_invalid: OnInvalid,
    st: St,
    str_is_key: bool,
    key_esc: bool,
    key_len: usize,
    /// Where the current key's opening quote is (in the hold buffer or this chunk).
    key_at: Pos,
    /// Bytes from `span_start` on are being dropped (inside a removed / masked value).
    dropping: bool,
    /// Start of this chunk's input not yet written out (or dropped).
    span_start: usize,
    /// Undecided bytes: `hold` followed by `input[p..]` (separator, then maybe a key).
    pend: Option<usize>,
    frames: Vec<Frame>,
    states: Vec<StateId>,
    /// Depth (frames.len()) of the container whose current child value is being skipped.
    skip: Option<usize>,
    /// Action decided at the current object key, applied when its value begins.
    pending: Option<Action>,
    hold: Vec<u8>,
    /// The `,` in the undecided bytes, if any.
    comma: Option<Pos>,
    scratch: Vec<u8>,
    consumed: u64,
    redactions: u64,
    error: Option<RedactError>,
    /// Capture slots of the number being read (0: none), where it starts in this chunk, and its
    /// bytes from earlier chunks (bounded by [`MAX_CAPTURE`]).
    cap: u32,
    cap_from: usize,
    cap_buf: Vec<u8>,
    captures: Vec<Captured>,
    /// Documents begun (each `reset` starts one: an SSE event's data).
    doc: u32,
}

/// Longest number read for a capture; a longer one counts as infinitely large.
pub const MAX_CAPTURE: usize = 64;

/// A value read at a capture path ([`Action::Capture`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Captured {
    /// The capture slots (bits) whose paths matched the value.
    pub slots: u32,
    /// Which document it was in (0 for a JSON body; one per SSE event).
    pub doc: u32,
    /// The number, or `None` when the value was not a JSON number (string, boolean, object,
    /// array). `null` is not a capture at all.
    pub value: Option<f64>,
}

impl<'p> JsonRedactor<'p> {
    pub fn new(prog: &'p RedactProgram, limits: Limits, on_invalid: OnInvalid) -> Self {
        JsonRedactor {
            prog,
            limits,
            on_invalid,
            st: St::TopStart,
            str_is_key: false,
            key_esc: false,
            key_len: 0,
            key_at: Pos::Input(0),
            dropping: false,
            span_start: 0,
            pend: None,
            frames: Vec::new(),
            states: prog.initial().to_vec(),
            skip: None,
            pending: None,
            hold: Vec::new(),
            comma: None,
            scratch: Vec::new(),
            consumed: 0,
            redactions: 0,
            error: None,
            cap: 0,
            cap_from: 0,
            cap_buf: Vec::new(),
            captures: Vec::new(),
            doc: 0,
        }
    }

    /// Values read at capture paths since the last [`Self::take_captures`].
    pub fn captures(&self) -> &[Captured] {
        &self.captures
    }

    /// Moves the values read so far to the caller's list.
    pub fn take_captures(&mut self, into: &mut Vec<Captured>) {
        into.append(&mut self.captures);
    }

    /// `input[i]` begins a value at a capture path.
    fn capture_begin(&mut self, slots: u32, b: u8, i: usize) {
        match b {
            b'-' | b'0'..=b'9' => {
                self.cap = slots;
                self.cap_from = i;
                self.cap_buf.clear();
            }
            b'n' => {}
            _ => self.captures.push(Captured {
                slots,
                doc: self.doc,
                value: None,
            }),
        }
    }

    /// The number being captured ended before `input[i]`.
    fn capture_end(&mut self, input: &[u8], i: usize) {
        let slots = std::mem::take(&mut self.cap);
        let tail = input.get(self.cap_from..i).unwrap_or(&[]);
        let len = self.cap_buf.len() + tail.len();
        let value = if len > MAX_CAPTURE {
            f64::INFINITY
        } else {
            self.cap_buf.extend_from_slice(tail);
            std::str::from_utf8(&self.cap_buf)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or(f64::INFINITY)
        };
        self.cap_buf.clear();
        self.captures.push(Captured {
            slots,
            doc: self.doc,
            value: Some(value),
        });
    }

    /// Makes the redactor ready for a new document (keeps its buffers' capacity).
    pub fn reset(&mut self) {
        self.st = St::TopStart;
        self.str_is_key = false;
        self.key_esc = false;
        self.key_len = 0;
        self.key_at = Pos::Input(0);
        self.dropping = false;
        self.span_start = 0;
        self.pend = None;
        self.frames.clear();
        self.states.clear();
        self.states.extend_from_slice(self.prog.initial());
        self.skip = None;
        self.pending = None;
        self.hold.clear();
        self.comma = None;
        self.consumed = 0;
        self.redactions = 0;
        self.error = None;
        self.cap = 0;
        self.cap_buf.clear();
        self.doc = self.doc.wrapping_add(1);
    }

    /// Values removed or masked so far.
    pub fn redactions(&self) -> u64 {
        self.redactions
    }

    /// The error that stopped redaction, if any (under `Pass` the rest went through verbatim).
    pub fn error(&self) -> Option<&RedactError> {
        self.error.as_ref()
    }

    /// Input bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Redacts one chunk, appending to `out`. Under [`OnInvalid::Block`] an error is final:
    /// every later call returns it too.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RedactError> {
        match self.st {
            St::Passing => {
                out.extend_from_slice(input);
                self.consumed += input.len() as u64;
                return Ok(());
            }
            St::Failed => return Err(self.final_error()),
            _ => {}
        }
        self.span_start = 0;
        let res = match self.run(input, out) {
            Ok(()) => {
                self.end_chunk(input, out);
                Ok(())
            }
            Err(f) => self.fail(input, f, out),
        };
        self.consumed += input.len() as u64;
        res
    }

    /// Ends the document: checks it is complete, flushes anything held.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RedactError> {
        self.span_start = 0;
        match self.st {
            St::Passing | St::TopDone => Ok(()),
            St::Failed => Err(self.final_error()),
            St::Num(Num::Zero | Num::Int | Num::Frac | Num::ExpInt) if self.frames.is_empty() => {
                self.st = St::TopDone;
                Ok(())
            }
            _ => {
                let err = RedactError::Invalid {
                    offset: self.consumed,
                    reason: "unexpected end of input",
                };
                self.fail(&[], Fail { pos: 0, err }, out)
            }
        }
    }

    fn final_error(&self) -> RedactError {
        self.error.clone().unwrap_or(RedactError::Invalid {
            offset: self.consumed,
            reason: "redactor failed earlier",
        })
    }

    fn fail(&mut self, input: &[u8], f: Fail, out: &mut Vec<u8>) -> Result<(), RedactError> {
        self.cap = 0;
        let pos = f.pos.min(input.len());
        // Everything decided before the undecided bytes (or the error) goes out as decided.
        let from = self.pend.take().map_or(pos, |p| p.min(pos));
        self.flush(input, from, out);
        self.comma = None;
        match self.on_invalid {
            OnInvalid::Pass => {
                out.extend_from_slice(&self.hold);
                self.hold.clear();
                out.extend_from_slice(&input[from..]);
                self.st = St::Passing;
                self.error = Some(f.err);
                Ok(())
            }
            OnInvalid::Block => {
                self.hold.clear();
                self.st = St::Failed;
                self.error = Some(f.err.clone());
                Err(f.err)
            }
        }
    }

    fn invalid(&self, pos: usize, reason: &'static str) -> Fail {
        Fail {
            pos,
            err: RedactError::Invalid {
                offset: self.consumed + pos as u64,
                reason,
            },
        }
    }

    /// Writes (or, when dropping, discards) `input[span_start..i]`.
    #[inline(always)]
    fn flush(&mut self, input: &[u8], i: usize, out: &mut Vec<u8>) {
        if !self.dropping && i > self.span_start {
            out.extend_from_slice(&input[self.span_start..i]);
        }
        self.span_start = i;
    }

    /// The undecided separator (and key) stays. The comma goes, with the whitespace before it,
    /// when nothing was kept before it in this container.
    #[inline]
    fn keep_pending(&mut self, input: &[u8], out: &mut Vec<u8>, keep_comma: bool) {
        let Some(p) = self.pend.take() else { return };
        match self.comma.take() {
            Some(Pos::Hold(k)) if !keep_comma => {
                out.extend_from_slice(self.hold.get(k + 1..).unwrap_or(&[]));
            }
            Some(Pos::Input(k)) if !keep_comma => {
                // Anything held is whitespace before the comma.
                self.flush(input, p, out);
                self.span_start = k + 1;
            }
            _ => out.extend_from_slice(&self.hold),
        }
        self.hold.clear();
    }

    /// The undecided separator (and key) goes; so does everything until the value ends.
    #[inline]
    fn drop_pending(&mut self, input: &[u8], out: &mut Vec<u8>, i: usize) {
        let p = self.pend.take().unwrap_or(i);
        self.flush(input, p, out);
        self.hold.clear();
        self.comma = None;
        self.dropping = true;
    }

    /// At a chunk end: writes what is decided, carries undecided bytes over in `hold`, and keeps
    /// held whitespace bounded (emitting it early, the comma still pending).
    fn end_chunk(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let n = input.len();
        if self.cap != 0 {
            // a captured number continues in the next chunk: keep (a bounded prefix of) it
            let room = (MAX_CAPTURE + 1).saturating_sub(self.cap_buf.len());
            let rest = input.get(self.cap_from..).unwrap_or(&[]);
            self.cap_buf
                .extend_from_slice(&rest[..rest.len().min(room)]);
            self.cap_from = 0;
        }
        let Some(p) = self.pend else {
            self.flush(input, n, out);
            return;
        };
        self.flush(input, p, out);
        let base = self.hold.len();
        self.hold.extend_from_slice(&input[p..]);
        self.span_start = n;
        if let Some(Pos::Input(c)) = self.comma {
            self.comma = Some(Pos::Hold(base + c.saturating_sub(p)));
        }
        if let Pos::Input(k) = self.key_at {
            self.key_at = Pos::Hold(base + k.saturating_sub(p));
        }
        self.pend = Some(0);
        if self.hold.len() <= HOLD_WS_MAX
            || !matches!(
                self.st,
                St::ObjFirst | St::ObjNext | St::ArrFirst | St::ArrNext | St::AfterValue
            )
        {
            return;
        }
        match self.comma {
            Some(Pos::Hold(c)) => {
                out.extend_from_slice(self.hold.get(..c).unwrap_or(&[]));
                out.extend_from_slice(self.hold.get(c + 1..).unwrap_or(&[]));
                self.hold.clear();
                self.hold.push(b',');
                self.comma = Some(Pos::Hold(0));
            }
            _ => {
                out.extend_from_slice(&self.hold);
                self.hold.clear();
            }
        }
    }

    #[inline]
    fn cur_end(&self) -> usize {
        self.frames.last().map_or(0, |f| f.st_end as usize)
    }

    #[inline]
    fn top_active(&self) -> bool {
        self.frames.last().is_some_and(|f| f.active)
    }

    #[inline]
    fn check_key(&self, i: usize) -> Result<(), Fail> {
        if self.key_len > self.limits.max_key_len {
            return Err(Fail {
                pos: i,
                err: RedactError::KeyTooLong {
                    offset: self.consumed + i as u64,
                    limit: self.limits.max_key_len,
                },
            });
        }
        Ok(())
    }

    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Fail> {
        let n = input.len();
        let mut i = 0;
        while i < n {
            match self.st {
                St::Str => {
                    let Some(j) = self.scan_str(input, i)? else {
                        if self.str_is_key {
                            self.key_len += n - i;
                            self.check_key(i)?;
                        }
                        i = n;
                        continue;
                    };
                    if input[j] == b'\\' {
                        if self.str_is_key {
                            self.key_len += j - i + 1;
                            self.key_esc = true;
                            self.check_key(j)?;
                        }
                        self.st = St::Esc;
                        i = j + 1;
                    } else if self.str_is_key {
                        self.key_len += j - i;
                        self.check_key(j)?;
                        self.key_end(input, j + 1, out);
                        i = self.after_key(input, j + 1, out)?;
                    } else {
                        self.value_done(input, j + 1, out);
                        i = self.after_value(input, j + 1, out)?;
                    }
                }
                St::Esc => {
                    self.st = match input[i] {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => St::Str,
                        b'u' => St::Hex(0),
                        _ => return Err(self.invalid(i, "bad escape in string")),
                    };
                    if self.str_is_key {
                        self.key_len += 1;
                        self.check_key(i)?;
                    }
                    i += 1;
                }
                St::Hex(k) => {
                    if !input[i].is_ascii_hexdigit() {
                        return Err(self.invalid(i, "bad \\u escape in string"));
                    }
                    self.st = if k >= 3 { St::Str } else { St::Hex(k + 1) };
                    if self.str_is_key {
                        self.key_len += 1;
                        self.check_key(i)?;
                    }
                    i += 1;
                }
                St::Num(mut s) => loop {
                    // Stay here until the number ends or the chunk does (no dispatch per part).
                    if i >= n {
                        self.st = St::Num(s);
                        break;
                    }
                    let b = input[i];
                    match (s, b) {
                        (Num::Minus, b'0') => {
                            s = Num::Zero;
                            i += 1;
                        }
                        (Num::Minus, b'1'..=b'9') | (Num::Int, b'0'..=b'9') => {
                            s = Num::Int;
                            i += 1;
                            while i < n && input[i].is_ascii_digit() {
                                i += 1;
                            }
                        }
                        (Num::Zero | Num::Int, b'.') => {
                            s = Num::Dot;
                            i += 1;
                        }
                        (Num::Dot | Num::Frac, b'0'..=b'9') => {
                            s = Num::Frac;
                            i += 1;
                            while i < n && input[i].is_ascii_digit() {
                                i += 1;
                            }
                        }
                        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => {
                            s = Num::Exp;
                            i += 1;
                        }
                        (Num::Exp, b'+' | b'-') => {
                            s = Num::ExpSign;
                            i += 1;
                        }
                        (Num::Exp | Num::ExpSign | Num::ExpInt, b'0'..=b'9') => {
                            s = Num::ExpInt;
                            i += 1;
                            while i < n && input[i].is_ascii_digit() {
                                i += 1;
                            }
                        }
                        // The number ended before `b`; `b` is looked at again after the value.
                        (Num::Zero | Num::Int | Num::Frac | Num::ExpInt, _) => {
                            self.value_done(input, i, out);
                            i = self.after_value(input, i, out)?;
                            break;
                        }
                        _ => return Err(self.invalid(i, "malformed number")),
                    }
                },
                St::Lit(w, p) => {
                    let lit = LITS[usize::from(w)];
                    if lit.get(usize::from(p)) != Some(&input[i]) {
                        return Err(self.invalid(i, "malformed literal"));
                    }
                    i += 1;
                    if usize::from(p) + 1 == lit.len() {
                        self.value_done(input, i, out);
                        i = self.after_value(input, i, out)?;
                    } else {
                        self.st = St::Lit(w, p + 1);
                    }
                }
                _ => {
                    if is_ws(input[i]) {
                        i += 1;
                        while i < n && is_ws(input[i]) {
                            i += 1;
                        }
                        continue;
                    }
                    i = self.structural(input, i, out)?;
                }
            }
        }
        Ok(())
    }

    /// Finds the `"` or `\\` ending the run of plain string bytes at `i` (None: the chunk ends
    /// first); a control byte is an error. Short runs are scanned inline, long ones with memchr.
    #[inline(always)]
    fn scan_str(&self, input: &[u8], i: usize) -> Result<Option<usize>, Fail> {
        let n = input.len();
        let lim = n.min(i + 64);
        let mut j = i;
        // Eight bytes at a time (SWAR): the lowest flagged byte is exact.
        while j + 8 <= lim {
            let Ok(w) = <[u8; 8]>::try_from(&input[j..j + 8]) else {
                break;
            };
            let v = u64::from_le_bytes(w);
            let q = zero_byte(v ^ (LO * u64::from(b'"')))
                | zero_byte(v ^ (LO * u64::from(b'\\')))
                | (v.wrapping_sub(LO * 0x20) & !v & HI);
            if q != 0 {
                j += (q.trailing_zeros() / 8) as usize;
                break;
            }
            j += 8;
        }
        while j < lim && !STR_STOP[usize::from(input[j])] {
            j += 1;
        }
        let stop = if j < lim {
            Some(j)
        } else if lim == n {
            None
        } else {
            let rest = &input[lim..];
            match memchr2(b'"', b'\\', rest) {
                Some(k) => {
                    if has_ctrl(&rest[..k]) {
                        return Err(
                            self.invalid(lim + ctrl_pos(rest), "control character in string")
                        );
                    }
                    Some(lim + k)
                }
                None => {
                    if has_ctrl(rest) {
                        return Err(
                            self.invalid(lim + ctrl_pos(rest), "control character in string")
                        );
                    }
                    None
                }
            }
        };
        if let Some(j) = stop
            && input[j] < 0x20
        {
            return Err(self.invalid(j, "control character in string"));
        }
        Ok(stop)
    }

    /// After a key ending before `i`: takes `:` and the start of the value when they are in this
    /// chunk (the common case, without going through the state dispatch).
    #[inline(always)]
    fn after_key(&mut self, input: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, Fail> {
        let n = input.len();
        while i < n && is_ws(input[i]) {
            i += 1;
        }
        if i < n && input[i] == b':' {
            i += 1;
            while i < n && is_ws(input[i]) {
                i += 1;
            }
            self.st = St::AfterColon;
            if i < n {
                return self.value_begin(input, i, out);
            }
        } else {
            self.st = St::Colon;
        }
        Ok(i)
    }

    /// After a value ending before `i` (state `AfterValue` or `TopDone`): takes `,` and the start
    /// of the next key or element when they are in this chunk.
    #[inline(always)]
    fn after_value(
        &mut self,
        input: &[u8],
        mut i: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, Fail> {
        let n = input.len();
        if self.st != St::AfterValue {
            return Ok(i);
        }
        while i < n && is_ws(input[i]) {
            i += 1;
        }
        if i < n && input[i] == b',' {
            let Some(f) = self.frames.last().copied() else {
                return Ok(i);
            };
            if f.active {
                self.comma = Some(Pos::Input(i));
            }
            i += 1;
            while i < n && is_ws(input[i]) {
                i += 1;
            }
            if f.obj {
                self.st = St::ObjNext;
                if i < n && input[i] == b'"' {
                    return Ok(self.key_begin(i));
                }
            } else {
                self.st = St::ArrNext;
                if i < n {
                    return self.value_begin(input, i, out);
                }
            }
        }
        Ok(i)
    }

    /// A non-whitespace byte outside strings, numbers and literals.
    fn structural(&mut self, input: &[u8], i: usize, out: &mut Vec<u8>) -> Result<usize, Fail> {
        let b = input[i];
        match self.st {
            St::TopStart | St::AfterColon | St::ArrNext => self.value_begin(input, i, out),
            St::ArrFirst => {
                if b == b']' {
                    self.close(input, i, out, false)
                } else {
                    self.value_begin(input, i, out)
                }
            }
            St::ObjFirst => match b {
                b'"' => Ok(self.key_begin(i)),
                b'}' => self.close(input, i, out, true),
                _ => Err(self.invalid(i, "expected an object key or `}`")),
            },
            St::ObjNext => {
                if b == b'"' {
                    Ok(self.key_begin(i))
                } else {
                    Err(self.invalid(i, "expected an object key"))
                }
            }
            St::Colon => {
                if b == b':' {
                    self.st = St::AfterColon;
                    Ok(i + 1)
                } else {
                    Err(self.invalid(i, "expected `:`"))
                }
            }
            St::AfterValue => match b {
                b',' => {
                    let Some(f) = self.frames.last().copied() else {
                        return Err(self.invalid(i, "unexpected `,`"));
                    };
                    if f.active {
                        self.comma = Some(Pos::Input(i));
                    }
                    self.st = if f.obj { St::ObjNext } else { St::ArrNext };
                    Ok(i + 1)
                }
                b'}' => self.close(input, i, out, true),
                b']' => self.close(input, i, out, false),
                _ => Err(self.invalid(i, "expected `,` or a closing bracket")),
            },
            St::TopDone => Err(self.invalid(i, "data after the top-level value")),
            _ => Err(self.invalid(i, "internal state error")),
        }
    }

    fn key_begin(&mut self, i: usize) -> usize {
        self.str_is_key = true;
        self.key_esc = false;
        self.key_len = 0;
        self.key_at = Pos::Input(i);
        self.st = St::Str;
        i + 1
    }

    /// The closing quote of a key is at `i - 1`: decide the member's fate.
    fn key_end(&mut self, input: &[u8], i: usize, out: &mut Vec<u8>) {
        self.str_is_key = false;
        let Some(f) = self.frames.last().copied() else {
            return;
        };
        if !f.active || self.skip.is_some() {
            return;
        }
        let Some(p) = self.pend else { return };
        let raw: &[u8] = match self.key_at {
            Pos::Input(k) => input.get(k + 1..i.saturating_sub(1)).unwrap_or(&[]),
            Pos::Hold(k) => {
                // The key began in an earlier chunk: gather it in the hold buffer.
                self.hold.extend_from_slice(&input[p..i]);
                self.span_start = i;
                self.pend = Some(i);
                let hl = self.hold.len();
                self.hold.get(k + 1..hl.saturating_sub(1)).unwrap_or(&[])
            }
        };
        let label: &[u8] = if self.key_esc {
            decode_key(raw, &mut self.scratch);
            &self.scratch
        } else {
            raw
        };
        let action = if !f.wildcard && !self.prog.key_may_match(label) {
            self.states.truncate(f.st_end as usize);
            None
        } else {
            let range = f.st_start as usize..f.st_end as usize;
            self.prog
                .advance(&mut self.states, range, Label::Key(label))
        };
        let d = self.frames.len() - 1;
        match action {
            Some(Action::Remove) => {
                self.drop_pending(input, out, i);
                self.frames[d].removed_any = true;
                self.skip = Some(self.frames.len());
                self.redactions += 1;
                self.pending = None;
            }
            a => {
                self.keep_pending(input, out, f.emitted_any);
                self.frames[d].emitted_any = true;
                self.pending = a;
            }
        }
    }

    /// `input[i]` starts a value.
    fn value_begin(&mut self, input: &[u8], i: usize, out: &mut Vec<u8>) -> Result<usize, Fail> {
        let b = input[i];
        if !matches!(
            b,
            b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
        ) {
            return Err(self.invalid(i, "expected a value"));
        }
        if self.skip.is_none()
            && let Some(f) = self.frames.last().copied()
            && f.active
        {
            let d = self.frames.len() - 1;
            if f.obj {
                match self.pending.take() {
                    Some(Action::Mask) => self.mask(input, i, out),
                    Some(Action::Capture(slots)) => self.capture_begin(slots, b, i),
                    _ => {}
                }
            } else {
                self.frames[d].index += 1;
                let range = f.st_start as usize..f.st_end as usize;
                match self
                    .prog
                    .advance(&mut self.states, range, Label::Index(f.index))
                {
                    None => {
                        self.keep_pending(input, out, f.emitted_any);
                        self.frames[d].emitted_any = true;
                    }
                    Some(Action::Mask) => {
                        self.keep_pending(input, out, f.emitted_any);
                        self.frames[d].emitted_any = true;
                        self.mask(input, i, out);
                    }
                    Some(Action::Capture(slots)) => {
                        self.keep_pending(input, out, f.emitted_any);
                        self.frames[d].emitted_any = true;
                        self.capture_begin(slots, b, i);
                    }
                    Some(Action::Remove) => {
                        self.drop_pending(input, out, i);
                        self.frames[d].removed_any = true;
                        self.skip = Some(self.frames.len());
                        self.redactions += 1;
                    }
                }
            }
        }
        match b {
            b'{' | b'[' => self.push(i, b == b'{')?,
            b'"' => {
                self.str_is_key = false;
                self.st = St::Str;
            }
            b'-' => self.st = St::Num(Num::Minus),
            b'0' => self.st = St::Num(Num::Zero),
            b'1'..=b'9' => self.st = St::Num(Num::Int),
            b't' => self.st = St::Lit(0, 1),
            b'f' => self.st = St::Lit(1, 1),
            _ => self.st = St::Lit(2, 1),
        }
        Ok(i + 1)
    }

    /// Writes `"[REDACTED]"` in place of the value starting at `i`, which is then skipped.
    fn mask(&mut self, input: &[u8], i: usize, out: &mut Vec<u8>) {
        self.flush(input, i, out);
        out.extend_from_slice(MASK);
        self.dropping = true;
        self.skip = Some(self.frames.len());
        self.redactions += 1;
    }

    fn push(&mut self, i: usize, obj: bool) -> Result<(), Fail> {
        if self.frames.len() >= self.limits.max_depth {
            return Err(Fail {
                pos: i,
                err: RedactError::TooDeep {
                    offset: self.consumed + i as u64,
                    limit: self.limits.max_depth,
                },
            });
        }
        let st_start = self.cur_end();
        if self.skip.is_some() {
            self.states.truncate(st_start);
        } else if let Some(parent) = self.frames.last() {
            let range = parent.st_start as usize..parent.st_end as usize;
            self.prog.add_desc(&mut self.states, range);
        }
        let st_end = self.states.len();
        let active = st_end > st_start;
        let wildcard = active && self.prog.has_wildcard(&self.states[st_start..]);
        self.frames.push(Frame {
            obj,
            active,
            wildcard,
            emitted_any: false,
            removed_any: false,
            st_start: st_start as u32,
            st_end: st_end as u32,
            index: 0,
        });
        self.st = if obj { St::ObjFirst } else { St::ArrFirst };
        if active {
            self.pend = Some(i + 1);
        }
        Ok(())
    }

    fn close(
        &mut self,
        input: &[u8],
        i: usize,
        out: &mut Vec<u8>,
        obj: bool,
    ) -> Result<usize, Fail> {
        let Some(f) = self.frames.last().copied() else {
            return Err(self.invalid(i, "unexpected closing bracket"));
        };
        if f.obj != obj {
            return Err(self.invalid(i, "mismatched closing bracket"));
        }
        self.frames.pop();
        if let Some(p) = self.pend.take() {
            if !f.emitted_any && f.removed_any {
                // All members removed: drop the whitespace too, giving `{}` / `[]`.
                self.flush(input, p, out);
                self.span_start = i;
            } else {
                out.extend_from_slice(&self.hold);
            }
            self.hold.clear();
            self.comma = None;
        }
        self.states.truncate(f.st_start as usize);
        self.value_done(input, i + 1, out);
        Ok(i + 1)
    }

    /// A value ended just before `input[i]`.
    #[inline]
    fn value_done(&mut self, input: &[u8], i: usize, out: &mut Vec<u8>) {
        if self.cap != 0 {
            self.capture_end(input, i);
        }
        let depth = self.frames.len();
        match self.skip {
            Some(d) if d == depth => {
                self.skip = None;
                self.flush(input, i, out);
                self.dropping = false;
                if self.top_active() {
                    self.pend = Some(i);
                }
            }
            Some(_) => {}
            None => {
                if self.top_active() {
                    self.pend = Some(i);
                }
            }
        }
        self.st = if depth == 0 {
            St::TopDone
        } else {
            St::AfterValue
        };
    }
}

/// Decodes a raw (validated) key's escapes into `dst`; lone surrogates become U+FFFD.
fn decode_key(raw: &[u8], dst: &mut Vec<u8>) {
    dst.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            dst.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else { break };
        i += 2;
        let c = match e {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let Some(hi) = hex4(raw.get(i..i + 4)) else {
                    break;
                };
                i += 4;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i..i + 2) == Some(b"\\u")
                        && let Some(lo) = hex4(raw.get(i + 2..i + 6))
                        && (0xDC00..0xE000).contains(&lo)
                    {
                        i += 6;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    } else {
                        0xFFFD
                    }
                } else {
                    hi
                };
                let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                let mut buf = [0u8; 4];
                dst.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            other => other,
        };
        dst.push(c);
    }
}

fn hex4(s: Option<&[u8]>) -> Option<u32> {
    hex::value(s?).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::super::path::{Selector, Step, parse_path};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const R: Action = Action::Remove;
    const M: Action = Action::Mask;

    fn program(rules: &[(&str, Action)]) -> RedactProgram {
        let mut p = RedactProgram::new();
        for (path, a) in rules {
            p.add(path, *a).expect(path);
        }
        p
    }

    /// Feeds `input` cut at the (sorted) `splits`, then finishes.
    fn redact_split(
        p: &RedactProgram,
        limits: Limits,
        pol: OnInvalid,
        input: &[u8],
        splits: &[usize],
    ) -> Result<(Vec<u8>, u64), RedactError> {
        let mut r = JsonRedactor::new(p, limits, pol);
        let mut out = Vec::new();
        let mut last = 0;
        for &s in splits {
            r.feed(&input[last..s], &mut out)?;
            last = s;
        }
        r.feed(&input[last..], &mut out)?;
        r.finish(&mut out)?;
        Ok((out, r.redactions()))
    }

    fn redact(p: &RedactProgram, input: &[u8]) -> Result<(Vec<u8>, u64), RedactError> {
        redact_split(p, Limits::default(), OnInvalid::Block, input, &[])
    }

    type Case = (
        &'static str,
        &'static [(&'static str, Action)],
        &'static str,
        &'static str,
    );

    const CASES: &[Case] = &[
        (
            "rm_first",
            &[("$.a", R)],
            r#"{"a":1,"b":2,"c":3}"#,
            r#"{"b":2,"c":3}"#,
        ),
        (
            "rm_middle",
            &[("$.b", R)],
            r#"{"a":1,"b":2,"c":3}"#,
            r#"{"a":1,"c":3}"#,
        ),
        (
            "rm_last",
            &[("$.c", R)],
            r#"{"a":1,"b":2,"c":3}"#,
            r#"{"a":1,"b":2}"#,
        ),
        (
            "rm_all",
            &[("$.a", R), ("$.b", R), ("$.c", R)],
            r#"{"a":1,"b":2,"c":3}"#,
            r#"{}"#,
        ),
        ("rm_only", &[("$.a", R)], r#"{"a":1}"#, r#"{}"#),
        (
            "rm_first_ws",
            &[("$.a", R)],
            r#"{ "a" : 1 , "b" : 2 }"#,
            r#"{ "b" : 2 }"#,
        ),
        (
            "rm_middle_ws",
            &[("$.b", R)],
            r#"{ "a" : 1 , "b" : 2 , "c" : 3 }"#,
            r#"{ "a" : 1 , "c" : 3 }"#,
        ),
        (
            "rm_last_ws",
            &[("$.b", R)],
            r#"{ "a" : 1 , "b" : 2 }"#,
            r#"{ "a" : 1 }"#,
        ),
        ("rm_all_ws", &[("$.a", R)], r#"{ "a" : 1 }"#, r#"{}"#),
        (
            "pretty_rm_first",
            &[("$.a", R)],
            "{\n  \"a\": 1,\n  \"b\": 2\n}",
            "{\n  \"b\": 2\n}",
        ),
        (
            "pretty_rm_last",
            &[("$.b", R)],
            "{\n  \"a\": 1,\n  \"b\": 2\n}",
            "{\n  \"a\": 1\n}",
        ),
        (
            "nested_rm",
            &[("$.a.b", R)],
            r#"{"a":{"b":1,"c":2},"d":3}"#,
            r#"{"a":{"c":2},"d":3}"#,
        ),
        (
            "mask_obj",
            &[("$.a", M)],
            r#"{"a":{"b":[1,2]},"c":1}"#,
            r#"{"a":"[REDACTED]","c":1}"#,
        ),
        (
            "mask_arr",
            &[("$.a", M)],
            r#"{"a":[1,[2]],"c":1}"#,
            r#"{"a":"[REDACTED]","c":1}"#,
        ),
        (
            "mask_str",
            &[("$.a", M)],
            r#"{"a":"x\"y","c":1}"#,
            r#"{"a":"[REDACTED]","c":1}"#,
        ),
        (
            "mask_num",
            &[("$.a", M)],
            r#"{"a":-12.5e3}"#,
            r#"{"a":"[REDACTED]"}"#,
        ),
        (
            "mask_lits",
            &[("$.a", M), ("$.b", M), ("$.c", M)],
            r#"{"a":true,"b":false,"c":null}"#,
            r#"{"a":"[REDACTED]","b":"[REDACTED]","c":"[REDACTED]"}"#,
        ),
        (
            "mask_ws",
            &[("$.a", M)],
            r#"{ "a" : 1 , "b" : 2 }"#,
            r#"{ "a" : "[REDACTED]" , "b" : 2 }"#,
        ),
        (
            "desc",
            &[("$..ssn", R)],
            r#"{"ssn":"1","x":{"ssn":2,"y":[{"ssn":3,"z":4}]}}"#,
            r#"{"x":{"y":[{"z":4}]}}"#,
        ),
        (
            "desc_top_array",
            &[("$..ssn", R)],
            r#"[{"ssn":1},{"a":{"ssn":[1]}}]"#,
            r#"[{},{"a":{}}]"#,
        ),
        (
            "wildcard_arr",
            &[("$.data[*].account_number", R)],
            r#"{"data":[{"account_number":"1","n":1},{"n":2,"account_number":"2"}],"account_number":"top"}"#,
            r#"{"data":[{"n":1},{"n":2}],"account_number":"top"}"#,
        ),
        (
            "idx0",
            &[("$.a[0]", R)],
            r#"{"a":[1,2,3]}"#,
            r#"{"a":[2,3]}"#,
        ),
        (
            "idx1",
            &[("$.a[1]", R)],
            r#"{"a":[1,2,3]}"#,
            r#"{"a":[1,3]}"#,
        ),
        (
            "idx2",
            &[("$.a[2]", R)],
            r#"{"a":[1,2,3]}"#,
            r#"{"a":[1,2]}"#,
        ),
        (
            "arr_rm_all",
            &[("$.a[*]", R)],
            r#"{"a":[1,{"b":2},[3]]}"#,
            r#"{"a":[]}"#,
        ),
        (
            "arr_mask_all",
            &[("$.a[*]", M)],
            r#"{"a":[1,{"b":2}]}"#,
            r#"{"a":["[REDACTED]","[REDACTED]"]}"#,
        ),
        (
            "arr_ws_rm_first",
            &[("$[0]", R)],
            "[ 1 , 2 , 3 ]",
            "[ 2 , 3 ]",
        ),
        (
            "arr_ws_rm_last",
            &[("$[2]", R)],
            "[ 1 , 2 , 3 ]",
            "[ 1 , 2 ]",
        ),
        ("arr_ws_rm_all", &[("$[*]", R)], "[ 1 , 2 ]", "[]"),
        (
            "quoted_key",
            &[("$[\"x y\"]", R)],
            r#"{"x y":1,"x":2}"#,
            r#"{"x":2}"#,
        ),
        (
            "escaped_key_doc",
            &[("$..ssn", R)],
            r#"{"\u0073sn":1,"b":2}"#,
            r#"{"b":2}"#,
        ),
        (
            "escaped_quote_key",
            &[("$[\"k\\\"q\"]", M)],
            r#"{"k\"q":1}"#,
            r#"{"k\"q":"[REDACTED]"}"#,
        ),
        (
            "surrogate_key",
            &[("$[\"😀\"]", R)],
            r#"{"\ud83d\ude00":1,"a":2}"#,
            r#"{"a":2}"#,
        ),
        (
            "no_match",
            &[("$.zzz", R)],
            r#"{"a":[1,{"b":null}],"c":"d"}"#,
            r#"{"a":[1,{"b":null}],"c":"d"}"#,
        ),
        ("top_string", &[("$.a", R)], r#""str""#, r#""str""#),
        ("top_number", &[("$.a", R)], "-12.5E+3", "-12.5E+3"),
        ("top_literal", &[("$.a", R)], " true ", " true "),
        (
            "brackets_in_strings",
            &[("$.a", R)],
            r#"{"a":"}\"],{","b":"\\"}"#,
            r#"{"b":"\\"}"#,
        ),
        (
            "numbers",
            &[("$.a", R)],
            r#"{"a":-1.5e+10,"b":0,"c":1E-2}"#,
            r#"{"b":0,"c":1E-2}"#,
        ),
        (
            "ws_key_colon",
            &[("$.b", R)],
            r#"{"a" :1, "b" : 2}"#,
            r#"{"a" :1}"#,
        ),
        (
            "empty_containers",
            &[("$.a", R)],
            r#"{"b":{},"c":[ ],"d":[{}]}"#,
            r#"{"b":{},"c":[ ],"d":[{}]}"#,
        ),
        (
            "mixed_elements",
            &[("$.a[*].b", R)],
            r#"{"a":[1,{"b":2},[3],{"c":{"b":1}}]}"#,
            r#"{"a":[1,{},[3],{"c":{"b":1}}]}"#,
        ),
        (
            "idx_out_of_range",
            &[("$.a[5]", R)],
            r#"{"a":[1,2]}"#,
            r#"{"a":[1,2]}"#,
        ),
        (
            "key_on_array",
            &[("$.a", R)],
            r#"[{"a":1}]"#,
            r#"[{"a":1}]"#,
        ),
        (
            "index_on_object",
            &[("$[0]", R)],
            r#"{"0":1}"#,
            r#"{"0":1}"#,
        ),
        (
            "multi_paths",
            &[("$..ssn", R), ("$.data[*].account_number", M)],
            r#"{"data":[{"ssn":"1","account_number":"2","k":3}],"ssn":4}"#,
            r#"{"data":[{"account_number":"[REDACTED]","k":3}]}"#,
        ),
        (
            "unicode_key",
            &[("$.é", R)],
            r#"{"é":1,"e":2}"#,
            r#"{"e":2}"#,
        ),
        (
            "deep_mismatch",
            &[("$.a.b.c", R)],
            r#"{"a":{"b":1}}"#,
            r#"{"a":{"b":1}}"#,
        ),
        (
            "prefix_keys",
            &[("$.ab", R)],
            r#"{"a":1,"abc":2,"ab":3}"#,
            r#"{"a":1,"abc":2}"#,
        ),
        (
            "remove_beats_mask",
            &[("$.a", M), ("$.a", R)],
            r#"{"a":1,"b":2}"#,
            r#"{"b":2}"#,
        ),
        (
            "mask_covers_nested",
            &[("$.a", M), ("$.a.b", R)],
            r#"{"a":{"b":1}}"#,
            r#"{"a":"[REDACTED]"}"#,
        ),
        (
            "desc_same_key",
            &[("$..a", R)],
            r#"{"a":{"a":1},"b":{"a":2,"c":3}}"#,
            r#"{"b":{"c":3}}"#,
        ),
        (
            "desc_any_index",
            &[("$..[0]", M)],
            r#"{"a":[[1,2],3],"b":{"c":[4]}}"#,
            r#"{"a":["[REDACTED]",3],"b":{"c":["[REDACTED]"]}}"#,
        ),
        (
            "wild_member",
            &[("$.a.*", M)],
            r#"{"a":{"x":1,"y":[2]},"b":3}"#,
            r#"{"a":{"x":"[REDACTED]","y":"[REDACTED]"},"b":3}"#,
        ),
        ("trailing_ws", &[("$.a", R)], "{\"a\":1}\n", "{}\n"),
        (
            "leading_ws",
            &[("$.a", R)],
            " \n{\"a\":1, \"b\":2}",
            " \n{ \"b\":2}",
        ),
        (
            "pretty_nested",
            &[("$..ssn", R)],
            "{\n  \"data\": [\n    {\n      \"ssn\": \"1\",\n      \"n\": 1\n    }\n  ]\n}",
            "{\n  \"data\": [\n    {\n      \"n\": 1\n    }\n  ]\n}",
        ),
        (
            "mask_pretty_array",
            &[("$.a", M)],
            "{\n  \"a\": [\n    1\n  ],\n  \"b\": 2\n}",
            "{\n  \"a\": \"[REDACTED]\",\n  \"b\": 2\n}",
        ),
        (
            "escapes_in_masked",
            &[("$.a", M)],
            r#"{"a":["\\\"",{"x":"\u00e9"}],"b":"\u0041"}"#,
            r#"{"a":"[REDACTED]","b":"\u0041"}"#,
        ),
        (
            "top_array_objects",
            &[("$[*].ssn", R)],
            r#"[{"ssn":1,"a":1},{"a":2,"ssn":2}]"#,
            r#"[{"a":1},{"a":2}]"#,
        ),
        (
            "crlf_tabs",
            &[("$.a", R)],
            "{\r\n\t\"a\":\t1,\r\n\t\"b\":2\r\n}",
            "{\r\n\t\"b\":2\r\n}",
        ),
    ];

    #[test]
    fn table() {
        assert!(CASES.len() >= 40);
        for (name, rules, input, want) in CASES {
            let p = program(rules);
            let (out, _) = redact(&p, input.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name}");
            let parsed: Result<Value, _> = serde_json::from_slice(&out);
            assert!(parsed.is_ok(), "{name}: output does not parse");
        }
    }

    #[test]
    fn table_every_split_point() {
        for (name, rules, input, want) in CASES {
            let p = program(rules);
            let b = input.as_bytes();
            for k in 0..=b.len() {
                let (out, _) = redact_split(&p, Limits::default(), OnInvalid::Block, b, &[k])
                    .unwrap_or_else(|e| panic!("{name} split {k}: {e}"));
                assert_eq!(String::from_utf8_lossy(&out), *want, "{name} split at {k}");
            }
            let bytewise: Vec<usize> = (1..b.len()).collect();
            let (out, _) =
                redact_split(&p, Limits::default(), OnInvalid::Block, b, &bytewise).expect(name);
            assert_eq!(String::from_utf8_lossy(&out), *want, "{name} byte by byte");
            if b.len() <= 48 {
                for x in 0..=b.len() {
                    for y in x..=b.len() {
                        let (out, _) =
                            redact_split(&p, Limits::default(), OnInvalid::Block, b, &[x, y])
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
    fn counts_redactions() {
        let p = program(&[("$..ssn", R), ("$.data[*].account_number", M)]);
        let (_, n) = redact(
            &p,
            br#"{"data":[{"ssn":1,"account_number":2},{"ssn":3}],"ssn":{"ssn":5}}"#,
        )
        .expect("ok");
        assert_eq!(n, 4);
    }

    /// (name, input, Pass output with `$..ssn` removed, error offset, reason fragment)
    const INVALID: &[(&str, &str, &str, u64, &str)] = &[
        ("trailing_comma_obj", r#"{"a":1,}"#, r#"{"a":1,}"#, 7, "key"),
        (
            "missing_value_after_rm",
            r#"{"ssn":1,"b":}"#,
            r#"{"b":}"#,
            13,
            "value",
        ),
        ("truncated", "[1,2", "[1,2", 4, "end of input"),
        (
            "trailing_data",
            r#"{"ssn":1} x"#,
            "{} x",
            10,
            "after the top-level",
        ),
        ("two_values", "{}{}", "{}{}", 2, "after the top-level"),
        ("bad_literal", r#"{"a":tru}"#, r#"{"a":tru}"#, 8, "literal"),
        ("leading_zero", r#"{"a":01}"#, r#"{"a":01}"#, 6, "`,`"),
        ("bad_escape", r#"{"a":"\x"}"#, r#"{"a":"\x"}"#, 7, "escape"),
        (
            "bad_unicode",
            r#"{"a":"\u12g4"}"#,
            r#"{"a":"\u12g4"}"#,
            10,
            "\\u",
        ),
        (
            "control_char",
            "{\"a\":\"x\u{1}\"}",
            "{\"a\":\"x\u{1}\"}",
            7,
            "control",
        ),
        ("mismatched", r#"{"a":1]"#, r#"{"a":1]"#, 6, "mismatched"),
        ("stray_close", "]", "]", 0, "value"),
        ("empty", "", "", 0, "end of input"),
        ("only_ws", "  \n", "  \n", 3, "end of input"),
        ("missing_colon", r#"{"a" 1}"#, r#"{"a" 1}"#, 5, "`:`"),
        ("lone_minus", r#"{"a":-}"#, r#"{"a":-}"#, 6, "number"),
        ("dot_no_digits", r#"{"a":1.}"#, r#"{"a":1.}"#, 7, "number"),
        ("exp_no_digits", "[1e]", "[1e]", 3, "number"),
        ("trailing_comma_arr", "[1,]", "[1,]", 3, "value"),
        ("key_not_string", "{a:1}", "{a:1}", 1, "key"),
        (
            "truncated_in_key",
            r#"{"a":1, "b"#,
            r#"{"a":1, "b"#,
            10,
            "end of input",
        ),
        ("error_inside_removed", r#"{"ssn":[1,}"#, "{}", 10, "value"),
        (
            "top_number_trailing",
            "12 3",
            "12 3",
            3,
            "after the top-level",
        ),
    ];

    #[test]
    fn invalid_inputs_follow_policy() {
        let p = program(&[("$..ssn", R)]);
        for (name, input, pass_out, offset, why) in INVALID {
            let b = input.as_bytes();
            for k in 0..=b.len() {
                let (out, _) = redact_split(&p, Limits::default(), OnInvalid::Pass, b, &[k])
                    .unwrap_or_else(|e| panic!("{name}: Pass gave {e}"));
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    *pass_out,
                    "{name} Pass split {k}"
                );
                match redact_split(&p, Limits::default(), OnInvalid::Block, b, &[k]) {
                    Err(RedactError::Invalid { offset: o, reason }) => {
                        assert_eq!(o, *offset, "{name} offset ({reason})");
                        assert!(reason.contains(why), "{name}: {reason}");
                    }
                    other => panic!("{name}: Block gave {other:?}"),
                }
            }
            assert!(
                serde_json::from_slice::<Value>(b).is_err(),
                "{name} is valid JSON?"
            );
        }
    }

    #[test]
    fn pass_without_matches_is_identity_on_invalid() {
        let p = program(&[("$.zzz", R)]);
        for (name, input, ..) in INVALID {
            let (out, _) = redact_split(
                &p,
                Limits::default(),
                OnInvalid::Pass,
                input.as_bytes(),
                &[],
            )
            .expect(name);
            assert_eq!(out, input.as_bytes(), "{name}");
        }
    }

    #[test]
    fn block_error_is_final() {
        let p = program(&[("$.a", R)]);
        let mut r = JsonRedactor::new(&p, Limits::default(), OnInvalid::Block);
        let mut out = Vec::new();
        assert!(r.feed(b"{\"a\":1}}", &mut out).is_err());
        assert!(r.feed(b" ", &mut out).is_err());
        assert!(r.finish(&mut out).is_err());
        assert!(r.error().is_some());
        let mut r = JsonRedactor::new(&p, Limits::default(), OnInvalid::Pass);
        out.clear();
        r.feed(b"{\"a\":1}}", &mut out).expect("pass");
        r.feed(b" more", &mut out).expect("pass");
        r.finish(&mut out).expect("pass");
        assert_eq!(out, b"{}} more");
        assert!(r.error().is_some());
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_limit() {
        let p = program(&[("$..ssn", R)]);
        let ok = nested(128);
        assert_eq!(
            redact(&p, ok.as_bytes()).expect("128 deep").0,
            ok.as_bytes()
        );
        let deep = nested(129);
        match redact(&p, deep.as_bytes()) {
            Err(RedactError::TooDeep {
                offset: 128,
                limit: 128,
            }) => {}
            other => panic!("{other:?}"),
        }
        let (out, _) = redact_split(
            &p,
            Limits::default(),
            OnInvalid::Pass,
            deep.as_bytes(),
            &[100],
        )
        .expect("pass");
        assert_eq!(out, deep.as_bytes());
        let small = Limits {
            max_depth: 2,
            ..Limits::default()
        };
        assert!(redact_split(&p, small, OnInvalid::Block, b"[[1]]", &[]).is_ok());
        assert!(redact_split(&p, small, OnInvalid::Block, b"[[[1]]]", &[]).is_err());
        // an empty program does not check less
        let e = RedactProgram::new();
        assert!(redact(&e, deep.as_bytes()).is_err());
    }

    #[test]
    fn key_limit() {
        let p = program(&[("$..ssn", R)]);
        let lim = Limits {
            max_key_len: 8,
            ..Limits::default()
        };
        let ok = br#"{"12345678":{"ssn":1}}"#;
        for k in 0..=ok.len() {
            let (out, _) = redact_split(&p, lim, OnInvalid::Block, ok, &[k]).expect("8 bytes");
            assert_eq!(out, br#"{"12345678":{}}"#);
        }
        let long = br#"{"a":{"123456789":1}}"#;
        for k in 0..=long.len() {
            match redact_split(&p, lim, OnInvalid::Block, long, &[k]) {
                Err(RedactError::KeyTooLong { limit: 8, .. }) => {}
                other => panic!("split {k}: {other:?}"),
            }
            let (out, _) = redact_split(&p, lim, OnInvalid::Pass, long, &[k]).expect("pass");
            assert_eq!(out, long.as_slice());
        }
        // escaped bytes count raw
        assert!(redact_split(&p, lim, OnInvalid::Block, br#"{"\u0041\u0042":1}"#, &[]).is_err());
    }

    #[test]
    fn long_separator_whitespace_stays_bounded() {
        let ws = " ".repeat(5000);
        for (path, want) in [
            ("$.a", r#"{"b":2}"#),
            ("$.b", r#"{"a":1}"#),
            ("$.zzz", r#"{"a":1,"b":2}"#),
        ] {
            let p = program(&[(path, R)]);
            let doc = format!("{{{ws}\"a\":1{ws},{ws}\"b\":2{ws}}}");
            let mut r = JsonRedactor::new(&p, Limits::default(), OnInvalid::Block);
            let mut out = Vec::new();
            for c in doc.as_bytes().chunks(100) {
                r.feed(c, &mut out).expect("valid");
                assert!(
                    r.hold.len() <= HOLD_WS_MAX + 100,
                    "hold grew to {}",
                    r.hold.len()
                );
            }
            r.finish(&mut out).expect("complete");
            let got: Value = serde_json::from_slice(&out).expect("parses");
            assert_eq!(
                got,
                serde_json::from_str::<Value>(want).expect("want"),
                "{path}"
            );
        }
    }

    #[test]
    fn reset_reuses() {
        let p = program(&[("$.a", R)]);
        let mut r = JsonRedactor::new(&p, Limits::default(), OnInvalid::Block);
        let mut out = Vec::new();
        assert!(r.feed(b"{\"a\":", &mut out).is_ok());
        r.reset();
        out.clear();
        r.feed(br#"{"a":1,"b":2}"#, &mut out).expect("ok");
        r.finish(&mut out).expect("ok");
        assert_eq!(out, br#"{"b":2}"#);
        assert_eq!(r.redactions(), 1);
    }

    #[test]
    fn decode_keys() {
        let mut d = Vec::new();
        decode_key(
            br#"a\"b\\c\/\b\f\n\r\t\u0041\u00e9\ud83d\ude00\ud800x\udc00"#,
            &mut d,
        );
        assert_eq!(
            String::from_utf8(d).expect("utf8"),
            "a\"b\\c/\u{8}\u{c}\n\r\tAé😀\u{FFFD}x\u{FFFD}"
        );
    }

    #[test]
    fn string_scan_every_length_and_position() {
        let p = program(&[("$.b", R)]);
        for len in 0..80 {
            for pos in 0..len {
                for (special, ok) in [("\\n", true), ("\\\"", true), ("\u{1}", false), ("é", true)]
                {
                    let mut v = "x".repeat(len);
                    v.replace_range(pos..pos + 1, special);
                    let doc = format!("{{\"a\":\"{v}\",\"b\":1}}");
                    let got = redact(&p, doc.as_bytes());
                    if ok {
                        let want = format!("{{\"a\":\"{v}\"}}");
                        assert_eq!(
                            got.map(|(o, _)| o),
                            Ok(want.into_bytes()),
                            "{len} {pos} {special:?}"
                        );
                    } else {
                        match got {
                            Err(RedactError::Invalid { offset, .. }) => {
                                assert_eq!(offset as usize, 6 + pos)
                            }
                            other => panic!("{len} {pos}: {other:?}"),
                        }
                    }
                }
            }
        }
    }

    // ---- property test against a tree-walking reference ----

    #[derive(Clone, Debug)]
    enum RefLabel {
        Key(String),
        Index(u64),
    }

    fn sel_ok(sel: &Selector, l: &RefLabel) -> bool {
        match (sel, l) {
            (Selector::Any, _) => true,
            (Selector::Key(k), RefLabel::Key(s)) => **k == *s.as_bytes(),
            (Selector::Index(n), RefLabel::Index(i)) => n == i,
            _ => false,
        }
    }

    fn ref_matches(steps: &[Step], labels: &[RefLabel]) -> bool {
        let Some((s, rest)) = steps.split_first() else {
            return labels.is_empty();
        };
        if s.desc {
            (0..labels.len())
                .any(|k| sel_ok(&s.sel, &labels[k]) && ref_matches(rest, &labels[k + 1..]))
        } else {
            !labels.is_empty() && sel_ok(&s.sel, &labels[0]) && ref_matches(rest, &labels[1..])
        }
    }

    fn ref_decide(rules: &[(Vec<Step>, Action)], labels: &[RefLabel]) -> Option<Action> {
        let mut act = None;
        for (steps, a) in rules {
            if ref_matches(steps, labels) {
                act = match (act, a) {
                    (Some(Action::Remove), _) | (_, Action::Remove) => Some(Action::Remove),
                    _ => Some(Action::Mask),
                };
            }
        }
        act
    }

    fn ref_walk(v: &mut Value, labels: &mut Vec<RefLabel>, rules: &[(Vec<Step>, Action)]) {
        match v {
            Value::Object(m) => {
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    labels.push(RefLabel::Key(k.clone()));
                    match ref_decide(rules, labels) {
                        Some(Action::Remove) => {
                            m.remove(&k);
                        }
                        Some(Action::Mask) => {
                            m.insert(k, Value::from("[REDACTED]"));
                        }
                        None | Some(Action::Capture(_)) => {
                            if let Some(c) = m.get_mut(&k) {
                                ref_walk(c, labels, rules);
                            }
                        }
                    }
                    labels.pop();
                }
            }
            Value::Array(a) => {
                let old = std::mem::take(a);
                for (i, mut e) in old.into_iter().enumerate() {
                    labels.push(RefLabel::Index(i as u64));
                    match ref_decide(rules, labels) {
                        Some(Action::Remove) => {}
                        Some(Action::Mask) => a.push(Value::from("[REDACTED]")),
                        None | Some(Action::Capture(_)) => {
                            ref_walk(&mut e, labels, rules);
                            a.push(e);
                        }
                    }
                    labels.pop();
                }
            }
            _ => {}
        }
    }

    const KEYS: &[&str] = &["a", "b", "ssn", "data", "x y", "k\"q", "é", "0"];
    const PATHS: &[&str] = &[
        "$..ssn",
        "$.data[*].a",
        "$.a",
        "$.a.b",
        "$..b[0]",
        "$[\"x y\"]",
        "$.data[1]",
        "$[*].ssn",
        "$..[\"k\\\"q\"]",
        "$.a.*",
        "$..é",
        "$[0]",
        "$..data..a",
    ];

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1.0e9f64..1.0e9).prop_map(Value::from),
            "[a-z\"\\\\é\n ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 80, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matches_reference(
            doc in arb_value(),
            rules in prop::collection::vec((prop::sample::select(PATHS), any::<bool>()), 1..4),
            pretty in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&doc).expect("ser")
            } else {
                serde_json::to_string(&doc).expect("ser")
            };
            let b = text.as_bytes();
            let rules: Vec<(&str, Action)> =
                rules.iter().map(|(p, m)| (*p, if *m { M } else { R })).collect();
            let p = program(&rules);
            let mut splits: Vec<usize> = cuts.iter().map(|c| c.index(b.len() + 1)).collect();
            splits.sort_unstable();
            let (out, n) = redact_split(&p, Limits::default(), OnInvalid::Block, b, &splits)
                .map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let (whole, n1) = redact(&p, b).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(&out, &whole);
            prop_assert_eq!(n, n1);
            let got: Value = serde_json::from_slice(&out)
                .map_err(|e| TestCaseError::fail(format!("output does not parse: {e}: {}", String::from_utf8_lossy(&out))))?;
            let ref_rules: Vec<(Vec<Step>, Action)> =
                rules.iter().map(|(path, a)| (parse_path(path).expect("path"), *a)).collect();
            let mut want: Value = serde_json::from_str(&text).expect("reparse");
            ref_walk(&mut want, &mut Vec::new(), &ref_rules);
            prop_assert_eq!(got, want);
            if n == 0 {
                prop_assert_eq!(out, b.to_vec());
            }
        }
    }
}
