//! One request through the proxy: bodies, headers, protocols, upstream failures.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::{Conn, Proxy, backend, closed_port, get, h2c, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_and_a_post_reach_the_live_blue_backend_byte_exact() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::start(&[blue], &[green], "").await;

    let answer = get(proxy.addr, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "blue");

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/echo")
        .header("host", "app.example")
        .body(Full::new(Bytes::from(payload.clone())))
        .expect("request");
    let answer = Conn::open(proxy.addr).await.send(req).await.expect("POST");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-backend"], "blue");
    assert!(
        answer.body == payload,
        "echoed body differs from what was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_gets_the_same_answers_as_an_http1_client() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::start(&[blue], &[green], "").await;

    let (mut h2, _conn) = h2c(proxy.addr).await;

    for (path, body) in [("/", ""), ("/echo", "hello over h2")] {
        let method = if body.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://app.example{path}"))
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = h2.send_request(req).await.expect("h2 response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let status = resp.status();
        let h2_body = resp
            .into_body()
            .collect()
            .await
            .expect("h2 body")
            .to_bytes();

        let h1 = Conn::open(proxy.addr)
            .await
            .send(request(method, path, body))
            .await
            .expect("h1");
        assert_eq!(status, h1.status);
        assert_eq!(h2_body, h1.body, "h2 and h1 bodies differ for {path}");
    }

    // The backend saw the client's host, carried from :authority into Host.
    let req = Request::get("http://app.example/headers")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = h2.send_request(req).await.expect("h2 response");
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(seen["host"], "app.example");
    assert_eq!(seen["x-forwarded-host"], "app.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_never_reach_the_backend_or_the_client() {
    let blue = backend("blue").await;
    let proxy = Proxy::start(&[blue], &[backend("green").await], "").await;
    let mut conn = Conn::open(proxy.addr).await;

    let req = Request::get("/headers")
        .header("host", "app.example")
        .header("connection", "keep-alive, x-client-secret")
        .header("x-client-secret", "s3cret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = conn.send(req).await.expect("GET /headers");
    let seen: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    for hop in [
        "x-client-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(seen.get(hop).is_none(), "{hop} reached the backend: {seen}");
    }
    // The backend may see a Connection header of the proxy's own, never the client's.
    let connection = seen
        .get("connection")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    assert!(
        !connection.contains("x-client-secret"),
        "client's Connection reached the backend"
    );
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["via"], "1.1 cutover");

    let answer = conn.get("/hop").await;
    assert_eq!(answer.status, StatusCode::OK);
    for hop in [
        "x-backend-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            answer.headers.get(hop).is_none(),
            "{hop} reached the client: {:?}",
            answer.headers
        );
    }
    let connection = answer
        .headers
        .get("connection")
        .map(|v| v.to_str().unwrap_or(""))
        .unwrap_or("");
    assert!(
        !connection.contains("x-backend-secret"),
        "backend's Connection reached the client"
    );
    assert_eq!(answer.headers["x-end-to-end"], "kept");
    // The connection is still usable afterwards.
    assert_eq!(conn.get("/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_replaced_for_an_untrusted_peer_and_extended_for_a_trusted_one() {
    let backends = [backend("blue").await, backend("green").await];
    for (trusted, expected) in [
        ("", "127.0.0.1"),
        ("[forwarded]\ntrusted = [\"10.0.0.0/8\"]", "127.0.0.1"),
        (
            "[forwarded]\ntrusted = [\"127.0.0.0/8\"]",
            "203.0.113.9, 198.51.100.2, 127.0.0.1",
        ),
    ] {
        let proxy = Proxy::start(&backends[..1], &backends[1..], trusted).await;
        let mut conn = Conn::open(proxy.addr).await;
        let req = Request::get("/headers")
            .header("host", "shop.example:8443")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-for", "198.51.100.2")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let seen: serde_json::Value =
            serde_json::from_slice(&conn.send(req).await.expect("GET").body).expect("json");
        assert_eq!(seen["x-forwarded-for"], expected, "with {trusted:?}");
        assert_eq!(seen["x-forwarded-proto"], "http");
        assert_eq!(seen["x-forwarded-host"], "shop.example:8443");
        assert_eq!(
            seen["host"], "shop.example:8443",
            "the client's Host is passed through"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_gives_502() {
    let down = closed_port().await;
    let proxy = Proxy::start(&[down], &[backend("green").await], "").await;
    let answer = get(proxy.addr, "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.text().contains("502"), "body: {}", answer.text());
    // The failure is not sticky: the blue pool's in-flight count is back to zero.
    let status = proxy.status().await;
    assert_eq!(status["pools"]["blue"]["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_hangs_gives_504_after_the_response_timeout() {
    let proxy = Proxy::start(
        &[backend("blue").await],
        &[backend("green").await],
        "[upstream]\nresponse_timeout = \"300ms\"",
    )
    .await;
    let started = std::time::Instant::now();
    let answer = get(proxy.addr, "/hang").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "answered before the timeout"
    );
    // A healthy request right after is unaffected.
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_gets_400_and_the_proxy_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let mut raw = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\nBad Header Line\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        raw.read_to_end(&mut reply),
    )
    .await
    .expect("the proxy answers and closes")
    .expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
    assert_eq!(proxy.status().await["pools"]["blue"]["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_chunked_response_reaches_an_http2_client_whole_on_one_kept_backend_connection() {
    const SIZE: usize = 3 * 1024 * 1024 + 17;
    let blue = support::TestBackend::start("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[backend("green").await], "").await;
    let (mut h2, _conn) = h2c(proxy.addr).await;
    // The backend streams it chunked in 64 KiB chunks; cutover decodes the framing
    // off the socket as the client reads, so the client gets the bytes alone.
    for _ in 0..2 {
        let req = Request::get(format!("http://app.example/big?bytes={SIZE}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = h2.send_request(req).await.expect("response head");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("whole body");
        let body = body.to_bytes();
        assert_eq!(body.len(), SIZE);
        assert!(body.iter().all(|&b| b == b'x'), "a byte of framing got in");
    }
    assert_eq!(
        blue.accepted(),
        1,
        "the backend connection went back after the first body and was reused"
    );
}
