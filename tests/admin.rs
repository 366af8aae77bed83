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
