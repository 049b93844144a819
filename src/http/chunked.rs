//! Sans-io decoder for the chunked transfer coding (RFC 9112 §7.1), and the writer-side helpers.
//!
//! The decoder keeps no copy of any byte: it is a small state machine fed with whatever the
//! caller has buffered, and it hands back ranges of body data within that input. State is
//! carried across calls at every byte boundary (inside the size line, extensions, the CRLF
//! after data, trailers).
//!
//! Strictness: chunk-size is 1..=16 hex digits counted with leading zeros (a 17th digit is
//! `SizeOverflow`, even `00000000000000001`); BWS (SP/HTAB) is allowed only between the size
//! and a `;` extension; extensions may hold any byte but CR, LF and controls other than HTAB,
//! and everything after the digits of a size line is bounded at 1024 bytes; every line ends
//! in CRLF; the trailer section (≤ 8 KiB) is `token ":" value` lines, validated and dropped.
//!
//! Body limit ([`ChunkedDecoder::with_limit`], used for request bodies): a chunk whose size
//! would take the body past the limit is refused (`TooLarge`) on the byte that ends its hex
//! digits, before the rest of its size line, its data or anything else is waited for; without a
//! limit a chunk of any 16-digit size is streamed.
use super::hop;
use crate::util::hex;
use std::ops::Range;

/// Most bytes after the hex digits of one size line (BWS + extensions).
const MAX_EXT: usize = 1024;
/// Most bytes of the trailer section, final CRLF included.
const MAX_TRAILERS: usize = 8 * 1024;
/// Most hex digits in a chunk-size (leading zeros included): 16 always fits in a u64.
const MAX_SIZE_DIGITS: u8 = 16;

/// The last chunk with no trailers (writer side).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    BadSize,
    SizeOverflow,
    BadLineEnding,
    ExtensionTooLong,
    TrailersTooLarge,
    BadTrailer,
    /// The body (the chunks so far plus the declared size of this one) exceeds the limit.
    TooLarge,
}

impl ChunkedError {
    pub fn message(&self) -> &'static str {
        match self {
            ChunkedError::BadSize => "invalid chunk size line",
            ChunkedError::SizeOverflow => "chunk size too large",
            ChunkedError::BadLineEnding => "invalid line ending in chunked body",
            ChunkedError::ExtensionTooLong => "chunk extension too long",
            ChunkedError::TrailersTooLarge => "trailer section too large",
            ChunkedError::BadTrailer => "invalid trailer field",
            ChunkedError::TooLarge => "chunk size exceeds the body size limit",
        }
    }
}

/// Writes a chunk header, `{len:x}\r\n`, without allocating.
pub fn encode_chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 2 * size_of::<usize>()];
    let mut i = tmp.len();
    let mut n = len;
    loop {
        i -= 1;
        if let Some(slot) = tmp.get_mut(i) {
            *slot = HEX[n & 0xf];
        }
        n >>= 4;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(tmp.get(i..).unwrap_or(&[]));
    out.extend_from_slice(b"\r\n");
}

/// The result of one [`ChunkedDecoder::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed (framing and data).
    pub consumed: usize,
    /// Body bytes to deliver: a range into the input, within `..consumed` (possibly empty).
    pub data: Range<usize>,
    /// The last chunk and trailer section are complete; nothing after them was consumed.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Start of a size line: expecting the first hex digit.
    #[default]
    SizeStart,
    /// Inside the hex digits.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the digits: BWS before a `;` (`ext` counts bytes after the digits).
    Bws {
        size: u64,
        ext: usize,
    },
    /// Inside chunk extensions, up to the CR.
    Ext {
        size: u64,
        ext: usize,
    },
    /// Got the CR of the size line.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data {
        remaining: u64,
    },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// Start of a trailer line or of the final CRLF (`total`: trailer bytes so far).
    TrailerStart {
        total: usize,
    },
    TrailerName {
        total: usize,
    },
    TrailerValue {
        total: usize,
    },
    TrailerLf {
        total: usize,
    },
    /// Got the CR of the final empty line.
    FinalLf {
        total: usize,
    },
    Done,
    Failed(ChunkedError),
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Most body bytes accepted (`u64::MAX`: no limit).
    limit: u64,
    /// Body bytes declared by the chunk sizes completed so far.
    declared: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::default(),
            limit: u64::MAX,
            declared: 0,
        }
    }
}

