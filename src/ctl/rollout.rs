//! `cutover ctl canary`, `rollout`, `history` and `report`: the flag parsers (each
//! value checked before anything is sent), the request bodies, the views, and the
//! `--wait` follower of a running rollout.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{CtlError, call, call_raw};
use crate::color::Color;
use crate::health::GateReport;
use crate::history::Event;
use crate::rollout::judge::{GateResult, Summary};
use crate::rollout::{Evidence, Record, RolloutBrief, State};

/// How often `--wait` polls `GET /rollout`.
pub const POLL: Duration = Duration::from_millis(200);
/// How often `--wait` prints the gates while a step runs.
pub const GATES_EVERY: Duration = Duration::from_secs(3);
/// How long `--wait` keeps trying when the admin socket stops answering (a restart
/// resumes the rollout).
pub const RECONNECT_FOR: Duration = Duration::from_secs(10);

// === flag values ===

fn number(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a number")),
    }
}

/// A traffic share: `12.5` or `12.5%`, 0 to 100.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let bare = text.trim().strip_suffix('%').unwrap_or(text);
    let v = number(bare).map_err(|e| format!("{e}; write a percentage such as 10 or 12.5%"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{text:?} is not a percentage from 0 to 100"))
    }
}

/// An error rate: `1%` (0.01) or the fraction itself (`0.01`), 0 to 1.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let v = match trimmed.strip_suffix('%') {
        Some(p) => number(p).map(|v| v / 100.0),
        None => number(trimmed),
    }
    .map_err(|e| format!("{e}; write a rate such as 1% or 0.01"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{text:?} is not a rate from 0 to 1 (write 1% or 0.01 for one percent)"
        ))
    }
}

/// A duration as the server parses it (`30s`, `250ms`, `1h 30m`); passed on as given.
pub fn parse_duration(text: &str) -> Result<String, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(text.trim().to_owned()),
        _ => Err(format!(
            "{text:?} is not a duration; write e.g. 250ms, 30s, 5m or 1h"
        )),
    }
}

/// A factor of the live colour's value, at least 1 (`2.0`: twice live's).
pub fn parse_factor(text: &str) -> Result<f64, String> {
    let v = number(text.trim().strip_suffix('x').unwrap_or(text))?;
    if v >= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "{text:?} is not a factor of at least 1 (2.0 allows twice the live colour's)"
        ))
    }
}

/// The steps of `--steps 1:30m,10:1h,25,50,100`: percentages, each bare (run for
/// `--step`) or `PERCENT:DURATION`, growing, the last at most 100.
#[derive(Debug, Clone, PartialEq)]
pub struct Steps(pub Vec<Value>);

pub fn parse_steps(text: &str) -> Result<Steps, String> {
    let mut steps = Vec::new();
    let mut last = 0.0;
    for (i, item) in text.split(',').enumerate() {
        let item = item.trim();
        let (percent, duration) = match item.split_once(':') {
            Some((p, d)) => (p, Some(d)),
            None => (item, None),
        };
        let percent = parse_percent(percent).map_err(|e| format!("step {}: {e}", i + 1))?;
        if percent <= last {
            return Err(format!(
                "step {}: {percent}% does not go up from the step before (write e.g. 1:30m,10,50,100)",
                i + 1
            ));
        }
        last = percent;
        steps.push(match duration {
            None => json!(percent),
            Some(d) => {
                let d = parse_duration(d).map_err(|e| format!("step {}: {e}", i + 1))?;
                json!({ "percent": percent, "duration": d })
            }
        });
    }
    Ok(Steps(steps))
}

/// What `ctl rollout COLOUR …` was given, already checked.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub steps: Vec<Value>,
    pub step: Option<String>,
    pub max_error_rate: Option<f64>,
    pub max_p99: Option<String>,
    pub min_requests: Option<u64>,
    pub max_error_rate_vs_live: Option<f64>,
    pub max_p99_vs_live: Option<f64>,
    pub approval: bool,
    pub on_breach: Option<&'static str>,
    pub on_inconclusive: Option<&'static str>,
    pub max_extensions: Option<u32>,
    pub expect_generation: Option<u64>,
    pub dry_run: bool,
}

