//! From the file's [`raw`](super::raw) structs to a [`Config`]: every key checked,
//! every problem named with its key and how to fix it, nothing half-built.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::backend_tls;
use super::listeners;
use super::raw::*;
use super::*;
use crate::color::Color;
use crate::rules::forwarded::Cidr;
use crate::rules::{Limits, Policy, Underscores};

pub(super) fn validate(raw: RawConfig, problems: &mut Vec<Problem>) -> Option<Config> {
    let address = raw.listen.address.parse::<SocketAddr>().map_err(|_| {
        problem(
            problems,
            "listen.address",
            format!(
                "{:?} is not an IP:port address; write e.g. \"127.0.0.1:8080\" or \"[::]:80\"",
                Excerpt(&raw.listen.address)
            ),
        )
    });
    let header_timeout = duration(
        problems,
        "listen.header_timeout",
        raw.listen.header_timeout.clone(),
        DEFAULT_HEADER_TIMEOUT,
    );

    let mode = raw.admin.mode.unwrap_or(DEFAULT_SOCKET_MODE);
    if mode & !0o777 != 0 {
        problem(
            problems,
            "admin.mode",
            format!("{mode:#o} is not a file mode; write an octal literal such as 0o600"),
        );
    }
    if raw.admin.socket.as_os_str().is_empty() {
        problem(
            problems,
            "admin.socket",
            "must be a path, e.g. \"/run/cutover/admin.sock\"".into(),
        );
    }

    let pools = pools(raw.pools, problems);

    let metrics_listen = raw.metrics.listen.as_deref().and_then(|text| {
        let parsed = text.parse::<SocketAddr>();
        if parsed.is_err() {
            problem(
                problems,
                "metrics.listen",
                format!(
                    "{:?} is not an IP:port address; write e.g. \"127.0.0.1:9464\"",
                    Excerpt(text)
                ),
            );
        }
        parsed.ok()
    });
    if raw
        .access_log
        .as_ref()
        .is_some_and(|a| a.path.as_os_str().is_empty())
    {
        problem(
            problems,
            "access_log.path",
            "must be a file path or \"-\" for stdout".into(),
        );
    }
    let initial_live = raw.routing.live.parse::<Color>().map_err(|_| {
        problem(
            problems,
            "routing.live",
            format!(
                "unknown colour {:?}; use \"blue\" or \"green\"",
                Excerpt(&raw.routing.live)
            ),
        )
    });

    let d = UpstreamConfig::default();
    let u = raw.upstream;
    let upstream = UpstreamConfig {
        read_timeout: duration(
            problems,
            "upstream.read_timeout",
            u.read_timeout,
            d.read_timeout,
        ),
        connect_timeout: duration(
            problems,
            "upstream.connect_timeout",
            u.connect_timeout,
            d.connect_timeout,
        ),
        response_timeout: duration(
            problems,
            "upstream.response_timeout",
            u.response_timeout,
            d.response_timeout,
        ),
        idle_timeout: duration(
            problems,
            "upstream.idle_timeout",
            u.idle_timeout,
            d.idle_timeout,
        ),
        max_idle_per_backend: u.max_idle_per_backend.unwrap_or(d.max_idle_per_backend),
    };
    let shutdown_grace = duration(
        problems,
        "shutdown.grace",
        raw.shutdown.grace,
        DEFAULT_GRACE,
    );
    let workers = raw.runtime.workers.unwrap_or_else(default_workers);
    if !(1..=1024).contains(&workers) {
        problem(
            problems,
            "runtime.workers",
            format!("{workers} is out of range; use 1 to 1024 (default: one per core)"),
        );
    }

    let policy = policy(&raw.limits, &raw.http, &raw.forwarded, problems);
    let backlog = raw.listen.backlog.unwrap_or(DEFAULT_BACKLOG);
    if !(1..=65535).contains(&backlog) {
        problem(
            problems,
            "listen.backlog",
            format!(
                "{backlog} is out of range; use 1 to 65535 (the kernel caps it at net.core.somaxconn)"
            ),
        );
    }
    if raw.limits.max_connections == Some(0) {
        problem(
            problems,
            "limits.max_connections",
            "must be at least 1 (leave it out to derive it from the file descriptor limit)".into(),
        );
    }
    let idle_timeout = duration(
        problems,
        "limits.idle_timeout",
        raw.limits.idle_timeout.clone(),
        DEFAULT_IDLE_TIMEOUT,
    );
    let max_streams = raw.limits.max_streams.unwrap_or(DEFAULT_MAX_STREAMS);
    if max_streams == 0 {
        problem(
            problems,
            "limits.max_streams",
            "must be at least 1 (HTTP/2 streams a connection may have open)".into(),
        );
    }
    let body_timeout = duration(
        problems,
        "limits.body_timeout",
        raw.limits.body_timeout.clone(),
        DEFAULT_BODY_TIMEOUT,
    );
    let endpoints = listeners::endpoints(&raw.listen, address.ok(), problems);
    let routing_rules = super::routing::routing(&raw.routing, problems);
    let rollout = super::routing::rollout(&raw.rollout, problems);
    Some(Config {
        listen: ListenConfig {
            address: address.ok()?,
            endpoints,
            header_timeout,
            backlog,
            max_connections: raw.limits.max_connections,
            idle_timeout,
            body_timeout,
            write_timeout: duration(
                problems,
                "limits.write_timeout",
                raw.limits.write_timeout.clone(),
                DEFAULT_WRITE_TIMEOUT,
            ),
            max_streams,
        },
        admin: AdminConfig {
            group: raw.admin.group.as_deref().and_then(|g| {
                let gid = group_id(g);
                if gid.is_none() {
                    problem(
                        problems,
                        "admin.group",
                        format!(
                            "no group {:?} on this machine; create it (groupadd) or give a numeric gid",
                            Excerpt(g)
                        ),
                    );
                }
                gid
            }),
            socket: raw.admin.socket,
            mode,
            access: Access {
                read: raw.admin.read.map(|a| Allow {
                    uids: a.uids,
                    gids: a.gids,
                }),
                control: raw.admin.control.map(|a| Allow {
                    uids: a.uids,
                    gids: a.gids,
                }),
            },
        },
        state_file: raw.state.map(|s| s.file),
        pools: pools?,
        initial_live: initial_live.ok()?,
        overrides: super::Overrides::default(),
        upstream,
        shutdown_grace,
        workers,
        drain_timeout: duration(problems, "drain.timeout", raw.drain.timeout, DEFAULT_DRAIN),
        metrics: MetricsConfig {
            enabled: raw.metrics.enabled.unwrap_or(true),
            listen: metrics_listen,
        },
        access_log: raw.access_log.map(|a| a.path),
        color_header: raw.routing.color_header,
        policy,
        routing: routing_rules,
        rollout,
    })
}

