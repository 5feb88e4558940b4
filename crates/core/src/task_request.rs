//! The task body of `POST /v1/tasks` and its validation.
//!
//! A recurring schedule carries the same body and turns it into a task at every
//! firing, so the ingress (for both endpoints) and the scheduler call this one
//! validation: a schedule is refused at creation for exactly what a task would be,
//! and its tasks get the queue policy in force when they fire.

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::accept::{NewTask, RawBody};
use crate::config::{Config, RetryDefaults};
use crate::duration::HumanDuration;
use crate::policy::{self, RetryOverrides};
use crate::topology::is_subject_token;
use crate::url_guard::UrlGuard;
use tern_proto::v1::QueuePolicy;

/// Body of `POST /v1/tasks` (and the `task` of a schedule).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Queue name: 1-64 of `A-Z a-z 0-9 _ -`.
    pub queue: String,
    /// Where to POST the payload.
    pub webhook_url: String,
    /// Any JSON value, delivered byte for byte inside the webhook envelope.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
    /// Instead of `payload`: bytes (standard base64) delivered as they are, without
    /// the envelope, with `content_type`.
    #[serde(default)]
    #[schema(content_encoding = "base64")]
    pub body_base64: Option<String>,
    /// The media type of `body_base64` (required with it).
    #[serde(default)]
    pub content_type: Option<String>,
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
    #[schema(format = DateTime)]
    pub not_before: Option<String>,
}

/// A field that is present, even as `null` (which is a JSON payload like any other).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// `"await_callback": {"timeout": "1h"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
        self.validate_with(rules, queue, id, now_ms, prefix, None)
    }

    /// [`validate`](Self::validate) for a body that came outside the JSON (the raw
    /// body of `POST /v1/tasks/raw`, its content type already checked); `payload`,
    /// `body_base64` and `content_type` must then be absent.
    pub fn validate_raw(
        self,
        rules: &TaskRules,
        queue: Option<QueuePolicy>,
        id: String,
        now_ms: i64,
        body: RawBody,
    ) -> Result<NewTask, InvalidTask> {
        self.validate_with(rules, queue, id, now_ms, "", Some(body))
    }

    fn validate_with(
        self,
        rules: &TaskRules,
        queue: Option<QueuePolicy>,
        id: String,
        now_ms: i64,
        prefix: &str,
        raw: Option<RawBody>,
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
        let (payload_json, raw_body) = match raw {
            Some(raw)
                if self.payload.is_none()
                    && self.body_base64.is_none()
                    && self.content_type.is_none() =>
            {
                (String::new(), Some(raw))
            }
            Some(_) => {
                return Err(invalid(
                    "payload, body_base64 and content_type: the body is the request's own".into(),
                ));
            }
            None => self.body().map_err(invalid)?,
        };
        Ok(NewTask {
            id,
            queue: self.queue,
            webhook_url: self.webhook_url,
            payload_json,
            raw_body,
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

    /// The JSON payload, or the raw body: exactly one of `payload` and `body_base64`.
    fn body(&self) -> Result<(String, Option<RawBody>), String> {
        match (&self.payload, &self.body_base64, &self.content_type) {
            (Some(_), Some(_), _) => {
                Err("payload and body_base64: give one or the other".into())
            }
            (None, None, _) => Err("payload: required (or body_base64 with content_type)".into()),
            (Some(_), None, Some(_)) => Err(
                "content_type: only with body_base64 (a JSON payload is delivered as application/json)"
                    .into(),
            ),
            (Some(payload), None, None) => Ok((payload.get().to_string(), None)),
            (None, Some(_), None) => Err("content_type: required with body_base64".into()),
            (None, Some(encoded), Some(content_type)) => {
                let content_type = crate::media_type::validate(content_type)
                    .map_err(|e| format!("content_type: {e}"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| format!("body_base64: not standard base64 with padding ({e})"))?;
                Ok((
                    String::new(),
                    Some(RawBody {
                        bytes: bytes.into(),
                        content_type: content_type.to_string(),
                    }),
                ))
            }
        }
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
    fn a_body_is_a_json_payload_or_base64_bytes_with_their_type() {
        let new = parse(r#"{"queue":"q","webhook_url":"https://example.com","payload":null}"#)
            .validate(&rules(), None, "id".into(), 0, "")
            .unwrap();
        assert_eq!(new.payload_json, "null");
        assert!(new.raw_body.is_none());

        let new = parse(r#"{"queue":"q","webhook_url":"https://example.com","body_base64":"/wA8YT4=","content_type":" text/xml; charset=latin1 "}"#)
            .validate(&rules(), None, "id".into(), 0, "")
            .unwrap();
        let raw = new.raw_body.unwrap();
        assert_eq!(&raw.bytes[..], b"\xff\x00<a>");
        assert_eq!(raw.content_type, "text/xml; charset=latin1");
        assert_eq!(new.payload_json, "");

        for (body, field) in [
            (
                r#""payload":1,"body_base64":"AA==","content_type":"a/b""#,
                "task.payload and body_base64:",
            ),
            (r#""body_base64":"AA==""#, "task.content_type: required"),
            (
                r#""payload":1,"content_type":"a/b""#,
                "task.content_type: only",
            ),
            (
                r#""body_base64":"not base64!","content_type":"a/b""#,
                "task.body_base64:",
            ),
            (
                r#""body_base64":"AA","content_type":"a/b""#,
                "task.body_base64:",
            ),
            (
                r#""body_base64":"AA==","content_type":"nonsense""#,
                "task.content_type:",
            ),
            (r#""content_type":"a/b""#, "task.payload: required"),
        ] {
            let json = format!(r#"{{"queue":"q","webhook_url":"https://example.com",{body}}}"#);
            let error = parse(&json)
                .validate(&rules(), None, "id".into(), 0, "task.")
                .unwrap_err();
            assert!(error.0.starts_with(field), "{json}: {error}");
        }
    }

    #[test]
    fn a_raw_body_excludes_the_json_body_fields() {
        let raw = || RawBody {
            bytes: bytes::Bytes::from_static(b"x"),
            content_type: "text/plain".into(),
        };
        let new = parse(r#"{"queue":"q","webhook_url":"https://example.com"}"#)
            .validate_raw(&rules(), None, "id".into(), 0, raw())
            .unwrap();
        assert_eq!(new.raw_body.unwrap().content_type, "text/plain");
        assert!(
            parse(r#"{"queue":"q","webhook_url":"https://example.com","payload":1}"#)
                .validate_raw(&rules(), None, "id".into(), 0, raw())
                .is_err()
        );
    }

    #[test]
    fn past_times_mean_now() {
        let new = parse(r#"{"queue":"q","webhook_url":"https://example.com","payload":1,"not_before":"2001-01-01T00:00:00Z"}"#)
            .validate(&rules(), None, "id".into(), 5_000_000_000_000, "")
            .unwrap();
        assert_eq!(new.not_before_ms, 0);
    }
}
