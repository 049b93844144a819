//! Redaction of one upstream response body: picks the JSON or SSE redactor from the
//! `Content-Type`, undoes a `gzip`/`deflate` `Content-Encoding` first (upstreams are asked for
//! `identity`, but some compress anyway), and turns each piece of body into redacted bytes.
//! Sans-io like the redactors: the caller feeds the decoded (de-chunked) body as it arrives.
use super::{JsonRedactor, Limits, OnInvalid, RedactError, RedactProgram, SseRedactor};
use std::io::Write;

/// Decompressed bytes are produced from at most this much compressed input at a time, which
/// bounds what one step can inflate to (a compression bomb costs time, not memory).
/// Compressed bytes inflated at a time: deflate expands at most ~1032:1, so one step yields at
/// most ~132 KiB (a compression bomb costs time, never memory).
const INFLATE_STEP: usize = 128;
/// `feed_some` returns once its output holds this much (the caller writes it, then goes on).
pub const OUT_STEP: usize = 64 * 1024;

/// What kind of body a response has, for redaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Sse,
}

/// `Content-Type` value → whether (and how) it is redacted: `application/json`, any `+json`
/// type, and `text/event-stream`.
pub fn body_type(content_type: &[u8]) -> Option<BodyType> {
    let media = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if media.eq_ignore_ascii_case(b"application/json")
        || (media.len() > 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json"))
    {
        Some(BodyType::Json)
    } else if media.eq_ignore_ascii_case(b"text/event-stream") {
        Some(BodyType::Sse)
    } else {
        None
    }
}

/// A `Content-Encoding` the redactor can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

/// `Content-Encoding` value → the encoding, or `None` for one that cannot be undone (br, zstd,
/// stacked encodings...), in which case the body cannot be redacted.
pub fn encoding(value: Option<&[u8]>) -> Option<Encoding> {
    let Some(v) = value else {
        return Some(Encoding::Identity);
    };
    let v = v.trim_ascii();
    if v.is_empty() || v.eq_ignore_ascii_case(b"identity") {
        Some(Encoding::Identity)
    } else if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") {
        Some(Encoding::Gzip)
    } else if v.eq_ignore_ascii_case(b"deflate") {
        Some(Encoding::Deflate)
    } else {
        None
    }
}

enum Inflate {
    None,
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
}

enum Redactor<'p> {
    Json(JsonRedactor<'p>),
    Sse(SseRedactor<'p>),
}

/// Why a body could not be redacted (the response is cut).
#[derive(Debug)]
pub enum BodyError {
    Redact(RedactError),
    Inflate(std::io::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Redact(e) => write!(f, "{e:?}"),
            BodyError::Inflate(e) => write!(f, "cannot decompress the upstream body: {e}"),
        }
    }
}

/// The redaction of one response body.
pub struct ResponseRedactor<'p> {
    inflate: Inflate,
    redactor: Redactor<'p>,
    plain: Vec<u8>,
    /// Whether any body byte arrived: an empty body (`Content-Length: 0`, the 202 an MCP server
    /// sends) has nothing to redact and is not invalid JSON.
    seen: bool,
}

