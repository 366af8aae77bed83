//! Faults a backend or a client brings: a backend that refuses connections, an upload
//! slower than the response timeout.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use support::{Proxy, backend, closed_port, get, h2c};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_two_backends_refusing_connections_no_request_fails() {
    let dead = closed_port().await;
    let proxy = Proxy::start(
        &[dead, backend("blue").await],
        &[backend("green").await],
        "",
    )
    .await;
    all_ok_on_relay_and_h2(proxy.addr, 10).await;
    // The refusals were booked against the dead backend, not against the requests.
    assert_no_blue_5xx(&proxy).await;
}

/// No request to blue was answered 5xx (`cutover_requests_total`).
async fn assert_no_blue_5xx(proxy: &Proxy) {
    let metrics = support::admin_text(&proxy.socket, "/metrics").await.1;
    assert_eq!(
        support::sample(
            &metrics,
            r#"cutover_requests_total{color="blue",class="5xx"}"#
        ),
        0.0
    );
}

/// `n` GETs on the relay (a connection each), then `n` h2c streams on hyper's path:
/// every one answered 200.
async fn all_ok_on_relay_and_h2(addr: std::net::SocketAddr, n: usize) {
    for _ in 0..n {
        let answer = get(addr, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "relay: {}", answer.text());
    }
    let (mut h2, _conn) = h2c(addr).await;
    for _ in 0..n {
        let req = http::Request::get("http://app.example/")
            .body(Full::new(Bytes::new()))
            .expect("request");
        h2.ready().await.expect("h2 ready");
        let resp = h2.send_request(req).await.expect("h2 answer");
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

/// A request body that trickles in over `pieces` × `gap`.
fn trickle(
    pieces: usize,
    gap: Duration,
) -> impl http_body::Body<Data = Bytes, Error = std::io::Error> {
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i == pieces {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; 1000]))),
            i + 1,
        ))
    });
    StreamBody::new(Box::pin(stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_the_response_timeout_succeeds() {
    let proxy = Proxy::start(
        &[backend("blue").await],
        &[backend("green").await],
        "[upstream]\nresponse_timeout = \"400ms\"",
    )
    .await;
    // HTTP/1.1 chunked upload (hyper's path) and h2c, each taking ~1.2 s.
    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::post("/sink")
        .header("host", "app.example")
        .body(trickle(6, Duration::from_millis(200)))
        .expect("request");
    let resp = h1.send_request(req).await.expect("h1 answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "6000");

    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post("http://app.example/sink")
        .body(trickle(6, Duration::from_millis(200)))
        .expect("request");
    let resp = h2.send_request(req).await.expect("h2 answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "6000");

    // The relay buffers a small body before sending it, so the timer never saw it; a
    // backend that is slow to answer still gets 504.
    let answer = get(proxy.addr, "/slow?ms=1000").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_named_by_host_name_serves_and_one_whose_name_does_not_resolve_is_retried_elsewhere()
 {
    // `.invalid` never resolves (RFC 6761); `localhost` does, through /etc/hosts.
    let blue = support::TestBackend::start("blue").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = support::config_text(dir.path(), &[], &[backend("green").await], "").replace(
        "[pools.blue]\nbackends = []",
        &format!(
            "[pools.blue]\nbackends = [\"no-such-backend.invalid:80\", \"localhost:{}\"]",
            blue.addr.port()
        ),
    );
    let proxy = Proxy::from_text(dir, &text).await;
    all_ok_on_relay_and_h2(proxy.addr, 6).await;
    assert_eq!(blue.hits(), 12, "every request reached the named backend");
    assert_no_blue_5xx(&proxy).await;
}
