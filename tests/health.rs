//! Health checks decide who gets traffic, and gate every switch.

mod support;

use http::{Method, StatusCode};
use support::{Conn, Proxy, TestBackend};

/// Fast checks so state changes show up within a fraction of a second.
fn health(pool: &str, extra: &str) -> String {
    format!(
        "[pools.{pool}.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_health_check_fails_is_out_of_rotation_after_fall_checks_and_back_after_rise()
 {
    let (b1, b2) = (
        TestBackend::start("blue-1").await,
        TestBackend::start("blue-2").await,
    );
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[b1.addr, b2.addr], &[green.addr], &health("blue", "")).await;
    proxy
        .wait_until("both blue backends verified", |s| {
            s["pools"]["blue"]["backends"]
                .as_array()
                .is_some_and(|bs| bs.iter().all(|b| b["problem"].is_null()))
        })
        .await;

    b1.set_healthy(false);
    let status = proxy
        .wait_until("blue-1 to go down", |s| {
            s["pools"]["blue"]["backends"][0]["healthy"] == false
        })
        .await;
    assert_eq!(
        status["pools"]["blue"]["backends"][0]["problem"],
        "status 500"
    );
    assert_eq!(status["pools"]["blue"]["healthy"], 1);

    let before = b1.hits();
    let mut conn = Conn::open(proxy.addr).await;
    for _ in 0..20 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.text(),
            "blue-2",
            "traffic went to the unhealthy backend"
        );
    }
    assert_eq!(b1.hits(), before);

    b1.set_healthy(true);
    proxy
        .wait_until("blue-1 to come back", |s| {
            s["pools"]["blue"]["backends"][0]["healthy"] == true
        })
        .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(conn.get("/").await.text().to_owned());
    }
    assert!(
        seen.contains("blue-1") && seen.contains("blue-2"),
        "rotation after recovery: {seen:?}"
    );
    assert_eq!(green.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_a_green_pool_with_a_failing_backend_is_refused_naming_it_unless_forced() {
    let blue = TestBackend::start("blue").await;
    let (g1, g2) = (
        TestBackend::start("green-1").await,
        TestBackend::start("green-2").await,
    );
    g2.set_healthy(false);
    let proxy = Proxy::start(&[blue.addr], &[g1.addr, g2.addr], &health("green", "")).await;
    proxy
        .wait_until("green-1 verified, green-2 down", |s| {
            let bs = &s["pools"]["green"]["backends"];
            bs[0]["problem"].is_null() && bs[1]["healthy"] == false
        })
        .await;
    let generation = proxy.status().await["generation"].clone();

    let (status, body) = proxy
        .admin(Method::POST, "/switch", r#"{"to":"green"}"#)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains(&g2.addr.to_string()) && error.contains("status 500"),
        "{error}"
    );
    assert!(
        !error.contains(&g1.addr.to_string()),
        "the healthy backend is not blamed: {error}"
    );
    assert_eq!(body["gate"]["ready"], 1);
    assert_eq!(body["gate"]["required"], 2);

    let (status, plan) = proxy
        .admin(Method::POST, "/switch", r#"{"to":"green","dry_run":true}"#)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "dry run answers what the real call would: {plan}"
    );
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["plan"]["gate"]["backends"][1]["reason"], "status 500");

    let after = proxy.status().await;
    assert_eq!(after["live"], "blue");
    assert_eq!(after["generation"], generation);
    assert_eq!(support::get(proxy.addr, "/").await.text(), "blue");

    let (status, body) = proxy
        .admin(Method::POST, "/switch", r#"{"to":"green","force":true}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["live"], "green");
    // Only the healthy green backend gets traffic.
    for _ in 0..6 {
        assert_eq!(support::get(proxy.addr, "/").await.text(), "green-1");
    }
    assert_eq!(g2.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_backend_healthy_for_less_than_warmup_is_refused_as_not_warm() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    green.set_healthy(false);
    // `warmup` is a key of the [pools.green] table itself.
    let proxy = Proxy::start_with(
        &[blue.addr],
        &[green.addr],
        "warmup = \"1500ms\"",
        &health("green", ""),
    )
    .await;

    proxy
        .wait_until("green down", |s| {
            s["pools"]["green"]["backends"][0]["healthy"] == false
        })
        .await;
    green.set_healthy(true);
    proxy
        .wait_until("green verified healthy", |s| {
            s["pools"]["green"]["backends"][0]["problem"].is_null()
        })
        .await;

    let (status, body) = proxy
        .admin(Method::POST, "/switch", r#"{"to":"green"}"#)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not yet warm"),
        "{body}"
    );
    assert_eq!(proxy.status().await["live"], "blue");

    // Once warm, the same switch goes through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = proxy
            .admin(Method::POST, "/switch", r#"{"to":"green"}"#)
            .await;
        if status == StatusCode::OK {
            assert_eq!(body["live"], "green");
            break;
        }
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("not yet warm"),
            "{body}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "green never became warm"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_pool_with_every_backend_down_answers_503_and_sends_nothing_to_green() {
    let (b1, b2) = (
        TestBackend::start("blue-1").await,
        TestBackend::start("blue-2").await,
    );
    b1.set_healthy(false);
    b2.set_healthy(false);
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[b1.addr, b2.addr], &[green.addr], &health("blue", "")).await;
    proxy
        .wait_until("every blue backend down", |s| {
            s["pools"]["blue"]["healthy"] == 0
        })
        .await;

    for _ in 0..5 {
        let answer = support::get(proxy.addr, "/").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            answer.text().contains("no healthy backend"),
            "{}",
            answer.text()
        );
    }
    assert_eq!(green.hits(), 0, "traffic fell back to green");
    assert_eq!(b1.hits() + b2.hits(), 0, "traffic went to a down backend");
}
