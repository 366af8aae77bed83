//! Per-colour metrics, the Prometheus export, windowed stats, the colour header and
//! the access log.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{Conn, Proxy, TestBackend, admin_text, closed_port, get, h2c, sample};

async fn metrics(proxy: &Proxy) -> String {
    let (status, text) = admin_text(&proxy.socket, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_n_requests_to_blue_and_m_to_green_the_counters_by_colour_and_class_match_exactly() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    // Green has a backend that refuses connections: round-robin picks it every other
    // request, and each such request is moved to the live backend, so none fails for
    // it. Half the requests ask for a path the backend answers with 500.
    let down = closed_port().await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr, down], "").await;

    let mut conn = Conn::open(proxy.addr).await;
    for _ in 0..7 {
        assert_eq!(conn.get("/").await.status, StatusCode::OK);
    }
    proxy.switch("green").await;
    green.set_healthy(false);
    let (mut ok, mut server_error) = (0, 0);
    for i in 0..8 {
        match conn
            .get(if i % 2 == 0 { "/" } else { "/flaky" })
            .await
            .status
        {
            StatusCode::OK => ok += 1,
            StatusCode::INTERNAL_SERVER_ERROR => server_error += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, server_error), (4, 4));

    let text = metrics(&proxy).await;
    let n = |series: &str| sample(&text, series);
    assert_eq!(
        n(r#"cutover_requests_total{color="blue",class="2xx"}"#),
        7.0
    );
    assert_eq!(
        n(r#"cutover_requests_total{color="blue",class="5xx"}"#),
        0.0
    );
    assert_eq!(
        n(r#"cutover_requests_total{color="green",class="2xx"}"#),
        f64::from(ok)
    );
    assert_eq!(
        n(r#"cutover_requests_total{color="green",class="5xx"}"#),
        f64::from(server_error)
    );
    // Refused connects that were retried elsewhere are not failed requests.
    assert_eq!(
        n(r#"cutover_upstream_errors_total{color="green",kind="connect"}"#),
        0.0
    );
    assert_eq!(
        n(r#"cutover_upstream_errors_total{color="blue",kind="connect"}"#),
        0.0
    );
    assert_eq!(
        n(r#"cutover_switches_total{kind="switch",forced="false"}"#),
        1.0
    );
    assert_eq!(n(r#"cutover_live_color{color="green"}"#), 1.0);
    assert_eq!(n("cutover_routing_generation"), 2.0);
    assert_eq!(
        n(r#"cutover_request_duration_seconds_count{color="blue"}"#),
        7.0
    );

    // The same per backend: the refusing one got none (its requests moved on).
    let at =
        |color: &str, addr: std::net::SocketAddr| format!(r#"color="{color}",backend="{addr}""#);
    let by_backend = |color: &str, addr, class: &str| {
        n(&format!(
            "cutover_backend_requests_total{{{},class=\"{class}\"}}",
            at(color, addr)
        ))
    };
    assert_eq!(by_backend("blue", blue.addr, "2xx"), 7.0);
    assert_eq!(by_backend("green", green.addr, "2xx"), f64::from(ok));
    assert_eq!(
        by_backend("green", green.addr, "5xx"),
        f64::from(server_error)
    );
    assert_eq!(by_backend("green", down, "2xx"), 0.0);
    assert_eq!(
        n(&format!(
            "cutover_backend_errors_total{{{}}}",
            at("green", green.addr)
        )),
        f64::from(server_error)
    );
    assert_eq!(
        n(&format!(
            "cutover_backend_errors_total{{{}}}",
            at("blue", blue.addr)
        )),
        0.0
    );
    assert_eq!(
        n(&format!(
            "cutover_backend_request_duration_seconds_count{{{}}}",
            at("green", green.addr)
        )),
        f64::from(ok + server_error)
    );
    assert!(
        n(&format!(
            "cutover_backend_request_duration_seconds_sum{{{}}}",
            at("blue", blue.addr)
        )) > 0.0
    );

    // The build, the process, and no series that only repeats Prometheus's `up`.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        n(&format!("cutover_build_info{{version=\"{version}\"}}")),
        1.0
    );
    assert!(n("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(n("process_open_fds") >= 3.0, "{text}");
    assert!(n("process_cpu_seconds_total") >= 0.0);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("cutover_up ") || l.contains(" cutover_up ")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_ms_backend_delay_lands_in_the_right_bucket_and_the_window_p99_within_its_resolution()
{
    let proxy = Proxy::start(
        &[TestBackend::start("blue").await.addr],
        &[TestBackend::start("green").await.addr],
        "",
    )
    .await;
    let mut conn = Conn::open(proxy.addr).await;
    for _ in 0..5 {
        assert_eq!(conn.get("/slow?ms=200").await.status, StatusCode::OK);
    }
    let text = metrics(&proxy).await;
    let bucket = |le: &str| {
        sample(
            &text,
            &format!(r#"cutover_request_duration_seconds_bucket{{color="blue",le="{le}"}}"#),
        )
    };
    assert_eq!(bucket("0.1"), 0.0, "a 200 ms request counted under 100 ms");
    assert_eq!(bucket("0.25"), 5.0);
    assert_eq!(bucket("+Inf"), 5.0);

    let window = &proxy.status().await["pools"]["blue"]["window_10s"];
    let p99 = window["p99_ms"].as_f64().expect("p99");
    assert!(
        (200.0..250.0).contains(&p99),
        "window p99 {p99} ms is outside the 200-250 ms bucket"
    );
    assert_eq!(window["requests"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_metrics_endpoint_serves_the_same_text_as_the_admin_socket_and_passes_promtool() {
    let proxy = Proxy::start(
        &[TestBackend::start("blue").await.addr],
        &[TestBackend::start("green").await.addr],
        "[metrics]\nlisten = \"127.0.0.1:0\"",
    )
    .await;
    for _ in 0..3 {
        get(proxy.addr, "/").await;
    }
    let tcp = proxy.metrics.expect("metrics listener bound");
    let over_tcp = get(tcp, "/metrics").await;
    assert_eq!(over_tcp.status, StatusCode::OK);
    let over_tcp = over_tcp.text().to_owned();
    let over_socket = metrics(&proxy).await;
    // The process's own samples (CPU, memory, fds) move between two scrapes.
    let lines = |t: &str| {
        let mut l: Vec<String> = t
            .lines()
            .filter(|l| !l.starts_with("process_"))
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    assert_eq!(lines(&over_tcp), lines(&over_socket));
    assert_eq!(
        get(tcp, "/status").await.status,
        StatusCode::NOT_FOUND,
        "only /metrics is served on TCP"
    );

    match promtool(&over_tcp) {
        Some((ok, report)) => assert!(ok, "promtool check metrics failed:\n{report}"),
        None if std::env::var_os("CUTOVER_REQUIRE_PROMTOOL").is_some() => {
            panic!("promtool is required here (CUTOVER_REQUIRE_PROMTOOL) but not installed")
        }
        None => eprintln!("promtool not installed; skipped `promtool check metrics` (CI runs it)"),
    }
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool(text: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_error_rate_in_the_window_rises_when_green_answers_500_and_falls_after_it_recovers() {
    let green = TestBackend::start("green").await;
    let proxy = Proxy::start(&[TestBackend::start("blue").await.addr], &[green.addr], "").await;
    proxy.switch("green").await;
    let mut conn = Conn::open(proxy.addr).await;
    let rate = |s: &serde_json::Value| {
        s["pools"]["green"]["window_10s"]["error_rate"]
            .as_f64()
            .expect("rate")
    };

    for _ in 0..20 {
        conn.get("/flaky").await;
    }
    assert_eq!(rate(&proxy.status().await), 0.0);

    green.set_healthy(false);
    for _ in 0..20 {
        assert_eq!(
            conn.get("/flaky").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    let failing = rate(&proxy.status().await);
    assert!(
        (failing - 0.5).abs() < 1e-9,
        "error rate while failing: {failing}"
    );

    green.set_healthy(true);
    for _ in 0..60 {
        assert_eq!(conn.get("/flaky").await.status, StatusCode::OK);
    }
    let recovered = rate(&proxy.status().await);
    assert!(recovered < failing, "error rate did not fall: {recovered}");
    assert!(
        (recovered - 0.2).abs() < 1e-9,
        "20 errors in 100 requests: {recovered}"
    );
    assert_eq!(
        proxy.status().await["pools"]["blue"]["window_10s"]["requests"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_colour_header_names_the_serving_colour_only_when_turned_on() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let off = Proxy::start(&[blue.addr], &[green.addr], "").await;
    assert!(
        get(off.addr, "/")
            .await
            .headers
            .get("x-cutover-color")
            .is_none()
    );

    // The harness ends its config in the [routing] table, where `color_header` lives.
    let on = Proxy::start(&[blue.addr], &[green.addr], "color_header = true").await;
    assert_eq!(get(on.addr, "/").await.headers["x-cutover-color"], "blue");
    on.switch("green").await;
    assert_eq!(get(on.addr, "/").await.headers["x-cutover-color"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_and_the_data_path_does_not_wait_on_its_writer() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // A FIFO nobody reads yet: the log writer blocks opening it.
    let fifo = dir.path().join("access.fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8 path")).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let extra = format!("[access_log]\npath = \"{}\"", fifo.display());
    let proxy = Proxy::start(
        &[TestBackend::start("blue").await.addr],
        &[TestBackend::start("green").await.addr],
        &extra,
    )
    .await;

    // All requests complete while the writer is stuck.
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut conn = Conn::open(proxy.addr).await;
        for i in 0..50 {
            assert_eq!(conn.get(&format!("/item/{i}")).await.status, StatusCode::OK);
        }
    })
    .await
    .expect("requests completed while the access log writer was blocked");

    let reader = tokio::fs::File::open(&fifo)
        .await
        .expect("open fifo for reading");
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("log lines arrive once read")
            .expect("read")
            .expect("not EOF");
        seen.push(serde_json::from_str::<serde_json::Value>(&line).expect("each line is JSON"));
    }
    for (i, entry) in seen.iter().enumerate() {
        assert_eq!(entry["target"], format!("/item/{i}"));
        assert_eq!(entry["color"], "blue");
        assert_eq!(entry["status"], 200);
        assert_eq!(entry["method"], "GET");
        assert!(
            entry["backend"]
                .as_str()
                .is_some_and(|b| b.starts_with("127.0.0.1:"))
        );
        assert_eq!(entry["bytes"], 4, "\"blue\" is four bytes");
        assert!(entry["duration_ms"].as_f64().is_some());
    }
    // Exactly one line per request: the next request gives exactly the next line.
    get(proxy.addr, "/one-more").await;
    let next = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("line")
        .expect("read")
        .expect("not EOF");
    assert!(next.contains("/one-more"), "{next}");
}

fn h2_get(path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(format!("http://app.example{path}"))
        .body(Default::default())
        .expect("request")
}

/// Waits until blue has nothing in flight.
async fn settled(proxy: &Proxy) {
    proxy
        .wait_until("blue has nothing in flight", |s| {
            s["pools"]["blue"]["in_flight"] == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_breaks_off_mid_body_counts_as_an_upstream_error_on_both_paths() {
    use http_body_util::BodyExt;
    // Promises 100 bytes, sends 9, closes.
    let (blue, _) = support::scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        true,
    )
    .await;
    let proxy = Proxy::start(&[blue], &[TestBackend::start("green").await.addr], "").await;
    // (reset errors, 2xx answers, window requests, window errors) of blue.
    let counted = async || {
        let text = metrics(&proxy).await;
        let window = &proxy.status().await["pools"]["blue"]["window_10s"];
        (
            sample(
                &text,
                r#"cutover_upstream_errors_total{color="blue",kind="reset"}"#,
            ),
            sample(&text, r#"cutover_requests_total{color="blue",class="2xx"}"#),
            window["requests"].as_u64().expect("requests"),
            window["errors"].as_u64().expect("errors"),
        )
    };

    // HTTP/1.1: the relay. It closes the connection of a cut-short answer.
    let reply =
        support::raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nonly part"), "{reply}");
    settled(&proxy).await;
    // The client saw a 200 head: that stays its class, and the break is an upstream error.
    assert_eq!(counted().await, (1.0, 1.0, 1, 1));

    // h2c: hyper's path.
    let (mut h2, _conn) = h2c(proxy.addr).await;
    let resp = h2.send_request(h2_get("/")).await.expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.into_body().collect().await.is_err(),
        "a cut-short body must not look whole"
    );
    settled(&proxy).await;
    assert_eq!(counted().await, (2.0, 2.0, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_does_not_count_against_the_colour() {
    use tokio::io::AsyncWriteExt;
    let blue = TestBackend::start("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[TestBackend::start("green").await.addr], "").await;

    // HTTP/1.1: the relay notices the client gone while it waits on the backend.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .expect("write");
    support::eventually("the backend has the request", || blue.hits() == 1).await;
    drop(stream);
    settled(&proxy).await;

    // h2c: hyper drops the request when the connection goes.
    let (mut h2, conn) = h2c(proxy.addr).await;
    let pending = tokio::spawn(async move { h2.send_request(h2_get("/slow?ms=2000")).await });
    support::eventually("the backend has the request", || blue.hits() == 2).await;
    conn.abort();
    pending.abort();
    settled(&proxy).await;

    let window = &proxy.status().await["pools"]["blue"]["window_10s"];
    assert_eq!(window["requests"], 2, "{window}");
    assert_eq!(window["errors"], 0, "{window}");
    let text = metrics(&proxy).await;
    for kind in ["connect", "timeout", "reset", "protocol"] {
        let series = format!(r#"cutover_upstream_errors_total{{color="blue",kind="{kind}"}}"#);
        assert_eq!(sample(&text, &series), 0.0, "{series}");
    }
}