impl StartOptions {
    /// The `POST /rollout` body: absent options stay absent (the server's defaults).
    pub fn body(&self, to: Color) -> Value {
        let mut gates = serde_json::Map::new();
        let mut put = |key: &str, v: Option<Value>| {
            if let Some(v) = v {
                gates.insert(key.to_owned(), v);
            }
        };
        put("max_error_rate", self.max_error_rate.map(Value::from));
        put("max_p99", self.max_p99.clone().map(Value::from));
        put("min_requests", self.min_requests.map(Value::from));
        put(
            "max_error_rate_vs_live",
            self.max_error_rate_vs_live.map(Value::from),
        );
        put("max_p99_vs_live", self.max_p99_vs_live.map(Value::from));
        let mut body = json!({
            "to": to,
            "steps": self.steps,
            "gates": gates,
            "approval": self.approval,
            "dry_run": self.dry_run,
        });
        let optional = [
            ("step_duration", self.step.clone().map(Value::from)),
            ("on_breach", self.on_breach.map(Value::from)),
            ("on_inconclusive", self.on_inconclusive.map(Value::from)),
            ("max_extensions", self.max_extensions.map(Value::from)),
            ("expect_generation", self.expect_generation.map(Value::from)),
        ];
        for (key, v) in optional {
            if let Some(v) = v {
                body[key] = v;
            }
        }
        body
    }
}

// === views ===

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CtlError> {
    serde_json::from_slice(bytes).map_err(|e| CtlError::Decode(e.to_string()))
}

/// Decodes a `GET /rollout`-shaped answer.
pub fn parse_record(bytes: &[u8]) -> Result<Record, CtlError> {
    decode(bytes)
}

fn pct(weight: u16) -> String {
    format!("{}%", f64::from(weight) / 100.0)
}

/// `ms` as `4m 12s`, whole seconds (rounded up, so a running step never shows 0s).
pub fn left(ms: u64) -> String {
    let secs = ms.div_ceil(1000);
    if secs == 0 {
        return "0s".to_owned();
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// One gate as `max_error_rate 0.40% ≤ 1% ok`.
pub fn gate_text(g: &GateResult) -> String {
    let verdict = if g.passed { "ok" } else { "BREACH" };
    let (value, threshold) = match g.gate.as_str() {
        "max_error_rate" | "max_error_rate_vs_live" => (
            format!("{:.2}%", g.value * 100.0),
            format!("{:.2}%", g.threshold * 100.0),
        ),
        "max_p99_ms" | "max_p99_vs_live" => {
            (format!("{:.1}ms", g.value), format!("{:.1}ms", g.threshold))
        }
        _ => (
            crate::rollout::round(g.value),
            crate::rollout::round(g.threshold),
        ),
    };
    let bound = if g.gate.starts_with("query ") {
        "bound"
    } else {
        "≤"
    };
    format!("{} {value} {bound} {threshold} {verdict}", g.gate)
}

fn summary_text(s: &Summary) -> String {
    format!(
        "{} req, {:.2}% errors, p50/p99 {:.1}/{:.1} ms",
        s.requests,
        s.error_rate * 100.0,
        s.p50_ms,
        s.p99_ms
    )
}

/// `step 2/5 at 10%`: the step's planned share (the weight is 0 once a rollout has
/// ended).
fn step_text(r: &Record) -> String {
    let weight = r.plan.steps.get(r.step).map_or(r.weight, |s| s.weight);
    format!(
        "step {}/{} at {}",
        r.step + 1,
        r.plan.steps.len(),
        pct(weight)
    )
}

/// The line `--wait` prints when the step or the state changes.
pub fn progress_line(r: &Record) -> String {
    let mut line = format!("rollout to {}: {}", r.plan.to, step_text(r));
    if r.state == State::Running {
        let _ = write!(line, " for {}", left(r.step_duration_ms));
    }
    let _ = write!(line, ", {}", r.state.as_str());
    if let Some(reason) = &r.reason {
        let _ = write!(line, ": {reason}");
    }
    line
}

/// The line `--wait` prints every few seconds while a step runs: weight, time left,
/// the canary's numbers and each gate.
pub fn gates_line(r: &Record) -> String {
    let mut line = format!("  {} · {} left", pct(r.weight), left(r.time_left_ms));
    if let Some(c) = &r.current {
        let _ = write!(
            line,
            " · canary {} req, {:.2}% errors, p99 {:.1} ms",
            c.canary.requests,
            c.canary.error_rate * 100.0,
            c.canary.p99_ms
        );
        if !c.gates.is_empty() {
            let gates: Vec<String> = c.gates.iter().map(gate_text).collect();
            let _ = write!(line, " · {}", gates.join(", "));
        }
        let _ = write!(line, " · {}", c.verdict);
        let min = r.plan.gates.min_requests();
        if c.canary.requests < min {
            let _ = write!(line, " ({} of min_requests {min})", c.canary.requests);
        }
    }
    line
}

/// The line `--wait` prints at the end.
pub fn outcome_line(r: &Record) -> String {
    let mut line = match r.state {
        State::Promoted => format!("rollout to {}: promoted, {} is live", r.plan.to, r.plan.to),
        state => format!(
            "rollout to {}: {} at {}, {} is live",
            r.plan.to,
            state.as_str(),
            step_text(r),
            r.from
        ),
    };
    if let Some(reason) = &r.reason {
        let _ = write!(line, " ({reason})");
    }
    line
}

/// `ctl rollout status`: the rollout as a block.
pub fn render_record(r: &Record) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {} → {}: {}",
        r.from,
        r.plan.to,
        r.state.as_str()
    );
    let _ = write!(out, "  {}", step_text(r));
    if r.state.is_active() {
        let _ = write!(
            out,
            ", step of {}, {} left",
            left(r.step_duration_ms),
            left(r.time_left_ms)
        );
        if r.extensions > 0 {
            let _ = write!(out, ", extended {}×", r.extensions);
        }
    }
    let _ = writeln!(out);
    if let Some(reason) = &r.reason {
        let _ = writeln!(out, "  reason: {reason}");
    }
    let by = r
        .started_by
        .map_or_else(String::new, |u| format!(" by uid {u}"));
    let _ = writeln!(out, "  started: {}{by}", r.started);
    if let Some(f) = &r.finished {
        let decided = r
            .decided_by
            .as_deref()
            .map_or_else(String::new, |d| format!(", decided by {d}"));
        let _ = writeln!(out, "  finished: {f}{decided}");
    }
    let plan: Vec<String> = r
        .plan
        .steps
        .iter()
        .map(|s| {
            format!(
                "{} for {}",
                pct(s.weight),
                humantime::format_duration(s.duration)
            )
        })
        .collect();
    let _ = writeln!(out, "  plan: {}", plan.join(", "));
    let _ = writeln!(out, "  gates: {}", plan_gates(r));
    if let Some(b) = &r.breach {
        let _ = writeln!(out, "  breach: {}", gate_text(b));
    }
    for e in r.steps.iter().chain(&r.current) {
        render_evidence(&mut out, e);
    }
    out
}

