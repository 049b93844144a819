//! Secret masking: the exact secret byte strings the gateway injected into one call's request
//! (its "marks", collected by `credentials::OutboundAuth::apply`) are replaced by `*` of the
//! same length wherever they appear in the response: header values ([`Masker::mask_in_place`])
//! and the streamed body ([`Masker::feed`] / [`Masker::finish`]).
//!
//! Same-length masking keeps a `Content-Length` valid and the body's framing unchanged.
//!
//! Streaming: a mark may be split across two upstream reads. `feed` writes everything except
//! the longest suffix of what it has seen that is a proper prefix of some mark (fewer bytes
//! than the longest mark); that suffix is held back and re-examined with the next piece, so
//! memory is bounded by the longest mark whatever the body. `finish` releases what is held.
//!
//! Marks shorter than [`MIN_MARK`] bytes are not masked: a 1-3 byte "secret" would mask every
//! occurrence of common text; credential values that short are not secrets worth the name.
//!
//! Cost: one `memchr::memmem` search per mark per piece, plus one copy of the piece into the
//! output (the relay writes from that buffer). A call whose proxy injects nothing builds no
//! masker at all. Hand-written because it is on the hot path and tiny; the table tests below
//! cover every split point of a mark across two pieces, and a property test checks the
//! streamed result against masking the whole body at once.
#![forbid(unsafe_code)]

use memchr::memmem;

/// The byte that replaces each byte of a mark.
pub const MASK_BYTE: u8 = b'*';
/// Marks shorter than this are ignored.
pub const MIN_MARK: usize = 4;

/// A streaming masker for one call.
pub struct Masker<'m> {
    finders: Vec<memmem::Finder<'m>>,
    /// The longest mark's length.
    max_len: usize,
    /// Unmasked bytes held back from the end of the previous piece (a possible mark start).
    pending: Vec<u8>,
    /// Ranges of `pending` (offsets into it) that belong to an occurrence found already, which
    /// began in bytes written before: they are written masked when released. (An occurrence
    /// wholly inside `pending` is found again in the next window.)
    pending_ranges: Vec<(usize, usize)>,
    /// Occurrences masked so far (body and headers).
    hits: u64,
    /// Scratch: ranges to mask in the current window.
    ranges: Vec<(usize, usize)>,
}

impl<'m> Masker<'m> {
    /// A masker for `marks` (duplicates and marks shorter than [`MIN_MARK`] dropped); `None`
    /// when nothing is left to mask.
    pub fn new<I>(marks: I) -> Option<Masker<'m>>
    where
        I: IntoIterator<Item = &'m [u8]>,
    {
        let mut finders: Vec<memmem::Finder<'m>> = Vec::new();
        for m in marks {
            if m.len() < MIN_MARK || finders.iter().any(|f| f.needle() == m) {
                continue;
            }
            // borrowed, not copied: the marks stay in their zeroizing buffers
            finders.push(memmem::Finder::new(m));
        }
        if finders.is_empty() {
            return None;
        }
        let max_len = finders.iter().map(|f| f.needle().len()).max().unwrap_or(0);
        Some(Masker {
            finders,
            max_len,
            pending: Vec::with_capacity(max_len),
            pending_ranges: Vec::new(),
            hits: 0,
            ranges: Vec::new(),
        })
    }

    /// Occurrences masked so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Masks every whole occurrence in `buf` (a header value), in place. Returns how many.
    pub fn mask_in_place(&mut self, buf: &mut [u8]) -> u64 {
        self.ranges.clear();
        find_all(&self.finders, buf, 0, &mut self.ranges);
        let n = self.ranges.len() as u64;
        for &(a, b) in &self.ranges {
            buf[a..b].fill(MASK_BYTE);
        }
        self.hits += n;
        n
    }

