//! A deadline that moves with every request and is rarely reached.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A deadline that moves with every request and is rarely reached. Moving it later
/// only records the time; the timer is re-armed when it fires before the recorded
/// time. So a request costs no timer update, where resetting a tokio `Sleep` per
/// request re-registers it in the timer wheel each time.
pub struct Deadline {
    /// The armed timer. It may fire before `at` when the deadline was moved later;
    /// `reached` then re-arms it.
    sleep: Pin<Box<Sleep>>,
    /// When the deadline is really due; `set` only records it unless it is earlier than
    /// the armed timer.
    at: Instant,
}

impl Deadline {
    pub fn new(after: Duration) -> Deadline {
        let at = Instant::now() + after;
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
        }
    }

    pub fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
    }

    /// Moves the deadline to `at` if that is earlier than the recorded time.
    pub fn bring_forward(&mut self, at: Instant) {
        if at < self.at {
            self.set(at);
        }
    }

    /// Resolves once the recorded time has passed.
    pub async fn reached(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.at {
                return;
            }
            let at = self.at;
            self.sleep.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_reached_at_the_last_time_set_later_or_earlier() {
        let start = Instant::now();
        let mut deadline = Deadline::new(Duration::from_secs(10));
        // Moved later twice: the first timer fires early and is re-armed.
        deadline.set(start + Duration::from_secs(15));
        deadline.set(start + Duration::from_secs(25));
        deadline.reached().await;
        assert_eq!(start.elapsed(), Duration::from_secs(25));
        // Set again after being reached: reached again at the new time.
        deadline.set(start + Duration::from_secs(28));
        deadline.reached().await;
        assert_eq!(start.elapsed(), Duration::from_secs(28));
        // Moved earlier than its armed timer: reached at the earlier time.
        let mut deadline = Deadline::new(Duration::from_secs(30));
        deadline.set(start + Duration::from_secs(31));
        deadline.reached().await;
        assert_eq!(start.elapsed(), Duration::from_secs(31));
    }
}
