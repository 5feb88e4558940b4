//! How many more tasks the scheduler may put on READY right now.
//!
//! Fair ordering only matters while tasks still wait in the scheduler: whatever is
//! already on READY is delivered in READY's order. So the scheduler keeps READY's
//! undelivered backlog short, about `ready_backlog` worth of work at the pace the
//! workers currently pull (never fewer than `ready_backlog_min` messages), and leaves
//! the rest in INTAKE where the next fair choice is still open. The pace and the
//! backlog come from the workers' consumer info, asked for only when the credit runs
//! out, so an unsaturated system never waits for it.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::ConsumerInfoError;
use tokio::time::Instant;

/// Shortest wait between two consumer-info requests while READY is full.
const POLL_MIN: Duration = Duration::from_millis(5);
/// Longest wait: reached while workers take nothing (stopped, or all busy).
const POLL_MAX: Duration = Duration::from_millis(200);

/// Credit for READY publishes, refreshed from the workers' consumer.
pub struct ReadyCredit {
    consumer: PullConsumer,
    pace: Pace,
    available: u64,
    next_poll: Instant,
    poll_wait: Duration,
}

impl ReadyCredit {
    /// Credit against `consumer` (the workers' durable consumer on READY).
    pub fn new(consumer: PullConsumer, backlog: Duration, min: u64) -> Self {
        Self {
            consumer,
            pace: Pace::new(backlog, min),
            // The first refresh decides: READY may already hold a backlog.
            available: 0,
            next_poll: Instant::now(),
            poll_wait: POLL_MIN,
        }
    }

    /// Spends one credit; false when there is none left.
    pub fn take(&mut self) -> bool {
        if self.available == 0 {
            return false;
        }
        self.available -= 1;
        true
    }

    /// Returns a credit taken for a task that went elsewhere than the shared consumer.
    pub fn give_back(&mut self) {
        self.available += 1;
    }

    /// When the next refresh may ask the server (refreshes are spaced out while
    /// nothing moves, so a stopped worker pool costs a few requests per second).
    pub fn next_poll(&self) -> Instant {
        self.next_poll
    }

    /// Asks the server how far the workers got and recomputes the credit;
    /// `unconfirmed` forwards are published but not yet counted by the server.
    pub async fn refresh(&mut self, unconfirmed: u64) -> Result<(), ConsumerInfoError> {
        let info = self.consumer.get_info().await?;
        let moved = self
            .pace
            .observe(Instant::now(), info.delivered.consumer_sequence);
        self.available = self
            .pace
            .target()
            .saturating_sub(info.num_pending + unconfirmed);
        self.poll_wait = if moved {
            POLL_MIN
        } else {
            (self.poll_wait * 2).min(POLL_MAX)
        };
        self.next_poll = Instant::now() + self.poll_wait;
        Ok(())
    }
}

/// The workers' pulling pace, smoothed, and the READY backlog it calls for.
#[derive(Debug)]
struct Pace {
    backlog: Duration,
    min: u64,
    last: Option<(Instant, u64)>,
    /// Deliveries per second, exponentially smoothed.
    per_second: f64,
}

impl Pace {
    fn new(backlog: Duration, min: u64) -> Self {
        Self {
            backlog,
            min,
            last: None,
            per_second: 0.0,
        }
    }

    /// Records the consumer's delivered count at `now`; true when it advanced.
    fn observe(&mut self, now: Instant, delivered: u64) -> bool {
        let Some((then, before)) = self.last.replace((now, delivered)) else {
            return false;
        };
        let elapsed = now.duration_since(then).as_secs_f64();
        if elapsed <= 0.0 {
            return delivered > before;
        }
        let sample = delivered.saturating_sub(before) as f64 / elapsed;
        // Quick to rise (a worker pool speeding up must not starve), slower to fall.
        let weight = if sample > self.per_second { 0.5 } else { 0.2 };
        self.per_second += weight * (sample - self.per_second);
        delivered > before
    }

    /// Messages READY should hold undelivered.
    fn target(&self) -> u64 {
        let at_pace = (self.per_second * self.backlog.as_secs_f64()).ceil() as u64;
        at_pace.max(self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_workers_get_the_minimum() {
        let mut pace = Pace::new(Duration::from_millis(20), 4);
        let start = Instant::now();
        assert!(!pace.observe(start, 0));
        assert!(!pace.observe(start + Duration::from_secs(1), 0));
        assert_eq!(pace.target(), 4);
    }

    #[test]
    fn backlog_follows_the_pace() {
        let mut pace = Pace::new(Duration::from_millis(20), 4);
        let start = Instant::now();
        pace.observe(start, 0);
        // 10,000 deliveries/s for a while: 20 ms of that is 200 messages.
        let mut delivered = 0;
        for step in 1..=20u64 {
            delivered += 100;
            assert!(pace.observe(start + Duration::from_millis(10 * step), delivered));
        }
        assert!((190..=210).contains(&pace.target()), "{}", pace.target());
        // Workers stop: the target decays back towards the minimum.
        for step in 21..=80u64 {
            pace.observe(start + Duration::from_millis(10 * step), delivered);
        }
        assert_eq!(pace.target(), 4);
    }
}
