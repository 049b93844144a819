//! Built-in detectors: each is a verifier run at an anchor that the one-pass search found
//! (a literal prefix from the Aho-Corasick automaton, or the start of a digit group from the
//! digit-run scan). Verifiers read at most [`LOOKBEHIND`] bytes before and [`LOOKAHEAD`] bytes
//! after their anchor, which is what lets the streaming scanner give the same answer as a scan
//! of the whole body. A verifier never returns or keeps the bytes it matched: only offsets.

/// Most bytes a verifier reads before its anchor.
pub(super) const LOOKBEHIND: usize = 80;
/// Most bytes a verifier reads from its anchor on (the anchor included).
pub(super) const LOOKAHEAD: usize = 300;
/// Longest token body the token verifiers accept; one more byte is read to see that a run ends.
const MAX_RUN: usize = 255;

/// The built-in detectors, by config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    PrivateKey,
    AwsAccessKey,
    GithubToken,
    SlackToken,
    OpenaiKey,
    CreditCard,
    UsSsn,
    Iban,
    Email,
}

impl Detector {
    pub const ALL: [Detector; 9] = [
        Detector::PrivateKey,
        Detector::AwsAccessKey,
        Detector::GithubToken,
        Detector::SlackToken,
        Detector::OpenaiKey,
        Detector::CreditCard,
        Detector::UsSsn,
        Detector::Iban,
        Detector::Email,
    ];
    pub const COUNT: usize = Detector::ALL.len();

    /// The name used in config, audit records and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Detector::PrivateKey => "private_key",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::GithubToken => "github_token",
            Detector::SlackToken => "slack_token",
            Detector::OpenaiKey => "openai_key",
            Detector::CreditCard => "credit_card",
            Detector::UsSsn => "us_ssn",
            Detector::Iban => "iban",
            Detector::Email => "email",
        }
    }

    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// The valid names, for error messages.
    pub fn names() -> String {
        Detector::ALL.map(Detector::as_str).join(", ")
    }

    pub(super) const fn index(self) -> usize {
        self as usize
    }
}

/// Literal prefixes that start a verification; searched by the shared automaton (ASCII
/// case-insensitively, so each verifier checks the exact case itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Anchor {
    PemBegin,
    Aws,
    GithubClassic,
    GithubPat,
    Slack,
    OpenAi,
    At,
}

impl Anchor {
    pub(super) fn detector(self) -> Detector {
        match self {
            Anchor::PemBegin => Detector::PrivateKey,
            Anchor::Aws => Detector::AwsAccessKey,
            Anchor::GithubClassic | Anchor::GithubPat => Detector::GithubToken,
            Anchor::Slack => Detector::SlackToken,
            Anchor::OpenAi => Detector::OpenaiKey,
            Anchor::At => Detector::Email,
        }
    }

    /// The anchor strings of a detector (none for the digit-run detectors).
    pub(super) fn of(d: Detector) -> &'static [(&'static [u8], Anchor)] {
        const PEM: &[(&[u8], Anchor)] = &[(b"-----BEGIN ", Anchor::PemBegin)];
        const AWS: &[(&[u8], Anchor)] = &[(b"AKIA", Anchor::Aws), (b"ASIA", Anchor::Aws)];
        const GITHUB: &[(&[u8], Anchor)] = &[
            (b"ghp_", Anchor::GithubClassic),
            (b"gho_", Anchor::GithubClassic),
            (b"ghu_", Anchor::GithubClassic),
            (b"ghs_", Anchor::GithubClassic),
            (b"ghr_", Anchor::GithubClassic),
            (b"github_pat_", Anchor::GithubPat),
        ];
        const SLACK: &[(&[u8], Anchor)] = &[(b"xox", Anchor::Slack)];
        const OPENAI: &[(&[u8], Anchor)] = &[(b"sk-", Anchor::OpenAi)];
        match d {
            Detector::PrivateKey => PEM,
            Detector::AwsAccessKey => AWS,
            Detector::GithubToken => GITHUB,
            Detector::SlackToken => SLACK,
            Detector::OpenaiKey => OPENAI,
            // `@` is found with memchr: as a one-byte pattern it would blunt the prefilter.
            Detector::CreditCard | Detector::UsSsn | Detector::Iban | Detector::Email => &[],
        }
    }

    /// Verifies the anchor found at `p`; the match as `(start, len)`.
    pub(super) fn verify(self, buf: &[u8], p: usize) -> Option<(usize, usize)> {
        match self {
            Anchor::PemBegin => private_key(buf, p),
            Anchor::Aws => aws_access_key(buf, p),
            Anchor::GithubClassic => github_classic(buf, p),
            Anchor::GithubPat => github_pat(buf, p),
            Anchor::Slack => slack(buf, p),
            Anchor::OpenAi => openai(buf, p),
            Anchor::At => email(buf, p),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

#[inline]
fn at(buf: &[u8], i: usize) -> Option<u8> {
    buf.get(i).copied()
}

#[inline]
fn before(buf: &[u8], p: usize, back: usize) -> Option<u8> {
    p.checked_sub(back).and_then(|i| at(buf, i))
}

#[inline]
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[inline]
fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

/// The byte before `p` does not continue a word.
#[inline]
fn word_start(buf: &[u8], p: usize) -> bool {
    !before(buf, p, 1).is_some_and(is_word)
}

/// Length of the run of `pred` bytes at `i`, counting at most `max + 1`.
#[inline]
fn run_len(buf: &[u8], i: usize, max: usize, pred: impl Fn(u8) -> bool) -> usize {
    let end = buf.len().min(i.saturating_add(max + 1));
    buf.get(i..end)
        .map_or(0, |s| s.iter().position(|&b| !pred(b)).unwrap_or(s.len()))
}

#[inline]
fn starts(buf: &[u8], p: usize, lit: &[u8]) -> bool {
    buf.get(p..).is_some_and(|s| s.starts_with(lit))
}

// ---------------------------------------------------------------------------------------------
// Anchored detectors

/// `-----BEGIN <LABEL>-----` where the label ends in `PRIVATE KEY` (RSA, EC, DSA, OPENSSH,
/// ENCRYPTED, plain PKCS#8) or is `PGP PRIVATE KEY BLOCK`.
fn private_key(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    if !starts(buf, p, BEGIN) {
        return None;
    }
    let l = p + BEGIN.len();
    let n = run_len(buf, l, 40, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' '
    });
    if n > 40 {
        return None;
    }
    let label = buf.get(l..l + n)?;
    if !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK")) {
        return None;
    }
    if !starts(buf, l + n, b"-----") {
        return None;
    }
    Some((p, BEGIN.len() + n + 5))
}

