//! The staged canary driver. A rollout walks its steps (canary weight, duration),
//! judges the canary colour's stats since each step began against the gates, checked
//! every [`TICK`] so a failing canary is rolled back within seconds, and at the end
//! promotes (or waits for approval). It reads the per-colour stats and acts only
//! through the [`Switchboard`], with the generation it last set as its
//! compare-and-swap: a manual switch or rollback meanwhile ends it as `superseded`.
//! Every event goes to the audit log and `/history`; the record is persisted with the
//! routing state, so a restart resumes (or aborts) it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::config::RolloutConfig;
use crate::error::{AdminError, SwitchError};
use crate::health;
use crate::stats::Stats;
use crate::switchboard::{Caller, CanaryRequest, Note, SwitchRequest, Switchboard};

pub mod external;
pub mod judge;
pub mod plan;
pub mod report;

use judge::{GateResult, Summary, Tally, Verdict};
use plan::{Plan, RolloutBody};

/// How often a running rollout is checked.
pub const TICK: Duration = Duration::from_millis(250);

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    AwaitingApproval,
    Promoted,
    RolledBack,
    Aborted,
    Superseded,
}

impl State {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            State::Running | State::Paused | State::AwaitingApproval
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::AwaitingApproval => "awaiting_approval",
            State::Promoted => "promoted",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
            State::Superseded => "superseded",
        }
    }
}

/// A rollout as `GET /rollout` shows it and the state file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its start time in ms since the Unix epoch; names it in `/history`.
    pub id: u64,
    /// The live colour when it started: where a rollback returns.
    pub from: Color,
    pub plan: Plan,
    pub state: State,
    /// Why it is paused, or how it ended.
    pub reason: Option<String>,
    /// The current step's index in `plan.steps`.
    pub step: usize,
    /// The canary weight now, in basis points.
    pub weight: u16,
    /// The current step's length, extensions included, in ms.
    pub step_duration_ms: u64,
    /// Times the current step was extended for too little traffic.
    pub extensions: u32,
    /// Time left in the current step, in ms (frozen while paused).
    pub time_left_ms: u64,
    /// RFC 3339.
    pub started: String,
    /// The uid that started it.
    pub started_by: Option<u32>,
    /// The routing generation the rollout last set: its compare-and-swap.
    pub generation: u64,
    /// The current step's evidence so far.
    pub current: Option<Evidence>,
    /// Each finished step's evidence.
    pub steps: Vec<Evidence>,
    /// The gate that breached, when one did.
    pub breach: Option<GateResult>,
    /// Who or what decided the outcome: `gates`, `webhook`, `query`, `uid N`.
    pub decided_by: Option<String>,
    /// When it ended (RFC 3339).
    pub finished: Option<String>,
}

/// A rollout in brief, as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutBrief {
    pub to: Color,
    pub state: State,
    /// 1-based, of `steps`.
    pub step: usize,
    pub steps: usize,
    /// The canary share now.
    pub percent: f64,
    pub time_left_ms: u64,
    pub reason: Option<String>,
}

/// One step's measurements and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub step: usize,
    pub percent: f64,
    pub started: String,
    pub ended: Option<String>,
    pub canary: Summary,
    pub live: Summary,
    pub gates: Vec<GateResult>,
    /// `pass`, `inconclusive`, `breach`, or `running`.
    pub verdict: String,
}

/// What only the running process knows of a rollout.
struct Run {
    record: Record,
    /// When the current step (re)started running.
    step_started: Instant,
    /// Time left when paused or awaiting approval; `None` while running.
    frozen_left: Option<Duration>,
    /// Canary then live, since the step began.
    tallies: [Tally; 2],
    /// The last stats second added to `tallies`.
    last_second: u64,
    /// When the current step began, for the evidence.
    step_began: String,
}

