//! The `cutover` binary: argument parsing, logging, wiring, signals. The only place
//! that exits the process.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use http::Method;

use cutover::color::Color;
use cutover::config::Config;
use cutover::ctl;
use cutover::reload::{ReloadHook, ReloadReport, Reloader, Trigger};
use cutover::server::Server;

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Blue-green traffic-switching reverse proxy"
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy. Without --config, runs the embedded demo (two in-process backends).
    Run {
        /// The config file (TOML); without it the embedded demo runs.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit (0 when valid).
    Check {
        /// The config file to validate.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a running cutover over its admin socket.
    Ctl {
        /// The admin socket.
        #[arg(long, short, default_value = "cutover.sock", env = "CUTOVER_SOCKET")]
        socket: PathBuf,
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The admin call to make.
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Show the live colour, generation, pools and the last 10 s per colour.
    Status,
    /// The status table, refreshed every second until Ctrl-C (`--json`: a line per second).
    Top,
    /// Send all traffic to COLOUR.
    Switch {
        /// The colour to make live: blue or green.
        color: Color,
        /// Refuse unless the routing generation is still this (see `status`).
        #[arg(long)]
        expect_generation: Option<u64>,
        /// Switch even if the target pool fails the health gate (audited as forced).
        #[arg(long)]
        force: bool,
        /// Show the gate per backend and what would drain; change nothing.
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        /// After switching, show the old colour draining until it is done or its deadline passes.
        #[arg(long)]
        wait: bool,
    },
    /// Read the config file again and apply it (as SIGHUP does); fails when the file is
    /// refused.
    Reload,
    /// Go back to the colour that was live before the last change.
    Rollback {
        /// Refuse unless the routing generation is still this (see `status`).
        #[arg(long)]
        expect_generation: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        // The config is read before the runtime exists: it decides the runtime's shape.
        Command::Run { config: file } => match file.as_deref().map(Config::load).transpose() {
            Ok(config) => {
                let workers = config.as_ref().map(|c| c.workers);
                block_on(workers, run(config, file))
            }
            Err(e) => Err(e.into()),
        },
        Command::Check { config } => check(&config),
        Command::Ctl {
            socket,
            json,
            command,
        } => block_on(Some(1), ctl_command(&socket, json, command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `fut` on a runtime with `workers` threads (one per core when `None`); a single
/// worker gets a current-thread runtime, which skips cross-thread scheduling entirely.
fn block_on(
    workers: Option<usize>,
    fut: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(fut)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(config: Option<Config>, file: Option<PathBuf>) -> anyhow::Result<()> {
    let demo = config.is_none();
    let config = match config {
        Some(config) => config,
        None => {
            let blue = cutover::demo::spawn_backend(Color::Blue).await?;
            let green = cutover::demo::spawn_backend(Color::Green).await?;
            Config::demo(blue, green)
        }
    };
    let server = Server::bind_file(config, file).await?;
    // Every reload, whatever its trigger, runs `Reloader::reload`: a service manager
    // hears RELOADING=1 before it and READY=1 after it (whatever the outcome: the
    // process serves either way).
    server
        .reloader()
        .add_hook(std::sync::Arc::new(NotifyReload));
    // The SIGHUP handler is installed before anything is served, so a SIGHUP never
    // meets the default action (exit).
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => {
            tokio::spawn(reload_on_hangup(hangup, server.reloader()));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload with `cutover ctl reload`")
        }
    }
    if demo {
        let addr = server.proxy_addr()?;
        let sock = server.admin_socket().display().to_string();
        println!("cutover demo: blue is live at http://{addr}/");
        println!("  curl http://{addr}/                      # → blue");
        println!("  cutover ctl --socket {sock} switch green   # or:");
        println!(
            "  curl --unix-socket {sock} -X POST -d '{{\"to\":\"green\"}}' http://cutover/switch"
        );
        println!("  curl http://{addr}/                      # → green");
        println!("  cutover ctl --socket {sock} rollback");
    }
    server.run(shutdown_signal()).await;
    Ok(())
}

/// Tells a service manager (systemd `Type=notify`) when a reload starts and ends.
struct NotifyReload;

impl ReloadHook for NotifyReload {
    fn starting(&self, _trigger: Trigger) {
        cutover::sd_notify::reloading();
    }

    fn finished(&self, _report: &ReloadReport) {
        cutover::sd_notify::ready();
    }
}

/// Reloads the config file on each SIGHUP (instead of the default: exit).
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    reloader: std::sync::Arc<Reloader>,
) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received; reloading the config");
        // The outcome is logged, counted and shown on /status by the reload itself.
        let _ = reloader.reload(Trigger::Signal).await;
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!(
        "{}: ok (listen {}, blue {} backend(s), green {} backend(s))",
        path.display(),
        config.listen.address,
        config.pools[0].backends.len(),
        config.pools[1].backends.len()
    );
    Ok(())
}

async fn ctl_command(
    socket: &std::path::Path,
    json: bool,
    command: CtlCommand,
) -> anyhow::Result<()> {
    let (path, body, wait) = match command {
        CtlCommand::Status => {
            let bytes = ctl::call(socket, Method::GET, "/status", None).await?;
            if json {
                print!("{}", String::from_utf8_lossy(&bytes));
            } else {
                print!("{}", ctl::render_status(&ctl::parse_status(&bytes)?));
            }
            return Ok(());
        }
        CtlCommand::Top => return Ok(ctl::top(socket, json).await?),
        CtlCommand::Reload => {
            let bytes = ctl::call(socket, Method::POST, "/reload", None).await?;
            if json {
                print!("{}", String::from_utf8_lossy(&bytes));
            } else {
                println!("{}", ctl::render_reload(&bytes)?);
            }
            return Ok(());
        }
        CtlCommand::Switch {
            color,
            expect_generation,
            force,
            dry_run,
            wait,
        } => {
            let body = serde_json::json!({
                "to": color, "expect_generation": expect_generation, "force": force, "dry_run": dry_run,
            });
            if dry_run {
                return dry_run_command(socket, json, body).await;
            }
            ("/switch", body, wait)
        }
        CtlCommand::Rollback { expect_generation } => (
            "/rollback",
            serde_json::json!({ "expect_generation": expect_generation }),
            false,
        ),
    };
    let bytes = ctl::call(socket, Method::POST, path, Some(body)).await?;
    if json {
        print!("{}", String::from_utf8_lossy(&bytes));
    }
    let status = ctl::parse_status(&bytes).context("decoding the status")?;
    if !json {
        println!("{}", ctl::render_change(&status));
    }
    if wait && status.changed == Some(true) {
        if let Some(old) = status.previous {
            ctl::watch_drain(socket, old, json).await?;
        }
    }
    Ok(())
}

/// Prints what a switch would do; exits non-zero when the real call would be refused.
async fn dry_run_command(
    socket: &std::path::Path,
    json: bool,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let (code, bytes) = ctl::call_raw(socket, Method::POST, "/switch", Some(body)).await?;
    if json {
        print!("{}", String::from_utf8_lossy(&bytes));
    } else {
        print!("{}", ctl::render_plan(code, &bytes)?);
    }
    if code.is_success() {
        Ok(())
    } else {
        anyhow::bail!("the switch would be refused ({code})")
    }
}