fn plan_gates(r: &Record) -> String {
    let g = &r.plan.gates;
    let mut parts = vec![format!("min_requests {}", g.min_requests())];
    if let Some(v) = g.max_error_rate {
        parts.push(format!("max_error_rate {}%", v * 100.0));
    }
    if let Some(v) = g.max_p99 {
        parts.push(format!("max_p99 {}", humantime::format_duration(v)));
    }
    if let Some(v) = g.max_error_rate_vs_live {
        parts.push(format!("max_error_rate_vs_live {v}x"));
    }
    if let Some(v) = g.max_p99_vs_live {
        parts.push(format!("max_p99_vs_live {v}x"));
    }
    for q in &g.queries {
        parts.push(format!("query {:?}", q.name.as_deref().unwrap_or(&q.query)));
    }
    let mut text = parts.join(", ");
    let _ = write!(
        text,
        "; on breach {}, when inconclusive {}{}",
        if r.plan.rollback_on_breach {
            "roll back"
        } else {
            "pause"
        },
        if r.plan.extend_inconclusive {
            format!("extend (at most {}×)", r.plan.max_extensions)
        } else {
            "pause".to_owned()
        },
        if r.plan.approval {
            "; approval before promotion"
        } else {
            ""
        }
    );
    text
}

fn render_evidence(out: &mut String, e: &Evidence) {
    let _ = writeln!(out, "  step {} ({}%): {}", e.step + 1, e.percent, e.verdict);
    let _ = writeln!(out, "    canary: {}", summary_text(&e.canary));
    let _ = writeln!(out, "    live:   {}", summary_text(&e.live));
    for g in &e.gates {
        let _ = writeln!(out, "    {}", gate_text(g));
    }
}

/// The one-line answer to pause, resume, abort and promote.
pub fn render_action(r: &Record) -> String {
    let mut line = format!(
        "rollout to {}: {} at {}",
        r.plan.to,
        r.state.as_str(),
        step_text(r)
    );
    if let Some(reason) = &r.reason {
        let _ = write!(line, " ({reason})");
    }
    line
}

