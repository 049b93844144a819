//! The upstream's response: head (strictly parsed, 1xx skipped, `upstream_timeout` until the
//! head), the plan for the agent's answer (framing, redactor), and one relay loop that streams
//! the body to the agent chunk by chunk through one bounded buffer, redacting on the way when
//! the plan says so.
use super::conn::UpConn;
use crate::config::Redaction;
use crate::error::Refusal;
use crate::http::body::consume;
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK};
use crate::http::head::{BodyKind, Limits, ResponseHead, Version, find_header, parse_response};
use crate::http::io::{IoFail, read_append, write_all, write_range};
use crate::http::write::{Framing, push_chunk};
use crate::mcp::lists::ListFilter;
use crate::net::agent_io::AgentIo;
use crate::redact::mask::Masker;
use crate::redact::usage::Readings;
use crate::redact::{self, response::ResponseRedactor};
use std::time::{Duration, Instant};

/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for streaming bodies; also the most a body chunk waits in the gateway.
pub const STREAM_BUF: usize = 64 * 1024;
const RESPONSE_LIMITS: Limits = Limits {
    max_head: MAX_RESPONSE_HEAD,
    max_headers: 256,
};

#[derive(Debug)]
pub enum HeadFail {
    /// The connection closed (or reset) before a single response byte: a pooled connection
    /// may be retried on a fresh one.
    ClosedEarly,
    Refused(Refusal),
}

/// Reads the response head into `ubuf` (which may hold more than the head afterwards).
pub async fn read_head(
    conn: &mut UpConn,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    method_is_head: bool,
    deadline: Instant,
) -> Result<(), HeadFail> {
    ubuf.clear();
    let mut any = false;
    loop {
        if !ubuf.is_empty() {
            match parse_response(ubuf, &RESPONSE_LIMITS, method_is_head, resp) {
                Ok(true) if (100..200).contains(&resp.status) => {
                    if resp.status == 101 {
                        return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                            "upstream switched protocols",
                        )));
                    }
                    // interim response: the agent's Expect was answered by the gateway already
                    consume(ubuf, resp.head_len);
                    continue;
                }
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(reason = e.message(), "invalid upstream response head");
                    return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                        "invalid response head from upstream",
                    )));
                }
            }
        }
        match read_append(conn, ubuf, STREAM_BUF, deadline).await {
            Ok(0) if !any => return Err(HeadFail::ClosedEarly),
            Ok(0) => {
                return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                    "upstream closed the connection mid-head",
                )));
            }
            Ok(_) => any = true,
            Err(IoFail::Timeout) => return Err(HeadFail::Refused(Refusal::UpstreamTimeout)),
            Err(IoFail::Io) if !any => return Err(HeadFail::ClosedEarly),
            Err(IoFail::Io) => {
                return Err(HeadFail::Refused(Refusal::UpstreamUnreachable(
                    "upstream connection failed mid-head",
                )));
            }
        }
    }
}

/// The upstream's Content-Length header value, for HEAD and 304 answers that carry one.
pub fn content_length(resp: &ResponseHead, src: &[u8]) -> Option<u64> {
    resp.headers
        .iter()
        .find(|h| h.name.get(src).eq_ignore_ascii_case(b"content-length"))
        .and_then(|h| std::str::from_utf8(h.value.get(src)).ok()?.parse().ok())
}

/// How streaming the body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Body complete; the upstream connection may be reused.
    Reusable,
    /// Body complete, but the upstream connection must be closed.
    Complete,
    /// The upstream failed mid-body: the agent's response is cut (connection closed).
    UpstreamFailed,
    /// The agent went away.
    AgentGone,
}

pub struct StreamIo<'a> {
    pub conn: &'a mut UpConn,
    pub client: &'a mut AgentIo,
    /// Holds the response head at `[..head_len]` and whatever body bytes came with it.
    pub ubuf: &'a mut Vec<u8>,
    /// Holds the agent's response head (already built); body bytes are appended to it.
    pub out: &'a mut Vec<u8>,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub bytes_out: &'a mut u64,
}

/// What the agent gets: the upstream's body framing, the agent's, and the redactor (if the
/// proxy redacts this kind of body). Decided from the response head before anything is sent.
pub struct Plan<'p> {
    /// The upstream's framing (`None` when the answer has no body: HEAD, 204, 304).
    pub kind: BodyKind,
    /// The agent's framing.
    pub framing: Framing,
    pub redactor: Option<ResponseRedactor<'p>>,
    /// The redactor inflates the body: the agent's head drops `Content-Encoding`.
    pub drop_encoding: bool,
    /// The redactor only reads (budgets' values, nothing removed or masked): the body goes out
    /// as it came, with its framing and encoding.
    pub observe: bool,
}

