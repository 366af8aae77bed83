//! Per-request failures logged at a bounded rate: during an outage under load, every
//! request fails the same way, and a line for each would drown the log (and the disk).
//! State changes (a backend down, ejected, back) are logged once where they happen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines a kind of failure may log per second; the rest are counted and reported with
/// the next line that is logged.
const PER_SECOND: u64 = 5;

/// A budget of log lines for one kind of failure. Lock-free: two atomics per call.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// The second (since the Unix epoch) and the lines logged in it, packed: the
    /// second in the high 48 bits, the count in the low 16.
    window: AtomicU64,
    /// Lines not logged since the last one that was.
    suppressed: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether this line may be logged; if so, how many were suppressed before it.
    pub fn allow(&self) -> Option<u64> {
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let packed = self
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                let (at, n) = (w >> 16, w & 0xffff);
                if at != second {
                    Some(second << 16 | 1)
                } else if n < PER_SECOND {
                    Some(w + 1)
                } else {
                    None
                }
            });
        match packed {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_a_few_lines_a_second_pass_and_the_rest_are_counted() {
        let limit = LogLimit::new();
        let passed = (0..1000).filter(|_| limit.allow().is_some()).count() as u64;
        // The calls may straddle a second boundary: at most two seconds' budget.
        assert!((PER_SECOND..=2 * PER_SECOND).contains(&passed), "{passed}");
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 1000 - passed);
    }
}
