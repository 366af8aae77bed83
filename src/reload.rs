//! Config reload: read → parse → validate → build → swap, or nothing.
//!
//! Every trigger (a change to the config file, seen by a watcher on its directory
//! because editors save by writing a temp file and renaming it; SIGHUP; `POST /reload`
//! and `cutover ctl reload`) calls the one [`Reloader::reload`], which runs one reload
//! at a time. A file that cannot be read, parsed or validated changes nothing: the
//! error, naming the key, goes to the log, to `GET /status` (`last_reload`) and to
//! `cutover_config_reloads_total{result="error"}`.
//!
//! What applies live, without dropping a connection:
//! - the pools, swapped through the [`Switchboard`] (live colour, previous colour and
//!   generation untouched): backends that stay keep their [`Backend`] (health,
//!   pooled connections, in-flight counts); a new one in a pool with health checks gets
//!   traffic only once its checks pass; a removed one gets no new request, its
//!   in-flight requests finish and its idle connections are closed;
//! - health checkers: started for new backends, stopped for removed ones, restarted
//!   where a pool's `[health]` changed;
//! - the connection [`Settings`] (`[limits]` but `max_connections`, `[http]`,
//!   `[forwarded]`, `listen.header_timeout`, `routing.color_header`,
//!   `upstream.response_timeout` and `read_timeout`): every connection accepted after
//!   the reload is served with them; open ones keep theirs until they close;
//! - `[admin.read]` and `[admin.control]`;
//! - the TLS listeners' certificates, read again from the same files.
//!
//! The rest needs a restart; a change to it is reported ("needs restart: KEY, …") in
//! the log and in the result while everything else still applies.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::config::{Access, Config, Endpoint};
use crate::error::ReloadError;
use crate::health::{Checkers, FirstRound};
use crate::pool::{Backend, Pool};
use crate::settings::{self, Settings};
use crate::snapshot::Snapshot;
use crate::switchboard::Switchboard;
use crate::tls::{self, Certs};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The config file changed on disk.
    File,
    /// SIGHUP.
    Signal,
    /// `POST /reload` on the admin socket (`cutover ctl reload`).
    Admin,
}

impl Trigger {
    /// Its name as the JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

/// Whether a reload applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The file applied (restart-needed keys aside).
    Ok,
    /// The file was refused; nothing changed.
    Error,
}

/// The result of one reload: the answer to `POST /reload` and `last_reload` on
/// `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    /// When it finished, RFC 3339 UTC (as `/status` writes times).
    pub time: String,
    /// What asked for it.
    pub trigger: Trigger,
    /// `ok` or `error`.
    pub result: Outcome,
    /// The error naming the key; on success "applied", and the keys that need a
    /// restart.
    pub message: String,
    /// Keys whose change was not applied because it needs a restart.
    #[serde(default)]
    pub restart_needed: Vec<String>,
    /// Backends added and removed, per pool that changed.
    #[serde(default)]
    pub pools: Vec<PoolChange>,
}

/// How one pool's backends changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolChange {
    /// The pool.
    pub color: Color,
    /// Addresses new to it.
    pub added: Vec<String>,
    /// Addresses no longer in it; they drain.
    pub removed: Vec<String>,
}

/// Called around every reload, whatever its trigger: where process-level
/// notification goes (systemd `RELOADING=1` before, `READY=1` after).
pub trait ReloadHook: Send + Sync {
    /// Before the file is read.
    fn starting(&self, trigger: Trigger);
    /// Once the outcome is known (and applied, when ok).
    fn finished(&self, report: &ReloadReport);
}