/// Plans the response for `resp` (in `ubuf`). A body the proxy would redact but whose
/// encoding the redactor cannot undo is refused; so is a content-encoded body when the call
/// injected a secret (`masking`) and the redactor does not decode it: the request asked for
/// `Accept-Encoding: identity`, and an encoded body could carry the secret past the masker.
pub fn plan<'p>(
    resp: &ResponseHead,
    ubuf: &[u8],
    redaction: Option<&'p Redaction>,
    method_is_head: bool,
    version: Version,
    masking: bool,
    filtering: bool,
) -> Result<Plan<'p>, Refusal> {
    let status = resp.status;
    let no_body = method_is_head || status == 204 || status == 304;
    let coding = content_coding(resp, ubuf);
    let mut redactor = None;
    let mut drop_encoding = false;
    let observe = redaction.is_some_and(|r| !r.program.rewrites());
    if let Some(r) = redaction
        && !no_body
        && let Some(bt) = header(resp, ubuf, b"content-type").and_then(redact::response::body_type)
    {
        let enc = match coding {
            Coding::Identity => redact::response::encoding(None),
            Coding::One(c) => redact::response::encoding(Some(c)),
            Coding::Stacked => None,
        };
        match enc {
            Some(enc) => {
                drop_encoding = !observe && enc != redact::response::Encoding::Identity;
                redactor = Some(ResponseRedactor::new(&r.program, bt, enc, r.on_invalid));
            }
            // only reading (budgets): a body that cannot be decoded is not read
            None if observe => {}
            None => {
                return Err(Refusal::UpstreamUnreachable(
                    "the upstream response is encoded in a way that cannot be redacted",
                ));
            }
        }
    }
    let rewriting = redactor.is_some() && !observe;
    if filtering && !no_body && !rewriting && coding != Coding::Identity {
        return Err(Refusal::UpstreamUnreachable(
            "the MCP list answer is content-encoded although identity was asked for; it cannot be filtered",
        ));
    }
    if masking && !no_body && !rewriting && coding != Coding::Identity {
        return Err(Refusal::UpstreamUnreachable(
            "the upstream response is content-encoded although identity was asked for; it cannot be checked for the injected secret",
        ));
    }
    let framing = framing(
        if no_body { None } else { Some(resp.body) },
        rewriting || filtering,
        version,
        || {
            (status != 204)
                .then(|| content_length(resp, ubuf))
                .flatten()
        },
    );
    Ok(Plan {
        kind: if no_body { BodyKind::None } else { resp.body },
        framing,
        redactor,
        drop_encoding,
        observe,
    })
}

/// A response's content coding, all `Content-Encoding` field lines combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding<'a> {
    /// Nothing but `identity` (or nothing) is listed.
    Identity,
    /// Exactly one coding.
    One(&'a [u8]),
    /// Stacked codings (`gzip` + `gzip`): nothing here decodes them.
    Stacked,
}

/// The response's content coding, all `Content-Encoding` field lines combined (RFC 9110
/// §5.3: repeated lines are one comma-separated list).
pub fn content_coding<'a>(resp: &ResponseHead, src: &'a [u8]) -> Coding<'a> {
    let mut found = None;
    for h in &resp.headers {
        if !h.name.get(src).eq_ignore_ascii_case(b"content-encoding") {
            continue;
        }
        for c in h.value.get(src).split(|b| *b == b',') {
            let c = c.trim_ascii();
            if c.is_empty() || c.eq_ignore_ascii_case(b"identity") {
                continue;
            }
            if found.replace(c).is_some() {
                return Coding::Stacked;
            }
        }
    }
    found.map_or(Coding::Identity, Coding::One)
}

/// Masks the call's injected secrets in the response head held in `ubuf` (the reason phrase
/// and every header value), in place and same-length, so the parsed spans stay valid.
/// Returns how many were masked.
pub fn mask_head(resp: &ResponseHead, ubuf: &mut [u8], masker: &mut Masker<'_>) -> u64 {
    let mut n = 0;
    let spans = std::iter::once(resp.reason).chain(resp.headers.iter().map(|h| h.value));
    for sp in spans {
        if let Some(v) = ubuf.get_mut(sp.start as usize..sp.end as usize) {
            n += masker.mask_in_place(v);
        }
    }
    n
}