pub struct Rollouts {
    switchboard: Arc<Switchboard>,
    config: RolloutConfig,
    /// The active or last rollout. An async mutex: the driver holds it across its
    /// switchboard calls, so a command and a tick never interleave.
    run: tokio::sync::Mutex<Option<Run>>,
    /// The brief of the rollout as last brought up to date, for `/status` (which must
    /// not wait on the driver).
    brief: std::sync::Mutex<Option<RolloutBrief>>,
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn percent(weight: u16) -> f64 {
    f64::from(weight) / 100.0
}

fn bad(message: String) -> AdminError {
    AdminError::BadRequest(message)
}

fn refused(message: impl Into<String>) -> AdminError {
    AdminError::Switch(SwitchError::Rollout(message.into()))
}

// === impl Rollouts ===

impl Rollouts {
    /// The driver, with the rollout the state file held (resumed or aborted by the
    /// first [`drive`](Rollouts::drive) tick, per `[rollout] on_restart`).
    pub fn new(switchboard: Arc<Switchboard>, config: RolloutConfig) -> Arc<Rollouts> {
        let restored = switchboard
            .rollout_record()
            .and_then(|v| serde_json::from_value::<Record>(v).ok())
            .map(|mut record| {
                record.generation = switchboard.snapshot().generation;
                let left = Duration::from_millis(record.step_duration_ms);
                Run {
                    frozen_left: (record.state != State::Running).then_some(left),
                    record,
                    step_started: Instant::now(),
                    tallies: Default::default(),
                    last_second: Stats::now_second(),
                    step_began: now_text(),
                }
            });
        Arc::new(Rollouts {
            switchboard,
            config,
            brief: std::sync::Mutex::new(None),
            run: tokio::sync::Mutex::new(restored),
        })
    }

    /// Runs the driver until the process ends: once `ready` (the first health round)
    /// has resolved, settles a restored rollout, then checks the running one every
    /// [`TICK`].
    pub async fn drive(self: Arc<Self>, ready: impl std::future::Future<Output = ()>) {
        ready.await;
        self.restored().await;
        loop {
            tokio::time::sleep(TICK).await;
            let mut guard = self.run.lock().await;
            if let Some(run) = guard.as_mut() {
                if run.record.state == State::Running {
                    self.tick(run).await;
                }
                self.fresh(run);
            }
        }
    }

    async fn restored(&self) {
        let mut guard = self.run.lock().await;
        let Some(run) = guard.as_mut() else { return };
        if !run.record.state.is_active() {
            return;
        }
        if self.config.resume_on_restart {
            let reason = format!(
                "resumed after a restart at step {} ({} %); the step runs again from its start",
                run.record.step + 1,
                percent(run.record.weight)
            );
            self.event(run, "rollout.resume", Caller::default(), reason)
                .await;
        } else {
            self.end_by_rollback(
                run,
                State::Aborted,
                "aborted at start: [rollout] on_restart = \"abort\"".into(),
                "config".into(),
                None,
            )
            .await;
        }
    }

    /// The brief for `/status`: as of the last tick (at most [`TICK`] old).
    pub fn brief(&self) -> Option<RolloutBrief> {
        self.brief.lock().ok().and_then(|b| b.clone())
    }

    /// The events of the last rollout with its record, for the report.
    pub fn switchboard(&self) -> &Arc<Switchboard> {
        &self.switchboard
    }

    /// The rollout now, with its current evidence and time left; `None` before the
    /// first.
    pub async fn view(&self) -> Option<Record> {
        let mut guard = self.run.lock().await;
        let run = guard.as_mut()?;
        if run.record.state == State::Running {
            self.gather(run);
        }
        Some(self.fresh(run))
    }

