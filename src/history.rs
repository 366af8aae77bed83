//! The events of routing and rollouts (switch, rollback, canary, each rollout step,
//! verdict, breach, pause, approval, promotion): the last N, kept with the state file
//! and served on `GET /history`. A leaf: the switchboard records, admin reads.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One thing that happened, as `/history` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// RFC 3339, ms precision.
    pub time: String,
    /// What happened: `switch`, `rollback`, `canary`, `rollout.start`, `rollout.step`,
    /// `rollout.breach`, `rollout.pause`, `rollout.promote`, …
    pub action: String,
    /// The admin caller's uid; `None` when the rollout driver acted by itself.
    pub uid: Option<u32>,
    /// The routing generation after the event.
    pub generation: u64,
    /// Why, in words: the gate and its value, the caller's request, …
    pub reason: String,
    /// The rollout the event belongs to, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u64>,
}

/// The last `limit` events, oldest first.
#[derive(Debug, Clone)]
pub struct History {
    events: VecDeque<Event>,
    limit: usize,
}

impl Event {
    pub fn now(action: &str, uid: Option<u32>, generation: u64, reason: String) -> Event {
        Event {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            action: action.to_owned(),
            uid,
            generation,
            reason,
            rollout: None,
        }
    }
}

impl History {
    pub fn new(events: Vec<Event>, limit: usize) -> History {
        let mut h = History {
            events: VecDeque::with_capacity(limit.min(events.len() + 1)),
            limit: limit.max(1),
        };
        for e in events {
            h.push(e);
        }
        h
    }

    pub fn push(&mut self, event: Event) {
        while self.events.len() >= self.limit {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn to_vec(&self) -> Vec<Event> {
        self.events.iter().cloned().collect()
    }
}
