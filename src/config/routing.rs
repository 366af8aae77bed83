//! `[routing]`'s per-request rules (bucket key, pinning, forced routes) and
//! `[rollout]`'s defaults, validated: every problem named with its key.

use std::time::Duration;

use super::raw::{RawRollout, RawRouting};
use super::validate::{duration, problem};
use super::{Excerpt, Problem};
use crate::color::Color;
use crate::routing::{BucketKey, ForceRule, Match, Pinning, Routing};
use crate::rules::forwarded::Cidr;

/// Step length of a bare percentage when `[rollout] step_duration` is not set.
pub const DEFAULT_STEP: Duration = Duration::from_secs(300);
/// `/history` events kept when `[rollout] history` is not set.
pub const DEFAULT_HISTORY: usize = 200;

/// The validated `[rollout]` section.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Duration of a step written as a bare percentage.
    pub step_duration: Duration,
    /// A rollout found in the state file at start resumes its step (true) or is aborted.
    pub resume_on_restart: bool,
    /// POSTed the rollout state before each step and before promotion; non-2xx halts.
    pub webhooks: Vec<String>,
    /// Base URL of the Prometheus server query gates are evaluated on.
    pub prometheus: Option<String>,
    /// Events kept in `/history`.
    pub history: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            step_duration: DEFAULT_STEP,
            resume_on_restart: true,
            webhooks: Vec::new(),
            prometheus: None,
            history: DEFAULT_HISTORY,
        }
    }
}

pub(super) fn routing(raw: &RawRouting, problems: &mut Vec<Problem>) -> Routing {
    let bucket = match &raw.bucket {
        None => BucketKey::Cookie,
        Some(b) => match (b.by.as_str(), &b.header) {
            ("cookie", None) => BucketKey::Cookie,
            ("address", None) => BucketKey::Address,
            ("header", Some(name)) if valid_name(name) => {
                BucketKey::Header(name.to_ascii_lowercase())
            }
            ("header", Some(name)) => {
                problem(
                    problems,
                    "routing.bucket.header",
                    format!("{:?} is not a header name", Excerpt(name)),
                );
                BucketKey::Cookie
            }
            ("header", None) => {
                problem(
                    problems,
                    "routing.bucket.header",
                    "with by = \"header\", name the header, e.g. header = \"x-user-id\"".into(),
                );
                BucketKey::Cookie
            }
            ("cookie" | "address", Some(_)) => {
                problem(
                    problems,
                    "routing.bucket.header",
                    "only with by = \"header\"".into(),
                );
                BucketKey::Cookie
            }
            (other, _) => {
                problem(
                    problems,
                    "routing.bucket.by",
                    format!(
                        "unknown key {:?}; use \"cookie\", \"header\" or \"address\"",
                        Excerpt(other)
                    ),
                );
                BucketKey::Cookie
            }
        },
    };
    let pinning = raw.pinning.as_ref().map(|p| Pinning {
        ttl: duration(
            problems,
            "routing.pinning.ttl",
            Some(p.ttl.clone()),
            Duration::from_secs(1800),
        ),
    });
    let force = raw
        .force
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let key = |field: &str| format!("routing.force[{i}].{field}");
            let to = f.to.parse::<Color>().map_err(|e| {
                problem(problems, &key("to"), e.to_string());
            });
            let when = match (&f.header, &f.cookie, &f.client) {
                (Some(name), None, None) if valid_name(name) => Some(Match::Header {
                    name: name.to_ascii_lowercase(),
                    value: f.equals.clone(),
                }),
                (Some(name), None, None) => {
                    problem(
                        problems,
                        &key("header"),
                        format!("{:?} is not a header name", Excerpt(name)),
                    );
                    None
                }
                (None, Some(name), None) if valid_name(name) => Some(Match::Cookie {
                    name: name.clone(),
                    value: f.equals.clone(),
                }),
                (None, Some(name), None) => {
                    problem(
                        problems,
                        &key("cookie"),
                        format!("{:?} is not a cookie name", Excerpt(name)),
                    );
                    None
                }
                (None, None, Some(ranges)) => {
                    if f.equals.is_some() {
                        problem(
                            problems,
                            &key("equals"),
                            "only with header or cookie".into(),
                        );
                    }
                    let parsed: Vec<Cidr> = ranges
                        .iter()
                        .filter_map(|r| {
                            r.parse::<Cidr>()
                                .map_err(|e| problem(problems, &key("client"), e.to_string()))
                                .ok()
                        })
                        .collect();
                    if ranges.is_empty() {
                        problem(
                            problems,
                            &key("client"),
                            "name at least one range, e.g. [\"10.1.0.0/16\"]".into(),
                        );
                    }
                    Some(Match::Client(parsed))
                }
                _ => {
                    problem(
                        problems,
                        &format!("routing.force[{i}]"),
                        "give exactly one of header, cookie or client".into(),
                    );
                    None
                }
            };
            Some(ForceRule {
                to: to.ok()?,
                when: when?,
            })
        })
        .collect();
    Routing {
        bucket,
        force,
        pinning,
    }
}

pub(super) fn rollout(raw: &RawRollout, problems: &mut Vec<Problem>) -> RolloutConfig {
    let d = RolloutConfig::default();
    let resume_on_restart = match raw.on_restart.as_deref() {
        None | Some("resume") => true,
        Some("abort") => false,
        Some(other) => {
            problem(
                problems,
                "rollout.on_restart",
                format!(
                    "unknown value {:?}; use \"resume\" or \"abort\"",
                    Excerpt(other)
                ),
            );
            true
        }
    };
    let url_ok = |u: &String| u.starts_with("http://") && u.len() > "http://".len();
    for (i, url) in raw.webhooks.iter().enumerate() {
        if !url_ok(url) {
            problem(
                problems,
                &format!("rollout.webhooks[{i}]"),
                format!(
                    "{:?} is not an http:// URL; write e.g. \"http://127.0.0.1:8081/check\"",
                    Excerpt(url)
                ),
            );
        }
    }
    if let Some(url) = &raw.prometheus
        && !url_ok(url)
    {
        problem(
            problems,
            "rollout.prometheus",
            format!(
                "{:?} is not an http:// URL; write e.g. \"http://127.0.0.1:9090\"",
                Excerpt(url)
            ),
        );
    }
    let history = raw.history.unwrap_or(d.history);
    if !(1..=10_000).contains(&history) {
        problem(
            problems,
            "rollout.history",
            format!("{history} is out of range; use 1 to 10000"),
        );
    }
    RolloutConfig {
        step_duration: duration(
            problems,
            "rollout.step_duration",
            raw.step_duration.clone(),
            d.step_duration,
        ),
        resume_on_restart,
        webhooks: raw.webhooks.clone(),
        prometheus: raw
            .prometheus
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        history,
    }
}

/// An RFC 9110 token, as header and cookie names are.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
