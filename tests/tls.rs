//! TLS on client listeners: ALPN picks HTTP/2 or the HTTP/1.1 relay, SNI picks the
//! certificate, certificates replaced on disk are served to the next connection, a bad
//! one is refused and counted, failed handshakes are counted by reason without
//! disturbing anyone else, and a plain listener can redirect to https.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::raw::RawBackend;
use support::tls::{TestCa, cert_keys, connect, h2_tls, presented, replace_file};
use support::{Proxy, admin_text, backend, config_text, sample};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A proxy whose `[listen]` terminates TLS with a certificate for `localhost` and
/// `app.example`, plus `extra` config.
struct Tls {
    proxy: Proxy,
    ca: TestCa,
}

async fn tls_proxy(blue: SocketAddr, green: SocketAddr, tls_extra: &str, extra: &str) -> Tls {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("cutover test CA");
    let issued = ca.issue(dir.path(), "server", &["localhost", "app.example"]);
    let text = config_text(
        dir.path(),
        &[blue],
        &[green],
        &format!("\n[listen.tls]\n{}{tls_extra}\n{extra}", cert_keys(&issued)),
    );
    Tls {
        proxy: Proxy::from_text(dir, &text).await,
        ca,
    }
}

/// Writes a plain HTTP/1.1 request on `io` and reads one answer with a
/// Content-Length body; the status line and the body.
async fn h1_round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    raw: &[u8],
) -> (String, String) {
    io.write_all(raw).await.expect("write request");
    let mut buf = Vec::new();
    let answer = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await.expect("read answer");
            assert!(
                n > 0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = text.lines().next().unwrap_or("").to_owned();
                    return (status, text[end + 4..end + 4 + length].to_owned());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer within 5 s")
}

fn get_bytes(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.example\r\nX-Mixed-Case: 1\r\n\r\n").into_bytes()
}

async fn metrics(proxy: &Proxy) -> String {
    admin_text(&proxy.socket, "/metrics").await.1
}

#[tokio::test]
async fn an_https_client_gets_h2_by_alpn_and_the_http1_relay_without_it() {
    let blue = RawBackend::start().await;
    let green = RawBackend::start().await;
    let t = tls_proxy(blue.addr, green.addr, "", "").await;

    // ALPN h2: HTTP/2 over TLS.
    let (mut h2, conn) = h2_tls(t.proxy.addr, &t.ca, "localhost").await;
    let req = http::Request::builder()
        .uri("https://app.example/over-h2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h2.send_request(req).await.expect("h2 answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok");
    conn.abort();

    // No ALPN: HTTP/1.1, carried by the relay, which forwards field names as written
    // (hyper's client would have lowercased X-Mixed-Case).
    let mut tls = connect(t.proxy.addr, t.ca.client_config(&[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    for path in ["/first", "/second"] {
        let (status, body) = h1_round_trip(&mut tls, &get_bytes(path)).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "ok");
    }
    // ALPN http/1.1: the same.
    let mut tls11 = connect(
        t.proxy.addr,
        t.ca.client_config(&[b"http/1.1"]),
        "localhost",
    )
    .await
    .expect("handshake");
    assert_eq!(tls11.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _) = h1_round_trip(&mut tls11, &get_bytes("/third")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");

    let got = blue.received();
    let targets: Vec<&str> = got.iter().map(|r| r.target()).collect();
    assert_eq!(targets, ["/over-h2", "/first", "/second", "/third"]);
    for r in &got[1..] {
        assert!(
            r.fields.iter().any(|(n, _)| n == "X-Mixed-Case"),
            "{} came through the relay with its field names as sent: {:?}",
            r.target(),
            r.fields
        );
    }
    for r in &got {
        assert!(
            r.fields
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("x-forwarded-proto") && v == "https"),
            "{} has X-Forwarded-Proto: https: {:?}",
            r.target(),
            r.fields
        );
    }
    assert_eq!(green.received().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_answer_over_tls_arrives_whole_with_close_notify_though_the_client_sent_more() {
    let t = tls_proxy(backend("blue").await, backend("green").await, "", "").await;
    for unread in [0, 4 << 20] {
        let tls = connect(t.proxy.addr, t.ca.client_config(&[]), "localhost")
            .await
            .expect("handshake");
        let (mut from, mut to) = tokio::io::split(tls);
        let writer = tokio::spawn(async move {
            to.write_all(b"GET /slow?ms=100 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await?;
            to.flush().await?;
            // Bytes the proxy never reads: its close must not lose the answer to them.
            to.write_all(&vec![b'x'; unread]).await?;
            to.flush().await?;
            Ok::<_, std::io::Error>(to)
        });
        let mut reply = Vec::new();
        // Ok only when the session ended with close_notify (rustls reports an EOF
        // without one as an error).
        tokio::time::timeout(Duration::from_secs(5), from.read_to_end(&mut reply))
            .await
            .expect("the connection ends")
            .expect("a clean close_notify");
        writer.abort();
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n"),
            "{unread}: {reply}"
        );
        assert!(reply.contains("\r\nconnection: close\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nblue"), "{unread}: {reply}");
    }
}

/// How each of three connections from one client went: the client keeps the
/// tickets (or the TLS 1.2 session) it was given and offers them on the next.
async fn handshakes(
    t: &Tls,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Vec<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(t.ca.cert.clone()).expect("trust ca");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = std::sync::Arc::new(config);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut tls = connect(t.proxy.addr, std::sync::Arc::clone(&config), "localhost")
            .await
            .expect("handshake");
        // A TLS 1.3 client reads its tickets with the first answer.
        let (status, _) = h1_round_trip(&mut tls, &get_bytes("/")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        kinds.push(format!("{:?}", tls.get_ref().1.handshake_kind()));
    }
    kinds
}

#[tokio::test]
async fn clients_resume_their_sessions_unless_resumption_is_off() {
    let blue = RawBackend::start().await;
    let green = RawBackend::start().await;
    let (full, resumed) = ("Some(Full)", "Some(Resumed)");
    for (setting, expected) in [
        ("", [full, resumed, resumed]),
        ("resumption = true\n", [full, resumed, resumed]),
        ("resumption = false\n", [full, full, full]),
    ] {
        let t = tls_proxy(blue.addr, green.addr, setting, "").await;
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let kinds = handshakes(&t, versions).await;
            assert_eq!(kinds, expected, "{setting:?} {versions:?}");
        }
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_for_the_name_and_the_default_for_any_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("sni CA");
    let default = ca.issue(dir.path(), "default", &["localhost"]);
    let api = ca.issue(dir.path(), "api", &["api.example"]);
    let shop = ca.issue(dir.path(), "shop", &["*.shop.example"]);
    let blue = backend("blue").await;
    let green = backend("green").await;
    let text = config_text(
        dir.path(),
        &[blue],
        &[green],
        &format!(
            "\n[listen.tls]\n{}\n[[listen.tls.sni]]\nname = \"API.example\"\n{}\n\
             [[listen.tls.sni]]\nname = \"*.shop.example\"\n{}",
            cert_keys(&default),
            cert_keys(&api),
            cert_keys(&shop)
        ),
    );
    let proxy = Proxy::from_text(dir, &text).await;
    for (name, want) in [
        ("api.example", &api.der),
        ("eu.shop.example", &shop.der),
        ("localhost", &default.der),
    ] {
        let mut tls = connect(proxy.addr, ca.client_config(&[]), name)
            .await
            .unwrap_or_else(|e| panic!("handshake for {name}: {e}"));
        assert!(presented(&tls) == *want, "{name} got its own certificate");
        let (status, body) = h1_round_trip(&mut tls, &get_bytes("/")).await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "blue")
        );
    }
    // A name nobody configured gets the default certificate (which the client then
    // refuses, since it is not for that name).
    let err = connect(proxy.addr, ca.client_config(&[]), "other.example")
        .await
        .expect_err("the default certificate is not for other.example");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_to_the_next_connection_while_an_open_one_keeps_working()
 {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let t = tls_proxy(blue, green, "", "").await;
    let cert_path = t.proxy.dir.path().join("server.crt");
    let key_path = t.proxy.dir.path().join("server.key");

    let mut open = connect(t.proxy.addr, t.ca.client_config(&[]), "localhost")
        .await
        .expect("handshake");
    let old = presented(&open);
    let (status, _) = h1_round_trip(&mut open, &get_bytes("/before")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");

    // A new pair, renamed into place the way certificate tools do.
    let (cert, key) = t.ca.issue_pem(&["localhost", "app.example"]);
    replace_file(&key_path, key.as_bytes());
    replace_file(&cert_path, cert.as_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tls = connect(t.proxy.addr, t.ca.client_config(&[]), "localhost")
            .await
            .expect("handshake during the change");
        if presented(&tls) != old {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the change still works.
    let (status, body) = h1_round_trip(&mut open, &get_bytes("/after")).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "blue")
    );
    let text = metrics(&t.proxy).await;
    assert!(
        sample(
            &text,
            "cutover_tls_certificate_reloads_total{result=\"ok\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &text,
            "cutover_tls_certificate_reloads_total{result=\"error\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn a_bad_certificate_written_over_the_good_one_keeps_the_old_one_and_is_counted() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let t = tls_proxy(blue, green, "", "").await;
    let before = connect(t.proxy.addr, t.ca.client_config(&[]), "localhost")
        .await
        .expect("handshake");
    let served = presented(&before);

    // A certificate of another key: it does not match server.key.
    let (other_cert, _) = t.ca.issue_pem(&["localhost"]);
    replace_file(
        &t.proxy.dir.path().join("server.crt"),
        other_cert.as_bytes(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sample(
        &metrics(&t.proxy).await,
        "cutover_tls_certificate_reloads_total{result=\"error\"}",
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the bad certificate was not noticed within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Garbage too.
    std::fs::write(t.proxy.dir.path().join("server.crt"), b"-----BEGIN CERT").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut after = connect(t.proxy.addr, t.ca.client_config(&[]), "localhost")
        .await
        .expect("handshake with the old certificate");
    assert!(
        presented(&after) == served,
        "the old certificate is still served"
    );
    let (status, _) = h1_round_trip(&mut after, &get_bytes("/")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        sample(
            &metrics(&t.proxy).await,
            "cutover_tls_certificate_reloads_total{result=\"ok\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn a_failed_handshake_is_counted_by_reason_and_disturbs_no_other_connection() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let t = tls_proxy(blue, green, "handshake_timeout = \"300ms\"\n", "").await;
    let mut open = connect(t.proxy.addr, t.ca.client_config(&[]), "localhost")
        .await
        .expect("handshake");

    // Plain HTTP to the TLS port.
    let mut plain = tokio::net::TcpStream::connect(t.proxy.addr)
        .await
        .expect("connect");
    plain.write_all(&get_bytes("/")).await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the proxy closes a connection that is not TLS"
    );
    // A client that connects and says nothing.
    let _silent = tokio::net::TcpStream::connect(t.proxy.addr)
        .await
        .expect("connect");
    // A client that does not trust the certificate gives up mid-handshake.
    let untrusting = TestCa::new("another CA");
    let refused = connect(t.proxy.addr, untrusting.client_config(&[]), "localhost").await;
    assert!(
        refused.is_err(),
        "the client refuses a certificate of another CA"
    );

    let failures = |text: &str, reason: &str| {
        sample(
            text,
            &format!("cutover_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(&t.proxy).await;
        let (protocol, timeout, certificate) = (
            failures(&text, "protocol"),
            failures(&text, "timeout"),
            failures(&text, "certificate"),
        );
        if protocol >= 1.0 && timeout >= 1.0 && certificate >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "protocol {protocol}, timeout {timeout}, certificate {certificate}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection that was open all along still works.
    let (status, body) = h1_round_trip(&mut open, &get_bytes("/")).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "blue")
    );
}

#[tokio::test]
async fn x_forwarded_proto_is_https_on_the_tls_listener_and_http_on_the_plain_one() {
    let blue = RawBackend::start().await;
    let green = RawBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("proto CA");
    let issued = ca.issue(dir.path(), "server", &["localhost"]);
    let text = config_text(
        dir.path(),
        &[blue.addr],
        &[green.addr],
        &format!(
            "\n[[listen.extra]]\naddress = \"127.0.0.1:0\"\n[listen.extra.tls]\n{}",
            cert_keys(&issued)
        ),
    );
    let proxy = Proxy::from_text(dir, &text).await;
    assert_eq!(proxy.addrs.len(), 2);
    let mut plain = tokio::net::TcpStream::connect(proxy.addrs[0])
        .await
        .expect("connect");
    h1_round_trip(&mut plain, &get_bytes("/plain")).await;
    let mut tls = connect(proxy.addrs[1], ca.client_config(&[]), "localhost")
        .await
        .expect("handshake");
    h1_round_trip(&mut tls, &get_bytes("/tls")).await;
    let proto = |target: &str| {
        blue.received()
            .iter()
            .find(|r| r.target() == target)
            .and_then(|r| {
                r.fields
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-proto"))
                    .map(|(_, v)| v.clone())
            })
    };
    assert_eq!(proto("/plain").as_deref(), Some("http"));
    assert_eq!(proto("/tls").as_deref(), Some("https"));
}

#[tokio::test]
async fn a_plain_listener_with_redirect_https_answers_308_to_the_tls_port() {
    let blue = RawBackend::start().await;
    let green = RawBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("redirect CA");
    let issued = ca.issue(dir.path(), "server", &["localhost"]);
    let text = config_text(
        dir.path(),
        &[blue.addr],
        &[green.addr],
        &format!(
            "\n[listen.tls]\n{}\n[[listen.extra]]\naddress = \"127.0.0.1:0\"\nredirect_https = true\n",
            cert_keys(&issued)
        ),
    );
    let proxy = Proxy::from_text(dir, &text).await;
    let tls_port = proxy.addrs[0].port();
    let mut plain = tokio::net::TcpStream::connect(proxy.addrs[1])
        .await
        .expect("connect");
    plain
        .write_all(b"POST /login?next=%2F HTTP/1.1\r\nHost: shop.example:8080\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 308"), "{text}");
    assert!(
        text.contains(&format!(
            "location: https://shop.example:{tls_port}/login?next=%2f\r\n"
        )),
        "{text}"
    );
    // No Host: 400.
    let answer = support::raw_exchange(proxy.addrs[1], b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(blue.received().is_empty(), "a redirect proxies nothing");
}

#[test]
fn listener_config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("config CA");
    let good = ca.issue(dir.path(), "good", &["localhost"]);
    let other = ca.issue(dir.path(), "other", &["localhost"]);
    let blue: SocketAddr = "127.0.0.1:9001".parse().expect("addr");
    let green: SocketAddr = "127.0.0.1:9002".parse().expect("addr");
    let problems = |extra: &str| -> Vec<(String, String)> {
        let text = config_text(dir.path(), &[blue], &[green], extra);
        match cutover::config::Config::parse(&text, Path::new("t.toml")) {
            Err(cutover::config::ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.key, p.message)).collect()
            }
            other => panic!("expected problems for {extra}, got {other:?}"),
        }
    };
    let missing =
        problems("\n[listen.tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n");
    assert_eq!(missing[0].0, "listen.tls.cert", "{missing:?}");
    assert!(missing[0].1.contains("/nonexistent/c.pem"), "{missing:?}");

    let mismatch = problems(&format!(
        "\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        good.cert.display(),
        other.key.display()
    ));
    assert_eq!(mismatch[0].0, "listen.tls.key", "{mismatch:?}");
    assert!(mismatch[0].1.contains("does not belong"), "{mismatch:?}");

    let redirect_tls = problems(&format!(
        "\n[[listen.extra]]\naddress = \"127.0.0.1:8443\"\nredirect_https = true\n[listen.extra.tls]\n{}",
        cert_keys(&good)
    ));
    assert_eq!(
        redirect_tls[0].0, "listen.extra[0].redirect_https",
        "{redirect_tls:?}"
    );

    let text =
        config_text(dir.path(), &[blue], &[green], "").replace("127.0.0.1:0", "127.0.0.1:8080");
    let text = format!("{text}\n[[listen.extra]]\naddress = \"127.0.0.1:8080\"\n");
    match cutover::config::Config::parse(&text, Path::new("t.toml")) {
        Err(cutover::config::ConfigError::Invalid { problems, .. }) => {
            assert_eq!(problems[0].key, "listen.extra[0].address", "{problems:?}");
            assert!(problems[0].message.contains("already a listener"));
        }
        other => panic!("duplicate address accepted: {other:?}"),
    }

    let bad_sni = problems(&format!(
        "\n[listen.tls]\n{}\n[[listen.tls.sni]]\nname = \"bad name\"\n{}",
        cert_keys(&good),
        cert_keys(&good)
    ));
    assert_eq!(bad_sni[0].0, "listen.tls.sni[0].name", "{bad_sni:?}");

    let text = config_text(
        dir.path(),
        &[blue],
        &[green],
        &format!("\n[listen.tls]\n{}resumption = \"no\"\n", cert_keys(&good)),
    );
    let err = cutover::config::Config::parse(&text, Path::new("t.toml"))
        .expect_err("a string is not a boolean");
    assert!(err.to_string().contains("resumption"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_a_bad_certificate_naming_the_key_reads_a_good_one_and_a_changed_tls_table_needs_a_restart()
 {
    use http::{Method, StatusCode};
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("cutover test CA");
    let issued = ca.issue(dir.path(), "server", &["localhost"]);
    let text = config_text(
        dir.path(),
        &[blue],
        &[green],
        &format!("\n[listen.tls]\n{}", cert_keys(&issued)),
    );
    let proxy = Proxy::from_file(dir, &text).await;
    let served = presented(
        &connect(proxy.addr, ca.client_config(&[]), "localhost")
            .await
            .expect("handshake"),
    );

    // A certificate of another key over the good one: the reload changes nothing,
    // keeps the old certificate and says why, naming the key.
    let (other_cert, _) = ca.issue_pem(&["localhost"]);
    replace_file(&proxy.dir.path().join("server.crt"), other_cert.as_bytes());
    let (code, body) = proxy.admin(Method::POST, "/reload", "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("listen.tls.key") && error.contains("does not belong"),
        "the reload's error names the bad certificate: {error}"
    );
    assert_eq!(proxy.status().await["last_reload"]["result"], "error");
    let mut after = connect(proxy.addr, ca.client_config(&[]), "localhost")
        .await
        .expect("handshake with the old certificate");
    assert!(presented(&after) == served, "the old certificate is served");
    let (status, body) = h1_round_trip(&mut after, &get_bytes("/")).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "blue")
    );

    // A good pair again: the reload's result has no certificate error.
    let (cert, key) = ca.issue_pem(&["localhost"]);
    replace_file(&proxy.dir.path().join("server.key"), key.as_bytes());
    replace_file(&proxy.dir.path().join("server.crt"), cert.as_bytes());
    let (code, body) = proxy.admin(Method::POST, "/reload", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "applied", "{body}");
    let fresh = connect(proxy.addr, ca.client_config(&[]), "localhost")
        .await
        .expect("handshake with the new certificate");
    assert!(presented(&fresh) != served, "the new certificate is served");

    // The listener's TLS table changed: reported as needing a restart, the rest applies.
    let changed = text.replace("[listen.tls]", "[listen.tls]\nhandshake_timeout = \"3s\"");
    replace_file(&proxy.config_file(), changed.as_bytes());
    let (code, body) = proxy.admin(Method::POST, "/reload", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let needs = body["restart_needed"].to_string();
    assert!(needs.contains("listen.tls"), "{body}");
}
