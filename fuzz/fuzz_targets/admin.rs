#![no_main]
//! The admin API answers any method, path and body without panicking; every refusal
//! (status 400 and up) is a JSON object with an `error` string, and every other answer
//! sent as JSON parses as JSON.
//!
//! Input: up to four requests separated by NUL bytes, each `METHOD SP PATH LF BODY`
//! (requests with a method hyper would not deliver are skipped). They go, in order, to
//! one fresh admin API per input (only the metrics registry is shared), so a switch
//! can be followed by a rollback and a crash reproduces from its input alone.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;

/// Green is probed and never checked here, so a switch to it is refused at the gate
/// unless forced; blue is not probed and counts as healthy.
const CONFIG: &str = r#"
[listen]
address = "127.0.0.1:0"

[admin]
socket = "fuzz.sock"

[pools.blue]
backends = ["127.0.0.1:9", "127.0.0.1:10"]

[pools.green]
backends = ["127.0.0.1:11"]
min_healthy = 1

[pools.green.health]
path = "/healthz"

[routing]
live = "blue"
"#;

/// The only calls into cutover: an admin API wired as `Server::bind` wires it (no
/// state file, no listeners, no health checkers) and a request to it.
mod api {
    use std::path::Path;
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use bytes::Bytes;
    use cutover::admin::Admin;
    use cutover::config::Config;
    use cutover::drain::Tracker;
    use cutover::metrics::Telemetry;
    use cutover::pool::Pool;
    use cutover::reload::Reloader;
    use cutover::settings::Settings;
    use cutover::snapshot::{Color, Snapshot};
    use cutover::switchboard::{Caller, StateReport, Switchboard};
    use cutover::upstream::Upstreams;
    use http::{Method, Response};
    use http_body_util::Full;

    pub struct Api(Admin);

    pub fn config(text: &str) -> Config {
        Config::parse(text, Path::new("fuzz.toml")).expect("the fuzz config is valid")
    }

    /// The metrics registry and windowed stats (megabytes of histograms): built once
    /// and shared by every input, which only moves its counters.
    pub fn telemetry(config: &Config) -> Arc<Telemetry> {
        Arc::new(Telemetry::new(config.metrics.enabled, None))
    }

    /// Needs a tokio runtime (a switch starts a drain task).
    pub fn build(config: &Config, telemetry: &Arc<Telemetry>) -> Api {
        let pool = |color: Color| {
            Arc::new(Pool::build(&config.pools[color.index()], &[]).expect("valid backends"))
        };
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::new(
            config.initial_live,
            [pool(Color::Blue), pool(Color::Green)],
            config.routing.clone(),
        )));
        let upstreams = Arc::new(Upstreams::new(&config.upstream, Arc::clone(&snapshot)));
        let tracker = Arc::new(Tracker::new(
            config.drain_timeout,
            upstreams,
            Arc::clone(telemetry),
        ));
        let report = StateReport {
            path: None,
            restored: false,
            error: None,
        };
        let settings = Arc::new(ArcSwap::from_pointee(Settings::build(
            config,
            Arc::clone(&snapshot),
            Arc::clone(&tracker),
        )));
        let switchboard = Arc::new(Switchboard::new(
            snapshot,
            Arc::clone(&tracker),
            None,
            report,
            (None, Vec::new()),
            config.rollout.history,
        ));
        let access: Arc<ArcSwap<cutover::config::Access>> = Arc::default();
        // No file: a fuzzed POST /reload gets the "nothing to reload" answer.
        let reloader = Arc::new(Reloader::new(
            None,
            config.clone(),
            Arc::clone(&switchboard),
            settings,
            Arc::clone(&access),
            Vec::new(),
        ));
        Api(Admin {
            rollouts: cutover::rollout::Rollouts::new(
                Arc::clone(&switchboard),
                config.rollout.clone(),
            ),
            switchboard,
            tracker,
            access,
            reloader,
        })
    }

    impl Api {
        pub async fn request(
            &self,
            method: &Method,
            path: &str,
            body: Bytes,
        ) -> Response<Full<Bytes>> {
            self.0
                .respond(
                    method,
                    path,
                    body,
                    Caller {
                        uid: Some(0),
                        gid: Some(0),
                    },
                )
                .await
        }
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    config: cutover::config::Config,
    telemetry: std::sync::Arc<cutover::metrics::Telemetry>,
}

/// One runtime for the whole run. Its clock is paused and advances by itself when
/// nothing else can run, so `"wait": "drained"` after a switch costs no real time.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = api::config(CONFIG);
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("tokio runtime"),
            telemetry: api::telemetry(&config),
            config,
        }
    })
}

/// Every refusal is a JSON object with a non-empty `error` string (and a 405 names the
/// allowed method); every other JSON answer is valid JSON too.
fn check(method: &Method, path: &str, head: &http::response::Parts, body: &[u8]) {
    let status = head.status;
    let json = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if !json {
        // Only /metrics answers in text.
        assert_eq!(
            status,
            StatusCode::OK,
            "{method} {path:?}: {status} is not JSON"
        );
        return;
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{method} {path:?}: {status}: invalid JSON ({e}): {body:?}"));
    if status.as_u16() >= 400 {
        assert!(
            value["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path:?}: {status} without an error: {value}"
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        assert!(
            head.headers.contains_key(http::header::ALLOW),
            "405 without Allow"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let api = api::build(&fixture.config, &fixture.telemetry);
        for record in data.split(|&b| b == 0).take(4) {
            let (line, body) = match record.iter().position(|&b| b == b'\n') {
                Some(i) => (&record[..i], &record[i + 1..]),
                None => (record, &[][..]),
            };
            let (method, path) = match line.iter().position(|&b| b == b' ') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &[][..]),
            };
            let Ok(method) = Method::from_bytes(method) else {
                continue;
            };
            let path = String::from_utf8_lossy(path);
            let resp = api
                .request(&method, &path, Bytes::copy_from_slice(body))
                .await;
            let (head, body) = resp.into_parts();
            let body = body.collect().await.expect("a full body").to_bytes();
            check(&method, &path, &head, &body);
        }
    });
});