/// The line `ctl status` shows for a rollout: `rollout: to green, step 2/5 at 10%,
/// running, 4m left`; once it has ended, `rollout: to green, promoted at step 5/5`.
pub fn brief_line(b: &RolloutBrief) -> String {
    if !b.state.is_active() {
        return format!(
            "rollout: to {}, {} at step {}/{}",
            b.to,
            b.state.as_str(),
            b.step,
            b.steps
        );
    }
    format!(
        "rollout: to {}, step {}/{} at {}%, {}, {} left",
        b.to,
        b.step,
        b.steps,
        b.percent,
        b.state.as_str(),
        left(b.time_left_ms)
    )
}

/// The answer to a dry run of `POST /canary`.
pub fn render_canary_plan(code: StatusCode, bytes: &[u8]) -> Result<String, CtlError> {
    let v: Value = decode(bytes)?;
    let gate: GateReport =
        serde_json::from_value(v["gate"].clone()).map_err(|e| CtlError::Decode(e.to_string()))?;
    let verdict = if code.is_success() {
        "would be accepted".to_owned()
    } else {
        format!("would be REFUSED ({code})")
    };
    let mut out = format!(
        "dry run: canary {} {}% {verdict}\n",
        v["canary"]["color"].as_str().unwrap_or("?"),
        v["canary"]["percent"]
    );
    if let Some(err) = v["error"].as_str() {
        let _ = writeln!(out, "  {err}");
    }
    let _ = writeln!(
        out,
        "gate: {} of {} required backends ready",
        gate.ready, gate.required
    );
    for b in &gate.backends {
        let state = b
            .reason
            .as_deref()
            .map_or("ready".to_owned(), |r| format!("not ready: {r}"));
        let _ = writeln!(out, "  {:<26} {state}", b.address);
    }
    Ok(out)
}

/// The answer to a dry run of `POST /rollout` that would start.
pub fn render_rollout_plan(bytes: &[u8]) -> Result<String, CtlError> {
    let v: Value = decode(bytes)?;
    let r: Record = serde_json::from_value(v["rollout"].clone())
        .map_err(|e| CtlError::Decode(e.to_string()))?;
    let plan: Vec<String> = r
        .plan
        .steps
        .iter()
        .map(|s| {
            format!(
                "{} for {}",
                pct(s.weight),
                humantime::format_duration(s.duration)
            )
        })
        .collect();
    Ok(format!(
        "dry run: rollout {} → {} would start\n  plan: {}\n  gates: {}\n",
        r.from,
        r.plan.to,
        plan.join(", "),
        plan_gates(&r)
    ))
}

