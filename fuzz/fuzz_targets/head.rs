//! Arbitrary bytes into the request and response head parsers: no panics, and every span of a
//! complete head lies within `head_len <= data.len()` (and within `max_head`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::internals::http::head::{
    Limits, RequestHead, ResponseHead, Span, parse_request, parse_response,
};

fn check(spans: impl IntoIterator<Item = Span>, head_len: usize) {
    for s in spans {
        assert!(
            s.start <= s.end && s.end as usize <= head_len,
            "span {s:?} outside head of {head_len}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut req = RequestHead::default();
    let mut resp = ResponseHead::default();
    // roomy limits, then tight ones so the size/count paths run too
    let tight = Limits {
        max_head: data.len() / 2 + 1,
        max_headers: 2,
    };
    for limits in [
        Limits {
            max_head: 64 * 1024,
            max_headers: 128,
        },
        tight,
    ] {
        match parse_request(data, &limits, &mut req) {
            Ok(true) => {
                let n = req.head_len;
                assert!(n <= data.len() && n <= limits.max_head);
                assert!(!req.method.is_empty() && !req.target.is_empty());
                check(
                    [req.method, req.target]
                        .into_iter()
                        .chain(req.host)
                        .chain(req.connection),
                    n,
                );
                check(req.headers.iter().flat_map(|h| [h.name, h.value]), n);
                // the head alone parses the same (bytes after it are never looked at)
                let mut again = RequestHead::default();
                assert_eq!(parse_request(&data[..n], &limits, &mut again), Ok(true));
                assert_eq!(
                    (again.head_len, again.body, again.headers.len()),
                    (n, req.body, req.headers.len())
                );
            }
            Ok(false) => assert!(data.len() < limits.max_head),
            Err(_) => {}
        }
        for was_head in [false, true] {
            match parse_response(data, &limits, was_head, &mut resp) {
                Ok(true) => {
                    let n = resp.head_len;
                    assert!(n <= data.len() && n <= limits.max_head);
                    assert!((100..=999).contains(&resp.status));
                    check(std::iter::once(resp.reason).chain(resp.connection), n);
                    check(resp.headers.iter().flat_map(|h| [h.name, h.value]), n);
                }
                Ok(false) => assert!(data.len() < limits.max_head),
                Err(_) => {}
            }
        }
    }
});