/// The agent's framing for an upstream body of `kind` (`None`: the answer has no body),
/// redacted or not, to an agent speaking `version`. `no_body_length` is the Content-Length
/// repeated on a bodiless answer.
pub fn framing(
    kind: Option<BodyKind>,
    redacted: bool,
    version: Version,
    no_body_length: impl FnOnce() -> Option<u64>,
) -> Framing {
    let http11 = version == Version::Http11;
    match kind {
        None => Framing::NoBody(no_body_length()),
        Some(_) if redacted && http11 => Framing::Chunked,
        Some(_) if redacted => Framing::Close,
        Some(BodyKind::None) => Framing::Length(0),
        Some(BodyKind::Length(n)) => Framing::Length(n),
        Some(BodyKind::Chunked | BodyKind::CloseDelimited) if http11 => Framing::Chunked,
        Some(BodyKind::Chunked | BodyKind::CloseDelimited) => Framing::Close,
    }
}

/// The agent's side of the relay: the optional transform (redaction), the agent's framing,
/// and the writes. Everything the relay loop hands it goes through `push` (transform, frame,
/// no I/O) and `flush` (write what is framed).
struct Sink<'a, 'r> {
    client: &'a mut AgentIo,
    /// The agent's response head first, then framed body bytes waiting to be written.
    out: &'a mut Vec<u8>,
    bytes_out: &'a mut u64,
    write_timeout: Duration,
    chunked: bool,
    redactor: Option<&'a mut ResponseRedactor<'r>>,
    /// The redactor only reads: its output is dropped and the body goes out as it came.
    observe: bool,
    /// The budgets' readings, fed from the redactor's captures after every piece.
    readings: Option<&'a mut Readings<'r>>,
    /// The transform's output for one piece.
    red: Vec<u8>,
    /// Masks the call's injected secrets (after the redactor: it sees decoded bytes).
    masker: Option<&'a mut Masker<'r>>,
    /// The masker's output for one piece (chunked framing only).
    masked: Vec<u8>,
    /// MCP list answers filtered per caller (after the redactor, before the masker).
    lists: Option<&'a mut ListFilter<'r>>,
    /// The list filter's output for one piece.
    listed: Vec<u8>,
}

impl Sink<'_, '_> {
    /// Frames `data` into `out`, through the list filter and the masker if any.
    fn frame(&mut self, data: &[u8]) {
        if let Some(l) = self.lists.as_deref_mut() {
            let mut listed = std::mem::take(&mut self.listed);
            listed.clear();
            l.feed(data, &mut listed);
            self.frame_out(&listed);
            self.listed = listed;
            return;
        }
        self.frame_out(data);
    }

    /// Frames `data` into `out`, through the masker if any.
    fn frame_out(&mut self, data: &[u8]) {
        match self.masker.as_deref_mut() {
            None if self.chunked => push_chunk(self.out, data),
            None => self.out.extend_from_slice(data),
            Some(m) if self.chunked => {
                self.masked.clear();
                m.feed(data, &mut self.masked);
                push_chunk(self.out, &self.masked);
            }
            Some(m) => m.feed(data, self.out),
        }
    }

    /// Hands the values the engine read to the budgets' readings.
    fn drain(&mut self) {
        if let (Some(rd), Some(r)) = (self.readings.as_deref_mut(), self.redactor.as_deref_mut()) {
            rd.drain(|caps| r.take_captures(caps));
        }
    }

    /// Reads `data` (or, at the end, what is held) without changing what goes out: the
    /// redactor's output is dropped. A body that cannot be decoded stops being read (the value
    /// is what was read before).
    fn observe(&mut self, data: Option<&[u8]>) {
        let Some(r) = self.redactor.as_deref_mut() else {
            return;
        };
        let mut red = std::mem::take(&mut self.red);
        let ok = match data {
            Some(data) => {
                let mut pos = 0;
                let mut ok = true;
                while pos < data.len() {
                    red.clear();
                    match r.feed_some(&data[pos..], &mut red) {
                        Ok(n) => pos += n,
                        Err(_) => {
                            ok = false;
                            break;
                        }
                    }
                }
                ok
            }
            None => {
                red.clear();
                r.finish(&mut red).is_ok()
            }
        };
        red.clear();
        self.red = red;
        self.drain();
        if !ok {
            tracing::debug!("budget values: the response body cannot be read further");
            self.redactor = None;
        }
    }

