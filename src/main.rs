//! The `cutover` binary: argument parsing, logging, wiring, signals. The only place
//! that exits the process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use http::Method;

use cutover::config::Config;
use cutover::ctl;
use cutover::server::Server;
use cutover::snapshot::Color;

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Blue-green traffic-switching reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy. Without --config, runs the embedded demo (two in-process backends).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit (0 when valid).
    Check {
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
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Show the live colour, generation and pools.
    Status,
    /// Send all traffic to COLOUR.
    Switch {
        color: Color,
        /// Refuse unless the routing generation is still this (see `status`).
        #[arg(long)]
        expect_generation: Option<u64>,
    },
    /// Go back to the colour that was live before the last change.
    Rollback {
        #[arg(long)]
        expect_generation: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Check { config } => check(&config),
            Command::Ctl {
                socket,
                json,
                command,
            } => ctl_command(&socket, json, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

async fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(path) => Config::load(path)?,
        None => {
            let blue = cutover::demo::spawn_backend(Color::Blue).await?;
            let green = cutover::demo::spawn_backend(Color::Green).await?;
            Config::demo(blue, green)
        }
    };
    let server = Server::bind(config).await?;
    if config_path.is_none() {
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
    let (method, path, body) = match command {
        CtlCommand::Status => (Method::GET, "/status", None),
        CtlCommand::Switch {
            color,
            expect_generation,
        } => (
            Method::POST,
            "/switch",
            Some(serde_json::json!({ "to": color, "expect_generation": expect_generation })),
        ),
        CtlCommand::Rollback { expect_generation } => (
            Method::POST,
            "/rollback",
            Some(serde_json::json!({ "expect_generation": expect_generation })),
        ),
    };
    let bytes = ctl::call(socket, method.clone(), path, body).await?;
    if json {
        print!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let status = ctl::parse_status(&bytes).context("decoding the status")?;
    if method == Method::GET {
        print!("{}", ctl::render_status(&status));
    } else {
        println!("{}", ctl::render_change(&status));
    }
    Ok(())
}