/// `AKIA`/`ASIA` + 16 upper-case letters or digits, word-bounded.
fn aws_access_key(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    let pre = buf.get(p..p + 4)?;
    if pre != b"AKIA" && pre != b"ASIA" {
        return None;
    }
    if before(buf, p, 1).is_some_and(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let n = run_len(buf, p + 4, 16, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit()
    });
    if n != 16 || at(buf, p + 20).is_some_and(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((p, 20))
}

/// `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + at least 36 letters or digits (36 today).
fn github_classic(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    let pre = buf.get(p..p + 4)?;
    if !(pre.starts_with(b"gh")
        && matches!(pre[2], b'p' | b'o' | b'u' | b's' | b'r')
        && pre[3] == b'_')
    {
        return None;
    }
    if !word_start(buf, p) {
        return None;
    }
    let n = run_len(buf, p + 4, MAX_RUN, |b| b.is_ascii_alphanumeric());
    if !(36..=MAX_RUN).contains(&n) || at(buf, p + 4 + n) == Some(b'_') {
        return None;
    }
    Some((p, 4 + n))
}

/// `github_pat_` + at least 70 letters, digits or `_` (22 + `_` + 59 today).
fn github_pat(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    const PRE: &[u8] = b"github_pat_";
    if !starts(buf, p, PRE) || !word_start(buf, p) {
        return None;
    }
    let n = run_len(buf, p + PRE.len(), MAX_RUN, is_word);
    if !(70..=MAX_RUN).contains(&n) {
        return None;
    }
    Some((p, PRE.len() + n))
}

/// `xox[baprs]-` + a run of letters, digits and `-` that starts with a digit, holds another
/// `-` and is at least 15 long (`xoxb-123-456-abc...`).
fn slack(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    let pre = buf.get(p..p + 5)?;
    if !(pre.starts_with(b"xox")
        && matches!(pre[3], b'b' | b'a' | b'p' | b'r' | b's')
        && pre[4] == b'-')
    {
        return None;
    }
    if !word_start(buf, p) {
        return None;
    }
    let n = run_len(buf, p + 5, MAX_RUN, |b| {
        b.is_ascii_alphanumeric() || b == b'-'
    });
    let tail = buf.get(p + 5..p + 5 + n)?;
    if !(15..=MAX_RUN).contains(&n)
        || !tail.first().copied().is_some_and(is_digit)
        || !tail.contains(&b'-')
    {
        return None;
    }
    Some((p, 5 + n))
}

/// `sk-` + 48 letters or digits (legacy), or `sk-proj-`/`sk-svcacct-`/`sk-admin-` + at least 40
/// letters, digits, `_` or `-`.
fn openai(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    if !starts(buf, p, b"sk-") {
        return None;
    }
    if before(buf, p, 1).is_some_and(|b| is_word(b) || b == b'-') {
        return None;
    }
    let t = p + 3;
    for kind in [&b"proj-"[..], b"svcacct-", b"admin-"] {
        if starts(buf, t, kind) {
            let n = run_len(buf, t + kind.len(), MAX_RUN, |b| is_word(b) || b == b'-');
            if (40..=MAX_RUN).contains(&n) {
                return Some((p, 3 + kind.len() + n));
            }
            return None;
        }
    }
    let n = run_len(buf, t, 48, |b| b.is_ascii_alphanumeric());
    if n != 48 || at(buf, t + n).is_some_and(|b| b == b'_' || b == b'-') {
        return None;
    }
    Some((p, 3 + n))
}

/// `local@domain.tld`: local part of `A-Za-z0-9._%+-` (1..=64, not starting or ending with a
/// dot), domain of dot-separated labels with a letters-only top-level label of 2 or more.
fn email(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    if at(buf, p) != Some(b'@') {
        return None;
    }
    let local_ok =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut l = 0;
    while l <= 64 {
        match before(buf, p, l + 1) {
            Some(b) if local_ok(b) => l += 1,
            _ => break,
        }
    }
    if l == 0 || l > 64 {
        return None;
    }
    let start = p - l;
    if at(buf, start) == Some(b'.') || at(buf, p - 1) == Some(b'.') {
        return None;
    }
    let n = run_len(buf, p + 1, 253, |b| {
        b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
    });
    if n > 253 {
        return None;
    }
    let mut domain = buf.get(p + 1..p + 1 + n)?;
    while let Some(d) = domain.strip_suffix(b".") {
        domain = d;
    }
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 || label.starts_with(b"-") || label.ends_with(b"-")
        {
            return None;
        }
        labels += 1;
        last = label;
    }
    if labels < 2 || last.len() < 2 || !last.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some((start, l + 1 + domain.len()))
}

