//! Arbitrary bytes through the secret masker: the first byte sets how many marks (1-4) are cut
//! from the front of the input and their lengths (second byte), the rest is the body, split into
//! pieces at positions taken from the third byte. No panics; streaming in pieces gives exactly
//! what masking the whole body at once gives (every occurrence of every mark of at least
//! `MIN_MARK` bytes replaced by `*`, overlaps included); no mark survives; the length never
//! changes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::redact::mask::{MASK_BYTE, MIN_MARK, Masker};

fn oneshot(marks: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    for m in marks.iter().filter(|m| m.len() >= MIN_MARK) {
        for i in 0..body.len().saturating_sub(m.len() - 1) {
            if &body[i..i + m.len()] == *m {
                out[i..i + m.len()].fill(MASK_BYTE);
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [n, lens, cuts, rest @ ..] = data else { return };
    let n = usize::from(n % 4) + 1;
    let mut marks: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    for k in 0..n {
        let len = usize::from((lens >> (2 * k)) & 3) + MIN_MARK + (k % 2) * 3;
        let Some(m) = rest.get(at..at + len) else { return };
        marks.push(m);
        at += len;
    }
    let body = &rest[at..];
    let Some(mut m) = Masker::new(marks.iter().copied()) else { return };
    let step = usize::from(*cuts % 17) + 1;
    let mut out = Vec::new();
    for piece in body.chunks(step) {
        m.feed(piece, &mut out);
    }
    m.finish(&mut out);
    assert_eq!(out.len(), body.len(), "the length changed");
    assert_eq!(out, oneshot(&marks, body), "streamed differs from one-shot");
    for mk in &marks {
        // (a mark holding `*` may be spelt anew by masking next to it)
        assert!(!out.windows(mk.len()).any(|w| w == *mk) || mk.contains(&MASK_BYTE));
    }
});
