//! Query strings and percent-decoding, the one copy. Security-relevant: the rule trie's query
//! conditions and the outbound filter that drops an agent's copy of the credential's query
//! parameter must read a name the same way (`api%5Fkey` is `api_key` to both), so both decode
//! here. Lenient decoders keep a malformed escape as written (as the backends do); the strict
//! one (admin API parameters) refuses it.
use crate::util::hex;

/// The `name=value` pairs of a query (without its '?'), empty pieces skipped; a piece without
/// '=' has an empty value. Nothing is decoded.
pub fn pairs(q: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    q.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match memchr::memchr(b'=', p) {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &b""[..]),
        })
}

/// The bytes of `s` percent-decoded, lazily: `%XX` is a byte, a malformed escape stays as
/// written, and (form decoding) `+` is a space.
#[derive(Clone)]
pub struct Decoded<'a> {
    s: &'a [u8],
    i: usize,
    plus_is_space: bool,
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = *self.s.get(self.i)?;
        self.i += 1;
        match b {
            b'+' if self.plus_is_space => Some(b' '),
            b'%' => {
                let h = self.s.get(self.i).copied().and_then(hex::digit);
                let l = self.s.get(self.i + 1).copied().and_then(hex::digit);
                match (h, l) {
                    (Some(h), Some(l)) => {
                        self.i += 2;
                        Some(h << 4 | l)
                    }
                    _ => Some(b'%'),
                }
            }
            _ => Some(b),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space), lazily.
pub fn form_decoded(s: &[u8]) -> Decoded<'_> {
    Decoded {
        s,
        i: 0,
        plus_is_space: true,
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
pub fn form_decode(s: &[u8]) -> Vec<u8> {
    form_decoded(s).collect()
}

/// RFC 3986 percent-decoding (`+` stays `+`).
pub fn pct_decode(s: &[u8]) -> Vec<u8> {
    Decoded {
        s,
        i: 0,
        plus_is_space: false,
    }
    .collect()
}

/// Percent-decoding that refuses a malformed escape (`None`); `+` stays `+`.
pub fn pct_decode_strict(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            let h = hex::digit(*s.get(i + 1)?)?;
            let l = hex::digit(*s.get(i + 2)?)?;
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// Whether a raw query parameter name is `name` once form-decoded (no allocation).
pub fn form_name_is(raw: &[u8], name: &[u8]) -> bool {
    form_decoded(raw).eq(name.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_table() {
        // (name, input, form, pct, strict)
        type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8], Option<&'a [u8]>);
        let cases: &[Case] = &[
            ("plain", b"abc", b"abc", b"abc", Some(b"abc")),
            ("escape", b"a%5Fb", b"a_b", b"a_b", Some(b"a_b")),
            ("lower hex", b"%2f", b"/", b"/", Some(b"/")),
            ("plus", b"a+b", b"a b", b"a+b", Some(b"a+b")),
            ("escaped plus", b"%2B", b"+", b"+", Some(b"+")),
            ("bad escape stays", b"%zz", b"%zz", b"%zz", None),
            ("half escape stays", b"%4", b"%4", b"%4", None),
            ("trailing percent", b"a%", b"a%", b"a%", None),
            ("escape at end", b"x%41", b"xA", b"xA", Some(b"xA")),
            ("signed hex is not hex", b"%+1", b"% 1", b"%+1", None),
            (
                "double encoding decoded once",
                b"%2541",
                b"%41",
                b"%41",
                Some(b"%41"),
            ),
            ("empty", b"", b"", b"", Some(b"")),
        ];
        for (name, input, form, pct, strict) in cases {
            assert_eq!(form_decode(input), *form, "{name}: form");
            assert_eq!(pct_decode(input), *pct, "{name}: pct");
            assert_eq!(
                pct_decode_strict(input).as_deref(),
                *strict,
                "{name}: strict"
            );
            assert!(form_name_is(input, form), "{name}: name_is");
        }
        assert!(!form_name_is(b"api_key", b"api_ke"));
        assert!(!form_name_is(b"api_ke", b"api_key"));
    }

    #[test]
    fn pairs_table() {
        let got: Vec<_> = pairs(b"a=1&&b&c=&=d&e=f=g").collect();
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"1"),
            (b"b", b""),
            (b"c", b""),
            (b"", b"d"),
            (b"e", b"f=g"),
        ];
        assert_eq!(got, want);
    }

    proptest::proptest! {
        #[test]
        fn lazy_and_eager_form_decoding_agree(s in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let eager = form_decode(&s);
            proptest::prop_assert!(form_name_is(&s, &eager));
            proptest::prop_assert!(eager.len() <= s.len());
        }
    }
}
