//! `/v1/tasks`: submit a webhook task, read its status.

use axum::Json;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tern_core::idempotency;
use tern_core::task_request::TaskRequest;
use tern_core::task_store::{Change, Updated};
use tern_core::task_view::TaskView;
use tern_core::tenants::Tenant;
use tern_proto::v1::TaskStatus;
use tracing::Instrument;

use crate::auth::Authenticated;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::idempotent::{self, Outcome};
use crate::state::AppState;
use crate::submissions;

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
    auth: Result<Authenticated, ApiError>,
    request: Request,
) -> Result<Response, ApiError> {
    // Every outcome is counted, so the rejections before the handler proper too.
    let tenant = match auth {
        Ok(Authenticated(tenant)) => tenant,
        Err(e) => {
            let rejected = Err(e);
            submissions::record(None, "", &rejected);
            return rejected;
        }
    };
    let headers = request.headers();
    let idempotency_key = headers.get("idempotency-key").cloned();
    let traceparent = headers.get(tern_core::trace_context::HEADER).cloned();
    let body = JsonBody::<TaskRequest>::from_request(request, &state).await;
    let queue = body
        .as_ref()
        .map(|body| body.value.queue.clone())
        .unwrap_or_default();
    let result = match body {
        Ok(body) => submit(&state, tenant.clone(), idempotency_key, traceparent, body).await,
        Err(e) => Err(e),
    };
    submissions::record(Some(tenant.tier), &queue, &result);
    result
}

async fn submit(
    state: &AppState,
    tenant: Arc<Tenant>,
    idempotency_key: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    body: JsonBody<TaskRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = match idempotency_key {
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
    let queue = state.queues.policy(&tenant.id, &request.queue);
    let mut new = request.validate(
        &state.rules,
        queue,
        uuid::Uuid::now_v7().to_string(),
        tern_core::now_ms(),
        "",
    )?;
    let (span, traceparent) =
        tern_core::task_span::accept(&new.id, traceparent.as_ref().and_then(|v| v.to_str().ok()));
    new.traceparent = traceparent;
    async move {
        let Some(key) = idempotency_key else {
            let id = new.id.clone();
            let outcome = state.acceptor.accept(&tenant, new).await?;
            tracing::debug!("task accepted");
            return Ok(accepted(state, &id, outcome.callback_url, false));
        };

        let storage_key = idempotency::storage_key(&tenant.id, &key);
        let fingerprint = idempotency::fingerprint("POST", "/v1/tasks", &body.raw);
        let id = new.id.clone();
        let submitted =
            idempotent::submit(state, &storage_key, &fingerprint, &id, None, || async {
                Ok(state.acceptor.accept(&tenant, new).await?)
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
