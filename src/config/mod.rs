//! Configuration: TOML → `Raw*` structs (serde, unknown keys rejected) → validate →
//! [`Config`]. Nothing is half-applied: a file either yields a whole `Config` or a
//! [`ConfigError`] that names every key that is wrong and how to fix it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::color::Color;
use crate::rules::Policy;
use crate::upstream_tls::TlsClient;

mod backend_tls;
mod listeners;
mod raw;
mod routing;
mod shared;
mod validate;

pub use listeners::{CertFiles, DEFAULT_HANDSHAKE_TIMEOUT, Endpoint, SniCert, TlsConfig};
pub use routing::{DEFAULT_STEP, RolloutConfig};

/// Settings the command line gives over the config's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `run --listen ADDR`: the proxy's address.
    pub listen: Option<SocketAddr>,
    /// `run --socket PATH`: the admin socket.
    pub socket: Option<PathBuf>,
}

/// A validated configuration; every field has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect, and how long they have to send a request head.
    pub listen: ListenConfig,
    /// The admin socket `cutover ctl` talks to, and its file mode.
    pub admin: AdminConfig,
    /// Where the live colour and generation are persisted; `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
    /// Backends of each colour, indexed by [`Color::index`].
    pub pools: [PoolConfig; 2],
    /// The colour that is live on the very first start (afterwards the state file wins).
    pub initial_live: Color,
    /// What the command line replaced (`run --listen`, `--socket`); reloads of the
    /// file apply it again.
    pub overrides: Overrides,
    /// Timeouts and idle-connection limits for the connections to backends.
    pub upstream: UpstreamConfig,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub shutdown_grace: Duration,
    /// Worker threads of the async runtime; 1 runs everything on one thread.
    pub workers: usize,
    /// After a switch, how long the old colour's upgraded tunnels may stay open.
    pub drain_timeout: Duration,
    /// Whether requests are recorded for metrics, and the optional TCP endpoint for
    /// scrapes.
    pub metrics: MetricsConfig,
    /// Where the access log goes (`-` = stdout); `None` = no access log.
    pub access_log: Option<PathBuf>,
    /// Add `x-cutover-color` to responses, naming the colour that served them.
    pub color_header: bool,
    /// The rulebook's settings: `[limits]` on heads, `[http]`, `[forwarded]`.
    pub policy: Policy,
    /// Forced routes, the canary bucket key and session pinning (`[routing]`).
    pub routing: crate::routing::Routing,
    /// Staged rollout defaults, external gates and history (`[rollout]`).
    pub rollout: RolloutConfig,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Per-request recording (counters, histograms, windowed stats).
    pub enabled: bool,
    /// Also serve `GET /metrics` on this TCP address, for a Prometheus scrape.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// The TCP address clients connect to; port 0 picks a free port (see
    /// [`Server::proxy_addr`](crate::server::Server::proxy_addr)).
    pub address: SocketAddr,
    /// Every client listener in config order: the first is `[listen]` itself (its
    /// address is `address`), then each `[[listen.extra]]`.
    pub endpoints: Vec<Endpoint>,
    /// Time a client has to send a whole request head, from its first byte (slowloris
    /// guard).
    pub header_timeout: Duration,
    /// Connections the kernel queues before cutover accepts them: a burst beyond it
    /// costs each extra client a one-second SYN retry.
    pub backlog: u32,
    /// Open client connections at most; more are closed at once and counted. `None`:
    /// derived from the file descriptor limit when the listener starts.
    pub max_connections: Option<usize>,
    /// How long a keep-alive connection may sit between requests (HTTP/1) or with no
    /// open stream (HTTP/2) before it is closed.
    pub idle_timeout: Duration,
    /// The longest pause in a request body; past it a body must also average 1 KiB/s.
    pub body_timeout: Duration,
    /// The longest a write to a client may wait for it to read.
    pub write_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once; more are refused.
    pub max_streams: u32,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Path of the Unix socket the admin API listens on; removed when the server stops.
    pub socket: PathBuf,
    /// File mode of the socket; 0600 by default so only the owner can switch traffic.
    pub mode: u32,
    /// Who may read (status, metrics) and who may change routing, beyond who can open
    /// the socket.
    pub access: Access,
    /// Group the socket belongs to (its gid), so a deploy user in that group can open
    /// it with a mode such as 0o660; `None` leaves the process's group.
    pub group: Option<u32>,
}

/// Admin API permission levels, checked per request with the caller's SO_PEERCRED
/// credentials. A level without a list is open to anyone who can open the socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// `[admin.read]`: GET endpoints. Whoever may control may also read.
    pub read: Option<Allow>,
    /// `[admin.control]`: anything that changes state.
    pub control: Option<Allow>,
}

/// Users and groups allowed at one level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Allow {
    /// Whether a caller with these credentials is on the list.
    pub fn admits(&self, uid: Option<u32>, gid: Option<u32>) -> bool {
        uid.is_some_and(|u| self.uids.contains(&u)) || gid.is_some_and(|g| self.gids.contains(&g))
    }
}