/// Applies config files to the running server; shared by the watcher, the signal
/// handler and the admin API.
pub struct Reloader {
    /// The config file; `None` for the embedded demo, which has none to reload.
    file: Option<PathBuf>,
    /// The config the process started with: a key that needs a restart is compared
    /// with it, so its change is reported on every reload until a restart applies it.
    started: Config,
    /// The only writer of the snapshot: the new pools go through it.
    switchboard: Arc<Switchboard>,
    /// The connection settings in force; replaced whole by a reload.
    settings: settings::Current,
    /// The admin allow-lists the admin API checks; replaced whole by a reload.
    access: Arc<ArcSwap<Access>>,
    /// The certificates of every TLS listener, read again by each reload that applies.
    certificates: Vec<Arc<Certs>>,
    /// The health checkers; its lock also runs one reload at a time.
    checkers: tokio::sync::Mutex<Checkers>,
    /// The last reload's result, for `/status`.
    last: Mutex<Option<ReloadReport>>,
    /// Called around every reload.
    hooks: Mutex<Vec<Arc<dyn ReloadHook>>>,
}

// === impl Reloader ===

impl Reloader {
    pub fn new(
        file: Option<PathBuf>,
        started: Config,
        switchboard: Arc<Switchboard>,
        settings: settings::Current,
        access: Arc<ArcSwap<Access>>,
        certificates: Vec<Arc<Certs>>,
    ) -> Reloader {
        Reloader {
            file,
            started,
            switchboard,
            settings,
            access,
            certificates,
            checkers: tokio::sync::Mutex::new(Checkers::default()),
            last: Mutex::new(None),
            hooks: Mutex::new(Vec::new()),
        }
    }

    /// The config file reloads read, if there is one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Adds a hook called around every later reload.
    pub fn add_hook(&self, hook: Arc<dyn ReloadHook>) {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push(hook);
        }
    }

    /// The last reload's result, if any has run.
    pub fn last(&self) -> Option<ReloadReport> {
        self.last.lock().ok().and_then(|last| last.clone())
    }

    /// Starts the health checkers of the current pools; the returned round resolves
    /// once each has probed once.
    pub async fn start_checkers(&self) -> FirstRound {
        let snapshot = self.switchboard.snapshot();
        self.checkers.lock().await.sync(&snapshot.pools)
    }

    /// Stops every health checker (shutdown).
    pub async fn stop_checkers(&self) {
        self.checkers.lock().await.shutdown().await;
    }

    /// Reloads the config file: applies all of it that can change live, or nothing.
    /// One at a time: a reload asked for while one runs starts after it.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
        let mut checkers = self.checkers.lock().await;
        let hooks = self.hooks.lock().map(|h| h.clone()).unwrap_or_default();
        for hook in &hooks {
            hook.starting(trigger);
        }
        let result = self.apply(trigger, &mut checkers).await;
        let report = match &result {
            Ok(report) => report.clone(),
            Err(e) => report(
                trigger,
                Outcome::Error,
                e.to_string(),
                Vec::new(),
                Vec::new(),
            ),
        };
        self.record(&report);
        for hook in &hooks {
            hook.finished(&report);
        }
        result
    }

    async fn apply(
        &self,
        trigger: Trigger,
        checkers: &mut Checkers,
    ) -> Result<ReloadReport, ReloadError> {
        let path = self.file.clone().ok_or(ReloadError::NoFile)?;
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??;
        // The command line's overrides hold for the file read again, as at start.
        let config = config
            .with_overrides(self.started.overrides.clone())
            .map_err(ReloadError::Override)?;
        let (old, new) = self
            .switchboard
            .reconfigure(config.routing.clone(), |current| {
                build_pools(&config, current)
            })
            .await?;
        let current = self.settings.load_full();
        self.settings.store(Arc::new(Settings::build(
            &config,
            Arc::clone(&current.proxy.snapshot),
            Arc::clone(&current.proxy.tracker),
        )));
        self.access.store(Arc::new(config.admin.access.clone()));
        // Checkers new to this reload start at once; nothing waits for their first
        // round (their backends are out of rotation until they pass).
        drop(checkers.sync(&new.pools));
        let pools = changes(&old, &new);
        // TLS: certificates and keys are reloaded here too (SIGHUP included), after the
        // file applied and before the result is reported; a bad certificate keeps the
        // old one and its error joins the report.
        let telemetry = current.proxy.tracker.telemetry();
        let certificates = tls::reload_all(&self.certificates, &|ok| {
            telemetry.certificates_reloaded(ok)
        });
        let restart = restart_needed(&self.started, &config);
        let mut message = if restart.is_empty() {
            "applied".to_owned()
        } else {
            format!("applied; needs restart: {}", restart.join(", "))
        };
        if !certificates.is_empty() {
            message.push_str(&format!(
                "; certificates not reloaded (the previous ones are served): {}",
                certificates.join("; ")
            ));
        }
        Ok(report(trigger, Outcome::Ok, message, restart, pools))
    }

    /// The log line, the counter and `last_reload`.
    fn record(&self, report: &ReloadReport) {
        let ok = report.result == Outcome::Ok;
        if ok {
            let pools: Vec<String> = report.pools.iter().map(PoolChange::summary).collect();
            tracing::info!(
                trigger = report.trigger.as_str(),
                pools = %pools.join("; "),
                restart_needed = %report.restart_needed.join(", "),
                "config reloaded"
            );
            if !report.restart_needed.is_empty() {
                tracing::warn!(
                    keys = %report.restart_needed.join(", "),
                    "config reloaded, but these changes need a restart: needs restart: {}",
                    report.restart_needed.join(", ")
                );
            }
        } else {
            tracing::error!(trigger = report.trigger.as_str(), error = %report.message, "config reload failed; the running config is unchanged");
        }
        self.settings.load().proxy.tracker.telemetry().reloaded(ok);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(report.clone());
        }
    }
}