    /// Appends `data`, masked, to `out`, except a possible mark start at its end (held back).
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let seen = self.pending.len();
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(data);
        let window_len = out.len() - start;
        // occurrences over the unmasked window (pending bytes are kept unmasked)
        self.ranges.clear();
        find_all(&self.finders, &out[start..], 0, &mut self.ranges);
        // one ending inside the held bytes was whole in the previous window: counted then
        self.hits += self.ranges.iter().filter(|r| r.1 > seen).count() as u64;
        // occurrences that began in bytes already written and run into the held ones
        self.ranges.append(&mut self.pending_ranges);
        let hold = held_suffix(&self.finders, self.max_len, &out[start..]);
        let emit = window_len - hold;
        self.pending.clear();
        self.pending.extend_from_slice(&out[start + emit..]);
        // what of the held bytes is already known to be masked, exactly (not a prefix: an
        // occurrence may lie inside the held bytes, after bytes that belong to none)
        for &(a, b) in &self.ranges {
            if b > emit {
                self.pending_ranges.push((a.max(emit) - emit, b - emit));
            }
        }
        out.truncate(start + emit);
        let w = &mut out[start..];
        for &(a, b) in &self.ranges {
            let b = b.min(emit);
            if a < b {
                w[a..b].fill(MASK_BYTE);
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.pending);
        for &(a, b) in &self.pending_ranges {
            out[start + a..start + b].fill(MASK_BYTE);
        }
        self.pending.clear();
        self.pending_ranges.clear();
    }
}

