//! The README's tour, run as written against a real demo (on a free port), so the
//! README cannot drift from the binary.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::{free_port, signal};

const README: &str = include_str!("../README.md");

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `sh` code blocks of the section headed `heading`, in order.
fn blocks(heading: &str) -> Vec<Vec<String>> {
    let section = README
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?} in the README"));
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| {
            b.split("```")
                .next()
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// `line` as this test runs it: the built binary for `cargo run -q --`, the demo's
/// port for 8080. Returns the command and what its `# …` comment says it prints.
fn adapt(line: &str, port: u16) -> (String, Option<String>) {
    let (command, comment) = match line.split_once(" # ") {
        Some((c, m)) => (c.trim(), Some(m.trim().to_owned())),
        None => (line.trim(), None),
    };
    let command = command
        .replace("cargo run -q --", env!("CARGO_BIN_EXE_cutover"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    (command, comment)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_runs_as_written_against_the_demo() {
    let tour = blocks("Five-minute tour");
    assert_eq!(tour.len(), 3, "start, second terminal, curl: {tour:?}");
    assert_eq!(tour[0], ["cargo run -- run"]);

    // The demo as the README starts it, in a scratch directory (its socket is
    // ./cutover.sock), on a free port instead of 8080.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let demo = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("CUTOVER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    // Killed if an assertion fails first, so no demo outlives the test.
    let mut demo = KillOnDrop(demo);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || !dir.path().join("cutover.sock").exists()
    {
        assert!(Instant::now() < deadline, "the demo did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let run = |command: &str| {
        let out = Command::new("sh")
            .args(["-c", command])
            .current_dir(dir.path())
            .output()
            .expect("sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{command}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    for line in tour[1].iter().chain(&tour[2]) {
        let (command, comment) = adapt(line, port);
        let stdout = run(&command);
        match comment.as_deref() {
            // `# → blue`: what the command prints.
            Some(says) if says.starts_with("→ ") => {
                assert_eq!(stdout.trim(), &says[4..], "{command}");
            }
            // `# blue → green (generation 2)`: the line ctl prints.
            Some(says) if says.contains(" → ") => {
                assert!(stdout.contains(says), "{command}: {stdout}");
            }
            // `# live colour, generation, pools`: the status table.
            Some(_) => assert!(stdout.contains("live: blue"), "{command}: {stdout}"),
            // The curl block: each answers the status as JSON.
            None => {
                let json: serde_json::Value = serde_json::from_str(&stdout)
                    .unwrap_or_else(|e| panic!("{command}: {e}: {stdout}"));
                assert!(json["live"].is_string(), "{command}: {json}");
            }
        }
    }
    signal(&demo.0, libc::SIGTERM);
    let status = demo.0.wait().expect("demo exits");
    assert!(
        status.success(),
        "Ctrl-C (or SIGTERM) ... exits 0: {status}"
    );
}
