//! Config reload: a real proxy started from a config file in a temp dir, its watcher
//! running; the file changed in place and by rename, `POST /reload`, `cutover ctl
//! reload` and SIGHUP (the real binary).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::*;

/// Polls `/status` until `last_reload` satisfies `cond`, for at most `within`.
async fn wait_reload(
    proxy: &Proxy,
    within: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = proxy.status().await;
        if cond(&status["last_reload"]) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no such reload within {within:?}: {}",
            status["last_reload"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn addresses(status: &serde_json::Value, color: &str) -> Vec<String> {
    status["pools"][color]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["address"].as_str().expect("address").to_owned())
        .collect()
}

fn backend_of(answer: &Answer) -> String {
    answer.headers["x-backend"]
        .to_str()
        .expect("x-backend")
        .to_owned()
}

async fn reload(proxy: &Proxy) -> (StatusCode, serde_json::Value) {
    proxy.admin(Method::POST, "/reload", "").await
}

async fn reloads_counted(proxy: &Proxy, result: &str) -> f64 {
    let (_, text) = admin_text(&proxy.socket, "/metrics").await;
    sample(
        &text,
        &format!("cutover_config_reloads_total{{result=\"{result}\"}}"),
    )
}

const GREEN_HEALTH: &str =
    "\n[pools.green.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 2\nfall = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_written_in_place_keeps_the_running_config_and_a_fixed_one_saved_by_rename_applies_within_two_seconds()
 {
    let (b1, b2, green) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        backend("green").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &[b1.addr], &[green], "");
    let proxy = Proxy::from_file(dir, &text).await;
    let file = proxy.config_file();
    assert!(proxy.status().await["last_reload"].is_null());

    // Traffic keeps flowing while the bad file is written and refused.
    let addr = proxy.addr;
    let traffic = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..40 {
            let answer = get(addr, "/").await;
            seen.push((answer.status, backend_of(&answer)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    });
    let bad = text.replace(&b1.addr.to_string(), "not-an-address");
    write_in_place(&file, &bad);
    let status = wait_reload(&proxy, Duration::from_secs(5), |r| r["result"] == "error").await;
    let reload = &status["last_reload"];
    assert_eq!(reload["trigger"], "file");
    let message = reload["message"].as_str().expect("message");
    assert!(message.contains("pools.blue.backends[0]"), "{message}");
    assert!(
        reload["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{reload}"
    );
    assert_eq!(addresses(&status, "blue"), [b1.addr.to_string()]);
    assert!(reloads_counted(&proxy, "error").await >= 1.0);
    for (code, backend) in traffic.await.expect("traffic") {
        assert_eq!((code, backend.as_str()), (StatusCode::OK, "b1"));
    }
    assert_eq!(backend_of(&get(proxy.addr, "/").await), "b1");

    // The fixed file, with a second blue backend, saved as editors do.
    let fixed = config_text(proxy.dir.path(), &[b1.addr, b2.addr], &[green], "");
    write_by_rename(&file, &fixed);
    let status = wait_reload(&proxy, Duration::from_secs(2), |r| r["result"] == "ok").await;
    assert_eq!(
        addresses(&status, "blue"),
        [b1.addr.to_string(), b2.addr.to_string()]
    );
    assert_eq!(status["last_reload"]["trigger"], "file");
    assert!(reloads_counted(&proxy, "ok").await >= 1.0);
    let mut served = std::collections::HashSet::new();
    for _ in 0..4 {
        served.insert(backend_of(&get(proxy.addr, "/").await));
    }
    assert!(served.contains("b2"), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_answers_the_result_and_a_bad_file_gets_422_naming_the_key() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &[blue], &[green], "");
    let proxy = Proxy::from_file(dir, &text).await;

    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "ok");
    assert_eq!(body["trigger"], "admin");
    assert_eq!(body["message"], "applied");

    let bad = text.replace("[routing]", "[routing]\ncolor_header = \"yes\"");
    write_in_place(&proxy.config_file(), &bad);
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("color_header"), "{error}");
    let status = proxy.status().await;
    assert_eq!(status["last_reload"]["result"], "error");
    assert_eq!(get(proxy.addr, "/").await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_off_the_control_list_gets_403_for_a_reload() {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().expect("temp file");
    let other = probe.as_file().metadata().expect("metadata").uid() + 4242;
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let lists = format!("[admin.control]\nuids = [{other}]");
    let text = config_text(dir.path(), &[blue], &[green], &lists);
    let proxy = Proxy::from_file(dir, &text).await;
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(proxy.status().await["last_reload"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_demo_has_no_file_and_a_reload_says_so() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let proxy = Proxy::start(&[blue], &[green], "").await;
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("no config file"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_added_to_green_gets_traffic_only_after_passing_its_health_checks() {
    let (blue, g1, g2) = (
        backend("blue").await,
        TestBackend::start("g1").await,
        TestBackend::start("g2").await,
    );
    g2.set_healthy(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text_with(dir.path(), &[blue], &[g1.addr], GREEN_HEALTH, "");
    let proxy = Proxy::from_file(dir, &text).await;
    proxy
        .wait_until("g1 verified by its checks", |s| {
            s["pools"]["green"]["backends"][0]["problem"].is_null()
        })
        .await;
    proxy.switch("green").await;

    let added = config_text_with(
        proxy.dir.path(),
        &[blue],
        &[g1.addr, g2.addr],
        GREEN_HEALTH,
        "",
    );
    write_by_rename(&proxy.config_file(), &added);
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["pools"][0]["color"], "green");
    assert_eq!(body["pools"][0]["added"][0], g2.addr.to_string());
    // Unhealthy: several check rounds pass, and it gets nothing.
    for _ in 0..10 {
        assert_eq!(backend_of(&get(proxy.addr, "/").await), "g1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(g2.hits(), 0);
    let status = proxy.status().await;
    assert_eq!(status["pools"]["green"]["backends"][1]["healthy"], false);

    g2.set_healthy(true);
    proxy
        .wait_until("g2 healthy", |s| s["pools"]["green"]["healthy"] == 2)
        .await;
    let mut served = std::collections::HashSet::new();
    for _ in 0..4 {
        served.insert(backend_of(&get(proxy.addr, "/").await));
    }
    assert!(served.contains("g2"), "{served:?}");
    assert_eq!(proxy.status().await["live"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_blue_backend_finishes_its_in_flight_request_then_gets_no_new_ones() {
    let (b1, b2, green) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        backend("green").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &[b1.addr, b2.addr], &[green], "");
    let proxy = Proxy::from_file(dir, &text).await;

    let slow = spawn_get(proxy.addr, "/slow?ms=1500");
    let status = proxy
        .wait_until("the slow request in flight", |s| {
            s["pools"]["blue"]["in_flight"] == 1
        })
        .await;
    let busy = status["pools"]["blue"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .position(|b| b["in_flight"] == 1)
        .expect("a busy backend");
    let (removed, kept) = if busy == 0 { (&b1, &b2) } else { (&b2, &b1) };

    let text = config_text(proxy.dir.path(), &[kept.addr], &[green], "");
    write_by_rename(&proxy.config_file(), &text);
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["pools"][0]["removed"][0], removed.addr.to_string());

    let answer = slow.await.expect("slow request");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(backend_of(&answer), backend_of_name(removed, &b1));
    let hits = removed.hits();
    for _ in 0..6 {
        let answer = get(proxy.addr, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_ne!(backend_of(&answer), backend_of_name(removed, &b1));
    }
    assert_eq!(
        removed.hits(),
        hits,
        "the removed backend got a new request"
    );
    // Its pooled connections are closed once its last request is done.
    eventually("the removed backend's connections closed", || {
        removed.open_conns() == 0
    })
    .await;
}

fn backend_of_name(b: &TestBackend, b1: &TestBackend) -> &'static str {
    if b.addr == b1.addr { "b1" } else { "b2" }
}

/// A GET with a field of `size` bytes on a fresh connection; the status line.
async fn get_with_field(addr: SocketAddr, size: usize) -> String {
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(size)
    );
    let reply = raw_exchange(addr, raw.as_bytes()).await;
    reply.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_change_applies_without_a_restart_and_a_listen_change_is_reported_as_needing_one() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &[blue], &[green], "");
    let proxy = Proxy::from_file(dir, &text).await;
    assert!(
        get_with_field(proxy.addr, 4000)
            .await
            .starts_with("HTTP/1.1 200")
    );

    let changed = config_text(
        proxy.dir.path(),
        &[blue],
        &[green],
        "[limits]\nmax_request_head = 2048",
    )
    .replace("127.0.0.1:0", "127.0.0.1:1");
    write_by_rename(&proxy.config_file(), &changed);
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body["restart_needed"],
        serde_json::json!(["listen.address"])
    );
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("needs restart: listen.address"),
        "{message}"
    );

    // The proxy still listens where it did, and the new limit holds there.
    let line = get_with_field(proxy.addr, 4000).await;
    assert!(line.starts_with("HTTP/1.1 431"), "{line}");
    assert!(
        get_with_field(proxy.addr, 100)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let status = proxy.status().await;
    let last = &status["last_reload"]["message"];
    assert!(
        last.as_str().is_some_and(|m| m.contains("listen.address")),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_reset_the_live_colour() {
    let (blue, green) = (backend("blue").await, backend("green").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &[blue], &[green], "");
    assert!(text.contains("live = \"blue\""));
    let proxy = Proxy::from_file(dir, &text).await;
    let switched = proxy.switch("green").await;
    let generation = switched["generation"].clone();
    write_by_rename(&proxy.config_file(), &text);
    let (code, body) = reload(&proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let status = proxy.status().await;
    assert_eq!(status["live"], "green");
    assert_eq!(status["previous"], "blue");
    assert_eq!(status["generation"], generation);
    assert_eq!(get(proxy.addr, "/").await.text(), "green");
}

/// `cutover ctl --socket SOCKET reload`, the real binary, bounded in time.
async fn ctl_reload(socket: &Path) -> std::process::Output {
    ctl(socket, "reload").await
}

/// `cutover ctl --socket SOCKET COMMAND`, the real binary, bounded in time.
async fn ctl(socket: &Path, command: &'static str) -> std::process::Output {
    let socket = socket.to_owned();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .arg(command)
            .output()
    });
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("ctl finishes")
        .expect("ctl task")
        .expect("ctl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_ctl_reload_reloads_and_reports_and_fails_on_a_bad_file() {
    let (b1, b2, green) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        backend("green").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &[b1.addr], &[green], "");
    let proxy = Proxy::from_file(dir, &text).await;

    let text = config_text(proxy.dir.path(), &[b1.addr, b2.addr], &[green], "");
    write_by_rename(&proxy.config_file(), &text);
    let out = ctl_reload(&proxy.socket).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reload: applied"), "{stdout}");
    assert!(addresses(&proxy.status().await, "blue").contains(&b2.addr.to_string()));

    write_in_place(&proxy.config_file(), "[listen]\naddress = 7\n");
    let out = ctl_reload(&proxy.socket).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused reload exits non-zero");
    assert!(
        stderr.contains("422") && stderr.contains("address"),
        "{stderr}"
    );
    assert!(addresses(&proxy.status().await, "blue").contains(&b2.addr.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let (b1, b2, green) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        backend("green").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let addr: SocketAddr = ([127, 0, 0, 1], support::process::free_port()).into();
    let text = |blue: &[SocketAddr]| {
        config_text(dir.path(), blue, &[green], "").replace("127.0.0.1:0", &addr.to_string())
    };
    // The file the process reads is a symlink into another directory, which its
    // watcher does not see: only the signal can make it read the edit.
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    std::fs::write(real.join("cutover.toml"), text(&[b1.addr])).expect("write config");
    let config = dir.path().join("cutover.toml");
    std::os::unix::fs::symlink(real.join("cutover.toml"), &config).expect("symlink");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start cutover");
    let socket = dir.path().join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() || !socket.exists() {
        assert!(Instant::now() < deadline, "cutover did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    write_in_place(&real.join("cutover.toml"), &text(&[b1.addr, b2.addr]));
    support::process::signal(&child, libc::SIGHUP);
    // Until the signal's reload shows: its result and both blue backends.
    let want = [b1.addr.to_string(), b2.addr.to_string()];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, status) = admin(&socket, Method::GET, "/status", "").await;
        let reloaded =
            status["last_reload"]["trigger"] == "signal" && status["last_reload"]["result"] == "ok";
        if reloaded && addresses(&status, "blue") == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reload of the edited file after SIGHUP: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still running: SIGHUP no longer ends the process.
    assert!(child.try_wait().expect("try_wait").is_none());
    assert_eq!(get(addr, "/").await.status, StatusCode::OK);
    let _ = child.kill();
    let _ = child.wait();
}
