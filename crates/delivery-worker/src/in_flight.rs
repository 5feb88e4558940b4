//! How many deliveries run at once: at most `worker.concurrency`, and fewer while
//! the worker's runtime has no idle time left.
//!
//! A delivery to a slow endpoint spends its time waiting on the network, so every
//! extra one in flight adds throughput; that is what `worker.concurrency` is for.
//! When the endpoints answer fast, the worker runs out of CPU first. Past that point
//! more deliveries in flight add no throughput, only time spent queueing for the CPU
//! and a working set (a connection, its buffers and a task per delivery) that no
//! longer fits in the CPU's caches. Measured with the benchmark's local receiver on
//! a 2-core machine, 512 in flight cost the worker about a fifth more CPU per
//! delivery than 128 did, and a third more than 64.
//!
//! So the open consumer's limit follows the runtime's busy ratio ([`next_limit`]):
//! every [`WINDOW`] it shrinks by an eighth while the runtime was busy for at least
//! [`SATURATED`] of the window, and grows by an eighth while it was idle for more
//! than a quarter, between [`FLOOR`] (or the configured limit, if lower) and the
//! configured limit. A worker whose endpoints are slow is mostly idle, so its limit
//! stays at `worker.concurrency`.
//!
//! Messages the pull has already brought wait for a slot without progress acks. That
//! wait stays far below the ack wait: a saturated runtime frees slots every few
//! milliseconds, and slots held by slow calls leave the runtime idle, which raises
//! the limit back to `worker.concurrency` within two seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the limit is adjusted.
pub const WINDOW: Duration = Duration::from_millis(100);

/// The lowest adaptive limit: enough deliveries to cover the NATS and HTTP round
/// trips of each at the throughput one worker reaches.
pub const FLOOR: usize = 64;

/// Busy ratio at and above which the runtime counts as saturated.
pub const SATURATED: f64 = 0.9;

/// Busy ratio below which the runtime has room for more deliveries.
pub const ROOM: f64 = 0.75;

/// The limit after a window in which the runtime was busy for `busy` of the time.
pub fn next_limit(limit: usize, floor: usize, cap: usize, busy: f64) -> usize {
    let step = (limit / 8).max(1);
    let next = if busy >= SATURATED {
        limit.saturating_sub(step)
    } else if busy < ROOM {
        limit.saturating_add(step)
    } else {
        limit
    };
    next.clamp(floor.min(cap), cap)
}

/// Slots for deliveries in flight, at most `limit` of them taken at a time.
#[derive(Debug)]
pub struct InFlight {
    limit: AtomicUsize,
    running: AtomicUsize,
    floor: usize,
    cap: usize,
    /// Signalled when a slot is returned or the limit grows.
    changed: Notify,
}

