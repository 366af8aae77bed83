//! The only writer of the routing snapshot. Every change (switch, rollback, canary,
//! a rollout's steps) is:
//! compare the generation → build the next snapshot → persist it (temp file, fsync,
//! rename, fsync the directory) → swap the pointer → write one audit line. Writers are
//! serialised by one async mutex, so two racing deploy scripts cannot both win, and a
//! change that cannot be persisted is not applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::color::Color;
use crate::drain::Tracker;
use crate::error::SwitchError;
use crate::health::{self, GateReport};
use crate::history::{Event, History};
use crate::pool::{AdminState, Pool, epoch_ms};
use crate::routing::Routing;
use crate::snapshot::{Canary, Snapshot};

/// The part of the routing state that survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// The colour that gets all traffic but the canary's share.
    pub live: Color,
    /// The colour a rollback returns to; `None` before the first switch.
    pub previous: Option<Color>,
    /// The routing generation, kept so that callers' compare-and-swap still holds
    /// across a restart.
    pub generation: u64,
    /// The canary split, when one is on.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// Pins issued before this Unix second are ignored (the last rollback).
    #[serde(default)]
    pub pins_from: u64,
    /// The running or last rollout, as the rollout driver records it (opaque here).
    #[serde(default)]
    pub rollout: Option<serde_json::Value>,
    /// The last events, for `/history`.
    #[serde(default)]
    pub history: Vec<Event>,
    /// Backends an operator set to `drain` or `maint`, by address (`ready` ones are
    /// left out).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, AdminState>,
}

impl PersistedState {
    /// The state of `snap` with the book's rollout record and history; the backends
    /// kept are those not `ready`.
    fn of(snap: &Snapshot, rollout: Option<serde_json::Value>, history: Vec<Event>) -> Self {
        let backends = snap
            .pools
            .iter()
            .flat_map(|p| p.backends.iter())
            .filter(|b| b.admin_state() != AdminState::Ready)
            .map(|b| (b.address.clone(), b.admin_state()))
            .collect();
        PersistedState {
            live: snap.live,
            previous: snap.previous,
            generation: snap.generation,
            canary: snap.canary,
            pins_from: snap.pins_from,
            rollout,
            history,
            backends,
        }
    }

    /// The state of a first start: `live` at generation 1, nothing else.
    pub fn fresh(live: Color) -> PersistedState {
        PersistedState {
            live,
            previous: None,
            generation: 1,
            canary: None,
            pins_from: 0,
            rollout: None,
            history: Vec::new(),
            backends: BTreeMap::new(),
        }
    }
}

/// What a change records beside the snapshot: its history event and, for the rollout
/// driver, the new rollout record (`Some(None)` clears it).
#[derive(Debug, Default)]
pub struct Note {
    /// Why, for the audit line and `/history`.
    pub reason: String,
    /// The rollout the change belongs to.
    pub rollout_id: Option<u64>,
    /// Replaces the persisted rollout record when set.
    pub rollout: Option<Option<serde_json::Value>>,
}

/// The persisted records beside the snapshot.
struct Book {
    /// The rollout driver's record.
    rollout: Option<serde_json::Value>,
    /// The last events.
    history: History,
}

/// What happened to the state file at start-up; shown on `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    /// The state file path, if one is configured.
    pub path: Option<PathBuf>,
    /// True when the live colour came from the file rather than `routing.live`.
    pub restored: bool,
    /// Why an existing file was ignored (unreadable or corrupt).
    pub error: Option<String>,
}

/// Who asked for a change, for the audit line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    /// Unix uid of the admin socket peer (SO_PEERCRED), when known.
    pub uid: Option<u32>,
    /// Its gid, for the admin allow-lists.
    pub gid: Option<u32>,
}

/// The outcome of an accepted change.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// The colour that was live before the call.
    pub from: Color,
    /// The colour live after it.
    pub to: Color,
    /// The generation after the call; unchanged when `changed` is false.
    pub generation: u64,
    /// False when the target was already live: nothing was swapped or persisted.
    pub changed: bool,
    /// Applied although the state file could not be written (the way back always
    /// works); why, and that the write is retried.
    pub unpersisted: bool,
}

/// What a switch would do, without doing it (`dry_run`), or what it did.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The colour live now, which would drain if `to` is another.
    pub from: Color,
    /// The colour that would become live.
    pub to: Color,
    /// The generation after the switch; the current one when `to` is already live.
    pub generation: u64,
    /// False when `to` is already live: the real call would change nothing (as its
    /// answer's `changed` says).
    pub changed: bool,
    /// The gate verdict on the target pool.
    pub gate: GateReport,
    /// Requests and tunnels of the current live colour that would drain.
    pub drain_in_flight: usize,
    /// The live colour's open tunnels that would drain; any still open at the drain
    /// deadline are closed.
    pub drain_tunnels: usize,
}