/// `ctl history`: the last `last` events as a table.
pub fn render_history(bytes: &[u8], last: usize) -> Result<String, CtlError> {
    #[derive(serde::Deserialize)]
    struct Events {
        events: Vec<Event>,
    }
    let events: Events = decode(bytes)?;
    let mut out = format!(
        "{:<24} {:<24} {:>6} {:>4}  REASON\n",
        "TIME", "ACTION", "UID", "GEN"
    );
    let skip = events.events.len().saturating_sub(last);
    for e in events.events.iter().skip(skip) {
        let uid = e.uid.map_or_else(|| "-".to_owned(), |u| u.to_string());
        let reason = e.reason.lines().collect::<Vec<_>>().join(" ");
        let line = format!(
            "{:<24} {:<24} {uid:>6} {:>4}  {reason}",
            e.time, e.action, e.generation
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if events.events.is_empty() {
        out.push_str("(no events yet)\n");
    }
    Ok(out)
}

// === --wait ===

/// How a rollout followed by `--wait` ended: `main` exits 0 when promoted, 2 when
/// rolled back or aborted, 1 otherwise.
#[derive(Debug, thiserror::Error)]
#[error("{line}")]
pub struct Ended {
    /// The rollout's final state.
    pub state: State,
    /// The outcome as printed.
    pub line: String,
}

/// Polls `GET /rollout` every [`POLL`] until the rollout `started` (as printed)
/// ends, printing a line per step or state change and the gates every
/// [`GATES_EVERY`] (with `json`, the record as one JSON line instead). The final
/// record.
pub async fn follow(socket: &Path, started: &Record, json: bool) -> Result<Record, CtlError> {
    let id = started.id;
    let mut last_key = Some((started.step, started.state, started.reason.clone()));
    let mut last_gates = Instant::now();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let answer = call_raw(socket, Method::GET, "/rollout", None).await;
        let (code, bytes) = match answer {
            Ok(a) => {
                unreachable_since = None;
                a
            }
            Err(e @ (CtlError::Connect { .. } | CtlError::Http(_))) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e);
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if !code.is_success() {
            return Err(super::refusal(code, &bytes));
        }
        let r = parse_record(&bytes)?;
        if r.id != id {
            return Err(CtlError::Decode(format!(
                "another rollout (to {}, started {}) replaced the one being followed",
                r.plan.to, r.started
            )));
        }
        let key = (r.step, r.state, r.reason.clone());
        let changed = last_key.as_ref() != Some(&key);
        let due = r.state == State::Running && last_gates.elapsed() >= GATES_EVERY;
        if json {
            if changed || due || !r.state.is_active() {
                println!("{}", String::from_utf8_lossy(&bytes).trim_end());
                last_gates = Instant::now();
            }
        } else if !r.state.is_active() {
            // The outcome line is printed by the caller.
        } else if changed {
            // A new step (or state) starts the gates clock again.
            println!("{}", progress_line(&r));
            last_gates = Instant::now();
        } else if due {
            println!("{}", gates_line(&r));
            last_gates = Instant::now();
        }
        last_key = Some(key);
        if !r.state.is_active() {
            return Ok(r);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `ctl rollout status|pause|resume|abort|promote`.
pub async fn verb(socket: &Path, json: bool, verb: &str) -> Result<(), CtlError> {
    let (method, path) = match verb {
        "status" => (Method::GET, "/rollout".to_owned()),
        other => (Method::POST, format!("/rollout/{other}")),
    };
    let bytes = call(socket, method, &path, None).await?;
    if json {
        print!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let r = parse_record(&bytes)?;
    if verb == "status" {
        print!("{}", render_record(&r));
    } else {
        println!("{}", render_action(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_a_percent_sign_or_a_fraction_and_refuse_the_rest() {
        assert_eq!(parse_rate("1%"), Ok(0.01));
        assert_eq!(parse_rate("0.5%"), Ok(0.005));
        assert_eq!(parse_rate("0.02"), Ok(0.02));
        for bad in ["abc", "150%", "2", "-1%", "NaN", ""] {
            assert!(parse_rate(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_rate("abc").unwrap_err().contains("1%"));
    }

    #[test]
    fn percentages_take_an_optional_percent_sign() {
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        assert_eq!(parse_percent("12.5%"), Ok(12.5));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("ten").is_err());
    }

    #[test]
    fn steps_mix_bare_and_timed_percentages_and_must_grow() {
        let Ok(Steps(steps)) = parse_steps("1:30m,10%:1h,25,50,100") else {
            panic!("refused")
        };
        assert_eq!(
            Value::from(steps),
            json!([{"percent":1.0,"duration":"30m"},{"percent":10.0,"duration":"1h"},25.0,50.0,100.0])
        );
        for bad in ["10,5", "1:forever", "", "1,,2", "0,10", "50,150"] {
            assert!(parse_steps(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_are_checked_and_passed_on_as_written() {
        assert_eq!(parse_duration("250ms"), Ok("250ms".to_owned()));
        assert_eq!(parse_duration("1h 30m"), Ok("1h 30m".to_owned()));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_body_carries_only_the_options_given() {
        let opts = StartOptions {
            steps: vec![json!(50), json!(100)],
            step: Some("30s".into()),
            max_error_rate: Some(0.01),
            max_p99: Some("250ms".into()),
            min_requests: Some(200),
            ..StartOptions::default()
        };
        let body = opts.body(Color::Green);
        assert_eq!(
            body,
            json!({"to":"green","steps":[50,100],"step_duration":"30s","approval":false,
                   "dry_run":false,"gates":{"max_error_rate":0.01,"max_p99":"250ms","min_requests":200}})
        );
        // The server's parser takes it.
        let parsed: crate::rollout::plan::RolloutBody =
            serde_json::from_value(body).expect("a RolloutBody");
        let plan = parsed
            .plan(Duration::from_secs(60), &[])
            .expect("a valid plan");
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(plan.gates.max_p99, Some(Duration::from_millis(250)));
    }

    #[test]
    fn time_left_rounds_up_to_whole_seconds() {
        assert_eq!(left(0), "0s");
        assert_eq!(left(1), "1s");
        assert_eq!(left(252_000), "4m 12s");
    }
}
