//! After a switch the old colour drains: its requests finish on it, then its idle
//! upstream connections are closed.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{Proxy, TestBackend, get, spawn_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_slow_requests_in_flight_on_blue_at_a_switch_all_complete_from_blue_while_new_requests_go_to_green()
 {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], "").await;

    let slow: Vec<_> = (0..10)
        .map(|_| spawn_get(proxy.addr, "/slow?ms=3000"))
        .collect();
    proxy
        .wait_until("ten requests in flight on blue", |s| {
            s["pools"]["blue"]["in_flight"] == 10
        })
        .await;

    let switched = proxy.switch("green").await;
    assert_eq!(switched["pools"]["blue"]["role"], "draining");
    assert_eq!(switched["pools"]["blue"]["in_flight"], 10);
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/").await.text(), "green");
    }

    for request in slow {
        let answer = request.await.expect("slow request task");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "blue");
    }
    let status = proxy
        .wait_until("blue drained", |s| s["pools"]["blue"]["role"] == "idle")
        .await;
    assert_eq!(status["pools"]["blue"]["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_blue_has_drained_its_idle_upstream_connections_are_closed() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], "").await;
    // Several concurrent requests leave several idle keep-alive connections to blue.
    let warm: Vec<_> = (0..4)
        .map(|_| spawn_get(proxy.addr, "/slow?ms=100"))
        .collect();
    for w in warm {
        assert_eq!(w.await.expect("task").text(), "blue");
    }
    assert!(
        blue.conns.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "no pooled connection to blue"
    );

    proxy.switch("green").await;
    proxy
        .wait_until("blue drained", |s| s["pools"]["blue"]["role"] == "idle")
        .await;
    // Well before the 90 s pool idle timeout, blue sees its connections closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while blue.conns.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle connections to blue were left open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(proxy.addr, "/").await.text(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_colour_switched_back_to_within_a_second_keeps_its_idle_upstream_connections() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], "").await;
    let warm: Vec<_> = (0..4)
        .map(|_| spawn_get(proxy.addr, "/slow?ms=100"))
        .collect();
    for w in warm {
        assert_eq!(w.await.expect("task").text(), "blue");
    }
    let pooled = blue.conns.load(std::sync::atomic::Ordering::SeqCst);
    assert!(pooled >= 1, "no pooled connection to blue");

    proxy.switch("green").await;
    proxy
        .wait_until("blue drained", |s| s["pools"]["blue"]["role"] == "idle")
        .await;
    proxy.switch("blue").await;
    // Past the moment a drained colour's idle connections close, blue still has them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        blue.conns.load(std::sync::atomic::Ordering::SeqCst),
        pooled,
        "blue's idle connections were closed although blue was live again"
    );
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_switch_wait_returns_once_blues_in_flight_count_reaches_zero_and_shows_it_falling() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], "").await;
    let slow: Vec<_> = [600u64, 1200, 1800]
        .into_iter()
        .map(|ms| spawn_get(proxy.addr, &format!("/slow?ms={ms}")))
        .collect();
    proxy
        .wait_until("three requests in flight on blue", |s| {
            s["pools"]["blue"]["in_flight"] == 3
        })
        .await;

    let socket = proxy.socket.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["ctl", "--socket", &socket, "switch", "green", "--wait"])
            .output()
            .expect("run ctl")
    })
    .await
    .expect("ctl task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // It returned only once blue was empty...
    assert_eq!(proxy.status().await["pools"]["blue"]["in_flight"], 0);
    for s in slow {
        assert_eq!(s.await.expect("task").text(), "blue");
    }
    // ...and showed the count falling on the way.
    let counts: Vec<u32> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("draining blue: "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    assert!(counts.len() >= 2, "progress lines: {stdout}");
    assert!(
        counts.windows(2).all(|w| w[0] > w[1]),
        "count did not fall: {counts:?}\n{stdout}"
    );
    assert_eq!(counts.first(), Some(&3), "{stdout}");
    assert!(stdout.contains("blue drained"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_requests_are_closed_at_the_drain_deadline_and_blue_goes_idle() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], "[drain]\ntimeout = \"1s\"").await;
    // One on the relay, one over h2c: each gets a head and a first chunk, then waits.
    let mut relay = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    relay
        .write_all(b"GET /drip HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let (mut h2, _conn) = support::h2c(proxy.addr).await;
    let req = http::Request::get("http://app.example/drip")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = h2.send_request(req).await.expect("h2 head");
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut h2_body = resp.into_body();
    // And two that never get a head: on the relay and over h2c.
    let hung_relay = spawn_get(proxy.addr, "/hang");
    let hung_h2 = {
        let req = http::Request::get("http://app.example/hang")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let sent = h2.send_request(req);
        tokio::spawn(sent)
    };
    proxy
        .wait_until("four requests in flight on blue", |s| {
            s["pools"]["blue"]["in_flight"] == 4
        })
        .await;
    proxy.switch("green").await;
    let status = proxy
        .wait_until("blue drained", |s| s["pools"]["blue"]["role"] == "idle")
        .await;
    assert_eq!(status["pools"]["blue"]["in_flight"], 0);
    assert_eq!(status["pools"]["blue"]["requests_closed_by_drain"], 4);
    // Those without a head get 503 (the backend is not at fault).
    let answer = hung_relay.await.expect("relay task");
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let answer = hung_h2.await.expect("h2 task").expect("h2 answer");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Both clients see their response end early: the relay's connection closes, the
    // h2 stream is reset.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), relay.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the relay's client connection stayed open");
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        use http_body_util::BodyExt;
        loop {
            match h2_body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => break true,
                None => break false,
            }
        }
    })
    .await;
    assert_eq!(ended.ok(), Some(true), "the h2 stream did not end in error");
    // Blue's backend connections were not kept.
    support::eventually("blue's connections closed", || blue.open_conns() == 0).await;
    assert_eq!(get(proxy.addr, "/").await.text(), "green");
}
