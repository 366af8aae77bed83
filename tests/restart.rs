//! A restart that refuses no connection: the listening socket belongs to the test (as
//! it would to systemd's `cutover.socket`), is passed to each `cutover run` as fd 3
//! with `LISTEN_FDS=1`, and outlives both processes, so connections made while the
//! first drains and the second starts wait in the kernel's queue.

mod support;

use support::process::{signal, wait_exit};

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::TestBackend;

/// Moves the socket on stdin to fd 3, then execs cutover with `LISTEN_PID` set to the
/// shell's pid, which `exec` keeps. The only way to place a descriptor at 3 without
/// unsafe code in the test: std passes stdin, and the shell duplicates it.
const ACTIVATE: &str = r#"exec 3<&0 </dev/null; LISTEN_PID=$$ exec "$0" run --config "$1""#;

/// Starts cutover on a copy of `listener` with the config at `config`, logging to `log`.
fn start(listener: &std::net::TcpListener, config: &Path, log: &Path) -> Child {
    let fd: OwnedFd = listener.try_clone().expect("dup listener").into();
    Command::new("sh")
        .arg("-c")
        .arg(ACTIVATE)
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .arg(config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env("CUTOVER_LOG", "info")
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start cutover")
}

/// Waits until the process's admin socket answers `GET /status`.
async fn wait_serving(socket: &Path, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if socket.exists() {
            let (code, _) = support::admin(socket, http::Method::GET, "/status", "").await;
            if code.is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "cutover did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request on a new connection; `Err` says what went wrong.
async fn one_request(addr: SocketAddr, path: &str) -> Result<(), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let head =
            format!("GET {path} HTTP/1.1\r\nHost: restart.test\r\nConnection: close\r\n\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        if answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n\r\nblue") {
            Ok(())
        } else {
            Err(format!("answer: {answer:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5s".to_owned()))
}

/// Counts of requests that succeeded and the reasons of those that did not.
#[derive(Default)]
struct Tally {
    /// Requests answered 200 with the live colour's body.
    ok: AtomicUsize,
    /// Why each failed request failed.
    failures: std::sync::Mutex<Vec<String>>,
}

/// Client tasks that each send one request per new connection until `stop` is set.
fn spawn_clients(
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    // Slow requests keep the first process draining while the second one starts.
    ["/", "/", "/", "/slow?ms=300", "/slow?ms=300"]
        .into_iter()
        .map(|path| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match one_request(addr, path).await {
                        Ok(()) => tally.ok.fetch_add(1, Ordering::SeqCst),
                        Err(why) => {
                            tally.failures.lock().expect("tally").push(why);
                            0
                        }
                    };
                }
            })
        })
        .collect()
}

/// Writes a config for `addr` whose admin socket is `name` in `dir`; returns the config
/// path and the socket path.
fn write_config(
    dir: &Path,
    blue: SocketAddr,
    green: SocketAddr,
    addr: SocketAddr,
    name: &str,
) -> (PathBuf, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let text = support::config_text(dir, &[blue], &[green], "")
        .replace("127.0.0.1:0", &addr.to_string())
        .replace(
            &dir.join("admin.sock").display().to_string(),
            &socket.display().to_string(),
        );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).expect("write config");
    (config, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_passed_socket_refuses_and_fails_no_request() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The test's own copy keeps the socket, and its queue, alive the whole time.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Two processes overlap while the first drains: each needs its own admin socket.
    let (config_a, socket_a) = write_config(dir.path(), blue.addr, green.addr, addr, "first");
    let (config_b, socket_b) = write_config(dir.path(), blue.addr, green.addr, addr, "second");
    let (log_a, log_b) = (dir.path().join("first.log"), dir.path().join("second.log"));

    let first = start(&listener, &config_a, &log_a);
    wait_serving(&socket_a, &log_a).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = spawn_clients(addr, &stop, &tally);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tally.ok.load(Ordering::SeqCst);

    signal(&first, libc::SIGTERM);
    let second = start(&listener, &config_b, &log_b);
    wait_serving(&socket_b, &log_b).await;
    let first_exit = wait_exit(first).await;
    let during = tally.ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("clients stop")
            .expect("client task");
    }

    let ok = tally.ok.load(Ordering::SeqCst);
    let failures = tally.failures.lock().expect("tally").clone();
    println!(
        "restart: {ok} requests answered ({before} before SIGTERM, {during} when the first process had exited), {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the restart, e.g. {:?}\nfirst: {}\nsecond: {}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)],
        std::fs::read_to_string(&log_a).unwrap_or_default(),
        std::fs::read_to_string(&log_b).unwrap_or_default(),
    );
    assert!(ok > 300, "only {ok} requests were sent");
    assert!(
        ok > during && during > before,
        "requests flowed before, during and after: {before} {during} {ok}"
    );
    assert!(first_exit.success(), "first process: {first_exit:?}");
    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(log.contains("serving a passed socket"), "{log}");

    signal(&second, libc::SIGTERM);
    let second_exit = wait_exit(second).await;
    assert!(second_exit.success(), "second process: {second_exit:?}");
}
