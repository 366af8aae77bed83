//! `https://` backends: verified against a configured CA (or not, and then a 502 that
//! names why), kept alive on both paths, presenting a client certificate, and probed
//! over TLS by health checks.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use support::tls::TestCa;
use support::tls_backend::TlsBackend;
use support::{Conn, Proxy, backend, h2c};

/// A proxy whose blue pool is `blue` (addresses as written) with `blue_keys` appended
/// to the config (e.g. a `[pools.blue.tls]` table), and green a plain backend.
async fn proxy(dir: tempfile::TempDir, blue: &[String], extra: &str) -> Proxy {
    let green = backend("green").await;
    let list: Vec<String> = blue.iter().map(|b| format!("\"{b}\"")).collect();
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[admin]\nsocket = \"{}\"\n\n\
         [pools.blue]\nbackends = [{}]\n\n[pools.green]\nbackends = [\"{green}\"]\n\n\
         [routing]\nlive = \"blue\"\n\n{extra}\n",
        dir.path().join("admin.sock").display(),
        list.join(", "),
    );
    Proxy::from_text(dir, &text).await
}

/// `[pools.blue.tls]` trusting the CA file at `ca`, with `more` keys.
fn blue_tls(ca: &Path, more: &str) -> String {
    format!("[pools.blue.tls]\nca = \"{}\"\n{more}", ca.display())
}

/// GET `path` as h2c on `h2`: the status and the body.
async fn h2_get(
    h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
) -> (StatusCode, String) {
    let req = Request::get(format!("http://app.example{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req))
        .await
        .expect("an answer in time")
        .expect("h2 answer");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_https_backend_verified_by_the_configured_ca_serves_both_paths_on_kept_alive_connections()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("backend ca");
    let ca_file = ca.write(dir.path(), "ca");
    // An IP host: verified against the certificate's IP SAN, no SNI sent.
    let secure =
        TlsBackend::start("secure", &ca.issue(dir.path(), "b", &["127.0.0.1"]), None).await;
    let proxy = proxy(dir, &[secure.https()], &blue_tls(&ca_file, "")).await;

    // The relay: plain HTTP/1.1 on one client connection.
    let mut conn = Conn::open(proxy.addr).await;
    for _ in 0..5 {
        let answer = conn.get("/").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.text(), "secure");
    }
    // Hyper's path: h2c streams, one after another.
    let (mut h2, _task) = h2c(proxy.addr).await;
    for _ in 0..5 {
        assert_eq!(
            h2_get(&mut h2, "/").await,
            (StatusCode::OK, "secure".to_owned())
        );
    }
    assert_eq!(secure.requests(), 10);
    // RFC 6066 §3: no IP address in SNI.
    assert!(
        secure.sni().iter().all(Option::is_none),
        "{:?}",
        secure.sni()
    );
    // One connection per path at most: kept alive, not a handshake per request.
    assert!(
        secure.handshakes() <= 2,
        "{} TLS handshakes for 10 requests",
        secure.handshakes()
    );
}

#[tokio::test]
async fn large_bodies_cross_an_https_backend_whole_in_both_directions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("backend ca");
    let ca_file = ca.write(dir.path(), "ca");
    let secure =
        TlsBackend::start("secure", &ca.issue(dir.path(), "b", &["127.0.0.1"]), None).await;
    let proxy = proxy(dir, &[secure.https()], &blue_tls(&ca_file, "")).await;
    let mut conn = Conn::open(proxy.addr).await;
    // Uploads held by the relay and larger ones streamed by hyper, each more than a
    // socket buffer, so TLS records wait to be flushed.
    for size in [1_000_000usize, 3_000_000] {
        let body = "u".repeat(size);
        let upload = conn.send(support::request(http::Method::POST, "/sink", &body));
        let answer = tokio::time::timeout(Duration::from_secs(10), upload)
            .await
            .expect("the upload is answered in time")
            .expect("upload answered");
        assert_eq!(answer.status, StatusCode::OK, "{size}: {}", answer.text());
        assert_eq!(answer.text(), size.to_string());
        let answer = conn.get(&format!("/big?bytes={size}")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.len(), size);
    }
}

#[tokio::test]
async fn a_backend_certificate_the_pool_cannot_verify_gets_502_naming_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("trusted ca");
    let other = TestCa::new("someone else's ca");
    let ca_file = ca.write(dir.path(), "ca");
    let cases = [
        (
            "signed by another CA",
            other.issue(dir.path(), "untrusted", &["127.0.0.1"]),
            "UnknownIssuer",
        ),
        (
            "issued for another name",
            ca.issue(dir.path(), "misnamed", &["elsewhere.example"]),
            "NotValidForName",
        ),
    ];
    for (what, cert, reason) in cases {
        let bad = TlsBackend::start("bad", &cert, None).await;
        let case_dir = tempfile::tempdir().expect("tempdir");
        let proxy = proxy(case_dir, &[bad.https()], &blue_tls(&ca_file, "")).await;
        let answer = Conn::open(proxy.addr).await.get("/").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{what} (relay)");
        assert!(
            answer.text().contains("certificate") && answer.text().contains(reason),
            "{what} (relay): {}",
            answer.text()
        );
        let (mut h2, _task) = h2c(proxy.addr).await;
        let (status, body) = h2_get(&mut h2, "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{what} (h2)");
        assert!(
            body.contains("certificate") && body.contains(reason),
            "{what} (h2): {body}"
        );
        assert_eq!(bad.requests(), 0, "{what}: no request reached it");
    }
}