fn report(
    trigger: Trigger,
    result: Outcome,
    message: String,
    restart_needed: Vec<String>,
    pools: Vec<PoolChange>,
) -> ReloadReport {
    ReloadReport {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        trigger,
        result,
        message,
        restart_needed,
        pools,
    }
}

/// Both pools from `config`, reusing `current`'s backends by address. A new backend of
/// a pool with health checks starts out of rotation until they pass.
fn build_pools(config: &Config, current: &Snapshot) -> Result<[Arc<Pool>; 2], ReloadError> {
    let pool = |color: Color| {
        let wanted = &config.pools[color.index()];
        Pool::rebuild(wanted, &current.pool(color).backends)
            .map(Arc::new)
            .map_err(|source| ReloadError::Backend {
                color,
                address: wanted.backends.join(", "),
                source: Box::new(source),
            })
    };
    Ok([pool(Color::Blue)?, pool(Color::Green)?])
}

/// What changed per pool; removed backends' idle connections are closed here (their
/// in-flight requests finish on the connections they hold).
fn changes(old: &Snapshot, new: &Snapshot) -> Vec<PoolChange> {
    let absent = |list: &[Arc<Backend>], b: &Arc<Backend>| !list.iter().any(|x| Arc::ptr_eq(x, b));
    let mut out = Vec::new();
    for color in Color::ALL {
        let (before, after) = (&old.pool(color).backends, &new.pool(color).backends);
        let removed: Vec<&Arc<Backend>> = before.iter().filter(|b| absent(after, b)).collect();
        for backend in &removed {
            let closed = backend.idle.clear();
            tracing::info!(%color, backend = %backend.address, in_flight = backend.in_flight(), idle_closed = closed, "backend removed; draining");
        }
        let added: Vec<String> = after
            .iter()
            .filter(|b| absent(before, b))
            .map(|b| b.address.clone())
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            out.push(PoolChange {
                color,
                added,
                removed: removed.iter().map(|b| b.address.clone()).collect(),
            });
        }
    }
    out
}