/// A switch request as the admin API received it.
#[derive(Debug, Clone, Copy)]
pub struct SwitchRequest {
    /// The colour to make live.
    pub to: Color,
    /// The generation the caller last saw: the switch is refused if routing changed
    /// since. `None` skips the check.
    pub expect_generation: Option<u64>,
    /// Skip the gate (logged as forced).
    pub force: bool,
}

/// A canary request as the admin API or a rollout step gives it.
#[derive(Debug, Clone, Copy)]
pub struct CanaryRequest {
    /// The colour that gets the share; must not be the live one.
    pub color: Color,
    /// Basis points, 0 (off) to 10000.
    pub weight: u16,
    /// As for a switch.
    pub expect_generation: Option<u64>,
    /// Skip the gate on `color`'s pool.
    pub force: bool,
}

/// How often a state file that could not be written is tried again.
pub const PERSIST_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Switchboard {
    /// The one routing pointer the proxy reads per request.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Draining starts for the colour that stops being live, stops for the one that starts.
    tracker: Arc<Tracker>,
    /// Where each change is persisted before it is applied; `None` = in memory only.
    state_file: Option<PathBuf>,
    /// Serialises writers: compare, persist and swap happen as one step.
    write: Mutex<()>,
    /// What happened to the state file at start-up; shown on `/status`.
    report: StateReport,
    /// The rollout record and the history, persisted with each change.
    book: std::sync::Mutex<Book>,
    /// Why the state file does not hold the routing in effect (a way back applied
    /// though its write failed); [`retry_persist`](Switchboard::retry_persist) clears
    /// it once a write succeeds.
    unpersisted: std::sync::Mutex<Option<String>>,
}

// === impl Switchboard ===

