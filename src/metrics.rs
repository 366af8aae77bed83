//! Telemetry: Prometheus metrics (through the `metrics` facade and
//! metrics-exporter-prometheus), the windowed [`Stats`], and the access log.
//!
//! Each server builds its own recorder (no global one), registers every per-request
//! handle up front (colour × status class, colour × error kind), and so records a
//! request with a few atomic adds: no registry lookup, no allocation. Gauges that
//! describe state (in-flight, tunnels, health, live colour) are read from their
//! sources when `/metrics` is scraped, costing the data path nothing.
//!
//! The request duration histogram is our own [`DurationHistogram`] (fixed buckets,
//! two relaxed atomic adds per request) rather than the exporter's, which keeps every
//! sample (~50 ns to record) until an upkeep pass folds them into buckets: at 40k
//! requests/s that pass took 1.6 ms every 5 s, during which a single-threaded runtime
//! serves nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::access_log::AccessLog;
use crate::color::Color;
use crate::routing::Why;
use crate::rules::request::{REASONS, Reject};
use crate::snapshot::Snapshot;
use crate::stats::Stats;
use crate::tls::HandshakeFailure;

/// Upper bounds of the request duration buckets, in µs: 1 ms to 10 s (then +Inf).
const DURATION_BUCKETS_US: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 7_500_000, 10_000_000,
];

const DURATION_NAME: &str = "cutover_request_duration_seconds";
const DURATION_HELP: &str =
    "Time from routing a request to the end of its response body, by colour.";

/// A Prometheus histogram with fixed buckets: recording is one bucket search and two
/// relaxed atomic adds; nothing is kept per sample.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    /// Sum of every recorded duration, in ns; rendered as `_sum` in seconds.
    sum_ns: AtomicU64,
}

/// How an upstream request failed, for `cutover_upstream_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Protocol = 3,
}

const KINDS: [&str; 4] = ["connect", "timeout", "reset", "protocol"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What `/metrics` shows of one colour's in-flight work, read when it is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColorCounts {
    /// Requests of the colour in flight, for `cutover_in_flight_requests`.
    pub in_flight: usize,
    /// Open upgraded connections of the colour, for `cutover_open_tunnels`.
    pub tunnels: usize,
    /// Tunnels closed because a drain deadline passed.
    pub closed_by_drain: u64,
    /// Requests closed because a drain deadline passed.
    pub requests_closed_by_drain: u64,
}

/// Everything the data path records into, and what `/metrics` renders.
pub struct Telemetry {
    /// False turns per-request recording off (`metrics.enabled = false`).
    enabled: bool,
    /// This server's own Prometheus recorder (none is installed globally): the counters
    /// are registered on it up front, and the state gauges set on it at each scrape.
    recorder: PrometheusRecorder,
    /// Renders the recorder's series as Prometheus text for `/metrics`.
    handle: PrometheusHandle,
    /// `cutover_requests_total` by colour, then status class 1xx to 5xx: registered
    /// once, so counting a request is one atomic add.
    requests: [[Counter; 5]; 2],
    /// `cutover_request_duration_seconds` per colour, rendered after the recorder's
    /// text.
    duration: [DurationHistogram; 2],
    /// `cutover_upstream_errors_total` by colour, then [`ErrorKind`].
    upstream_errors: [[Counter; 4]; 2],
    /// `cutover_switches_total` by kind (switch, rollback), then whether it was forced.
    switches: [[Counter; 2]; 2],
    /// Connections closed at accept because `limits.max_connections` were open.
    connections_refused: Counter,
    /// Requests refused by the rulebook (the client's fault), by reason.
    refused: [Counter; REASONS.len()],
    /// The per-colour windows (last 10 s, last 60 s) that `/status` shows; fed by
    /// `finish`.
    pub stats: Stats,
    /// The access log writer, when `[access_log]` is set; a request's
    /// [`InFlight`](crate::drain::InFlight) writes its line on drop.
    pub access_log: Option<AccessLog>,
    /// `cutover_access_log_dropped_total`: lines dropped because the writer was behind.
    access_dropped: Counter,
    /// `cutover_tls_handshake_failures_total` by reason, in [`HandshakeFailure::ALL`]
    /// order.
    handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    /// `cutover_tls_certificate_reloads_total`: failed, then loaded.
    certificate_reloads: [Counter; 2],
    /// `cutover_config_reloads_total` by result: ok, then error.
    reloads: [Counter; 2],
    /// `cutover_state_persisted`: 0 while the routing in effect is not in the state
    /// file (a rollback applied though the write failed), 1 otherwise.
    state_persisted: Gauge,
    /// Requests routed off the plain live path, by [`ROUTED`] reason (canary, forced,
    /// pinned): kept as atomics so `/status` can show them too.
    routed: [AtomicU64; 3],
}