/// `[limits]`, `[http]` and `[forwarded]`: the rulebook's settings.
fn policy(
    limits: &RawLimits,
    http: &RawHttp,
    forwarded: &RawForwarded,
    problems: &mut Vec<Problem>,
) -> Policy {
    let d = Limits::default();
    let mut size = |key: &str, value: Option<usize>, default: usize, range: (usize, usize)| {
        let v = value.unwrap_or(default);
        if !(range.0..=range.1).contains(&v) {
            problem(
                problems,
                &format!("limits.{key}"),
                format!(
                    "{v} is out of range; use {} to {} (default {default})",
                    range.0, range.1
                ),
            );
            return default;
        }
        v
    };
    const MIB: usize = 1024 * 1024;
    let limits = Limits {
        max_request_head: size(
            "max_request_head",
            limits.max_request_head,
            d.max_request_head,
            (1024, MIB),
        ),
        max_headers: size(
            "max_headers",
            limits.max_headers,
            d.max_headers,
            (1, crate::rules::MAX_FIELDS),
        ),
        max_uri: size("max_uri", limits.max_uri, d.max_uri, (16, MIB)),
        max_response_head: size(
            "max_response_head",
            limits.max_response_head,
            d.max_response_head,
            (1024, MIB),
        ),
        max_body: limits.max_body.unwrap_or(d.max_body),
    };
    let underscores = match http.headers_with_underscores.as_deref() {
        None | Some("drop") => Underscores::Drop,
        Some("reject") => Underscores::Reject,
        Some("allow") => Underscores::Allow,
        Some(other) => {
            problem(
                problems,
                "http.headers_with_underscores",
                format!(
                    "{:?} is not one of \"drop\", \"reject\", \"allow\"",
                    Excerpt(other)
                ),
            );
            Underscores::Drop
        }
    };
    let mut trusted = Vec::with_capacity(forwarded.trusted.len());
    for (i, text) in forwarded.trusted.iter().enumerate() {
        match text.parse::<Cidr>() {
            Ok(range) => trusted.push(range),
            Err(e) => problem(problems, &format!("forwarded.trusted[{i}]"), e.to_string()),
        }
    }
    Policy {
        limits,
        underscores,
        trusted,
    }
}