// ---------------------------------------------------------------------------------------------
// Digit-run detectors

/// Index of the first ASCII digit in `buf[i..end]`, eight bytes at a time.
#[inline]
pub(super) fn next_digit(buf: &[u8], mut i: usize, end: usize) -> Option<usize> {
    const L: u64 = 0x0101_0101_0101_0101;
    const H: u64 = 0x8080_8080_8080_8080;
    let end = end.min(buf.len());
    while i + 8 <= end {
        let Some(chunk) = buf.get(i..i + 8) else {
            break;
        };
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        // High bit of each byte b with 0x2F < b < 0x3A (bit-twiddling "hasbetween", exact per
        // byte: no borrow or carry crosses a byte).
        let low = x & (L * 127);
        let m =
            ((L * (127 + 0x3A)).wrapping_sub(low) & !x & low.wrapping_add(L * (127 - 0x2F))) & H;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < end {
        if buf.get(i).copied().is_some_and(is_digit) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Length of the digit run at `i`.
#[inline]
pub(super) fn digit_run(buf: &[u8], i: usize) -> usize {
    buf.get(i..).map_or(0, |s| {
        s.iter().position(|&b| !is_digit(b)).unwrap_or(s.len())
    })
}

fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &c) in d.iter().rev().enumerate() {
        let mut v = u32::from(c - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn prefix_num(d: &[u8], k: usize) -> u32 {
    d.iter()
        .take(k)
        .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'))
}

/// Plausible issuer prefix and length for the major card networks.
fn iin_plausible(d: &[u8]) -> bool {
    let n = d.len();
    let p1 = prefix_num(d, 1);
    let p2 = prefix_num(d, 2);
    let p3 = prefix_num(d, 3);
    let p4 = prefix_num(d, 4);
    match p1 {
        4 => matches!(n, 13 | 16 | 19),              // Visa
        2 => (2221..=2720).contains(&p4) && n == 16, // Mastercard 2-series
        5 => {
            ((51..=55).contains(&p2) && n == 16)
                || ((p2 == 50 || (56..=58).contains(&p2)) && n >= 13)
        } // MC, Maestro
        3 => {
            ((p2 == 34 || p2 == 37) && n == 15)                           // Amex
                || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&n)) // Diners
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&n)) // JCB
        }
        6 => (16..=19).contains(&n) || (n >= 13 && matches!(p2, 60 | 63 | 67 | 68 | 69)), // Discover, UnionPay, Maestro
        _ => false,
    }
}

