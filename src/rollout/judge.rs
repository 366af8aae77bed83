//! A step's evidence and its verdict: both colours' requests, errors and latency since
//! the step began (added up second by second from the per-colour stats), judged
//! against each gate, absolute and relative to the live colour.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::plan::Gates;
use crate::stats::{self, Stats};

/// The live colour's error rate counts as at least this in a relative gate, so that a
/// clean live colour does not make one canary error a breach.
pub const ERROR_RATE_FLOOR: f64 = 0.001;
/// The live colour's p99 counts as at least this (ms) in a relative gate.
pub const P99_FLOOR_MS: f64 = 1.0;

/// One colour over a step, added up.
#[derive(Clone)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    latency: Histogram<u32>,
}

/// A tally as reports show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One gate's measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate's name as in the plan (`max_error_rate`, …, or a query's name).
    pub gate: String,
    /// What the canary measured (or the query returned).
    pub value: f64,
    /// The live colour's value, for a relative gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<f64>,
    /// The bound `value` was held to (for a relative gate: factor × live).
    pub threshold: f64,
    pub passed: bool,
}

/// What the gates say of a step so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every gate holds on enough requests.
    Pass,
    /// Fewer canary requests than `min_requests`: no gate can pass yet.
    Inconclusive,
    /// A gate failed: the first failing one.
    Breach(GateResult),
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: 0,
            errors: 0,
            latency: stats::histogram(),
        }
    }
}

impl Tally {
    pub fn add(&mut self, s: &stats::Second) {
        self.requests += s.requests;
        self.errors += s.errors;
        let _ = self.latency.add(&s.latency);
    }

    pub fn summary(&self) -> Summary {
        let ms = |q| {
            if self.latency.is_empty() {
                0.0
            } else {
                self.latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Summary {
            requests: self.requests,
            errors: self.errors,
            error_rate: rate(self.errors, self.requests),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

/// Adds the finished seconds after `*last` (up to the one before now) of both colours;
/// `*last` moves on.
pub fn gather(
    stats: &Stats,
    canary: crate::color::Color,
    tallies: &mut [Tally; 2],
    last: &mut u64,
) {
    let now = Stats::now_second();
    let live = canary.other();
    while *last + 1 < now {
        *last += 1;
        if let Some(s) = stats.second(canary, *last) {
            tallies[0].add(&s);
        }
        if let Some(s) = stats.second(live, *last) {
            tallies[1].add(&s);
        }
    }
}

/// Both tallies' summaries with the second now running added: what the continuous
/// check judges, so a failing canary is seen within a tick, not a second later.
pub fn with_current(
    stats: &Stats,
    canary: crate::color::Color,
    tallies: &[Tally; 2],
    last: u64,
) -> (Summary, Summary) {
    let now = Stats::now_second();
    let summary = |tally: &Tally, color| {
        let mut tally = tally.clone();
        // Seconds `gather` has not added yet: the one now running, and the one just
        // finished when the tick came right after a second's turn.
        for s in last + 1..=now {
            if let Some(s) = stats.second(color, s) {
                tally.add(&s);
            }
        }
        tally.summary()
    };
    (
        summary(&tallies[0], canary),
        summary(&tallies[1], canary.other()),
    )
}

/// Every in-process gate on `canary` against `live`, and the verdict. Relative gates
/// are skipped while the live colour has fewer than `min_requests` (nothing to compare
/// with; at 100 % it gets none).
pub fn judge(gates: &Gates, canary: &Summary, live: &Summary) -> (Vec<GateResult>, Verdict) {
    let min = gates.min_requests();
    let mut results = Vec::new();
    if let Some(max) = gates.max_error_rate {
        results.push(GateResult {
            gate: "max_error_rate".into(),
            value: canary.error_rate,
            live: None,
            threshold: max,
            passed: canary.error_rate <= max,
        });
    }
    if let Some(max) = gates.max_p99 {
        let max = max.as_secs_f64() * 1000.0;
        results.push(GateResult {
            gate: "max_p99_ms".into(),
            value: canary.p99_ms,
            live: None,
            threshold: max,
            passed: canary.p99_ms <= max,
        });
    }
    let comparable = live.requests >= min;
    if let (Some(factor), true) = (gates.max_error_rate_vs_live, comparable) {
        let threshold = factor * live.error_rate.max(ERROR_RATE_FLOOR);
        results.push(GateResult {
            gate: "max_error_rate_vs_live".into(),
            value: canary.error_rate,
            live: Some(live.error_rate),
            threshold,
            passed: canary.error_rate <= threshold,
        });
    }
    if let (Some(factor), true) = (gates.max_p99_vs_live, comparable) {
        let threshold = factor * live.p99_ms.max(P99_FLOOR_MS);
        results.push(GateResult {
            gate: "max_p99_vs_live".into(),
            value: canary.p99_ms,
            live: Some(live.p99_ms),
            threshold,
            passed: canary.p99_ms <= threshold,
        });
    }
    let verdict = if canary.requests < min {
        Verdict::Inconclusive
    } else {
        match results.iter().find(|r| !r.passed) {
            Some(r) => Verdict::Breach(r.clone()),
            None => Verdict::Pass,
        }
    };
    (results, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests: u64, errors: u64, p99_ms: f64) -> Summary {
        Summary {
            requests,
            errors,
            error_rate: rate(errors, requests),
            p50_ms: p99_ms / 2.0,
            p99_ms,
        }
    }

    #[test]
    fn too_few_requests_are_inconclusive_even_when_every_gate_holds() {
        let gates = Gates {
            max_error_rate: Some(0.01),
            min_requests: Some(200),
            ..Gates::default()
        };
        let (_, v) = judge(&gates, &summary(199, 0, 1.0), &summary(5000, 0, 1.0));
        assert_eq!(v, Verdict::Inconclusive);
        let (_, v) = judge(&gates, &summary(200, 0, 1.0), &summary(5000, 0, 1.0));
        assert_eq!(v, Verdict::Pass);
    }

    #[test]
    fn a_breach_names_the_gate_its_value_and_threshold() {
        let gates = Gates {
            max_error_rate: Some(0.01),
            max_p99_vs_live: Some(1.5),
            min_requests: Some(10),
            ..Gates::default()
        };
        let (_, v) = judge(&gates, &summary(1000, 100, 2.0), &summary(9000, 0, 2.0));
        let Verdict::Breach(r) = v else {
            panic!("no breach: {v:?}")
        };
        assert_eq!(r.gate, "max_error_rate");
        assert!((r.value - 0.1).abs() < 1e-9 && (r.threshold - 0.01).abs() < 1e-9);
        let (_, v) = judge(&gates, &summary(1000, 0, 40.0), &summary(9000, 0, 10.0));
        assert!(
            matches!(v, Verdict::Breach(r) if r.gate == "max_p99_vs_live" && r.threshold == 15.0)
        );
    }
}
