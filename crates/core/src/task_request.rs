//! The task body of `POST /v1/tasks` and its validation.
//!
//! A recurring schedule carries the same body and turns it into a task at every
//! firing, so the ingress (for both endpoints) and the scheduler call this one
//! validation: a schedule is refused at creation for exactly what a task would be,
//! and its tasks get the queue policy in force when they fire.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::accept::NewTask;
use crate::config::{Config, RetryDefaults};
use crate::duration::HumanDuration;
use crate::policy::{self, RetryOverrides};
use crate::topology::is_subject_token;
use crate::url_guard::UrlGuard;
use tern_proto::v1::QueuePolicy;

/// Body of `POST /v1/tasks` (and the `task` of a schedule).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Queue name: 1-64 of `A-Z a-z 0-9 _ -`.
    pub queue: String,
    /// Where to POST the payload.
    pub webhook_url: String,
    /// Any JSON value, delivered byte for byte.
    pub payload: Box<RawValue>,
    /// Overrides of the queue's retry policy for this task.
    #[serde(default)]
    pub retry: Option<RetryOverrides>,
    /// Makes this an await-callback task.
    #[serde(default)]
    pub await_callback: Option<AwaitCallback>,
    /// Where to POST a signed event when the task ends.
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Dispatch no sooner than this long from now (up to 365 days).
    #[serde(default)]
    pub delay: Option<HumanDuration>,
    /// Dispatch no sooner than this time (RFC 3339).
    #[serde(default)]
    pub not_before: Option<String>,
}

/// `"await_callback": {"timeout": "1h"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwaitCallback {
    /// How long the provider has to call back (1 s to 30 days).
    pub timeout: HumanDuration,
}

/// A task body that cannot be accepted; the message starts with the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTask(pub String);

/// Longest accepted delay.
const MAX_DELAY: Duration = Duration::from_secs(365 * 86_400);

/// Bounds of `await_callback.timeout`.
const AWAIT_TIMEOUT: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 86_400));

/// What validating a task needs from configuration.
#[derive(Clone, Debug)]
pub struct TaskRules {
    /// Checks webhook and notification URLs.
    pub guard: UrlGuard,
    /// Longest accepted URL.
    pub max_url_len: usize,
    /// The configured default retry policy.
    pub retry_defaults: RetryDefaults,
}

impl TaskRules {
    /// The rules `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            guard: UrlGuard::new(config.outbound.allowed_networks.clone()),
            max_url_len: config.ingress.max_url_len,
            retry_defaults: config.retry.clone(),
        }
    }
}

impl TaskRequest {
    /// Checks every field and resolves the effective retry policy (`queue` is the
    /// policy of the task's queue, if one is set), giving the task `id`. `now_ms` is
    /// when the task is created (delays count from it); `prefix` is where the body
    /// sits in the request (`"task."` inside a schedule), so every message names the
    /// field as the client wrote it.
    pub fn validate(
        self,
        rules: &TaskRules,
        queue: Option<QueuePolicy>,
        id: String,
        now_ms: i64,
        prefix: &str,
    ) -> Result<NewTask, InvalidTask> {
        let invalid = |message: String| InvalidTask(format!("{prefix}{message}"));
        if !is_subject_token(&self.queue) {
            return Err(invalid(
                "queue: must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
            ));
        }
        rules
            .guard
            .validate_url(&self.webhook_url, rules.max_url_len)
            .map_err(|e| invalid(format!("webhook_url: {e}")))?;
        if let Some(url) = &self.notify_url {
            rules
                .guard
                .validate_url(url, rules.max_url_len)
                .map_err(|e| invalid(format!("notify_url: {e}")))?;
        }

        // Configuration defaults, then the queue's policy, then the task's own overrides.
        let mut retry = match queue {
            Some(queue) => queue
                .retry
                .unwrap_or_else(|| policy::defaults(&rules.retry_defaults)),
            None => policy::defaults(&rules.retry_defaults),
        };
        if let Some(overrides) = &self.retry {
            let at = format!("{prefix}retry.");
            overrides
                .validate(&at)
                .map_err(|e| InvalidTask(e.to_string()))?;
            overrides.apply(&mut retry);
            policy::validate_merged(&retry, &at).map_err(|e| InvalidTask(e.to_string()))?;
        }

        let await_timeout = match &self.await_callback {
            Some(a) if a.timeout.get() < AWAIT_TIMEOUT.0 || a.timeout.get() > AWAIT_TIMEOUT.1 => {
                return Err(invalid(
                    "await_callback.timeout: must be between 1s and 30d".into(),
                ));
            }
            Some(a) => Some(a.timeout.get()),
            None => None,
        };

        let not_before_ms = self.not_before_ms(now_ms).map_err(invalid)?;
        Ok(NewTask {
            id,
            queue: self.queue,
            webhook_url: self.webhook_url,
            payload_json: self.payload.get().to_string(),
            retry,
            await_timeout,
            notify_url: self.notify_url.unwrap_or_default(),
            not_before_ms,
            created_at_ms: now_ms,
            schedule_id: String::new(),
            schedule_slot_ms: 0,
            // The caller knows the request's headers; a new trace until it says.
            traceparent: crate::trace_context::for_accepted_task(None),
        })
    }

