//! Per-API-key request rate limits, by tier.
//!
//! A token bucket per key (capacity = one second of the tier's rate) refilled
//! continuously. The buckets live in each ingress replica's memory, so with N
//! replicas behind a balancer a key gets up to N times its rate; that is the usual
//! trade for not putting a shared counter on every request's path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_core::config::TierRates;
use tern_core::tier::Tier;

/// A refused request: how long until a token is back, and the limit applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    /// Until the next request would be allowed.
    pub retry_after: Duration,
    /// The key's limit, requests per second.
    pub limit: u32,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per API key digest.
pub struct RateLimits {
    rates: TierRates,
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

impl RateLimits {
    /// Limits with the configured per-tier rates.
    pub fn new(rates: TierRates) -> Self {
        Self {
            rates,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` (a tier-`tier` key); `Err` when none is left.
    pub fn take(&self, key: [u8; 32], tier: Tier, now: Instant) -> Result<(), Limited> {
        let limit = self.rates.get(tier);
        if limit == 0 {
            return Ok(()); // 0 = unlimited
        }
        let rate = f64::from(limit);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Limited {
            retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / rate),
            limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RateLimits {
        RateLimits::new(TierRates {
            business: 0,
            developer: 10,
            free: 2,
        })
    }

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let limits = limits();
        let t0 = Instant::now();
        let key = [1u8; 32];
        assert!(limits.take(key, Tier::Free, t0).is_ok());
        assert!(limits.take(key, Tier::Free, t0).is_ok());
        let refused = limits.take(key, Tier::Free, t0).unwrap_err();
        assert_eq!(refused.limit, 2);
        assert!(refused.retry_after <= Duration::from_millis(500));
        assert!(
            limits
                .take(key, Tier::Free, t0 + Duration::from_millis(500))
                .is_ok()
        );
        // Other keys have their own bucket; 0 means unlimited.
        assert!(limits.take([2u8; 32], Tier::Free, t0).is_ok());
        for _ in 0..1000 {
            assert!(limits.take([3u8; 32], Tier::Business, t0).is_ok());
        }
    }
}
