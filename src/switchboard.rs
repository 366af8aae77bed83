//! The only writer of the routing snapshot. Every change (switch, rollback) is:
//! compare the generation → build the next snapshot → persist it (temp file, fsync,
//! rename, fsync the directory) → swap the pointer → write one audit line. Writers are
//! serialised by one async mutex, so two racing deploy scripts cannot both win, and a
//! change that cannot be persisted is not applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::color::Color;
use crate::drain::Tracker;
use crate::error::SwitchError;
use crate::health::{self, GateReport};
use crate::pool::Pool;
use crate::snapshot::Snapshot;

/// The part of the routing state that survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// The colour that gets all traffic.
    pub live: Color,
    /// The colour a rollback returns to; `None` before the first switch.
    pub previous: Option<Color>,
    /// The routing generation, kept so that callers' compare-and-swap still holds
    /// across a restart.
    pub generation: u64,
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
}

// === impl Switchboard ===

impl Switchboard {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        tracker: Arc<Tracker>,
        state_file: Option<PathBuf>,
        report: StateReport,
    ) -> Self {
        Switchboard {
            snapshot,
            tracker,
            state_file,
            write: Mutex::new(()),
            report,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn report(&self) -> &StateReport {
        &self.report
    }

    /// Makes `req.to` live, if `expect_generation` (when given) is still current and the
    /// target pool passes the gate (unless forced).
    pub async fn switch(&self, req: SwitchRequest, caller: Caller) -> Result<Change, SwitchError> {
        self.change("switch", req.expect_generation, req.force, caller, |cur| {
            gated_target(cur, req)
        })
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
            gate: health::gate(cur.pool(req.to)),
            drain_in_flight: drain(self.tracker.in_flight(cur.live)),
            drain_tunnels: drain(self.tracker.tunnels(cur.live)),
        };
        let refusal = check_generation(&cur, req.expect_generation)
            .and_then(|()| gated_target(&cur, req))
            .err();
        (plan, refusal)
    }

    /// Makes the previously live colour live again. No gate or wait stands in its way.
    pub async fn rollback(
        &self,
        expect_generation: Option<u64>,
        caller: Caller,
    ) -> Result<Change, SwitchError> {
        self.change("rollback", expect_generation, false, caller, |cur| {
            cur.previous.ok_or(SwitchError::NoPrevious)
        })
        .await
    }

    /// Replaces the pools (a config reload), keeping the live colour, the previous one
    /// and the generation: routing belongs to the state file, and a reload is not a
    /// routing change, so callers' `expect_generation` still holds across it (a switch
    /// judges the gate on the pools current when it runs). `build` gets the current
    /// snapshot, to reuse its backends; when it fails nothing is swapped. Serialised
    /// with switches, so neither undoes the other. Returns the snapshots before and
    /// after.
    pub async fn reconfigure<E>(
        &self,
        build: impl FnOnce(&Snapshot) -> Result<[Arc<Pool>; 2], E>,
    ) -> Result<(Arc<Snapshot>, Arc<Snapshot>), E> {
        let _writer = self.write.lock().await;
        let current = self.snapshot.load_full();
        let next = Arc::new(Snapshot {
            generation: current.generation,
            live: current.live,
            previous: current.previous,
            pools: build(&current)?,
        });
        self.snapshot.store(Arc::clone(&next));
        Ok((current, next))
    }

    async fn change(
        &self,
        action: &'static str,
        expect_generation: Option<u64>,
        forced: bool,
        caller: Caller,
        target: impl FnOnce(&Snapshot) -> Result<Color, SwitchError>,
    ) -> Result<Change, SwitchError> {
        let _writer = self.write.lock().await;
        let current = self.snapshot.load_full();
        check_generation(&current, expect_generation)?;
        let to = target(&current)?;
        if to == current.live {
            return Ok(Change {
                from: current.live,
                to,
                generation: current.generation,
                changed: false,
            });
        }
        let next = current.switched(to);
        if let Some(path) = &self.state_file {
            let state = PersistedState {
                live: next.live,
                previous: next.previous,
                generation: next.generation,
            };
            persist(path.clone(), state)
                .await
                .map_err(|source| SwitchError::Persist {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        let generation = next.generation;
        self.snapshot.store(Arc::new(next));
        self.tracker.abort_drain(to);
        self.tracker
            .telemetry()
            .switched(action == "rollback", forced);
        self.tracker.begin_drain(current.live);
        tracing::info!(
            target: "cutover::audit",
            action,
            uid = caller.uid,
            from = %current.live,
            to = %to,
            old_generation = current.generation,
            generation,
            forced,
            "routing changed"
        );
        Ok(Change {
            from: current.live,
            to,
            generation,
            changed: true,
        })
    }
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