    /// Starts a rollout (or with `dry_run`, says whether it would start).
    pub async fn start(
        &self,
        body: RolloutBody,
        caller: Caller,
    ) -> Result<(bool, Record), AdminError> {
        let plan = body
            .plan(self.config.step_duration, &self.config.webhooks)
            .map_err(bad)?;
        if !plan.gates.queries.is_empty() && self.config.prometheus.is_none() {
            return Err(bad(
                "gates.queries need a Prometheus server: set [rollout] prometheus in the config"
                    .into(),
            ));
        }
        let mut guard = self.run.lock().await;
        if let Some(run) = guard.as_ref()
            && run.record.state.is_active()
        {
            return Err(refused(format!(
                "a rollout to {} is {}; pause, abort or promote it first (POST /rollout/abort)",
                run.record.plan.to,
                run.record.state.as_str()
            )));
        }
        let snap = self.switchboard.snapshot();
        if let Some(expected) = body.expect_generation
            && expected != snap.generation
        {
            return Err(AdminError::Switch(SwitchError::StaleGeneration {
                expected,
                actual: snap.generation,
            }));
        }
        let from = snap.live;
        if plan.to == from {
            return Err(refused(format!(
                "{from} is already live; a rollout goes to the other colour"
            )));
        }
        // The way back must be open before anything moves.
        let back = health::gate(snap.pool(from));
        if !back.passed {
            return Err(refused(format!(
                "the way back is not ready: a rollback would go to {from}, whose pool is not ready: {}",
                back.summary()
            )));
        }
        let first = plan.steps[0];
        let id = crate::pool::epoch_ms();
        let record = Record {
            id,
            from,
            state: State::Running,
            reason: None,
            step: 0,
            weight: first.weight,
            step_duration_ms: first.duration.as_millis() as u64,
            extensions: 0,
            time_left_ms: first.duration.as_millis() as u64,
            started: now_text(),
            started_by: caller.uid,
            generation: snap.generation,
            current: None,
            steps: Vec::new(),
            breach: None,
            decided_by: None,
            finished: None,
            plan,
        };
        let canary = CanaryRequest {
            color: record.plan.to,
            weight: first.weight,
            expect_generation: Some(snap.generation),
            force: false,
        };
        if body.dry_run {
            let (_, refusal) = self.switchboard.canary_plan(canary);
            return match refusal {
                Some(e) => Err(AdminError::Switch(e)),
                None => Ok((false, record)),
            };
        }
        let mut run = Run {
            record,
            step_started: Instant::now(),
            frozen_left: None,
            tallies: Default::default(),
            last_second: Stats::now_second(),
            step_began: now_text(),
        };
        if let Err(veto) = self.hooks(&run, "step").await {
            return Err(refused(format!("not started: {veto}")));
        }
        let reason = format!(
            "rollout to {} started at {} % ({} steps)",
            run.record.plan.to,
            percent(first.weight),
            run.record.plan.steps.len()
        );
        let note = self.note(&mut run, reason);
        let change = self
            .switchboard
            .canary_as("rollout.start", canary, caller, note)
            .await
            .map_err(AdminError::Switch)?;
        run.record.generation = change.generation;
        run.step_started = Instant::now();
        run.last_second = Stats::now_second().saturating_sub(1);
        let view = self.fresh(&mut run);
        *guard = Some(run);
        Ok((true, view))
    }

    /// `POST /rollout/pause`: holds the current weight and stops the clock.
    pub async fn pause(&self, caller: Caller) -> Result<Record, AdminError> {
        let mut guard = self.run.lock().await;
        let run = active(&mut guard)?;
        if run.record.state != State::Running {
            return Err(refused(format!(
                "the rollout is {}, not running",
                run.record.state.as_str()
            )));
        }
        self.hold(
            run,
            State::Paused,
            format!("paused by uid {}", uid(caller)),
            caller,
        )
        .await;
        Ok(self.fresh(run))
    }

    /// `POST /rollout/resume`: runs the step on from where it was paused, once the way
    /// back is open.
    pub async fn resume(&self, caller: Caller) -> Result<Record, AdminError> {
        let mut guard = self.run.lock().await;
        let run = active(&mut guard)?;
        if run.record.state != State::Paused {
            return Err(refused(format!(
                "the rollout is {}, not paused",
                run.record.state.as_str()
            )));
        }
        let snap = self.switchboard.snapshot();
        if snap.generation != run.record.generation {
            return Err(refused(
                "routing changed since the rollout paused; abort it and start again",
            ));
        }
        let back = health::gate(snap.pool(run.record.from));
        if !back.passed {
            return Err(refused(format!(
                "the way back is still not ready: {} pool: {}",
                run.record.from,
                back.summary()
            )));
        }
        let left = run.frozen_left.take().unwrap_or_default();
        run.step_started = Instant::now()
            .checked_sub(Duration::from_millis(run.record.step_duration_ms).saturating_sub(left))
            .unwrap_or_else(Instant::now);
        run.record.state = State::Running;
        run.record.reason = None;
        run.last_second = Stats::now_second().saturating_sub(1);
        self.event(
            run,
            "rollout.resume",
            caller,
            format!("resumed by uid {}", uid(caller)),
        )
        .await;
        Ok(self.fresh(run))
    }

