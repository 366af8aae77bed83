//! Per-backend operator states: ready, drain, maint; audited, persisted, over the admin
//! socket and `ctl backend`.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::rollouts::history_actions;
use support::{Conn, Proxy, TestBackend, backend, get};

async fn set_state(proxy: &Proxy, address: &str, state: &str) -> (StatusCode, serde_json::Value) {
    proxy
        .admin(
            Method::POST,
            &format!("/backends/{address}/state"),
            &format!(r#"{{"state":"{state}"}}"#),
        )
        .await
}

/// The bodies of `n` GETs on one connection.
async fn answers(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut conn = Conn::open(proxy.addr).await;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(conn.get("/").await.text().to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_maint_stops_checks_and_both_survive_a_restart() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let green = backend("green").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let extra = format!(
        "[state]\nfile = \"{}\"\n\n[pools.blue.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 1\nfall = 1\n",
        state.display()
    );
    let mut proxy = Proxy::start_in(dir, &[b1.addr, b2.addr], &[green], &extra).await;
    let a1 = b1.addr.to_string();

    // One slow request on each backend (round-robin), then b1 drains under them.
    let slow = |addr| tokio::spawn(async move { get(addr, "/slow?ms=600").await });
    let (s1, s2) = (slow(proxy.addr), slow(proxy.addr));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (code, body) = set_state(&proxy, &a1, "drain").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], true, "{body}");
    let mut finished = vec![
        s1.await.expect("slow 1").text().to_owned(),
        s2.await.expect("slow 2").text().to_owned(),
    ];
    finished.sort();
    assert_eq!(
        finished,
        ["b1", "b2"],
        "the request in flight on b1 finished there"
    );
    assert!(answers(&proxy, 20).await.iter().all(|a| a == "b2"));
    let status = proxy.status().await;
    assert_eq!(status["pools"]["blue"]["backends"][0]["state"], "drain");
    assert_eq!(status["pools"]["blue"]["healthy"], 1, "{status}");

    // maint through ctl: its health checks stop.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "ctl",
            "--socket",
            &proxy.socket.display().to_string(),
            "backend",
            &a1,
            "maint",
        ])
        .output()
        .expect("ctl backend");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is now maint"), "{stdout}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checked = b1.accepted();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b1.accepted(),
        checked,
        "no health check reached b1 in maint"
    );
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "ctl",
            "--socket",
            &proxy.socket.display().to_string(),
            "status",
        ])
        .output()
        .expect("ctl status");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&a1) && l.contains(" maint ")),
        "{table}"
    );

    // A restart on the same state file keeps it out.
    proxy.stop().await;
    let proxy = Proxy::start_in(proxy.take_dir(), &[b1.addr, b2.addr], &[green], &extra).await;
    let status = proxy.status().await;
    assert_eq!(
        status["pools"]["blue"]["backends"][0]["state"], "maint",
        "{status}"
    );
    assert!(answers(&proxy, 10).await.iter().all(|a| a == "b2"));

    // Ready again: checked again, then back in rotation.
    let (code, body) = set_state(&proxy, &a1, "ready").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    proxy
        .wait_until("b1 back", |s| s["pools"]["blue"]["healthy"] == 2)
        .await;
    assert!(answers(&proxy, 10).await.iter().any(|a| a == "b1"));
    let actions = history_actions(&proxy).await;
    assert_eq!(
        actions.iter().filter(|a| *a == "backend.state").count(),
        3,
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_backend_state_request_is_refused_and_changes_nothing() {
    let blue = backend("blue").await;
    let proxy = Proxy::start(&[blue], &[backend("green").await], "").await;
    let before = proxy.status().await;
    let cases: [(&str, &str, StatusCode, &str); 4] = [
        (
            "127.0.0.1:1",
            r#"{"state":"drain"}"#,
            StatusCode::NOT_FOUND,
            "no backend 127.0.0.1:1",
        ),
        (
            &blue.to_string(),
            r#"{"state":"down"}"#,
            StatusCode::BAD_REQUEST,
            "ready, drain or maint",
        ),
        (&blue.to_string(), "", StatusCode::BAD_REQUEST, "empty body"),
        (
            &blue.to_string(),
            r#"{"state":"drain","x":1}"#,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ];
    for (address, body, status, says) in cases {
        let (code, answer) = proxy
            .admin(Method::POST, &format!("/backends/{address}/state"), body)
            .await;
        assert_eq!(code, status, "{address} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(says)),
            "{address} {body}: {answer}"
        );
    }
    let (code, _) = proxy
        .admin(Method::GET, &format!("/backends/{blue}/state"), "")
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let after = proxy.status().await;
    assert_eq!(after["pools"]["blue"]["backends"][0]["state"], "ready");
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}