/// The reasons in `cutover_routed_requests_total{by}`, in [`Telemetry::routed`] order.
pub const ROUTED: [&str; 3] = ["canary", "forced", "pinned"];

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::new(k, v)).collect();
    Key::from_parts(name, labels)
}

static META: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

// === impl Telemetry ===

impl Telemetry {
    pub fn new(enabled: bool, access_log: Option<AccessLog>) -> Telemetry {
        let recorder = PrometheusBuilder::new().build_recorder();
        describe(&recorder);
        let counter = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &META)
        };
        let requests = Color::ALL.map(|c| {
            CLASSES.map(|class| {
                counter(
                    "cutover_requests_total",
                    &[("color", c.as_str()), ("class", class)],
                )
            })
        });
        let duration = Default::default();
        let upstream_errors = Color::ALL.map(|c| {
            KINDS.map(|kind| {
                counter(
                    "cutover_upstream_errors_total",
                    &[("color", c.as_str()), ("kind", kind)],
                )
            })
        });
        let switches = ["switch", "rollback"].map(|kind| {
            ["false", "true"].map(|forced| {
                counter(
                    "cutover_switches_total",
                    &[("kind", kind), ("forced", forced)],
                )
            })
        });
        let access_dropped = counter("cutover_access_log_dropped_total", &[]);
        let connections_refused = counter("cutover_connections_refused_total", &[]);
        let refused =
            REASONS.map(|reason| counter("cutover_requests_refused_total", &[("reason", reason)]));
        let handshake_failures = HandshakeFailure::ALL.map(|f| {
            counter(
                "cutover_tls_handshake_failures_total",
                &[("reason", f.as_str())],
            )
        });
        let certificate_reloads = ["error", "ok"].map(|result| {
            counter(
                "cutover_tls_certificate_reloads_total",
                &[("result", result)],
            )
        });
        let reloads = ["ok", "error"]
            .map(|result| counter("cutover_config_reloads_total", &[("result", result)]));
        let state_persisted = recorder.register_gauge(&key("cutover_state_persisted", &[]), &META);
        state_persisted.set(1.0);
        let handle = recorder.handle();
        Telemetry {
            state_persisted,
            handshake_failures,
            certificate_reloads,
            enabled,
            recorder,
            handle,
            requests,
            duration,
            upstream_errors,
            switches,
            refused,
            connections_refused,
            stats: Stats::default(),
            access_log,
            access_dropped,
            reloads,
            routed: Default::default(),
        }
    }

    /// One request routed by something other than the live colour alone.
    #[inline]
    pub fn routed(&self, why: Why) {
        let i = match why {
            Why::Live => return,
            Why::Canary => 0,
            Why::Forced => 1,
            Why::Pinned => 2,
        };
        self.routed[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests routed by canary, forced rule and pin since start.
    pub fn routed_counts(&self) -> [u64; 3] {
        self.routed.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// One finished request of `color` with `status` (0: no response was sent, the
    /// client left first). It is an error in the windowed stats when it was answered
    /// with a 5xx or the backend `broke` mid-answer; a client leaving is not the
    /// backend's error, so it does not count against a colour.
    #[inline]
    pub fn finish(&self, color: Color, status: u16, broke: bool, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.requests[color.index()][class as usize].increment(1);
        }
        self.duration[color.index()].record(elapsed);
        self.stats.record(color, status >= 500 || broke, elapsed);
    }

    pub fn upstream_error(&self, color: Color, kind: ErrorKind) {
        if self.enabled {
            self.upstream_errors[color.index()][kind as usize].increment(1);
        }
    }

    /// A connection closed at accept: the connection limit was reached. Counted even
    /// with per-request recording off.
    pub fn connection_refused(&self) {
        self.connections_refused.increment(1);
    }

    /// A request the rulebook refused, or whose body the client broke: counted here
    /// only, never against a colour or a backend.
    pub fn refused(&self, reject: Reject) {
        if self.enabled {
            self.refused[reject.index()].increment(1);
        }
    }

    pub fn switched(&self, rollback: bool, forced: bool) {
        self.switches[usize::from(rollback)][usize::from(forced)].increment(1);
    }

    /// Whether the state file holds the routing in effect.
    pub fn state_persisted(&self, persisted: bool) {
        self.state_persisted.set(f64::from(u8::from(persisted)));
    }

    /// A config reload that applied (`ok`) or changed nothing (`!ok`).
    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].increment(1);
    }

    pub fn access_dropped(&self) {
        self.access_dropped.increment(1);
    }

    /// A TLS handshake that failed; counted even with per-request recording off.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].increment(1);
    }

    /// A listener's certificates read again: `ok` when the new ones are served.
    pub fn certificates_reloaded(&self, ok: bool) {
        self.certificate_reloads[usize::from(ok)].increment(1);
    }

    /// The Prometheus text, with state gauges read now.
    /// The Prometheus text: the recorded series, and gauges read now from `snapshot`
    /// and each colour's `counts`.
    pub fn render(&self, snapshot: &Snapshot, counts: [ColorCounts; 2]) -> String {
        let gauge = |name, labels: &[(&'static str, &'static str)]| -> Gauge {
            self.recorder.register_gauge(&key(name, labels), &META)
        };
        let mut backend_durations = String::new();
        process_gauges(&gauge);
        for color in Color::ALL {
            let c = &[("color", color.as_str())];
            let view = counts[color.index()];
            gauge("cutover_in_flight_requests", c).set(view.in_flight as f64);
            gauge("cutover_open_tunnels", c).set(view.tunnels as f64);
            gauge("cutover_live_color", c).set(f64::from(u8::from(snapshot.live == color)));
            self.recorder
                .register_counter(&key("cutover_tunnels_closed_by_drain_total", c), &META)
                .absolute(view.closed_by_drain);
            self.recorder
                .register_counter(&key("cutover_requests_closed_by_drain_total", c), &META)
                .absolute(view.requests_closed_by_drain);
            for backend in &snapshot.pool(color).backends {
                let labels = vec![
                    Label::new("color", color.as_str()),
                    Label::new("backend", backend.address.clone()),
                ];
                let healthy = Key::from_parts("cutover_backend_healthy", labels.clone());
                self.recorder
                    .register_gauge(&healthy, &META)
                    .set(f64::from(u8::from(backend.is_available())));
                let ejections = Key::from_parts("cutover_backend_ejections_total", labels.clone());
                self.recorder
                    .register_counter(&ejections, &META)
                    .absolute(u64::from(backend.ejections()));
                let tally = &backend.tally;
                for (class, count) in CLASSES.iter().zip(&tally.requests) {
                    let mut labels = labels.clone();
                    labels.push(Label::new("class", *class));
                    self.recorder
                        .register_counter(
                            &Key::from_parts("cutover_backend_requests_total", labels),
                            &META,
                        )
                        .absolute(count.load(Ordering::Relaxed));
                }
                self.recorder
                    .register_counter(
                        &Key::from_parts("cutover_backend_errors_total", labels),
                        &META,
                    )
                    .absolute(tally.errors.load(Ordering::Relaxed));
                let count: u64 = tally
                    .requests
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum();
                let sum = tally.duration_us.load(Ordering::Relaxed) as f64 / 1e6;
                let at = format!(
                    "{{color=\"{color}\",backend=\"{}\"}}",
                    escape_label(&backend.address)
                );
                let _ = writeln!(backend_durations, "{BACKEND_DURATION}_sum{at} {sum}");
                let _ = writeln!(backend_durations, "{BACKEND_DURATION}_count{at} {count}");
            }
        }
        gauge("cutover_routing_generation", &[]).set(snapshot.generation as f64);
        for color in Color::ALL {
            let weight = snapshot
                .canary
                .filter(|c| c.color == color)
                .map_or(0, |c| c.weight);
            gauge(
                "cutover_canary_weight_basis_points",
                &[("color", color.as_str())],
            )
            .set(f64::from(weight));
        }
        for (by, count) in ROUTED.iter().zip(self.routed_counts()) {
            self.recorder
                .register_counter(&key("cutover_routed_requests_total", &[("by", by)]), &META)
                .absolute(count);
        }
        let mut text = self.handle.render();
        let _ = writeln!(text, "# HELP {DURATION_NAME} {DURATION_HELP}");
        let _ = writeln!(text, "# TYPE {DURATION_NAME} histogram");
        for color in Color::ALL {
            self.duration[color.index()].render(&mut text, color);
        }
        let _ = writeln!(text, "# HELP {BACKEND_DURATION} {BACKEND_DURATION_HELP}");
        let _ = writeln!(text, "# TYPE {BACKEND_DURATION} summary");
        text.push_str(&backend_durations);
        process_cpu(&mut text);
        text
    }
}