impl Access {
    /// Whether the caller may use a level: `control` for changes, else read.
    pub fn admits(&self, control: bool, uid: Option<u32>, gid: Option<u32>) -> bool {
        let controls = self.control.as_ref().is_none_or(|a| a.admits(uid, gid));
        if control {
            return controls;
        }
        let may_control = self.control.as_ref().is_some_and(|a| a.admits(uid, gid));
        self.read.as_ref().is_none_or(|a| a.admits(uid, gid)) || may_control
    }
}

#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    /// `host:port` (or `https://host:port`) of each backend, in config order, without
    /// duplicates.
    pub backends: Vec<String>,
    /// Healthy, warm backends a switch to this pool needs; `None` = all of them.
    pub min_healthy: Option<usize>,
    /// How long a backend must have been healthy before it counts for the gate.
    pub warmup: Duration,
    /// Active checks; `None` = no probing (backends count as healthy unless ejected).
    pub health: Option<HealthConfig>,
    /// Passive ejection: when a failing backend is taken out of rotation, and for how
    /// long.
    pub ejection: EjectionConfig,
    /// `[pools.X.tls]`, built: how the pool's `https://` backends are verified and
    /// what client certificate they get. `Some` whenever the pool has one.
    pub tls: Option<TlsClient>,
}

/// Active HTTP health checks of a pool's backends.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Path probed with GET, e.g. `/healthz`.
    pub path: String,
    /// Time from one check of a backend to the next (default 2 s).
    pub interval: Duration,
    /// Time one check may take, connect included, before it counts as failed (default 1
    /// s).
    pub timeout: Duration,
    /// Inclusive range of statuses that count as healthy.
    pub expect_status: (u16, u16),
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures that take it down.
    pub fall: u32,
}

/// Passive ejection: a backend answering with errors is taken out for a cool-off.
#[derive(Debug, Clone, PartialEq)]
pub struct EjectionConfig {
    /// Consecutive connect failures or 5xx that eject; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// Cool-off of the first ejection; the n-th lasts n times as long (capped at 10x).
    pub base_time: Duration,
    /// At most this share of the pool is ejected at once, so a pool is never emptied.
    pub max_percent: u32,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            base_time: Duration::from_secs(10),
            max_percent: 50,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The longest a backend may pause in the middle of a response body.
    pub read_timeout: Duration,
    /// Time a connect to a backend may take before the request gets a 502 (default 2
    /// s); for an `https://` backend, the TLS handshake included.
    pub connect_timeout: Duration,
    /// Time a backend has to send response headers before the client gets 504.
    pub response_timeout: Duration,
    /// Idle pooled connections to a backend are closed after this long.
    pub idle_timeout: Duration,
    /// Most idle keep-alive connections kept per backend, both kinds together; one more
    /// is closed instead (default 256).
    pub max_idle_per_backend: usize,
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for cutover: {message}")]
    Parse {
        /// The file that is not valid TOML for cutover.
        path: PathBuf,
        /// The TOML parser's message, naming the line and the key (an unknown key
        /// included).
        message: String,
    },
    #[error("config {path} is invalid:\n{}", Problems(.problems))]
    Invalid {
        /// The file whose values are invalid.
        path: PathBuf,
        /// Every invalid key found, not just the first, each with how to fix it.
        problems: Vec<Problem>,
    },
}

/// One invalid key and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `pools.green.backends[1]`.
    pub key: String,
    /// What is wrong with the value and what to write instead.
    pub message: String,
}

struct Problems<'a>(&'a [Problem]);

/// Whether this process may create files in `dir` (access(2) with W_OK and X_OK).
fn writable_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Err(e) => return Err(format!("directory {} cannot be used: {e}", dir.display())),
        Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", dir.display())),
        Ok(_) => {}
    }
    let mode = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    rustix::fs::access(dir, mode).map_err(|e| {
        format!(
            "directory {} is not writable by this user: {}",
            dir.display(),
            std::io::Error::from(e)
        )
    })
}

