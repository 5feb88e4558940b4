//! What happens after an attempt: done, retry later, or give up.
//!
//! A pure decision over the task's policy, its age and the attempt's outcome, so the
//! rules are tested without NATS or HTTP. The delivery worker and the ingress's
//! synchronous proxy both decide with it.

use std::time::Duration;

use tern_proto::v1::{Backoff, RetryPolicy};

use crate::backoff::{BackoffKind, BackoffPolicy};
use crate::executor::{AttemptOutcome, AttemptResult};

/// The next step after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The work is done.
    Succeed,
    /// Try again after this delay (a JetStream nak with delay).
    Retry(Duration),
    /// Retries or time ran out: dead-letter the task.
    Dead(String),
    /// Retrying cannot help (the receiver said 410 Gone): fail the task now.
    Fail(String),
}

/// How an attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Success,
    /// Never retry (410 Gone, or the endpoint is disabled).
    Permanent(String),
    /// Worth retrying; `retry_after` is the receiver's hint (429/503).
    Retryable {
        /// Short description for the dead letter.
        reason: String,
        /// The receiver's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
}

/// Who answered, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// A webhook receiver: every non-2xx is retried except 410 Gone.
    Webhook,
    /// A proxied call's upstream: 5xx, 408 and 429 are retried; any other 4xx is the
    /// upstream's answer to this request, and asking again would get the same one.
    Upstream,
}

impl Verdict {
    /// The verdict on `outcome` from `receiver`.
    pub fn of(outcome: &AttemptOutcome, receiver: Receiver) -> Verdict {
        match &outcome.result {
            AttemptResult::Response { status, .. } if (200..300).contains(status) => {
                Verdict::Success
            }
            AttemptResult::Response { status: 410, .. } if receiver == Receiver::Webhook => {
                Verdict::Permanent("HTTP 410 Gone: the endpoint is now disabled".into())
            }
            AttemptResult::Response { status, .. }
                if receiver == Receiver::Upstream
                    && (400..500).contains(status)
                    && *status != 408
                    && *status != 429 =>
            {
                Verdict::Permanent(format!("HTTP {status} (not retried)"))
            }
            AttemptResult::Disabled { message } => Verdict::Permanent(message.clone()),
            AttemptResult::Response {
                status, headers, ..
            } => Verdict::Retryable {
                reason: format!("HTTP {status}"),
                retry_after: (*status == 429 || *status == 503)
                    .then(|| headers.get("retry-after"))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        crate::backoff::parse_retry_after(v, std::time::SystemTime::now())
                    }),
            },
            AttemptResult::Failed { kind, message } => Verdict::Retryable {
                reason: format!("{}: {message}", kind.as_str()),
                retry_after: None,
            },
        }
    }
}

/// The backoff policy of a task's retry settings.
pub fn backoff_of(policy: &RetryPolicy) -> BackoffPolicy {
    BackoffPolicy {
        kind: if policy.backoff() == Backoff::Fixed {
            BackoffKind::Fixed
        } else {
            BackoffKind::Exponential
        },
        initial: Duration::from_millis(policy.initial_delay_ms),
        max: Duration::from_millis(policy.max_delay_ms.max(policy.initial_delay_ms)),
    }
}

/// Decides what follows attempt number `attempt` (1-based, counted within the
/// current retry budget) of a budget that began at `budget_started_ms`, now being
/// `now_ms`.
pub fn decide(
    policy: &RetryPolicy,
    attempt: u32,
    budget_started_ms: i64,
    now_ms: i64,
    verdict: &Verdict,
    rng: &mut impl rand::Rng,
) -> Step {
    let (reason, retry_after) = match verdict {
        Verdict::Success => return Step::Succeed,
        Verdict::Permanent(reason) => return Step::Fail(reason.clone()),
        Verdict::Retryable {
            reason,
            retry_after,
        } => (reason, *retry_after),
    };
    if attempt > policy.max_retries {
        return Step::Dead(format!(
            "gave up after {attempt} attempts; last error: {reason}"
        ));
    }
    let backoff = backoff_of(policy);
    let delay = match retry_after {
        Some(hint) => hint.min(backoff.max),
        None => backoff.delay(attempt, rng),
    };
    if policy.max_age_ms > 0 {
        let deadline = budget_started_ms.saturating_add(policy.max_age_ms as i64);
        if now_ms.saturating_add(delay.as_millis() as i64) > deadline {
            return Step::Dead(format!(
                "max_age of {} exceeded; last error: {reason}",
                crate::duration::format(Duration::from_millis(policy.max_age_ms))
            ));
        }
    }
    Step::Retry(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            backoff: Backoff::Exponential as i32,
            initial_delay_ms: 1000,
            max_delay_ms: 60_000,
            timeout_ms: 30_000,
            max_age_ms: 0,
        }
    }

    fn failed(retry_after: Option<Duration>) -> Verdict {
        Verdict::Retryable {
            reason: "HTTP 500".into(),
            retry_after,
        }
    }

    #[test]
    fn retries_until_the_budget_is_spent() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=3 {
            match decide(&policy(), attempt, 0, 0, &failed(None), &mut rng) {
                Step::Retry(d) => assert!(d <= Duration::from_millis(1000 << (attempt - 1))),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert!(matches!(
            decide(&policy(), 4, 0, 0, &failed(None), &mut rng),
            Step::Dead(_)
        ));
        assert_eq!(
            decide(&policy(), 4, 0, 0, &Verdict::Success, &mut rng),
            Step::Succeed
        );
        let gone = Verdict::Permanent("HTTP 410".into());
        assert!(matches!(
            decide(&policy(), 1, 0, 0, &gone, &mut rng),
            Step::Fail(_)
        ));
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let step = decide(
            &policy(),
            1,
            0,
            0,
            &failed(Some(Duration::from_secs(5))),
            &mut rng,
        );
        assert_eq!(step, Step::Retry(Duration::from_secs(5)));
        let step = decide(
            &policy(),
            1,
            0,
            0,
            &failed(Some(Duration::from_secs(999))),
            &mut rng,
        );
        assert_eq!(step, Step::Retry(Duration::from_secs(60)));
    }

    #[test]
    fn max_age_ends_retries_early() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut p = policy();
        p.max_age_ms = 10_000;
        p.backoff = Backoff::Fixed as i32;
        assert!(matches!(
            decide(&p, 1, 0, 9_500, &failed(None), &mut rng),
            Step::Dead(_)
        ));
        assert_eq!(
            decide(&p, 1, 0, 1_000, &failed(None), &mut rng),
            Step::Retry(Duration::from_secs(1))
        );
    }
}
