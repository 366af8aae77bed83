//! The HTTP/1.1 relay: responses of every framing reach the client whole, what it does
//! not take on is still proxied (by hyper), and a bad response or a departed client
//! never leaves anything behind.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, StatusCode};
use support::{
    Conn, Proxy, TestBackend, admin_text, backend, get, raw_exchange, request, sample,
    scripted_backend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_trailers_reaches_the_client_whole_on_one_reused_connection() {
    let (blue, accepted) = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-End: kept\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&[blue], &[backend("green").await], "").await;
    let mut conn = Conn::open(proxy.addr).await;
    for _ in 0..3 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "hello world");
        assert_eq!(answer.headers["x-end"], "kept");
        assert_eq!(answer.headers["via"], "1.1 cutover");
        // The backend sent no Date; a proxy with a clock adds one (RFC 9110 §6.6.1).
        assert!(answer.headers.contains_key("date"), "{:?}", answer.headers);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_delimited_by_close_reaches_the_client_whole_and_ends_its_connection() {
    let (blue, accepted) = scripted_backend(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
    let proxy = Proxy::start(&[blue], &[backend("green").await], "").await;
    let request =
        b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\nGET / HTTP/1.1\r\nHost: app.example\r\n\r\n";
    let reply = raw_exchange(proxy.addr, request).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("\r\nconnection: close\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nuntil the end"), "{reply}");
    // One response: the second request is not answered on a connection the body ended.
    assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    assert_eq!(get(proxy.addr, "/").await.text(), "until the end");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_conflicting_lengths_gives_502_and_counts_a_protocol_error() {
    let (blue, accepted) = scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        false,
    )
    .await;
    let proxy = Proxy::start(&[blue], &[backend("green").await], "").await;
    let mut conn = Conn::open(proxy.addr).await;
    for _ in 0..2 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    }
    // The connection that sent it is not used again.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let (_, metrics) = admin_text(&proxy.socket, "/metrics").await;
    let protocol = r#"cutover_upstream_errors_total{color="blue",kind="protocol"}"#;
    assert_eq!(sample(&metrics, protocol), 2.0);
    assert_eq!(proxy.status().await["pools"]["blue"]["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_relay_leaves_to_hyper_are_proxied_all_the_same() {
    let blue = TestBackend::start("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[backend("green").await], "").await;

    // HTTP/1.0 without Host: the backend still gets a Host.
    let reply = raw_exchange(proxy.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("blue"), "{reply}");

    // A chunked upload, after a request the relay served on the same connection.
    let reply = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
    assert!(reply.contains("\r\n\r\nblue"), "{reply}");
    // Echoed as it came: in its two chunks.
    assert!(reply.contains("3\r\nabc\r\n3\r\ndef\r\n0\r\n"), "{reply}");

    // Expect: 100-continue gets its interim answer, then the echo.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .expect("write head");
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"ping").await.expect("write body");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read");
    assert!(reply.ends_with("ping"), "{reply}");

    // A body larger than the relay buffers streams through hyper.
    let big = "y".repeat(3 << 20);
    let answer = Conn::open(proxy.addr)
        .await
        .send(request(Method::POST, "/echo", &big))
        .await
        .expect("POST");
    assert_eq!(answer.body.len(), big.len());
    assert_eq!(blue.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_a_body_sent_in_pieces_are_answered_in_order() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /slow?ms=100 HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\
              POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhel",
        )
        .await
        .expect("write");
    for piece in [&b"lo "[..], b"world"] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(piece).await.expect("write body piece");
    }
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply))
        .await
        .expect("answered and closed")
        .expect("read");
    let bodies: Vec<&str> = reply
        .split("HTTP/1.1 200 OK")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["blue", "hi", "hello world"], "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_to_a_closing_request_arrives_whole_though_the_client_sent_more_than_was_read() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut from, mut to) = stream.into_split();
    // The answer's last bytes wait for the FIN; bytes the proxy never read must not
    // turn that into a reset that drops them.
    let writer = tokio::spawn(async move {
        to.write_all(b"GET /slow?ms=100 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await?;
        // Far more than the relay reads ahead while it waits for the answer.
        to.write_all(&vec![b'x'; 4 << 20]).await
    });
    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.expect("the connection ends");
    writer.abort();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("\r\nconnection: close\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nblue"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_backend_is_silent_is_no_longer_counted_in_flight() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    proxy
        .wait_until("the request is in flight", |s| {
            s["pools"]["blue"]["in_flight"] == 1
        })
        .await;
    drop(stream);
    // Well before the 30 s response timeout.
    proxy
        .wait_until("the request is released", |s| {
            s["pools"]["blue"]["in_flight"] == 0
        })
        .await;
}

/// A backend that takes Content-Length only as plain digits (and anything else as no
/// body, as some servers do) and answers every request head it reads. Returns its
/// address and the request targets it saw.
async fn plain_length_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(str::to_owned)
                            })
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + length {
                            break;
                        }
                        buf.drain(..end + 4 + length);
                        log.lock().expect("log").push(target);
                        if stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_behind_a_listed_content_length_never_reaches_a_backend_as_a_request() {
    let (blue, seen) = plain_length_backend().await;
    let proxy = Proxy::start(&[blue], &[backend("green").await], "").await;
    let hidden = "GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {n}, {n}\r\nConnection: close\r\n\r\n{hidden}",
        n = hidden.len()
    );
    let reply = raw_exchange(proxy.addr, request.as_bytes()).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert_eq!(get(proxy.addr, "/after").await.text(), "ok");
    let seen = seen.lock().expect("log").clone();
    assert!(!seen.contains(&"/hidden".to_owned()), "smuggled: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_buffered_body_reaches_the_backend_whole_and_in_order() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    // Over the size copied after the head, under the relay's 1 MiB: sent from where it
    // was read, after the head, on a connection kept for the next request.
    let body: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut conn = Conn::open(proxy.addr).await;
    for _ in 0..2 {
        let answer = conn
            .send(request(http::Method::POST, "/echo", &body))
            .await
            .expect("POST");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, body.as_bytes());
    }
}
