//! `/v1/tasks`: submit a webhook task (a JSON body, or `/v1/tasks/raw` with a raw
//! body), read its status, cancel it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tern_core::accept::{NewTask, RawBody};
use tern_core::duration::HumanDuration;
use tern_core::idempotency;
use tern_core::media_type;
use tern_core::task_request::TaskRequest;
use tern_core::task_store::Updated;
use tern_core::task_view::TaskView;
use tern_core::tenants::Tenant;
use tracing::Instrument;

use crate::auth::Authenticated;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::idempotent::{self, Outcome};
use crate::openapi::{IdempotencyKeyHeader, TraceparentHeader};
use crate::state::AppState;
use crate::submissions;

/// Body of the 202 answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = TaskAccepted)]
pub struct Accepted {
    /// The new task's id.
    pub task_id: String,
    /// Always `queued` at acceptance.
    #[schema(value_type = String, example = "queued")]
    pub status: &'static str,
    /// Where to poll the task.
    pub status_url: String,
    /// The one-time URL the provider calls back on (await-callback tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// The `Idempotency-Key` header, checked.
fn idempotency_key(value: Option<&HeaderValue>) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if idempotency::is_valid_key(k) => Ok(Some(k.to_string())),
            _ => Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1-{} printable ASCII characters",
                idempotency::MAX_KEY_LEN
            ))),
        },
    }
}

/// `POST /v1/tasks`
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    summary = "Submit a webhook task",
    description = "Accepted (202) only after JetStream stored the task. The body carries a JSON `payload` (delivered inside the envelope `{\"task_id\",\"queue\",\"payload\",\"attempt\"}`) or `body_base64` + `content_type` (delivered as they are).",
    params(IdempotencyKeyHeader, TraceparentHeader),
    request_body(content = TaskRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted (or replayed, with `Idempotent-Replayed: true`)", body = Accepted, headers(
            ("Location" = String, description = "The task's status URL"),
            ("Idempotent-Replayed" = String, description = "`true` when an earlier request with this Idempotency-Key is replayed"),
        )),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = ErrorBody),
        (status = 409, description = "Idempotency-Key used with a different request, or still in progress", body = ErrorBody),
        (status = 413, description = "Body larger than `ingress.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid; the message names it", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    auth: Result<Authenticated, ApiError>,
    request: Request,
) -> Result<Response, ApiError> {
    // Every outcome is counted, the rejections before the handler proper too.
    let tenant = authenticated(auth)?;
    let headers = request.headers();
    let idempotency_key = idempotency_key(headers.get("idempotency-key"));
    let traceparent = headers.get(tern_core::trace_context::HEADER).cloned();
    let body = JsonBody::<TaskRequest>::from_request(request, &state).await;
    let queue = body
        .as_ref()
        .map(|body| body.value.queue.clone())
        .unwrap_or_default();
    let result = async {
        let body = body?;
        let idempotency_key = idempotency_key?;
        let request = body.value;
        let queue = state.queues.policy(&tenant.id, &request.queue);
        let new = request.validate(
            &state.rules,
            queue,
            uuid::Uuid::now_v7().to_string(),
            tern_core::now_ms(),
            "",
        )?;
        submit(&state, &tenant, traceparent, idempotency_key, new, || {
            idempotency::fingerprint("POST", "/v1/tasks", &body.raw)
        })
        .await
    }
    .await;
    submissions::record(Some(tenant.tier), &queue, &result);
    result
}

/// The authenticated tenant; a refused key is counted as a rejected submission.
fn authenticated(auth: Result<Authenticated, ApiError>) -> Result<Arc<Tenant>, ApiError> {
    auth.map(|Authenticated(tenant)| tenant).inspect_err(|e| {
        submissions::record_rejected(None, "", e);
    })
}

