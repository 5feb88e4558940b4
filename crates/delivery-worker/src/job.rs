//! A unit of work as the executor sees it: the requests of one attempt round, how
//! their answers are judged, and what follows success and exhaustion.
//!
//! Every kind of task (webhook, await-callback dispatch, completion notification,
//! proxied call and its callback delivery) becomes an [`HttpJob`], so the worker has
//! a single code path and only this mapping knows the kinds apart.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use tern_core::executor::{BodyLimit, HttpRequest, insert_header, json_headers};
use tern_core::proxy::{self, ProxyError};
use tern_core::retry::Receiver;
use tern_core::round::Target;
use tern_core::sealing::Sealer;
use tern_proto::v1::{Task, task::Work};

/// What the worker needs besides the task to build a job.
pub struct JobContext<'a> {
    /// Opens sealed proxy headers; none when `proxy.secret_key` is not configured.
    pub sealer: Option<&'a Sealer>,
    /// Largest upstream body a proxied call keeps.
    pub max_proxy_response_bytes: usize,
}

/// What a 2xx round leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnSuccess {
    /// The task succeeded; the response is its result.
    Complete,
    /// The provider accepted a dispatch; only its callback (or the deadline) ends
    /// the task.
    AwaitCallback,
    /// The response is the result, delivered next by a follow-up callback message.
    DeliverResult,
    /// The task ends as its earlier phase decided (a proxied call's outcome reached
    /// the callback): succeeded, or failed with this error. The result stays.
    Settle {
        /// The upstream's failure, when it failed.
        failure: Option<String>,
    },
}

/// What running out of retries (or a permanent failure) leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnExhaustion {
    /// Dead-letter the task (a permanent failure fails it).
    DeadLetter,
    /// Deliver the failure payload by a follow-up callback message.
    DeliverFailure,
}

/// One task's work as HTTP.
#[derive(Debug)]
pub struct HttpJob {
    /// Called in order each round; the first 2xx wins.
    pub targets: Vec<Target>,
    /// Sign each request with the task id as `webhook-id` (same on every attempt).
    pub signed: bool,
    /// How answers are judged.
    pub receiver: Receiver,
    /// Attempt records' phase ("" for single-phase tasks).
    pub phase: &'static str,
    /// After a 2xx.
    pub on_success: OnSuccess,
    /// After the last failure.
    pub on_exhaustion: OnExhaustion,
}

/// Why a task cannot be turned into requests.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The message carries no work (a producer bug).
    #[error("task {0} carries no work")]
    NoWork(String),
    /// A proxied call's sealed headers cannot be opened here.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Phase name of a proxied call's upstream attempts.
pub const PHASE_UPSTREAM: &str = "upstream";
/// Phase name of a proxied call's callback attempts.
pub const PHASE_CALLBACK: &str = "callback";

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

