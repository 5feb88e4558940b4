//! Retry delay policy.
//!
//! When a delivery fails, the worker `nak`s the message with a delay and JetStream
//! redelivers it then. This module decides that delay: exponential backoff with full
//! jitter by default, so that receivers recovering from an outage are not hit by every
//! retry at the same instant, or a fixed delay where a queue asks for one; and it reads
//! the receiver's own `Retry-After`, which takes precedence on 429 and 503.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// How the delay grows from one retry to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffKind {
    /// Doubles each retry up to the cap, with full jitter.
    Exponential,
    /// The same delay every retry, without jitter.
    Fixed,
}

/// A queue's or task's retry delay policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Exponential doubling or a fixed delay.
    pub kind: BackoffKind,
    /// Delay ceiling before the first retry (and the whole delay when fixed).
    pub initial: Duration,
    /// Cap on any single delay.
    pub max: Duration,
}

impl BackoffPolicy {
    /// Upper bound of the delay before retry `retry` (1 = first retry): exponential =
    /// min(max, initial * 2^(retry-1)), fixed = min(initial, max).
    ///
    /// Retry 0 is treated as retry 1. Saturates instead of overflowing for any `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        match self.kind {
            BackoffKind::Fixed => self.initial.min(self.max),
            BackoffKind::Exponential => {
                if self.initial.is_zero() {
                    return Duration::ZERO;
                }
                // Doubling stops as soon as the cap is reached, so this runs at most
                // about a hundred times (Duration tops out near 2^94 ns) whatever
                // `retry` is.
                let mut delay = self.initial;
                for _ in 1..retry {
                    if delay >= self.max {
                        break;
                    }
                    delay = delay.saturating_mul(2);
                }
                delay.min(self.max)
            }
        }
    }

    /// Delay before retry `retry`: uniform in [0, ceiling] for exponential (full
    /// jitter), exactly the ceiling for fixed.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(retry);
        match self.kind {
            BackoffKind::Fixed => ceiling,
            BackoffKind::Exponential => {
                let nanos = rng.random_range(0..=ceiling.as_nanos());
                duration_from_nanos(nanos)
            }
        }
    }
}

// `Duration::from_nanos` takes a u64, which tops out at ~584 years; a capped ceiling
// can be larger than that, so split into seconds and nanoseconds by hand.
fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it always fits in a u32.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Duration::new(secs, sub)
}

/// Parses a Retry-After value: delta-seconds or an HTTP-date (relative to `now`); None
/// when unparseable; past dates give `Duration::ZERO`.
///
/// The caller still applies its own cap: a receiver asking for a day does not get to
/// hold a task past its deadline.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Only an absurdly long number overflows; it still means "a very long time".
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn exp(initial_ms: u64, max_ms: u64) -> BackoffPolicy {
        BackoffPolicy {
            kind: BackoffKind::Exponential,
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn exponential_ceiling_doubles_up_to_the_cap() {
        let p = exp(1_000, 10_000);
        let got: Vec<u64> = (1..=7).map(|r| p.ceiling(r).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(p.ceiling(0), Duration::from_secs(1));
    }

    #[test]
    fn huge_retry_numbers_saturate() {
        for p in [
            exp(1_000, 3_600_000),
            exp(1, u64::MAX),
            BackoffPolicy {
                kind: BackoffKind::Exponential,
                initial: Duration::from_nanos(1),
                max: Duration::MAX,
            },
            BackoffPolicy {
                kind: BackoffKind::Exponential,
                initial: Duration::MAX,
                max: Duration::MAX,
            },
        ] {
            for retry in [128, 129, 1_000, u32::MAX - 1, u32::MAX] {
                assert_eq!(p.ceiling(retry), p.max, "{p:?} retry {retry}");
            }
            let mut rng = StdRng::seed_from_u64(7);
            assert!(p.delay(u32::MAX, &mut rng) <= p.max);
        }
    }

    #[test]
    fn zero_initial_gives_zero_without_looping() {
        let p = exp(0, 10_000);
        assert_eq!(p.ceiling(u32::MAX), Duration::ZERO);
        assert_eq!(
            p.delay(u32::MAX, &mut StdRng::seed_from_u64(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn max_below_initial_caps_the_first_retry_too() {
        let p = exp(5_000, 2_000);
        assert_eq!(p.ceiling(1), Duration::from_secs(2));
    }

    #[test]
    fn jittered_delay_stays_within_the_ceiling_and_varies() {
        let p = exp(100, 30_000);
        let mut rng = StdRng::seed_from_u64(42);
        for retry in 1..=12 {
            let ceiling = p.ceiling(retry);
            let samples: Vec<Duration> = (0..2_000).map(|_| p.delay(retry, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "retry {retry}");
            assert!(
                samples.iter().any(|d| *d != samples[0]),
                "retry {retry} never varied"
            );
            // Full jitter spreads over the whole range, not just its top.
            assert!(samples.iter().any(|d| *d < ceiling / 4), "retry {retry}");
            assert!(
                samples.iter().any(|d| *d > ceiling * 3 / 4),
                "retry {retry}"
            );
        }
    }

    #[test]
    fn fixed_has_no_growth_and_no_jitter() {
        let p = BackoffPolicy {
            kind: BackoffKind::Fixed,
            initial: Duration::from_secs(30),
            max: Duration::from_secs(60),
        };
        let mut rng = StdRng::seed_from_u64(3);
        for retry in [0, 1, 2, 10, u32::MAX] {
            assert_eq!(p.ceiling(retry), Duration::from_secs(30));
            assert_eq!(p.delay(retry, &mut rng), Duration::from_secs(30));
        }
        let capped = BackoffPolicy {
            max: Duration::from_secs(10),
            ..p
        };
        assert_eq!(capped.delay(1, &mut rng), Duration::from_secs(10));
    }

    #[test]
    fn nanos_beyond_u64_convert() {
        let big = Duration::MAX.as_nanos();
        assert_eq!(duration_from_nanos(big), Duration::MAX);
        assert_eq!(
            duration_from_nanos(1_500_000_000),
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // The obsolete RFC 850 and asctime forms are still valid HTTP-dates.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn retry_after_in_the_past_is_zero() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_none() {
        let now = SystemTime::now();
        for bad in [
            "",
            "   ",
            "-5",
            "+5",
            "1.5",
            "5s",
            "soon",
            "Sun, 06 Nov 1994",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
