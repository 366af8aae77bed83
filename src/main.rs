//! The `cutover` binary: argument parsing, logging, wiring, signals. The only place
//! that exits the process.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Method;

use cutover::color::Color;
use cutover::config::Config;
use cutover::ctl;
use cutover::ctl::rollout::{self as ctl_rollout, Steps};
use cutover::reload::{ReloadHook, ReloadReport, Reloader, Trigger};
use cutover::server::Server;

/// mimalloc rather than glibc malloc: HTTP/2 allocates per stream and per frame, and
/// with mimalloc's thread-local free lists h2c took +5 % and +21 % requests/s on one
/// core in two A/Bs (plain keep-alive the same within noise). Its arena costs ~13 MiB
/// more at start, which 10k idle connections still fit under HAProxy's RSS
/// (benches/compare.sh --edge).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// The proxy's address (host:port, port 0 picks a free one), over the config's
        /// one listener or the demo's 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// The admin socket's path, over `[admin] socket` or the demo's cutover.sock.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
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
        #[arg(
            long,
            short,
            global = true,
            default_value = "cutover.sock",
            env = "CUTOVER_SOCKET"
        )]
        socket: PathBuf,
        /// Print the server's JSON instead of a table.
        #[arg(long, global = true)]
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
    /// Send PERCENT of requests (by sticky bucket) to COLOUR; 0 clears the canary.
    Canary {
        /// The colour that gets the share (not the live one).
        color: Color,
        /// The share: 10, 12.5 or 12.5%; 0 clears it.
        #[arg(value_parser = ctl_rollout::parse_percent)]
        percent: f64,
        /// Refuse unless the routing generation is still this (see `status`).
        #[arg(long)]
        expect_generation: Option<u64>,
        /// Set it even if COLOUR's pool fails the health gate.
        #[arg(long)]
        force: bool,
        /// Show the gate; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A staged rollout: `rollout COLOUR --steps …` starts one (`--wait` follows it to
    /// the end); `rollout status|pause|resume|abort|promote` acts on the current one.
    Rollout(Box<RolloutCommand>),
    /// The last routing events: switches, canaries, rollout steps, breaches.
    History {
        /// How many of the most recent events to show.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// The last rollout's evidence as Markdown (`--json`: its record).
    Report,
    /// Set one backend's state: ready (takes traffic as its health allows), drain (no
    /// new requests; those in flight finish) or maint (out; its health checks stop).
    /// Persisted and audited.
    Backend {
        /// The backend's address as configured (as `status` lists it).
        address: String,
        /// ready, drain or maint.
        state: cutover::pool::AdminState,
    },
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Exit status with --wait: 0 promoted, 2 rolled back or aborted, 1 any other \
                  end or error.\n\nExample:\n  cutover ctl rollout green --steps \
                  1:30m,10:1h,25,50,100 --step 30s \\\n    --max-error-rate 1% --max-p99 250ms \
                  --min-requests 200 --wait"
)]
struct RolloutCommand {
    #[command(subcommand)]
    verb: Option<RolloutVerb>,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Debug, Subcommand)]
