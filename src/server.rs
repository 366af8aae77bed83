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
use crate::activation;
use crate::admin::{self, Admin};
use crate::color::Color;
use crate::config::Config;
use crate::drain::Tracker;
use crate::listener;
use crate::metrics::Telemetry;
use crate::pool::Pool;
use crate::reload::{FileWatch, Reloader};
use crate::rollout::Rollouts;
use crate::sd_notify;
use crate::settings::{self, Settings};
use crate::snapshot::Snapshot;
use crate::switchboard::{self, StateReport, Switchboard};
use crate::tls::{self, Certs, Terminator, TlsError};
use crate::upstream::Upstreams;

/// A proxy with its listeners bound, ready to [`run`](Server::run).
pub struct Server {
    /// The bound client listeners in config order, each with how it serves; `run`
    /// accepts on them.
    listeners: Vec<listener::Bound>,
    /// The certificates of every TLS listener: watched while running, reloaded on
    /// demand.
    certificates: Vec<Arc<Certs>>,
    /// The bound admin socket; `run` serves it until shutdown.
    admin_listener: UnixListener,
    /// Where the admin socket is: logged at start, removed when the server stops.
    admin_path: PathBuf,
    /// What each client connection is served with (the data path's context, hyper's
    /// builder, the timeouts); loaded per connection, replaced by a reload.
    settings: settings::Current,
    /// The admin API, served on the admin socket and on the metrics listener.
    admin: Arc<Admin>,
    /// Applies config files (file watch, SIGHUP, `POST /reload`); owns the health
    /// checkers.
    reloader: Arc<Reloader>,
    /// Open client connections at most (`limits.max_connections`, or derived from the
    /// file descriptor limit).
    max_connections: usize,
    /// How long in-flight requests get after shutdown starts.
    grace: Duration,
    /// For closing tunnels at the drain deadline on shutdown.
    tracker: Arc<Tracker>,
    /// `metrics.listen`: a TCP endpoint for Prometheus scrapes.
    metrics_listener: Option<TcpListener>,
    /// The watch on the config file, when there is one (and it could be set up).
    file_watch: Option<FileWatch>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Listen(io::Error),
    #[error("{0}")]
    Admin(io::Error),
    #[error("TLS on {address}: {source}")]
    Tls {
        /// The listener whose certificates or settings failed.
        address: SocketAddr,
        source: TlsError,
    },
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
        Server::bind_file(config, None).await
    }

    /// As [`bind`](Server::bind), for a config read from `file`: reloads (the file
    /// watcher, SIGHUP, `POST /reload`) read that file again.
    pub async fn bind_file(config: Config, file: Option<PathBuf>) -> Result<Server, StartError> {
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
            previous: state.previous,
            canary: state
                .canary
                .filter(|c| c.color != state.live && c.weight > 0),
            pins_from: state.pins_from,
            ..Snapshot::new(
                state.live,
                [pool(Color::Blue)?, pool(Color::Green)?],
                config.routing.clone(),
            )
        };
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let upstreams = Arc::new(Upstreams::new(&config.upstream, Arc::clone(&snapshot)));
        let access_log = match &config.access_log {
            Some(path) => Some(AccessLog::start(path).map_err(StartError::AccessLog)?),
            None => None,
        };
        let telemetry = Arc::new(Telemetry::new(config.metrics.enabled, access_log));
        let tracker = Arc::new(Tracker::new(config.drain_timeout, upstreams, telemetry));
        let settings = Arc::new(ArcSwap::from_pointee(Settings::build(
            &config,
            Arc::clone(&snapshot),
            Arc::clone(&tracker),
        )));
        // The operators' backend states from the state file, on the backends still
        // configured.
        for backend in snapshot.load().pools.iter().flat_map(|p| p.backends.iter()) {
            if let Some(&admin) = state.backends.get(&backend.address) {
                backend.set_admin_state(admin);
            }
        }
        let switchboard = Arc::new(Switchboard::new(
            snapshot,
            Arc::clone(&tracker),
            config.state_file.clone(),
            report,
            (state.rollout, state.history),
            config.rollout.history,
        ));
        // Passed sockets (socket activation) first; whatever is not passed is bound.
        let mut wanted: Vec<activation::Endpoint> = config
            .listen
            .endpoints
            .iter()
            .map(|e| activation::Endpoint {
                name: e.name.clone(),
                address: e.address,
                backlog: config.listen.backlog,
            })
            .collect();
        wanted.extend(config.metrics.listen.map(|address| activation::Endpoint {
            name: Some("metrics".to_owned()),
            address,
            backlog: 128,
        }));
        let mut bound = activation::listeners(&wanted)
            .await
            .map_err(StartError::Listen)?;
        let metrics_listener = match config.metrics.listen {
            Some(_) => bound.pop(),
            None => None,
        };
        let listeners = serving(&config, bound)?;
        let certificates: Vec<Arc<Certs>> = listeners
            .iter()
            .filter_map(|b| match &b.serves {
                listener::Serves::Tls(t) => Some(Arc::clone(&t.certs)),
                _ => None,
            })
            .collect();
        let file_watch = file.as_deref().and_then(|file| {
            FileWatch::start(file)
                .map_err(|e| tracing::error!(file = %file.display(), error = %e, "cannot watch the config file; reload with SIGHUP or `cutover ctl reload`"))
                .ok()
        });
        let access = Arc::new(ArcSwap::from_pointee(config.admin.access.clone()));
        let reloader = Arc::new(Reloader::new(
            file,
            config.clone(),
            Arc::clone(&switchboard),
            Arc::clone(&settings),
            Arc::clone(&access),
            certificates.clone(),
        ));
        let rollouts = Rollouts::new(Arc::clone(&switchboard), config.rollout.clone());
        let admin = Arc::new(Admin {
            rollouts,
            switchboard,
            tracker: Arc::clone(&tracker),
            access,
            reloader: Arc::clone(&reloader),
        });

        let admin_listener =
            admin::bind(&config.admin.socket, config.admin.mode, config.admin.group)
                .await
                .map_err(StartError::Admin)?;
        Ok(Server {
            listeners,
            certificates,
            admin_listener,
            admin_path: config.admin.socket.clone(),
            settings,
            admin,
            reloader,
            max_connections: config
                .listen
                .max_connections
                .unwrap_or_else(listener::default_max_connections),
            grace: config.shutdown_grace,
            tracker,
            metrics_listener,
            file_watch,
        })
    }

    /// The bound address of the first listener, `[listen]` (useful when the config
    /// said port 0).
    pub fn proxy_addr(&self) -> io::Result<SocketAddr> {
        match self.listeners.first() {
            Some(b) => b.listener.local_addr(),
            None => Err(io::Error::other("no listener")),
        }
    }

    /// Every listener's bound address, in config order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|b| b.listener.local_addr().ok())
            .collect()
    }

    /// The certificates of every TLS listener: [`tls::reload_all`] reads them again
    /// (a reload does; a file change does by itself while running).
    pub fn certificates(&self) -> Vec<Arc<Certs>> {
        self.certificates.clone()
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

    /// What applies config files to this server: `main` sends SIGHUP to it and may add
    /// hooks around each reload (process notification).
    pub fn reloader(&self) -> Arc<Reloader> {
        Arc::clone(&self.reloader)
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
        // Health checkers, the config watcher, the idle connection sweep and the TCP
        // metrics endpoint; ended on shutdown.
        let mut background = tokio::task::JoinSet::new();
        let first_round = self.reloader.start_checkers().await;
        // READY=1 (and STATUS=, WATCHDOG=1) for a service manager, when one listens.
        let switchboard = Arc::clone(&self.admin.switchboard);
        background.spawn(Arc::clone(&self.admin.rollouts).drive(first_round.clone().wait()));
        background.spawn(Arc::clone(&self.admin.switchboard).retry_persist());
        background.spawn(sd_notify::supervise(first_round.wait(), move || {
            let snap = switchboard.snapshot();
            format!("live {}, generation {}", snap.live, snap.generation)
        }));
        if let Some(watch) = self.file_watch {
            background.spawn(watch.run(Arc::clone(&self.reloader)));
        }
        background.spawn(Arc::clone(self.tracker.upstreams()).sweep());
        if let Some(listener) = self.metrics_listener {
            background.spawn(admin::serve_metrics(listener, Arc::clone(&self.admin)));
        }
        let tracker = Arc::clone(&self.tracker);
        background.spawn(tls::watch(self.certificates.clone(), move |ok| {
            tracker.telemetry().certificates_reloaded(ok)
        }));
        let addrs: Vec<SocketAddr> = self
            .listeners
            .iter()
            .filter_map(|b| b.listener.local_addr().ok())
            .collect();
        tracing::info!(proxy = ?addrs, admin = %self.admin_path.display(), "cutover is serving");

        let connections = listener::serve(
            self.listeners,
            Arc::clone(&self.settings),
            self.max_connections,
            shutdown,
        )
        .await;
        sd_notify::stopping();
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
        self.reloader.stop_checkers().await;
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

/// What each client listener (bound or passed, in config order) serves. A redirecting
/// listener points at the first TLS listener's port (443 when there is none).
fn serving(config: &Config, sockets: Vec<TcpListener>) -> Result<Vec<listener::Bound>, StartError> {
    let mut bound = Vec::with_capacity(sockets.len());
    for (e, l) in config.listen.endpoints.iter().zip(sockets) {
        let serves = match &e.tls {
            Some(t) => listener::Serves::Tls(Arc::new(Terminator::new(t).map_err(|source| {
                StartError::Tls {
                    address: e.address,
                    source,
                }
            })?)),
            None => listener::Serves::Plain,
        };
        bound.push(listener::Bound {
            listener: l,
            serves,
        });
    }
    let https_port = bound
        .iter()
        .find(|b| matches!(b.serves, listener::Serves::Tls(_)))
        .and_then(|b| b.listener.local_addr().ok())
        .map_or(443, |a| a.port());
    for (b, e) in bound.iter_mut().zip(&config.listen.endpoints) {
        if e.redirect_https {
            b.serves = listener::Serves::Redirect { https_port };
        }
    }
    Ok(bound)
}

/// The routing state to start from: the state file when it is present and valid,
/// otherwise `routing.live` at generation 1.
fn initial_state(config: &Config) -> (switchboard::PersistedState, StateReport) {
    let fresh = switchboard::PersistedState::fresh(config.initial_live);
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