/// Field-value bytes: HTAB, SP, VCHAR, obs-text.
#[inline]
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that refuses (`TooLarge`) a body of more than `limit` bytes as soon as a size
    /// line declares one, so a huge chunk size is never waited on.
    pub fn with_limit(limit: u64) -> Self {
        ChunkedDecoder {
            limit,
            ..Self::default()
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes a prefix of `input`; see [`Step`]. The caller advances by `consumed` and calls
    /// again while `consumed > 0 && !done`; `consumed == 0 && !done` means more input is
    /// needed. After an error the decoder keeps returning that error.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        let r = self.run(input);
        if let Err(e) = r {
            self.state = State::Failed(e);
        }
        r
    }

    fn run(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        let mut pos = 0usize;
        let mut data = 0..0;
        loop {
            match self.state {
                State::Done => {
                    return Ok(Step {
                        consumed: pos,
                        data,
                        done: true,
                    });
                }
                State::Failed(e) => return Err(e),
                State::Data { remaining } => {
                    // one data range per step: stop before a second one
                    if !data.is_empty() {
                        return Ok(Step {
                            consumed: pos,
                            data,
                            done: false,
                        });
                    }
                    let avail = input.len().saturating_sub(pos);
                    if avail == 0 {
                        return Ok(Step {
                            consumed: pos,
                            data,
                            done: false,
                        });
                    }
                    let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                    data = pos..pos + take;
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    continue;
                }
                _ => {}
            }
            let Some(&b) = input.get(pos) else {
                return Ok(Step {
                    consumed: pos,
                    data,
                    done: false,
                });
            };
            pos += 1;
            let budget = self.limit.saturating_sub(self.declared);
            self.state = Self::framing(self.state, b, budget)?;
            if let State::Data { remaining } = self.state {
                // entered on the size line's LF: `remaining` is the chunk's whole size
                self.declared = self.declared.saturating_add(remaining);
            }
        }
    }

    /// One framing byte: the next state. `budget`: the most the chunk being sized may hold.
    #[inline]
    fn framing(state: State, b: u8, budget: u64) -> Result<State, ChunkedError> {
        Ok(match state {
            State::SizeStart => match hex::digit(b).map(u64::from) {
                Some(v) => State::Size { size: v, digits: 1 },
                None if b == b'\n' => return Err(ChunkedError::BadLineEnding),
                None => return Err(ChunkedError::BadSize),
            },
            State::Size { size, digits } => match (hex::digit(b).map(u64::from), b) {
                (Some(_), _) if digits >= MAX_SIZE_DIGITS => {
                    return Err(ChunkedError::SizeOverflow);
                }
                (Some(v), _) => State::Size {
                    size: (size << 4) | v,
                    digits: digits + 1,
                },
                // the digits are complete: a size above the body limit is refused here, before
                // the rest of the line, and long before its data (a malformed, 17-digit size is
                // `SizeOverflow` first)
                (None, b'\r' | b';' | b' ' | b'\t') if size > budget => {
                    return Err(ChunkedError::TooLarge);
                }
                (None, b'\r') => State::SizeLf { size },
                (None, b';') => State::Ext { size, ext: 1 },
                (None, b' ' | b'\t') => State::Bws { size, ext: 1 },
                (None, b'\n') => return Err(ChunkedError::BadLineEnding),
                (None, _) => return Err(ChunkedError::BadSize),
            },
            State::Bws { size, ext } => {
                if ext >= MAX_EXT {
                    return Err(ChunkedError::ExtensionTooLong);
                }
                match b {
                    b' ' | b'\t' => State::Bws { size, ext: ext + 1 },
                    b';' => State::Ext { size, ext: ext + 1 },
                    b'\n' => return Err(ChunkedError::BadLineEnding),
                    // whitespace not followed by an extension ("5 \r\n"), or junk
                    _ => return Err(ChunkedError::BadSize),
                }
            }
            State::Ext { size, ext } => match b {
                b'\r' => State::SizeLf { size },
                b'\n' => return Err(ChunkedError::BadLineEnding),
                _ if ext >= MAX_EXT => return Err(ChunkedError::ExtensionTooLong),
                _ if is_value_byte(b) => State::Ext { size, ext: ext + 1 },
                _ => return Err(ChunkedError::BadSize),
            },
            State::SizeLf { size } => match b {
                b'\n' if size == 0 => State::TrailerStart { total: 0 },
                b'\n' => State::Data { remaining: size },
                _ => return Err(ChunkedError::BadLineEnding),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::BadLineEnding),
            },
            State::DataLf => match b {
                b'\n' => State::SizeStart,
                _ => return Err(ChunkedError::BadLineEnding),
            },
            State::TrailerStart { total } => {
                let total = Self::count(total)?;
                match b {
                    b'\r' => State::FinalLf { total },
                    b'\n' => return Err(ChunkedError::BadLineEnding),
                    _ if hop::is_tchar(b) => State::TrailerName { total },
                    // obs-fold (SP/HTAB), an empty name, or junk
                    _ => return Err(ChunkedError::BadTrailer),
                }
            }
            State::TrailerName { total } => {
                let total = Self::count(total)?;
                match b {
                    b':' => State::TrailerValue { total },
                    _ if hop::is_tchar(b) => State::TrailerName { total },
                    b'\n' => return Err(ChunkedError::BadLineEnding),
                    _ => return Err(ChunkedError::BadTrailer),
                }
            }
            State::TrailerValue { total } => {
                let total = Self::count(total)?;
                match b {
                    b'\r' => State::TrailerLf { total },
                    b'\n' => return Err(ChunkedError::BadLineEnding),
                    _ if is_value_byte(b) => State::TrailerValue { total },
                    _ => return Err(ChunkedError::BadTrailer),
                }
            }
            State::TrailerLf { total } => {
                let total = Self::count(total)?;
                match b {
                    b'\n' => State::TrailerStart { total },
                    _ => return Err(ChunkedError::BadLineEnding),
                }
            }
            State::FinalLf { total } => {
                Self::count(total)?;
                match b {
                    b'\n' => State::Done,
                    _ => return Err(ChunkedError::BadLineEnding),
                }
            }
            // handled by the caller; never reached with a byte
            State::Data { .. } | State::Done | State::Failed(_) => state,
        })
    }

    /// Counts one more trailer byte against the limit.
    #[inline]
    fn count(total: usize) -> Result<usize, ChunkedError> {
        if total >= MAX_TRAILERS {
            Err(ChunkedError::TrailersTooLarge)
        } else {
            Ok(total + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What decoding a whole input yields: the body, bytes consumed, done — or the error.
    type Outcome = Result<(Vec<u8>, usize, bool), ChunkedError>;

    /// Feeds `input` as a caller would, the bytes arriving in pieces ending at `cuts` (sorted,
    /// deduplicated by the caller or not); checks every Step's invariants on the way.
    fn decode_split(input: &[u8], cuts: &[usize]) -> Outcome {
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        ends.push(input.len());
        ends.sort_unstable();
        let mut dec = ChunkedDecoder::new();
        let mut body = Vec::new();
        let (mut pos, mut avail) = (0usize, 0usize);
        let mut ends = ends.into_iter();
        loop {
            let window = &input[pos..avail];
            let step = dec.step(window)?;
            assert!(step.consumed <= window.len());
            assert!(
                step.data.start <= step.data.end && step.data.end <= step.consumed,
                "{step:?}"
            );
            body.extend_from_slice(&window[step.data.clone()]);
            pos += step.consumed;
            assert_eq!(step.done, dec.is_done());
            if step.done {
                // done is sticky and consumes nothing more
                assert_eq!(
                    dec.step(&input[pos..]),
                    Ok(Step {
                        consumed: 0,
                        data: 0..0,
                        done: true
                    })
                );
                return Ok((body, pos, true));
            }
            if step.consumed == 0 {
                assert!(step.data.is_empty());
                match ends.next() {
                    Some(e) => avail = avail.max(e),
                    None => return Ok((body, pos, false)),
                }
            }
        }
    }

    fn decode(input: &[u8]) -> Outcome {
        decode_split(input, &[])
    }

    fn bytewise(input: &[u8]) -> Outcome {
        let cuts: Vec<usize> = (0..=input.len()).collect();
        decode_split(input, &cuts)
    }

    fn ok(body: &[u8], consumed: usize) -> Outcome {
        Ok((body.to_vec(), consumed, true))
    }

    fn big_trailers() -> Vec<u8> {
        let mut v = b"0\r\n".to_vec();
        while v.len() < 9000 {
            v.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn table() {
        use ChunkedError::*;
        let long_ext = [b"5;".as_slice(), &[b'a'; 1100], b"\r\nhello\r\n0\r\n\r\n"].concat();
        let ok_ext = [b"5;".as_slice(), &[b'a'; 1000], b"\r\nhello\r\n0\r\n\r\n"].concat();
        let trailers_8k = {
            // exactly 8 KiB of trailer section is fine
            let mut v = b"0\r\n".to_vec();
            let line = |n: usize| [b"X: ".as_slice(), &vec![b'a'; n], b"\r\n"].concat();
            v.extend_from_slice(&line(8192 - 2 - 5));
            v.extend_from_slice(b"\r\n");
            v
        };
        let mut trailers_8k_plus = trailers_8k.clone();
        trailers_8k_plus.insert(5, b'a');
        #[rustfmt::skip]
        let cases: &[(&str, &[u8], Outcome)] = &[
            ("simple", b"5\r\nhello\r\n0\r\n\r\n", ok(b"hello", 15)),
            ("empty body", b"0\r\n\r\n", ok(b"", 5)),
            ("multiple chunks", b"5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n", ok(b"hello world!", 32)),
            ("uppercase hex", b"A\r\n0123456789\r\n0\r\n\r\n", ok(b"0123456789", 20)),
            ("lowercase hex", b"a\r\n0123456789\r\n0\r\n\r\n", ok(b"0123456789", 20)),
            ("leading zeros", b"0005\r\nhello\r\n0000\r\n\r\n", ok(b"hello", 21)),
            ("16 digits", b"0000000000000005\r\nhello\r\n0\r\n\r\n", ok(b"hello", 30)),
            ("extension", b"5;name=value\r\nhello\r\n0;x\r\n\r\n", ok(b"hello", 28)),
            ("quoted extension", b"5;n=\"a b;c\"\r\nhello\r\n0\r\n\r\n", ok(b"hello", 25)),
            ("BWS before extension", b"5 \t;n\r\nhello\r\n0\r\n\r\n", ok(b"hello", 19)),
            ("extension at limit", &ok_ext, ok(b"hello", ok_ext.len())),
            ("extension too long", &long_ext, Err(ExtensionTooLong)),
            ("trailers dropped", b"5\r\nhello\r\n0\r\nX-T: 1\r\nY:\r\n\r\n", ok(b"hello", 27)),
            ("trailers at 8 KiB", &trailers_8k, ok(b"", trailers_8k.len())),
            ("trailers over 8 KiB", &trailers_8k_plus, Err(TrailersTooLarge)),
            ("trailers far too large", &big_trailers(), Err(TrailersTooLarge)),
            ("bytes after the end not consumed", b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n", ok(b"hello", 15)),
            ("incomplete", b"5\r\nhel", Ok((b"hel".to_vec(), 6, false))),
            ("incomplete trailers", b"0\r\nX: y\r\n", Ok((vec![], 9, false))),
            ("bare LF in size line", b"5\nhello\r\n0\r\n\r\n", Err(BadLineEnding)),
            ("bare LF after extension", b"5;x\nhello\r\n0\r\n\r\n", Err(BadLineEnding)),
            ("bare CR in size line", b"5\rhello\r\n0\r\n\r\n", Err(BadLineEnding)),
            ("missing CRLF after data", b"5\r\nhelloX\r\n0\r\n\r\n", Err(BadLineEnding)),
            ("LF only after data", b"5\r\nhello\n0\r\n\r\n", Err(BadLineEnding)),
            ("CR only after data", b"5\r\nhello\r0\r\n\r\n", Err(BadLineEnding)),
            ("data longer than size", b"3\r\nhello\r\n0\r\n\r\n", Err(BadLineEnding)),
            ("bare LF ending trailers", b"0\r\n\n", Err(BadLineEnding)),
            ("bare LF in trailer", b"0\r\nX: y\n\r\n", Err(BadLineEnding)),
            ("size overflow 18 f", b"ffffffffffffffffff\r\n", Err(SizeOverflow)),
            ("17 digits", b"10000000000000000\r\n", Err(SizeOverflow)),
            ("17 digits with leading zeros", b"00000000000000001\r\n", Err(SizeOverflow)),
            ("negative", b"-5\r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("plus", b"+5\r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("empty size", b"\r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("leading space", b" 5\r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("trailing space without extension", b"5 \r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("non-hex digit", b"5g\r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("NUL in extension", b"5;a\x00b\r\nhello\r\n0\r\n\r\n", Err(BadSize)),
            ("trailer obs-fold", b"0\r\nX: a\r\n b\r\n\r\n", Err(BadTrailer)),
            ("trailer leading tab", b"0\r\n\tX: a\r\n\r\n", Err(BadTrailer)),
            ("trailer without colon", b"0\r\nXa\r\n\r\n", Err(BadTrailer)),
            ("trailer space before colon", b"0\r\nX : a\r\n\r\n", Err(BadTrailer)),
            ("trailer empty name", b"0\r\n: a\r\n\r\n", Err(BadTrailer)),
            ("trailer NUL in value", b"0\r\nX: a\x00\r\n\r\n", Err(BadTrailer)),
            ("garbage after last chunk", b"0\r\nxx", Ok((vec![], 5, false))),
        ];
        for (name, input, expect) in cases {
            assert_eq!(&decode(input), expect, "case {name:?}");
            assert_eq!(&bytewise(input), expect, "case {name:?} byte by byte");
        }
    }

    /// Decodes `input` whole with a body limit: the body, or the error and how far it got.
    fn decode_limited(input: &[u8], limit: u64) -> Result<Vec<u8>, (ChunkedError, usize)> {
        let mut dec = ChunkedDecoder::with_limit(limit);
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            // one byte at a time, so an error's position is exact
            let end = (pos + 1).min(input.len());
            let step = dec.step(&input[pos..end]).map_err(|e| (e, pos))?;
            body.extend_from_slice(&input[pos..end][step.data.clone()]);
            pos += step.consumed;
            if step.done || (step.consumed == 0 && pos == input.len()) {
                return Ok(body);
            }
        }
    }

    #[test]
    fn limit_table() {
        use ChunkedError::*;
        // (name, input, limit, body or (error, offset of the refused byte))
        type Row = (
            &'static str,
            &'static [u8],
            u64,
            Result<&'static [u8], (ChunkedError, usize)>,
        );
        #[rustfmt::skip]
        let cases: &[Row] = &[
            ("at the limit", b"5\r\nhello\r\n0\r\n\r\n", 5, Ok(b"hello")),
            ("two chunks at the limit", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", 5, Ok(b"hello")),
            ("one over in one chunk", b"6\r\nhello!\r\n0\r\n\r\n", 5, Err((TooLarge, 1))),
            ("second chunk over", b"2\r\nhe\r\n4\r\nllo!\r\n0\r\n\r\n", 5, Err((TooLarge, 8))),
            ("huge size refused where its digits end, no LF or data needed", b"ffffffff\r", 1 << 20, Err((TooLarge, 8))),
            ("15-digit size", b"fffffffffffffff\r\n", 1 << 20, Err((TooLarge, 15))),
            ("17 digits is malformed first", b"ffffffffffffffff1\r\n", 1 << 20, Err((SizeOverflow, 16))),
            ("leading zeros are free", b"000000000005\r\nhello\r\n0\r\n\r\n", 5, Ok(b"hello")),
            ("zero limit, empty body", b"0\r\n\r\n", 0, Ok(b"")),
            ("zero limit, any data", b"1\r\na\r\n0\r\n\r\n", 0, Err((TooLarge, 1))),
            ("size checked before the extension", b"9;ext\r\n", 8, Err((TooLarge, 1))),
            ("size checked before BWS", b"9 ;x\r\n", 8, Err((TooLarge, 1))),
        ];
        for (name, input, limit, want) in cases {
            let got = decode_limited(input, *limit);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{name}");
        }
        // without a limit the same huge size is streamed
        assert!(ChunkedDecoder::new().step(b"ffffffff\r\n").is_ok());
    }

    #[test]
    fn error_is_sticky() {
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.step(b"zz"), Err(ChunkedError::BadSize));
        assert_eq!(
            dec.step(b"5\r\nhello\r\n0\r\n\r\n"),
            Err(ChunkedError::BadSize)
        );
        assert!(!dec.is_done());
        assert!(!ChunkedError::TrailersTooLarge.message().is_empty());
    }

    #[test]
    fn one_data_range_per_step() {
        let input = b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n";
        let mut dec = ChunkedDecoder::new();
        let s = dec.step(input).unwrap();
        // first data, then the framing up to the next data is consumed too
        assert_eq!(
            s,
            Step {
                consumed: 10,
                data: 3..5,
                done: false
            }
        );
        let s = dec.step(&input[10..]).unwrap();
        assert_eq!(
            s,
            Step {
                consumed: 9,
                data: 0..2,
                done: true
            }
        );
    }

    #[test]
    fn huge_chunk_is_streamed() {
        let mut dec = ChunkedDecoder::new();
        let s = dec.step(b"ffffffffffffffff\r\nabc").unwrap();
        assert_eq!(
            s,
            Step {
                consumed: 21,
                data: 18..21,
                done: false
            }
        );
        let s = dec.step(b"xyz").unwrap();
        assert_eq!(
            s,
            Step {
                consumed: 3,
                data: 0..3,
                done: false
            }
        );
    }

    #[test]
    fn chunk_header_encoding() {
        for (n, s) in [
            (0usize, "0\r\n"),
            (5, "5\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut out = b"x".to_vec();
            encode_chunk_header(n, &mut out);
            assert_eq!(out, [b"x".as_slice(), s.as_bytes()].concat());
        }
        assert_eq!(decode(LAST_CHUNK), ok(b"", 5));
    }

    fn encode(body: &[u8], sizes: &[usize], ext: bool, trailers: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = sizes
                .next()
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            encode_chunk_header(n, &mut out);
            if ext {
                out.truncate(out.len() - 2);
                out.extend_from_slice(b" ;a=\"b;c\"\r\n");
            }
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        if trailers {
            out.extend_from_slice(b"0\r\nX-Sum: 1\r\nY: \t z\r\n\r\n");
        } else {
            out.extend_from_slice(LAST_CHUNK);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn roundtrip_any_split(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..100, 1..8),
            cuts in proptest::collection::vec(0usize..2000, 0..20),
            ext in any::<bool>(),
            trailers in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let enc = encode(&body, &sizes, ext, trailers);
            let mut input = enc.clone();
            input.extend_from_slice(&tail);
            prop_assert_eq!(decode_split(&input, &cuts), Ok((body.clone(), enc.len(), true)));
            prop_assert_eq!(bytewise(&input), Ok((body, enc.len(), true)));
        }

        #[test]
        fn limit_refuses_exactly_the_bodies_above_it(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            sizes in proptest::collection::vec(1usize..100, 1..8),
            limit in 0u64..400,
        ) {
            let input = encode(&body, &sizes, false, false);
            match decode_limited(&input, limit) {
                Ok(got) => {
                    prop_assert!(body.len() as u64 <= limit);
                    prop_assert_eq!(got, body);
                }
                Err((e, at)) => {
                    prop_assert_eq!(e, ChunkedError::TooLarge);
                    prop_assert!(body.len() as u64 > limit);
                    // refused on a size line: no more than `limit` data bytes came before it
                    let (before, _, _) = decode(&input[..at]).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    prop_assert!(before.len() as u64 <= limit);
                    prop_assert_eq!(input[at], b'\r', "refused where the size digits end");
                    prop_assert!(hex::digit(input[at - 1]).is_some());
                }
            }
        }

        #[test]
        fn arbitrary_input_never_panics(
            input in proptest::collection::vec(any::<u8>(), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let whole = decode(&input);
            prop_assert_eq!(decode_split(&input, &cuts), whole.clone());
            prop_assert_eq!(bytewise(&input), whole);
        }

        #[test]
        fn framing_like_input_same_whole_or_bytewise(
            parts in proptest::collection::vec(prop_oneof![
                Just(&b"\r\n"[..]), Just(&b"\r"[..]), Just(&b"\n"[..]), Just(&b"0"[..]), Just(&b"5"[..]),
                Just(&b"f"[..]), Just(&b";x=1"[..]), Just(&b" "[..]), Just(&b"X: y"[..]), Just(&b"hello"[..]),
                Just(&b":"[..]), Just(&b"\t"[..]),
            ], 0..40),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let input = parts.concat();
            let whole = decode(&input);
            prop_assert_eq!(decode_split(&input, &cuts), whole.clone());
            prop_assert_eq!(bytewise(&input), whole);
        }
    }
}
