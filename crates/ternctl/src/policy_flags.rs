//! Retry-policy flags, shared by `tasks submit` (a task's `retry`) and `queues set`
//! (a queue's policy). Values go to the API as given; the API validates them and
//! names the field when one is wrong.

use clap::Args;
use serde_json::{Map, Value, json};

/// The fields of a retry policy.
#[derive(Args, Debug, Clone, Default)]
pub struct RetryFlags {
    /// Retries after the first attempt (0-100).
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Backoff shape: exponential or fixed.
    #[arg(long, value_name = "SHAPE")]
    backoff: Option<String>,
    /// First retry delay (e.g. 500ms, 30s, 5m).
    #[arg(long, value_name = "DURATION")]
    initial_delay: Option<String>,
    /// Cap of any single retry delay.
    #[arg(long, value_name = "DURATION")]
    max_delay: Option<String>,
    /// Time limit of one attempt.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Overall deadline, after which the task is dead.
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
}

impl RetryFlags {
    /// The policy fields that were given, as JSON.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        if let Some(n) = self.max_retries {
            map.insert("max_retries".into(), json!(n));
        }
        for (name, value) in [
            ("backoff", &self.backoff),
            ("initial_delay", &self.initial_delay),
            ("max_delay", &self.max_delay),
            ("timeout", &self.timeout),
            ("max_age", &self.max_age),
        ] {
            if let Some(value) = value {
                map.insert(name.into(), json!(value));
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_fields_are_sent() {
        assert!(RetryFlags::default().to_map().is_empty());
        let flags = RetryFlags {
            max_retries: Some(0),
            timeout: Some("5s".into()),
            ..Default::default()
        };
        assert_eq!(
            Value::Object(flags.to_map()),
            json!({"max_retries": 0, "timeout": "5s"})
        );
    }
}