/// Query of `POST /v1/tasks/raw`: the task's fields that are not its body.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RawTaskParams {
    /// Queue name: 1-64 of `A-Z a-z 0-9 _ -`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub queue: String,
    /// Where to POST the body.
    #[param(format = "uri")]
    pub webhook_url: String,
    /// Where to POST a signed event when the task ends.
    #[serde(default)]
    #[param(format = "uri")]
    pub notify_url: Option<String>,
    /// Dispatch no sooner than this long from now (`"30s"`, `"5m"`, integer seconds).
    #[param(pattern = r"^[0-9]+(ms|s|m|h|d)?$")]
    #[serde(default)]
    pub delay: Option<String>,
    /// Dispatch no sooner than this time (RFC 3339).
    #[serde(default)]
    #[param(format = DateTime)]
    pub not_before: Option<String>,
}

/// `POST /v1/tasks/raw?queue=…&webhook_url=…`: the request body, whatever its
/// `Content-Type`, is the task's body, delivered as it is with that content type.
#[utoipa::path(
    post,
    path = "/v1/tasks/raw",
    tag = "tasks",
    summary = "Submit a webhook task with a raw body",
    description = "The request body, of any Content-Type (JSON included), is delivered unchanged with that Content-Type and no envelope, signed over its bytes.",
    params(RawTaskParams, IdempotencyKeyHeader, TraceparentHeader),
    request_body(description = "The bytes to deliver", content(
        ([u8] = "application/octet-stream"),
        (String = "text/plain"),
        (String = "application/xml"),
    )),
    responses(
        (status = 202, description = "Accepted (or replayed, with `Idempotent-Replayed: true`)", body = Accepted, headers(
            ("Location" = String, description = "The task's status URL"),
            ("Idempotent-Replayed" = String, description = "`true` when an earlier request with this Idempotency-Key is replayed"),
        )),
        (status = 400, description = "Missing or unknown query parameter, malformed Content-Type or Idempotency-Key", body = ErrorBody),
        (status = 409, description = "Idempotency-Key used with a different request, or still in progress", body = ErrorBody),
        (status = 413, description = "Body larger than `ingress.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "No Content-Type", body = ErrorBody),
        (status = 422, description = "A parameter is invalid; the message names it", body = ErrorBody),
    ),
)]
pub async fn create_raw(
    State(state): State<AppState>,
    auth: Result<Authenticated, ApiError>,
    request: Request,
) -> Result<Response, ApiError> {
    let tenant = authenticated(auth)?;
    let mut queue = String::new();
    let result = submit_raw(&state, &tenant, request, &mut queue).await;
    submissions::record(Some(tenant.tier), &queue, &result);
    result
}

/// `create_raw` after authentication; `queue` is set as soon as the query names it.
async fn submit_raw(
    state: &AppState,
    tenant: &Tenant,
    request: Request,
    queue: &mut String,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let idempotency_key = idempotency_key(headers.get("idempotency-key"))?;
    let params = Query::<RawTaskParams>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))?;
    queue.clone_from(&params.queue);
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type is required: it is sent with the body",
            ));
        }
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| media_type::validate(v).ok())
            .ok_or_else(|| ApiError::InvalidHeader {
                header: "Content-Type",
                message:
                    "must be a media type such as text/plain or application/xml; charset=utf-8"
                        .into(),
            })?
            .to_string(),
    };
    let bytes = crate::body::raw(body, state.config.ingress.max_body_bytes).await?;
    let delay = params
        .delay
        .as_deref()
        .map(|d| {
            tern_core::duration::parse(d)
                .map(HumanDuration)
                .map_err(|e| ApiError::Validation(format!("delay: {e}")))
        })
        .transpose()?;
    // What must match for a replay: every parameter, the content type and the bytes.
    let described = format!(
        "/v1/tasks/raw\n{}\n{}\n{}\n{}\n{}\n{content_type}",
        params.queue,
        params.webhook_url,
        params.notify_url.as_deref().unwrap_or(""),
        params.delay.as_deref().unwrap_or(""),
        params.not_before.as_deref().unwrap_or(""),
    );
    let request = TaskRequest {
        queue: params.queue,
        webhook_url: params.webhook_url,
        payload: None,
        body_base64: None,
        content_type: None,
        retry: None,
        await_callback: None,
        notify_url: params.notify_url,
        delay,
        not_before: params.not_before,
    };
    let queue = state.queues.policy(&tenant.id, &request.queue);
    let fingerprint = idempotency::fingerprint("POST", &described, &bytes);
    let new = request.validate_raw(
        &state.rules,
        queue,
        uuid::Uuid::now_v7().to_string(),
        tern_core::now_ms(),
        RawBody {
            bytes,
            content_type,
        },
    )?;
    let traceparent = headers.get(tern_core::trace_context::HEADER).cloned();
    submit(state, tenant, traceparent, idempotency_key, new, || {
        fingerprint
    })
    .await
}