impl Switchboard {
    /// `restored` gives the persisted rollout record and history (the snapshot already
    /// holds the rest); `history` is how many events are kept.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        tracker: Arc<Tracker>,
        state_file: Option<PathBuf>,
        report: StateReport,
        restored: (Option<serde_json::Value>, Vec<Event>),
        history: usize,
    ) -> Self {
        Switchboard {
            snapshot,
            tracker,
            state_file,
            write: Mutex::new(()),
            report,
            book: std::sync::Mutex::new(Book {
                rollout: restored.0,
                history: History::new(restored.1, history),
            }),
            unpersisted: std::sync::Mutex::new(None),
        }
    }

    /// Why the routing in effect is not in the state file, while it is not.
    pub fn unpersisted(&self) -> Option<String> {
        self.unpersisted.lock().ok().and_then(|u| u.clone())
    }

    fn set_unpersisted(&self, why: Option<String>) {
        self.tracker.telemetry().state_persisted(why.is_none());
        if let Ok(mut u) = self.unpersisted.lock() {
            *u = why;
        }
    }

    /// Every [`PERSIST_RETRY`], while the state file is behind the routing in effect,
    /// writes the current state again, until a write succeeds. Runs until the process
    /// ends.
    pub async fn retry_persist(self: Arc<Self>) {
        let Some(path) = self.state_file.clone() else {
            return;
        };
        loop {
            tokio::time::sleep(PERSIST_RETRY).await;
            if self.unpersisted().is_none() {
                continue;
            }
            let _writer = self.write.lock().await;
            let state = self.state_now();
            match persist(path.clone(), state).await {
                Ok(()) => {
                    self.set_unpersisted(None);
                    tracing::info!(target: "cutover::audit", path = %path.display(), "state file written again: it holds the routing in effect");
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "state file still cannot be written");
                }
            }
        }
    }

    /// The state as it stands: the snapshot in effect and the book.
    fn state_now(&self) -> PersistedState {
        let next = self.snapshot.load_full();
        let (rollout, history) = match self.book.lock() {
            Ok(b) => (b.rollout.clone(), b.history.to_vec()),
            Err(_) => (None, Vec::new()),
        };
        PersistedState::of(&next, rollout, history)
    }

    /// `POST /backends/{address}/state`: sets one backend's operator state, persisted
    /// (a state that cannot be written is not applied) and recorded in the history.
    /// Returns its colour and the state before.
    pub async fn set_backend_state(
        &self,
        address: &str,
        state: AdminState,
        caller: Caller,
    ) -> Result<(Color, AdminState), SwitchError> {
        let _writer = self.write.lock().await;
        let current = self.snapshot.load_full();
        let (color, backend) = Color::ALL
            .into_iter()
            .find_map(|c| {
                let b = current
                    .pool(c)
                    .backends
                    .iter()
                    .find(|b| b.address == address)?;
                Some((c, Arc::clone(b)))
            })
            .ok_or_else(|| SwitchError::NoBackend(address.to_owned()))?;
        let before = backend.admin_state();
        if before == state {
            return Ok((color, before));
        }
        backend.set_admin_state(state);
        let reason = format!(
            "{color} backend {address}: {} → {}",
            before.as_str(),
            state.as_str()
        );
        let note = Note {
            reason: reason.clone(),
            ..Note::default()
        };
        let staged = self.stage(&current, "backend.state", caller, &note);
        if let Some(path) = &self.state_file
            && let Err(source) = persist(path.clone(), staged.clone()).await
        {
            backend.set_admin_state(before);
            return Err(SwitchError::Persist {
                path: path.display().to_string(),
                source,
            });
        }
        self.commit_book(staged);
        tracing::info!(target: "cutover::audit", action = "backend.state", uid = caller.uid, %color, backend = address, from = before.as_str(), to = state.as_str(), "{reason}");
        Ok((color, before))
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// The last events, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.book
            .lock()
            .map(|b| b.history.to_vec())
            .unwrap_or_default()
    }

    /// The rollout record as last persisted.
    pub fn rollout_record(&self) -> Option<serde_json::Value> {
        self.book.lock().ok().and_then(|b| b.rollout.clone())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn report(&self) -> &StateReport {
        &self.report
    }

    /// Makes `req.to` live, if `expect_generation` (when given) is still current and the
    /// target pool passes the gate (unless forced). A canary is cleared.
    pub async fn switch(&self, req: SwitchRequest, caller: Caller) -> Result<Change, SwitchError> {
        self.switch_noted("switch", req, caller, Note::default())
            .await
    }

    /// A switch recorded as `action` with `note` (a rollout's promotion).
    pub async fn switch_noted(
        &self,
        action: &'static str,
        req: SwitchRequest,
        caller: Caller,
        note: Note,
    ) -> Result<Change, SwitchError> {
        let drain = self.tracker.timeout;
        self.change(
            action,
            req.expect_generation,
            req.force,
            req.force,
            caller,
            note,
            |cur| {
                let to = gated_target(cur, req)?;
                Ok((to != cur.live).then(|| {
                    let until = epoch_ms().saturating_add(drain.as_millis() as u64);
                    cur.switched(to, until)
                }))
            },
        )
        .await
    }

    /// What `switch` would do now, changing nothing: the gate per backend and what
    /// would drain, with the error the real call would get, if any.
    pub fn plan(&self, req: SwitchRequest) -> (Plan, Option<SwitchError>) {
        let cur = self.snapshot.load_full();
        let changes = req.to != cur.live;
        let drain = |count: usize| if changes { count } else { 0 };
        let plan = Plan {
            from: cur.live,
            to: req.to,
            generation: cur.generation + u64::from(changes),
            changed: changes,
            gate: health::gate(cur.pool(req.to)),
            drain_in_flight: drain(self.tracker.in_flight(cur.live)),
            drain_tunnels: drain(self.tracker.tunnels(cur.live)),
        };
        let refusal = check_generation(&cur, req.expect_generation)
            .and_then(|()| gated_target(&cur, req))
            .err();
        (plan, refusal)
    }

    /// The way back, with no gate or wait in its way: with a canary on, the canary is
    /// cleared (the live colour keeps all traffic); otherwise the previously live colour
    /// is live again. Either way every session pin issued until now is ignored.
    pub async fn rollback(
        &self,
        expect_generation: Option<u64>,
        caller: Caller,
    ) -> Result<Change, SwitchError> {
        self.rollback_noted("rollback", expect_generation, caller, Note::default())
            .await
    }

    /// A rollback recorded as `action` with `note` (a rollout's breach or abort).
    pub async fn rollback_noted(
        &self,
        action: &'static str,
        expect_generation: Option<u64>,
        caller: Caller,
        note: Note,
    ) -> Result<Change, SwitchError> {
        let drain = self.tracker.timeout;
        self.change(
            action,
            expect_generation,
            false,
            true,
            caller,
            note,
            |cur| {
                let pins_from = epoch_ms() / 1000 + 1;
                if cur.canary.is_some() {
                    return Ok(Some(Snapshot {
                        pins_from,
                        ..cur.with_canary(None)
                    }));
                }
                let to = cur.previous.ok_or(SwitchError::NoPrevious)?;
                let until = epoch_ms().saturating_add(drain.as_millis() as u64);
                Ok(Some(Snapshot {
                    pins_from,
                    // A rollback overrides pins: none to the colour left is honoured.
                    pin_drain_until_ms: 0,
                    ..cur.switched(to, until)
                }))
            },
        )
        .await
    }

    /// Sets (or with weight 0 clears) the canary split. Gated like a switch on the
    /// canary colour's pool, unless forced or clearing.
    pub async fn canary(
        &self,
        req: CanaryRequest,
        caller: Caller,
        note: Note,
    ) -> Result<Change, SwitchError> {
        self.canary_as("canary", req, caller, note).await
    }

    /// [`canary`](Switchboard::canary), recorded as `action` (a rollout's start or step).
    pub async fn canary_as(
        &self,
        action: &'static str,
        req: CanaryRequest,
        caller: Caller,
        note: Note,
    ) -> Result<Change, SwitchError> {
        self.change(
            action,
            req.expect_generation,
            req.force,
            req.weight == 0,
            caller,
            note,
            |cur| canary_next(cur, req).map(Some),
        )
        .await
    }

    /// What `canary` would get now: the gate on the colour's pool and the refusal, if
    /// any.
    pub fn canary_plan(&self, req: CanaryRequest) -> (GateReport, Option<SwitchError>) {
        let cur = self.snapshot.load_full();
        let gate = health::gate(cur.pool(req.color));
        let refusal = check_generation(&cur, req.expect_generation)
            .and_then(|()| canary_next(&cur, req))
            .err();
        (gate, refusal)
    }

    /// Records an event that changes no routing (a rollout's verdict, pause, approval),
    /// with the rollout record; persisted best-effort: a write that fails is logged and
    /// kept in memory, to be written with the next change.
    pub async fn record(&self, action: &str, caller: Caller, note: Note) {
        let _writer = self.write.lock().await;
        let current = self.snapshot.load_full();
        let state = self.stage(&current, action, caller, &note);
        if let Some(path) = &self.state_file {
            match persist(path.clone(), state.clone()).await {
                Ok(()) => self.set_unpersisted(None),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, action, "could not persist a rollout event; kept in memory");
                }
            }
        }
        self.commit_book(state);
        tracing::info!(target: "cutover::audit", action, uid = caller.uid, generation = current.generation, reason = %note.reason, "rollout event");
    }

    /// Replaces the pools (a config reload) and the routing rules, keeping the live
    /// colour, the canary, the previous one and the generation: routing belongs to the
    /// state file, and a reload is not a routing change, so callers'
    /// `expect_generation` still holds across it (a switch judges the gate on the pools
    /// current when it runs). `build` gets the current snapshot, to reuse its backends;
    /// when it fails nothing is swapped. Serialised with switches, so neither undoes the
    /// other. Returns the snapshots before and after.
    pub async fn reconfigure<E>(
        &self,
        routing: Routing,
        build: impl FnOnce(&Snapshot) -> Result<[Arc<Pool>; 2], E>,
    ) -> Result<(Arc<Snapshot>, Arc<Snapshot>), E> {
        let _writer = self.write.lock().await;
        let current = self.snapshot.load_full();
        let next = Arc::new(Snapshot {
            pools: build(&current)?,
            routing: Arc::new(routing),
            ..current.clone_routing()
        });
        self.snapshot.store(Arc::clone(&next));
        Ok((current, next))
    }

    /// The state to persist after `next`, with this change's event and record.
    fn stage(&self, next: &Snapshot, action: &str, caller: Caller, note: &Note) -> PersistedState {
        let (mut rollout, mut history) = match self.book.lock() {
            Ok(b) => (b.rollout.clone(), b.history.clone()),
            Err(_) => (None, History::new(Vec::new(), 1)),
        };
        if let Some(record) = &note.rollout {
            rollout = record.clone();
        }
        let mut event = Event::now(action, caller.uid, next.generation, note.reason.clone());
        event.rollout = note.rollout_id;
        history.push(event);
        PersistedState::of(next, rollout, history.to_vec())
    }

    fn commit_book(&self, state: PersistedState) {
        if let Ok(mut b) = self.book.lock() {
            let limit = b.history.limit();
            b.rollout = state.rollout;
            b.history = History::new(state.history, limit);
        }
    }

    /// Compare, build, persist, swap. `way_back` (a rollback, a forced switch, a
    /// canary cleared) is applied even when the state file cannot be written: the
    /// answer and `/status` say so and the write is retried; any other change that
    /// cannot be persisted is refused and changes nothing.
    #[allow(clippy::too_many_arguments)]
    async fn change(
        &self,
        action: &'static str,
        expect_generation: Option<u64>,
        forced: bool,
        way_back: bool,
        caller: Caller,
        note: Note,
        next: impl FnOnce(&Snapshot) -> Result<Option<Snapshot>, SwitchError>,
    ) -> Result<Change, SwitchError> {
        let _writer = self.write.lock().await;
        let current = self.snapshot.load_full();
        check_generation(&current, expect_generation)?;
        let Some(next) = next(&current)? else {
            return Ok(Change {
                from: current.live,
                to: current.live,
                generation: current.generation,
                changed: false,
                unpersisted: false,
            });
        };
        let state = self.stage(&next, action, caller, &note);
        let mut unpersisted = false;
        if let Some(path) = &self.state_file {
            match persist(path.clone(), state.clone()).await {
                Ok(()) => self.set_unpersisted(None),
                Err(source) if way_back => {
                    let why = format!(
                        "could not write {}: {source}; {action} applied anyway (the way back \
                         always works), the state file is behind and is retried every {}s; \
                         a restart now would come back on the last persisted routing",
                        path.display(),
                        PERSIST_RETRY.as_secs()
                    );
                    tracing::error!(target: "cutover::audit", action, uid = caller.uid, persisted = false, "{why}");
                    self.set_unpersisted(Some(why));
                    unpersisted = true;
                }
                Err(source) => {
                    return Err(SwitchError::Persist {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        }
        self.commit_book(state);
        let (generation, to, canary) = (next.generation, next.live, next.canary);
        self.snapshot.store(Arc::new(next));
        if to != current.live {
            self.tracker.abort_drain(to);
            self.tracker
                .telemetry()
                .switched(action == "rollback", forced);
            self.tracker.begin_drain(current.live);
        }
        tracing::info!(
            target: "cutover::audit",
            action,
            uid = caller.uid,
            from = %current.live,
            to = %to,
            canary = ?canary,
            old_generation = current.generation,
            generation,
            forced,
            persisted = !unpersisted,
            reason = %note.reason,
            "routing changed"
        );
        Ok(Change {
            from: current.live,
            to,
            generation,
            changed: true,
            unpersisted,
        })
    }
}

/// The snapshot after a canary request, if the request is sound and the gate lets it
/// through (clearing needs no gate).
fn canary_next(cur: &Snapshot, req: CanaryRequest) -> Result<Snapshot, SwitchError> {
    if req.weight == 0 {
        return Ok(cur.with_canary(None));
    }
    if req.color == cur.live {
        return Err(SwitchError::CanaryIsLive { color: req.color });
    }
    if !req.force {
        let report = health::gate(cur.pool(req.color));
        if !report.passed {
            return Err(SwitchError::Gate {
                to: req.color,
                report,
            });
        }
    }
    Ok(cur.with_canary(Some(Canary {
        color: req.color,
        weight: req.weight.min(crate::routing::BUCKETS),
    })))
}

/// The compare half of compare-and-swap: the caller's view must still be current.
fn check_generation(cur: &Snapshot, expect_generation: Option<u64>) -> Result<(), SwitchError> {
    match expect_generation {
        Some(expected) if expected != cur.generation => Err(SwitchError::StaleGeneration {
            expected,
            actual: cur.generation,
        }),
        _ => Ok(()),
    }
}

/// The target of a switch, if the gate lets it through: switching to the live colour
/// or forcing needs no gate; otherwise the target pool must pass it.
fn gated_target(cur: &Snapshot, req: SwitchRequest) -> Result<Color, SwitchError> {
    if !req.force && req.to != cur.live {
        let report = health::gate(cur.pool(req.to));
        if !report.passed {
            return Err(SwitchError::Gate { to: req.to, report });
        }
    }
    Ok(req.to)
}

// === state file ===

/// Reads the state file. `Ok(None)` when there is none; `Err` with a reason when it
/// exists but cannot be used (the caller reports it and starts from the config).
pub fn load_state(path: &Path) -> Result<Option<PersistedState>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read state file {}: {e}", path.display())),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        format!(
            "state file {} is corrupt ({e}); ignored, starting from routing.live; \
             the next switch rewrites it",
            path.display()
        )
    })
}

/// Writes the state durably: temp file in the same directory, fsync, rename over the
/// old file, fsync the directory so the rename itself survives a power cut.
async fn persist(path: PathBuf, state: PersistedState) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write_durably(&path, &state))
        .await
        .map_err(std::io::Error::other)?
}

fn write_durably(path: &Path, state: &PersistedState) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut body = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    body.push(b'\n');
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
