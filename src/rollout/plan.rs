//! A rollout's plan as `POST /rollout` gives it: steps, gates, what to do when a step
//! is inconclusive or a gate breaches, approval. Parsed and checked whole before
//! anything starts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::color::Color;

/// The request body of `POST /rollout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// The colour to roll out.
    pub to: String,
    /// Percentages, each bare (`10`, run for `step_duration`) or
    /// `{"percent": 10, "duration": "1h"}`.
    pub steps: Vec<StepBody>,
    /// Duration of a bare step; `[rollout] step_duration` when absent.
    pub step_duration: Option<String>,
    #[serde(default)]
    pub gates: Gates,
    /// `"extend"` (default) or `"pause"`.
    pub on_inconclusive: Option<String>,
    /// `"rollback"` (default) or `"pause"`.
    pub on_breach: Option<String>,
    /// Hold the last step until `POST /rollout/promote`.
    #[serde(default)]
    pub approval: bool,
    /// Extensions of an inconclusive step at most before it pauses (default 3).
    pub max_extensions: Option<u32>,
    /// URLs POSTed before each step and before promotion, beside `[rollout] webhooks`.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Refuse unless routing is at this generation.
    pub expect_generation: Option<u64>,
    /// Answer with the checks the start would run; start nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StepBody {
    Bare(f64),
    Timed {
        percent: f64,
        duration: Option<String>,
    },
}

/// The gates every step is judged by. All optional; `min_requests` defaults to 100.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// The canary's error rate (0 to 1) at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// The canary's p99 latency at most, e.g. `"250ms"`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_p99: Option<Duration>,
    /// Canary requests in a step below which it is inconclusive, never a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// The canary's error rate at most this many times the live colour's (whose rate
    /// counts as at least 0.1 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_vs_live: Option<f64>,
    /// The canary's p99 at most this many times the live colour's (which counts as at
    /// least 1 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_vs_live: Option<f64>,
    /// PromQL gates evaluated at the end of each step on `[rollout] prometheus`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<Query>,
}

/// A PromQL expression and its bound. `$canary` and `$live` in the query are replaced
/// by the colours' names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// A name for the report; the query itself when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub query: String,
    /// The first sample's value at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The first sample's value at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
}

/// The validated plan, as it is kept in the rollout record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub to: Color,
    pub steps: Vec<Step>,
    pub gates: Gates,
    /// Extend an inconclusive step (true) or pause.
    pub extend_inconclusive: bool,
    /// Roll back on a breach (true) or pause at the current weight.
    pub rollback_on_breach: bool,
    pub approval: bool,
    pub max_extensions: u32,
    pub webhooks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Basis points, 1 to 10000.
    pub weight: u16,
    /// How long the step runs before it is judged.
    #[serde(with = "humantime_serde_ms")]
    pub duration: Duration,
}

/// Canary requests below which a step is inconclusive, when the plan says nothing.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

impl Gates {
    pub fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS)
    }
}

impl RolloutBody {
    /// The plan, or every problem with it in one message.
    pub fn plan(
        &self,
        default_step: Duration,
        configured_hooks: &[String],
    ) -> Result<Plan, String> {
        let mut problems = Vec::new();
        let to = self
            .to
            .parse::<Color>()
            .map_err(|e| problems.push(e.to_string()));
        let default_step = match &self.step_duration {
            None => default_step,
            Some(text) => parse_duration("step_duration", text, &mut problems),
        };
        if self.steps.is_empty() {
            problems.push("steps: give at least one, e.g. [1, 10, 50, 100]".to_owned());
        }
        let mut steps = Vec::new();
        let mut last = 0;
        for (i, step) in self.steps.iter().enumerate() {
            let (percent, duration) = match step {
                StepBody::Bare(p) => (*p, default_step),
                StepBody::Timed { percent, duration } => (
                    *percent,
                    match duration {
                        Some(d) => {
                            parse_duration(&format!("steps[{i}].duration"), d, &mut problems)
                        }
                        None => default_step,
                    },
                ),
            };
            if !(percent > 0.0 && percent <= 100.0) {
                problems.push(format!(
                    "steps[{i}]: {percent} is not a percentage above 0 and at most 100"
                ));
                continue;
            }
            let weight = (percent * 100.0).round() as u16;
            if weight <= last {
                problems.push(format!(
                    "steps[{i}]: {percent} % does not go up from the step before; steps only grow"
                ));
            }
            last = last.max(weight);
            steps.push(Step {
                weight: weight.max(1),
                duration,
            });
        }
        let g = &self.gates;
        if let Some(r) = g.max_error_rate
            && !(0.0..=1.0).contains(&r)
        {
            problems.push(format!(
                "gates.max_error_rate: {r} is not a rate between 0 and 1 (0.01 is 1 %)"
            ));
        }
        for (name, v) in [
            ("max_error_rate_vs_live", g.max_error_rate_vs_live),
            ("max_p99_vs_live", g.max_p99_vs_live),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 1.0)
            {
                problems.push(format!(
                    "gates.{name}: {v} is not a factor of at least 1 (2.0 allows twice the live colour's)"
                ));
            }
        }
        for (i, q) in g.queries.iter().enumerate() {
            if q.query.trim().is_empty() || (q.max.is_none() && q.min.is_none()) {
                problems.push(format!(
                    "gates.queries[{i}]: give a query and a bound (max or min)"
                ));
            }
        }
        let choice =
            |key: &str, value: &Option<String>, yes: &str, no: &str, problems: &mut Vec<String>| {
                match value.as_deref() {
                    None => true,
                    Some(v) if v == yes => true,
                    Some(v) if v == no => false,
                    Some(other) => {
                        problems.push(format!(
                            "{key}: unknown value {other:?}; use \"{yes}\" or \"{no}\""
                        ));
                        true
                    }
                }
            };
        let extend_inconclusive = choice(
            "on_inconclusive",
            &self.on_inconclusive,
            "extend",
            "pause",
            &mut problems,
        );
        let rollback_on_breach = choice(
            "on_breach",
            &self.on_breach,
            "rollback",
            "pause",
            &mut problems,
        );
        let mut webhooks = configured_hooks.to_vec();
        for (i, url) in self.webhooks.iter().enumerate() {
            if !url.starts_with("http://") {
                problems.push(format!("webhooks[{i}]: {url:?} is not an http:// URL"));
            }
            webhooks.push(url.clone());
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Plan {
            to: to.map_err(|()| String::new())?,
            steps,
            gates: g.clone(),
            extend_inconclusive,
            rollback_on_breach,
            approval: self.approval,
            max_extensions: self.max_extensions.unwrap_or(3),
            webhooks,
        })
    }
}

fn parse_duration(key: &str, text: &str, problems: &mut Vec<String>) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            problems.push(format!(
                "{key}: {text:?} is not a duration; write e.g. \"30s\", \"5m\" or \"1h\""
            ));
            Duration::from_secs(1)
        }
    }
}

/// Durations in the plan as humantime text (`"30s"`).
mod humantime_serde_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