    /// `POST /rollout/abort`: the rollback, at once.
    pub async fn abort(&self, caller: Caller) -> Result<Record, AdminError> {
        let mut guard = self.run.lock().await;
        let run = active(&mut guard)?;
        let who = format!("uid {}", uid(caller));
        self.end_by_rollback(run, State::Aborted, format!("aborted by {who}"), who, None)
            .await;
        Ok(self.fresh(run))
    }

    /// `POST /rollout/promote`: skips the remaining steps (or approves the last one).
    pub async fn promote(&self, caller: Caller) -> Result<Record, AdminError> {
        let mut guard = self.run.lock().await;
        let run = active(&mut guard)?;
        let why = if run.record.state == State::AwaitingApproval {
            format!("approved by uid {}", uid(caller))
        } else {
            format!(
                "promoted by uid {} at step {} of {}, skipping the rest",
                uid(caller),
                run.record.step + 1,
                run.record.plan.steps.len()
            )
        };
        if let Err(veto) = self.hooks(run, "promote").await {
            return Err(refused(format!("not promoted: {veto}")));
        }
        self.finish_step(run, "skipped");
        self.promote_now(run, caller, why, format!("uid {}", uid(caller)))
            .await
            .map_err(AdminError::Switch)?;
        Ok(self.fresh(run))
    }

    // === the driver ===

    async fn tick(&self, run: &mut Run) {
        let snap = self.switchboard.snapshot();
        if snap.generation != run.record.generation {
            let reason = format!(
                "routing changed under the rollout (generation {} → {}): a manual switch, rollback or canary took over",
                run.record.generation, snap.generation
            );
            run.record.state = State::Superseded;
            run.record.finished = Some(now_text());
            run.record.decided_by = Some("another caller".into());
            run.record.reason = Some(reason.clone());
            self.finish_step(run, "superseded");
            self.event(run, "rollout.superseded", Caller::default(), reason)
                .await;
            return;
        }
        self.gather(run);
        let back = health::gate(snap.pool(run.record.from));
        if !back.passed {
            let reason = format!(
                "paused: the way back is not ready ({} pool: {}); a rollback would have nowhere to go",
                run.record.from,
                back.summary()
            );
            self.hold(run, State::Paused, reason, Caller::default())
                .await;
            return;
        }
        let stats = &self.switchboard.tracker().telemetry().stats;
        let (canary, live) =
            judge::with_current(stats, run.record.plan.to, &run.tallies, run.last_second);
        let (_, verdict) = judge::judge(&run.record.plan.gates, &canary, &live);
        if let Verdict::Breach(gate) = verdict {
            self.breach(run, gate, "gates".into()).await;
            return;
        }
        if run.step_started.elapsed() < Duration::from_millis(run.record.step_duration_ms) {
            return;
        }
        match verdict {
            Verdict::Inconclusive => {
                let why = format!(
                    "{} canary requests, fewer than min_requests {}",
                    canary.requests,
                    run.record.plan.gates.min_requests()
                );
                self.inconclusive(run, why).await;
            }
            Verdict::Pass | Verdict::Breach(_) => {
                if !run.record.plan.gates.queries.is_empty() {
                    match self.queries(run).await {
                        Err(why) => return self.inconclusive(run, why).await,
                        Ok(results) => {
                            if let Some(r) = results.iter().find(|r| !r.passed) {
                                return self.breach(run, r.clone(), "query".into()).await;
                            }
                            if let Some(current) = &mut run.record.current {
                                current.gates.extend(results);
                            }
                        }
                    }
                }
                self.advance(run).await;
            }
        }
    }