/// Accepts `new` (under the idempotency key, if any): the 202, or a replay of the
/// first one. Runs in the task's `accept` span, joined to the client's `traceparent`.
async fn submit(
    state: &AppState,
    tenant: &Tenant,
    traceparent: Option<HeaderValue>,
    idempotency_key: Option<String>,
    mut new: NewTask,
    fingerprint: impl FnOnce() -> Vec<u8>,
) -> Result<Response, ApiError> {
    let (span, traceparent) =
        tern_core::task_span::accept(&new.id, traceparent.as_ref().and_then(|v| v.to_str().ok()));
    new.traceparent = traceparent;
    async move {
        let Some(key) = idempotency_key else {
            let id = new.id.clone();
            let outcome = state.acceptor.accept(tenant, new).await?;
            tracing::debug!("task accepted");
            return Ok(accepted(state, &id, outcome.callback_url, false));
        };

        let storage_key = idempotency::storage_key(&tenant.id, &key);
        let fingerprint = fingerprint();
        let id = new.id.clone();
        let submitted =
            idempotent::submit(state, &storage_key, &fingerprint, &id, None, || async {
                Ok(state.acceptor.accept(tenant, new).await?)
            })
            .await?;
        tracing::debug!(
            replayed = matches!(submitted, Outcome::Replayed(_)),
            "task accepted"
        );
        Ok(match submitted {
            Outcome::Accepted(outcome) => accepted(state, &id, outcome.callback_url, false),
            // The callback id is a secret that is never stored in clear, so a replay
            // cannot repeat it; the first response was the only one to carry it.
            Outcome::Replayed(task_id) => accepted(state, &task_id, None, true),
        })
    }
    .instrument(span)
    .await
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
#[utoipa::path(
    delete,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    summary = "Cancel a queued or scheduled task",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task, now `cancelled`", body = TaskView),
        (status = 404, description = "No such task (of this tenant)", body = ErrorBody),
        (status = 409, description = "The task has started or ended", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no task {id:?}"));
    // Not a task id at all: answer as for an unknown task, without a lookup.
    uuid::Uuid::try_parse(&id).map_err(|_| not_found())?;
    let updated = state
        .lookup
        .cancel(&tenant, &id, tern_core::now_ms())
        .await?;
    match updated {
        Updated::Written(record, _) => {
            // Whoever still holds the task (a schedule, INTAKE, READY) finds it
            // cancelled and drops it; removing the schedule just saves that work.
            state.delayed.cancel_delayed(&record.id).await;
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
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    summary = "Read a task's status",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task (of this tenant)", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no task {id:?}"));
    // Not a task id at all: answer as for an unknown task, without a lookup.
    uuid::Uuid::try_parse(&id).map_err(|_| not_found())?;
    match state.lookup.find(&tenant, &id).await? {
        Some(found) => Ok(Json(TaskView::from(&found.record()))),
        None => Err(not_found()),
    }
}
