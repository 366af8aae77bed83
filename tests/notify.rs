//! The real `cutover run` process telling a service manager how it is doing: the test
//! plays systemd's side of `sd_notify(3)` with a datagram socket of its own.

mod support;

use support::process::{free_port, signal, wait_exit};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::net::UnixDatagram;

use support::TestBackend;

struct Running {
    child: Child,
    addr: SocketAddr,
    socket: PathBuf,
    log: PathBuf,
}

/// Starts cutover with `NOTIFY_SOCKET=notify` and the extra environment in `env`.
fn start(
    dir: &Path,
    blue: SocketAddr,
    green: SocketAddr,
    extra: &str,
    notify: &str,
    env: &[(&str, &str)],
) -> Running {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let text = support::config_text(dir, &[blue], &[green], extra)
        .replace("127.0.0.1:0", &addr.to_string());
    let config = dir.join("cutover.toml");
    std::fs::write(&config, text).expect("write config");
    let log = dir.join("cutover.log");
    let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CUTOVER_LOG", "info")
        .env("NOTIFY_SOCKET", notify)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start cutover");
    Running {
        child,
        addr,
        socket: dir.join("admin.sock"),
        log,
    }
}

/// The next datagram that contains `line`, within `within`; panics with what did
/// arrive (and the process's log) otherwise.
async fn expect(notify: &UnixDatagram, line: &str, within: Duration, log: &Path) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, notify.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.lines().any(|l| l == line) {
                    return message;
                }
                seen.push(message);
            }
            Ok(Err(e)) => panic!("recv: {e}"),
            Err(_) => panic!(
                "no {line:?} within {within:?}; got {seen:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_after_the_listener_serves_and_the_first_health_round_and_status_follows_switches()
 {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    // Green's first probe takes 0.8 s and fails (it wants a 204); the next is 30 s
    // away. Green still healthy at READY would mean READY did not wait for it.
    let health = "[pools.green.health]\npath = \"/slow?ms=800\"\nexpect_status = \"204\"\n\
                  interval = \"30s\"\ntimeout = \"5s\"\nfall = 3";
    let started = Instant::now();
    let notify_name = notify_path.display().to_string();
    let run = start(dir.path(), blue.addr, green.addr, health, &notify_name, &[]);

    let ready = expect(&notify, "READY=1", Duration::from_secs(10), &run.log).await;
    assert!(
        ready.contains("STATUS=live blue, generation 1"),
        "{ready:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "READY before green's first probe ended"
    );
    // Right after READY: the listener serves and green's first probe has been judged.
    let answer = support::get(run.addr, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "blue");
    let (_, status) = support::admin(&run.socket, Method::GET, "/status", "").await;
    assert_eq!(
        status["pools"]["green"]["backends"][0]["healthy"], false,
        "READY before the first health round: {status}"
    );

    let body = r#"{"to":"green","force":true}"#;
    let (code, change) = support::admin(&run.socket, Method::POST, "/switch", body).await;
    assert!(code.is_success(), "{change}");
    let line = "STATUS=live green, generation 2";
    expect(&notify, line, Duration::from_secs(5), &run.log).await;

    signal(&run.child, libc::SIGTERM);
    expect(&notify, "STOPPING=1", Duration::from_secs(5), &run.log).await;
    let exit = wait_exit(run.child).await;
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abstract_notify_socket_gets_ready_and_watchdog_pings_at_half_the_interval() {
    use std::os::linux::net::SocketAddrExt;
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("cutover-test-notify-{}", std::process::id());
    let address =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let std_socket =
        std::os::unix::net::UnixDatagram::bind_addr(&address).expect("bind abstract socket");
    std_socket.set_nonblocking(true).expect("non-blocking");
    let notify = UnixDatagram::from_std(std_socket).expect("tokio socket");
    let watchdog = [("WATCHDOG_USEC", "400000")];
    let run = start(
        dir.path(),
        blue.addr,
        green.addr,
        "",
        &format!("@{name}"),
        &watchdog,
    );

    let log = run.log.clone();
    expect(&notify, "READY=1", Duration::from_secs(10), &log).await;
    // 0.4 s watchdog: a ping every 0.2 s; three well within 5 s.
    for _ in 0..3 {
        expect(&notify, "WATCHDOG=1", Duration::from_secs(5), &log).await;
    }
    signal(&run.child, libc::SIGTERM);
    expect(&notify, "STOPPING=1", Duration::from_secs(5), &log).await;
    let exit = wait_exit(run.child).await;
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_announced_with_reloading_and_a_monotonic_time_then_ready_even_when_it_fails() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let notify_name = notify_path.display().to_string();
    let run = start(dir.path(), blue.addr, green.addr, "", &notify_name, &[]);
    expect(&notify, "READY=1", Duration::from_secs(10), &run.log).await;

    // A good reload through the admin API, then a bad file through SIGHUP: each is
    // RELOADING=1 with MONOTONIC_USEC first, READY=1 once it is over.
    let config = dir.path().join("cutover.toml");
    for bad in [false, true] {
        let before = monotonic_usec();
        if bad {
            std::fs::write(&config, "[listen\n").expect("write a bad config");
            signal(&run.child, libc::SIGHUP);
        } else {
            let (code, body) = support::admin(&run.socket, Method::POST, "/reload", "").await;
            assert!(code.is_success(), "{body}");
        }
        let reloading = expect(&notify, "RELOADING=1", Duration::from_secs(5), &run.log).await;
        let usec: u64 = reloading
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
            .parse()
            .expect("MONOTONIC_USEC is a number");
        assert!(
            usec >= before,
            "MONOTONIC_USEC {usec} is before the reload began ({before})"
        );
        expect(&notify, "READY=1", Duration::from_secs(5), &run.log).await;
    }
    // The bad file was refused and the process still serves.
    let (_, status) = support::admin(&run.socket, Method::GET, "/status", "").await;
    assert_eq!(status["last_reload"]["result"], "error", "{status}");
    assert_eq!(support::get(run.addr, "/").await.text(), "blue");

    signal(&run.child, libc::SIGTERM);
    let exit = wait_exit(run.child).await;
    assert!(exit.success(), "exit status {exit:?}");
}

/// `CLOCK_MONOTONIC` now, in microseconds, as systemd reads `MONOTONIC_USEC`.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    u64::try_from(now.tv_sec).expect("positive") * 1_000_000
        + u64::try_from(now.tv_nsec).expect("positive") / 1_000
}
