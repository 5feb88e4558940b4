//! The public JSON shape of a task, shared by the status API and by completion
//! notifications (whose `data` is "the task as the status API shows it").

use serde::Serialize;
use tern_proto::v1::{Attempt, AttemptError, TaskRecord, TaskStatus};
use time::OffsetDateTime;

/// Status names as the API spells them.
pub fn status_name(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Unspecified | TaskStatus::Queued => "queued",
        TaskStatus::Scheduled => "scheduled",
        TaskStatus::Processing => "processing",
        TaskStatus::Waiting => "waiting",
        TaskStatus::Succeeded => "succeeded",
        TaskStatus::Failed => "failed",
        TaskStatus::Dead => "dead",
        TaskStatus::Cancelled => "cancelled",
    }
}

/// Error kind names as attempt records spell them.
pub fn attempt_error_name(error: AttemptError) -> Option<&'static str> {
    match error {
        AttemptError::Unspecified => None,
        AttemptError::Timeout => Some("timeout"),
        AttemptError::Connect => Some("connect"),
        AttemptError::Dns => Some("dns"),
        AttemptError::Tls => Some("tls"),
        AttemptError::RefusedByGuard => Some("refused-by-guard"),
        AttemptError::EndpointDisabled => Some("endpoint-disabled"),
        AttemptError::Other => Some("other"),
    }
}

/// RFC 3339 text of a millisecond timestamp, always with three fractional digits so
/// that timestamps sort as text too.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// A task as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    /// Task id (UUIDv7).
    pub task_id: String,
    /// Lifecycle state.
    #[schema(value_type = String, example = "queued")]
    pub status: &'static str,
    /// Queue name.
    pub queue: String,
    /// Where the work goes.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub webhook_url: String,
    /// Proxied calls: the upstream (the first target of a route).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream_url: String,
    /// Proxied calls: the route whose targets are called.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub route_key: String,
    /// Proxied calls: where the outcome is delivered.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub callback_url: String,
    /// Raw-body tasks: the content type their body is delivered with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// When it was accepted.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// When a delayed task becomes due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    /// The recurring schedule that created the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// The schedule's slot (cron time) the task was created for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_slot: Option<String>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptView>,
    /// When the next retry is due, while one is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The outcome once the task is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultView>,
    /// Why it failed or died.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One attempt as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1 for the first attempt.
    pub number: u32,
    /// When the call started.
    pub started_at: String,
    /// How long it took.
    pub duration_ms: u64,
    /// HTTP status, when a response came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
    /// What went wrong before a response, when nothing came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "timeout")]
    pub error: Option<&'static str>,
    /// The start of the response body, or the error's description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub response: String,
    /// The URL called (proxied calls; a cascade calls several per round).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Proxied calls: `upstream` or `callback`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

/// The result of a finished task.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultView {
    /// HTTP status of the response that completed the task.
    #[serde(rename = "statusCode")]
    pub status_code: u32,
    /// Its headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Its body (bounded).
    pub body: String,
    /// How long the call took, in ms.
    pub duration: u64,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        Self {
            number: a.number,
            started_at: rfc3339(a.started_at_ms),
            duration_ms: a.duration_ms,
            status_code: (a.status_code != 0).then_some(a.status_code),
            error: attempt_error_name(a.error()),
            response: a.response_excerpt.clone(),
            url: if a.phase.is_empty() {
                String::new()
            } else {
                a.url.clone()
            },
            phase: a.phase.clone(),
        }
    }
}

impl From<&TaskRecord> for TaskView {
    fn from(r: &TaskRecord) -> Self {
        Self {
            task_id: r.id.clone(),
            status: status_name(r.status()),
            queue: r.queue.clone(),
            // A proxied call has a callback URL; its target is an upstream.
            webhook_url: if r.callback_url.is_empty() {
                r.target_url.clone()
            } else {
                String::new()
            },
            upstream_url: if r.callback_url.is_empty() {
                String::new()
            } else {
                r.target_url.clone()
            },
            route_key: r.route_key.clone(),
            callback_url: r.callback_url.clone(),
            content_type: (!r.content_type.is_empty()).then(|| r.content_type.clone()),
            created_at: rfc3339(r.created_at_ms),
            updated_at: rfc3339(r.updated_at_ms),
            scheduled_for: (r.scheduled_for_ms != 0).then(|| rfc3339(r.scheduled_for_ms)),
            schedule_id: (!r.schedule_id.is_empty()).then(|| r.schedule_id.clone()),
            schedule_slot: (!r.schedule_id.is_empty()).then(|| rfc3339(r.schedule_slot_ms)),
            attempts: r.attempts.iter().map(AttemptView::from).collect(),
            next_attempt_at: (r.next_attempt_at_ms != 0).then(|| rfc3339(r.next_attempt_at_ms)),
            result: r.result.as_ref().map(|res| ResultView {
                status_code: res.status_code,
                headers: res.headers.clone().into_iter().collect(),
                body: res.body.clone(),
                duration: res.duration_ms,
            }),
            last_error: (!r.last_error.is_empty()).then(|| r.last_error.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_and_optional_fields() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
        let record = TaskRecord {
            id: "t".into(),
            status: TaskStatus::Processing as i32,
            attempts: vec![Attempt {
                number: 1,
                error: AttemptError::Timeout as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = serde_json::to_value(TaskView::from(&record)).unwrap();
        assert_eq!(json["status"], "processing");
        assert_eq!(json["attempts"][0]["error"], "timeout");
        assert!(json["attempts"][0].get("status_code").is_none());
        assert!(json.get("result").is_none());
    }
}