    /// When the task may first be dispatched (0 = now), from `delay` or `not_before`.
    fn not_before_ms(&self, now_ms: i64) -> Result<i64, String> {
        let at = match (&self.delay, &self.not_before) {
            (Some(_), Some(_)) => {
                return Err("delay and not_before: give one or the other".into());
            }
            (Some(delay), None) => {
                if delay.get() > MAX_DELAY {
                    return Err("delay: must be at most 365d".into());
                }
                now_ms + delay.get().as_millis() as i64
            }
            (None, Some(text)) => {
                let t = time::OffsetDateTime::parse(
                    text,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|_| "not_before: must be an RFC 3339 time".to_string())?;
                let at = (t.unix_timestamp_nanos() / 1_000_000) as i64;
                if at - now_ms > MAX_DELAY.as_millis() as i64 {
                    return Err("not_before: must be at most 365 days ahead".into());
                }
                at
            }
            (None, None) => 0,
        };
        Ok(if at > now_ms { at } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> TaskRules {
        TaskRules {
            guard: UrlGuard::new(Vec::new()),
            max_url_len: 2048,
            retry_defaults: RetryDefaults::default(),
        }
    }

    fn parse(json: &str) -> TaskRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_valid_body_becomes_a_task() {
        let new = parse(r#"{"queue":"q","webhook_url":"https://example.com/h","payload":{"a": 1},"delay":"10s"}"#)
            .validate(&rules(), None, "id-1".into(), 1_000, "")
            .unwrap();
        assert_eq!(new.id, "id-1");
        assert_eq!(new.payload_json, r#"{"a": 1}"#);
        assert_eq!(new.not_before_ms, 11_000);
        assert_eq!(new.created_at_ms, 1_000);
        assert_eq!(new.retry.max_retries, RetryDefaults::default().max_retries);
    }

    #[test]
    fn errors_name_the_field_under_the_prefix() {
        for (body, field) in [
            (
                r#"{"queue":"a.b","webhook_url":"https://example.com","payload":1}"#,
                "task.queue:",
            ),
            (
                r#"{"queue":"q","webhook_url":"ftp://example.com","payload":1}"#,
                "task.webhook_url:",
            ),
            (
                r#"{"queue":"q","webhook_url":"https://example.com","payload":1,"retry":{"max_retries":1000}}"#,
                "task.retry.max_retries",
            ),
            (
                r#"{"queue":"q","webhook_url":"https://example.com","payload":1,"await_callback":{"timeout":"0s"}}"#,
                "task.await_callback.timeout:",
            ),
            (
                r#"{"queue":"q","webhook_url":"https://example.com","payload":1,"delay":"400d"}"#,
                "task.delay:",
            ),
        ] {
            let error = parse(body)
                .validate(&rules(), None, "id".into(), 0, "task.")
                .unwrap_err();
            assert!(error.0.starts_with(field), "{body}: {error}");
        }
    }

    #[test]
    fn past_times_mean_now() {
        let new = parse(r#"{"queue":"q","webhook_url":"https://example.com","payload":1,"not_before":"2001-01-01T00:00:00Z"}"#)
            .validate(&rules(), None, "id".into(), 5_000_000_000_000, "")
            .unwrap();
        assert_eq!(new.not_before_ms, 0);
    }
}
