//! The config file as written: serde structs that reject unknown keys (all of them
//! reported at once, by [`parse`]). Nothing here is checked beyond its TOML type;
//! [`validate`](super::validate) does the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Problem;

/// The most unknown keys one file reports (each costs one more pass over the tree).
const MAX_UNKNOWN: usize = 50;

/// Parses `text` into a [`RawConfig`], reporting every unknown key rather than the
/// first: each one is recorded as a [`Problem`] (its dotted key, its line and the keys
/// allowed there), taken out of the tree, and the rest is read again, so a typo does
/// not hide the other problems of the file. Any other error (bad syntax, a value of
/// the wrong type) ends it; `Err` then holds the unknown keys found so far and that
/// error, one per line.
pub(super) fn parse(text: &str) -> Result<(RawConfig, Vec<Problem>), String> {
    let mut root = DeTable::parse(text).map_err(|e| e.to_string())?;
    let mut unknown: Vec<Problem> = Vec::new();
    loop {
        let de = toml::Deserializer::from(root.clone());
        match RawConfig::deserialize(de) {
            Ok(raw) => return Ok((raw, unknown)),
            Err(mut e) => {
                let span = e
                    .span()
                    .filter(|_| e.message().starts_with("unknown field"));
                let found = span
                    .as_ref()
                    .and_then(|span| take_key(root.get_mut(), span, ""));
                match found {
                    Some(key) if unknown.len() < MAX_UNKNOWN => {
                        let line = span.as_ref().map_or(0, |s| line_of(text, s.start));
                        unknown.push(Problem {
                            key,
                            message: format!("line {line}: {}", e.message()),
                        });
                    }
                    _ => {
                        e.set_input(Some(text));
                        let mut lines: Vec<String> = unknown
                            .iter()
                            .map(|p| format!("{}: {}", p.key, p.message))
                            .collect();
                        lines.push(e.to_string());
                        return Err(lines.join("\n"));
                    }
                }
            }
        }
    }
}

/// The 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).map_or(0, |head| head.matches('\n').count()) + 1
}

/// Removes from `table` (or a table or array below it) the key written at `span`,
/// returning its dotted path (`prefix` is the path of `table`).
fn take_key(
    table: &mut DeTable<'_>,
    span: &std::ops::Range<usize>,
    prefix: &str,
) -> Option<String> {
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let hit = table.keys().find(|k| k.span() == *span).cloned();
    if let Some(key) = hit {
        table.remove(&key);
        return Some(join(key.get_ref()));
    }
    for (key, value) in table.iter_mut() {
        let path = join(key.get_ref());
        if let Some(found) = take_in_value(value, span, &path) {
            return Some(found);
        }
    }
    None
}

