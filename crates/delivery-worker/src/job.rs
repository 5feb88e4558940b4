//! A unit of work as the executor sees it: one HTTP request per attempt.
//!
//! Every kind of task (webhook today; proxied calls, provider dispatches and
//! completion notifications later) becomes an [`HttpJob`], so the executor has a
//! single code path and only this mapping knows the kinds apart.

use std::time::Duration;

use bytes::Bytes;
use tern_proto::v1::{Task, task::Work};

/// One attempt's HTTP request.
#[derive(Debug, Clone)]
pub struct HttpJob {
    /// Target URL.
    pub url: String,
    /// Request body.
    pub body: Bytes,
    /// Its content type.
    pub content_type: &'static str,
    /// Stable across attempts: the receiver dedups by it (`webhook-id`).
    pub message_id: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// For await-callback dispatches: sent as `X-Tern-Callback-URL`.
    pub callback_url: Option<String>,
}

/// Why a task cannot be turned into a request.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The message carries no work (a producer bug).
    #[error("task {0} carries no work")]
    NoWork(String),
}

/// The webhook envelope `{"task_id","queue","payload","attempt"}`, payload verbatim.
pub fn webhook_envelope(task_id: &str, queue: &str, payload_json: &[u8], attempt: u32) -> Bytes {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let payload: &[u8] = if payload_json.is_empty() {
        b"null"
    } else {
        payload_json
    };
    let mut body = Vec::with_capacity(payload.len() + task_id.len() + queue.len() + 64);
    body.extend_from_slice(b"{\"task_id\":");
    body.extend_from_slice(quote(task_id).as_bytes());
    body.extend_from_slice(b",\"queue\":");
    body.extend_from_slice(quote(queue).as_bytes());
    body.extend_from_slice(b",\"payload\":");
    body.extend_from_slice(payload);
    body.extend_from_slice(b",\"attempt\":");
    body.extend_from_slice(attempt.to_string().as_bytes());
    body.push(b'}');
    Bytes::from(body)
}

/// The request for attempt number `attempt` of `task`.
pub fn build(task: &Task, attempt: u32) -> Result<HttpJob, JobError> {
    let timeout = Duration::from_millis(
        task.retry
            .as_ref()
            .map(|r| r.timeout_ms)
            .filter(|t| *t > 0)
            .unwrap_or(30_000),
    );
    match &task.work {
        Some(Work::Webhook(webhook)) => Ok(HttpJob {
            url: webhook.url.clone(),
            body: webhook_envelope(&task.id, &task.queue, &webhook.payload_json, attempt),
            content_type: "application/json",
            message_id: task.id.clone(),
            timeout,
            callback_url: (!webhook.callback_url.is_empty()).then(|| webhook.callback_url.clone()),
        }),
        // The event is fixed; its id (this task's id) is the same on every attempt.
        Some(Work::Notify(notify)) => Ok(HttpJob {
            url: notify.url.clone(),
            body: notify.event_json.clone(),
            content_type: "application/json",
            message_id: task.id.clone(),
            timeout,
            callback_url: None,
        }),
        None => Err(JobError::NoWork(task.id.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::v1::WebhookWork;

    #[test]
    fn envelope_is_json_with_the_payload_verbatim() {
        let body = webhook_envelope("t-1", "q", br#"{"b": 1,  "a":[2]}"#, 3);
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#""payload":{"b": 1,  "a":[2]}"#), "{text}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["task_id"], "t-1");
        assert_eq!(json["queue"], "q");
        assert_eq!(json["attempt"], 3);
        assert_eq!(json["payload"]["a"][0], 2);
    }

    #[test]
    fn builds_a_webhook_job() {
        let task = Task {
            id: "t".into(),
            queue: "q".into(),
            work: Some(Work::Webhook(WebhookWork {
                url: "http://example.com/hook".into(),
                payload_json: bytes::Bytes::from_static(b"42"),
                callback_url: String::new(),
            })),
            ..Default::default()
        };
        let job = build(&task, 1).unwrap();
        assert_eq!(job.message_id, "t");
        assert_eq!(job.timeout, Duration::from_secs(30));
        assert!(build(&Task::default(), 1).is_err());
    }
}
