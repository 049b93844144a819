//! Signals (SIGHUP reload, SIGTERM drain) and connection timeouts.
use crate::support::*;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn sighup_adds_a_proxy_visible_on_a_connection_opened_before_the_reload() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&config_with(2, "", &[proxy("up", &mock.url())]));
    let mut c = gw.conn();
    assert_eq!(c.roundtrip(&get("/up/a")).status, 200);
    let resp = c.roundtrip(&get("/up2/a"));
    assert_gateway_error(&resp, 404, "unknown_proxy");

    gw.write_config(&config_with(
        2,
        "",
        &[
            proxy("up", &mock.url()),
            proxy("up2", &format!("{}/two", mock.url())),
        ],
    ));
    gw.signal("HUP");

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    for _ in 0..200 {
        let resp = c.try_roundtrip(&get("/up2/a"));
        match resp {
            Ok(r) if r.status == 200 => {
                last = Some(r);
                break;
            }
            Ok(r) => {
                assert_eq!(r.status, 404, "before the reload lands: {}", show(&r.raw));
                last = Some(r);
            }
            Err(e) => panic!(
                "the pre-reload connection broke: {e}\nstderr:\n{}",
                gw.stderr_text()
            ),
        }
        if Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let r = last.unwrap();
    assert_eq!(
        r.status,
        200,
        "new proxy not routed within 5 s of SIGHUP: {}",
        show(&r.raw)
    );
    assert_eq!(mock.requests().pop().unwrap().target, "/two/a");
    // The old proxy still works on the same connection, and on a new one.
    assert_eq!(c.roundtrip(&get("/up/b")).status, 200);
    assert_eq!(gw.conn().roundtrip(&get("/up2/b")).status, 200);
}

#[test]
fn sighup_with_a_broken_config_keeps_serving_the_old_one() {
    let mock = MockUpstream::start(echo_request_line);
    let mut gw = Gateway::start(&config_with(2, "", &[proxy("up", &mock.url())]));
    let mut c = gw.conn();
    assert_eq!(c.roundtrip(&get("/up/a")).status, 200);
    let log_before = gw.stderr_text().len();

    gw.write_config(
        "[server]\nlisten = [\"127.0.0.1:{PORT}\"]\nbogus_key = 1\n[[proxies]]\nname = \"up\"\n",
    );
    gw.signal("HUP");
    // The failure is logged...
    let deadline = Instant::now() + Duration::from_secs(3);
    for _ in 0..300 {
        if gw.stderr_text().len() > log_before || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let log = gw.stderr_text();
    assert!(
        log.len() > log_before,
        "a failed reload must be logged; stderr:\n{log}"
    );
    assert!(
        gw.is_running(),
        "a failed reload must not stop the gateway; stderr:\n{log}"
    );
    // ...and the old config keeps serving, on the old connection and on new ones.
    let resp = c.roundtrip(&get("/up/b"));
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    assert_eq!(mock.requests().pop().unwrap().target, "/b");
    assert_eq!(gw.conn().roundtrip(&get("/up/c")).status, 200);

    // A later good reload still works.
    gw.write_config(&config_with(
        2,
        "",
        &[proxy("up", &mock.url()), proxy("up3", &mock.url())],
    ));
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = 0;
    for attempt in 0..200 {
        let t = Instant::now();
        let mut fresh = gw.conn();
        status = match fresh.try_roundtrip(&get("/up3/x")) {
            Ok(r) => r.status,
            Err(e) => panic!(
                "attempt {attempt}: no response on a new connection after {:?} around the reload: {e}\n\
                 upstream saw {} requests (last: {:?}), mock errors {:?}\nstderr:\n{}",
                t.elapsed(),
                mock.count(),
                mock.requests().last().map(|r| r.request_line()),
                mock.errors(),
                gw.stderr_text()
            ),
        };
        if status == 200 || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status, 200, "good reload after a bad one");
}

#[test]
fn sigterm_lets_an_in_flight_response_finish_then_exits_zero() {
    let started = Gate::new();
    let s2 = started.clone();
    let mock = MockUpstream::start(move |_| {
        Reply::actions(vec![
            Action::Write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nfirst"
                    .to_vec(),
            ),
            Action::Signal(s2.clone()),
            Action::Sleep(Duration::from_millis(1500)),
            Action::Write(b"-last".to_vec()),
        ])
    });
    let mut gw = Gateway::start(&config_with(2, "", &[proxy("up", &mock.url())]));
    let port = gw.port();
    let mut c = gw.conn();
    c.send(&get("/up/slow"));
    assert!(
        started.wait(Duration::from_secs(5)),
        "upstream never got the request"
    );
    let head = c.r.read_head(false).expect("response head before SIGTERM");
    assert_eq!(head.status, 200);
    gw.signal("TERM");
    // While the response is still in flight (the upstream sleeps 1.5 s), the gateway stops
    // accepting: within 1 s a new connection is refused.
    let term_at = Instant::now();
    let mut refused_after = None;
    for _ in 0..50 {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_err()
        {
            refused_after = Some(term_at.elapsed());
            break;
        }
        if term_at.elapsed() > Duration::from_secs(1) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        refused_after.is_some(),
        "new connections still accepted 1 s after SIGTERM"
    );
    let mut body = Vec::new();
    for _ in 0..10_000 {
        match c.r.read_body_part() {
            Ok(Some(p)) => body.extend_from_slice(&p),
            Ok(None) => break,
            Err(e) => panic!(
                "in-flight response cut by SIGTERM: {e}; body so far {}",
                show(&body)
            ),
        }
    }
    assert_eq!(body, b"first-last");
    let status = gw.wait_exit(Duration::from_secs(5));
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running 5 s after the in-flight response; stderr:\n{}",
            gw.stderr_text()
        )
    });
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        gw.stderr_text()
    );
    let refused =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1));
    assert!(refused.is_err(), "connections must be refused after exit");
}