/// A group's gid: a number as it is, a name looked up in /etc/group.
fn group_id(text: &str) -> Option<u32> {
    if let Ok(gid) = text.parse::<u32>() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut parts = line.split(':');
        (parts.next()? == text).then_some(())?;
        parts.nth(1)?.parse().ok()
    })
}

/// One worker per available core.
pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pools(raw: BTreeMap<String, RawPool>, problems: &mut Vec<Problem>) -> Option<[PoolConfig; 2]> {
    let mut out: [Option<PoolConfig>; 2] = [None, None];
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, pool) in raw {
        let Ok(color) = name.parse::<Color>() else {
            problem(
                problems,
                &format!("pools.{name}"),
                "unknown colour; the pools are [pools.blue] and [pools.green]".into(),
            );
            continue;
        };
        if pool.backends.is_empty() {
            problem(
                problems,
                &format!("pools.{name}.backends"),
                "is empty; list at least one backend as \"host:port\"".into(),
            );
        }
        let mut backends = Vec::with_capacity(pool.backends.len());
        for (i, text) in pool.backends.iter().enumerate() {
            let key = format!("pools.{name}.backends[{i}]");
            let addr = match backend_tls::backend(text, backend_address) {
                Ok(addr) => addr,
                Err(message) => {
                    problem(problems, &key, message);
                    continue;
                }
            };
            let endpoint = backend_tls::endpoint(&addr).to_owned();
            if let Some(first) = seen.insert(endpoint, key.clone()) {
                problem(
                    problems,
                    &key,
                    format!(
                        "{addr} is listed twice (first at {first}); a backend belongs to one pool once"
                    ),
                );
                continue;
            }
            backends.push(addr);
        }
        let key = format!("pools.{name}");
        if let Some(n) = pool.min_healthy
            && (n == 0 || n > pool.backends.len())
        {
            problem(
                problems,
                &format!("{key}.min_healthy"),
                format!(
                    "{n} is out of range; use 1 to {} (the pool's size)",
                    pool.backends.len()
                ),
            );
        }
        let warmup = duration(
            problems,
            &format!("{key}.warmup"),
            pool.warmup,
            Duration::ZERO,
        );
        let health = pool.health.map(|h| health(h, &key, problems));
        let ejection = ejection(pool.ejection, &key, problems);
        let tls = backend_tls::pool_tls(pool.tls, &backends, &key, problems);
        out[color.index()] = Some(PoolConfig {
            backends,
            min_healthy: pool.min_healthy,
            warmup,
            health,
            ejection,
            tls,
        });
    }
    for color in Color::ALL {
        if out[color.index()].is_none() {
            problem(
                problems,
                &format!("pools.{color}"),
                format!("is missing; add a [pools.{color}] table with backends = [\"host:port\"]"),
            );
        }
    }
    let [blue, green] = out;
    Some([blue?, green?])
}