fn take_in_value(
    value: &mut Spanned<DeValue<'_>>,
    span: &std::ops::Range<usize>,
    path: &str,
) -> Option<String> {
    match value.get_mut() {
        DeValue::Table(table) => take_key(table, span, path),
        DeValue::Array(items) => items
            .iter_mut()
            .enumerate()
            .find_map(|(i, item)| take_in_value(item, span, &format!("{path}[{i}]"))),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// `[listen]` (required): the client address and head timeout.
    pub(super) listen: RawListen,
    /// `[admin]` (required): the admin socket.
    pub(super) admin: RawAdmin,
    /// `[state]`: where routing changes are persisted; absent keeps them in memory
    /// only.
    #[serde(default)]
    pub(super) state: Option<RawState>,
    /// `[pools.blue]` and `[pools.green]`, keyed by name so that validation can name an
    /// unknown colour or a missing one.
    pub(super) pools: BTreeMap<String, RawPool>,
    /// `[routing]` (required): the colour live on first start, and the colour header.
    pub(super) routing: RawRouting,
    /// `[upstream]`: timeouts and idle limits of backend connections.
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    /// `[shutdown]`: the grace period for in-flight requests.
    #[serde(default)]
    pub(super) shutdown: RawShutdown,
    /// `[runtime]`: worker threads.
    #[serde(default)]
    pub(super) runtime: RawRuntime,
    /// `[drain]`: how long tunnels outlive a switch.
    #[serde(default)]
    pub(super) drain: RawDrain,
    /// `[metrics]`: per-request recording and the TCP scrape endpoint.
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    /// `[access_log]`: absent means no access log.
    pub(super) access_log: Option<RawAccessLog>,
    /// `[limits]`: the rulebook's limits on heads.
    #[serde(default)]
    pub(super) limits: RawLimits,
    /// `[http]`: what happens to field names with `_`.
    #[serde(default)]
    pub(super) http: RawHttp,
    /// `[forwarded]`: the peers whose X-Forwarded-For is extended.
    #[serde(default)]
    pub(super) forwarded: RawForwarded,
    /// `[rollout]`: defaults of staged rollouts, their external gates and history.
    #[serde(default)]
    pub(super) rollout: RawRollout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// Bytes, 1024 to 1 MiB (default 32 KiB); a larger request head gets 431.
    pub(super) max_request_head: Option<usize>,
    /// Fields per request head, 1 to 128 (default 100); more get 431.
    pub(super) max_headers: Option<usize>,
    /// Bytes of a request target, 16 to 1 MiB (default 8 KiB); a longer one gets 414.
    pub(super) max_uri: Option<usize>,
    /// Bytes, 1024 to 1 MiB (default 64 KiB); a larger response head is a 502.
    pub(super) max_response_head: Option<usize>,
    pub(super) max_body: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) idle_timeout: Option<String>,
    pub(super) body_timeout: Option<String>,
    pub(super) write_timeout: Option<String>,
    pub(super) max_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    /// `"drop"` (default), `"reject"` (400) or `"allow"`: what happens to a request
    /// field whose name has `_`.
    pub(super) headers_with_underscores: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwarded {
    /// Address ranges (`10.0.0.0/8`, or a bare address) whose X-Forwarded-For is
    /// extended rather than replaced.
    #[serde(default)]
    pub(super) trusted: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    /// `IP:port` the proxy listens on.
    pub(super) address: String,
    /// Duration a client has to send a whole request head (default `10s`).
    pub(super) header_timeout: Option<String>,
    pub(super) backlog: Option<u32>,
    /// `[listen.tls]`: terminate TLS on this listener.
    pub(super) tls: Option<RawTls>,
    /// Answer every request with a redirect to https (a plain listener only).
    pub(super) redirect_https: Option<bool>,
    /// Name of a socket passed by systemd (`FileDescriptorName=`) to serve here.
    pub(super) name: Option<String>,
    /// `[[listen.extra]]`: further listeners with the same timeouts and limits.
    #[serde(default)]
    pub(super) extra: Vec<RawEndpoint>,
}

/// One `[[listen.extra]]` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    /// `IP:port` it listens on.
    pub(super) address: String,
    /// Its `tls` table: terminate TLS here.
    pub(super) tls: Option<RawTls>,
    /// Answer every request with a redirect to https.
    pub(super) redirect_https: Option<bool>,
    /// Name of a socket passed by systemd to serve here.
    pub(super) name: Option<String>,
}

/// A listener's `tls` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// PEM file of the default certificate chain, leaf first.
    pub(super) cert: PathBuf,
    /// PEM file of its private key.
    pub(super) key: PathBuf,
    /// `[[listen.tls.sni]]`: certificates chosen by the name the client asks for.
    #[serde(default)]
    pub(super) sni: Vec<RawSni>,
    /// How long a client has to finish its handshake (default `10s`).
    pub(super) handshake_timeout: Option<String>,
    /// Session resumption: tickets and the session-id cache (default true).
    pub(super) resumption: Option<bool>,
}

/// A certificate served to clients asking for `name`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    /// A DNS name, or `*.example.com` for one label under it.
    pub(super) name: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Path of the admin Unix socket; must not be empty.
    pub(super) socket: PathBuf,
    /// File mode of the socket, as an octal literal such as `0o600` (the default).
    pub(super) mode: Option<u32>,
    /// Group of the socket: a name from /etc/group or a numeric gid.
    pub(super) group: Option<String>,
    /// `[admin.read]`: who may use the GET endpoints.
    pub(super) read: Option<RawAllow>,
    /// `[admin.control]`: who may change routing.
    pub(super) control: Option<RawAllow>,
}