    async fn queries(&self, run: &mut Run) -> Result<Vec<GateResult>, String> {
        let Some(prometheus) = &self.config.prometheus else {
            return Err("no [rollout] prometheus configured".into());
        };
        self.fresh(run);
        external::queries(
            prometheus,
            &run.record.plan.gates.queries,
            run.record.plan.to,
            run.record.from,
        )
        .await
    }

    async fn inconclusive(&self, run: &mut Run, why: String) {
        let plan = &run.record.plan;
        let step = plan.steps[run.record.step];
        if plan.extend_inconclusive && run.record.extensions < plan.max_extensions {
            run.record.extensions += 1;
            run.record.step_duration_ms += step.duration.as_millis() as u64;
            let reason = format!(
                "step {} inconclusive ({why}); extended by {} (extension {} of {})",
                run.record.step + 1,
                humantime::format_duration(step.duration),
                run.record.extensions,
                plan.max_extensions
            );
            self.event(run, "rollout.extend", Caller::default(), reason)
                .await;
        } else {
            let reason = format!(
                "paused: step {} inconclusive ({why}) after {} extensions",
                run.record.step + 1,
                run.record.extensions
            );
            self.hold(run, State::Paused, reason, Caller::default())
                .await;
        }
    }

    async fn breach(&self, run: &mut Run, gate: GateResult, decided_by: String) {
        let reason = format!(
            "gate {} breached at step {} ({} %): measured {}, threshold {}",
            gate.gate,
            run.record.step + 1,
            percent(run.record.weight),
            round(gate.value),
            round(gate.threshold)
        );
        run.record.breach = Some(gate.clone());
        if run.record.plan.rollback_on_breach {
            self.end_by_rollback(
                run,
                State::RolledBack,
                format!("rolled back: {reason}"),
                decided_by,
                Some("breach"),
            )
            .await;
        } else {
            run.record.decided_by = Some(decided_by);
            self.hold(
                run,
                State::Paused,
                format!("paused (on_breach = pause): {reason}"),
                Caller::default(),
            )
            .await;
        }
    }

    async fn advance(&self, run: &mut Run) {
        self.finish_step(run, "pass");
        let next = run.record.step + 1;
        if next >= run.record.plan.steps.len() {
            if let Err(veto) = self.hooks(run, "promote").await {
                return self.vetoed(run, veto).await;
            }
            if run.record.plan.approval {
                let reason = format!(
                    "every step passed; holding {} % until POST /rollout/promote",
                    percent(run.record.weight)
                );
                return self
                    .hold(run, State::AwaitingApproval, reason, Caller::default())
                    .await;
            }
            let reason = format!("every step passed; {} promoted", run.record.plan.to);
            if let Err(e) = self
                .promote_now(run, Caller::default(), reason, "gates".into())
                .await
            {
                let reason = format!("paused: promotion refused: {e}");
                self.hold(run, State::Paused, reason, Caller::default())
                    .await;
            }
            return;
        }
        let step = run.record.plan.steps[next];
        run.record.step = next;
        run.record.weight = step.weight;
        run.record.extensions = 0;
        run.record.step_duration_ms = step.duration.as_millis() as u64;
        if let Err(veto) = self.hooks(run, "step").await {
            return self.vetoed(run, veto).await;
        }
        let reason = format!(
            "step {} of {}: {} % to {} for {}",
            next + 1,
            run.record.plan.steps.len(),
            percent(step.weight),
            run.record.plan.to,
            humantime::format_duration(step.duration)
        );
        let note = self.note(run, reason);
        let req = CanaryRequest {
            color: run.record.plan.to,
            weight: step.weight,
            expect_generation: Some(run.record.generation),
            force: false,
        };
        match self
            .switchboard
            .canary_as("rollout.step", req, Caller::default(), note)
            .await
        {
            Ok(change) => {
                run.record.generation = change.generation;
                self.restart_step(run);
            }
            Err(e) => {
                let reason = format!("paused: step {} refused: {e}", next + 1);
                self.hold(run, State::Paused, reason, Caller::default())
                    .await;
            }
        }
    }