fn health(raw: RawHealth, pool: &str, problems: &mut Vec<Problem>) -> HealthConfig {
    let key = |k: &str| format!("{pool}.health.{k}");
    let path = raw.path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        problem(
            problems,
            &key("path"),
            format!(
                "{:?} is not a request path; write e.g. \"/healthz\"",
                Excerpt(&path)
            ),
        );
    }
    let interval = duration(
        problems,
        &key("interval"),
        raw.interval,
        Duration::from_secs(2),
    );
    let timeout = duration(
        problems,
        &key("timeout"),
        raw.timeout,
        Duration::from_secs(1),
    );
    let expect_status = match raw.expect_status.as_deref().map(status_range) {
        None => (200, 399),
        Some(Some(range)) => range,
        Some(None) => {
            problem(
                problems,
                &key("expect_status"),
                "is not a status range; write e.g. \"200-399\" or \"204\"".into(),
            );
            (200, 399)
        }
    };
    let (rise, fall) = (raw.rise.unwrap_or(2), raw.fall.unwrap_or(3));
    for (k, v) in [("rise", rise), ("fall", fall)] {
        if v == 0 {
            problem(problems, &key(k), "must be at least 1".into());
        }
    }
    HealthConfig {
        path,
        interval,
        timeout,
        expect_status,
        rise,
        fall,
    }
}

/// `"200-399"` or `"204"` → an inclusive range of valid statuses.
fn status_range(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (
        lo.trim().parse::<u16>().ok()?,
        hi.trim().parse::<u16>().ok()?,
    );
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi))
}

fn ejection(raw: RawEjection, pool: &str, problems: &mut Vec<Problem>) -> EjectionConfig {
    let d = EjectionConfig::default();
    let max_percent = raw.max_percent.unwrap_or(d.max_percent);
    if max_percent > 100 {
        problem(
            problems,
            &format!("{pool}.ejection.max_percent"),
            format!("{max_percent} is over 100"),
        );
    }
    EjectionConfig {
        consecutive_failures: raw.consecutive_failures.unwrap_or(d.consecutive_failures),
        base_time: duration(
            problems,
            &format!("{pool}.ejection.base_time"),
            raw.base_time,
            d.base_time,
        ),
        max_percent,
    }
}

/// Normalises a backend address: `IP:port` as the socket address prints it, or
/// `hostname:port` as written. `None` when it is neither.
fn backend_address(text: &str) -> Option<String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.to_string());
    }
    let (host, port) = text.rsplit_once(':')?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    (port_ok && host_ok).then(|| text.to_ascii_lowercase())
}

pub(super) fn duration(
    problems: &mut Vec<Problem>,
    key: &str,
    raw: Option<String>,
    default: Duration,
) -> Duration {
    let Some(text) = raw else { return default };
    match humantime::parse_duration(&text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            problem(problems, key, "must be longer than zero".into());
            default
        }
        Err(e) => {
            problem(
                problems,
                key,
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\" or \"2m\"",
                    Excerpt(&text)
                ),
            );
            default
        }
    }
}

pub(super) fn problem(problems: &mut Vec<Problem>, key: &str, message: String) {
    problems.push(Problem {
        key: key.to_owned(),
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [listen]
        address = "127.0.0.1:8080"
        [admin]
        socket = "/tmp/a.sock"
        [pools.blue]
        backends = ["127.0.0.1:9001"]
        [pools.green]
        backends = ["app-2.internal:9002"]
        [routing]
        live = "green"
    "#;

    fn problems(text: &str) -> Vec<Problem> {
        match Config::parse(text, Path::new("t.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = Config::parse(GOOD, Path::new("t.toml")).expect("valid");
        assert_eq!(c.initial_live, Color::Green);
        assert_eq!(c.admin.mode, 0o600);
        assert_eq!(c.pools[1].backends, vec!["app-2.internal:9002".to_owned()]);
        assert_eq!(c.upstream.response_timeout, Duration::from_secs(30));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = GOOD
            .replace("127.0.0.1:8080", "localhost")
            .replace("\"app-2.internal:9002\"", "\"127.0.0.1:9001\", \"nope\"")
            .replace(
                "[routing]",
                "[upstream]\nconnect_timeout = \"soon\"\n[routing]",
            );
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "listen.address",
                "pools.green.backends[0]",
                "pools.green.backends[1]",
                "upstream.connect_timeout"
            ]
        );
    }

    #[test]
    fn a_third_colour_and_a_missing_one_are_named() {
        let text = GOOD.replace("[pools.green]", "[pools.purple]");
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["pools.purple", "pools.green"]);
    }
}