/// An allow-list of users and groups, by numeric id.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    #[serde(default)]
    pub(super) uids: Vec<u32>,
    #[serde(default)]
    pub(super) gids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    /// The file routing changes are written to and restored from at start-up.
    pub(super) file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    /// `host:port` of each backend: at least one, and no address twice across the
    /// pools.
    pub(super) backends: Vec<String>,
    /// Ready backends a switch to this pool needs, 1 to the pool's size (default: all).
    pub(super) min_healthy: Option<usize>,
    /// Duration a backend must have been healthy to count for the gate (default 0).
    pub(super) warmup: Option<String>,
    /// `[pools.X.health]`: active checks; absent means none.
    pub(super) health: Option<RawHealth>,
    /// `[pools.X.ejection]`: passive ejection, defaults when absent.
    #[serde(default)]
    pub(super) ejection: RawEjection,
    /// `[pools.X.tls]`: how `https://` backends are verified; absent trusts the
    /// system's roots and presents no client certificate.
    pub(super) tls: Option<RawBackendTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTls {
    /// PEM file of the CA certificates to verify backends against, instead of the
    /// system's roots.
    pub(super) ca: Option<PathBuf>,
    /// PEM file of the client certificate chain presented to backends; needs `key`.
    pub(super) cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; needs `cert`.
    pub(super) key: Option<PathBuf>,
    /// The name backends' certificates are verified against (and sent as SNI),
    /// instead of each backend's host.
    pub(super) server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    /// Path probed with GET (default `/`).
    pub(super) path: Option<String>,
    /// Duration between checks of a backend (default `2s`).
    pub(super) interval: Option<String>,
    /// Duration one check may take (default `1s`).
    pub(super) timeout: Option<String>,
    /// Status or inclusive range that counts as healthy, `"204"` or `"200-399"` (the
    /// default).
    pub(super) expect_status: Option<String>,
    /// Consecutive successes that bring a backend up (default 2, at least 1).
    pub(super) rise: Option<u32>,
    /// Consecutive failures that take it down (default 3, at least 1).
    pub(super) fall: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEjection {
    /// Failures in a row that eject a backend (default 5; 0 turns ejection off).
    pub(super) consecutive_failures: Option<u32>,
    /// Duration of the first cool-off (default `10s`); later ones are longer.
    pub(super) base_time: Option<String>,
    /// Most of the pool, in percent, ejected at once (default 50, at most 100).
    pub(super) max_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    /// Duration the old colour's tunnels may stay open after a switch (default `30s`).
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    /// `"blue"` or `"green"`: the colour live on first start (the state file wins
    /// afterwards).
    pub(super) live: String,
    /// Add `x-cutover-color` to responses (default off).
    #[serde(default)]
    pub(super) color_header: bool,
    /// `[routing.bucket]`: what a canary split's sticky bucket is computed from.
    #[serde(default)]
    pub(super) bucket: Option<RawBucket>,
    /// `[routing.pinning]`: keep each session on the colour it started on.
    #[serde(default)]
    pub(super) pinning: Option<RawPinning>,
    /// `[[routing.force]]`: requests sent to a colour before any split.
    #[serde(default)]
    pub(super) force: Vec<RawForce>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBucket {
    /// `"cookie"` (default; cutover's own `cutover-bucket`), `"header"` or `"address"`.
    pub(super) by: String,
    /// The header's name, with `by = "header"`.
    pub(super) header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPinning {
    /// How long a session stays on the colour it started on, e.g. `"30m"`.
    pub(super) ttl: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForce {
    /// The colour matching requests go to.
    pub(super) to: String,
    /// Match on this header (one of `header`, `cookie`, `client`).
    pub(super) header: Option<String>,
    /// Match on this cookie.
    pub(super) cookie: Option<String>,
    /// Match on client address ranges (CIDR).
    pub(super) client: Option<Vec<String>>,
    /// With `header` or `cookie`: the exact value; any value when absent.
    pub(super) equals: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    /// Duration of a step given as a bare percentage (default `5m`).
    pub(super) step_duration: Option<String>,
    /// `"resume"` (default) or `"abort"`: what a rollout found in the state file at
    /// start does.
    pub(super) on_restart: Option<String>,
    /// URLs POSTed the rollout state before each step and before promotion; a non-2xx
    /// answer halts it.
    #[serde(default)]
    pub(super) webhooks: Vec<String>,
    /// The Prometheus server query gates are evaluated on, e.g. `"http://127.0.0.1:9090"`.
    pub(super) prometheus: Option<String>,
    /// Events kept in `/history` (default 200).
    pub(super) history: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// Per-request recording (default on).
    pub(super) enabled: Option<bool>,
    /// `IP:port` to also serve `GET /metrics` on, for Prometheus.
    pub(super) listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    /// File the access log is appended to; `-` is standard output.
    pub(super) path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) read_timeout: Option<String>,
    /// Duration a connect to a backend may take (default `2s`).
    pub(super) connect_timeout: Option<String>,
    /// Duration a backend has to send its response head (default `30s`).
    pub(super) response_timeout: Option<String>,
    /// Duration an idle keep-alive connection is kept (default `90s`).
    pub(super) idle_timeout: Option<String>,
    /// Idle keep-alive connections kept per backend (default 1024).
    pub(super) max_idle_per_backend: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    /// Worker threads, 1 to 1024 (default one per core).
    pub(super) workers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    /// Duration in-flight requests get after SIGTERM (default `30s`).
    pub(super) grace: Option<String>,
}
