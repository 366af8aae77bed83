//! Wiring: from a validated [`Config`] to bound listeners ([`Server::bind`]) and running
//! tasks ([`Server::run`]). Shutdown is an argument, so `main` passes signals and tests
//! pass a channel.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};

use crate::access_log::AccessLog;
use crate::admin::{self, Admin};
use crate::color::Color;
use crate::config::Config;
use crate::connections::Timeouts;
use crate::drain::Tracker;
use crate::health;
use crate::listener;
use crate::metrics::Telemetry;
use crate::pool::Pool;
use crate::proxy::Proxy;
use crate::snapshot::Snapshot;
use crate::switchboard::{self, StateReport, Switchboard};
use crate::upstream::Upstreams;

/// A proxy with its listeners bound, ready to [`run`](Server::run).
pub struct Server {
    /// The bound client listener; `run` accepts on it.
    proxy_listener: TcpListener,
    /// The bound admin socket; `run` serves it until shutdown.
    admin_listener: UnixListener,
    /// Where the admin socket is: logged at start, removed when the server stops.
    admin_path: PathBuf,
    /// The data path's shared context, handed to every client connection.
    proxy: Arc<Proxy>,
    /// The admin API, served on the admin socket and on the metrics listener.
    admin: Arc<Admin>,
    /// Connection settings for client connections (HTTP/1 + h2c).
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    /// How long a client connection may take over a head, a body, or sitting idle.
    timeouts: Timeouts,
    /// Open client connections at most (`limits.max_connections`, or derived from the
    /// file descriptor limit).
    max_connections: usize,
    /// How long in-flight requests get after shutdown starts.
    grace: Duration,
    /// For closing tunnels at the drain deadline on shutdown.
    tracker: Arc<Tracker>,
    /// Both pools, for starting their health checkers.
    pools: [Arc<Pool>; 2],
    /// `metrics.listen`: a TCP endpoint for Prometheus scrapes.
    metrics_listener: Option<TcpListener>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Listen(io::Error),
    #[error("{0}")]
    Admin(io::Error),
    #[error("cannot start the access log: {0}")]
    AccessLog(io::Error),
    #[error("backend address {address} is not usable: {source}")]
    Backend {
        /// The pool's configured backends, comma-separated.
        address: String,
        /// Why one of them is not a valid URI authority, or its TLS settings are not
        /// usable.
        source: crate::pool::PoolError,
    },
}

// === impl Server ===

impl Server {
    /// Restores state, builds the snapshot and binds both listeners. Nothing is served
    /// until [`run`](Server::run).
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let (state, report) = initial_state(&config);
        let pool = |color: Color| {
            Pool::build(&config.pools[color.index()], &[])
                .map(Arc::new)
                .map_err(|source| StartError::Backend {
                    address: config.pools[color.index()].backends.join(", "),
                    source,
                })
        };
        let snapshot = Snapshot {
            generation: state.generation,
            live: state.live,
            previous: state.previous,
            pools: [pool(Color::Blue)?, pool(Color::Green)?],
        };
        let pools = snapshot.pools.clone();
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let upstreams = Arc::new(Upstreams::new(&config.upstream, Arc::clone(&snapshot)));
        let access_log = match &config.access_log {
            Some(path) => Some(AccessLog::start(path).map_err(StartError::AccessLog)?),
            None => None,
        };
        let telemetry = Arc::new(Telemetry::new(config.metrics.enabled, access_log));
        let tracker = Arc::new(Tracker::new(config.drain_timeout, upstreams, telemetry));
        let timeouts = Timeouts {
            header: config.listen.header_timeout,
            idle: config.listen.idle_timeout,
            body: config.listen.body_timeout,
            write: config.listen.write_timeout,
        };
        let proxy = Arc::new(Proxy::new(
            Arc::clone(&snapshot),
            Arc::clone(&tracker),
            &config.upstream,
            config.color_header,
            config.policy.clone(),
            timeouts,
        ));
        let switchboard = Arc::new(Switchboard::new(
            snapshot,
            Arc::clone(&tracker),
            config.state_file.clone(),
            report,
        ));
        let admin = Arc::new(Admin {
            switchboard,
            tracker: Arc::clone(&tracker),
            access: config.admin.access.clone(),
        });

