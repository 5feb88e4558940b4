//! `/v1/tasks`: submit a webhook task, read its status.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tern_core::idempotency;
use tern_core::policy::{self, RetryOverrides};
use tern_core::task_store::{Change, Updated};
use tern_core::task_view::TaskView;
use tern_core::topology::is_subject_token;
use tern_proto::v1::TaskStatus;

use crate::auth::Authenticated;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::idempotent::{self, Outcome};
use crate::state::AppState;
use crate::submit::{self, NewTask};

/// Body of `POST /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
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
    pub delay: Option<tern_core::duration::HumanDuration>,
    /// Dispatch no sooner than this time (RFC 3339).
    #[serde(default)]
    pub not_before: Option<String>,
}

/// Longest accepted delay.
const MAX_DELAY: Duration = Duration::from_secs(365 * 86_400);

/// When a task may first be dispatched (0 = now), from `delay` or `not_before`.
fn not_before_ms(request: &CreateTaskRequest, now_ms: i64) -> Result<i64, ApiError> {
    let at = match (&request.delay, &request.not_before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Validation(
                "delay and not_before: give one or the other".into(),
            ));
        }
        (Some(delay), None) => {
            if delay.get() > MAX_DELAY {
                return Err(ApiError::Validation("delay: must be at most 365d".into()));
            }
            now_ms + delay.get().as_millis() as i64
        }
        (None, Some(text)) => {
            let t = time::OffsetDateTime::parse(
                text,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|_| ApiError::Validation("not_before: must be an RFC 3339 time".into()))?;
            let at = (t.unix_timestamp_nanos() / 1_000_000) as i64;
            if at - now_ms > MAX_DELAY.as_millis() as i64 {
                return Err(ApiError::Validation(
                    "not_before: must be at most 365 days ahead".into(),
                ));
            }
            at
        }
        (None, None) => 0,
    };
    Ok(if at > now_ms { at } else { 0 })
}

/// `"await_callback": {"timeout": "1h"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwaitCallback {
    /// How long the provider has to call back (1 s to 30 days).
    pub timeout: tern_core::duration::HumanDuration,
}

/// Bounds of `await_callback.timeout`.
const AWAIT_TIMEOUT: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 86_400));

/// Body of the 202 answer.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// The new task's id.
    pub task_id: String,
    /// Always `queued` at acceptance.
    pub status: &'static str,
    /// Where to poll the task.
    pub status_url: String,
    /// The one-time URL the provider calls back on (await-callback tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// `POST /v1/tasks`
pub async fn create(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    headers: HeaderMap,
    body: JsonBody<CreateTaskRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if idempotency::is_valid_key(k) => Some(k.to_string()),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1-{} printable ASCII characters",
                    idempotency::MAX_KEY_LEN
                )));
            }
        },
    };
    let request = body.value;
    if !is_subject_token(&request.queue) {
        return Err(ApiError::Validation(
            "queue must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
        ));
    }
    state
        .guard
        .validate_url(&request.webhook_url, state.config.ingress.max_url_len)
        .map_err(|e| ApiError::Validation(format!("webhook_url: {e}")))?;
    if let Some(url) = &request.notify_url {
        state
            .guard
            .validate_url(url, state.config.ingress.max_url_len)
            .map_err(|e| ApiError::Validation(format!("notify_url: {e}")))?;
    }

    // Configuration defaults, then the queue's policy, then the task's own overrides.
    let mut retry = match state.queues.policy(&tenant.id, &request.queue) {
        Some(queue) => queue
            .retry
            .unwrap_or_else(|| policy::defaults(&state.config.retry)),
        None => policy::defaults(&state.config.retry),
    };
    if let Some(overrides) = &request.retry {
        overrides
            .validate("retry.")
            .map_err(|e| ApiError::Validation(e.to_string()))?;
        overrides.apply(&mut retry);
        policy::validate_merged(&retry, "retry.")
            .map_err(|e| ApiError::Validation(e.to_string()))?;
    }

    let await_timeout = match &request.await_callback {
        Some(a) if a.timeout.get() < AWAIT_TIMEOUT.0 || a.timeout.get() > AWAIT_TIMEOUT.1 => {
            return Err(ApiError::Validation(
                "await_callback.timeout: must be between 1s and 30d".into(),
            ));
        }
        Some(a) => Some(a.timeout.get()),
        None => None,
    };

    let not_before_ms = not_before_ms(&request, tern_core::now_ms())?;

    let new = NewTask {
        not_before_ms,
        id: uuid::Uuid::now_v7().to_string(),
        queue: request.queue,
        webhook_url: request.webhook_url,
        payload_json: request.payload.get().to_string(),
        retry,
        await_timeout,
        notify_url: request.notify_url.unwrap_or_default(),
    };
    let Some(key) = idempotency_key else {
        let id = new.id.clone();
        let outcome = submit::accept(&state, &tenant, new).await?;
        return Ok(accepted(&state, &id, outcome.callback_url, false));
    };

    let storage_key = idempotency::storage_key(&tenant.id, &key);
    let fingerprint = idempotency::fingerprint("POST", "/v1/tasks", &body.raw);
    let id = new.id.clone();
    let submitted = idempotent::submit(&state, &storage_key, &fingerprint, &id, None, || {
        submit::accept(&state, &tenant, new)
    })
    .await?;
    Ok(match submitted {
        Outcome::Accepted(outcome) => accepted(&state, &id, outcome.callback_url, false),
        // The callback id is a secret that is never stored in clear, so a replay
        // cannot repeat it; the first response was the only one to carry it.
        Outcome::Replayed(task_id) => accepted(&state, &task_id, None, true),
    })
}

