//! Retry policies: configuration defaults, overridden by a queue's policy, overridden
//! by a task's own `retry` object. One place validates ranges, so the queue API and the
//! task API reject the same values with the same messages.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_proto::v1::{Backoff, RetryPolicy};

use crate::config::RetryDefaults;
use crate::duration::HumanDuration;

/// Most retries a policy may ask for.
pub const MAX_RETRIES: u32 = 100;
/// Bounds of the first retry delay.
pub const INITIAL_DELAY: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(86_400));
/// Bounds of the per-delay cap.
pub const MAX_DELAY: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(7 * 86_400));
/// Bounds of the per-attempt timeout.
pub const TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));
/// Bounds of the overall deadline.
pub const MAX_AGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(365 * 86_400));

/// A value out of range, naming the field (answered as 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// The offending field, e.g. `retry.max_delay`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Backoff spelled as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackoffName {
    /// 1s, 2s, 4s … with full jitter.
    Exponential,
    /// The same delay every time.
    Fixed,
}

/// Optional retry settings, as a queue policy or a task's `retry` object carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryOverrides {
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Backoff shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffName>,
    /// First retry delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<HumanDuration>,
    /// Cap of any single delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<HumanDuration>,
    /// Per-attempt timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Overall deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn check(
    field: &str,
    prefix: &str,
    value: Duration,
    (low, high): (Duration, Duration),
) -> Result<(), PolicyError> {
    if value < low || value > high {
        return Err(PolicyError {
            field: format!("{prefix}{field}"),
            message: format!(
                "must be between {} and {}, got {}",
                crate::duration::format(low),
                crate::duration::format(high),
                crate::duration::format(value)
            ),
        });
    }
    Ok(())
}

impl RetryOverrides {
    /// Checks each present field's range; `prefix` names the enclosing object.
    pub fn validate(&self, prefix: &str) -> Result<(), PolicyError> {
        if let Some(n) = self.max_retries
            && n > MAX_RETRIES
        {
            return Err(PolicyError {
                field: format!("{prefix}max_retries"),
                message: format!("must be between 0 and {MAX_RETRIES}, got {n}"),
            });
        }
        if let Some(d) = self.initial_delay {
            check("initial_delay", prefix, d.get(), INITIAL_DELAY)?;
        }
        if let Some(d) = self.max_delay {
            check("max_delay", prefix, d.get(), MAX_DELAY)?;
        }
        if let Some(d) = self.timeout {
            check("timeout", prefix, d.get(), TIMEOUT)?;
        }
        if let Some(d) = self.max_age {
            check("max_age", prefix, d.get(), MAX_AGE)?;
        }
        if let (Some(initial), Some(max)) = (self.initial_delay, self.max_delay)
            && max < initial
        {
            return Err(PolicyError {
                field: format!("{prefix}max_delay"),
                message: format!("must not be less than initial_delay ({initial})"),
            });
        }
        Ok(())
    }

    /// Writes every present field over `policy`.
    pub fn apply(&self, policy: &mut RetryPolicy) {
        if let Some(n) = self.max_retries {
            policy.max_retries = n;
        }
        if let Some(b) = self.backoff {
            policy.backoff = match b {
                BackoffName::Exponential => Backoff::Exponential,
                BackoffName::Fixed => Backoff::Fixed,
            } as i32;
        }
        if let Some(d) = self.initial_delay {
            policy.initial_delay_ms = ms(d.get());
        }
        if let Some(d) = self.max_delay {
            policy.max_delay_ms = ms(d.get());
        }
        if let Some(d) = self.timeout {
            policy.timeout_ms = ms(d.get());
        }
        if let Some(d) = self.max_age {
            policy.max_age_ms = ms(d.get());
        }
    }
}

/// The policy configuration gives queues that set none.
pub fn defaults(config: &RetryDefaults) -> RetryPolicy {
    let mut policy = RetryPolicy {
        max_retries: config.max_retries,
        backoff: Backoff::Exponential as i32,
        initial_delay_ms: ms(config.initial_delay.get()),
        max_delay_ms: ms(config.max_delay.get()),
        timeout_ms: ms(config.timeout.get()),
        max_age_ms: config.max_age.map(|a| ms(a.get())).unwrap_or(0),
    };
    if config.backoff == crate::backoff::BackoffKind::Fixed {
        policy.backoff = Backoff::Fixed as i32;
    }
    policy
}

