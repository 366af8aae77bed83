//! Telemetry: Prometheus metrics (through the `metrics` facade and
//! metrics-exporter-prometheus), the windowed [`Stats`], and the access log.
//!
//! Each server builds its own recorder (no global one), registers every per-request
//! handle up front (colour × status class, colour × error kind), and so records a
//! request with a few atomic adds: no registry lookup, no allocation. Gauges that
//! describe state (in-flight, tunnels, health, live colour) are read from their
//! sources when `/metrics` is scraped, costing the data path nothing.

use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::access_log::AccessLog;
use crate::drain::Tracker;
use crate::snapshot::{Color, Snapshot};
use crate::stats::Stats;

/// Buckets of the request duration histogram: 1 ms to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

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

/// Everything the data path records into, and what `/metrics` renders.
pub struct Telemetry {
    /// False turns per-request recording off (`metrics.enabled = false`).
    enabled: bool,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    requests: [[Counter; 5]; 2],
    duration: [Histogram; 2],
    upstream_errors: [[Counter; 4]; 2],
    switches: [[Counter; 2]; 2],
    pub stats: Stats,
    pub access_log: Option<AccessLog>,
    access_dropped: Counter,
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::new(k, v)).collect();
    Key::from_parts(name, labels)
}

static META: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

// === impl Telemetry ===

impl Telemetry {
    pub fn new(enabled: bool, access_log: Option<AccessLog>) -> Telemetry {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("cutover_request_duration_seconds".to_owned()),
                &DURATION_BUCKETS,
            )
            // Non-empty constant buckets are always accepted.
            .expect("constant buckets are valid")
            .build_recorder();
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
        let duration = Color::ALL.map(|c| {
            recorder.register_histogram(
                &key("cutover_request_duration_seconds", &[("color", c.as_str())]),
                &META,
            )
        });
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
        let handle = recorder.handle();
        Telemetry {
            enabled,
            recorder,
            handle,
            requests,
            duration,
            upstream_errors,
            switches,
            stats: Stats::default(),
            access_log,
            access_dropped,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// One finished request of `color` with `status` (0: no response was sent).
    #[inline]
    pub fn finish(&self, color: Color, status: u16, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.requests[color.index()][class as usize].increment(1);
        }
        self.duration[color.index()].record(elapsed.as_secs_f64());
        self.stats
            .record(color, status >= 500 || status == 0, elapsed);
    }

    pub fn upstream_error(&self, color: Color, kind: ErrorKind) {
        if self.enabled {
            self.upstream_errors[color.index()][kind as usize].increment(1);
        }
    }

    pub fn switched(&self, rollback: bool, forced: bool) {
        self.switches[usize::from(rollback)][usize::from(forced)].increment(1);
    }

    pub fn access_dropped(&self) {
        self.access_dropped.increment(1);
    }

    /// Drains histogram samples into their buckets; call every few seconds.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text, with state gauges read now.
    pub fn render(&self, snapshot: &Snapshot, tracker: &Tracker) -> String {
        let gauge = |name, labels: &[(&'static str, &'static str)]| -> Gauge {
            self.recorder.register_gauge(&key(name, labels), &META)
        };
        for color in Color::ALL {
            let c = &[("color", color.as_str())];
            let view = tracker.view(color);
            gauge("cutover_in_flight_requests", c).set(view.in_flight as f64);
            gauge("cutover_open_tunnels", c).set(view.tunnels as f64);
            gauge("cutover_live_color", c).set(f64::from(u8::from(snapshot.live == color)));
            self.recorder
                .register_counter(&key("cutover_tunnels_closed_by_drain_total", c), &META)
                .absolute(view.closed_by_drain);
            for backend in &snapshot.pool(color).backends {
                let labels = vec![
                    Label::new("color", color.as_str()),
                    Label::new("backend", backend.address.clone()),
                ];
                let healthy = Key::from_parts("cutover_backend_healthy", labels.clone());
                self.recorder
                    .register_gauge(&healthy, &META)
                    .set(f64::from(u8::from(backend.is_available())));
                let ejections = Key::from_parts("cutover_backend_ejections_total", labels);
                self.recorder
                    .register_counter(&ejections, &META)
                    .absolute(u64::from(backend.ejections()));
            }
        }
        gauge("cutover_routing_generation", &[]).set(snapshot.generation as f64);
        self.handle.render()
    }
}

fn describe(r: &PrometheusRecorder) {
    let help: [(&str, Option<Unit>, &str, bool); 13] = [
        (
            "cutover_requests_total",
            None,
            "Requests answered, by colour and status class.",
            true,
        ),
        (
            "cutover_request_duration_seconds",
            Some(Unit::Seconds),
            "Time from routing a request to the end of its response body, by colour.",
            false,
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
        ("cutover_up", None, "Always 1 while cutover runs.", false),
    ];
    for (name, unit, text, counter) in help {
        let text = SharedString::from(text);
        if counter {
            r.describe_counter(KeyName::from(name), unit, text);
        } else if name.ends_with("_seconds") {
            r.describe_histogram(KeyName::from(name), unit, text);
        } else {
            r.describe_gauge(KeyName::from(name), unit, text);
        }
    }
    r.register_gauge(&key("cutover_up", &[]), &META).set(1.0);
}
