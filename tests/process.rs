//! The real `cutover run` process: signals, the audit log, and `ctl` against it.

mod support;

use support::process::{free_port, signal};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{TestBackend, spawn_get};

struct Running {
    child: Child,
    addr: std::net::SocketAddr,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(
    blue: &[std::net::SocketAddr],
    green: &[std::net::SocketAddr],
    extra: &str,
) -> Running {
    start_limited(blue, green, extra, None).await
}

/// As [`start`], with the child's file descriptor limit set to `nofile` (soft and
/// hard) when given.
async fn start_limited(
    blue: &[std::net::SocketAddr],
    green: &[std::net::SocketAddr],
    extra: &str,
    nofile: Option<u64>,
) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let text = support::config_text(dir.path(), blue, green, extra)
        .replace("127.0.0.1:0", &addr.to_string());
    let config = dir.path().join("cutover.toml");
    std::fs::write(&config, text).expect("write config");
    let log = dir.path().join("cutover.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("CUTOVER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, n, n));
        }
    }
    let child = command.spawn().expect("start cutover");
    let socket = dir.path().join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() || !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "cutover did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        child,
        addr,
        socket,
        log,
        _dir: dir,
    }
}

fn ctl(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run ctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_slow_requests_lets_them_complete_refuses_new_connections_and_exits_0() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let mut proxy = start(&[blue.addr], &[green.addr], "").await;

    let slow: Vec<_> = (0..3)
        .map(|_| spawn_get(proxy.addr, "/slow?ms=1500"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, status) = support::admin(&proxy.socket, http::Method::GET, "/status", "").await;
        if status["pools"]["blue"]["in_flight"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slow requests never showed up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    signal(&proxy.child, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    for s in slow {
        let answer = s.await.expect("slow request");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "blue");
    }
    let exit = tokio::task::spawn_blocking(move || proxy.child.wait())
        .await
        .expect("join")
        .expect("wait for cutover");
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_switch_past_the_gate_is_audited_as_forced_and_dry_run_explains_the_refusal() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    green.set_healthy(false);
    let health =
        "[pools.green.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 1\nfall = 1";
    let mut proxy = start(&[blue.addr], &[green.addr], health).await;
    let socket = proxy.socket.clone();
    let green_addr = green.addr.to_string();

    let out = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let out = ctl(&socket, &["switch", "green", "--dry-run"]);
                if String::from_utf8_lossy(&out.stdout).contains("status 500")
                    || Instant::now() > deadline
                {
                    return out;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .await
    .expect("ctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a dry run of a refused switch exits non-zero"
    );
    assert!(
        stdout.contains("REFUSED") && stdout.contains(&green_addr) && stdout.contains("status 500"),
        "{stdout}"
    );

    let (refused, forced) = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || {
            (
                ctl(&socket, &["switch", "green"]),
                ctl(&socket, &["switch", "green", "--force"]),
            )
        }
    })
    .await
    .expect("ctl");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&green_addr));
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );

    signal(&proxy.child, libc::SIGTERM);
    tokio::task::spawn_blocking(move || proxy.child.wait())
        .await
        .expect("join")
        .expect("wait");
    let log = std::fs::read_to_string(&proxy.log).expect("log");
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cutover::audit"))
        .collect();
    assert_eq!(audit.len(), 1, "one audit line per change: {log}");
    assert!(
        audit[0].contains("forced=true")
            && audit[0].contains("to=green")
            && audit[0].contains("uid="),
        "{}",
        audit[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_outage_under_load_logs_a_bounded_number_of_lines() {
    // Blue's only backend is down: every request fails (502), 600 of them (at most
    // ten seconds on a slow machine).
    let dead = support::closed_port().await;
    let green = TestBackend::start("green").await;
    let mut proxy = start(&[dead], &[green.addr], "").await;
    let started = Instant::now();
    let mut failed = 0;
    while failed < 600 && started.elapsed() < Duration::from_secs(10) {
        let batch: Vec<_> = (0..32).map(|_| spawn_get(proxy.addr, "/")).collect();
        for request in batch {
            let answer = request.await.expect("request task");
            assert_ne!(answer.status, StatusCode::OK);
            failed += 1;
        }
    }
    signal(&proxy.child, libc::SIGTERM);
    let _ = proxy.child.wait();
    let log = std::fs::read_to_string(&proxy.log).expect("log");
    let lines = log.lines().count();
    let errors = log.lines().filter(|l| l.contains("proxy error")).count();
    assert!(failed >= 600, "only {failed} requests in ten seconds");
    // A few lines a second per kind of failure (two kinds here at most), not one per
    // request.
    let seconds = started.elapsed().as_secs() as usize + 2;
    assert!(
        errors <= 10 * seconds,
        "{errors} error lines for {failed} failures in {seconds} s:\n{log}"
    );
    assert!(lines <= errors + 40, "{lines} lines for {failed} failures");
    assert!(log.contains("suppressed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_clients_under_a_low_fd_limit_leaves_health_checks_and_admin_working() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let health = "[pools.blue.health]\npath = \"/healthz\"\ninterval = \"100ms\"\n\
                  [pools.green.health]\npath = \"/healthz\"\ninterval = \"100ms\"";
    // 256 descriptors: the default cap is (256 - 128) / 3 = 42 client connections.
    let mut proxy = start_limited(&[blue.addr], &[green.addr], health, Some(256)).await;
    let mut flood = Vec::new();
    for i in 0..400 {
        let Ok(mut s) = tokio::net::TcpStream::connect(proxy.addr).await else {
            continue;
        };
        if i % 2 == 0 {
            // An h2c client that sends its preface and nothing else.
            use tokio::io::AsyncWriteExt;
            let _ = s
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await;
        }
        flood.push(s);
    }
    // Several health rounds pass while the flood is held.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let out = ctl(&proxy.socket, &["--json", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    for color in ["blue", "green"] {
        for backend in status["pools"][color]["backends"]
            .as_array()
            .expect("backends")
        {
            assert_eq!(backend["healthy"], true, "{color}: {backend}");
        }
    }
    // Once the flood is gone, requests are served.
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(support::get(proxy.addr, "/").await.status, StatusCode::OK);
    signal(&proxy.child, libc::SIGTERM);
    let _ = proxy.child.wait();
    let log = std::fs::read_to_string(&proxy.log).expect("log");
    assert!(log.contains("connection limit reached"), "{log}");
    assert!(!log.contains("health: down"), "{log}");
}

/// Waits until `addr` accepts and `socket` exists; the log on failure.
async fn wait_started(addr: std::net::SocketAddr, socket: &std::path::Path, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() || !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "cutover did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_listen_and_socket_move_the_demo_and_override_a_config_across_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("demo.log");

    // The demo, on a port and socket of our choosing.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let socket = dir.path().join("demo.sock");
    let demo = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--listen", &addr.to_string(), "--socket"])
        .arg(&socket)
        .env("CUTOVER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the demo");
    wait_started(addr, &socket, &log).await;
    assert_eq!(support::get(addr, "/").await.text().trim(), "blue");
    assert!(ctl(&socket, &["switch", "green"]).status.success());
    assert_eq!(support::get(addr, "/").await.text().trim(), "green");
    signal(&demo, libc::SIGTERM);
    let out = demo.wait_with_output().expect("demo exits");
    let banner = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(banner.contains(&format!("http://{addr}/")), "{banner}");
    assert!(banner.contains(&socket.display().to_string()), "{banner}");

    // A config whose listener and socket the command line replaces; a reload keeps them.
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        support::config_text(dir.path(), &[blue.addr], &[green.addr], ""),
    )
    .expect("write config");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let socket = dir.path().join("other.sock");
    let mut run = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", &addr.to_string(), "--socket"])
        .arg(&socket)
        .env("CUTOVER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start cutover");
    wait_started(addr, &socket, &log).await;
    assert!(
        !dir.path().join("admin.sock").exists(),
        "the config's socket"
    );
    let out = ctl(&socket, &["--json", "reload"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(
        !report.contains("listen") && !report.contains("admin.socket"),
        "{report}"
    );
    assert_eq!(support::get(addr, "/").await.text(), "blue");
    signal(&run, libc::SIGTERM);
    let _ = run.wait();

    // --listen over a config with two listeners is refused, naming why.
    let two = support::config_text(
        dir.path(),
        &[blue.addr],
        &[green.addr],
        "[[listen.extra]]\naddress = \"127.0.0.1:0\"\n",
    );
    std::fs::write(&config, two).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("--listen") && err.contains("has 2"), "{err}");
}