/// Checks that a merged policy is coherent (the cap is not below the first delay).
pub fn validate_merged(policy: &RetryPolicy, prefix: &str) -> Result<(), PolicyError> {
    if policy.max_delay_ms < policy.initial_delay_ms {
        return Err(PolicyError {
            field: format!("{prefix}max_delay"),
            message: format!(
                "must not be less than initial_delay ({})",
                crate::duration::format(Duration::from_millis(policy.initial_delay_ms))
            ),
        });
    }
    Ok(())
}

/// A policy as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff shape.
    pub backoff: BackoffName,
    /// First retry delay.
    pub initial_delay: HumanDuration,
    /// Cap of any single delay.
    pub max_delay: HumanDuration,
    /// Per-attempt timeout.
    pub timeout: HumanDuration,
    /// Overall deadline, if any.
    pub max_age: Option<HumanDuration>,
}

impl From<&RetryPolicy> for PolicyView {
    fn from(p: &RetryPolicy) -> Self {
        Self {
            max_retries: p.max_retries,
            backoff: if p.backoff() == Backoff::Fixed {
                BackoffName::Fixed
            } else {
                BackoffName::Exponential
            },
            initial_delay: HumanDuration(Duration::from_millis(p.initial_delay_ms)),
            max_delay: HumanDuration(Duration::from_millis(p.max_delay_ms)),
            timeout: HumanDuration(Duration::from_millis(p.timeout_ms)),
            max_age: (p.max_age_ms > 0).then(|| HumanDuration(Duration::from_millis(p.max_age_ms))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> RetryOverrides {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn overrides_layer_over_defaults() {
        let mut policy = defaults(&RetryDefaults::default());
        assert_eq!(policy.max_retries, 3);
        parse(r#"{"max_retries": 5, "backoff": "fixed", "initial_delay": "2s", "max_age": 3600}"#)
            .apply(&mut policy);
        assert_eq!(policy.max_retries, 5);
        assert_eq!(policy.backoff(), Backoff::Fixed);
        assert_eq!(policy.initial_delay_ms, 2000);
        assert_eq!(policy.max_age_ms, 3_600_000);
        assert_eq!(
            policy.timeout_ms, 30_000,
            "untouched fields keep the default"
        );
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let err = parse(r#"{"max_retries": 101}"#).validate("").unwrap_err();
        assert_eq!(err.field, "max_retries");
        let err = parse(r#"{"timeout": "2h"}"#)
            .validate("retry.")
            .unwrap_err();
        assert_eq!(err.field, "retry.timeout");
        let err = parse(r#"{"max_age": "400d"}"#).validate("").unwrap_err();
        assert_eq!(err.field, "max_age");
        let err = parse(r#"{"initial_delay": "10s", "max_delay": "1s"}"#)
            .validate("")
            .unwrap_err();
        assert_eq!(err.field, "max_delay");
        assert!(
            parse(r#"{"max_retries": 0, "timeout": "500ms"}"#)
                .validate("")
                .is_ok()
        );
    }

    #[test]
    fn unknown_fields_and_bad_spellings_are_refused() {
        assert!(serde_json::from_str::<RetryOverrides>(r#"{"retries": 1}"#).is_err());
        assert!(serde_json::from_str::<RetryOverrides>(r#"{"backoff": "linear"}"#).is_err());
        assert!(serde_json::from_str::<RetryOverrides>(r#"{"timeout": "soon"}"#).is_err());
    }

    #[test]
    fn view_round_trips_to_api_spelling() {
        let policy = defaults(&RetryDefaults::default());
        let json = serde_json::to_value(PolicyView::from(&policy)).unwrap();
        assert_eq!(json["backoff"], "exponential");
        assert_eq!(json["initial_delay"], "1s");
        assert_eq!(json["max_delay"], "1h");
        assert!(json["max_age"].is_null());
    }
}
