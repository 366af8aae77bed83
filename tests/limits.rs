//! Bounds on what a client can hold: connections, time over a head, a body, idling,
//! and not reading its answers. At each bound the client gets a clear status or a
//! counted close, and everyone else is served.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Proxy, admin_text, backend, get, h2c, sample};

async fn proxy(limits: &str) -> Proxy {
    Proxy::start(
        &[backend("blue").await],
        &[backend("green").await],
        &format!("[limits]\n{limits}"),
    )
    .await
}

/// Reads until the proxy closes (or `within` passes); what it sent, and whether it
/// closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout_while_others_are_served() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = support::config_text(
        dir.path(),
        &[backend("blue").await],
        &[backend("green").await],
        "",
    )
    .replace(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nheader_timeout = \"1s\"",
    );
    let proxy = Proxy::from_text(dir, &text).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        slow.push(s);
    }
    // A byte every 200 ms each, while normal requests keep succeeding.
    let mut served = 0;
    for round in 0..8 {
        for s in &mut slow {
            let _ = s.write_all(b"X").await;
        }
        if round % 2 == 0 {
            assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served, 4);
    let mut closed_with_408 = 0;
    for s in &mut slow {
        let (answer, closed) = read_until_closed(s, Duration::from_secs(3)).await;
        assert!(
            closed,
            "a slow head was still open after {:?}",
            started.elapsed()
        );
        if answer.starts_with("HTTP/1.1 408") {
            closed_with_408 += 1;
        }
    }
    assert_eq!(closed_with_408, slow.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_on_both_http1_paths() {
    let proxy = proxy("body_timeout = \"500ms\"").await;
    for (name, head) in [
        (
            "relay",
            &b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789"[..],
        ),
        (
            "hyper",
            b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        ),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(head).await.expect("write");
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{name}: {answer:?}");
        assert!(closed, "{name}: still open");
    }
    // Just inside the bound, a body that pauses less than the timeout is served.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\nConnection: close\r\n\r\n0123456789")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.write_all(b"0123456789").await.expect("write");
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("20"), "{answer:?}");
    let metrics = admin_text(&proxy.socket, "/metrics").await.1;
    assert_eq!(
        sample(
            &metrics,
            r#"cutover_requests_refused_total{reason="timeout"}"#
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_the_write_timeout() {
    let proxy = proxy("write_timeout = \"500ms\"").await;
    for warm in [false, true] {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        if warm {
            // Hands the connection to hyper first.
            s.write_all(
                b"POST /warm HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await
            .expect("write");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.expect("warm answer");
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        }
        s.write_all(b"GET /big?bytes=200000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        // Read nothing for a while: far less than 200 MB fits in socket buffers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => total += n as u64,
                Err(_) => break false,
            }
        };
        assert!(closed, "warm={warm}: still open after {total} bytes");
        assert!(total < 200_000_000, "warm={warm}: the whole body came");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_and_h2c_connections_close_at_the_idle_timeout() {
    let proxy = proxy("idle_timeout = \"500ms\"").await;
    // HTTP/1.1 on the relay: one request, then idle.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    get_on(&mut s).await;
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "an idle HTTP/1.1 connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // h2c that sent only its preface and SETTINGS.
    let (_h2, conn) = h2c(proxy.addr).await;
    let closed = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(closed.is_ok(), "an idle h2c connection stayed open");
    // Busy connections are not idle: a request slower than the idle timeout completes.
    let answer = get(proxy.addr, "/slow?ms=900").await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// A GET on an open connection; its answer must be a 200 (read in one go: it is
/// small).
async fn get_on(s: &mut TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

async fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // A whole request, so each is surely accepted and counted before the next.
        get_on(&mut s).await;
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_connections_are_closed_at_once_and_open_ones_are_served() {
    let proxy = proxy("max_connections = 5").await;
    let mut held = open_idle(proxy.addr, 5).await;
    // One past the bound: closed at once, with no answer.
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
        assert!(closed && answer.is_empty(), "over the cap: {answer:?}");
    }
    // The open ones are served, and so is the admin socket.
    get_on(&mut held[0]).await;
    let status = proxy.status().await;
    assert_eq!(status["live"], "blue");
    let metrics = admin_text(&proxy.socket, "/metrics").await.1;
    assert_eq!(sample(&metrics, "cutover_connections_refused_total"), 20.0);
    // At the bound again once one closes.
    drop(held.pop());
    // The proxy notices the close on its next read of that connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_max_body_is_served_and_one_byte_more_gets_413_on_every_path() {
    let proxy = proxy("max_body = 1000").await;
    for (size, status) in [(1000usize, "200"), (1001, "413")] {
        let body = "x".repeat(size);
        // The relay: a declared length.
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!(
            "POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        let _ = s.write_all(body.as_bytes()).await;
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "relay {size}: {answer:?}"
        );
        // Hyper's path: chunked, so only the bytes tell.
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!(
            "POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{size:x}\r\n{body}\r\n0\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes()).await;
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "hyper {size}: {answer:?}"
        );
        // h2c.
        let (mut h2, _conn) = h2c(proxy.addr).await;
        let req = http::Request::post("http://app.example/sink")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .expect("request");
        let resp = h2.send_request(req).await.expect("h2 answer");
        assert_eq!(resp.status().as_str(), status, "h2 {size}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_pauses_mid_body_past_the_read_timeout_ends_the_response() {
    let proxy = Proxy::start(
        &[backend("blue").await],
        &[backend("green").await],
        "[upstream]\nread_timeout = \"500ms\"",
    )
    .await;
    // The backend sends a head and one chunk, then nothing.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /drip HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("tick"), "{answer:?}");
    assert!(closed, "the response never ended");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Counted against the backend, as a timeout mid-body.
    let metrics = admin_text(&proxy.socket, "/metrics").await.1;
    assert_eq!(
        sample(
            &metrics,
            r#"cutover_upstream_errors_total{color="blue",kind="timeout"}"#
        ),
        1.0
    );
}
