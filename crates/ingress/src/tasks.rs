//! `/v1/tasks`: submit a webhook task, read its status.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tern_core::idempotency::{self, Claim};
use tern_core::task_request::TaskRequest;
use tern_core::task_store::{Change, Updated};
use tern_core::task_view::TaskView;
use tern_proto::v1::TaskStatus;

use crate::auth::Authenticated;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

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

/// How long an identical request waits for the first one to finish.
const IN_PROGRESS_WAIT: Duration = Duration::from_secs(10);
/// A claim older than this whose request never completed is taken over.
const ABANDONED_AFTER_MS: i64 = 30_000;

/// `POST /v1/tasks`
pub async fn create(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    headers: HeaderMap,
    body: JsonBody<TaskRequest>,
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
    let queue = state.queues.policy(&tenant.id, &request.queue);
    let new = request.validate(
        &state.rules,
        queue,
        uuid::Uuid::now_v7().to_string(),
        tern_core::now_ms(),
        "",
    )?;
    let Some(key) = idempotency_key else {
        let id = new.id.clone();
        let outcome = state.acceptor.accept(&tenant, new).await?;
        return Ok(accepted(&state, &id, outcome.callback_url, false));
    };

    let storage_key = idempotency::storage_key(&tenant.id, &key);
    let fingerprint = idempotency::fingerprint("POST", "/v1/tasks", &body.raw);
    let started = Instant::now();
    let mut claim = state
        .idempotency
        .claim(&storage_key, &fingerprint, &new.id)
        .await?;
    loop {
        match claim {
            Claim::New { revision } => {
                let id = new.id.clone();
                let outcome = match state.acceptor.accept(&tenant, new).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        if let Err(release) = state.idempotency.release(&storage_key).await {
                            tracing::warn!(error = %release, "could not release idempotency key");
                        }
                        return Err(e.into());
                    }
                };
                state
                    .idempotency
                    .complete(&storage_key, revision, &fingerprint, &id)
                    .await?;
                return Ok(accepted(&state, &id, outcome.callback_url, false));
            }
            // The callback id is a secret that is never stored in clear, so a replay
            // cannot repeat it; the first response was the only one to carry it.
            Claim::Replay { task_id } => return Ok(accepted(&state, &task_id, None, true)),
            Claim::Conflict => return Err(ApiError::IdempotencyConflict),
            Claim::InProgress {
                claimed_at_ms,
                revision,
            } => {
                if tern_core::now_ms() - claimed_at_ms > ABANDONED_AFTER_MS {
                    if let Some(revision) = state
                        .idempotency
                        .take_over(&storage_key, revision, &fingerprint, &new.id)
                        .await?
                    {
                        claim = Claim::New { revision };
                        continue;
                    }
                } else if started.elapsed() > IN_PROGRESS_WAIT {
                    return Err(ApiError::IdempotencyInProgress);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                claim = match state
                    .idempotency
                    .inspect(&storage_key, &fingerprint)
                    .await?
                {
                    // The first request failed and released the key: claim it afresh.
                    Claim::InProgress { revision: 0, .. } => {
                        state
                            .idempotency
                            .claim(&storage_key, &fingerprint, &new.id)
                            .await?
                    }
                    other => other,
                };
            }
        }
    }
}

fn accepted(
    state: &AppState,
    task_id: &str,
    callback_url: Option<String>,
    replayed: bool,
) -> Response {
    let status_url = format!(
        "{}/v1/tasks/{task_id}",
        state.config.ingress.public_url.trim_end_matches('/')
    );
    let location = HeaderValue::from_str(&status_url).ok();
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            task_id: task_id.to_string(),
            status: "queued",
            status_url,
            callback_url,
        }),
    )
        .into_response();
    if let Some(location) = location {
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