/// A signed single-target delivery (webhook, notification, callback).
fn delivery(
    url: &str,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Vec<Target> {
    vec![Target {
        request: HttpRequest {
            method: Method::POST,
            url: url.to_string(),
            headers,
            body,
            timeout,
            keep_body: BodyLimit::Excerpt,
        },
        retries: 0,
    }]
}

/// The job for attempt round number `attempt` of `task`; every request in it carries a
/// `traceparent` in the task's trace.
pub fn build(task: &Task, attempt: u32, ctx: &JobContext<'_>) -> Result<HttpJob, JobError> {
    let mut job = build_untraced(task, attempt, ctx)?;
    for target in &mut job.targets {
        if let Some(traceparent) = tern_core::trace_context::for_outbound_call(&task.traceparent) {
            insert_header(
                &mut target.request.headers,
                tern_core::trace_context::HEADER,
                &traceparent,
            );
        }
    }
    Ok(job)
}

fn build_untraced(task: &Task, attempt: u32, ctx: &JobContext<'_>) -> Result<HttpJob, JobError> {
    let timeout = Duration::from_millis(
        task.retry
            .as_ref()
            .map(|r| r.timeout_ms)
            .filter(|t| *t > 0)
            .unwrap_or(30_000),
    );
    let deliver = |targets, on_success| HttpJob {
        targets,
        signed: true,
        receiver: Receiver::Webhook,
        phase: "",
        on_success,
        on_exhaustion: OnExhaustion::DeadLetter,
    };
    match &task.work {
        Some(Work::Webhook(webhook)) => {
            // A raw body goes out exactly as the client gave it, with its own type.
            let (mut headers, body) = if webhook.content_type.is_empty() {
                (
                    json_headers(),
                    webhook_envelope(&task.id, &task.queue, &webhook.payload_json, attempt),
                )
            } else {
                let mut headers = reqwest::header::HeaderMap::new();
                insert_header(&mut headers, "content-type", &webhook.content_type);
                (headers, webhook.raw_body.clone())
            };
            let awaits = !webhook.callback_url.is_empty();
            if awaits {
                insert_header(&mut headers, "x-tern-callback-url", &webhook.callback_url);
            }
            Ok(deliver(
                delivery(&webhook.url, headers, body, timeout),
                if awaits {
                    OnSuccess::AwaitCallback
                } else {
                    OnSuccess::Complete
                },
            ))
        }
        // The event is fixed; its id (this task's id) is the same on every attempt.
        Some(Work::Notify(notify)) => Ok(deliver(
            delivery(
                &notify.url,
                json_headers(),
                notify.event_json.clone(),
                timeout,
            ),
            OnSuccess::Complete,
        )),
        // Upstream calls are the client's own requests, forwarded: not signed (a
        // third-party API has no use for Tern's signature) and judged as an upstream.
        Some(Work::Proxy(work)) => Ok(HttpJob {
            targets: proxy::targets(
                work,
                &task.tenant_id,
                ctx.sealer,
                timeout,
                ctx.max_proxy_response_bytes,
            )?,
            signed: false,
            receiver: Receiver::Upstream,
            phase: PHASE_UPSTREAM,
            on_success: OnSuccess::DeliverResult,
            on_exhaustion: OnExhaustion::DeliverFailure,
        }),
        Some(Work::ProxyCallback(callback)) => {
            let mut headers = reqwest::header::HeaderMap::new();
            insert_header(&mut headers, "content-type", &callback.content_type);
            insert_header(&mut headers, "x-tern-job-id", &task.id);
            insert_header(
                &mut headers,
                "x-tern-upstream-status",
                &callback.upstream_status.to_string(),
            );
            Ok(HttpJob {
                phase: PHASE_CALLBACK,
                ..deliver(
                    delivery(&callback.url, headers, callback.body.clone(), timeout),
                    OnSuccess::Settle {
                        failure: (!callback.upstream_error.is_empty())
                            .then(|| callback.upstream_error.clone()),
                    },
                )
            })
        }
        None => Err(JobError::NoWork(task.id.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::v1::{ProxyCallbackWork, WebhookWork};

    const CTX: JobContext<'static> = JobContext {
        sealer: None,
        max_proxy_response_bytes: 1024,
    };

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
                ..Default::default()
            })),
            ..Default::default()
        };
        let job = build(&task, 1, &CTX).unwrap();
        assert!(job.signed);
        assert_eq!(job.on_success, OnSuccess::Complete);
        assert_eq!(job.targets.len(), 1);
        assert_eq!(job.targets[0].request.timeout, Duration::from_secs(30));
        assert_eq!(
            job.targets[0].request.headers["content-type"],
            "application/json"
        );
        assert!(build(&Task::default(), 1, &CTX).is_err());
    }

    #[test]
    fn a_raw_body_goes_out_as_it_is_with_its_content_type() {
        let bytes = bytes::Bytes::from_static(b"\xff\x00<a>\x80");
        let task = Task {
            id: "t".into(),
            queue: "q".into(),
            work: Some(Work::Webhook(WebhookWork {
                url: "http://example.com/hook".into(),
                raw_body: bytes.clone(),
                content_type: "application/xml; charset=latin1".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let job = build(&task, 2, &CTX).unwrap();
        assert!(job.signed);
        let request = &job.targets[0].request;
        assert_eq!(request.body, bytes);
        assert_eq!(
            request.headers["content-type"],
            "application/xml; charset=latin1"
        );
    }

    #[test]
    fn a_failed_upstreams_callback_settles_the_task_as_failed() {
        let task = Task {
            id: "job".into(),
            work: Some(Work::ProxyCallback(ProxyCallbackWork {
                url: "http://example.com/cb".into(),
                body: bytes::Bytes::from_static(b"{}"),
                content_type: "application/json".into(),
                upstream_status: 503,
                upstream_error: "upstream_failed: HTTP 503".into(),
            })),
            ..Default::default()
        };
        let job = build(&task, 5, &CTX).unwrap();
        assert_eq!(job.phase, PHASE_CALLBACK);
        assert_eq!(job.on_exhaustion, OnExhaustion::DeadLetter);
        let headers = &job.targets[0].request.headers;
        assert_eq!(headers["x-tern-job-id"], "job");
        assert_eq!(headers["x-tern-upstream-status"], "503");
        assert_eq!(
            job.on_success,
            OnSuccess::Settle {
                failure: Some("upstream_failed: HTTP 503".into())
            }
        );
    }
}
