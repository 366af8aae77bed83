//! Switching and rolling back: per-request routing, no lost requests, CAS on generation.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use support::{Conn, Proxy, backend, get, spawn_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switch_the_next_request_on_the_same_connection_is_answered_by_green() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let mut conn = Conn::open(proxy.addr).await;
    assert_eq!(conn.get("/").await.text(), "blue");
    assert_eq!(conn.get("/").await.text(), "blue");

    let status = proxy.switch("green").await;
    assert_eq!(status["live"], "green");

    // Same keep-alive connection, next request: green.
    assert_eq!(conn.get("/").await.text(), "green");
}

/// The colour and sequence number of the last switch, packed: `seq << 1 | is_green`.
fn pack(seq: u64, green: bool) -> u64 {
    (seq << 1) | u64::from(green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_under_load_loses_no_request() {
    const CLIENTS: usize = 16;
    const SWITCHES: u64 = 50;
    let proxy =
        Arc::new(Proxy::start(&[backend("blue").await], &[backend("green").await], "").await);

    // `started` is written before a switch is sent, `acked` after its 200 arrives.
    // A request sent when `acked` says X and answered before any later switch started
    // must be answered by X.
    let started = Arc::new(AtomicU64::new(pack(0, false)));
    let acked = Arc::new(AtomicU64::new(pack(0, false)));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, started, acked, done, checked) = (
            proxy.addr,
            started.clone(),
            acked.clone(),
            done.clone(),
            checked.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut sent = 0usize;
            while !done.load(Ordering::SeqCst) {
                let before = acked.load(Ordering::SeqCst);
                let answer = conn
                    .send(support::request(Method::GET, "/", ""))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("request {sent} on a keep-alive connection failed: {e}")
                    });
                let after = started.load(Ordering::SeqCst);
                assert_eq!(
                    answer.status,
                    StatusCode::OK,
                    "request {sent}: {}",
                    answer.text()
                );
                if before == after {
                    let expected = if before & 1 == 1 { "green" } else { "blue" };
                    assert_eq!(
                        answer.text(),
                        expected,
                        "request sent after switch #{} was acknowledged",
                        before >> 1
                    );
                    checked.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
            }
            sent
        }));
    }

    let switch_every = Duration::from_millis(100);
    for seq in 1..=SWITCHES {
        tokio::time::sleep(switch_every).await;
        let to_green = seq % 2 == 1;
        started.store(pack(seq, to_green), Ordering::SeqCst);
        proxy.switch(if to_green { "green" } else { "blue" }).await;
        acked.store(pack(seq, to_green), Ordering::SeqCst);
    }
    tokio::time::sleep(switch_every).await;
    done.store(true, Ordering::SeqCst);

    let mut total = 0;
    for c in clients {
        total += c.await.expect("client task");
    }
    let checked = checked.load(Ordering::Relaxed);
    eprintln!(
        "{total} requests over {CLIENTS} connections, {checked} checked against the acknowledged colour"
    );
    assert!(
        total >= CLIENTS * 10,
        "too little traffic to mean anything: {total}"
    );
    assert!(
        checked * 2 >= total,
        "most requests should fall between switches: {checked}/{total}"
    );
    assert_eq!(proxy.status().await["generation"], 1 + SWITCHES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_on_blue_when_the_switch_happens_completes_from_blue() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let addr = proxy.addr;
    let slow = spawn_get(addr, "/slow?ms=2000");

    // Wait until the slow request is counted in flight on blue, then switch.
    proxy
        .wait_until("the slow request in flight on blue", |s| {
            s["pools"]["blue"]["in_flight"] == 1
        })
        .await;
    proxy.switch("green").await;
    let status = proxy.status().await;
    assert_eq!(status["pools"]["blue"]["role"], "draining");
    assert_eq!(get(addr, "/").await.text(), "green");

    let answer = slow.await.expect("slow task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "blue");
    let status = proxy
        .wait_until("blue to finish draining", |s| {
            s["pools"]["blue"]["role"] == "idle"
        })
        .await;
    assert_eq!(status["pools"]["blue"]["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_colour() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let (status, body) = proxy.admin(Method::POST, "/rollback", "").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "nothing to roll back to yet: {body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("nothing to roll back")
    );

    proxy.switch("green").await;
    assert_eq!(get(proxy.addr, "/").await.text(), "green");
    let (status, body) = proxy.admin(Method::POST, "/rollback", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["live"], "blue");
    assert_eq!(body["previous"], "green");
    assert_eq!(body["generation"], 3);
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_with_a_stale_expect_generation_gets_409_and_changes_nothing() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let generation = proxy.status().await["generation"]
        .as_u64()
        .expect("generation");

    // A second deploy script wins the race...
    let (status, _) = proxy
        .admin(
            Method::POST,
            "/switch",
            &format!("{{\"to\":\"green\",\"expect_generation\":{generation}}}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // ...so the first one's compare-and-swap fails.
    let (status, body) = proxy
        .admin(
            Method::POST,
            "/switch",
            &format!("{{\"to\":\"blue\",\"expect_generation\":{generation}}}"),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap_or("").contains("generation"),
        "{body}"
    );

    let after = proxy.status().await;
    assert_eq!(after["live"], "green");
    assert_eq!(after["generation"], generation + 1);
    assert_eq!(get(proxy.addr, "/").await.text(), "green");

    // Switching to the colour that is already live is a no-op, not a new generation.
    let (status, body) = proxy
        .admin(Method::POST, "/switch", "{\"to\":\"green\"}")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["changed"], false);
    assert_eq!(body["generation"], generation + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let mut proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let addr = proxy.addr;
    let slow = spawn_get(addr, "/slow?ms=1000");
    proxy
        .wait_until("the slow request in flight on blue", |s| {
            s["pools"]["blue"]["in_flight"] == 1
        })
        .await;
    let server = proxy.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted during shutdown"
    );
    let answer = slow.await.expect("slow task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "blue");
    server.await.expect("server stopped cleanly");
    assert!(!proxy.socket.exists(), "admin socket removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_shutdown_gets_its_first_request_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let addr = proxy.addr;
    // Accepted, but its request has not come yet when shutdown begins.
    let mut fresh = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Kept alive after one answer and idle: closed by shutdown.
    let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut first = vec![0; 4096];
    let n = kept.read(&mut first).await.expect("read");
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    // The fresh connection is accepted by now (loopback, an idle proxy).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = proxy.begin_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fresh
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), fresh.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );
    assert!(answer.ends_with("blue"), "{answer:?}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle kept-alive connection was closed: {closed:?}"
    );
    server.await.expect("server stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switch_the_next_stream_on_the_same_http2_connection_is_answered_by_green() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let (mut h2, _conn) = support::h2c(proxy.addr).await;
    let mut ask = async || {
        let req = http::Request::get("http://app.example/")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = h2.send_request(req).await.expect("h2 response");
        resp.into_body().collect().await.expect("body").to_bytes()
    };
    assert_eq!(ask().await, "blue");
    proxy.switch("green").await;
    // Same HTTP/2 connection, next stream: routed per stream, so green.
    assert_eq!(ask().await, "green");
}