#[tokio::test]
async fn a_backend_that_never_finishes_the_handshake_is_bounded_by_connect_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = TestCa::new("backend ca").write(dir.path(), "ca");
    // Accepts TCP connections and never says a word of TLS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let extra = format!(
        "{}\n[upstream]\nconnect_timeout = \"300ms\"\nresponse_timeout = \"60s\"\n",
        blue_tls(&ca_file, "")
    );
    let proxy = proxy(dir, &[format!("https://{addr}")], &extra).await;
    // Far less than the response timeout: the handshake is part of the connect.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        Conn::open(proxy.addr).await.get("/"),
    )
    .await
    .expect("answered within the connect timeout, not the response timeout");
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    assert!(answer.text().contains("unreachable"), "{}", answer.text());
}

#[tokio::test]
async fn a_request_whose_backend_fails_the_handshake_moves_to_another_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("backend ca");
    let ca_file = ca.write(dir.path(), "ca");
    let other = TestCa::new("someone else's ca");
    let bad = TlsBackend::start("bad", &other.issue(dir.path(), "u", &["127.0.0.1"]), None).await;
    let good = TlsBackend::start("good", &ca.issue(dir.path(), "g", &["127.0.0.1"]), None).await;
    let proxy = proxy(dir, &[bad.https(), good.https()], &blue_tls(&ca_file, "")).await;
    // Round-robin sends some of these to the untrusted backend first; nothing of a
    // request was sent there, so each goes on to the trusted one.
    for _ in 0..4 {
        let answer = Conn::open(proxy.addr).await.get("/").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.text(), "good");
    }
    assert!(bad.refused() >= 1, "the untrusted backend was tried");
    assert_eq!(good.requests(), 4);
}

#[tokio::test]
async fn a_configured_client_certificate_is_presented_to_a_backend_that_requires_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("backend ca");
    let clients = TestCa::new("client ca");
    let ca_file = ca.write(dir.path(), "ca");
    let client = clients.issue(dir.path(), "client", &["cutover.example"]);
    let strict = TlsBackend::start(
        "strict",
        &ca.issue(dir.path(), "b", &["127.0.0.1"]),
        Some(&clients),
    )
    .await;

    // Without the client certificate the backend refuses the handshake.
    let bare = proxy(
        tempfile::tempdir().expect("tempdir"),
        &[strict.https()],
        &blue_tls(&ca_file, ""),
    )
    .await;
    let answer = Conn::open(bare.addr).await.get("/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    assert!(
        answer.text().contains("TLS") && answer.text().contains("client certificate"),
        "{}",
        answer.text()
    );
    assert_eq!(
        strict
            .with_client_cert
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    let keys = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        client.cert.display(),
        client.key.display()
    );
    let proxy = proxy(dir, &[strict.https()], &blue_tls(&ca_file, &keys)).await;
    let answer = Conn::open(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), "strict");
    assert!(
        strict
            .with_client_cert
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
}

#[tokio::test]
async fn server_name_sets_the_name_a_backend_is_verified_as_and_sent_as_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("backend ca");
    let ca_file = ca.write(dir.path(), "ca");
    // The certificate names a service, the backend is written by its IP.
    let named =
        TlsBackend::start("named", &ca.issue(dir.path(), "b", &["api.internal"]), None).await;
    let proxy = proxy(
        dir,
        &[named.https()],
        &blue_tls(&ca_file, "server_name = \"api.internal\"\n"),
    )
    .await;
    let answer = Conn::open(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), "named");
    assert_eq!(named.sni(), [Some("api.internal".to_owned())]);
}

#[tokio::test]
async fn a_backend_written_by_dns_name_is_verified_as_that_name_and_sent_it_as_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("backend ca");
    let ca_file = ca.write(dir.path(), "ca");
    let local = TlsBackend::start("local", &ca.issue(dir.path(), "b", &["localhost"]), None).await;
    let address = format!("https://localhost:{}", local.addr.port());
    let proxy = proxy(dir, &[address], &blue_tls(&ca_file, "")).await;
    let answer = Conn::open(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), "local");
    assert_eq!(local.sni(), [Some("localhost".to_owned())]);
}

#[tokio::test]
async fn health_checks_probe_https_backends_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("backend ca");
    let other = TestCa::new("someone else's ca");
    let ca_file = ca.write(dir.path(), "ca");
    let good = TlsBackend::start("good", &ca.issue(dir.path(), "g", &["127.0.0.1"]), None).await;
    let bad = TlsBackend::start("bad", &other.issue(dir.path(), "u", &["127.0.0.1"]), None).await;
    let health =
        "[pools.blue.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 1\nfall = 1\n";
    let proxy = proxy(
        dir,
        &[good.https(), bad.https()],
        &format!("{}\n{health}", blue_tls(&ca_file, "")),
    )
    .await;
    let status = proxy
        .wait_until("the trusted backend up, the untrusted one down", |s| {
            let backends = &s["pools"]["blue"]["backends"];
            backends[0]["healthy"] == true
                && backends[0]["problem"].is_null()
                && backends[1]["healthy"] == false
        })
        .await;
    let problem = status["pools"]["blue"]["backends"][1]["problem"].to_string();
    assert!(problem.contains("UnknownIssuer"), "{problem}");
    assert!(good.handshakes() >= 1, "the probe went over TLS");
    // Traffic goes only to the backend that passed.
    for _ in 0..4 {
        assert_eq!(Conn::open(proxy.addr).await.get("/").await.text(), "good");
    }
}