/// Per-backend request time: `_sum` and `_count` only (the histogram is per colour).
const BACKEND_DURATION: &str = "cutover_backend_request_duration_seconds";
const BACKEND_DURATION_HELP: &str =
    "Time of a backend's requests, from routing to the end of the response body.";

/// A label value in the Prometheus text format.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `process_cpu_seconds_total` (a counter of float seconds, so written as text): user
/// and system time from /proc/self/stat; nothing where it cannot be read.
fn process_cpu(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // utime and stime are fields 14 and 15; after the `(comm)` the first is field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
        let hz = rustix::param::clock_ticks_per_second().max(1);
        let seconds = (user + system) as f64 / hz as f64;
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time of the process."
        );
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(out, "process_cpu_seconds_total {seconds}");
    }
}

/// The standard process gauges, read from /proc at scrape: resident memory and open
/// file descriptors. Absent where /proc cannot be read.
fn process_gauges(gauge: &impl Fn(&'static str, &[(&'static str, &'static str)]) -> Gauge) {
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
    {
        let bytes = pages * rustix::param::page_size() as u64;
        gauge("process_resident_memory_bytes", &[]).set(bytes as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge("process_open_fds", &[]).set(fds.count() as f64);
    }
}

// === impl DurationHistogram ===

impl DurationHistogram {
    #[inline]
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = DURATION_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Appends this colour's `_bucket` (cumulative, `le` inclusive), `_sum` and
    /// `_count` lines in the Prometheus text format.
    fn render(&self, out: &mut String, color: Color) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match DURATION_BUCKETS_US.get(i) {
                Some(&us) => format!("{}", us as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{DURATION_NAME}_bucket{{color=\"{color}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{DURATION_NAME}_sum{{color=\"{color}\"}} {sum}");
        let _ = writeln!(
            out,
            "{DURATION_NAME}_count{{color=\"{color}\"}} {cumulative}"
        );
    }
}

fn describe(r: &PrometheusRecorder) {
    let help: [(&str, Option<Unit>, &str, bool); 25] = [
        (
            "cutover_routed_requests_total",
            None,
            "Requests sent somewhere other than by the live colour alone, by what decided: canary (the sticky bucket fell under the canary weight), forced (a [[routing.force]] rule), pinned (the session's pin).",
            true,
        ),
        (
            "cutover_canary_weight_basis_points",
            None,
            "The canary share of each colour in basis points (0 to 10000); 0 when it gets no canary traffic.",
            false,
        ),
        (
            "cutover_tls_handshake_failures_total",
            None,
            "TLS handshakes on client listeners that failed, by reason (timeout, eof, protocol, incompatible, certificate, other).",
            true,
        ),
        (
            "cutover_tls_certificate_reloads_total",
            None,
            "Listener certificates read again (file change or reload), by result; on error the previous ones stay.",
            true,
        ),
        (
            "cutover_config_reloads_total",
            None,
            "Config reloads (file change, SIGHUP, POST /reload), by result: ok applied the file, error changed nothing.",
            true,
        ),
        (
            "cutover_requests_closed_by_drain_total",
            None,
            "Requests still running on a colour when its drain deadline passed, closed then, by colour.",
            true,
        ),
        (
            "cutover_connections_refused_total",
            None,
            "Client connections closed as soon as accepted because limits.max_connections were open.",
            true,
        ),
        (
            "cutover_requests_refused_total",
            None,
            "Requests refused as the client's fault (malformed, over a limit, bad framing or body), by reason; never counted against a colour.",
            true,
        ),
        (
            "cutover_requests_total",
            None,
            "Requests answered, by colour and status class.",
            true,
        ),
        (
            "cutover_upstream_errors_total",
            None,
            "Requests that got no backend response, by colour and kind (connect, timeout, reset, protocol).",
            true,
        ),
        (
            "cutover_switches_total",
            None,
            "Routing changes, by kind (switch, rollback) and whether the gate was forced.",
            true,
        ),
        (
            "cutover_access_log_dropped_total",
            None,
            "Access log lines dropped because the writer fell behind.",
            true,
        ),
        (
            "cutover_tunnels_closed_by_drain_total",
            None,
            "Upgraded connections closed at a drain deadline, by colour.",
            true,
        ),
        (
            "cutover_backend_ejections_total",
            None,
            "Passive ejections of a backend after consecutive failures.",
            true,
        ),
        (
            "cutover_in_flight_requests",
            None,
            "Requests in flight, by colour.",
            false,
        ),
        (
            "cutover_open_tunnels",
            None,
            "Open upgraded connections (WebSocket, ...), by colour.",
            false,
        ),
        (
            "cutover_live_color",
            None,
            "1 for the colour that receives traffic, 0 for the other.",
            false,
        ),
        (
            "cutover_backend_healthy",
            None,
            "1 when a backend gets traffic (healthy and not ejected).",
            false,
        ),
        (
            "cutover_routing_generation",
            None,
            "Generation of the routing snapshot; bumped by every change.",
            false,
        ),
        (
            "cutover_build_info",
            None,
            "Always 1; its version label is the running binary's.",
            false,
        ),
        (
            "cutover_backend_requests_total",
            None,
            "Finished requests per backend, by status class.",
            true,
        ),
        (
            "cutover_backend_errors_total",
            None,
            "A backend's 5xx answers and answers it broke off after their head.",
            true,
        ),
        (
            "process_resident_memory_bytes",
            Some(Unit::Bytes),
            "Resident memory of the process.",
            false,
        ),
        ("process_open_fds", None, "Open file descriptors.", false),
        (
            "cutover_state_persisted",
            None,
            "0 while the routing in effect could not be written to the state file (retried every second), else 1.",
            false,
        ),
    ];
    for (name, unit, text, counter) in help {
        let text = SharedString::from(text);
        if counter {
            r.describe_counter(KeyName::from(name), unit, text);
        } else {
            r.describe_gauge(KeyName::from(name), unit, text);
        }
    }
    r.register_gauge(
        &key(
            "cutover_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
        ),
        &META,
    )
    .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_buckets_are_inclusive_cumulative_and_end_at_inf() {
        let h = DurationHistogram::default();
        for ms in [1, 1, 2, 10_000, 11_000] {
            h.record(Duration::from_millis(ms));
        }
        h.record(Duration::from_micros(1_001));
        let mut text = String::new();
        h.render(&mut text, Color::Green);
        let line = |le: &str| {
            let prefix = format!("{DURATION_NAME}_bucket{{color=\"green\",le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket le={le} in\n{text}"))
                .to_owned()
        };
        assert_eq!(line("0.001"), "2", "exactly 1 ms belongs to le=0.001");
        assert_eq!(line("0.0025"), "4");
        assert_eq!(line("10"), "5");
        assert_eq!(line("+Inf"), "6");
        assert!(text.contains(&format!("{DURATION_NAME}_count{{color=\"green\"}} 6")));
        assert!(text.contains(&format!("{DURATION_NAME}_sum{{color=\"green\"}} 21.005001")));
    }
}