/// Every occurrence of every mark in `hay` (offsets shifted by `base`), in `out`.
fn find_all(
    finders: &[memmem::Finder<'_>],
    hay: &[u8],
    base: usize,
    out: &mut Vec<(usize, usize)>,
) {
    for f in finders {
        let n = f.needle().len();
        // overlapping occurrences too (`find_iter` skips them): their union is masked
        let mut pos = 0;
        while let Some(at) = f.find(&hay[pos..]) {
            out.push((base + pos + at, base + pos + at + n));
            pos += at + 1;
        }
    }
}

/// The length of the longest suffix of `w` that is a proper prefix of some mark.
fn held_suffix(finders: &[memmem::Finder<'_>], max_len: usize, w: &[u8]) -> usize {
    let Some(&last) = w.last() else { return 0 };
    let top = (max_len - 1).min(w.len());
    for k in (1..=top).rev() {
        let tail = &w[w.len() - k..];
        if finders.iter().any(|f| {
            let m = f.needle();
            m.len() > k && m[k - 1] == last && &m[..k] == tail
        }) {
            return k;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Masks `body` in one go (the reference): every occurrence of every mark.
    fn oneshot(marks: &[&[u8]], body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        for m in marks.iter().filter(|m| m.len() >= MIN_MARK) {
            let mut i = 0;
            while i + m.len() <= body.len() {
                if &body[i..i + m.len()] == *m {
                    out[i..i + m.len()].fill(MASK_BYTE);
                }
                i += 1;
            }
        }
        out
    }

    fn streamed(marks: &[&[u8]], pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut m = Masker::new(marks.iter().copied()).expect("marks");
        let mut out = Vec::new();
        for p in pieces {
            m.feed(p, &mut out);
        }
        m.finish(&mut out);
        (out, m.hits())
    }

    #[test]
    fn no_marks_no_masker() {
        assert!(Masker::new(Vec::<&[u8]>::new()).is_none());
        assert!(
            Masker::new([&b"abc"[..]]).is_none(),
            "shorter than MIN_MARK"
        );
    }

    #[test]
    fn table() {
        let sk: &[u8] = b"sk-live-123";
        // (marks, pieces fed, output, occurrences counted)
        type Case<'a> = (&'a [&'a [u8]], &'a [&'a [u8]], &'a [u8], u64);
        let cases: &[Case<'_>] = &[
            (&[sk], &[b"no secret here"], b"no secret here", 0),
            (&[sk], &[b"tok=sk-live-123;"], b"tok=***********;", 1),
            (
                &[sk],
                &[b"sk-live-123sk-live-123"],
                b"**********************",
                2,
            ),
            // a prefix at the very end that never completes is released by finish
            (&[sk], &[b"abc sk-live"], b"abc sk-live", 0),
            (&[sk], &[b"abc sk-live", b"-12"], b"abc sk-live-12", 0),
            (&[sk], &[b"x sk-live-1", b"23 y"], b"x *********** y", 1),
            // one byte at a time
            (
                &[sk],
                &[
                    b"s", b"k", b"-", b"l", b"i", b"v", b"e", b"-", b"1", b"2", b"3",
                ],
                b"***********",
                1,
            ),
            // overlapping marks: both masked
            (
                &[b"abcdef", b"defghi"],
                &[b"xxabcdefghixx"],
                b"xx*********xx",
                2,
            ),
            (
                &[b"abcdef", b"defghi"],
                &[b"xxabcd", b"efghixx"],
                b"xx*********xx",
                2,
            ),
            // a mark inside a longer one
            (
                &[b"secret", b"my-secret-value"],
                &[b"=my-secret-value="],
                b"=***************=",
                2,
            ),
            // self-overlapping mark
            (&[b"aaaa"], &[b"aaaaaa"], b"******", 3),
            (&[b"aaaa"], &[b"aa", b"a", b"aaa"], b"******", 3),
            // empty pieces change nothing
            (&[sk], &[b"", b"sk-live-123", b""], b"***********", 1),
            // a whole short mark inside the held prefix of a longer one: only its own bytes
            // are masked (found by the `mask` fuzz target in the CI smoke run)
            (
                &[b"xabcdefg", b"bcde"],
                &[b"--xabcdef", b"Z"],
                b"--xa****fZ",
                1,
            ),
            (
                &[b"xabcdefg", b"bcde"],
                &[b"--xabcdef", b"gZ"],
                b"--********Z",
                2,
            ),
        ];
        for (i, (marks, pieces, want, hits)) in cases.iter().enumerate() {
            let (got, n) = streamed(marks, pieces);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "case {i}"
            );
            assert_eq!(n, *hits, "case {i} hits");
        }
    }

    #[test]
    fn every_split_point_of_a_secret() {
        let marks: &[&[u8]] = &[b"Bearer-tok-0123456789", b"dXNlcjpwYXNz"];
        for m in marks {
            let mut body = b"{\"echo\":\"".to_vec();
            body.extend_from_slice(m);
            body.extend_from_slice(b"\"}");
            let want = oneshot(marks, &body);
            assert!(!want.windows(m.len()).any(|w| w == *m));
            for cut in 0..=body.len() {
                let (got, hits) = streamed(marks, &[&body[..cut], &body[cut..]]);
                assert_eq!(got, want, "split at {cut}");
                assert_eq!(hits, 1, "split at {cut}");
            }
            for a in 0..=body.len() {
                for b in a..=body.len() {
                    let (got, _) = streamed(marks, &[&body[..a], &body[a..b], &body[b..]]);
                    assert_eq!(got, want, "splits at {a},{b}");
                }
            }
        }
    }

    #[test]
    fn holds_back_at_most_the_longest_mark() {
        let mut m = Masker::new([&b"0123456789"[..]]).expect("marks");
        let mut out = Vec::new();
        m.feed(b"aaaa012345678", &mut out);
        assert_eq!(out, b"aaaa");
        out.clear();
        m.feed(&[b'x'; 1000], &mut out);
        assert_eq!(out.len(), 1009);
    }

    #[test]
    fn headers_in_place() {
        let mut m = Masker::new([&b"tok-123456"[..]]).expect("marks");
        let mut v = b"https://x/cb?key=tok-123456&a=tok-123456".to_vec();
        assert_eq!(m.mask_in_place(&mut v), 2);
        assert_eq!(&v[..], b"https://x/cb?key=**********&a=**********");
        assert_eq!(m.hits(), 2);
    }

    proptest! {
        #[test]
        fn streamed_equals_oneshot(
            body in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), any::<u8>()], 0..300),
            m1 in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 4..9),
            m2 in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 4..7),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let marks: [&[u8]; 2] = [&m1, &m2];
            let want = oneshot(&marks, &body);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&body[at..c]);
                at = c;
            }
            pieces.push(&body[at..]);
            let (got, _) = streamed(&marks, &pieces);
            prop_assert_eq!(got, want);
        }
    }
}
