use super::*;
use proptest::prelude::*;
use std::io::Write;

fn scanner(name: &str, detectors: &[&str], literals: &[&str], mode: Option<&str>) -> RawScanner {
    RawScanner {
        name: name.into(),
        detectors: detectors.iter().map(|s| s.to_string()).collect(),
        literals: literals.iter().map(|s| s.to_string()).collect(),
        mode: mode.map(str::to_string),
    }
}

fn all_detectors() -> Vec<&'static str> {
    Detector::ALL.iter().map(|d| d.as_str()).collect()
}

const GH36: &str = "16C7e42F292c6912E7710c838347Ae178B4a";
const SK48: &str = "abcdEFGH1234abcdEFGH1234abcdEFGH1234abcdEFGH1234";

/// `(detector, input, expected (offset, len) of the blocked hit)`.
type DetectorRow = (&'static str, String, Option<(usize, usize)>);

fn detector_rows() -> Vec<DetectorRow> {
    let s = |x: &str| x.to_string();
    let mut rows = vec![
        // private_key
        (
            "private_key",
            s("-----BEGIN RSA PRIVATE KEY-----\nMIIE"),
            Some((0, 31)),
        ),
        (
            "private_key",
            s("x -----BEGIN PRIVATE KEY-----"),
            Some((2, 27)),
        ),
        (
            "private_key",
            s("-----BEGIN EC PRIVATE KEY-----"),
            Some((0, 30)),
        ),
        (
            "private_key",
            s("-----BEGIN OPENSSH PRIVATE KEY-----"),
            Some((0, 35)),
        ),
        (
            "private_key",
            s("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            Some((0, 37)),
        ),
        (
            "private_key",
            s("-----BEGIN DSA PRIVATE KEY-----"),
            Some((0, 31)),
        ),
        (
            "private_key",
            s("-----BEGIN PGP PRIVATE KEY BLOCK-----"),
            Some((0, 37)),
        ),
        (
            "private_key",
            s(r#"{"key":"-----BEGIN PRIVATE KEY-----\nMIIEv"}"#),
            Some((8, 27)),
        ),
        ("private_key", s("-----BEGIN PUBLIC KEY-----"), None),
        ("private_key", s("-----BEGIN CERTIFICATE-----"), None),
        ("private_key", s("-----begin private key-----"), None),
        ("private_key", s("-----BEGIN PRIVATE KEY"), None),
        ("private_key", s("-----BEGIN RSA PUBLIC KEY-----"), None),
        ("private_key", s("-----BEGIN PRIVATE KEYS-----"), None),
        // aws_access_key
        ("aws_access_key", s("AKIAIOSFODNN7EXAMPLE"), Some((0, 20))),
        (
            "aws_access_key",
            s("key=ASIAY34FZKBOKMUTVV7A&x"),
            Some((4, 20)),
        ),
        (
            "aws_access_key",
            s(r#"{"id":"AKIAIOSFODNN7EXAMPLE"}"#),
            Some((7, 20)),
        ),
        ("aws_access_key", s("AKIAIOSFODNN7EXAMPLE\n"), Some((0, 20))),
        ("aws_access_key", s("AKIAIOSFODNN7EXAMPL"), None),
        ("aws_access_key", s("AKIAIOSFODNN7EXAMPLEX"), None),
        ("aws_access_key", s("xAKIAIOSFODNN7EXAMPLE"), None),
        ("aws_access_key", s("akiaiosfodnn7example"), None),
        ("aws_access_key", s("AKIAiosfodnn7EXAMPLE"), None),
        ("aws_access_key", s("AKIA-IOSFODNN7EXAMPLE"), None),
        ("aws_access_key", s("ABIAIOSFODNN7EXAMPLE"), None),
        // github_token
        ("github_token", format!("ghp_{GH36}"), Some((0, 40))),
        ("github_token", format!("token ghs_{GH36}\n"), Some((6, 40))),
        ("github_token", format!("\"gho_{GH36}\""), Some((1, 40))),
        ("github_token", format!("ghu_{GH36}"), Some((0, 40))),
        ("github_token", format!("ghr_{GH36}"), Some((0, 40))),
        (
            "github_token",
            format!("github_pat_11ABCDEFG0123456789012_{}", "a".repeat(59)),
            Some((0, 93)),
        ),
        ("github_token", format!("ghp_{}", &GH36[..35]), None),
        ("github_token", format!("xghp_{GH36}"), None),
        ("github_token", format!("ghx_{GH36}"), None),
        ("github_token", format!("GHP_{GH36}"), None),
        ("github_token", format!("ghp_{GH36}_x"), None),
        ("github_token", s("github_pat_short"), None),
        ("github_token", s("ghp_"), None),
        // slack_token
        (
            "slack_token",
            s("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
            Some((0, 56)),
        ),
        (
            "slack_token",
            s("t=xoxp-1234-5678-9012-abcdef0123"),
            Some((2, 30)),
        ),
        (
            "slack_token",
            s("xoxa-2-1234567890-abcdefghijk"),
            Some((0, 29)),
        ),
        (
            "slack_token",
            s("xoxr-1234567890-abcdefghij"),
            Some((0, 26)),
        ),
        (
            "slack_token",
            s("xoxs-1234567890-abcdefghij"),
            Some((0, 26)),
        ),
        ("slack_token", s("xoxb-your-token-goes-here-please"), None),
        (
            "slack_token",
            s("xoxc-123456789012-1234567890123-AbCd"),
            None,
        ),
        ("slack_token", s("xoxb-12345-6"), None),
        (
            "slack_token",
            s("axoxb-123456789012-1234567890123-AbCd"),
            None,
        ),
        (
            "slack_token",
            s("XOXB-123456789012-1234567890123-AbCd"),
            None,
        ),
        ("slack_token", s("xoxb-1234567890123456789"), None),
        // openai_key
        ("openai_key", format!("sk-{SK48}"), Some((0, 51))),
        ("openai_key", format!("Bearer sk-{SK48}\r\n"), Some((7, 51))),
        (
            "openai_key",
            format!("sk-proj-{}", "aB3_-".repeat(12)),
            Some((0, 68)),
        ),
        (
            "openai_key",
            format!("sk-svcacct-{}", "x".repeat(40)),
            Some((0, 51)),
        ),
        (
            "openai_key",
            format!("sk-admin-{}", "Z9".repeat(30)),
            Some((0, 69)),
        ),
        ("openai_key", format!("sk-{}", &SK48[..47]), None),
        ("openai_key", format!("sk-{SK48}a"), None),
        ("openai_key", format!("task-{SK48}"), None),
        ("openai_key", s("sk-proj-short"), None),
        ("openai_key", format!("sk_live_{SK48}"), None),
        ("openai_key", format!("SK-{SK48}"), None),
        // credit_card
        ("credit_card", s("4111111111111111"), Some((0, 16))),
        (
            "credit_card",
            s(r#"{"card":"5500000000000004"}"#),
            Some((9, 16)),
        ),
        ("credit_card", s("amex 378282246310005."), Some((5, 15))),
        ("credit_card", s("4111 1111 1111 1111"), Some((0, 19))),
        ("credit_card", s("4111-1111-1111-1111"), Some((0, 19))),
        ("credit_card", s("3782 822463 10005"), Some((0, 17))),
        (
            "credit_card",
            s("2024-01-15 4111 1111 1111 1111"),
            Some((11, 19)),
        ),
        ("credit_card", s("6011111111111117"), Some((0, 16))),
        ("credit_card", s("3530111333300000"), Some((0, 16))),
        ("credit_card", s("30569309025904"), Some((0, 14))),
        ("credit_card", s("4222222222222"), Some((0, 13))),
        ("credit_card", s("2223003122003222"), Some((0, 16))),
        ("credit_card", s("4111111111111112"), None),
        ("credit_card", s("41111111111111111111"), None),
        ("credit_card", s("12345678904111111111111111"), None),
        ("credit_card", s("x4111111111111111"), None),
        ("credit_card", s("1234567812345670"), None),
        ("credit_card", s("4111 1111-1111 1111"), None),
        ("credit_card", s("3.4111111111111111"), None),
        ("credit_card", s("4111111111111111.5"), None),
        ("credit_card", s("411111111111111"), None),
        ("credit_card", s("1700000000000"), None),
        ("credit_card", s("4111  1111 1111 1111"), None),
        ("credit_card", s("41 11 11 11 11 11 11 11"), None),
        ("credit_card", s("4111111-111111111"), None),
        ("credit_card", s("41111 11111 11111 1"), None),
        ("credit_card", s("4111 1111 1111 1111 111"), Some((0, 19))),
        // us_ssn
        ("us_ssn", s("123-45-6789"), Some((0, 11))),
        ("us_ssn", s(r#"{"ssn":"536-22-1234"}"#), Some((8, 11))),
        ("us_ssn", s("ssn 899-99-9999."), Some((4, 11))),
        ("us_ssn", s("000-12-3456"), None),
        ("us_ssn", s("666-12-3456"), None),
        ("us_ssn", s("900-12-3456"), None),
        ("us_ssn", s("123-00-4567"), None),
        ("us_ssn", s("123-45-0000"), None),
        ("us_ssn", s("078-05-1120"), None),
        ("us_ssn", s("1123-45-6789"), None),
        ("us_ssn", s("123-45-67890"), None),
        ("us_ssn", s("a123-45-6789"), None),
        ("us_ssn", s("555-123-45-6789"), None),
        ("us_ssn", s("123-456-7890"), None),
        ("us_ssn", s("123 45 6789"), None),
        // iban
        ("iban", s("GB82WEST12345698765432"), Some((0, 22))),
        (
            "iban",
            s("iban: GB82 WEST 1234 5698 7654 32 ok"),
            Some((6, 27)),
        ),
        ("iban", s("DE89370400440532013000"), Some((0, 22))),
        ("iban", s("DE89 3704 0044 0532 0130 00"), Some((0, 27))),
        ("iban", s("FR1420041010050500013M02606"), Some((0, 27))),
        ("iban", s(r#"{"iban":"NL91ABNA0417164300"}"#), Some((9, 18))),
        ("iban", s("BE68539007547034"), Some((0, 16))),
        ("iban", s("IT60X0542811101000000123456"), Some((0, 27))),
        ("iban", s("NO9386011117947"), Some((0, 15))),
        ("iban", s("GB82WEST12345698765433"), None),
        ("iban", s("DE89370400440532013001"), None),
        ("iban", s("GB82WEST1234569876543"), None),
        ("iban", s("XX82WEST12345698765432"), None),
        ("iban", s("aGB82WEST12345698765432"), None),
        ("iban", s("GB82 WEST12345698765432"), None),
        ("iban", s("DE89370400440532013000X"), None),
        ("iban", s("gb82west12345698765432"), None),
        ("iban", s("DE8937040044053201300"), None),
        // email
        ("email", s("alice@example.com"), Some((0, 17))),
        ("email", s("to: a.b+tag@sub.example.co.uk."), Some((4, 25))),
        ("email", s(r#"{"to":"x@y.io"}"#), Some((7, 6))),
        ("email", s("alice@localhost"), None),
        ("email", s("@example.com"), None),
        ("email", s("alice@example.c"), None),
        ("email", s("alice@.com"), None),
        ("email", s("alice@example.123"), None),
        ("email", s("user@-example.com"), None),
        ("email", s("alice.@example.com"), None),
        ("email", format!("{}@example.com", "a".repeat(65)), None),
        ("email", s("a@b"), None),
    ];
    rows.sort_by_key(|r| r.0);
    rows
}

#[test]
fn detector_table() {
    let rows = detector_rows();
    for d in Detector::ALL {
        let n = rows.iter().filter(|r| r.0 == d.as_str()).count();
        assert!(n >= 10, "{} has only {n} rows", d.as_str());
    }
    for (det, input, want) in &rows {
        // Alone, and among every other detector (an anchor must not hide another).
        for set in [
            ScanSet::compile(&[scanner("s", &[*det], &[], None)]).unwrap(),
            ScanSet::compile(&[
                scanner("other", &all_detectors(), &["zzz"], Some("report")),
                scanner("s", &[*det], &[], None),
            ])
            .unwrap(),
        ] {
            let out = set.scan(input.as_bytes());
            let got = out.blocked.map(|h| (h.offset, h.len));
            assert_eq!(got, *want, "{det} on {input:?}");
            if let Some(h) = out.blocked {
                assert_eq!(h.scanner, "s");
                assert_eq!(h.kind, HitKind::Detector(Detector::from_name(det).unwrap()));
                assert_eq!(h.mode, Mode::Block);
            }
        }
        // The other detectors stay quiet on the row (no detector fires on another's sample)
        // unless they legitimately overlap: check only that scanning never panics.
        let all = ScanSet::compile(&[scanner("all", &all_detectors(), &[], None)]).unwrap();
        let _ = all.scan(input.as_bytes());
    }
}

#[test]
fn literals_are_ascii_case_insensitive() {
    let set = ScanSet::compile(&[scanner(
        "no-secrets",
        &[],
        &["CONFIDENTIAL", "Project X"],
        None,
    )])
    .unwrap();
    for (body, want) in [
        ("this is confidential", Some((8, 12, 0))),
        ("ConFiDenTiaL!", Some((0, 12, 0))),
        ("about PROJECT x", Some((6, 9, 1))),
        ("confidentia l", None),
        ("", None),
    ] {
        let out = set.scan(body.as_bytes());
        let got = out.blocked.map(|h| {
            let HitKind::Literal(i) = h.kind else {
                panic!("not a literal")
            };
            (h.offset, h.len, i)
        });
        assert_eq!(got, want, "{body:?}");
        if let Some(h) = out.blocked {
            assert_eq!(h.scanner, "no-secrets");
        }
    }
}

#[test]
fn overlapping_literals_of_different_scanners_are_all_found() {
    // The report scanner's literal contains the blocking one: the block must not be hidden.
    let set = ScanSet::compile(&[
        scanner("shadow", &[], &["top secret plan"], Some("report")),
        scanner("block", &[], &["secret"], None),
        scanner("also", &[], &["SECRET"], None),
    ])
    .unwrap();
    let out = set.scan(b"the top secret plan");
    let b = out.blocked.unwrap();
    assert_eq!((b.scanner, b.offset, b.scanner_index), ("block", 8, 1));
    assert_eq!(out.reports.len(), 1);
    assert_eq!(out.reports[0].scanner, "shadow");
    assert_eq!(out.reports[0].mode, Mode::Report);
    assert_eq!(out.reports[0].offset, 4);
}

#[test]
fn first_blocking_hit_wins_and_reports_never_block() {
    let set = ScanSet::compile(&[
        scanner(
            "audit-only",
            &["email", "us_ssn"],
            &["internal"],
            Some("report"),
        ),
        scanner("pii", &["credit_card", "us_ssn"], &[], Some("block")),
    ])
    .unwrap();
    let body = b"internal memo: alice@example.com 123-45-6789 4111111111111111 bob@example.org";
    let out = set.scan(body);
    let b = out.blocked.unwrap();
    assert_eq!(
        (b.scanner, b.kind, b.offset),
        ("pii", HitKind::Detector(Detector::UsSsn), 33)
    );
    let kinds: Vec<_> = out
        .reports
        .iter()
        .map(|h| (h.scanner, h.kind, h.offset))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("audit-only", HitKind::Detector(Detector::UsSsn), 33),
            ("audit-only", HitKind::Detector(Detector::Email), 15),
            ("audit-only", HitKind::Literal(0), 0),
        ]
    );
    // Report-only: nothing blocks.
    let out = set.scan(b"mail alice@example.com");
    assert!(out.blocked.is_none());
    assert_eq!(out.reports.len(), 1);
    assert!(!out.is_clean());
    assert!(set.scan(b"{\"a\":1}").is_clean());
}

#[test]
fn compile_errors() {
    let long = "x".repeat(MAX_LITERAL_LEN + 1);
    let rows: Vec<(Vec<RawScanner>, &str, &str)> = vec![
        (
            vec![scanner("a", &["private_key", "passport"], &[], None)],
            "scanners[0].detectors[1]",
            "unknown detector \"passport\": expected one of private_key, aws_access_key",
        ),
        (
            vec![scanner("a", &[], &[""], None)],
            "scanners[0].literals[0]",
            "empty literal",
        ),
        (
            vec![scanner("a", &[], &[], None)],
            "scanners[0]",
            "never matches",
        ),
        (
            vec![scanner("", &["email"], &[], None)],
            "scanners[0].name",
            "empty scanner name",
        ),
        (
            vec![
                scanner("a", &["email"], &[], None),
                scanner("a", &["iban"], &[], None),
            ],
            "scanners[1].name",
            "duplicate scanner name \"a\"",
        ),
        (
            vec![scanner("a", &["email"], &[], Some("shadow"))],
            "scanners[0].mode",
            "unknown mode",
        ),
        (
            vec![scanner("a", &[], &[long.as_str()], None)],
            "scanners[0].literals[0]",
            "longer than",
        ),
    ];
    for (scanners, key, msg) in rows {
        let errs = ScanSet::compile(&scanners).unwrap_err();
        assert!(
            errs.iter().any(|(k, m)| k == key && m.contains(msg)),
            "{key}: {errs:?}"
        );
    }
    // Every error, not just the first.
    let errs = ScanSet::compile(&[scanner("", &["nope"], &[""], Some("x"))]).unwrap_err();
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn raw_scanner_deserializes_and_denies_unknown_fields() {
    #[derive(Deserialize)]
    struct P {
        scanners: Vec<RawScanner>,
    }
    let p: P = toml::from_str(
        "[[scanners]]\nname = \"no-secrets\"\ndetectors = [\"private_key\"]\nliterals = [\"CONFIDENTIAL\"]\n\
         [[scanners]]\nname = \"shadow\"\ndetectors = [\"email\"]\nmode = \"report\"\n",
    )
    .unwrap();
    let set = ScanSet::compile(&p.scanners).unwrap();
    assert_eq!(
        set.scanner_names().collect::<Vec<_>>(),
        ["no-secrets", "shadow"]
    );
    assert!(set.has_report_scanners());
    assert!(toml::from_str::<P>("[[scanners]]\nname = \"a\"\nregex = \"x\"\n").is_err());
}

#[test]
fn empty_set_is_clean() {
    let set = ScanSet::compile(&[]).unwrap();
    assert!(set.is_empty());
    assert!(
        set.scan(b"4111111111111111 AKIAIOSFODNN7EXAMPLE")
            .is_clean()
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn encoded_bodies() {
    let set =
        ScanSet::compile(&[scanner("s", &["aws_access_key"], &["confidential"], None)]).unwrap();
    let hit = b"{\"k\":\"AKIAIOSFODNN7EXAMPLE\"}";
    let clean = b"{\"k\":\"nothing here\"}";
    fn blocked(r: Result<ScanOutcome<'_>, ScanError>) -> Result<bool, ScanError> {
        r.map(|o| o.blocked.is_some())
    }

    assert_eq!(blocked(set.scan_encoded(hit, None, 1024)), Ok(true));
    assert_eq!(
        blocked(set.scan_encoded(hit, Some(b"identity"), 1024)),
        Ok(true)
    );
    assert_eq!(
        blocked(set.scan_encoded(&gzip(hit), Some(b"gzip"), 1024)),
        Ok(true)
    );
    assert_eq!(
        blocked(set.scan_encoded(&gzip(hit), Some(b" X-GZIP "), 1024)),
        Ok(true)
    );
    assert_eq!(
        blocked(set.scan_encoded(&gzip(clean), Some(b"gzip"), 1024)),
        Ok(false)
    );
    // zlib-wrapped deflate (RFC 9110) and the raw deflate some clients send.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(hit).unwrap();
    assert_eq!(
        blocked(set.scan_encoded(&z.finish().unwrap(), Some(b"deflate"), 1024)),
        Ok(true)
    );
    let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    d.write_all(hit).unwrap();
    assert_eq!(
        blocked(set.scan_encoded(&d.finish().unwrap(), Some(b"deflate"), 1024)),
        Ok(true)
    );
    // A hit hidden in a second gzip member is still found.
    let mut two = gzip(clean);
    two.extend(gzip(hit));
    assert_eq!(
        blocked(set.scan_encoded(&two, Some(b"gzip"), 1024)),
        Ok(true)
    );
    // Refusals.
    for ce in [
        &b"br"[..],
        b"zstd",
        b"compress",
        b"gzip,br",
        b"gzip, gzip, gzip, gzip, gzip",
        b"x",
    ] {
        assert_eq!(
            blocked(set.scan_encoded(hit, Some(ce), 1024)),
            Err(ScanError::UnsupportedEncoding),
            "{ce:?}"
        );
    }
    assert_eq!(
        blocked(set.scan_encoded(hit, Some(b"gzip"), 1024)),
        Err(ScanError::Corrupt)
    );
    let mut bad = gzip(hit);
    let n = bad.len();
    bad[n - 6] ^= 0xff; // CRC
    assert_eq!(
        blocked(set.scan_encoded(&bad, Some(b"gzip"), 1024)),
        Err(ScanError::Corrupt)
    );
    let mut trailing = gzip(hit);
    trailing.extend_from_slice(b"garbage");
    assert_eq!(
        blocked(set.scan_encoded(&trailing, Some(b"gzip"), 1024)),
        Err(ScanError::Corrupt)
    );
    let bomb = gzip(&vec![b'a'; 100_000]);
    assert_eq!(
        blocked(set.scan_encoded(&bomb, Some(b"gzip"), 99_999)),
        Err(ScanError::TooLarge)
    );
    assert_eq!(
        blocked(set.scan_encoded(&bomb, Some(b"gzip"), 100_000)),
        Ok(false)
    );
    assert_eq!(blocked(set.scan_encoded(b"", Some(b"gzip"), 10)), Ok(false));
}

/// Issue 12: repeated `Content-Encoding` lines are one list (RFC 9110 §5.3), applied in order;
/// the scanner undoes all of it or refuses the body (before, only the first line was read).
#[test]
fn repeated_content_encoding_lines_are_combined() {
    let set =
        ScanSet::compile(&[scanner("s", &["aws_access_key"], &["confidential"], None)]).unwrap();
    let hit = b"{\"k\":\"AKIAIOSFODNN7EXAMPLE\"}";
    let gz2 = gzip(&gzip(hit));
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&gzip(hit)).unwrap();
    let gzip_then_deflate = z.finish().unwrap();
    type Lines = &'static [&'static [u8]];
    // (name, body, Content-Encoding lines, blocked or the error)
    type Row = (&'static str, Vec<u8>, Lines, Result<bool, ScanError>);
    let rows: Vec<Row> = vec![
        (
            "gzip + gzip lines",
            gz2.clone(),
            &[b"gzip", b"gzip"],
            Ok(true),
        ),
        (
            "gzip, gzip in one line",
            gz2.clone(),
            &[b"gzip, gzip"],
            Ok(true),
        ),
        (
            "identity + gzip",
            gzip(hit),
            &[b"identity", b"gzip"],
            Ok(true),
        ),
        (
            "gzip + identity",
            gzip(hit),
            &[b"gzip", b"identity"],
            Ok(true),
        ),
        (
            "gzip then deflate, in order",
            gzip_then_deflate.clone(),
            &[b"gzip", b"deflate"],
            Ok(true),
        ),
        (
            "wrong order is corrupt",
            gzip_then_deflate,
            &[b"deflate", b"gzip"],
            Err(ScanError::Corrupt),
        ),
        (
            "first line only would see gzip",
            gz2.clone(),
            &[b"GZIP", b" x-gzip "],
            Ok(true),
        ),
        ("empty elements", gzip(hit), &[b",gzip,", b""], Ok(true)),
        (
            "a second line says gzip, body is not",
            hit.to_vec(),
            &[b"identity", b"gzip"],
            Err(ScanError::Corrupt),
        ),
        (
            "second line unknown",
            gzip(hit),
            &[b"gzip", b"br"],
            Err(ScanError::UnsupportedEncoding),
        ),
        (
            "five codings",
            gz2,
            &[b"gzip", b"gzip", b"gzip", b"gzip", b"gzip"],
            Err(ScanError::UnsupportedEncoding),
        ),
    ];
    for (name, body, lines, want) in rows {
        let fields = lines.iter().map(|l| (&b"Content-Encoding"[..], *l));
        let got = set
            .scan_request(&body, fields, 1 << 20)
            .map(|o| o.blocked.is_some());
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn stream_finds_hits_across_every_boundary() {
    let set = ScanSet::compile(&[scanner("s", &all_detectors(), &["confidential"], None)]).unwrap();
    for body in [
        "xx CONFIDENTIAL yy".to_string(),
        format!("{} AKIAIOSFODNN7EXAMPLE", "a".repeat(500)),
        format!("{} 4111 1111 1111 1111 .", "{\"n\":1}".repeat(90)),
        format!("{}GB82 WEST 1234 5698 7654 32", " ".repeat(377)),
    ] {
        let whole = set.scan(body.as_bytes());
        assert!(whole.blocked.is_some(), "{body:?}");
        for cut in 0..=body.len() {
            for batch in [0, 7] {
                let mut s = set.stream_with_batch(batch);
                s.feed(&body.as_bytes()[..cut]);
                s.feed(&body.as_bytes()[cut..]);
                assert_eq!(s.finish(), whole, "cut {cut}, batch {batch}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

fn full_set() -> ScanSet {
    ScanSet::compile(&[
        scanner(
            "lits",
            &[],
            &["confidential", "top secret", "sec", "ssn:"],
            None,
        ),
        scanner("dets", &all_detectors(), &[], None),
        scanner(
            "shadow",
            &["email", "credit_card", "iban"],
            &["secret"],
            Some("report"),
        ),
    ])
    .unwrap()
}

/// Pieces that make hits, near misses and the contexts detectors look at.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let samples: Vec<String> = detector_rows()
        .into_iter()
        .map(|r| r.1)
        .chain(
            [
                "confidential",
                "Top Secret",
                "sec",
                " ",
                "-",
                ".",
                "@",
                "\n",
                "0",
                "42",
                "1234",
                "4111",
                "sk-",
                "ghp_",
                "xox",
                "AKIA",
                "-----BEGIN ",
                "GB82",
                "\"",
                ",",
                "a",
                "Z",
            ]
            .map(str::to_string),
        )
        .collect();
    prop_oneof![
        4 => prop::sample::select(samples).prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..8),
        1 => prop::collection::vec(prop::sample::select(b"0123456789 -".to_vec()), 0..24),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn literal_split_across_any_boundary_is_found(
        pre in prop::collection::vec(any::<u8>(), 0..700),
        post in prop::collection::vec(any::<u8>(), 0..50),
        lit in prop::sample::select(vec!["confidential", "top secret", "the-literal-XYZ"]),
        flip in any::<u64>(),
        cut in 0usize..16,
        batch in 0usize..40,
    ) {
        let set = ScanSet::compile(&[scanner("s", &[], &["confidential", "TOP SECRET", "the-literal-xyz"], None)]).unwrap();
        // Random ASCII case.
        let lit: Vec<u8> = lit.bytes().enumerate().map(|(i, b)| if (flip >> (i % 64)) & 1 == 1 { b.to_ascii_uppercase() } else { b }).collect();
        let mut body = pre.clone();
        body.extend_from_slice(&lit);
        body.extend_from_slice(&post);
        let at = pre.len() + cut.min(lit.len());
        let mut s = set.stream_with_batch(batch);
        s.feed(&body[..at]);
        s.feed(&body[at..]);
        let out = s.finish();
        let b = out.blocked.expect("literal not found");
        prop_assert!(b.offset <= pre.len());
        prop_assert_eq!(out, set.scan(&body));
    }

    #[test]
    fn stream_at_random_splits_equals_whole(
        body in body(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        batch in prop::sample::select(vec![0usize, 1, 13, 300, 16 * 1024]),
    ) {
        let set = full_set();
        let whole = set.scan(&body);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut s = set.stream_with_batch(batch);
        let mut last = 0;
        for c in cuts {
            s.feed(&body[last..c]);
            last = c;
        }
        s.feed(&body[last..]);
        prop_assert_eq!(s.finish(), whole);
    }

    #[test]
    fn hits_point_inside_the_body(body in body()) {
        let set = full_set();
        let out = set.scan(&body);
        for h in out.blocked.iter().chain(&out.reports) {
            prop_assert!(h.len > 0 && h.offset + h.len <= body.len());
        }
    }

    #[test]
    fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..2000)) {
        let set = full_set();
        let _ = set.scan(&body);
        let _ = set.scan_encoded(&body, Some(b"gzip"), 1 << 16);
        let _ = set.scan_encoded(&body, Some(b"deflate"), 1 << 16);
    }
}

/// The literal hits a naive search finds: `(blocked, reports)` as `(offset, scanner, literal)`.
type NaiveHit = (usize, usize, usize);

fn naive_literals(scanners: &[RawScanner], body: &[u8]) -> (Option<NaiveHit>, Vec<NaiveHit>) {
    let hay = body.to_ascii_lowercase();
    let mut block: Option<NaiveHit> = None;
    let mut reports = Vec::new();
    for (si, s) in scanners.iter().enumerate() {
        for (li, l) in s.literals.iter().enumerate() {
            let l = l.to_ascii_lowercase();
            let first = (0..hay.len()).find(|&i| hay[i..].starts_with(l.as_bytes()));
            if let Some(off) = first {
                if s.mode.is_some() {
                    reports.push((off, si, li));
                } else if block.is_none_or(|b| (off, si, li) < b) {
                    block = Some((off, si, li));
                }
            }
        }
    }
    reports.sort_by_key(|r| (r.1, r.2));
    (block, reports)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Sets of up to 200 literals (several automaton groups), overlapping and sharing
    /// prefixes and suffixes, against a naive search.
    #[test]
    fn literals_match_naive_search(
        lits in prop::collection::vec(prop::collection::vec(prop::sample::select(b"abAB-".to_vec()), 1..6), 1..200),
        split in any::<prop::sample::Index>(),
        report_from in any::<prop::sample::Index>(),
        body in prop::collection::vec(prop::sample::select(b"abAB- x".to_vec()), 0..400),
    ) {
        let lits: Vec<String> = lits.into_iter().map(|l| String::from_utf8(l).unwrap()).collect();
        let cut = split.index(lits.len() + 1);
        let mut scanners = vec![
            scanner("one", &[], &lits[..cut].iter().map(String::as_str).collect::<Vec<_>>(), None),
            scanner("two", &[], &lits[cut..].iter().map(String::as_str).collect::<Vec<_>>(), None),
        ];
        scanners.retain(|s| !s.literals.is_empty());
        let r = report_from.index(scanners.len() + 1);
        for s in &mut scanners[r..] {
            s.mode = Some("report".into());
        }
        let set = ScanSet::compile(&scanners).unwrap();
        let out = set.scan(&body);
        let lit = |h: &Hit<'_>| match h.kind {
            HitKind::Literal(i) => (h.offset, h.scanner_index, i),
            HitKind::Detector(_) => unreachable!(),
        };
        let got = (out.blocked.as_ref().map(lit), out.reports.iter().map(lit).collect::<Vec<_>>());
        prop_assert_eq!(got, naive_literals(&scanners, &body));
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 12: decoded views

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Every character as a JSON `\uXXXX` escape.
fn json_u(s: &str) -> String {
    s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
}

/// Percent-encodes every byte.
fn pct(s: &[u8]) -> String {
    s.iter().map(|b| format!("%{b:02X}")).collect()
}

/// A body the raw scan passes and the decoded views block (each row would pass before issue 12),
/// and bodies that must stay clean.
#[test]
fn decoded_views_table() {
    let set = ScanSet::compile(&[
        scanner(
            "dets",
            &["aws_access_key", "credit_card", "github_token"],
            &[],
            None,
        ),
        scanner(
            "lits",
            &[],
            &["CONFIDENTIAL", "top secret", "internal/admin"],
            None,
        ),
    ])
    .unwrap();
    let key = "AKIAIOSFODNN7EXAMPLE";
    let mp = |cte: &str, content: &str| {
        format!(
            "--B0und\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{content}\r\n--B0und--\r\n"
        )
    };
    const JSON: &str = "application/json";
    const FORM: &str = "application/x-www-form-urlencoded";
    const MULTI: &str = "multipart/form-data; boundary=B0und";
    // (name, content type, body, (scanner, detector or literal index) of the blocked hit)
    type Row = (
        &'static str,
        &'static str,
        String,
        Option<(&'static str, HitKind)>,
    );
    let rows: Vec<Row> = vec![
        (
            "json \\u in a key id",
            JSON,
            format!(r#"{{"k":"\u0041KIA{}"}}"#, &key[4..]),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "json \\u digits of a card",
            JSON,
            r#"{"n":"\u0034111 1111 1111 1111"}"#.into(),
            Some(("dets", HitKind::Detector(Detector::CreditCard))),
        ),
        (
            "json \\u in a literal",
            JSON,
            r#"{"t":"CONFIDENTI\u0041L"}"#.into(),
            Some(("lits", HitKind::Literal(0))),
        ),
        (
            "json every char escaped",
            JSON,
            format!(r#"{{"t":"{}"}}"#, json_u("top secret")),
            Some(("lits", HitKind::Literal(1))),
        ),
        (
            "json escaped solidus",
            JSON,
            r#"{"u":"internal\/admin"}"#.into(),
            Some(("lits", HitKind::Literal(2))),
        ),
        (
            "json escapes, no content type",
            "",
            format!(r#"{{"k":"{}"}}"#, json_u(key)),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "form percent-encoded",
            FORM,
            format!("a=1&k={}", pct(key.as_bytes())),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "form plus as space",
            FORM,
            "note=top+secret".into(),
            Some(("lits", HitKind::Literal(1))),
        ),
        (
            "form field holding json escapes",
            FORM,
            format!(
                "j={}",
                pct(format!(r#"{{"k":"{}"}}"#, json_u(key)).as_bytes())
            ),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "base64 blob",
            JSON,
            format!(
                r#"{{"file":"{}"}}"#,
                b64(b"the key is AKIAIOSFODNN7EXAMPLE ok")
            ),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "base64 data url",
            JSON,
            format!(
                r#"{{"img":"data:text/plain;base64,{}"}}"#,
                b64(b"CONFIDENTIAL report")
            ),
            Some(("lits", HitKind::Literal(0))),
        ),
        (
            "base64 with escaped slashes",
            JSON,
            format!(
                r#"{{"f":"{}"}}"#,
                b64(b"\xff\xff\xff\xffCONFIDENTIAL ok \xfb\xff").replace('/', "\\/")
            ),
            Some(("lits", HitKind::Literal(0))),
        ),
        (
            "json inside base64",
            JSON,
            format!(
                r#"{{"f":"{}"}}"#,
                b64(format!(r#"{{"k":"{}"}}"#, json_u(key)).as_bytes())
            ),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "multipart base64 part",
            MULTI,
            mp(
                "base64",
                &b64(format!("x {key} y").as_bytes())
                    .as_bytes()
                    .chunks(8)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join("\r\n"),
            ),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "multipart quoted-printable part",
            MULTI,
            mp("quoted-printable", "CONFIDENTI=41L text"),
            Some(("lits", HitKind::Literal(0))),
        ),
        // controls: clean bodies stay clean, plain hits are still found first
        (
            "plain hit",
            JSON,
            format!(r#"{{"k":"{key}"}}"#),
            Some(("dets", HitKind::Detector(Detector::AwsAccessKey))),
        ),
        (
            "clean json with escapes",
            JSON,
            r#"{"t":"line\nnext \"quoted\" caf\u00e9 \/ \\"}"#.into(),
            None,
        ),
        (
            "clean base64 image",
            JSON,
            format!(
                r#"{{"img":"{}"}}"#,
                b64(&[
                    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44,
                    0x52
                ])
            ),
            None,
        ),
        ("clean form", FORM, "a=b+c&d=%7E".into(), None),
        (
            "percent not decoded outside forms",
            JSON,
            format!(r#"{{"k":"{}"}}"#, pct(key.as_bytes())),
            None,
        ),
        (
            "clean multipart",
            MULTI,
            mp("base64", &b64(b"hello, nothing here")),
            None,
        ),
    ];
    for (name, ct, body, want) in rows {
        let raw = set.scan(body.as_bytes());
        let fields = [(&b"content-type"[..], ct.as_bytes())];
        let got = set
            .scan_request(body.as_bytes(), fields, 1 << 20)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = got.blocked.map(|h| (h.scanner, h.kind));
        assert_eq!(got, want, "{name}: {body}");
        if want.is_some() && !name.starts_with("plain") {
            assert!(raw.blocked.is_none(), "{name}: the raw bytes already match");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Enc {
    JsonU,
    Form,
    Base64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A secret wrapped in up to two layers of the encodings an upstream undoes (JSON escapes,
    /// form encoding on a form body, base64), anywhere in ordinary text, is always found.
    #[test]
    fn encoded_secrets_are_found(
        layers in prop::collection::vec(prop_oneof![Just(Enc::JsonU), Just(Enc::Form), Just(Enc::Base64)], 1..3),
        before in "[a-z ]{0,40}",
        after in "[a-z ]{0,40}",
        secret in prop_oneof![Just("AKIAIOSFODNN7EXAMPLE"), Just("CONFIDENTIAL")],
    ) {
        let set = ScanSet::compile(&[scanner("s", &["aws_access_key"], &["confidential"], None)]).unwrap();
        // form encoding only applies to the body as sent: keep it outermost
        let mut layers = layers;
        let form = layers.iter().any(|l| matches!(l, Enc::Form));
        layers.retain(|l| !matches!(l, Enc::Form));
        let mut text = format!(" {secret} ");
        for l in &layers {
            text = match l {
                Enc::JsonU => json_u(&text),
                Enc::Base64 => format!(" {} ", b64(text.as_bytes())),
                Enc::Form => text,
            };
        }
        let body = if form {
            format!("{}={}&x={}", before.replace(' ', "+"), pct(text.as_bytes()), after.replace(' ', "+"))
        } else {
            format!(r#"{{"a":"{before}","b":"{text}","c":"{after}"}}"#)
        };
        let ct: &[u8] = if form { b"application/x-www-form-urlencoded" } else { b"application/json" };
        let out = set.scan_request(body.as_bytes(), [(&b"content-type"[..], ct)], 1 << 20).unwrap();
        prop_assert!(out.blocked.is_some(), "{:?}: {}", layers, body);
    }

    /// Views never lose a raw hit: whatever the body, a hit of `scan` is a hit of `scan_request`.
    #[test]
    fn views_only_add_hits(body in body()) {
        let set = full_set();
        let raw = set.scan(&body);
        let all = set.scan_request(&body, [(&b"content-type"[..], &b"application/x-www-form-urlencoded"[..])], 1 << 20).unwrap();
        // view hits count from the end of the body: a raw hit always comes first
        prop_assert!(raw.blocked.is_none() || all.blocked == raw.blocked);
        prop_assert!(raw.blocked.is_some() || all.blocked.is_none_or(|h| h.offset >= body.len()));
    }
}
