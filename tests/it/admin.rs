//! The admin listener (probes, `POST /v1/reload`) and the quickstart config with its built-in
//! demo upstream.
use crate::support::*;

fn admin_req(method: &str, path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n")
        .into_bytes()
}

fn admin(port: u16, method: &str, path: &str, token: Option<&str>) -> Response {
    let raw = send_raw(port, &admin_req(method, path, token));
    parse_response(&raw).unwrap_or_else(|e| panic!("admin {method} {path}: {e}: {}", show(&raw)))
}

fn config(admin_port: u16, token: Option<&str>, proxies: &[String]) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:{{PORT}}\"]\nworkers = 2\nadmin_listen = \"127.0.0.1:{admin_port}\"\n"
    );
    if token.is_some() {
        // secrets are references, never literals: the token file sits next to the config
        s.push_str("admin_token = \"file:admin.token\"\n");
    }
    s.push('\n');
    for p in proxies {
        s.push_str(p);
        s.push('\n');
    }
    s
}

#[test]
fn probes_answer_and_unknown_admin_paths_are_404() {
    let mock = MockUpstream::start(echo_request_line);
    let admin_port = free_port();
    let _gw = Gateway::start(&config(admin_port, None, &[proxy("up", &mock.url())]));
    wait_admin(admin_port);
    let r = admin(admin_port, "GET", "/healthz", None);
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    let r = admin(admin_port, "GET", "/readyz", None);
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert_eq!(r.body_str(), r#"{"status":"ready"}"#);
    let r = admin(admin_port, "GET", "/nope", None);
    assert_eq!(r.status, 404, "{}", show(&r.raw));
    let r = admin(admin_port, "POST", "/v1/reload", None);
    assert_eq!(
        r.status,
        403,
        "reload without admin_token configured: {}",
        show(&r.raw)
    );
    assert!(r.body_str().contains("admin_disabled"), "{}", r.body_str());
}

#[test]
fn post_reload_needs_the_token_swaps_the_config_and_reports_a_broken_one() {
    let mock = MockUpstream::start(echo_request_line);
    let admin_port = free_port();
    let token = "t0ken-for-tests";
    let gw = Gateway::start_with_files(
        &config(admin_port, Some(token), &[proxy("up", &mock.url())]),
        &[("admin.token", format!("{token}\n").as_bytes())],
    );
    wait_admin(admin_port);
    let mut c = gw.conn();
    assert_gateway_error(&c.roundtrip(&get("/up2/a")), 404, "unknown_proxy");

    // the new config is on disk, but nothing changes without an authorised reload
    let port_line = format!("127.0.0.1:{}", gw.port());
    let with_up2 = config(
        admin_port,
        Some(token),
        &[
            proxy("up", &mock.url()),
            proxy("up2", &format!("{}/two", mock.url())),
        ],
    )
    .replace("127.0.0.1:{PORT}", &port_line);
    gw.write_config(&with_up2);
    for bad in [None, Some("wrong")] {
        let r = admin(admin_port, "POST", "/v1/reload", bad);
        assert_eq!(r.status, 401, "{}", show(&r.raw));
        assert!(r.body_str().contains("unauthenticated"), "{}", r.body_str());
    }
    assert_gateway_error(&c.roundtrip(&get("/up2/a")), 404, "unknown_proxy");

    let r = admin(admin_port, "POST", "/v1/reload", Some(token));
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    assert!(
        r.body_str().contains("\"reloaded\":true"),
        "{}",
        r.body_str()
    );
    // the reply comes after every worker has the new config: the old connection sees it now
    let resp = c.roundtrip(&get("/up2/a"));
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    assert_eq!(mock.requests().last().unwrap().target, "/two/a");

    // a broken config: 400 with the file:line: key: message, and the old config keeps serving
    gw.write_config(&format!(
        "[server]\nlisten = [\"{port_line}\"]\nadmin_listen = \"127.0.0.1:{admin_port}\"\nadmin_token = \"file:admin.token\"\n[[proxies]]\nname = \"up\"\nupstream = \"gopher://x\"\n"
    ));
    let r = admin(admin_port, "POST", "/v1/reload", Some(token));
    assert_eq!(r.status, 400, "{}", show(&r.raw));
    let body = r.body_str();
    assert!(body.contains("reload_failed"), "{body}");
    assert!(
        body.contains("portcullis.toml:7: proxies[0].upstream"),
        "{body}"
    );
    assert_eq!(c.roundtrip(&get("/up2/b")).status, 200);
    assert_eq!(gw.conn().roundtrip(&get("/up/b")).status, 200);
}

#[test]
fn quickstart_config_serves_the_demo_upstream_offline() {
    let port = free_port();
    let demo_port = free_port();
    let admin_port = free_port();
    let quick = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/quickstart.toml"
    ))
    .unwrap()
    .replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
    .replace("127.0.0.1:8081", &format!("127.0.0.1:{demo_port}"))
    .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin_port}"));
    let _ = port;
    let gw = Gateway::start(&quick);
    let mut c = gw.conn();
    let resp = c.roundtrip(
        b"GET /demo/hello/./x%7e?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\nX-Agent: a1\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(echo["demo"], true);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/hello/x~");
    assert_eq!(echo["query"], "x=1");
    let headers = echo["headers"].as_array().unwrap();
    let names: Vec<&str> = headers.iter().map(|h| h[0].as_str().unwrap()).collect();
    assert_eq!(names[0], "Host");
    assert_eq!(headers[0][1], format!("127.0.0.1:{demo_port}"));
    assert!(
        names.contains(&"X-Agent") && names.contains(&"X-Request-Id"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.eq_ignore_ascii_case("connection")),
        "{names:?}"
    );
    // the id the demo saw is the one the agent got back
    let id = resp.header("x-request-id").unwrap().to_string();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "X-Request-Id" && h[1] == id.as_str())
    );

    // SSE through the gateway: five events
    let resp = c.roundtrip(&get("/demo/sse"));
    assert_eq!(resp.status, 200, "{}", show(&resp.raw));
    assert_eq!(
        resp.body_str().matches("data:").count(),
        5,
        "{}",
        resp.body_str()
    );

    assert_gateway_error(&c.roundtrip(&get("/nope")), 404, "unknown_proxy");
    let r = admin(admin_port, "GET", "/readyz", None);
    assert_eq!(r.status, 200);
}