enum RolloutVerb {
    /// Start a rollout (the same as `rollout COLOUR …`).
    Start(Box<StartArgs>),
    /// Show the current (or last) rollout: step, time left, gates, evidence.
    Status,
    /// Hold the current weight and stop the step's clock.
    Pause,
    /// Run a paused rollout on.
    Resume,
    /// Roll back now: all traffic to the colour that was live when it started.
    Abort,
    /// Skip the remaining steps (or approve the last one): the target goes live.
    Promote,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnBreach {
    Rollback,
    Pause,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnInconclusive {
    Extend,
    Pause,
}

#[derive(Debug, Args)]
struct StartArgs {
    /// The colour to roll out (not the live one).
    #[arg(required = true)]
    color: Option<Color>,
    /// Percentages, growing, each bare (runs for --step) or PERCENT:DURATION, e.g.
    /// 1:30m,10:1h,25,50,100.
    #[arg(long, required = true, value_parser = ctl_rollout::parse_steps)]
    steps: Option<Steps>,
    /// How long a bare step runs (default: `[rollout] step_duration`), e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = ctl_rollout::parse_duration)]
    step: Option<String>,
    /// The canary's error rate at most: 1% or 0.01.
    #[arg(long, value_name = "RATE", value_parser = ctl_rollout::parse_rate)]
    max_error_rate: Option<f64>,
    /// The canary's p99 latency at most, e.g. 250ms.
    #[arg(long, value_name = "DURATION", value_parser = ctl_rollout::parse_duration)]
    max_p99: Option<String>,
    /// Canary requests a step needs before it can pass (default 100).
    #[arg(long, value_name = "N")]
    min_requests: Option<u64>,
    /// The canary's error rate at most this many times the live colour's, e.g. 2.0.
    #[arg(long, value_name = "FACTOR", value_parser = ctl_rollout::parse_factor)]
    max_error_rate_vs_live: Option<f64>,
    /// The canary's p99 at most this many times the live colour's, e.g. 1.5.
    #[arg(long, value_name = "FACTOR", value_parser = ctl_rollout::parse_factor)]
    max_p99_vs_live: Option<f64>,
    /// Hold the last step until `rollout promote`.
    #[arg(long)]
    approval: bool,
    /// What a breached gate does (default: rollback).
    #[arg(long, value_enum)]
    on_breach: Option<OnBreach>,
    /// What a step with too few requests does (default: extend).
    #[arg(long, value_enum)]
    on_inconclusive: Option<OnInconclusive>,
    /// Extensions of an inconclusive step before it pauses (default 3).
    #[arg(long, value_name = "N")]
    max_extensions: Option<u32>,
    /// Refuse unless the routing generation is still this (see `status`).
    #[arg(long)]
    expect_generation: Option<u64>,
    /// Check the plan and the gate; start nothing.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Follow the rollout to its end; exit 0 promoted, 2 rolled back or aborted.
    #[arg(long)]
    wait: bool,
}

fn main() -> ExitCode {
    // A usage error exits 1, like any other error: 2 is kept for a rollout that
    // `ctl rollout --wait` saw rolled back.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    let result = match cli.command {
        // The config is read before the runtime exists: it decides the runtime's shape.
        Command::Run {
            config: file,
            listen,
            socket,
        } => {
            let overrides = cutover::config::Overrides { listen, socket };
            match file.as_deref().map(Config::load_checked).transpose() {
                Ok(config) => match config
                    .map(|c| c.with_overrides(overrides.clone()))
                    .transpose()
                {
                    Ok(config) => {
                        let workers = config.as_ref().map(|c| c.workers);
                        block_on(workers, run(config, file, overrides))
                    }
                    Err(e) => Err(anyhow::anyhow!(e)),
                },
                Err(e) => Err(e.into()),
            }
        }
        Command::Check { config } => check(&config),
        Command::Ctl {
            socket,
            json,
            command,
        } => block_on(Some(1), ctl_command(&socket, json, command)).inspect_err(|e| {
            // With --json a refusal is printed as the server's JSON (with its `gate`
            // detail) too, for a script to read; the exit code still says it failed.
            if let (true, Some(ctl::CtlError::Refused { body, .. })) = (json, e.downcast_ref()) {
                println!("{}", String::from_utf8_lossy(body).trim_end());
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ctl_rollout::Ended>().is_some() => {
            eprintln!("{e}");
            match e.downcast_ref::<ctl_rollout::Ended>().map(|e| e.state) {
                Some(cutover::rollout::State::RolledBack | cutover::rollout::State::Aborted) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            }
        }
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

async fn run(
    config: Option<Config>,
    file: Option<PathBuf>,
    overrides: cutover::config::Overrides,
) -> anyhow::Result<()> {
    let demo = config.is_none();
    let config = match config {
        Some(config) => config,
        None => {
            let blue = cutover::demo::spawn_backend(Color::Blue).await?;
            let green = cutover::demo::spawn_backend(Color::Green).await?;
            Config::demo(blue, green)
                .with_overrides(overrides)
                .map_err(|e| anyhow::anyhow!(e))?
        }
    };
    if !demo {
        // In the background: a slow resolver must not hold up a start.
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            for line in config.shared_backends() {
                tracing::warn!("{line}");
            }
        });
    }
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
        // The binary as it was started (target/debug/cutover under `cargo run`), so the
        // commands work as printed.
        let me = std::env::args()
            .next()
            .unwrap_or_else(|| "cutover".to_owned());
        println!("cutover demo: blue is live at http://{addr}/");
        println!("  curl http://{addr}/                      # → blue");
        println!("  {me} ctl --socket {sock} switch green   # or:");
        println!(
            "  curl --unix-socket {sock} -X POST -d '{{\"to\":\"green\"}}' http://cutover/switch"
        );
        println!("  curl http://{addr}/                      # → green");
        println!("  {me} ctl --socket {sock} rollback");
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
    let config = Config::load_checked(path)?;
    for line in config.shared_backends() {
        eprintln!("warning: {line}");
    }
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
        CtlCommand::Canary {
            color,
            percent,
            expect_generation,
            force,
            dry_run,
        } => {
            let body = serde_json::json!({
                "color": color, "percent": percent, "expect_generation": expect_generation,
                "force": force, "dry_run": dry_run,
            });
            return canary_command(socket, json, body, dry_run).await;
        }
        CtlCommand::Rollout(command) => {
            let verb = match command.verb {
                None => return rollout_start(socket, json, command.start).await,
                Some(RolloutVerb::Start(start)) => {
                    return rollout_start(socket, json, *start).await;
                }
                Some(RolloutVerb::Status) => "status",
                Some(RolloutVerb::Pause) => "pause",
                Some(RolloutVerb::Resume) => "resume",
                Some(RolloutVerb::Abort) => "abort",
                Some(RolloutVerb::Promote) => "promote",
            };
            return Ok(ctl_rollout::verb(socket, json, verb).await?);
        }
        CtlCommand::Backend { address, state } => {
            let path = format!("/backends/{address}/state");
            let body = serde_json::json!({ "state": state.as_str() });
            let bytes = ctl::call(socket, Method::POST, &path, Some(body)).await?;
            if json {
                print!("{}", String::from_utf8_lossy(&bytes));
            } else {
                let status = ctl::parse_status(&bytes).context("decoding the status")?;
                let verb = if status.changed == Some(false) {
                    "already"
                } else {
                    "now"
                };
                println!("{address} is {verb} {}", state.as_str());
            }
            return Ok(());
        }
        CtlCommand::History { last } => {
            let bytes = ctl::call(socket, Method::GET, "/history", None).await?;
            if json {
                print!("{}", String::from_utf8_lossy(&bytes));
            } else {
                print!("{}", ctl_rollout::render_history(&bytes, last)?);
            }
            return Ok(());
        }
        CtlCommand::Report => {
            let path = if json { "/rollout" } else { "/rollout/report" };
            let bytes = ctl::call(socket, Method::GET, path, None).await?;
            print!("{}", String::from_utf8_lossy(&bytes));
            return Ok(());
        }
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
    match (json, code.is_success()) {
        (true, true) => print!("{}", String::from_utf8_lossy(&bytes)),
        // Printed (once) as a refusal's JSON on the way out.
        (true, false) => {
            return Err(anyhow::Error::new(ctl::refusal(code, &bytes)).context("dry run"));
        }
        (false, _) => print!("{}", ctl::render_plan(code, &bytes)?),
    }
    if code.is_success() {
        Ok(())
    } else {
        anyhow::bail!("the switch would be refused ({code})")
    }
}

/// `ctl canary`: sets or clears the split (or with `--dry-run`, shows the gate).
async fn canary_command(
    socket: &std::path::Path,
    json: bool,
    body: serde_json::Value,
    dry_run: bool,
) -> anyhow::Result<()> {
    if dry_run {
        let (code, bytes) = ctl::call_raw(socket, Method::POST, "/canary", Some(body)).await?;
        if json {
            // A refusal's JSON is printed on the way out.
            if code.is_success() {
                print!("{}", String::from_utf8_lossy(&bytes));
            }
        } else {
            // A refusal of the dry run itself (a bad colour) has no gate to show.
            match ctl_rollout::render_canary_plan(code, &bytes) {
                Ok(text) => print!("{text}"),
                Err(e) if code.is_success() => return Err(e.into()),
                Err(_) => {}
            }
        }
        if code.is_success() {
            return Ok(());
        }
        return Err(ctl::refusal(code, &bytes).into());
    }
    let bytes = ctl::call(socket, Method::POST, "/canary", Some(body)).await?;
    if json {
        print!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let status = ctl::parse_status(&bytes).context("decoding the status")?;
    match &status.canary {
        Some(c) => println!(
            "canary: {} {}% (generation {})",
            c.color, c.percent, status.generation
        ),
        None => println!(
            "canary cleared: all traffic to {} (generation {})",
            status.live, status.generation
        ),
    }
    Ok(())
}

/// `ctl rollout COLOUR …`: starts it (or dry-runs it) and with `--wait` follows it.
async fn rollout_start(
    socket: &std::path::Path,
    json: bool,
    args: StartArgs,
) -> anyhow::Result<()> {
    let (Some(color), Some(Steps(steps))) = (args.color, args.steps) else {
        anyhow::bail!("give the colour and --steps, e.g. `rollout green --steps 10,50,100`");
    };
    let options = ctl_rollout::StartOptions {
        steps,
        step: args.step,
        max_error_rate: args.max_error_rate,
        max_p99: args.max_p99,
        min_requests: args.min_requests,
        max_error_rate_vs_live: args.max_error_rate_vs_live,
        max_p99_vs_live: args.max_p99_vs_live,
        approval: args.approval,
        on_breach: args.on_breach.map(|b| match b {
            OnBreach::Rollback => "rollback",
            OnBreach::Pause => "pause",
        }),
        on_inconclusive: args.on_inconclusive.map(|i| match i {
            OnInconclusive::Extend => "extend",
            OnInconclusive::Pause => "pause",
        }),
        max_extensions: args.max_extensions,
        expect_generation: args.expect_generation,
        dry_run: args.dry_run,
    };
    let body = options.body(color);
    if args.dry_run {
        let (code, bytes) = ctl::call_raw(socket, Method::POST, "/rollout", Some(body)).await?;
        if json {
            // A refusal's JSON is printed on the way out.
            if code.is_success() {
                print!("{}", String::from_utf8_lossy(&bytes));
            }
        } else if code.is_success() {
            print!("{}", ctl_rollout::render_rollout_plan(&bytes)?);
        }
        if code.is_success() {
            return Ok(());
        }
        return Err(
            anyhow::Error::new(ctl::refusal(code, &bytes)).context("the rollout would not start")
        );
    }
    let bytes = ctl::call(socket, Method::POST, "/rollout", Some(body))
        .await
        .context("the rollout did not start")?;
    let record = ctl_rollout::parse_record(&bytes)?;
    if json {
        println!("{}", String::from_utf8_lossy(&bytes).trim_end());
    } else if args.wait {
        println!("{}", ctl_rollout::progress_line(&record));
    } else {
        print!("{}", ctl_rollout::render_record(&record));
    }
    if !args.wait {
        return Ok(());
    }
    let end = ctl_rollout::follow(socket, &record, json).await?;
    let line = ctl_rollout::outcome_line(&end);
    if end.state == cutover::rollout::State::Promoted {
        if !json {
            println!("{line}");
        }
        return Ok(());
    }
    Err(ctl_rollout::Ended {
        state: end.state,
        line,
    }
    .into())
}
