//! Token buckets shared by every worker replica: one per rate-limited queue, in the
//! `tern_rate` KV bucket, changed only by compare-and-swap.
//!
//! Every dispatch of a rate-limited queue takes one token first, whichever worker makes
//! it, so the queue's rate holds however many workers run. Refill is continuous
//! (`per_second` tokens a second, up to `burst`) and computed from the stored time,
//! so nothing has to tick. A clock running behind the stored time refills nothing
//! until it catches up, so clock skew between workers can only slow a queue down.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tern_proto::Message;
use tern_proto::v1::RateBucket;

use crate::task_store::StoreError;

/// A rate: tokens per second and bucket size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Refill, tokens per second (> 0).
    pub per_second: f64,
    /// Most tokens the bucket holds (≥ 1).
    pub burst: u32,
}

/// Takes one token from `state` (`None` = never used, so full) at `now_ms`: the new
/// state, or how long until a token is due.
pub fn take(state: Option<&RateBucket>, now_ms: i64, rate: Rate) -> Result<RateBucket, Duration> {
    let burst = f64::from(rate.burst.max(1));
    let (tokens, at_ms) = match state {
        None => (burst, now_ms),
        Some(s) => {
            let elapsed_ms = (now_ms - s.at_ms).max(0) as f64;
            let refilled = s.tokens + elapsed_ms * rate.per_second / 1000.0;
            (refilled.min(burst), s.at_ms.max(now_ms))
        }
    };
    if tokens >= 1.0 {
        return Ok(RateBucket {
            tokens: tokens - 1.0,
            at_ms,
        });
    }
    // Counted from `at_ms`, which may be ahead of our clock.
    let missing_ms = (1.0 - tokens) * 1000.0 / rate.per_second;
    let wait_ms = missing_ms.ceil() as i64 + (at_ms - now_ms);
    Err(Duration::from_millis(wait_ms.max(1) as u64))
}

/// How many compare-and-swap rounds one take may lose before reporting contention.
/// Each worker lets one waiter per queue at a time try, so losers are rare.
const MAX_ROUNDS: u32 = 16;

/// The `tern_rate` bucket.
#[derive(Clone)]
pub struct TokenBuckets {
    kv: kv::Store,
}

impl TokenBuckets {
    /// Wraps the `tern_rate` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Takes one token from bucket `key`: `Ok(None)` when taken, `Ok(Some(wait))` when
    /// the next token is due after `wait`.
    pub async fn try_take(&self, key: &str, rate: Rate) -> Result<Option<Duration>, StoreError> {
        for _ in 0..MAX_ROUNDS {
            let entry = self
                .kv
                .entry(key)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let current = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let state = RateBucket::decode(e.value)
                        .map_err(|err| StoreError::Corrupt(key.to_string(), err))?;
                    Some((state, e.revision))
                }
                // Absent, deleted or purged: `create` handles all three.
                _ => None,
            };
            let next = match take(current.as_ref().map(|(s, _)| s), crate::now_ms(), rate) {
                Ok(next) => next,
                Err(wait) => return Ok(Some(wait)),
            };
            let bytes = Bytes::from(next.encode_to_vec());
            let written = match &current {
                Some((_, revision)) => self
                    .kv
                    .update(key, bytes, *revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => self.kv.create(key, bytes).await.map(|_| ()).map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(()) => return Ok(None),
                // Another worker took a token meanwhile: look again.
                Err((true, _)) => continue,
                Err((false, e)) => return Err(StoreError::Unavailable(e)),
            }
        }
        Err(StoreError::Contended(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE: Rate = Rate {
        per_second: 5.0,
        burst: 5,
    };

    /// Takes tokens as fast as allowed from `start_ms` on, `n` times; the take times.
    fn drain(rate: Rate, n: usize) -> Vec<i64> {
        let mut state: Option<RateBucket> = None;
        let mut now = 1_000_000;
        let mut times = Vec::new();
        while times.len() < n {
            match take(state.as_ref(), now, rate) {
                Ok(next) => {
                    state = Some(next);
                    times.push(now);
                }
                Err(wait) => now += wait.as_millis() as i64,
            }
        }
        times
    }

    #[test]
    fn a_fresh_bucket_allows_the_burst_at_once() {
        let times = drain(FIVE, 5);
        assert!(times.iter().all(|&t| t == times[0]));
        let mut state = None;
        for _ in 0..5 {
            state = Some(take(state.as_ref(), 0, FIVE).unwrap());
        }
        assert_eq!(
            take(state.as_ref(), 0, FIVE).unwrap_err(),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn steady_state_is_the_rate() {
        let times = drain(FIVE, 25);
        // After the burst, one token every 200 ms.
        for pair in times[5..].windows(2) {
            assert_eq!(pair[1] - pair[0], 200);
        }
        assert_eq!(times[5] - times[0], 200);
    }

    #[test]
    fn no_window_exceeds_rate_times_window_plus_burst() {
        for rate in [
            FIVE,
            Rate {
                per_second: 0.5,
                burst: 1,
            },
            Rate {
                per_second: 3.3,
                burst: 7,
            },
        ] {
            let times = drain(rate, 60);
            for (i, &start) in times.iter().enumerate() {
                for (j, &end) in times.iter().enumerate().skip(i) {
                    let window_s = (end - start) as f64 / 1000.0;
                    let allowed = rate.per_second * window_s + f64::from(rate.burst);
                    assert!((j - i + 1) as f64 <= allowed + 1e-9, "{rate:?} {i}..{j}");
                }
            }
        }
    }

    #[test]
    fn fractional_rates_wait_long_enough() {
        let half = Rate {
            per_second: 0.5,
            burst: 1,
        };
        let state = take(None, 0, half).unwrap();
        assert_eq!(
            take(Some(&state), 0, half).unwrap_err(),
            Duration::from_secs(2)
        );
        assert_eq!(
            take(Some(&state), 1_500, half).unwrap_err(),
            Duration::from_millis(500)
        );
        assert!(take(Some(&state), 2_000, half).is_ok());
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let mut state = take(None, 0, FIVE).unwrap();
        state = take(Some(&state), 3_600_000, FIVE).unwrap();
        assert_eq!(state.tokens, 4.0);
    }

    #[test]
    fn a_lowered_burst_caps_saved_tokens() {
        let saved = RateBucket {
            tokens: 50.0,
            at_ms: 0,
        };
        let next = take(Some(&saved), 0, FIVE).unwrap();
        assert_eq!(next.tokens, 4.0);
    }

    #[test]
    fn a_clock_behind_the_stored_time_refills_nothing() {
        let ahead = RateBucket {
            tokens: 0.0,
            at_ms: 10_000,
        };
        // Our clock says 9 s: wait until 10.2 s by the stored clock.
        assert_eq!(
            take(Some(&ahead), 9_000, FIVE).unwrap_err(),
            Duration::from_millis(1_200)
        );
        let next = take(Some(&ahead), 10_200, FIVE).unwrap();
        assert_eq!(next.at_ms, 10_200);
        assert!(next.tokens.abs() < 1e-9);
    }
}