#[test]
fn sigterm_with_an_idle_keepalive_connection_exits_promptly() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let mut gw = Gateway::start(&config_with(2, "", &[proxy("up", &mock.url())]));
    let mut c = gw.conn();
    assert_eq!(c.roundtrip(&get("/up/a")).status, 200);
    let start = Instant::now();
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "an idle keep-alive connection kept the gateway alive; stderr:\n{}",
            gw.stderr_text()
        )
    });
    assert!(status.success(), "exit status {status}");
    eprintln!("exited {:?} after SIGTERM", start.elapsed());
    c.wait_closed(Duration::from_secs(1))
        .expect("idle connection closed at exit");
}

#[test]
fn stalled_half_head_is_closed_after_head_timeout() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let gw = Gateway::start(&config_with(
        2,
        "head_timeout = \"500ms\"",
        &[proxy("up", &mock.url())],
    ));
    let mut c = gw.conn();
    c.send(b"GET /up/x HTTP/1.1\r\nHost: gw\r\nX-Half");
    let took = c
        .wait_closed(Duration::from_millis(2500))
        .expect("half-head connection closed within head_timeout + 2 s");
    assert!(
        took >= Duration::from_millis(400),
        "closed after only {took:?}"
    );
    assert_eq!(mock.count(), 0);
}

#[test]
fn head_timeout_bounds_the_whole_head_not_each_read() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let gw = Gateway::start(&config_with(
        2,
        "head_timeout = \"1s\"",
        &[proxy("up", &mock.url())],
    ));
    let mut c = gw.conn();
    c.send(b"GET /up/x HTTP/1.1\r\nHost: gw\r\n");
    let start = Instant::now();
    // Trickle a header byte every 200 ms; the gateway must close within head_timeout + 2 s.
    let mut closed = false;
    for _ in 0..20 {
        if c.try_send(b"X").is_err() {
            closed = true;
            break;
        }
        if c.wait_closed(Duration::from_millis(200)).is_ok() {
            closed = true;
            break;
        }
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(
        closed,
        "slow-trickled head still open after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        start.elapsed()
    );
    assert_eq!(mock.count(), 0);
}

#[test]
fn idle_keepalive_connection_is_closed_after_idle_timeout() {
    let mock = MockUpstream::start(|_| Reply::ok("ok"));
    let gw = Gateway::start(&config_with(
        2,
        "idle_timeout = \"1s\"",
        &[proxy("up", &mock.url())],
    ));
    let mut c = gw.conn();
    assert_eq!(c.roundtrip(&get("/up/a")).status, 200);
    // Still usable shortly after.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(c.roundtrip(&get("/up/b")).status, 200);
    let took = c
        .wait_closed(Duration::from_secs(3))
        .expect("idle connection closed within idle_timeout + 2 s");
    assert!(
        took >= Duration::from_millis(800),
        "idle connection closed after only {took:?}"
    );
}

#[test]
fn requests_racing_repeated_reloads_are_all_answered() {
    let mock = MockUpstream::start(echo_request_line);
    let gw = Gateway::start(&config_with(2, "", &[proxy("up", &mock.url())]));
    let port = gw.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let client = thread::spawn(move || -> Result<usize, String> {
        let mut n = 0;
        let mut keep = Conn::connect(port);
        for i in 0..100_000 {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            // Alternate a fresh connection and a long-lived keep-alive one.
            let resp = if i % 2 == 0 {
                Conn::connect(port).try_roundtrip(&get("/up/x"))
            } else {
                keep.try_roundtrip(&get("/up/y"))
            };
            match resp {
                Ok(r) if r.status == 200 => n += 1,
                Ok(r) => return Err(format!("request {i}: {}", show(&r.raw))),
                Err(e) => {
                    return Err(format!(
                        "request {i} ({}): {e}",
                        if i % 2 == 0 { "fresh" } else { "keep-alive" }
                    ));
                }
            }
        }
        Ok(n)
    });
    for i in 0..30 {
        let extra = if i % 2 == 0 {
            vec![proxy("up", &mock.url()), proxy("other", &mock.url())]
        } else {
            vec![proxy("up", &mock.url())]
        };
        gw.write_config(&config_with(2, "", &extra));
        gw.signal("HUP");
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let res = client.join().unwrap();
    match res {
        Ok(n) => assert!(n > 10, "only {n} requests completed during the reloads"),
        Err(e) => panic!(
            "{e}\nupstream saw {} requests\nstderr:\n{}",
            mock.count(),
            gw.stderr_text()
        ),
    }
}

#[test]
fn waiting_for_a_slow_upstream_is_not_cut_by_idle_or_head_timeout() {
    let mock = MockUpstream::start(|_| {
        Reply::actions(vec![
            Action::Sleep(Duration::from_millis(2000)),
            Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec()),
        ])
    });
    let gw = Gateway::start(&config_with(
        2,
        "idle_timeout = \"1s\"\nhead_timeout = \"1s\"",
        &[proxy("up", &mock.url())],
    ));
    let mut c = gw.conn();
    let resp = c.roundtrip(&get("/up/slow"));
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    assert_eq!(resp.body, b"slow");
}
