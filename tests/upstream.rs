//! Keep-alive connections to backends: reused across requests and clients, capped per
//! backend, closed after the idle timeout, and never the cause of an error when the
//! backend closed one first.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::{Method, StatusCode};
use http_body_util::Full;
use support::{
    Conn, Proxy, TestBackend, eventually, get, h2c, request, scripted_backend, spawn_get,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_of_every_shape_reuse_one_upstream_connection() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr], "").await;

    // Each from a new client connection: the upstream connection outlives them.
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    }
    let mut conn = Conn::open(proxy.addr).await;
    let body = "x".repeat(100_000);
    let echoed = conn
        .send(request(Method::POST, "/echo", &body))
        .await
        .expect("POST");
    assert_eq!(echoed.body.len(), body.len());
    let big = conn.get("/big?bytes=300000").await;
    assert_eq!(big.body.len(), 300_000);
    // A response with no body at all hands its connection back too.
    let head = conn
        .send(request(Method::HEAD, "/", ""))
        .await
        .expect("HEAD");
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(conn.get("/").await.text(), "blue");

    assert_eq!(blue.hits(), 14);
    assert_eq!(
        blue.accepted(),
        1,
        "every request should have reused the first upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_no_more_than_max_idle_per_backend_connections_stay_open() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(
        &[blue.addr],
        &[green.addr],
        "[upstream]\nmax_idle_per_backend = 2\n",
    )
    .await;

    let burst: Vec<_> = (0..6)
        .map(|_| spawn_get(proxy.addr, "/slow?ms=300"))
        .collect();
    for b in burst {
        assert_eq!(b.await.expect("task").text(), "blue");
    }
    assert_eq!(
        blue.accepted(),
        6,
        "six concurrent requests, six connections"
    );
    eventually("blue's open connections fall to the cap of 2", || {
        blue.open_conns() == 2
    })
    .await;
    // The two kept are the ones used next.
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    }
    assert_eq!(blue.accepted(), 6);
    assert_eq!(blue.open_conns(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_http2_filled_the_idle_pool_plain_requests_still_reuse_upstream_connections() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(
        &[blue.addr],
        &[green.addr],
        "[upstream]\nmax_idle_per_backend = 2\n",
    )
    .await;

    // Two concurrent HTTP/2 uploads leave two idle connections of hyper's path (a
    // request with a body goes by hyper's client; one without, by the raw sockets).
    let (h2, task) = h2c(proxy.addr).await;
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                let req = Request::builder()
                    .method("POST")
                    .uri("http://app.example/slow?ms=200")
                    .body(Full::new(Bytes::from_static(b"upload")))
                    .expect("request");
                h2.send_request(req).await.expect("h2 response").status()
            })
        })
        .collect();
    for s in streams {
        assert_eq!(s.await.expect("task"), StatusCode::OK);
    }
    task.abort();
    assert_eq!(blue.accepted(), 2);
    eventually("both are idle in the pool", || blue.open_conns() == 2).await;

    // Plain requests, each from a new client connection: the first one's backend
    // connection takes a pooled one's place and the rest reuse it.
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    }
    assert_eq!(
        blue.accepted(),
        3,
        "the relay opened a backend connection per request"
    );
    assert_eq!(blue.open_conns(), 2, "the cap still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_is_closed_after_the_idle_timeout() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(
        &[blue.addr],
        &[green.addr],
        "[upstream]\nidle_timeout = \"300ms\"\n",
    )
    .await;

    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    assert_eq!(blue.accepted(), 1);
    eventually("the idle connection to blue is closed", || {
        blue.open_conns() == 0
    })
    .await;
    // The next request simply opens a new one.
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    assert_eq!(blue.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_each_connection_after_answering_causes_no_error() {
    // Answers one request per connection without saying `Connection: close`, then
    // closes: every pooled connection to it is dead by the time it is next used.
    let (blue, accepted) =
        scripted_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nclosed", true).await;
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[blue], &[green.addr], "").await;

    let mut conn = Conn::open(proxy.addr).await;
    for i in 0..20 {
        let answer = conn.get("/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.text()
        );
        assert_eq!(answer.text(), "closed");
        // Long enough for the proxy to see the close before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
    // Passive ejection saw no failure either: the backend is still in rotation.
    let status = proxy.status().await;
    assert_eq!(status["pools"]["blue"]["backends"][0]["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_kept_connection_closes_unanswered_is_sent_once_more_on_a_new_one() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers the first request on each connection (after 200 ms, so two at once take
    // two connections); any later one is read and the connection closed unanswered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (accepted, unanswered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, u) = (Arc::clone(&accepted), Arc::clone(&unanswered));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let u = Arc::clone(&u);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = false;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    buf.clear();
                    if answered {
                        u.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    answered = true;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[addr], &[green.addr], "").await;
    let (h2, _conn) = h2c(proxy.addr).await;
    let fetch = |mut h2: hyper::client::conn::http2::SendRequest<Full<Bytes>>| async move {
        let req = Request::get("http://app.example/")
            .body(Full::new(Bytes::new()))
            .expect("request");
        h2.send_request(req).await.expect("h2 response").status()
    };
    // Two at once leave two kept connections.
    let (one, two) = tokio::join!(fetch(h2.clone()), fetch(h2.clone()));
    assert_eq!((one, two), (StatusCode::OK, StatusCode::OK));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // The next takes one, which closes unanswered: the GET goes once more, on a new
    // connection, not on the other kept one (which would close the same way).
    assert_eq!(fetch(h2.clone()).await, StatusCode::OK);
    assert_eq!(
        unanswered.load(Ordering::SeqCst),
        1,
        "sent on one kept connection only"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "and then on a new one");

    // The relay does the same: two kept connections are left, both closing unanswered.
    assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);
    assert_eq!(
        unanswered.load(Ordering::SeqCst),
        2,
        "relay: one kept connection only"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "relay: then a new one");
}
