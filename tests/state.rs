//! The live colour and generation survive a restart; a bad state file does not stop one.

mod support;

use std::time::Duration;

use http::Method;
use support::rollouts::{history_actions, start_rollout, wait_rollout};
use support::{Conn, Proxy, backend, get, request};

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

/// A rollout at 25 % with an hour-long first step, on a proxy with a state file;
/// returns the proxy once the step is on.
async fn proxy_mid_rollout(
    dir: tempfile::TempDir,
    blue: std::net::SocketAddr,
    green: std::net::SocketAddr,
    extra: &str,
) -> Proxy {
    let proxy = Proxy::start_in(dir, &[blue], &[green], extra).await;
    start_rollout(
        &proxy,
        r#"{"to":"green","steps":[{"percent":25,"duration":"1h"},100],"gates":{"min_requests":1}}"#,
    )
    .await;
    wait_rollout(&proxy, "the first step", Duration::from_secs(10), |r| {
        r["state"] == "running" && r["weight"] == 2500
    })
    .await;
    proxy
}

/// How many of `n` requests, each with a key of its own, green answered.
async fn green_answers(proxy: &Proxy, n: usize) -> usize {
    let mut conn = Conn::open(proxy.addr).await;
    let mut green = 0;
    for i in 0..n {
        let mut req = request(Method::GET, "/", "");
        req.headers_mut().insert(
            http::header::COOKIE,
            format!("cutover-bucket=restart-key-{i}")
                .parse()
                .expect("cookie"),
        );
        if conn.send(req).await.expect("answer").text() == "green" {
            green += 1;
        }
    }
    green
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_resumes_its_step_with_the_canary_weight_kept() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let extra = format!("[state]\nfile = \"{}\"", state.display());
    let mut first = proxy_mid_rollout(dir, blue, green, &extra).await;
    let before = green_answers(&first, 400).await;
    let (_, r) = first.admin(Method::GET, "/rollout", "").await;
    let id = r["id"].clone();
    first.stop().await;

    let second = Proxy::start_in(first.take_dir(), &[blue], &[green], &extra).await;
    let r = wait_rollout(&second, "the resumed step", Duration::from_secs(10), |r| {
        r["state"] == "running"
    })
    .await;
    assert_eq!(r["id"], id, "the same rollout: {r}");
    assert_eq!(r["step"], 0, "{r}");
    assert_eq!(r["weight"], 2500, "{r}");
    let status = second.status().await;
    assert_eq!(status["live"], "blue", "{status}");
    assert_eq!(status["canary"]["color"], "green", "{status}");
    assert_eq!(status["canary"]["weight"], 2500, "{status}");
    // The same keys land where they did before the restart.
    assert_eq!(green_answers(&second, 400).await, before);
    assert!(
        (50..=150).contains(&before),
        "about a quarter of 400: {before}"
    );
    let actions = history_actions(&second).await;
    assert!(actions.iter().any(|a| a == "rollout.resume"), "{actions:?}");
    // It still runs: a promotion goes through.
    let (code, body) = second.admin(Method::POST, "/rollout/promote", "").await;
    assert!(code.is_success(), "{body}");
    assert_eq!(second.status().await["live"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_aborts_it_when_on_restart_is_abort() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let extra = format!("[state]\nfile = \"{}\"", state.display());
    let mut first = proxy_mid_rollout(dir, blue, green, &extra).await;
    first.stop().await;

    let abort = format!("{extra}\n\n[rollout]\non_restart = \"abort\"\n");
    let second = Proxy::start_in(first.take_dir(), &[blue], &[green], &abort).await;
    let r = wait_rollout(&second, "the abort", Duration::from_secs(10), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(r["state"], "aborted", "{r}");
    let status = second.status().await;
    assert_eq!(status["live"], "blue", "{status}");
    assert!(
        status["canary"].is_null(),
        "the canary is cleared: {status}"
    );
    assert_eq!(green_answers(&second, 100).await, 0);
    let actions = history_actions(&second).await;
    assert!(actions.iter().any(|a| a == "rollout.abort"), "{actions:?}");
    // And the abort is what the state file now holds: a third start finds nothing to
    // resume.
    let mut second = second;
    second.stop().await;
    let third = Proxy::start_in(second.take_dir(), &[blue], &[green], &extra).await;
    let (_, r) = third.admin(Method::GET, "/rollout", "").await;
    assert_eq!(r["state"], "aborted", "{r}");
    assert!(third.status().await["canary"].is_null());
}

/// `cutover_state_persisted` from the admin socket's /metrics.
async fn persisted_gauge(proxy: &Proxy) -> String {
    let (_, text) = support::admin_text(&proxy.socket, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with("cutover_state_persisted "))
        .unwrap_or("no cutover_state_persisted")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_way_back_works_when_the_state_file_cannot_be_written_and_is_written_once_it_can() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).expect("mkdir");
    let state = state_dir.join("state.json");
    let extra = format!("[state]\nfile = \"{}\"", state.display());
    let proxy = Proxy::start_in(dir, &[blue], &[green], &extra).await;
    proxy.switch("green").await;
    assert_eq!(persisted_gauge(&proxy).await, "cutover_state_persisted 1");
    // The disk goes away under the state file (a full or failed disk looks the same).
    std::fs::remove_dir_all(&state_dir).expect("rm state dir");

    // An ordinary switch still refuses and changes nothing.
    let (code, body) = proxy
        .admin(Method::POST, "/switch", r#"{"to":"blue"}"#)
        .await;
    assert_eq!(code, http::StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(proxy.status().await["live"], "green");

    // A rollback takes effect, says loudly that it is not persisted.
    let out = tokio::task::spawn_blocking({
        let socket = proxy.socket.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
                .args(["ctl", "--socket", &socket.display().to_string(), "rollback"])
                .env("CUTOVER_LOG", "error")
                .output()
                .expect("ctl rollback")
        }
    })
    .await
    .expect("ctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("NOT PERSISTED"), "{stdout}");
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    let status = proxy.status().await;
    assert_eq!(status["live"], "blue");
    assert_eq!(status["state"]["persisted"], false, "{status}");
    assert!(
        status["state"]["not_persisted"]
            .as_str()
            .is_some_and(|w| w.contains("could not write")),
        "{status}"
    );
    assert_eq!(persisted_gauge(&proxy).await, "cutover_state_persisted 0");

    // So does a forced switch, with the warning in the answer.
    let (code, body) = proxy
        .admin(Method::POST, "/switch", r#"{"to":"green","force":true}"#)
        .await;
    assert_eq!(code, http::StatusCode::OK, "{body}");
    assert!(body["warning"].is_string(), "{body}");
    assert_eq!(get(proxy.addr, "/").await.text(), "green");
    let generation = body["generation"].clone();

    // The disk comes back: the retry writes what is in effect.
    std::fs::create_dir(&state_dir).expect("mkdir again");
    let status = proxy
        .wait_until("the state file written again", |s| {
            s["state"]["persisted"] == true
        })
        .await;
    assert!(status["state"]["not_persisted"].is_null(), "{status}");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state file")).expect("JSON");
    assert_eq!(on_disk["live"], "green");
    assert_eq!(on_disk["generation"], generation);
    assert_eq!(persisted_gauge(&proxy).await, "cutover_state_persisted 1");
}
