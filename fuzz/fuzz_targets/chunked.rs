//! The chunked decoder on arbitrary bytes, split in two at a position taken from the first
//! byte: no panics, data ranges within the consumed input, and the same body / consumed count /
//! completion / error as decoding the whole input in one piece.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::http::chunked::{ChunkedDecoder, ChunkedError};

type Outcome = Result<(Vec<u8>, usize, bool), ChunkedError>;

/// Decodes `input` as a caller would when its bytes arrive in two reads, the first ending at `split`.
fn decode(input: &[u8], split: usize) -> Outcome {
    let mut dec = ChunkedDecoder::new();
    let mut body = Vec::new();
    let (mut pos, mut avail) = (0, split.min(input.len()));
    loop {
        let window = &input[pos..avail];
        let step = dec.step(window)?;
        assert!(step.consumed <= window.len(), "consumed past the input");
        assert!(
            step.data.start <= step.data.end && step.data.end <= step.consumed,
            "data outside consumed: {step:?}"
        );
        body.extend_from_slice(&window[step.data.clone()]);
        pos += step.consumed;
        assert_eq!(step.done, dec.is_done());
        if step.done {
            return Ok((body, pos, true));
        }
        if step.consumed == 0 {
            if avail == input.len() {
                return Ok((body, pos, false));
            }
            avail = input.len();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(first) % (input.len() + 1);
    assert_eq!(decode(input, split), decode(input, input.len()));
});