impl<'p> ResponseRedactor<'p> {
    pub fn new(
        prog: &'p RedactProgram,
        body: BodyType,
        enc: Encoding,
        on_invalid: OnInvalid,
    ) -> ResponseRedactor<'p> {
        let limits = Limits::default();
        ResponseRedactor {
            inflate: match enc {
                Encoding::Identity => Inflate::None,
                Encoding::Gzip => Inflate::Gzip(flate2::write::GzDecoder::new(Vec::new())),
                Encoding::Deflate => Inflate::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            },
            redactor: match body {
                BodyType::Json => Redactor::Json(JsonRedactor::new(prog, limits, on_invalid)),
                BodyType::Sse => Redactor::Sse(SseRedactor::new(
                    prog,
                    limits,
                    on_invalid,
                    super::DEFAULT_MAX_EVENT,
                )),
            },
            plain: Vec::new(),
            seen: false,
        }
    }

    fn redact(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        match &mut self.redactor {
            Redactor::Json(r) => r.feed(data, out),
            Redactor::Sse(r) => r.feed(data, out),
        }
        .map_err(BodyError::Redact)
    }

    /// Redacts the next piece of (de-chunked, possibly compressed) body into `out`. Holds the
    /// whole output: the relay uses [`ResponseRedactor::feed_some`], which bounds it (tests use
    /// this one).
    #[cfg(test)]
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        let mut pos = 0;
        while pos < data.len() {
            pos += self.feed_some(&data[pos..], out)?;
        }
        Ok(())
    }

    /// Redacts a prefix of `data` into `out` and returns its length: it stops once `out`
    /// holds [`OUT_STEP`] bytes or more (a compressed body inflates in steps of
    /// `INFLATE_STEP` input bytes), so the caller writes `out` and calls again with the rest.
    /// Consumes all of an empty or uncompressed `data`.
    pub fn feed_some(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        self.seen |= !data.is_empty();
        if matches!(self.inflate, Inflate::None) {
            self.redact(data, out)?;
            return Ok(data.len());
        }
        let start = out.len();
        let mut used = 0;
        for piece in data.chunks(INFLATE_STEP) {
            used += piece.len();
            let res = match &mut self.inflate {
                Inflate::Gzip(d) => d.write_all(piece).and_then(|_| d.flush()),
                Inflate::Deflate(d) => d.write_all(piece).and_then(|_| d.flush()),
                Inflate::None => Ok(()),
            };
            res.map_err(BodyError::Inflate)?;
            self.take_plain();
            let plain = std::mem::take(&mut self.plain);
            let r = self.redact(&plain, out);
            self.plain = plain;
            r?;
            if out.len() - start >= OUT_STEP {
                break;
            }
        }
        Ok(used)
    }

    fn take_plain(&mut self) {
        self.plain.clear();
        match &mut self.inflate {
            Inflate::Gzip(d) => std::mem::swap(d.get_mut(), &mut self.plain),
            Inflate::Deflate(d) => std::mem::swap(d.get_mut(), &mut self.plain),
            Inflate::None => {}
        }
    }

    /// The end of the body: whatever the redactor held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if !self.seen {
            return Ok(());
        }
        let res = match &mut self.inflate {
            Inflate::Gzip(d) => d.try_finish(),
            Inflate::Deflate(d) => d.try_finish(),
            Inflate::None => Ok(()),
        };
        res.map_err(BodyError::Inflate)?;
        self.take_plain();
        let plain = std::mem::take(&mut self.plain);
        self.redact(&plain, out)?;
        match &mut self.redactor {
            Redactor::Json(r) => r.finish(out),
            Redactor::Sse(r) => r.finish(out),
        }
        .map_err(BodyError::Redact)
    }

    /// Moves the values read at capture paths so far to `into`.
    pub fn take_captures(&mut self, into: &mut Vec<super::Captured>) {
        match &mut self.redactor {
            Redactor::Json(r) => r.take_captures(into),
            Redactor::Sse(r) => r.take_captures(into),
        }
    }

    /// Values removed or masked so far.
    pub fn redactions(&self) -> u64 {
        match &self.redactor {
            Redactor::Json(r) => r.redactions(),
            Redactor::Sse(r) => r.redactions(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Action;

    #[test]
    fn content_types() {
        for (ct, want) in [
            (&b"application/json"[..], Some(BodyType::Json)),
            (b"Application/JSON; charset=utf-8", Some(BodyType::Json)),
            (b"application/problem+json", Some(BodyType::Json)),
            (b"application/vnd.api+JSON ;x=1", Some(BodyType::Json)),
            (b"text/event-stream", Some(BodyType::Sse)),
            (b"text/plain", None),
            (b"+json", None),
            (b"application/jsonx", None),
        ] {
            assert_eq!(body_type(ct), want, "{}", String::from_utf8_lossy(ct));
        }
        assert_eq!(encoding(None), Some(Encoding::Identity));
        assert_eq!(encoding(Some(b" GZIP ")), Some(Encoding::Gzip));
        assert_eq!(encoding(Some(b"deflate")), Some(Encoding::Deflate));
        assert_eq!(encoding(Some(b"br")), None);
        assert_eq!(encoding(Some(b"gzip, br")), None);
    }

    #[test]
    fn an_empty_body_passes_whatever_the_type_and_encoding() {
        let prog = RedactProgram::compile(&["$..ssn"], Action::Mask).unwrap();
        for (name, bt, enc) in [
            ("json", BodyType::Json, Encoding::Identity),
            ("sse", BodyType::Sse, Encoding::Identity),
            ("gzip json", BodyType::Json, Encoding::Gzip),
        ] {
            let mut r = ResponseRedactor::new(&prog, bt, enc, OnInvalid::Block);
            let mut out = Vec::new();
            r.feed(b"", &mut out).unwrap();
            assert!(r.finish(&mut out).is_ok(), "{name}");
            assert!(out.is_empty(), "{name}");
        }
        // a body that is not JSON is still refused
        let mut r =
            ResponseRedactor::new(&prog, BodyType::Json, Encoding::Identity, OnInvalid::Block);
        let mut out = Vec::new();
        let fed = r.feed(b"not json", &mut out);
        assert!(fed.is_err() || r.finish(&mut out).is_err());
    }

    #[test]
    fn gzip_body_is_inflated_then_redacted_in_any_pieces() {
        let prog = RedactProgram::compile(&["$..ssn"], Action::Mask).unwrap();
        let doc = br#"{"a":[{"ssn":"123-45-6789","n":1},{"ssn":"987-65-4321"}],"b":"x"}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(doc).unwrap();
        let compressed = gz.finish().unwrap();
        for split in [1, 7, 64, compressed.len()] {
            let mut r =
                ResponseRedactor::new(&prog, BodyType::Json, Encoding::Gzip, OnInvalid::Block);
            let mut out = Vec::new();
            for piece in compressed.chunks(split) {
                r.feed(piece, &mut out).unwrap();
            }
            r.finish(&mut out).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                r#"{"a":[{"ssn":"[REDACTED]","n":1},{"ssn":"[REDACTED]"}],"b":"x"}"#
            );
            assert_eq!(r.redactions(), 2);
        }
    }

    /// A compression bomb is inflated in bounded steps: each `feed_some` output stays within
    /// `OUT_STEP` plus one step's inflation, and the steps add up to the whole body.
    #[test]
    fn feed_some_bounds_what_a_bomb_inflates_per_step() {
        let prog = RedactProgram::compile(&["$..ssn"], Action::Remove).unwrap();
        let mut doc = b"{\"ssn\":1,".to_vec();
        doc.resize(doc.len() + (8 << 20), b' ');
        doc.extend_from_slice(b"\"x\":1}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&doc).unwrap();
        let compressed = gz.finish().unwrap();
        let mut r = ResponseRedactor::new(&prog, BodyType::Json, Encoding::Gzip, OnInvalid::Block);
        let (mut pos, mut total, mut steps, mut out) = (0, 0, 0, Vec::new());
        while pos < compressed.len() {
            out.clear();
            let n = r.feed_some(&compressed[pos..], &mut out).unwrap();
            assert!(n > 0, "progress");
            assert!(
                out.len() <= OUT_STEP + 1032 * INFLATE_STEP,
                "{} bytes in one step",
                out.len()
            );
            pos += n;
            total += out.len();
            steps += 1;
        }
        out.clear();
        r.finish(&mut out).unwrap();
        total += out.len();
        assert_eq!(total, doc.len() - b"\"ssn\":1,".len());
        assert!(
            steps >= (8 << 20) / (OUT_STEP + 1032 * INFLATE_STEP),
            "{steps} steps"
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let prog = RedactProgram::compile(&["$.x"], Action::Remove).unwrap();
        let mut r = ResponseRedactor::new(&prog, BodyType::Json, Encoding::Gzip, OnInvalid::Pass);
        let mut out = Vec::new();
        let fed = r.feed(b"this is not gzip at all", &mut out);
        assert!(fed.is_err() || r.finish(&mut out).is_err());
    }
}