    async fn vetoed(&self, run: &mut Run, veto: String) {
        let gate = GateResult {
            gate: "webhook".into(),
            value: 0.0,
            live: None,
            threshold: 0.0,
            passed: false,
        };
        run.record.breach = Some(gate);
        if run.record.plan.rollback_on_breach {
            self.end_by_rollback(
                run,
                State::RolledBack,
                format!("rolled back: {veto}"),
                "webhook".into(),
                Some("breach"),
            )
            .await;
        } else {
            run.record.decided_by = Some("webhook".into());
            self.hold(
                run,
                State::Paused,
                format!("paused: {veto}"),
                Caller::default(),
            )
            .await;
        }
    }

    async fn promote_now(
        &self,
        run: &mut Run,
        caller: Caller,
        reason: String,
        decided_by: String,
    ) -> Result<(), SwitchError> {
        run.record.state = State::Promoted;
        run.record.weight = 0;
        run.record.finished = Some(now_text());
        run.record.decided_by = Some(decided_by);
        run.record.reason = Some(reason.clone());
        let note = self.note(run, reason);
        let req = SwitchRequest {
            to: run.record.plan.to,
            expect_generation: Some(run.record.generation),
            force: false,
        };
        match self
            .switchboard
            .switch_noted("rollout.promote", req, caller, note)
            .await
        {
            Ok(change) => {
                run.record.generation = change.generation;
                Ok(())
            }
            Err(e) => {
                run.record.state = State::Running;
                run.record.finished = None;
                run.record.decided_by = None;
                run.record.weight = run.record.plan.steps[run.record.step].weight;
                Err(e)
            }
        }
    }

    /// Clears the canary in one swap (a rollback) and ends the rollout as `state`.
    async fn end_by_rollback(
        &self,
        run: &mut Run,
        state: State,
        reason: String,
        decided_by: String,
        verdict: Option<&str>,
    ) {
        self.gather(run);
        self.finish_step(run, verdict.unwrap_or(state.as_str()));
        let held = run.record.weight;
        run.record.state = state;
        run.record.weight = 0;
        run.record.finished = Some(now_text());
        run.record.decided_by = Some(decided_by);
        run.record.reason = Some(reason.clone());
        let note = self.note(run, reason.clone());
        let caller = Caller::default();
        let result = if self.switchboard.snapshot().canary.is_some() {
            self.switchboard
                .rollback_noted(rollback_action(state), None, caller, note)
                .await
                .map(|c| c.generation)
        } else {
            self.switchboard.record("rollout.end", caller, note).await;
            Ok(self.switchboard.snapshot().generation)
        };
        match result {
            Ok(generation) => run.record.generation = generation,
            Err(e) => {
                tracing::error!(error = %e, "the rollout's rollback failed; the canary may still be on");
                run.record.weight = held;
            }
        }
    }

    /// Holds the rollout in `state` (paused, awaiting approval) with the clock stopped.
    async fn hold(&self, run: &mut Run, state: State, reason: String, caller: Caller) {
        let left = Duration::from_millis(run.record.step_duration_ms)
            .saturating_sub(run.step_started.elapsed());
        run.frozen_left = Some(left);
        run.record.state = state;
        run.record.reason = Some(reason.clone());
        let action = match state {
            State::AwaitingApproval => "rollout.awaiting_approval",
            _ => "rollout.pause",
        };
        self.event(run, action, caller, reason).await;
    }

    /// Records an event with the current record.
    async fn event(&self, run: &mut Run, action: &str, caller: Caller, reason: String) {
        let note = self.note(run, reason);
        self.switchboard.record(action, caller, note).await;
    }

    fn note(&self, run: &mut Run, reason: String) -> Note {
        let record = self.fresh(run);
        Note {
            reason,
            rollout_id: Some(record.id),
            rollout: Some(serde_json::to_value(&record).ok()),
        }
    }

