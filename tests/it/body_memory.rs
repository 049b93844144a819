//! Issue 12, "Memory and time bounds": the request bodies a worker holds in flight are bounded
//! by `[limits] max_body_memory`. Slow agents that hold their bodies half-sent fill the budget;
//! the next body is refused 503 `overloaded` before a byte of it is read (nothing goes
//! upstream), and the reservation comes back when the slow ones finish. The bound is measured
//! in bytes of the gateway's resident memory, not in time.
use crate::audit::{ADMIN_TOKEN, admin_get, calls};
use crate::support::*;
use std::time::Duration;

const BODY: usize = 1_000_000;

fn config(upstream: &str, admin: u16, max_body_memory: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{{PORT}}"]
workers = 1
admin_listen = "127.0.0.1:{admin}"
admin_token = "file:admin.token"

[limits]
max_request_body = "1MiB"
max_body_memory = "{max_body_memory}"
idle_timeout = "60s"
body_timeout = "60s"

[audit]
dir = "audit"
fsync = "1s"

[[proxies]]
name = "up"
upstream = "{upstream}"
default_effect = "allow"
"#
    )
}

fn start(upstream: &str, max_body_memory: &str) -> (Gateway, u16) {
    let admin = free_port();
    let gw = Gateway::start_with_files(
        &config(upstream, admin, max_body_memory),
        &[("admin.token", format!("{ADMIN_TOKEN}\n").as_bytes())],
    );
    wait_admin(admin);
    (gw, admin)
}

fn metric(admin: u16, series: &str) -> u64 {
    let r = admin_get(admin, "/metrics", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let text = r.body_str();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

const RESERVED: &str = "portcullis_body_memory_reserved_bytes{worker=\"0\"}";
const REFUSED: &str = "portcullis_body_memory_refused_total";

fn post_head(len: usize) -> Vec<u8> {
    format!("POST /up/upload HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes()
}

/// Waits (bounded) until the gauge of reserved body bytes reads `want`.
fn wait_reserved(admin: u16, want: u64) {
    let got = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        (metric(admin, RESERVED) == want).then_some(())
    });
    assert!(
        got.is_some(),
        "reserved body bytes never reached {want} (now {})",
        metric(admin, RESERVED)
    );
}

/// Sends the head of a 1 MB POST and waits (bounded, on the gauge and the counter) until the
/// gateway has either reserved its body (`true`) or refused it (`false`).
fn admitted_or_refused(admin: u16, c: &mut Conn, reserved: u64, refused: u64) -> bool {
    c.send(&post_head(BODY));
    let seen = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        if metric(admin, RESERVED) == reserved + BODY as u64 {
            Some(true)
        } else if metric(admin, REFUSED) == refused + 1 {
            Some(false)
        } else {
            None
        }
    });
    seen.expect("the gateway neither reserved nor refused the body")
}

#[test]
fn slow_bodies_fill_max_body_memory_the_next_is_refused_503_overloaded_then_admitted_again() {
    let mock = MockUpstream::start(|req| Reply::ok(&format!("got {}", req.body.len())));
    // room for three 1 MB bodies, not four
    let (gw, admin) = start(&mock.url(), "3MiB");
    let part = vec![b'a'; BODY / 10];
    let mut slow: Vec<Conn> = (0..3)
        .map(|_| {
            let mut c = gw.conn();
            c.set_read_timeout(Duration::from_secs(20));
            c.send(&post_head(BODY));
            c.send(&part);
            c
        })
        .collect();
    wait_reserved(admin, 3 * BODY as u64);

    // the fourth body does not fit: 503 overloaded with Retry-After, before its body is read
    let mut c = gw.conn();
    c.set_read_timeout(Duration::from_secs(10));
    c.send(&post_head(BODY));
    let resp = c.try_read_response().expect("an answer to the fourth POST");
    assert_gateway_error(&resp, 503, "overloaded");
    assert_eq!(resp.header("retry-after"), Some("1"), "{}", show(&resp.raw));
    // an Expect: 100-continue body is refused before it is invited
    let mut c = gw.conn();
    c.set_read_timeout(Duration::from_secs(10));
    let mut head = post_head(BODY);
    head.truncate(head.len() - 2);
    head.extend_from_slice(b"Expect: 100-continue\r\n\r\n");
    c.send(&head);
    let resp = c
        .try_read_response()
        .expect("an answer to the 100-continue POST");
    assert_gateway_error(&resp, 503, "overloaded");
    // a chunked body grows its reservation as its chunks arrive: three 64 KiB chunks do not
    // fit in the 145,728 bytes left
    let mut c = gw.conn();
    c.set_read_timeout(Duration::from_secs(10));
    let mut req =
        b"POST /up/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"10000\r\n");
        req.extend(std::iter::repeat_n(b'k', 0x10000));
        req.extend_from_slice(b"\r\n");
    }
    c.send(&req);
    let resp = c
        .try_read_response()
        .expect("an answer to the chunked POST");
    assert_gateway_error(&resp, 503, "overloaded");
    assert_eq!(mock.count(), 0, "nothing of a refused body may go upstream");
    assert_eq!(metric(admin, REFUSED), 3);
    // what the refused chunked body had reserved is back
    wait_reserved(admin, 3 * BODY as u64);

    // the slow ones finish: each is forwarded whole, and its reservation comes back
    let rest = vec![b'b'; BODY - part.len()];
    for c in &mut slow {
        c.send(&rest);
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", show(&r.raw));
        assert_eq!(r.body_str(), format!("got {BODY}"));
    }
    wait_reserved(admin, 0);

    // a new 1 MB POST is admitted again
    let mut c = gw.conn();
    c.set_read_timeout(Duration::from_secs(20));
    c.send(&post_head(BODY));
    c.send(&vec![b'c'; BODY]);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(mock.count(), 4);
    for req in mock.requests() {
        assert_eq!(req.body.len(), BODY);
    }
    wait_reserved(admin, 0);

    // the refusals are in the audit trail with their code
    let dir = gw.dir().join("audit");
    let recs = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let r = calls(&dir);
        (r.len() >= 7).then_some(r)
    })
    .expect("seven call records");
    let overloaded: Vec<_> = recs
        .iter()
        .filter(|r| r.code.as_deref() == Some("overloaded"))
        .collect();
    assert_eq!(overloaded.len(), 3, "{recs:?}");
    for r in overloaded {
        assert_eq!(r.status, Some(503));
        assert_eq!(r.upstream_status, None);
    }
}

