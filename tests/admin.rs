//! The admin API: bad input gets a JSON error and changes nothing; the socket is private.

mod support;

use std::os::unix::fs::PermissionsExt;

use http::{Method, StatusCode};
use support::{Proxy, backend, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_an_unknown_colour_and_an_unknown_path_get_json_errors_and_change_nothing() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let before = proxy.status().await;

    let cases = [
        (
            Method::POST,
            "/switch",
            "{\"to\": ",
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            Method::POST,
            "/switch",
            "{\"to\": \"purple\"}",
            StatusCode::BAD_REQUEST,
            "unknown colour",
        ),
        (
            Method::POST,
            "/switch",
            "{\"to\": \"green\", \"forcee\": true}",
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            Method::POST,
            "/switch",
            "",
            StatusCode::BAD_REQUEST,
            "empty body",
        ),
        (
            Method::POST,
            "/rollback",
            "[1,2]",
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            Method::GET,
            "/nope",
            "",
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
        (
            Method::GET,
            "/switch",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST",
        ),
        (
            Method::DELETE,
            "/status",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET",
        ),
    ];
    for (method, path, body, want, says) in cases {
        let (status, json) = proxy.admin(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path} {body:?}: {json}");
        let error = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {json}"));
        assert!(
            error.contains(says),
            "{method} {path}: {error:?} should say {says:?}"
        );
    }

    let after = proxy.status().await;
    assert_eq!(after["live"], before["live"]);
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_file_mode_is_0600() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let mode = std::fs::metadata(&proxy.socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode is {:o}", mode & 0o777);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_but_a_live_one_is_not() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    // A leftover socket file nothing listens on, as after a crash.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind leftover"));
    assert!(socket.exists());

    let first = Proxy::start_in(dir, &[blue], &[green], "").await;
    assert_eq!(first.status().await["live"], "blue");

    // A second proxy on the same socket path refuses to start and leaves the first alone.
    let text = support::config_text(first.dir.path(), &[blue], &[green], "");
    let config =
        cutover::config::Config::parse(&text, std::path::Path::new("t.toml")).expect("valid");
    let err = match cutover::server::Server::bind(config).await {
        Ok(_) => panic!("a second proxy took over a live admin socket"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("in use"), "{err}");
    assert_eq!(first.status().await["live"], "blue");
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_and_a_thousand_idle_connections_leave_rss_flat_and_the_socket_answering()
 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let before = rss_kib();
    // 30,000 body bytes, one write each.
    let mut slow = tokio::net::UnixStream::connect(&proxy.socket)
        .await
        .expect("connect");
    slow.write_all(b"POST /switch HTTP/1.1\r\nHost: cutover\r\nContent-Length: 60000\r\n\r\n")
        .await
        .expect("head");
    for _ in 0..30_000 {
        slow.write_all(b" ").await.expect("a byte");
    }
    // A thousand idle connections: those past the cap are closed at once.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(s) = tokio::net::UnixStream::connect(&proxy.socket).await {
            idle.push(s);
        }
    }
    // The socket still answers (a slot frees as soon as a capped connection closes;
    // the idle ones are closed at the header timeout).
    let answered = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            if let Ok(mut s) = tokio::net::UnixStream::connect(&proxy.socket).await {
                let asked = s
                    .write_all(
                        b"GET /status HTTP/1.1\r\nHost: cutover\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let mut answer = Vec::new();
                if asked.is_ok()
                    && s.read_to_end(&mut answer).await.is_ok()
                    && answer.starts_with(b"HTTP/1.1 200")
                {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    let grown = rss_kib().saturating_sub(before);
    assert!(answered.is_ok(), "the admin socket stopped answering");
    assert!(grown < 30 * 1024, "RSS grew by {grown} KiB");
    // The slow body is refused when its time is up, and nothing changed.
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut reply),
    )
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(proxy.status().await["live"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_off_the_control_list_gets_403_for_a_switch_and_200_for_status() {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().expect("temp file");
    let me = probe.as_file().metadata().expect("metadata").uid();
    let other = me + 4242;
    let backends = [backend("blue").await, backend("green").await];
    for (lists, status_code, switch_code) in [
        (format!("[admin.control]\nuids = [{other}]"), 200, 403),
        (format!("[admin.control]\nuids = [{me}]"), 200, 200),
        (format!("[admin.read]\nuids = [{other}]"), 403, 200),
        (
            format!("[admin.read]\nuids = [{other}]\n[admin.control]\nuids = [{me}]"),
            200,
            200,
        ),
    ] {
        let proxy = Proxy::start(&backends[..1], &backends[1..], &lists).await;
        let (status, _) = proxy.admin(Method::GET, "/status", "").await;
        assert_eq!(status.as_u16(), status_code, "GET /status with {lists:?}");
        let (status, body) = proxy
            .admin(Method::POST, "/switch", r#"{"to":"green"}"#)
            .await;
        assert_eq!(
            status.as_u16(),
            switch_code,
            "POST /switch with {lists:?}: {body}"
        );
        if switch_code == 403 {
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(&me.to_string()), "{error}");
            // Nothing changed.
            assert_eq!(get(proxy.addr, "/").await.text(), "blue");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_gets_the_configured_group_and_mode_and_an_unknown_group_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let backends = [backend("blue").await, backend("green").await];
    // gid 1 stands for "a group other than the process's own"; a name works as well.
    let proxy = Proxy::start(&backends[..1], &backends[1..], "").await;
    let own = std::fs::metadata(&proxy.socket).expect("socket").gid();
    let other = if own == 1 { 2 } else { 1 };
    drop(proxy);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = support::config_text(dir.path(), &backends[..1], &backends[1..], "").replace(
        "[pools.blue]",
        &format!("group = \"{other}\"\nmode = 0o660\n\n[pools.blue]"),
    );
    let proxy = Proxy::from_text(dir, &text).await;
    let meta = std::fs::metadata(&proxy.socket).expect("socket");
    assert_eq!(meta.gid(), other);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(proxy.status().await["live"], "blue");
    // A name that is no group on this machine is a config problem, named.
    let bad = support::config_text(
        std::path::Path::new("/tmp"),
        &backends[..1],
        &backends[1..],
        "",
    )
    .replace(
        "[pools.blue]",
        "group = \"no-such-group-here\"\n\n[pools.blue]",
    );
    let err = cutover::config::Config::parse(&bad, std::path::Path::new("t.toml"))
        .expect_err("an unknown group is refused");
    assert!(err.to_string().contains("admin.group"), "{err}");
}