    /// Transforms (if redacting) and frames `data` into `out`. A redaction error writes what
    /// is already framed and cuts the response.
    async fn push(&mut self, data: &[u8]) -> Result<(), StreamEnd> {
        if self.observe {
            self.observe(Some(data));
            self.frame(data);
            return Ok(());
        }
        match self.redactor.as_deref_mut() {
            None => self.frame(data),
            Some(_) => {
                // bounded steps: what one step inflated and redacted is written before the
                // next (a compression bomb costs time, never memory)
                let mut pos = 0;
                loop {
                    let mut red = std::mem::take(&mut self.red);
                    red.clear();
                    let step = match self.redactor.as_deref_mut() {
                        Some(r) => r.feed_some(&data[pos..], &mut red),
                        None => Ok(data.len() - pos),
                    };
                    let n = match step {
                        Ok(n) => n,
                        Err(e) => {
                            self.red = red;
                            tracing::warn!(error = %e, "response redaction failed: cutting the response");
                            return Err(self.cut().await);
                        }
                    };
                    pos += n;
                    self.frame(&red);
                    self.red = red;
                    self.drain();
                    if pos >= data.len() {
                        break;
                    }
                    self.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// Writes what is framed.
    async fn flush(&mut self) -> Result<(), StreamEnd> {
        if self.out.is_empty() {
            return Ok(());
        }
        *self.bytes_out += self.out.len() as u64;
        write_all(self.client, self.out, self.write_timeout)
            .await
            .map_err(|_| StreamEnd::AgentGone)
    }

    /// Passes one whole upstream read on: straight from `buf` when nothing needs changing (no
    /// transform, no re-framing, nothing pending), else through `push` and `flush`.
    async fn forward(&mut self, buf: &mut Vec<u8>) -> Result<(), StreamEnd> {
        if self.observe {
            self.observe(Some(buf));
        }
        if (self.redactor.is_none() || self.observe)
            && self.masker.is_none()
            && self.lists.is_none()
            && !self.chunked
            && self.out.is_empty()
        {
            let len = buf.len();
            *self.bytes_out += len as u64;
            return write_range(self.client, buf, 0..len, self.write_timeout)
                .await
                .map_err(|_| StreamEnd::AgentGone);
        }
        self.push(buf).await?;
        self.flush().await
    }

    /// The end of the body: what the transform held back, the last chunk, the last write.
    async fn finish(&mut self) -> Result<(), StreamEnd> {
        if self.observe {
            self.observe(None);
        } else if let Some(r) = self.redactor.as_deref_mut() {
            let mut red = std::mem::take(&mut self.red);
            red.clear();
            if let Err(e) = r.finish(&mut red) {
                self.red = red;
                tracing::warn!(error = %e, "response redaction failed: cutting the response");
                return Err(self.cut().await);
            }
            self.frame(&red);
            self.red = red;
            self.drain();
        }
        if let Some(l) = self.lists.as_deref_mut() {
            // what the list filter held (a JSON answer is held whole)
            let mut listed = std::mem::take(&mut self.listed);
            listed.clear();
            l.finish(&mut listed);
            self.frame_out(&listed);
            self.listed = listed;
        }
        if let Some(m) = self.masker.as_deref_mut() {
            // what the masker held back (a possible secret start that never completed)
            if self.chunked {
                self.masked.clear();
                m.finish(&mut self.masked);
                push_chunk(self.out, &self.masked);
            } else {
                m.finish(self.out);
            }
        }
        if self.chunked {
            self.out.extend_from_slice(LAST_CHUNK);
        }
        self.flush().await
    }

    /// Writes what is framed (best effort) before the response is cut.
    async fn cut(&mut self) -> StreamEnd {
        let _ = self.flush().await;
        StreamEnd::UpstreamFailed
    }
}

/// Writes the agent's head (already in `io.out`) and relays the body: decoded from the
/// upstream's framing (`kind`), passed through `redactor` if any, framed for the agent
/// (`framing`), with the call's injected secrets masked (`masker`, after the redactor). One
/// loop for plain, redacted and masked bodies.
/// What reads or rewrites the body on its way: the redactor (which also reads the budgets'
/// values), whether it only reads (`Plan::observe`), and the readings it feeds.
pub struct BodyRead<'a, 'r> {
    pub redactor: Option<&'a mut ResponseRedactor<'r>>,
    pub observe: bool,
    pub readings: Option<&'a mut Readings<'r>>,
    /// MCP list answers filtered per caller.
    pub lists: Option<&'a mut ListFilter<'r>>,
}

pub async fn relay<'r>(
    io: StreamIo<'_>,
    head_len: usize,
    kind: BodyKind,
    framing: Framing,
    body: BodyRead<'_, 'r>,
    masker: Option<&mut Masker<'r>>,
) -> StreamEnd {
    let BodyRead {
        redactor,
        observe,
        readings,
        lists,
    } = body;
    let StreamIo {
        conn,
        client,
        ubuf,
        out,
        read_timeout,
        write_timeout,
        bytes_out,
    } = io;
    let mut sink = Sink {
        client,
        out,
        bytes_out,
        write_timeout,
        chunked: framing == Framing::Chunked,
        red: Vec::with_capacity(if redactor.is_some() { STREAM_BUF } else { 0 }),
        redactor,
        observe,
        readings,
        masked: Vec::new(),
        masker,
        lists,
        listed: Vec::new(),
    };
    match relay_body(conn, ubuf, head_len, kind, read_timeout, &mut sink).await {
        Ok(end) | Err(end) => end,
    }
}

fn reusable_unless(extra: bool) -> StreamEnd {
    if extra {
        StreamEnd::Complete
    } else {
        StreamEnd::Reusable
    }
}

/// The relay loop: decodes the upstream's framing and hands the sink every piece.
async fn relay_body(
    conn: &mut UpConn,
    ubuf: &mut Vec<u8>,
    head_len: usize,
    kind: BodyKind,
    read_timeout: Duration,
    sink: &mut Sink<'_, '_>,
) -> Result<StreamEnd, StreamEnd> {
    let deadline = || crate::util::clock::now() + read_timeout;
    match kind {
        BodyKind::None => {
            let extra = ubuf.len() > head_len;
            sink.finish().await?;
            Ok(reusable_unless(extra))
        }
        BodyKind::Length(n) => {
            let avail = (ubuf.len() - head_len) as u64;
            let first = avail.min(n) as usize;
            let mut extra = avail > n;
            let mut remaining = n - first as u64;
            // the head and the first body bytes in one write
            sink.push(&ubuf[head_len..head_len + first]).await?;
            sink.flush().await?;
            while remaining > 0 {
                ubuf.clear();
                // a full buffer, not just what is due: bytes beyond the body show up here
                // (and the connection is not reused) instead of waiting for the next caller
                match read_append(conn, ubuf, STREAM_BUF, deadline()).await {
                    Ok(0) | Err(_) => return Err(StreamEnd::UpstreamFailed),
                    Ok(got) => {
                        if got as u64 > remaining {
                            ubuf.truncate(remaining as usize);
                            extra = true;
                        }
                        remaining -= ubuf.len() as u64;
                        sink.forward(ubuf).await?;
                    }
                }
            }
            sink.finish().await?;
            Ok(reusable_unless(extra))
        }
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::new();
            consume(ubuf, head_len);
            loop {
                let mut pos = 0;
                loop {
                    let step = match dec.step(&ubuf[pos..]) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(
                                reason = e.message(),
                                "invalid chunked body from upstream"
                            );
                            return Err(sink.cut().await);
                        }
                    };
                    sink.push(&ubuf[pos + step.data.start..pos + step.data.end])
                        .await?;
                    pos += step.consumed;
                    if step.done {
                        let extra = pos < ubuf.len();
                        sink.finish().await?;
                        return Ok(reusable_unless(extra));
                    }
                    if step.consumed == 0 {
                        break;
                    }
                }
                // everything decoded so far goes out now: events are not held back
                sink.flush().await?;
                consume(ubuf, pos);
                match read_append(conn, ubuf, STREAM_BUF, deadline()).await {
                    Ok(0) | Err(_) => return Err(StreamEnd::UpstreamFailed),
                    Ok(_) => {}
                }
            }
        }
        BodyKind::CloseDelimited => {
            sink.push(&ubuf[head_len..]).await?;
            sink.flush().await?;
            loop {
                ubuf.clear();
                match read_append(conn, ubuf, STREAM_BUF, deadline()).await {
                    Ok(0) => {
                        sink.finish().await?;
                        return Ok(StreamEnd::Complete);
                    }
                    Err(_) => return Err(StreamEnd::UpstreamFailed),
                    Ok(_) => sink.forward(ubuf).await?,
                }
            }
        }
    }
}

/// A response header's value (the first one named `name`).
pub fn header<'a>(resp: &ResponseHead, src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    find_header(&resp.headers, src, name)
}