        let proxy_listener = listener::bind(config.listen.address, config.listen.backlog)
            .await
            .map_err(StartError::Listen)?;
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(
                listener::bind(addr, 128)
                    .await
                    .map_err(StartError::Listen)?,
            ),
            None => None,
        };
        let admin_listener =
            admin::bind(&config.admin.socket, config.admin.mode, config.admin.group)
                .await
                .map_err(StartError::Admin)?;
        Ok(Server {
            proxy_listener,
            admin_listener,
            admin_path: config.admin.socket.clone(),
            proxy,
            admin,
            builder: Arc::new(listener::connection_builder(
                &config.listen,
                &config.policy.limits,
            )),
            timeouts,
            max_connections: config
                .listen
                .max_connections
                .unwrap_or_else(listener::default_max_connections),
            grace: config.shutdown_grace,
            tracker,
            pools,
            metrics_listener,
        })
    }

    /// The bound proxy address (useful when the config said port 0).
    pub fn proxy_addr(&self) -> io::Result<SocketAddr> {
        self.proxy_listener.local_addr()
    }

    /// The bound `metrics.listen` address, when one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn admin_socket(&self) -> &Path {
        &self.admin_path
    }

    /// Serves until `shutdown` resolves; then stops accepting, gives in-flight requests
    /// up to the grace period, and removes the admin socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(admin::serve(
            self.admin_listener,
            Arc::clone(&self.admin),
            async {
                let _ = admin_stopped.await;
            },
        ));
        // Health checkers, the idle connection sweep and the TCP metrics endpoint;
        // ended on shutdown.
        let mut background = tokio::task::JoinSet::new();
        health::spawn_checkers(&self.pools, &mut background);
        background.spawn(Arc::clone(self.tracker.upstreams()).sweep());
        if let Some(listener) = self.metrics_listener {
            background.spawn(admin::serve_metrics(listener, Arc::clone(&self.admin)));
        }
        let addr = self.proxy_listener.local_addr().ok();
        tracing::info!(proxy = ?addr, admin = %self.admin_path.display(), "cutover is serving");

        let connections = listener::serve(
            self.proxy_listener,
            self.proxy,
            self.builder,
            self.timeouts,
            self.max_connections,
            shutdown,
        )
        .await;
        tracing::info!(
            open_connections = connections.count(),
            grace = ?self.grace,
            "shutting down: no new connections; waiting for in-flight requests"
        );
        // HTTP/1 connections finish their response with `Connection: close`, HTTP/2 ones
        // get GOAWAY; tunnels get the drain deadline, as after a switch.
        let tracker = Arc::clone(&self.tracker);
        let everything_done = async move {
            // Both colours drain as one does after a switch: requests finish, tunnels
            // are closed at the drain deadline.
            for color in Color::ALL {
                tracker.begin_drain(color);
            }
            let drained = async {
                while Color::ALL.iter().any(|&c| tracker.is_draining(c)) {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            };
            tokio::join!(connections.shutdown(), drained);
        };
        if tokio::time::timeout(self.grace, everything_done)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "grace period over; closing the remaining connections");
            self.tracker.close_all_tunnels();
        }
        background.shutdown().await;
        let _ = stop_admin.send(());
        if let Ok(admin_connections) = admin_task.await {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), admin_connections.shutdown()).await;
        }
        if let Err(e) = std::fs::remove_file(&self.admin_path) {
            tracing::debug!(error = %e, "could not remove the admin socket");
        }
        tracing::info!("stopped");
    }
}

/// The routing state to start from: the state file when it is present and valid,
/// otherwise `routing.live` at generation 1.
fn initial_state(config: &Config) -> (switchboard::PersistedState, StateReport) {
    let fresh = switchboard::PersistedState {
        live: config.initial_live,
        previous: None,
        generation: 1,
    };
    let mut report = StateReport {
        path: config.state_file.clone(),
        restored: false,
        error: None,
    };
    let Some(path) = &config.state_file else {
        return (fresh, report);
    };
    match switchboard::load_state(path) {
        Ok(Some(state)) => {
            tracing::info!(path = %path.display(), live = %state.live, generation = state.generation, "routing state restored");
            report.restored = true;
            (state, report)
        }
        Ok(None) => (fresh, report),
        Err(message) => {
            tracing::error!(path = %path.display(), "{message}");
            report.error = Some(message);
            (fresh, report)
        }
    }
}
