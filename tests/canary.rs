//! Canary splits, forced routes and staged rollouts over real sockets.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::rollouts::{Load, history_actions, start_rollout, wait_rollout};
use support::{Conn, Proxy, TestBackend, backend, request};

/// The colour that answers a GET carrying `header: value` on `conn`.
async fn colour_for(conn: &mut Conn, header: &str, value: &str) -> String {
    let mut req = request(Method::GET, "/", "");
    req.headers_mut().insert(
        header.parse::<http::HeaderName>().expect("name"),
        value.parse().expect("value"),
    );
    conn.send(req).await.expect("answer").text().to_owned()
}

async fn canary(proxy: &Proxy, percent: f64) {
    let (status, body) = proxy
        .admin(
            Method::POST,
            "/canary",
            &format!("{{\"color\":\"green\",\"percent\":{percent}}}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_canary_splits_distinct_keys_within_a_percent_and_keeps_each_key_sticky_and_monotonic()
 {
    let proxy = Proxy::start(
        &[backend("blue").await],
        &[backend("green").await],
        "[routing.bucket]\nby = \"header\"\nheader = \"x-user\"\n",
    )
    .await;
    canary(&proxy, 10.0).await;
    let status = proxy.status().await;
    assert_eq!(status["canary"]["weight"], 1000, "{status}");
    let mut conn = Conn::open(proxy.addr).await;
    let mut green_at_10 = Vec::new();
    for i in 0..20_000 {
        if colour_for(&mut conn, "x-user", &format!("user-{i}")).await == "green" {
            green_at_10.push(i);
        }
    }
    let share = green_at_10.len() as f64 / 20_000.0;
    assert!((0.09..=0.11).contains(&share), "green share {share}");
    // One key always lands on the same colour.
    for _ in 0..20 {
        assert_eq!(
            colour_for(&mut conn, "x-user", "user-7").await,
            colour_for(&mut conn, "x-user", "user-7").await
        );
    }
    canary(&proxy, 25.0).await;
    for i in &green_at_10 {
        assert_eq!(
            colour_for(&mut conn, "x-user", &format!("user-{i}")).await,
            "green",
            "user-{i} left green at 25 %"
        );
    }
    canary(&proxy, 0.0).await;
    assert_eq!(colour_for(&mut conn, "x-user", "user-1").await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_header_sends_a_request_to_green_at_zero_percent_and_does_nothing_unconfigured() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let forced = Proxy::start(
        &[blue],
        &[green],
        "[[routing.force]]\nto = \"green\"\nheader = \"x-cutover-force\"\nequals = \"green\"\n",
    )
    .await;
    let mut conn = Conn::open(forced.addr).await;
    assert_eq!(
        colour_for(&mut conn, "x-cutover-force", "green").await,
        "green"
    );
    assert_eq!(
        colour_for(&mut conn, "x-cutover-force", "blue").await,
        "blue"
    );
    assert_eq!(forced.status().await["routed"]["forced"], 1);

    let plain = Proxy::start(&[blue], &[green], "").await;
    let mut conn = Conn::open(plain.addr).await;
    assert_eq!(
        colour_for(&mut conn, "x-cutover-force", "green").await,
        "blue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_bucket_is_set_on_the_first_answer_and_keeps_the_client_on_its_colour() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    canary(&proxy, 50.0).await;
    let mut conn = Conn::open(proxy.addr).await;
    let first = conn.get("/").await;
    let cookie = first
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a bucket cookie")
        .to_owned();
    assert!(cookie.starts_with("cutover-bucket="), "{cookie}");
    for _ in 0..20 {
        let mut req = request(Method::GET, "/", "");
        req.headers_mut()
            .insert("cookie", cookie.parse().expect("cookie"));
        let answer = conn.send(req).await.expect("answer");
        assert_eq!(answer.text(), first.text());
        assert!(answer.headers.get("set-cookie").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_to_a_good_green_walks_every_step_under_load_and_promotes() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let addr = proxy.addr;
    let load = tokio::spawn(async move {
        let mut conn = Conn::open(addr).await;
        loop {
            let a = conn.get("/").await;
            assert_eq!(a.status, StatusCode::OK);
        }
    });
    let (status, body) = proxy
        .admin(
            Method::POST,
            "/rollout",
            r#"{"to":"green","steps":[{"percent":10,"duration":"1s"},50,100],"step_duration":"1s","gates":{"max_error_rate":0.01,"min_requests":5}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = proxy.admin(Method::GET, "/rollout", "").await;
        if r["state"] == "promoted" {
            assert_eq!(r["steps"].as_array().map(Vec::len), Some(3), "{r}");
            break;
        }
        assert!(r["state"] == "running", "{r}");
        assert!(std::time::Instant::now() < deadline, "not promoted: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = proxy.status().await;
    assert_eq!(status["live"], "green");
    assert!(status["canary"].is_null(), "{status}");
    let role = &status["pools"]["blue"]["role"];
    assert!(role == "draining" || role == "idle", "{status}");
    // Blue drains while the load goes on (all of it now on green), then is idle.
    proxy
        .wait_until("blue drained", |s| s["pools"]["blue"]["role"] == "idle")
        .await;
    assert!(!load.is_finished(), "the load saw only 200s");
    load.abort();
    let (_, history) = proxy.admin(Method::GET, "/history", "").await;
    let actions: Vec<&str> = history["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(actions.contains(&"rollout.promote"), "{actions:?}");
    let (code, report) = support::admin_text(&proxy.socket, "/rollout/report").await;
    assert_eq!(code, StatusCode::OK);
    assert!(report.contains("promoted"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_too_little_traffic_extends_its_step_instead_of_promoting() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let (status, body) = proxy
        .admin(
            Method::POST,
            "/rollout",
            r#"{"to":"green","steps":[{"percent":10,"duration":"500ms"},100],"gates":{"min_requests":1000},"max_extensions":1}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, r) = proxy.admin(Method::GET, "/rollout", "").await;
    assert_eq!(r["state"], "paused", "{r}");
    assert!(
        r["reason"].as_str().unwrap_or("").contains("inconclusive"),
        "{r}"
    );
    assert_eq!(proxy.status().await["live"], "blue");
    assert!(
        history_actions(&proxy)
            .await
            .iter()
            .any(|a| a == "rollout.extend"),
        "the step was extended before pausing"
    );
    let (status, _) = proxy.admin(Method::POST, "/rollout/abort", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(proxy.status().await["canary"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_that_starts_failing_in_step_two_is_rolled_back_within_two_seconds() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], "").await;
    let load = Load::start(proxy.addr, 4);
    start_rollout(
        &proxy,
        r#"{"to":"green","steps":[{"percent":10,"duration":"1s"},{"percent":25,"duration":"30s"},100],"gates":{"max_error_rate":0.01,"min_requests":20}}"#,
    )
    .await;
    wait_rollout(&proxy, "step 2", Duration::from_secs(10), |r| {
        r["step"] == 1
    })
    .await;
    green.fail_every(10);
    let r = wait_rollout(&proxy, "the rollback", Duration::from_secs(10), |r| {
        r["state"] != "running"
    })
    .await;
    let rolled_back_at = Instant::now();
    // Requests after the rollback reach blue only.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = load.stop();
    let first_bad = seen.first_bad.expect("green answered some 500s");
    let took = rolled_back_at.saturating_duration_since(first_bad);
    println!(
        "rolled back {took:?} after the first failing answer ({} blue, {} green, {} failed)",
        seen.blue,
        seen.green,
        seen.bad.len()
    );
    assert_eq!(r["state"], "rolled_back", "{r}");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("max_error_rate") && reason.contains("measured"),
        "{reason}"
    );
    assert_eq!(r["breach"]["gate"], "max_error_rate", "{r}");
    assert!(r["breach"]["value"].as_f64() > Some(0.01), "{r}");
    // The step's evidence agrees with the verdict it ended with.
    let last = &r["steps"][1];
    assert_eq!(last["verdict"], "breach", "{r}");
    let gate = last["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["gate"] == "max_error_rate"))
        .expect("the error-rate gate in the step's evidence");
    assert_eq!(gate["passed"], false, "{r}");
    assert!(took < Duration::from_secs(2), "rollback took {took:?}");
    // Every failed answer is green's own 500: blue saw no error.
    assert!(
        seen.bad
            .iter()
            .all(|(s, t)| *s == StatusCode::INTERNAL_SERVER_ERROR && t == "failing"),
        "{:?}",
        &seen.bad[..seen.bad.len().min(5)]
    );
    let status = proxy.status().await;
    assert_eq!(status["live"], "blue");
    assert!(status["canary"].is_null(), "{status}");
    assert!(
        history_actions(&proxy)
            .await
            .iter()
            .any(|a| a == "rollout.rollback"),
        "history"
    );
}

/// The `name=value` of the cookie `name` an answer sets, if it sets one.
fn set_cookie(answer: &support::Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The colour that answers a GET carrying `cookie`.
async fn colour_with_cookie(conn: &mut Conn, cookie: &str) -> String {
    colour_for(conn, "cookie", cookie).await
}

/// Starts a long two-step rollout to green and promotes it by hand at once.
async fn promote_to_green(proxy: &Proxy) {
    start_rollout(
        proxy,
        r#"{"to":"green","steps":[10,100],"step_duration":"1h","gates":{"min_requests":1}}"#,
    )
    .await;
    let (status, r) = proxy.admin(Method::POST, "/rollout/promote", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "promoted", "{r}");
    assert_eq!(proxy.status().await["live"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_stays_on_blue_after_promotion_until_its_pin_expires_and_a_rollback_overrides_pins()
 {
    let proxy = Proxy::start(
        &[backend("blue").await],
        &[backend("green").await],
        "[routing.pinning]\nttl = \"2s\"\n",
    )
    .await;
    let mut conn = Conn::open(proxy.addr).await;
    let first = conn.get("/").await;
    assert_eq!(first.text(), "blue");
    let blue_pin = set_cookie(&first, "cutover-pin").expect("a pin cookie");
    promote_to_green(&proxy).await;

    // The session that began on blue stays there; a new one starts on green.
    assert_eq!(colour_with_cookie(&mut conn, &blue_pin).await, "blue");
    let fresh = conn.get("/").await;
    assert_eq!(fresh.text(), "green");
    let green_pin = set_cookie(&fresh, "cutover-pin").expect("a pin cookie");
    assert!(
        proxy.status().await["routed"]["pinned"].as_u64() >= Some(1),
        "status counts pinned requests"
    );

    // Once the pin is older than its TTL, the session moves to green.
    let deadline = Instant::now() + Duration::from_secs(6);
    while colour_with_cookie(&mut conn, &blue_pin).await == "blue" {
        assert!(Instant::now() < deadline, "the blue pin never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A rollback overrides pins: the session pinned to green moves back to blue now.
    let green_pin = {
        // Re-pin on green if the first green pin has aged out meanwhile.
        let again = conn.get("/").await;
        set_cookie(&again, "cutover-pin").unwrap_or(green_pin)
    };
    assert_eq!(colour_with_cookie(&mut conn, &green_pin).await, "green");
    let (status, body) = proxy.admin(Method::POST, "/rollback", "{}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(colour_with_cookie(&mut conn, &green_pin).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pinning_a_session_moves_to_green_at_once_on_promotion() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let mut conn = Conn::open(proxy.addr).await;
    let first = conn.get("/").await;
    assert_eq!(first.text(), "blue");
    assert!(set_cookie(&first, "cutover-pin").is_none());
    let cookies: Vec<String> = first
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    promote_to_green(&proxy).await;
    assert_eq!(
        colour_with_cookie(&mut conn, &cookies.join("; ")).await,
        "green"
    );
}

/// Health checks every 50 ms for both pools, so a backend's health flips in ~100 ms.
const FAST_HEALTH: &str = "[pools.blue.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n\
    [pools.green.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_with_their_own_durations_each_run_their_own_time() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let load = Load::start(proxy.addr, 2);
    let begun = Instant::now();
    start_rollout(
        &proxy,
        r#"{"to":"green","steps":[{"percent":10,"duration":"500ms"},{"percent":20,"duration":"2s"},100],"step_duration":"1s","gates":{"min_requests":1},"max_extensions":10}"#,
    )
    .await;
    // Each step shows its own length while it runs. (One canary request suffices: on a
    // busy machine a 500 ms step at 10 % may see few, and an extension only lengthens a
    // step.)
    for (step, own_ms) in [(0u64, 500u64), (1, 2000), (2, 1000)] {
        let r = wait_rollout(&proxy, "the step", Duration::from_secs(15), |r| {
            r["step"] == step || r["state"] != "running"
        })
        .await;
        assert_eq!(r["step_duration_ms"], own_ms, "{r}");
    }
    let r = wait_rollout(&proxy, "promotion", Duration::from_secs(20), |r| {
        r["state"] != "running"
    })
    .await;
    let seen = load.stop();
    assert_eq!(r["state"], "promoted", "{r}");
    // And lasted at least that long, by the rollout's own record of each step.
    let lengths: Vec<u64> = (0..3)
        .map(|i| {
            let step = &r["steps"][i];
            let ms = |key: &str| time_of_day_ms(step[key].as_str().unwrap_or(""));
            (ms("ended") + 86_400_000 - ms("started")) % 86_400_000
        })
        .collect();
    println!(
        "step lengths (ms) {lengths:?}, whole rollout {:?}",
        begun.elapsed()
    );
    assert!(lengths[0] >= 500, "{lengths:?} {r}");
    assert!(lengths[1] >= 2000, "{lengths:?} {r}");
    assert!(lengths[2] >= 1000, "{lengths:?} {r}");
    assert!(seen.bad.is_empty(), "{:?}", seen.bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_does_not_start_while_its_way_back_is_unhealthy_and_pauses_when_it_fails_mid_rollout()
 {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], FAST_HEALTH).await;
    let body = r#"{"to":"green","steps":[10,100],"step_duration":"1h","gates":{"min_requests":1}}"#;

    // Blue, the way back, is down: nothing starts and nothing moves.
    blue.set_healthy(false);
    proxy
        .wait_until("blue down", |s| s["pools"]["blue"]["healthy"] == 0)
        .await;
    let (status, answer) = proxy.admin(Method::POST, "/rollout", body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = answer["error"].as_str().unwrap_or("");
    assert!(error.contains("way back"), "{error}");
    let (status, _) = proxy.admin(Method::GET, "/rollout", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(proxy.status().await["canary"].is_null());

    // Blue is back: the rollout starts; blue fails again: it pauses and says why.
    blue.set_healthy(true);
    proxy
        .wait_until("blue up", |s| s["pools"]["blue"]["healthy"] == 1)
        .await;
    start_rollout(&proxy, body).await;
    blue.set_healthy(false);
    let r = wait_rollout(&proxy, "the pause", Duration::from_secs(5), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(r["state"], "paused", "{r}");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("way back") && reason.contains("blue"),
        "{reason}"
    );
    // The canary holds its weight; resume waits for the way back.
    assert_eq!(proxy.status().await["canary"]["color"], "green");
    let (status, answer) = proxy.admin(Method::POST, "/rollout/resume", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    blue.set_healthy(true);
    proxy
        .wait_until("blue up again", |s| s["pools"]["blue"]["healthy"] == 1)
        .await;
    let (status, r) = proxy.admin(Method::POST, "/rollout/resume", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "running", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_abort_promote_and_approval_do_what_they_say_and_each_appears_in_history() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let load = Load::start(proxy.addr, 2);
    let long =
        r#"{"to":"green","steps":[10,50,100],"step_duration":"1h","gates":{"min_requests":1}}"#;

    // Pause freezes the clock, resume runs it on.
    start_rollout(&proxy, long).await;
    let (status, r) = proxy.admin(Method::POST, "/rollout/pause", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "paused", "{r}");
    let frozen = r["time_left_ms"].as_u64();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, r) = proxy.admin(Method::GET, "/rollout", "").await;
    assert_eq!(
        r["time_left_ms"].as_u64(),
        frozen,
        "the clock ran while paused"
    );
    let (status, _) = proxy.admin(Method::POST, "/rollout/pause", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "pausing twice is refused");
    let (status, r) = proxy.admin(Method::POST, "/rollout/resume", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "running", "{r}");

    // Abort is the rollback: canary off, blue still live.
    let (status, r) = proxy.admin(Method::POST, "/rollout/abort", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "aborted", "{r}");
    let status = proxy.status().await;
    assert_eq!(status["live"], "blue");
    assert!(status["canary"].is_null(), "{status}");

    // Promote skips the remaining steps.
    start_rollout(&proxy, long).await;
    let (status, r) = proxy.admin(Method::POST, "/rollout/promote", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "promoted", "{r}");
    assert_eq!(proxy.status().await["live"], "green");

    // With approval, the last step holds until a person promotes.
    start_rollout(
        &proxy,
        r#"{"to":"blue","steps":[50],"step_duration":"300ms","gates":{"min_requests":1},"approval":true}"#,
    )
    .await;
    let r = wait_rollout(&proxy, "approval", Duration::from_secs(10), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(r["state"], "awaiting_approval", "{r}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = proxy.status().await;
    assert_eq!(
        status["live"], "green",
        "waiting for approval promotes nothing"
    );
    assert_eq!(status["canary"]["color"], "blue", "{status}");
    let (status, r) = proxy.admin(Method::POST, "/rollout/promote", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "promoted", "{r}");
    assert!(
        r["decided_by"].as_str().unwrap_or("").starts_with("uid"),
        "{r}"
    );
    assert_eq!(proxy.status().await["live"], "blue");
    let seen = load.stop();
    assert!(seen.bad.is_empty(), "{:?}", seen.bad);

    let actions = history_actions(&proxy).await;
    for action in [
        "rollout.start",
        "rollout.pause",
        "rollout.resume",
        "rollout.abort",
        "rollout.promote",
        "rollout.awaiting_approval",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} missing from {actions:?}"
        );
    }
}

/// Milliseconds since midnight of an RFC 3339 time (`2026-12-06T12:34:56.789Z`).
fn time_of_day_ms(rfc3339: &str) -> u64 {
    let clock = rfc3339.split('T').nth(1).unwrap_or_default();
    let clock = clock.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let mut next = || parts.next().unwrap_or("0");
    let (h, m, s) = (next(), next(), next());
    let hours: u64 = h.parse().expect("hours");
    let minutes: u64 = m.parse().expect("minutes");
    let seconds: f64 = s.parse().expect("seconds");
    (hours * 60 + minutes) * 60_000 + (seconds * 1000.0).round() as u64
}