/// The directory a file `path` is created in.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_bounded(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// [`load`](Config::load), then [`preflight`](Config::preflight): what `check`
    /// and a start read.
    pub fn load_checked(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::load(path)?;
        let problems = config.preflight();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let (raw, mut problems) = raw::parse(text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message: short_lines(message.trim_end()),
        })?;
        let config = validate::validate(raw, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }),
        }
    }

    /// What a start needs from the file system beyond the config's text, checked
    /// without changing anything: the access log can be written (or created), the
    /// state file's directory can take it and an existing one can be read, the admin
    /// socket's directory exists and is writable. `cutover check` and `cutover run`
    /// both refuse a config with any of these, each named by its key.
    pub fn preflight(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        if let Some(log) = &self.access_log {
            // access(2), not open(2): opening a FIFO with no reader would block.
            let usable = if log.exists() {
                rustix::fs::access(log, rustix::fs::Access::WRITE_OK).map_err(|e| {
                    format!(
                        "{} cannot be written by this user: {}",
                        log.display(),
                        std::io::Error::from(e)
                    )
                })
            } else {
                writable_dir(parent(log))
            };
            if let Err(message) = usable {
                problem("access_log.path", message);
            }
        }
        if let Some(file) = &self.state_file {
            let usable =
                writable_dir(parent(file)).and_then(|()| match std::fs::File::open(file) {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("{} cannot be read: {e}", file.display())),
                });
            if let Err(message) = usable {
                problem("state.file", message);
            }
        }
        if let Err(message) = writable_dir(parent(&self.admin.socket)) {
            problem("admin.socket", message);
        }
        problems
    }

    /// The config with the command line's `overrides` applied. `--listen` replaces
    /// the one listener's address; a config with several is refused (say which in the
    /// file).
    pub fn with_overrides(mut self, overrides: Overrides) -> Result<Config, String> {
        if let Some(address) = overrides.listen {
            match self.listen.endpoints.as_mut_slice() {
                [one] => {
                    one.address = address;
                    self.listen.address = address;
                }
                many => {
                    return Err(format!(
                        "--listen replaces the address of a config's one listener; this one \
                         has {}: change [listen] in the file instead",
                        many.len()
                    ));
                }
            }
        }
        if let Some(socket) = &overrides.socket {
            self.admin.socket.clone_from(socket);
        }
        self.overrides = overrides;
        Ok(self)
    }

    /// The embedded demo: proxy on 127.0.0.1:8080, admin socket `./cutover.sock`, the
    /// given in-process demo backends, blue live.
    pub fn demo(blue: SocketAddr, green: SocketAddr) -> Config {
        Config {
            listen: ListenConfig {
                address: SocketAddr::from(([127, 0, 0, 1], 8080)),
                endpoints: vec![Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 8080)),
                    name: None,
                    tls: None,
                    redirect_https: false,
                }],
                header_timeout: DEFAULT_HEADER_TIMEOUT,
                backlog: DEFAULT_BACKLOG,
                max_connections: None,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                body_timeout: DEFAULT_BODY_TIMEOUT,
                write_timeout: DEFAULT_WRITE_TIMEOUT,
                max_streams: DEFAULT_MAX_STREAMS,
            },
            admin: AdminConfig {
                socket: PathBuf::from("cutover.sock"),
                mode: DEFAULT_SOCKET_MODE,
                access: Access::default(),
                group: None,
            },
            state_file: None,
            pools: [
                PoolConfig {
                    backends: vec![blue.to_string()],
                    ..PoolConfig::default()
                },
                PoolConfig {
                    backends: vec![green.to_string()],
                    ..PoolConfig::default()
                },
            ],
            initial_live: Color::Blue,
            overrides: Overrides::default(),
            upstream: UpstreamConfig::default(),
            shutdown_grace: DEFAULT_GRACE,
            workers: validate::default_workers(),
            drain_timeout: DEFAULT_DRAIN,
            metrics: MetricsConfig {
                enabled: true,
                listen: None,
            },
            access_log: None,
            color_header: true,
            policy: Policy::default(),
            routing: crate::routing::Routing::default(),
            rollout: RolloutConfig::default(),
        }
    }
}

/// Largest config file read: a config is a few KiB; anything near this is a mistake
/// (a wrong path, a device), refused before it is read whole.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a config file of at most [`MAX_CONFIG_BYTES`], whatever its metadata says
/// (`/dev/zero` has no size): memory stays bounded.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    let read = file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if read as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_BYTES} bytes; is this the config file?"),
        ));
    }
    Ok(text)
}

/// At most this many characters of a value a user wrote are quoted back in a message.
const EXCERPT_CHARS: usize = 64;

/// A value from the file, quoted in a message: its first [`EXCERPT_CHARS`] characters
/// and how many more there were.
pub(super) struct Excerpt<'a>(pub(super) &'a str);

impl fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.chars().count();
        if total <= EXCERPT_CHARS {
            return write!(f, "{:?}", self.0);
        }
        let head: String = self.0.chars().take(EXCERPT_CHARS).collect();
        write!(f, "{head:?}… ({} more characters)", total - EXCERPT_CHARS)
    }
}

/// A parser message with each line cut to a readable length (the TOML parser quotes
/// the offending line, which may be megabytes long).
fn short_lines(message: &str) -> String {
    const LINE: usize = 200;
    message
        .lines()
        .map(|line| {
            let total = line.chars().count();
            if total <= LINE {
                line.to_owned()
            } else {
                let head: String = line.chars().take(LINE).collect();
                format!("{head}… ({} more characters)", total - LINE)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) const DEFAULT_BACKLOG: u32 = 1024;
pub(super) const DEFAULT_MAX_STREAMS: u32 = 100;
pub(super) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_SOCKET_MODE: u32 = 0o600;
pub(super) const DEFAULT_GRACE: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            read_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_backend: 1024,
        }
    }
}