/// VmHWM of a process in KiB (the peak resident set).
fn hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// 48 agents each send a 1 MB body but its last byte and stall. Unbounded, the gateway would
/// hold all 48 MB; with `max_body_memory = "8MiB"` it holds eight bodies, refuses the other 40
/// with 503, and its peak resident set grows by about eight bodies, measured from
/// /proc/PID/status.
#[test]
fn many_slow_one_megabyte_posts_stay_within_max_body_memory_in_resident_bytes() {
    let mock = MockUpstream::start(|req| Reply::ok(&format!("got {}", req.body.len())));
    let (gw, admin) = start(&mock.url(), "8MiB");
    // warm up: the allocator, the pool, the audit writer, one whole body
    for _ in 0..2 {
        let mut c = gw.conn();
        c.set_read_timeout(Duration::from_secs(20));
        c.send(&post_head(BODY));
        c.send(&vec![b'w'; BODY]);
        assert_eq!(c.read_response().status, 200);
    }
    wait_reserved(admin, 0);
    let base_rss = gw.rss_kib().expect("VmRSS");
    let base_hwm = hwm_kib(gw.pid());

    let almost = vec![b's'; BODY - 1];
    let (mut admitted, mut refused) = (Vec::new(), 0u64);
    for _ in 0..48 {
        let mut c = gw.conn();
        c.set_read_timeout(Duration::from_secs(20));
        let reserved = admitted.len() as u64 * BODY as u64;
        if admitted_or_refused(admin, &mut c, reserved, refused) {
            c.send(&almost);
            admitted.push(c);
        } else {
            let r = c.try_read_response().expect("the refusal");
            assert_gateway_error(&r, 503, "overloaded");
            refused += 1;
        }
    }
    assert_eq!(admitted.len(), 8, "8 MiB holds eight 1 MB bodies");
    assert_eq!(refused, 40);
    // every admitted body has arrived but its last byte: the gateway holds them all now
    let held = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let rss = gw.rss_kib()?;
        (rss >= base_rss + 7 * 1000).then_some(rss)
    });
    let rss = held.unwrap_or_else(|| gw.rss_kib().unwrap_or(0));
    let hwm = hwm_kib(gw.pid());
    let grew_kib = hwm.max(base_hwm).saturating_sub(base_rss);
    eprintln!(
        "body memory: base VmRSS {base_rss} KiB, base VmHWM {base_hwm} KiB; holding 8 bodies: \
         VmRSS {rss} KiB, VmHWM {hwm} KiB (+{grew_kib} KiB over the base VmRSS); 40 refused"
    );
    // eight bodies (7.6 MiB) plus the 48 connections' buffers and the allocator's slack; the
    // 48 bodies unbounded would be 46.9 MiB
    assert!(
        grew_kib < 16 * 1024,
        "the peak resident set grew by {grew_kib} KiB holding bodies bounded by 8 MiB"
    );

    for c in &mut admitted {
        c.send(b"!");
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", show(&r.raw));
    }
    wait_reserved(admin, 0);
    assert_eq!(
        mock.count(),
        2 + 8,
        "refused bodies never reach the upstream"
    );
}