    async fn hooks(&self, run: &Run, before: &str) -> Result<(), String> {
        if run.record.plan.webhooks.is_empty() {
            return Ok(());
        }
        let body = serde_json::json!({ "before": before, "rollout": run.record });
        external::webhooks(&run.record.plan.webhooks, &body).await
    }

    fn gather(&self, run: &mut Run) {
        let stats = &self.switchboard.tracker().telemetry().stats;
        judge::gather(
            stats,
            run.record.plan.to,
            &mut run.tallies,
            &mut run.last_second,
        );
    }

    fn restart_step(&self, run: &mut Run) {
        run.step_started = Instant::now();
        run.tallies = Default::default();
        run.last_second = Stats::now_second().saturating_sub(1);
        run.step_began = now_text();
        run.record.current = None;
    }

    /// Moves the current evidence into the finished steps with `verdict`.
    fn finish_step(&self, run: &mut Run, verdict: &str) {
        self.fresh(run);
        if let Some(mut current) = run.record.current.take() {
            current.ended = Some(now_text());
            current.verdict = verdict.to_owned();
            run.record.steps.push(current);
        }
    }

    /// The record with the current step's evidence and time left brought up to now.
    fn fresh(&self, run: &mut Run) -> Record {
        let r = &mut run.record;
        r.time_left_ms = match run.frozen_left {
            Some(left) => left.as_millis() as u64,
            None if r.state == State::Running => Duration::from_millis(r.step_duration_ms)
                .saturating_sub(run.step_started.elapsed())
                .as_millis() as u64,
            None => 0,
        };
        if r.state.is_active() {
            // The same tallies the continuous check judges, the running second included,
            // so a step's evidence never contradicts the verdict it ended with.
            let stats = &self.switchboard.tracker().telemetry().stats;
            let (canary, live) =
                judge::with_current(stats, r.plan.to, &run.tallies, run.last_second);
            let (gates, verdict) = judge::judge(&r.plan.gates, &canary, &live);
            let verdict = match verdict {
                Verdict::Pass => "passing",
                Verdict::Inconclusive => "inconclusive",
                Verdict::Breach(_) => "breach",
            };
            let queries: Vec<GateResult> = r
                .current
                .as_ref()
                .map(|c| {
                    c.gates
                        .iter()
                        .filter(|g| g.gate.starts_with("query "))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            r.current = Some(Evidence {
                step: r.step,
                percent: percent(r.plan.steps[r.step].weight),
                started: run.step_began.clone(),
                ended: None,
                canary,
                live,
                gates: gates.into_iter().chain(queries).collect(),
                verdict: verdict.to_owned(),
            });
        }
        if let Ok(mut brief) = self.brief.lock() {
            *brief = Some(RolloutBrief {
                to: r.plan.to,
                state: r.state,
                step: r.step + 1,
                steps: r.plan.steps.len(),
                percent: percent(r.weight),
                time_left_ms: r.time_left_ms,
                reason: r.reason.clone(),
            });
        }
        r.clone()
    }
}

/// How a rollout's rollback shows in `/history`.
fn rollback_action(state: State) -> &'static str {
    match state {
        State::Aborted => "rollout.abort",
        _ => "rollout.rollback",
    }
}

fn active(guard: &mut Option<Run>) -> Result<&mut Run, AdminError> {
    match guard.as_mut() {
        Some(run) if run.record.state.is_active() => Ok(run),
        Some(run) => Err(refused(format!(
            "no rollout is active; the last one {} ({})",
            run.record.state.as_str(),
            run.record.reason.as_deref().unwrap_or("-")
        ))),
        None => Err(refused(
            "no rollout is active; start one with POST /rollout",
        )),
    }
}

fn uid(caller: Caller) -> String {
    caller
        .uid
        .map_or_else(|| "unknown".to_owned(), |u| u.to_string())
}

/// A measured value as messages show it: 4 significant digits.
pub fn round(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}
