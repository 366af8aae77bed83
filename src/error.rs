//! Error enums at the module boundaries, each mapped to an HTTP status in one place.

use std::time::Duration;

use http::StatusCode;

use crate::color::Color;
use crate::rules::blame::Fault;
use crate::upstream_tls::TlsFailure;

/// Why a proxied request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no healthy backend in the {color} pool")]
    NoBackend {
        /// The colour routed to, whose pool had no available backend.
        color: Color,
    },
    #[error("backend {backend} ({color}) refused or could not be reached: {cause}")]
    Connect {
        /// The backend's `host:port`, for the log line; the client's answer never names
        /// it.
        backend: String,
        /// The colour the request was routed to.
        color: Color,
        /// The connect error (refused, timed out, ...), as text.
        cause: String,
    },
    #[error("backend {backend} ({color}): {failure}")]
    BackendTls {
        /// The backend's `https://host:port`, for the log line.
        backend: String,
        /// The colour the request was routed to.
        color: Color,
        /// Why the handshake failed; the client's 502 names the reason.
        failure: TlsFailure,
    },
    #[error("backend {backend} ({color}) failed before sending a response: {cause}")]
    Upstream {
        /// The backend's `host:port`, for the log line.
        backend: String,
        /// The colour the request was routed to.
        color: Color,
        /// The transport or protocol error, as text.
        cause: String,
    },
    #[error("backend {backend} ({color}) sent no response headers within {after:?}")]
    Timeout {
        /// The backend's `host:port`, for the log line.
        backend: String,
        /// The colour the request was routed to.
        color: Color,
        /// The response timeout that passed (`upstream.response_timeout`).
        after: Duration,
    },
    /// Its colour's drain deadline passed before the backend answered.
    #[error("the {color} drain deadline passed before {backend} answered")]
    Drained { backend: String, color: Color },
    /// The client's request body broke off or was malformed while it was being sent on.
    #[error("the client's request body to {backend} ({color}) was malformed or cut short: {cause}")]
    ClientBody {
        /// The backend the body was being sent to, for the log line.
        backend: String,
        /// The colour the request was routed to.
        color: Color,
        /// What went wrong with the client's body, as text.
        cause: String,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::BackendTls { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Drained { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whose fault it is: only a backend's counts against it.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::ClientBody { .. } => Fault::Client,
            ProxyError::Drained { .. } => Fault::Drain,
            _ => Fault::Backend,
        }
    }

    /// The short body the client sees; backend addresses stay in the log.
    pub fn client_message(&self) -> &'static str {
        match self {
            ProxyError::NoBackend { .. } => "503 Service Unavailable: no healthy backend\n",
            ProxyError::Connect { .. } => "502 Bad Gateway: backend unreachable\n",
            // The reason (an untrusted or misnamed certificate) is the operator's to fix,
            // and says nothing of where the backend is.
            ProxyError::BackendTls { failure, .. } => failure.answer,
            ProxyError::Upstream { .. } => "502 Bad Gateway: backend failed before responding\n",
            ProxyError::Timeout { .. } => "504 Gateway Timeout: backend did not respond in time\n",
            ProxyError::ClientBody { .. } => "400 Bad Request: invalid request body\n",
            ProxyError::Drained { .. } => {
                "503 Service Unavailable: the old colour's drain deadline passed\n"
            }
        }
    }
}

/// Why the switchboard refused or failed a change.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error(
        "generation is {actual}, not the expected {expected}: someone else changed routing; \
         read /status and retry with the current generation"
    )]
    StaleGeneration {
        /// The generation the caller passed as `expect_generation`.
        expected: u64,
        /// The current generation, to retry with after reading `/status`.
        actual: u64,
    },
    #[error("nothing to roll back to: no switch has happened since this state began")]
    NoPrevious,
    #[error(
        "refused: the {to} pool is not ready: {}; fix the backends, wait, or pass \"force\": true",
        .report.summary()
    )]
    Gate {
        /// The colour the switch asked for.
        to: Color,
        /// The gate's verdict per backend; the admin API sends it as the 409's `gate`.
        report: crate::health::GateReport,
    },
    #[error("{color} is the live colour; a canary goes to the other one")]
    CanaryIsLive {
        /// The colour asked for, which is live already.
        color: Color,
    },
    #[error("{0}")]
    Rollout(String),
    #[error("no backend {0} in either pool; GET /status lists them as configured")]
    NoBackend(String),
    #[error("could not persist the new state to {path}: {source}; routing is unchanged")]
    Persist {
        /// The state file that could not be written.
        path: String,
        /// The I/O error; routing was left unchanged.
        source: std::io::Error,
    },
}

/// A failed admin request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "no such endpoint {0}; try GET /status, POST /switch, POST /rollback, POST /canary, POST /rollout, GET /rollout, GET /history, POST /reload, POST /backends/{{ADDRESS}}/state, GET /metrics"
    )]
    NotFound(String),
    #[error("no rollout has run yet; start one with POST /rollout")]
    NoRollout,
    #[error(
        "uid {uid} may not {level} here; ask for it to be added to [admin.{level}] uids (or its group to gids)"
    )]
    Forbidden { uid: String, level: &'static str },
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        /// The method the request used.
        method: String,
        /// The endpoint it was sent to.
        path: String,
        /// The one method the endpoint takes; also the 405's `Allow` header.
        allow: &'static str,
    },
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) | AdminError::NoRollout => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AdminError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::Switch(SwitchError::Persist { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::Switch(SwitchError::NoBackend(_)) => StatusCode::NOT_FOUND,
            AdminError::Switch(_) => StatusCode::CONFLICT,
            AdminError::Reload(ReloadError::NoFile) => StatusCode::CONFLICT,
            // The request was fine; the file it asked to apply is not.
            AdminError::Reload(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "nothing to reload: this process runs the embedded demo, which has no config file; \
         start it with `cutover run --config FILE`"
    )]
    NoFile,
    #[error("the reload did not finish ({0}); the running config is unchanged")]
    Task(String),
    #[error("{0}; the running config is unchanged")]
    Override(String),
    #[error("{0}\nthe running config is unchanged")]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "pools.{color}.backends: {address} is not a usable backend address ({source}); \
         the running config is unchanged"
    )]
    Backend {
        /// The pool the address is in.
        color: Color,
        /// The pool's configured backends, comma-separated.
        address: String,
        /// Why one of them is not a valid URI authority, or its TLS settings are not
        /// usable.
        source: Box<crate::pool::PoolError>,
    },
}
