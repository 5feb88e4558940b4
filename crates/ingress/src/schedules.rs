//! `/v1/schedules`: recurring schedules that create a task at every cron slot.
//!
//! The ingress only validates and stores schedules; scheduler replicas fire them
//! (see `tern_scheduler::cron`). A schedule's `task` is the body of `POST /v1/tasks`
//! and is validated by the same function, so it is refused here for whatever would
//! refuse the task.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tern_core::schedules::{CronSpec, DEFAULT_TIMEZONE, SpecError, next_run};
use tern_core::task_request::TaskRequest;
use tern_core::task_view::rfc3339;
use tern_proto::v1::ScheduleRecord;

use crate::auth::Authenticated;
use crate::body::{self, JsonBody};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Longest accepted cron expression (anything longer is not a cron expression).
const MAX_CRON_LEN: usize = 256;

/// Body of `POST /v1/schedules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateScheduleRequest {
    /// Cron expression: 5 fields, or 6 with leading seconds.
    #[schema(max_length = 256, example = "*/5 * * * *")]
    pub cron: String,
    /// IANA time zone the expression is read in (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// The task to create at every slot: a `POST /v1/tasks` body (no `not_before`).
    #[schema(value_type = TaskRequest)]
    pub task: Box<RawValue>,
}

/// A schedule as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    /// Schedule id (UUIDv7).
    pub schedule_id: String,
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// The task body, as given.
    #[schema(value_type = Object)]
    pub task: Box<RawValue>,
    /// When the schedule was created.
    pub created_at: String,
    /// When it fires next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<String>,
    /// The slot it last fired for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<String>,
    /// The task it last created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_task_id: Option<String>,
    /// Why the last slot created no task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Body of `GET /v1/schedules`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    /// The tenant's schedules, oldest first.
    pub schedules: Vec<ScheduleView>,
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::Validation(e.to_string())
    }
}

fn view(record: &ScheduleRecord) -> ScheduleView {
    let now = tern_core::now_ms();
    let next = CronSpec::parse(&record.cron, &record.timezone)
        .ok()
        .and_then(|spec| next_run(&spec, record, now));
    let task = String::from_utf8(record.task_json.to_vec())
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .unwrap_or_else(|| RawValue::NULL.to_owned());
    ScheduleView {
        schedule_id: record.id.clone(),
        cron: record.cron.clone(),
        timezone: record.timezone.clone(),
        task,
        created_at: rfc3339(record.created_at_ms),
        next_run_at: next.map(rfc3339),
        last_run_at: (record.fired_slot_ms != 0).then(|| rfc3339(record.fired_slot_ms)),
        last_task_id: (!record.last_task_id.is_empty()).then(|| record.last_task_id.clone()),
        last_error: (!record.last_error.is_empty()).then(|| record.last_error.clone()),
    }
}

/// Only schedule ids reach the bucket: anything else is unknown (and could not be a
/// key segment anyway).
fn check_id(id: &str) -> Result<(), ApiError> {
    uuid::Uuid::try_parse(id)
        .map(|_| ())
        .map_err(|_| ApiError::NotFound(format!("no schedule {id:?}")))
}

/// `POST /v1/schedules`: validates everything, then stores the schedule.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    tag = "schedules",
    summary = "Create a recurring schedule",
    request_body(content = CreateScheduleRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The schedule", body = ScheduleView, headers(("Location" = String, description = "The schedule's URL"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body larger than `ingress.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid; the message names it", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    body: JsonBody<CreateScheduleRequest>,
) -> Result<Response, ApiError> {
    let request = body.value;
    if request.cron.len() > MAX_CRON_LEN {
        return Err(ApiError::Validation(format!(
            "cron: must be at most {MAX_CRON_LEN} characters"
        )));
    }
    let timezone = request
        .timezone
        .unwrap_or_else(|| DEFAULT_TIMEZONE.to_string());
    CronSpec::parse(&request.cron, &timezone)?;
    let task: TaskRequest = body::parse(request.task.get().as_bytes(), "task.")?;
    if task.not_before.is_some() {
        return Err(ApiError::Validation(
            "task.not_before: a schedule's tasks run at its slots; use task.delay to run them later"
                .into(),
        ));
    }
    let now = tern_core::now_ms();
    let queue = state.queues.policy(&tenant.id, &task.queue);
    task.validate(&state.rules, queue, String::new(), now, "task.")?;

    let record = ScheduleRecord {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id.clone(),
        cron: request.cron,
        timezone,
        task_json: request.task.get().as_bytes().to_vec().into(),
        created_at_ms: now,
        ..Default::default()
    };
    state.schedules.create(&record).await?;
    let location = format!(
        "{}/v1/schedules/{}",
        state.config.ingress.public_url.trim_end_matches('/'),
        record.id
    );
    let mut response = (StatusCode::CREATED, Json(view(&record))).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/schedules/{id}`
#[utoipa::path(
    get,
    path = "/v1/schedules/{id}",
    tag = "schedules",
    summary = "Read a schedule",
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    check_id(&id)?;
    match state.schedules.get(&tenant.id, &id).await? {
        Some(record) => Ok(Json(view(&record))),
        None => Err(ApiError::NotFound(format!("no schedule {id:?}"))),
    }
}

/// `DELETE /v1/schedules/{id}`: no slot fires after the answer; the answer is the
/// schedule as it was.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{id}",
    tag = "schedules",
    summary = "Delete a schedule; it fires no more",
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule as it was", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    check_id(&id)?;
    match state.schedules.delete(&tenant.id, &id).await? {
        Some(record) => Ok(Json(view(&record))),
        None => Err(ApiError::NotFound(format!("no schedule {id:?}"))),
    }
}

/// `GET /v1/schedules`: the tenant's schedules.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "schedules",
    summary = "List the tenant's schedules, oldest first",
    responses((status = 200, description = "The schedules", body = ScheduleList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = state
        .schedules
        .list(&tenant.id)
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(ScheduleList { schedules }))
}
