//! Staged rollouts from the command line: `cutover ctl canary|rollout|history|report`
//! and `examples/deploy.sh`, run as real processes against a real proxy.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::rollouts::{Load, wait_rollout};
use support::{Proxy, TestBackend};

/// Runs `cmd` to its end, killing it (and failing the test) after `within`.
fn run_bounded(mut cmd: Command, within: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().expect("stdout")).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().expect("stderr")).into_owned();
            panic!("{cmd:?} still running after {within:?}\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// `cutover ctl --socket SOCKET ARGS…`, bounded by `within`, off the runtime.
async fn ctl_within(socket: &Path, args: &[&str], within: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("CUTOVER_LOG", "error");
    tokio::task::spawn_blocking(move || run_bounded(cmd, within))
        .await
        .expect("ctl")
}

async fn ctl(socket: &Path, args: &[&str]) -> Output {
    ctl_within(socket, args, Duration::from_secs(10)).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Both outputs, for assertion messages.
fn both(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

async fn proxy_with(blue: &TestBackend, green: &TestBackend) -> Proxy {
    Proxy::start(&[blue.addr], &[green.addr], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_rollout_wait_exits_zero_when_a_good_green_is_promoted() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = proxy_with(&blue, &green).await;
    let _load = Load::start(proxy.addr, 2);
    let socket = proxy.socket.clone();
    // The first step is long enough for one gates line (every 3 s).
    let wait = tokio::spawn(async move {
        ctl_within(
            &socket,
            &[
                "rollout",
                "green",
                "--steps",
                "50:4500ms,100",
                "--step",
                "1s",
                "--max-error-rate",
                "1%",
                "--max-p99",
                "2s",
                "--min-requests",
                "5",
                "--wait",
            ],
            Duration::from_secs(30),
        )
        .await
    });
    // Meanwhile `ctl status` shows the rollout in one line.
    wait_rollout(&proxy, "the start", Duration::from_secs(10), |r| {
        r["state"] == "running"
    })
    .await;
    let status = stdout(&ctl(&proxy.socket, &["status"]).await);
    assert!(
        status.contains("canary: green 50%")
            && status.lines().any(|l| l
                .starts_with("rollout: to green, step 1/2 at 50%, running, ")
                && l.ends_with(" left")),
        "{status}"
    );

    let out = wait.await.expect("ctl rollout --wait");
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = stdout(&out);
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rollout to green: step 1/2 at 50%")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("rollout to green: step 2/2 at 100%")),
        "{text}"
    );
    // The gates line: weight, time left, the canary's numbers against each gate.
    assert!(
        lines.iter().any(|l| l.starts_with("  50% · ")
            && l.contains(" left · canary ")
            && l.contains("max_error_rate 0.00% ≤ 1.00% ok")
            && l.contains("max_p99_ms ")),
        "{text}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("promoted, green is live")),
        "{text}"
    );
    assert_eq!(proxy.status().await["live"], "green");

    let status = stdout(&ctl(&proxy.socket, &["status"]).await);
    assert!(
        status.contains("rollout: to green, promoted at step 2/2") && !status.contains("canary:"),
        "{status}"
    );
    let history = ctl(&proxy.socket, &["history"]).await;
    assert!(history.status.success(), "{}", both(&history));
    let history = stdout(&history);
    assert!(
        history.starts_with("TIME") && history.contains("rollout.promote"),
        "{history}"
    );
    // --json passes the server's answer through.
    let out = ctl(&proxy.socket, &["rollout", "status", "--json"]).await;
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(record["state"], "promoted", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_rollout_wait_exits_two_when_green_fails() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    green.fail_every(5);
    let proxy = proxy_with(&blue, &green).await;
    let _load = Load::start(proxy.addr, 2);
    let out = ctl_within(
        &proxy.socket,
        &[
            "rollout",
            "green",
            "--steps",
            "50,100",
            "--step",
            "5s",
            "--max-error-rate",
            "1%",
            "--min-requests",
            "10",
            "--wait",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(
        stderr(&out).contains("rolled_back at step 1/2 at 50%, blue is live")
            && stderr(&out).contains("max_error_rate"),
        "{}",
        both(&out)
    );
    let status = proxy.status().await;
    assert_eq!(status["live"], "blue");
    assert!(status["canary"].is_null(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_report_for_a_halted_rollout_names_the_breaching_gate_value_and_threshold() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    green.fail_every(5);
    let proxy = proxy_with(&blue, &green).await;

    let out = ctl(&proxy.socket, &["report"]).await;
    assert!(!out.status.success(), "a report before any rollout");
    assert!(
        stderr(&out).contains("no rollout has run yet"),
        "{}",
        both(&out)
    );

    let _load = Load::start(proxy.addr, 2);
    let out = ctl(
        &proxy.socket,
        &[
            "rollout",
            "green",
            "--steps",
            "50,100",
            "--step",
            "5s",
            "--max-error-rate",
            "0.5%",
            "--min-requests",
            "10",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        stdout(&out).starts_with("rollout blue → green: running"),
        "{}",
        both(&out)
    );
    let r = wait_rollout(&proxy, "the rollback", Duration::from_secs(10), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(r["state"], "rolled_back", "{r}");

    let out = ctl(&proxy.socket, &["report"]).await;
    assert!(out.status.success(), "{}", both(&out));
    let report = stdout(&out);
    let value = r["breach"]["value"].as_f64().expect("a measured value");
    assert!(value > 0.005, "{r}");
    let line = report
        .lines()
        .find(|l| l.contains("Breaching gate"))
        .unwrap_or_else(|| panic!("no breaching gate in:\n{report}"));
    assert!(
        line.contains("max_error_rate")
            && line.contains(&cutover::rollout::round(value))
            && line.contains("threshold 0.005000"),
        "{line}"
    );
    // `ctl rollout status` shows the same breach, readable.
    let status = stdout(&ctl(&proxy.socket, &["rollout", "status"]).await);
    println!("{status}");
    assert!(
        status.contains("breach: max_error_rate ") && status.contains("≤ 0.50% BREACH"),
        "{status}"
    );
    let out = ctl(&proxy.socket, &["report", "--json"]).await;
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(record["breach"]["gate"], "max_error_rate", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_rollout_with_a_bad_flag_value_exits_one_naming_it_and_starts_nothing() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = proxy_with(&blue, &green).await;
    let cases: [(&[&str], &str); 6] = [
        (
            &["--steps", "50,100", "--max-error-rate", "abc"],
            "--max-error-rate",
        ),
        (
            &["--steps", "50,100", "--max-error-rate", "150%"],
            "not a rate",
        ),
        (&["--steps", "50,10"], "does not go up"),
        (&["--steps", "50:soon,100"], "not a duration"),
        (&["--steps", "50,100", "--max-p99", "fast"], "--max-p99"),
        (
            &["--steps", "50,100", "--on-breach", "panic"],
            "--on-breach",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["rollout", "green"];
        all.extend_from_slice(args);
        let out = ctl(&proxy.socket, &all).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", both(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", both(&out));
        let (code, body) = proxy.admin(Method::GET, "/rollout", "").await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{args:?} started one: {body}");
    }
    // A plan the server refuses is an error too, with its message.
    let out = ctl(&proxy.socket, &["rollout", "blue", "--steps", "50,100"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(stderr(&out).contains("already live"), "{}", both(&out));
    let out = ctl(
        &proxy.socket,
        &["rollout", "green", "--steps", "50,100", "--dry-run"],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        stdout(&out).contains("dry run: rollout blue → green would start"),
        "{}",
        both(&out)
    );
    let (code, _) = proxy.admin(Method::GET, "/rollout", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a dry run started one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_rollout_pause_resume_and_abort_act_on_the_running_rollout() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = proxy_with(&blue, &green).await;
    let out = ctl(
        &proxy.socket,
        &["rollout", "start", "green", "--steps", "10:1h,100"],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    let out = ctl(&proxy.socket, &["rollout", "pause"]).await;
    assert!(
        stdout(&out).starts_with("rollout to green: paused at step 1/2 at 10%"),
        "{}",
        both(&out)
    );
    let status = stdout(&ctl(&proxy.socket, &["rollout", "status"]).await);
    assert!(
        status.starts_with("rollout blue → green: paused")
            && status.contains("plan: 10% for 1h, 100% for"),
        "{status}"
    );
    let out = ctl(&proxy.socket, &["rollout", "resume"]).await;
    assert!(
        stdout(&out).contains("running at step 1/2"),
        "{}",
        both(&out)
    );
    let out = ctl(&proxy.socket, &["rollout", "abort"]).await;
    assert!(
        stdout(&out).contains("aborted at step 1/2"),
        "{}",
        both(&out)
    );
    let out = ctl(&proxy.socket, &["rollout", "resume"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert_eq!(proxy.status().await["live"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_canary_sets_and_clears_the_split_and_status_shows_it() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let proxy = proxy_with(&blue, &green).await;
    let out = ctl(&proxy.socket, &["canary", "green", "12.5%"]).await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        stdout(&out).starts_with("canary: green 12.5%"),
        "{}",
        both(&out)
    );
    assert_eq!(proxy.status().await["canary"]["weight"], 1250);
    let status = stdout(&ctl(&proxy.socket, &["status"]).await);
    assert!(
        status.lines().any(|l| l == "canary: green 12.5%"),
        "{status}"
    );

    let out = ctl(&proxy.socket, &["canary", "green", "5", "--dry-run"]).await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains("would be accepted"), "{}", both(&out));
    assert_eq!(proxy.status().await["canary"]["weight"], 1250, "a dry run");

    let out = ctl(&proxy.socket, &["canary", "green", "250"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));

    let out = ctl(&proxy.socket, &["canary", "green", "0"]).await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).starts_with("canary cleared"), "{}", both(&out));
    assert!(proxy.status().await["canary"].is_null());
    let status = stdout(&ctl(&proxy.socket, &["status"]).await);
    assert!(!status.contains("canary:"), "{status}");
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `bash examples/deploy.sh` against `socket`, short steps.
async fn deploy(socket: PathBuf) -> Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/deploy.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(["--socket", &socket.display().to_string()])
        .env("DEPLOY_STEPS", "50,100")
        .env("DEPLOY_STEP", "1s")
        .env("DEPLOY_MAX_ERROR_RATE", "1%")
        .env("DEPLOY_MIN_REQUESTS", "10")
        .env("DEPLOY_HEALTH_TIMEOUT", "10")
        .env("DEPLOY_POLL", "0.2");
    tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(30)))
        .await
        .expect("deploy.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_script_exits_zero_against_a_good_green_and_two_against_a_bad_one() {
    if !have("curl") || !have("jq") {
        println!("skipped: deploy.sh needs curl and jq (CI installs them)");
        return;
    }
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let good = proxy_with(&blue, &green).await;
    let _load = Load::start(good.addr, 2);
    let out = deploy(good.socket.clone()).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = stdout(&out);
    for expected in [
        "green is healthy",
        "dry run ok: blue → green",
        "step 1/2 at 50%: running",
        "step 2/2 at 100%: running",
        "green is live",
    ] {
        assert!(
            text.contains(expected),
            "no {expected:?} in:\n{}",
            both(&out)
        );
    }
    assert_eq!(good.status().await["live"], "green");

    let blue = TestBackend::start("blue").await;
    let bad_green = TestBackend::start("green").await;
    bad_green.fail_every(5);
    let bad = proxy_with(&blue, &bad_green).await;
    let _load = Load::start(bad.addr, 2);
    let out = deploy(bad.socket.clone()).await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(
        stderr(&out).contains("rolled_back; blue is live")
            && stderr(&out).contains("breach: max_error_rate"),
        "{}",
        both(&out)
    );
    assert_eq!(bad.status().await["live"], "blue");

    // A refused dry run (green is live on the first proxy now) stops with 1 and the
    // server's error, starting nothing.
    let out = deploy(good.socket.clone()).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stderr(&out).contains("dry run was refused") && stderr(&out).contains("already live"),
        "{}",
        both(&out)
    );
}
