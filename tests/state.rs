//! The live colour and generation survive a restart; a bad state file does not stop one.

mod support;

use http::Method;
use support::{Proxy, backend, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_same_state_file_comes_back_on_the_last_acknowledged_colour() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let extra = format!("[state]\nfile = \"{}\"", state.display());

    let mut first = Proxy::start_in(dir, &[blue], &[green], &extra).await;
    assert_eq!(first.status().await["state"]["restored"], false);
    first.switch("green").await;
    let (status, _) = first.admin(Method::POST, "/rollback", "").await;
    assert!(status.is_success());
    first.switch("green").await; // generation 4, previous blue
    first.stop().await;

    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state file written"))
            .expect("state is JSON");
    assert_eq!(on_disk["live"], "green");
    assert_eq!(on_disk["generation"], 4);

    // The config still says live = "blue"; the state file wins.
    let dir = first.take_dir();
    let second = Proxy::start_in(dir, &[blue], &[green], &extra).await;
    let status = second.status().await;
    assert_eq!(status["live"], "green");
    assert_eq!(status["generation"], 4);
    assert_eq!(status["previous"], "blue");
    assert_eq!(status["state"]["restored"], true);
    assert_eq!(get(second.addr, "/").await.text(), "green");
    // Rollback still knows where to go after the restart.
    let (_, body) = second.admin(Method::POST, "/rollback", "").await;
    assert_eq!(body["live"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_state_file_is_reported_and_ignored() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{\"live\": \"gre").expect("write truncated state");
    let extra = format!("[state]\nfile = \"{}\"", state.display());

    let proxy = Proxy::start_in(dir, &[blue], &[green], &extra).await;
    let status = proxy.status().await;
    assert_eq!(status["live"], "blue", "falls back to routing.live");
    assert_eq!(status["state"]["restored"], false);
    let error = status["state"]["error"]
        .as_str()
        .expect("the problem is reported on /status");
    assert!(
        error.contains("corrupt") && error.contains("state.json"),
        "{error}"
    );
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");

    // The next switch rewrites the file whole.
    proxy.switch("green").await;
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state")).expect("valid JSON again");
    assert_eq!(on_disk["live"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_cannot_be_persisted_answers_500_and_changes_nothing() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    // The state "file" is a directory: reading it fails at start, renaming over it fails.
    let state = dir.path().join("state.json");
    std::fs::create_dir(&state).expect("mkdir");
    let extra = format!("[state]\nfile = \"{}\"", state.display());

    let proxy = Proxy::start_in(dir, &[blue], &[green], &extra).await;
    let status = proxy.status().await;
    assert!(
        status["state"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read")),
        "{status}"
    );

    let (code, body) = proxy
        .admin(Method::POST, "/switch", "{\"to\":\"green\"}")
        .await;
    assert_eq!(code, http::StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("routing is unchanged"),
        "{body}"
    );
    let after = proxy.status().await;
    assert_eq!(after["live"], "blue");
    assert_eq!(after["generation"], status["generation"]);
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}