/// Digit-group shapes that card numbers are written in: one group, groups of four (the last
/// one to four digits long), or the Amex/Diners 4-6-5 and 4-6-4.
fn card_shape(sizes: &[usize]) -> bool {
    match sizes {
        [_] | [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] => init.iter().all(|&g| g == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// Whether more groups could still make a card shape.
fn card_shape_prefix(sizes: &[usize]) -> bool {
    sizes.iter().all(|&g| g == 4) || sizes == [4, 6]
}

/// A card number whose first digit group starts at `p` (a group start: `buf[p-1]` is no
/// digit): 13–19 digits, as one group or in a card's grouping separated by a single space or
/// dash (the same throughout), Luhn-valid, plausible issuer prefix, not part of a longer word
/// or number.
pub(super) fn credit_card(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    match before(buf, p, 1) {
        Some(b' ' | b'-') if before(buf, p, 2).is_some_and(is_digit) => {} // a later group
        Some(b'.' | b',') if before(buf, p, 2).is_some_and(is_digit) => return None, // 3.14…, 1,000…
        Some(b) if is_word(b) => return None,
        _ => {}
    }
    let mut digits = [0u8; 19];
    let mut sizes = [0usize; 19];
    let mut groups = 0;
    let mut n = 0;
    let mut i = p;
    let mut sep: Option<u8> = None;
    loop {
        let g = digit_run(buf, i);
        if g == 0 || n + g > 19 {
            return None;
        }
        digits[n..n + g].copy_from_slice(buf.get(i..i + g)?);
        sizes[groups] = g;
        groups += 1;
        n += g;
        i += g;
        let next = at(buf, i);
        if n >= 13 {
            let bounded = match next {
                Some(b) if is_word(b) => false,
                Some(b'.' | b',') => !at(buf, i + 1).is_some_and(is_digit),
                _ => true,
            };
            if bounded
                && card_shape(&sizes[..groups])
                && luhn(&digits[..n])
                && iin_plausible(&digits[..n])
            {
                return Some((p, i - p));
            }
        }
        if !card_shape_prefix(&sizes[..groups]) {
            return None;
        }
        match next {
            Some(s @ (b' ' | b'-'))
                if at(buf, i + 1).is_some_and(is_digit) && sep.is_none_or(|x| x == s) =>
            {
                sep = Some(s);
                i += 1;
            }
            _ => return None,
        }
    }
}

/// `AAA-GG-SSSS` at `p`, not inside a longer number, outside the ranges the SSA never issues
/// (area 000, 666, 900–999; group 00; serial 0000) and not one of the two numbers the SSA voided after publication.
pub(super) fn us_ssn(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    let s = buf.get(p..p + 11)?;
    let shape = s.iter().enumerate().all(|(k, &b)| {
        if k == 3 || k == 6 {
            b == b'-'
        } else {
            is_digit(b)
        }
    });
    if !shape {
        return None;
    }
    match before(buf, p, 1) {
        Some(b) if is_word(b) => return None,
        Some(b'-' | b'.' | b'+') if before(buf, p, 2).is_some_and(is_digit) => return None,
        _ => {}
    }
    match at(buf, p + 11) {
        Some(b) if is_word(b) => return None,
        Some(b'-' | b'.') if at(buf, p + 12).is_some_and(is_digit) => return None,
        _ => {}
    }
    let area = prefix_num(&s[0..3], 3);
    let group = prefix_num(&s[4..6], 2);
    let serial = prefix_num(&s[7..11], 4);
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    // Voided by the SSA after appearing in a wallet insert and an advertisement.
    if s == b"078-05-1120" || s == b"219-09-9999" {
        return None;
    }
    Some((p, 11))
}

/// IBAN lengths by country (ISO 13616 registry, common countries).
const IBAN_LEN: &[(&[u8; 2], u8)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// An IBAN whose check digits start at `p` (so the country code is `buf[p-2..p]`): the
/// country's length, upper-case letters and digits, either no spaces or one space after every
/// four characters, mod-97 remainder 1, word-bounded.
pub(super) fn iban(buf: &[u8], p: usize) -> Option<(usize, usize)> {
    let s = p.checked_sub(2)?;
    let cc = buf.get(s..p)?;
    if !word_start(buf, s) {
        return None;
    }
    let want = IBAN_LEN.iter().find(|(c, _)| c[..] == *cc)?.1 as usize;
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    let mut spaced: Option<bool> = None;
    while n < want {
        if n > 0 && n % 4 == 0 {
            let sp = at(buf, i) == Some(b' ');
            match spaced {
                None => spaced = Some(sp),
                Some(x) if x != sp => return None,
                _ => {}
            }
            if sp {
                i += 1;
            }
        }
        match at(buf, i) {
            Some(b) if b.is_ascii_uppercase() || is_digit(b) => {
                chars[n] = b;
                n += 1;
                i += 1;
            }
            _ => return None,
        }
    }
    if at(buf, i).is_some_and(is_word) {
        return None;
    }
    let (head, rest) = chars[..n].split_at(4);
    let mut r = 0u32;
    for &c in rest.iter().chain(head) {
        r = if is_digit(c) {
            (r * 10 + u32::from(c - b'0')) % 97
        } else {
            (r * 100 + u32::from(c - b'A') + 10) % 97
        };
    }
    (r == 1).then_some((s, i - s))
}
