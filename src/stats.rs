//! Per-colour stats over sliding windows (the last 10 s and the last 60 s): requests/s,
//! error rate, p50/p90/p99 latency. These are what `status` shows and what rollout
//! gates read.
//!
//! Each colour has a ring of 60 one-second slots. A slot holds counters (atomics) and
//! latency histograms (`hdrhistogram`, 2 significant digits) behind a few mutexes
//! sharded by thread, so two workers never wait on each other and a reader only
//! merges. A slot whose second has passed is cleared by the first writer of the new
//! second that lands on it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::pool::epoch_ms;

/// The stats second holding millisecond `ms` of the process epoch, counted from 1.
fn second_of(ms: u64) -> u64 {
    ms / 1000 + 1
}

const SLOTS: usize = 60;
/// Shards per slot: ~10.7 KB each, so 60 slots x 2 shards x 2 colours is ~2.6 MB.
const SHARDS: usize = 2;
/// Latencies are recorded in microseconds, from 1 µs to 100 s.
const MAX_MICROS: u64 = 100_000_000;

pub struct Stats {
    /// One ring per colour, indexed by [`Color::index`].
    colors: [Ring; 2],
}

struct Ring {
    /// One slot per second of the last minute; second `s` lands on slot `s % 60` and
    /// reuses it.
    slots: Box<[Slot]>,
}

struct Slot {
    /// The second (since the process epoch) this slot currently counts.
    second: AtomicU64,
    /// Requests that finished in this second, errors included.
    requests: AtomicU64,
    /// 5xx answers and upstream errors.
    errors: AtomicU64,
    /// Latencies in µs, in a few histograms sharded by thread so that writers seldom
    /// wait on one lock; a reader merges them.
    latency: [Mutex<Histogram<u32>>; SHARDS],
}

/// One colour over one window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Window {
    /// How long the window is, in seconds: the length asked for, clamped to 1..=59 by
    /// [`Stats::window`].
    pub seconds: u64,
    /// Requests that finished in the window, errors included.
    pub requests: u64,
    /// Of those, the ones answered with a 5xx or broken off by the backend.
    pub errors: u64,
    /// `requests` over the time the window really covers: its whole seconds plus the
    /// elapsed part of the current one.
    pub requests_per_second: f64,
    /// errors / requests, 0 when there were none.
    pub error_rate: f64,
    /// Median latency in ms, from routing to the end of the response body (2
    /// significant digits); 0 when nothing finished.
    pub p50_ms: f64,
    /// 90th percentile latency in ms, measured as `p50_ms` is.
    pub p90_ms: f64,
    /// 99th percentile latency in ms, measured as `p50_ms` is.
    pub p99_ms: f64,
}

// === impl Stats ===

impl Default for Stats {
    fn default() -> Self {
        Stats {
            colors: [Ring::new(), Ring::new()],
        }
    }
}

impl Stats {
    /// Records one finished request.
    #[inline]
    pub fn record(&self, color: Color, error: bool, latency: Duration) {
        let second = second_of(epoch_ms());
        let slot = self.colors[color.index()].slot(second);
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        if let Ok(mut h) = slot.latency[shard()].lock() {
            h.saturating_record(micros);
        }
    }

    /// The last `seconds` seconds of `color`, the current partial second included.
    pub fn window(&self, color: Color, seconds: u64) -> Window {
        let seconds = seconds.clamp(1, SLOTS as u64 - 1);
        let now_ms = epoch_ms();
        let now = second_of(now_ms);
        let ring = &self.colors[color.index()];
        let mut merged = new_histogram();
        let (mut requests, mut errors) = (0, 0);
        for s in now.saturating_sub(seconds - 1)..=now {
            let slot = &ring.slots[(s % SLOTS as u64) as usize];
            if slot.second.load(Ordering::Acquire) != s {
                continue;
            }
            requests += slot.requests.load(Ordering::Relaxed);
            errors += slot.errors.load(Ordering::Relaxed);
            for shard in &slot.latency {
                if let Ok(h) = shard.lock() {
                    let _ = merged.add(&*h);
                }
            }
        }
        // The window really spans (seconds - 1) whole seconds plus the current part.
        let span = (seconds - 1) as f64 + (now_ms % 1000) as f64 / 1000.0;
        let ms = |q: f64| {
            if merged.is_empty() {
                0.0
            } else {
                merged.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Window {
            seconds,
            requests,
            errors,
            requests_per_second: if span > 0.0 {
                requests as f64 / span
            } else {
                0.0
            },
            error_rate: if requests > 0 {
                errors as f64 / requests as f64
            } else {
                0.0
            },
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
        }
    }
}

/// One finished second of one colour, as the rollout driver adds it up.
pub struct Second {
    pub requests: u64,
    pub errors: u64,
    /// Latencies in µs.
    pub latency: Histogram<u32>,
}

impl Stats {
    /// The current second since the process epoch, as [`Stats::second`] counts them:
    /// from 1, so "the second before the first" is a second too (a rollout started in
    /// the process's first second counts from it).
    pub fn now_second() -> u64 {
        second_of(epoch_ms())
    }

    /// What `color` recorded in second `s`, while it is still in the ring (the last
    /// minute); `None` when the slot has moved on or nothing was recorded.
    pub fn second(&self, color: Color, s: u64) -> Option<Second> {
        let slot = &self.colors[color.index()].slots[(s % SLOTS as u64) as usize];
        if slot.second.load(Ordering::Acquire) != s {
            return None;
        }
        let mut latency = new_histogram();
        for shard in &slot.latency {
            if let Ok(h) = shard.lock() {
                let _ = latency.add(&*h);
            }
        }
        Some(Second {
            requests: slot.requests.load(Ordering::Relaxed),
            errors: slot.errors.load(Ordering::Relaxed),
            latency,
        })
    }
}

/// An empty latency histogram with the bounds the stats use.
pub fn histogram() -> Histogram<u32> {
    new_histogram()
}

// === impl Ring ===

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }

    /// The slot for `second`, cleared first if it still holds an older second.
    #[inline]
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let held = slot.second.load(Ordering::Acquire);
        if held != second
            && slot
                .second
                .compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for shard in &slot.latency {
                if let Ok(mut h) = shard.lock() {
                    h.reset();
                }
            }
        }
        slot
    }
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| Mutex::new(new_histogram())),
        }
    }
}

#[allow(clippy::expect_used, reason = "constant bounds; no input reaches them")]
fn new_histogram() -> Histogram<u32> {
    // Constant bounds, valid for hdrhistogram (1 <= low, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("constant histogram bounds are valid")
}

/// A shard per thread, stable for the thread's life.
fn shard() -> usize {
    use std::cell::Cell;
    thread_local!(static SHARD: Cell<usize> = const { Cell::new(usize::MAX) });
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        s.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_requests_errors_and_quantiles() {
        let stats = Stats::default();
        for i in 0..100u64 {
            stats.record(
                Color::Green,
                i % 10 == 0,
                Duration::from_millis(if i < 90 { 10 } else { 200 }),
            );
        }
        let w = stats.window(Color::Green, 10);
        assert_eq!((w.requests, w.errors), (100, 10));
        assert!((w.error_rate - 0.1).abs() < 1e-9);
        assert!((w.p50_ms - 10.0).abs() <= 0.1, "{w:?}");
        assert!((w.p99_ms - 200.0).abs() <= 2.0, "{w:?}");
        assert_eq!(stats.window(Color::Blue, 10).requests, 0);
    }
}
