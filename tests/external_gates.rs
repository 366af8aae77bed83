//! Gates outside the process: a webhook that can veto a rollout, and a PromQL query
//! evaluated by a real Prometheus server scraping cutover's `/metrics`.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::process::free_port;
use support::rollouts::{Load, start_rollout, wait_rollout};
use support::{Proxy, TestBackend, backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_refuses_the_start_and_rolls_back_a_running_rollout() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let hook = TestBackend::start("hook").await;
    let load = Load::start(proxy.addr, 2);
    let body = format!(
        r#"{{"to":"green","steps":[{{"percent":10,"duration":"1s"}},50,100],"step_duration":"1h","gates":{{"min_requests":1}},"webhooks":["http://{}/check"]}}"#,
        hook.addr
    );

    // A veto before the first step: nothing starts, routing is untouched.
    hook.fail_every(1);
    let (status, answer) = proxy.admin(Method::POST, "/rollout", &body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = answer["error"].as_str().unwrap_or("");
    assert!(
        error.contains("not started") && error.contains("answered 500"),
        "{answer}"
    );
    let (status, _) = proxy.admin(Method::GET, "/rollout", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no rollout was recorded");
    assert!(proxy.status().await["canary"].is_null());
    let asked = hook.hits();
    assert!(asked >= 1, "the webhook was called");

    // Allowed at the start; the veto before step 2 rolls it back.
    hook.fail_every(0);
    start_rollout(&proxy, &body).await;
    assert_eq!(proxy.status().await["canary"]["weight"], 1000);
    hook.fail_every(1);
    let r = wait_rollout(&proxy, "the veto", Duration::from_secs(10), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(r["state"], "rolled_back", "{r}");
    assert_eq!(r["decided_by"], "webhook", "{r}");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(&format!("webhook http://{}/check answered 500", hook.addr)),
        "{reason}"
    );
    assert!(
        hook.hits() > asked + 1,
        "called before the start and step 2"
    );
    let status = proxy.status().await;
    assert_eq!(status["live"], "blue");
    assert!(status["canary"].is_null(), "{status}");
    let seen = load.stop();
    assert!(seen.bad.is_empty(), "{:?}", seen.bad);
    assert!(seen.green > 0, "green served during step 1");
}

/// A Prometheus server on loopback `port`, scraping `target` every second; killed
/// when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// `None` when the `prometheus` binary is not installed (CI installs it, and sets
    /// CUTOVER_REQUIRE_PROMTOOL so that a missing one fails there).
    async fn start(port: u16, target: SocketAddr) -> Option<Prometheus> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cutover\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var_os("CUTOVER_REQUIRE_PROMTOOL").is_some() {
                    panic!(
                        "prometheus is required here (CUTOVER_REQUIRE_PROMTOOL) but not installed"
                    );
                }
                eprintln!("prometheus not installed; skipped the query gate test (CI runs it)");
                return None;
            }
            Err(e) => panic!("spawn prometheus: {e}"),
        };
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        // Ready, and cutover scraped at least once.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = prometheus.query("up").await;
            if up.as_deref().is_some_and(|a| a.contains(r#""1"]"#)) {
                return Some(prometheus);
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not scrape cutover within 30 s: {up:?}\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The JSON of an instant query, or `None` while the server is not answering.
    async fn query(&self, expr: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let request = format!(
            "GET /api/v1/query?query={expr} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
            .await
            .ok()?
            .ok()?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        reply.starts_with("HTTP/1.1 200").then_some(reply)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rollout to `to` with one query gate: the canary's share of 5xx over the last 5 s.
fn query_rollout(to: &str) -> String {
    let query = r#"sum(rate(cutover_requests_total{color=\"$canary\",class=\"5xx\"}[5s])) / sum(rate(cutover_requests_total{color=\"$canary\"}[5s]))"#;
    format!(
        r#"{{"to":"{to}","steps":[{{"percent":50,"duration":"5s"}},{{"percent":100,"duration":"3s"}}],"gates":{{"min_requests":1,"queries":[{{"name":"canary 5xx share","query":"{query}","max":0.05}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_query_gate_passes_a_good_green_and_rolls_back_a_failing_blue() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    // The proxy must know Prometheus's address before Prometheus knows the proxy's.
    let port = free_port();
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[rollout]\nprometheus = \"http://127.0.0.1:{port}\"\n"
    );
    let proxy = Proxy::start(&[blue.addr], &[green.addr], &extra).await;
    let metrics = proxy.metrics.expect("the metrics listener");
    let load = Load::start(proxy.addr, 2);
    let Some(prometheus) = Prometheus::start(port, metrics).await else {
        return;
    };

    // A good green: the query reads 0 at the step's end, and the rollout promotes.
    start_rollout(&proxy, &query_rollout("green")).await;
    let r = wait_rollout(&proxy, "the promotion", Duration::from_secs(30), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(r["state"], "promoted", "{r}\n{}", prometheus.log());
    let gate = r["steps"][0]["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["gate"] == "query canary 5xx share"))
        .unwrap_or_else(|| panic!("the query in step 1's evidence: {r}"));
    assert_eq!(gate["passed"], true, "{r}");
    assert_eq!(gate["value"].as_f64(), Some(0.0), "{r}");
    assert_eq!(proxy.status().await["live"], "green");

    // A bad blue (every other answer a 500): the query breaches and it is rolled back.
    blue.fail_every(2);
    start_rollout(&proxy, &query_rollout("blue")).await;
    let r = wait_rollout(&proxy, "the rollback", Duration::from_secs(30), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(r["state"], "rolled_back", "{r}\n{}", prometheus.log());
    assert_eq!(r["decided_by"], "query", "{r}");
    assert_eq!(r["breach"]["gate"], "query canary 5xx share", "{r}");
    let value = r["breach"]["value"].as_f64().unwrap_or(0.0);
    assert!((0.3..=0.7).contains(&value), "about half failed: {r}");
    let status = proxy.status().await;
    assert_eq!(status["live"], "green");
    assert!(status["canary"].is_null(), "{status}");
    drop(load);
}
