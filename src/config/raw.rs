//! The config file as written: serde structs that reject unknown keys. Nothing here is
//! checked beyond its TOML type; [`validate`](super::validate) does the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: RawListen,
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) state: Option<RawState>,
    pub(super) pools: BTreeMap<String, RawPool>,
    pub(super) routing: RawRouting,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) shutdown: RawShutdown,
    #[serde(default)]
    pub(super) runtime: RawRuntime,
    #[serde(default)]
    pub(super) drain: RawDrain,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    pub(super) access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) forwarded: RawForwarded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_request_head: Option<usize>,
    pub(super) max_headers: Option<usize>,
    pub(super) max_uri: Option<usize>,
    pub(super) max_response_head: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) headers_with_underscores: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwarded {
    #[serde(default)]
    pub(super) trusted: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) address: String,
    pub(super) header_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) socket: PathBuf,
    pub(super) mode: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) backends: Vec<String>,
    pub(super) min_healthy: Option<usize>,
    pub(super) warmup: Option<String>,
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) ejection: RawEjection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) expect_status: Option<String>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEjection {
    pub(super) consecutive_failures: Option<u32>,
    pub(super) base_time: Option<String>,
    pub(super) max_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    pub(super) live: String,
    #[serde(default)]
    pub(super) color_header: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) enabled: Option<bool>,
    pub(super) listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub(super) path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) connect_timeout: Option<String>,
    pub(super) response_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_idle_per_backend: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    pub(super) workers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    pub(super) grace: Option<String>,
}