fn accepted(
    state: &AppState,
    task_id: &str,
    callback_url: Option<String>,
    replayed: bool,
) -> Response {
    let status_url = status_url(state, task_id);
    let body = Accepted {
        task_id: task_id.to_string(),
        status: "queued",
        status_url: status_url.clone(),
        callback_url,
    };
    accepted_response(&status_url, body, replayed)
}

/// Where a task's status is read.
pub(crate) fn status_url(state: &AppState, task_id: &str) -> String {
    format!(
        "{}/v1/tasks/{task_id}",
        state.config.ingress.public_url.trim_end_matches('/')
    )
}

/// A 202 with `body`, `Location: status_url`, and `Idempotent-Replayed: true` for a
/// replay.
pub(crate) fn accepted_response(
    status_url: &str,
    body: impl Serialize,
    replayed: bool,
) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `DELETE /v1/tasks/{id}`: cancels a task that has not started (queued or scheduled).
pub async fn cancel(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no task {id:?}"));
    // Not a task id at all: answer as for an unknown task, without a lookup.
    uuid::Uuid::try_parse(&id).map_err(|_| not_found())?;
    let now = tern_core::now_ms();
    let updated = state
        .tasks
        .update(&id, None, |r| {
            if r.tenant_id != tenant.id {
                return Change::Decline;
            }
            match r.status() {
                TaskStatus::Queued | TaskStatus::Scheduled => {
                    r.status = TaskStatus::Cancelled as i32;
                    r.updated_at_ms = now;
                    Change::Write
                }
                _ => Change::Decline,
            }
        })
        .await?;
    match updated {
        Updated::Written(record, _) => {
            // Whoever still holds the task (a schedule, INTAKE, READY) finds it
            // cancelled and drops it; removing the schedule just saves that work.
            state.schedules.cancel_delayed(&record.id).await;
            tern_core::notify::announce(&state.js, &state.tasks, &record).await;
            Ok(Json(TaskView::from(&record)))
        }
        Updated::Declined(record, _) if record.tenant_id == tenant.id => {
            Err(ApiError::Conflict(format!(
                "task is {} and can no longer be cancelled",
                tern_core::task_view::status_name(record.status())
            )))
        }
        _ => Err(not_found()),
    }
}

/// `GET /v1/tasks/{id}`
pub async fn get(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no task {id:?}"));
    // Not a task id at all: answer as for an unknown task, without a lookup.
    uuid::Uuid::try_parse(&id).map_err(|_| not_found())?;
    match state.tasks.get(&id).await? {
        Some((record, _)) if record.tenant_id == tenant.id => Ok(Json(TaskView::from(&record))),
        _ => Err(not_found()),
    }
}