/// The keys whose value in `new` differs from the running one and cannot change
/// without a restart.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let checks: [(&str, bool); 17] = [
        (
            "listen.address",
            running.listen.address != new.listen.address,
        ),
        (
            "listen.tls, listen.extra",
            listeners_but_address(running) != listeners_but_address(new),
        ),
        (
            "listen.backlog",
            running.listen.backlog != new.listen.backlog,
        ),
        (
            "limits.max_connections",
            running.listen.max_connections != new.listen.max_connections,
        ),
        ("admin.socket", running.admin.socket != new.admin.socket),
        ("admin.mode", running.admin.mode != new.admin.mode),
        ("admin.group", running.admin.group != new.admin.group),
        ("state.file", running.state_file != new.state_file),
        ("runtime.workers", running.workers != new.workers),
        (
            "metrics.enabled",
            running.metrics.enabled != new.metrics.enabled,
        ),
        (
            "metrics.listen",
            running.metrics.listen != new.metrics.listen,
        ),
        ("access_log.path", running.access_log != new.access_log),
        (
            "upstream.connect_timeout",
            running.upstream.connect_timeout != new.upstream.connect_timeout,
        ),
        (
            "upstream.idle_timeout",
            running.upstream.idle_timeout != new.upstream.idle_timeout,
        ),
        (
            "upstream.max_idle_per_backend",
            running.upstream.max_idle_per_backend != new.upstream.max_idle_per_backend,
        ),
        (
            "shutdown.grace",
            running.shutdown_grace != new.shutdown_grace,
        ),
        ("drain.timeout", running.drain_timeout != new.drain_timeout),
    ];
    checks
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| (*key).to_owned())
        .collect()
}

/// Every listener as configured, but the first one's address (`listen.address`, its
/// own key): a change to TLS files, SNI entries or extra listeners needs a restart.
fn listeners_but_address(config: &Config) -> Vec<Endpoint> {
    let mut endpoints = config.listen.endpoints.clone();
    if let Some(first) = endpoints.first_mut() {
        first.address = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    }
    endpoints
}

// === impl PoolChange ===

impl PoolChange {
    /// `blue: +127.0.0.1:9001 -127.0.0.1:9003`, for the log line.
    pub fn summary(&self) -> String {
        let added = self.added.iter().map(|a| format!(" +{a}"));
        let removed = self.removed.iter().map(|a| format!(" -{a}"));
        format!(
            "{}:{}",
            self.color,
            added.chain(removed).collect::<String>()
        )
    }
}

// === the file watcher ===

/// How long the file must stay quiet before a change is reloaded: a file written in
/// several steps (or saved as temp file + rename) becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// A watch on the config file's directory (editors replace the file by rename, which a
/// watch on the file itself would lose). Set up when the server binds, so no change
/// made after that is missed; [`run`](FileWatch::run) reloads after each change.
pub struct FileWatch {
    /// The config file, for the log lines.
    file: PathBuf,
    /// Kept alive: dropping it ends the watch.
    _watcher: notify::RecommendedWatcher,
    /// Gets a message when an event names the file (at most one waits).
    changed: tokio::sync::mpsc::Receiver<()>,
}

// === impl FileWatch ===

impl FileWatch {
    /// Starts watching `file`'s directory for events that name `file`.
    pub fn start(file: &Path) -> notify::Result<FileWatch> {
        let (tx, changed) = tokio::sync::mpsc::channel::<()>(1);
        Ok(FileWatch {
            file: file.to_owned(),
            _watcher: watcher(file, tx)?,
            changed,
        })
    }

    /// Reloads after each change to the file once it has been quiet for
    /// [`DEBOUNCE`]. Runs until its task is dropped.
    pub async fn run(mut self, reloader: Arc<Reloader>) {
        tracing::info!(file = %self.file.display(), "watching the config file for changes");
        while self.changed.recv().await.is_some() {
            // Quiet for DEBOUNCE: each further event restarts the wait.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, self.changed.recv()).await {}
            let _ = reloader.reload(Trigger::File).await;
        }
    }
}

/// A watcher on `file`'s directory that sends on `tx` when an event names `file`.
fn watcher(
    file: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            // Full: a reload is already due, which will read the latest file.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