/// One delivery's slot; dropping it returns the slot.
#[derive(Debug)]
pub struct Slot(Arc<InFlight>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl InFlight {
    /// Always exactly `limit` slots (a limited queue's loop, whose queue policy
    /// bounds it anyway).
    pub fn fixed(limit: usize) -> Arc<Self> {
        Self::new(limit, limit)
    }

    /// Up to `cap` slots, fewer while [`adapt`](Self::adapt) finds the runtime
    /// saturated; starts at `cap`.
    pub fn adaptive(cap: usize) -> Arc<Self> {
        Self::new(FLOOR, cap)
    }

    fn new(floor: usize, cap: usize) -> Arc<Self> {
        let cap = cap.max(1);
        Arc::new(Self {
            limit: AtomicUsize::new(cap),
            running: AtomicUsize::new(0),
            floor: floor.clamp(1, cap),
            cap,
            changed: Notify::new(),
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Slots taken now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits for a free slot.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            // Registered before the check, so a slot returned in between still wakes us.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let running = self.running.load(Ordering::Acquire);
            if running < self.limit() {
                if self
                    .running
                    .compare_exchange(running, running + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Slot(self.clone());
                }
                continue;
            }
            notified.await;
        }
    }

    /// Waits until every slot has been returned.
    pub async fn drained(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Applies one window's busy ratio to the limit.
    pub fn adjust(&self, busy: f64) -> usize {
        let before = self.limit();
        let after = next_limit(before, self.floor, self.cap, busy);
        self.limit.store(after, Ordering::Release);
        if after > before {
            self.changed.notify_waiters();
        }
        after
    }

    /// Adjusts the limit every [`WINDOW`] to the busy ratio of the runtime this runs
    /// on, until `stop` fires. Exported as `tern_worker_in_flight_limit`.
    pub async fn adapt(self: Arc<Self>, stop: CancellationToken) {
        let gauge = metrics::gauge!("tern_worker_in_flight_limit");
        gauge.set(self.limit() as f64);
        if self.floor == self.cap {
            return;
        }
        let runtime = tokio::runtime::Handle::current().metrics();
        let mut busy_before = busy_total(&runtime);
        let mut at = Instant::now();
        let mut ticker = tokio::time::interval(WINDOW);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let busy_now = busy_total(&runtime);
            let now = Instant::now();
            let wall = now.duration_since(at).as_secs_f64() * runtime.num_workers() as f64;
            let busy = busy_now.saturating_sub(busy_before).as_secs_f64();
            (busy_before, at) = (busy_now, now);
            if wall > 0.0 {
                let before = self.limit();
                let after = self.adjust(busy / wall);
                if after != before {
                    tracing::debug!(
                        busy = busy / wall,
                        limit = after,
                        "in-flight limit adjusted"
                    );
                    gauge.set(after as f64);
                }
            }
        }
    }
}

/// Time all of the runtime's workers have spent running tasks so far.
fn busy_total(runtime: &tokio::runtime::RuntimeMetrics) -> Duration {
    (0..runtime.num_workers())
        .map(|worker| runtime.worker_total_busy_duration(worker))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saturated_runtime_sheds_an_eighth_down_to_the_floor() {
        assert_eq!(next_limit(512, 64, 512, 1.0), 448);
        assert_eq!(next_limit(448, 64, 512, SATURATED), 392);
        assert_eq!(next_limit(70, 64, 512, 0.95), 64);
        assert_eq!(next_limit(64, 64, 512, 1.0), 64);
    }

    #[test]
    fn an_idle_runtime_grows_an_eighth_up_to_the_cap() {
        assert_eq!(next_limit(64, 64, 512, 0.1), 72);
        assert_eq!(next_limit(500, 64, 512, 0.0), 512);
        assert_eq!(next_limit(512, 64, 512, 0.0), 512);
    }

    #[test]
    fn between_the_thresholds_the_limit_holds() {
        assert_eq!(next_limit(200, 64, 512, ROOM), 200);
        assert_eq!(next_limit(200, 64, 512, 0.85), 200);
    }

    #[test]
    fn a_cap_below_the_floor_is_the_limit_and_small_limits_still_move() {
        assert_eq!(next_limit(8, 64, 8, 1.0), 8);
        assert_eq!(next_limit(1, 1, 1, 0.0), 1);
        assert_eq!(next_limit(5, 1, 10, 1.0), 4);
        assert_eq!(next_limit(4, 1, 10, 0.0), 5);
    }

    #[tokio::test]
    async fn slots_wait_for_a_returned_slot_or_a_raised_limit() {
        let in_flight = InFlight::new(1, 4);
        in_flight.limit.store(2, Ordering::Release);
        let first = in_flight.acquire().await;
        let _second = in_flight.acquire().await;
        assert_eq!(in_flight.running(), 2);

        // Full: the third waits until a slot comes back.
        let third = acquired_after(&in_flight, || drop(first)).await;
        assert_eq!(in_flight.running(), 2);

        // Full again: an idle window raises the limit, which wakes the next one.
        let fourth = acquired_after(&in_flight, || assert_eq!(in_flight.adjust(0.0), 3)).await;
        assert_eq!(in_flight.running(), 3);
        drop((third, fourth));
    }

    /// Starts an `acquire` on the full `in_flight`, checks that it waits, runs
    /// `free` and returns the slot it then gets.
    async fn acquired_after(in_flight: &Arc<InFlight>, free: impl FnOnce()) -> Slot {
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a full limit makes acquire wait");
        free();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("freeing a slot wakes the waiter")
            .expect("waiter panicked")
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_slot() {
        let in_flight = InFlight::fixed(4);
        in_flight.drained().await;
        let slot = in_flight.acquire().await;
        let drained = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        drop(slot);
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("the last slot wakes drained")
            .expect("drained panicked");
    }

    #[tokio::test]
    async fn the_limit_falls_while_the_runtime_is_saturated_and_recovers_when_idle() {
        let in_flight = InFlight::adaptive(512);
        let stop = CancellationToken::new();
        let adapt = tokio::spawn(in_flight.clone().adapt(stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);

        // Keep the runtime busy in 1 ms slices (yielding, so the adjuster's timer runs).
        while in_flight.limit() == 512 {
            assert!(
                Instant::now() < deadline,
                "a saturated runtime lowers the limit"
            );
            let slice = Instant::now() + Duration::from_millis(1);
            while Instant::now() < slice {
                std::hint::spin_loop();
            }
            tokio::task::yield_now().await;
        }
        assert!(in_flight.limit() >= FLOOR);

        // Idle: the limit climbs back to the cap.
        while in_flight.limit() < 512 {
            assert!(
                Instant::now() < deadline,
                "an idle runtime restores the limit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        adapt.await.expect("adjuster panicked");
    }

    #[tokio::test]
    async fn a_fixed_limit_does_not_adapt() {
        let in_flight = InFlight::fixed(4);
        in_flight.clone().adapt(CancellationToken::new()).await;
        assert_eq!(in_flight.adjust(1.0), 4);
        assert_eq!(in_flight.adjust(0.0), 4);
    }
}
