//! The `cutover` binary: `check`, `run` with a bad config, and `ctl` against a live proxy.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Proxy, backend};

fn cutover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("CUTOVER_LOG", "error")
        .output()
        .expect("run the cutover binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const GOOD: &str = r#"
[listen]
address = "127.0.0.1:0"
[admin]
socket = "SOCKET"
[pools.blue]
backends = ["127.0.0.1:9001"]
[pools.green]
backends = ["127.0.0.1:9002"]
[routing]
live = "blue"
"#;

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    let text = text.replace("SOCKET", &dir.join("admin.sock").display().to_string());
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn check_accepts_the_shipped_example_and_a_minimal_config() {
    // The example as installed: its directories (made by the systemd unit) in a
    // scratch root.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/cutover.toml"))
            .expect("read the example");
    for system in ["/var/log/cutover", "/var/lib/cutover", "/run/cutover"] {
        let scratch = dir.path().join(&system[1..]);
        std::fs::create_dir_all(&scratch).expect("mkdir");
        example = example.replace(system, &scratch.display().to_string());
    }
    let path = write_config(dir.path(), "example.toml", &example);
    let out = cutover(&["check", "--config", &path]);
    assert!(out.status.success(), "{}", stderr(&out));

    let path = write_config(dir.path(), "good.toml", GOOD);
    let out = cutover(&["check", "--config", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_on_each_kind_of_bad_config_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "unknown colour",
            GOOD.replace("live = \"blue\"", "live = \"purple\""),
            "routing.live",
        ),
        (
            "unknown pool",
            GOOD.replace("[pools.green]", "[pools.teal]"),
            "pools.teal",
        ),
        (
            "unparsable listen",
            GOOD.replace("127.0.0.1:0", "localhost:http"),
            "listen.address",
        ),
        (
            "unparsable backend",
            GOOD.replace("\"127.0.0.1:9002\"", "\"10.0.0.1:99999\""),
            "pools.green.backends[0]",
        ),
        (
            "empty pool",
            GOOD.replace("[\"127.0.0.1:9002\"]", "[]"),
            "pools.green.backends",
        ),
        (
            "duplicate backend",
            GOOD.replace("\"127.0.0.1:9002\"", "\"127.0.0.1:9001\""),
            "pools.green.backends[0]",
        ),
        (
            "https backend with a bad host",
            GOOD.replace("\"127.0.0.1:9002\"", "\"https://bad_host!:8443\""),
            "pools.green.backends[0]: \"https://bad_host!:8443\" is not an https://host:port",
        ),
        (
            "missing ca file",
            GOOD.replace("\"127.0.0.1:9002\"", "\"https://127.0.0.1:9002\"")
                + "[pools.green.tls]\nca = \"/nonexistent/backend-ca.pem\"\n",
            "pools.green.tls.ca: cannot read /nonexistent/backend-ca.pem",
        ),
        (
            "a device as the ca file",
            GOOD.replace("\"127.0.0.1:9002\"", "\"https://127.0.0.1:9002\"")
                + "[pools.green.tls]\nca = \"/dev/zero\"\n",
            "pools.green.tls.ca: /dev/zero is not a regular file",
        ),
        (
            "client cert without key",
            GOOD.replace("\"127.0.0.1:9002\"", "\"https://127.0.0.1:9002\"")
                + "[pools.green.tls]\ncert = \"/etc/cutover/client.crt\"\n",
            "pools.green.tls.cert: needs key",
        ),
        (
            "a tls table on a pool with no https backend",
            format!("{GOOD}[pools.green.tls]\nserver_name = \"api.internal\"\n"),
            "pools.green.tls: applies to https:// backends",
        ),
        (
            "bad duration",
            format!("{GOOD}\n[upstream]\nresponse_timeout = \"30 parsecs\"\n"),
            "upstream.response_timeout",
        ),
        (
            "unknown key",
            GOOD.replace("live = \"blue\"", "live = \"blue\"\nlvie = \"green\""),
            "lvie",
        ),
        ("not TOML", "[listen\naddress = ".to_owned(), "TOML"),
    ];
    for (what, text, key) in cases {
        let path = write_config(dir.path(), "bad.toml", &text);
        let out = cutover(&["check", "--config", &path]);
        assert!(!out.status.success(), "{what}: check accepted it");
        let err = stderr(&out);
        assert!(
            err.contains(key),
            "{what}: message does not name {key}: {err}"
        );
    }
}

#[test]
fn run_with_a_bad_config_refuses_to_start_with_the_same_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "bad.toml",
        &GOOD.replace("[\"127.0.0.1:9002\"]", "[]"),
    );
    let check = cutover(&["check", "--config", &path]);
    let run = cutover(&["run", "--config", &path]);
    assert!(!run.status.success());
    assert_eq!(stderr(&check), stderr(&run));
    assert!(stderr(&run).contains("pools.green.backends"));
    assert!(
        !dir.path().join("admin.sock").exists(),
        "nothing was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_switches_shows_a_table_and_exits_non_zero_with_the_servers_message_when_refused() {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    let sock = proxy.socket.display().to_string();
    let ctl = move |args: &[&str]| {
        let mut all = vec!["ctl", "--socket", sock.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                cutover(&all.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .expect("ctl")
        }
    };

    let out = ctl(&["status"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("live: blue") && table.contains("generation: 1"),
        "{table}"
    );
    assert!(
        table.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{table}"
    );

    let out = ctl(&["switch", "green"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("blue → green"));
    assert_eq!(proxy.status().await["live"], "green");

    let out = ctl(&["switch", "blue", "--expect-generation", "1"]).await;
    assert!(!out.status.success(), "a stale switch was accepted");
    assert!(
        stderr(&out).contains("409") && stderr(&out).contains("generation is 2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(proxy.status().await["live"], "green");

    let out = ctl(&["--json", "status"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json["live"], "green");
    assert_eq!(json["generation"], 2);
    // Every column of the table is in the JSON, for both colours.
    for color in ["blue", "green"] {
        let pool = &json["pools"][color];
        for field in [
            "role",
            "healthy",
            "total",
            "in_flight",
            "tunnels",
            "backends",
        ] {
            assert!(
                !pool[field].is_null(),
                "pools.{color}.{field} missing: {json}"
            );
        }
        for window in ["window_10s", "window_60s"] {
            for field in [
                "requests_per_second",
                "error_rate",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "requests",
                "errors",
            ] {
                assert!(
                    pool[window][field].is_number(),
                    "pools.{color}.{window}.{field} missing: {json}"
                );
            }
        }
    }
    // Blue is idle, or still draining for a few ms after the switch.
    assert_ne!(json["pools"]["blue"]["role"], "live");
    assert_eq!(json["pools"]["green"]["role"], "live");
    // The table shows the same colours and roles.
    let table = String::from_utf8_lossy(&ctl(&["status"]).await.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("green") && l.contains("live")),
        "{table}"
    );
    assert!(
        table.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{table}"
    );

    let out = cutover(&["ctl", "--socket", "/nonexistent/cutover.sock", "status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no admin socket at /nonexistent/cutover.sock"),
        "{}",
        stderr(&out)
    );
}

/// The largest resident set of any child this process has waited for, in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    usage.ru_maxrss
}

#[test]
fn an_oversized_config_is_refused_unread_and_a_long_bad_value_is_quoted_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.toml");
    let file = std::fs::File::create(&big).expect("create");
    file.set_len(100 * 1024 * 1024)
        .expect("a sparse 100 MB file");
    for path in [big.to_str().expect("utf-8 path"), "/dev/zero"] {
        let started = std::time::Instant::now();
        let out = cutover(&["check", "--config", path]);
        assert!(!out.status.success(), "{path} was accepted");
        assert!(
            stderr(&out).contains("larger than 1048576 bytes"),
            "{path}: {}",
            stderr(&out)
        );
        eprintln!("{path} refused in {:?}", started.elapsed());
    }
    // Every child so far (these and other tests' small configs) stayed far below the
    // 100 MB a whole read would take.
    let max_rss = children_max_rss_kib();
    assert!(max_rss < 64 * 1024, "a child reached {max_rss} KiB");

    let long = "x".repeat(512 * 1024);
    for text in [
        GOOD.replace("[routing]", &format!("bogus = \"{long}\"\n[routing]")),
        GOOD.replace("\"127.0.0.1:9002\"", &format!("\"{long}\"")),
        GOOD.replace("live = \"blue\"", &format!("live = \"{long}\"")),
    ] {
        let path = write_config(dir.path(), "long.toml", &text);
        let out = cutover(&["check", "--config", &path]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.len() < 2048,
            "{} bytes of message: {}",
            err.len(),
            &err[..300.min(err.len())]
        );
        // A bad value is quoted cut short; an unknown key is named without its value.
        assert!(
            err.contains("more characters") || (err.contains("bogus") && !err.contains("xxxx")),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_top_into_a_pipe_prints_plain_tables_with_each_problem_whole_and_dashes_for_idle_pools()
{
    // Green accepts and hangs up at once: its checks fail with a long cause.
    let hangup = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let green = hangup.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = hangup.accept().await {
            drop(conn);
        }
    });
    // Blue's first check is an hour away: healthy, not verified.
    let extra = "[pools.blue.health]\npath = \"/healthz\"\ninterval = \"1h\"\n\n\
                 [pools.green.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nfall = 1\n";
    let proxy = Proxy::start(&[backend("blue").await], &[green], extra).await;
    let status = proxy
        .wait_until("green down", |s| {
            s["pools"]["green"]["backends"][0]["problem"]
                .as_str()
                .is_some_and(|p| p.starts_with("no answer"))
        })
        .await;
    let problem = status["pools"]["green"]["backends"][0]["problem"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(problem.len() > 20, "a cause worth keeping whole: {problem}");

    let mut top = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "ctl",
            "--socket",
            &proxy.socket.display().to_string(),
            "top",
        ])
        .env("CUTOVER_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run ctl top");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let _ = top.kill();
    let out = top.wait_with_output().expect("ctl top output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();

    assert!(!text.contains('\x1b'), "escapes into a pipe: {text:?}");
    assert!(
        text.matches("live: blue").count() >= 2,
        "one table a second: {text}"
    );
    let row = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in {text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // COLOUR ROLE BACKENDS REQ/S ERR% P50 P99 IN-FLIGHT TUNNELS: nothing finished.
    let blue_pool = row("blue   live");
    assert_eq!(blue_pool[4..7], ["-", "-", "-"], "{text}");
    let green_backend = text
        .lines()
        .find(|l| l.starts_with("green") && l.contains(&green.to_string()))
        .unwrap_or_else(|| panic!("no row for {green} in {text}"));
    assert!(
        green_backend.contains(" down ") && green_backend.ends_with(&problem),
        "{green_backend:?} should end with {problem:?}"
    );
    let blue_backend = text
        .lines()
        .find(|l| l.starts_with("blue") && l.contains("127.0.0.1:") && !l.contains(" live "))
        .unwrap_or_else(|| panic!("no blue backend row in {text}"));
    assert!(blue_backend.contains(" pending "), "{blue_backend:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_takes_flags_after_its_subcommand_prints_a_refusal_as_json_and_names_ctl_flags() {
    let green = support::closed_port().await;
    let extra = "[pools.green.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nfall = 1\n";
    let proxy = Proxy::start(&[backend("blue").await], &[green], extra).await;
    proxy
        .wait_until("green down", |s| s["pools"]["green"]["healthy"] == 0)
        .await;
    let sock = proxy.socket.display().to_string();
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            cutover(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .expect("ctl")
    };
    let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    // --socket and --json after the subcommand.
    let out = run(args(&["ctl", "status", "--json", "--socket", &sock])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["live"], "blue");

    // A refused switch with --json: the server's JSON, gate included, and exit 1.
    let out = run(args(&[
        "ctl", "switch", "green", "--json", "--socket", &sock,
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the refusal as JSON on stdout");
    assert!(json["error"].is_string(), "{json}");
    assert_eq!(json["gate"]["ready"], 0, "{json}");
    // The same refusal for a person: ctl's flag, not the API's field, and one "refused".
    let out = run(args(&["ctl", "--socket", &sock, "switch", "green"])).await;
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("--force") && !err.contains("\"force\""),
        "{err}"
    );
    assert_eq!(err.matches("refused:").count(), 1, "{err}");
    assert_eq!(proxy.status().await["live"], "blue");

    // A dry run to the live colour says what the real call says.
    let out = run(args(&[
        "ctl",
        "--socket",
        &sock,
        "switch",
        "blue",
        "--dry-run",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("already live"), "{text}");
    assert!(!text.contains("drain"), "{text}");
    let real = run(args(&["ctl", "--socket", &sock, "switch", "blue"])).await;
    assert!(
        String::from_utf8_lossy(&real.stdout).contains("already live"),
        "{}",
        String::from_utf8_lossy(&real.stdout)
    );

    // No socket there: said once, with what to do.
    let missing = proxy.socket.with_file_name("nothing.sock");
    let out = run(args(&[
        "ctl",
        "status",
        "--socket",
        &missing.display().to_string(),
    ]))
    .await;
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("no admin socket at") && err.contains("--socket"),
        "{err}"
    );
    assert!(err.matches("os error").count() <= 1, "{err}");
    assert!(!err.contains("No such file or directory"), "{err}");
}

#[test]
fn check_and_run_refuse_an_access_log_and_a_state_file_a_start_could_not_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let text = format!(
        "{GOOD}\n[state]\nfile = \"{}/state.json\"\n\n[access_log]\npath = \"{}/access.log\"\n",
        missing.display(),
        missing.display()
    );
    let path = write_config(dir.path(), "bad-paths.toml", &text);
    let check = cutover(&["check", "--config", &path]);
    assert!(!check.status.success(), "check said ok");
    let err = stderr(&check);
    assert!(
        err.contains("state.file") && err.contains("access_log.path"),
        "{err}"
    );
    assert!(err.contains("no-such-dir"), "{err}");
    let run = cutover(&["run", "--config", &path]);
    assert!(!run.status.success());
    assert_eq!(stderr(&check), stderr(&run));
    assert!(
        !dir.path().join("admin.sock").exists(),
        "nothing was started"
    );
    assert!(!missing.exists(), "check created nothing");
}

#[test]
fn check_reports_every_unknown_key_and_every_bad_value_of_a_file_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = GOOD
        .replace("live = \"blue\"", "live = \"blue\"\nlvie = \"green\"")
        .replace("\"127.0.0.1:9002\"", "\"10.0.0.1:99999\"")
        + "[pools.blue.helth]\npath = \"/healthz\"\n[upstream]\nresponse_timout = \"5s\"\n";
    let path = write_config(dir.path(), "many.toml", &text);
    let out = cutover(&["check", "--config", &path]);
    assert!(!out.status.success(), "check accepted it");
    let err = stderr(&out);
    for key in [
        "routing.lvie",
        "pools.blue.helth",
        "upstream.response_timout",
        "pools.green.backends[0]",
    ] {
        assert!(err.contains(key), "does not name {key}: {err}");
    }
    assert!(err.contains("line "), "no line numbers: {err}");
    let run = cutover(&["run", "--config", &path]);
    assert!(!run.status.success());
    assert_eq!(err, stderr(&run), "run and check disagree");
}

#[test]
fn check_warns_when_two_spellings_of_a_backend_reach_one_server_and_still_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = GOOD.replace("\"127.0.0.1:9002\"", "\"localhost:9001\"");
    let path = write_config(dir.path(), "same-server.toml", &text);
    let out = cutover(&["check", "--config", &path]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: pools.green.backends[0] localhost:9001 reaches 127.0.0.1:9001")
            && err.contains("pools.blue.backends[0] 127.0.0.1:9001"),
        "{err}"
    );
    let distinct = write_config(dir.path(), "distinct.toml", GOOD);
    let out = cutover(&["check", "--config", &distinct]);
    assert!(out.status.success());
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}
