//! Bodies stream: a large response passes without the proxy holding it.
//! (Its own test binary, so the peak-RSS reading sees only this test.)

mod support;

use http_body_util::BodyExt;
use support::{Proxy, backend};

/// Peak resident set of this process, from /proc.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_response_streams_through_with_flat_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let before = peak_rss_bytes();

    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let resp = tx
        .send_request(support::request(
            http::Method::GET,
            &format!("/big?bytes={SIZE}"),
            "",
        ))
        .await
        .expect("response head");
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            assert!(
                data.iter().all(|&b| b == b'x'),
                "corrupted byte in the stream"
            );
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);

    let grown = peak_rss_bytes().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} KiB while streaming {} MiB",
        grown / 1024,
        SIZE >> 20
    );
    assert!(
        grown < 32 * 1024 * 1024,
        "peak RSS grew by {grown} bytes: the body was buffered"
    );
}
