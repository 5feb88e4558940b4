//! The admin API, on its own listener with its own token: the dead-letter queue and
//! disabled endpoints. It is never mounted on the public port.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;
use tern_core::config::Secret;
use tern_core::dlq::{DeadLetters, DlqError, Filter};
use tern_core::endpoints::Endpoints;
use tern_core::task_view::{TaskView, rfc3339};
use tern_proto::v1::DeadLetter;
use tern_proto::v1::task::Work;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};

/// What admin handlers reach.
pub struct AdminShared {
    /// Dead letters.
    pub dlq: DeadLetters,
    /// Disabled endpoints.
    pub endpoints: Endpoints,
    /// The admin bearer token; none disables the admin API.
    pub token: Option<Secret<String>>,
    /// Bulk re-drive rate (tasks per second).
    pub redrive_rate: u32,
}

/// Admin handler state.
pub type AdminState = Arc<AdminShared>;

/// Every route of the admin API, with its documentation: the router and the OpenAPI
/// document are both built from this one table.
pub fn api() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(crate::openapi::AdminDoc::openapi())
        .routes(routes!(list))
        .routes(routes!(redrive_bulk))
        .routes(routes!(show, purge))
        .routes(routes!(redrive_one))
        .routes(routes!(enable_endpoint))
        .routes(routes!(crate::openapi::admin_document))
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    api()
        .split_for_parts()
        .0
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Proof that the request carries the admin token.
struct Admin;

impl FromRequestParts<AdminState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, ApiError> {
        let Some(expected) = &state.token else {
            return Err(ApiError::Unauthorized(
                "the admin API is disabled: set ingress.admin_token",
            ));
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(ApiError::Unauthorized(
                "missing Authorization header; send Authorization: Bearer <admin token>",
            ))?;
        if bool::from(
            presented
                .trim()
                .as_bytes()
                .ct_eq(expected.expose().as_bytes()),
        ) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("wrong admin token"))
        }
    }
}

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        match e {
            DlqError::NotFound(_) => ApiError::NotFound(e.to_string()),
            DlqError::NotDead(..) => ApiError::Conflict(e.to_string()),
            DlqError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// A dead letter as the admin API shows it.
#[derive(Serialize, utoipa::ToSchema)]
struct DeadLetterView {
    task_id: String,
    tenant_id: String,
    queue: String,
    dead_at: String,
    reason: String,
    /// The task record when it died (`null` if it was missing).
    task: Option<TaskView>,
    /// The JSON it delivers (shown by `GET /admin/v1/dlq/{task_id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    /// A body that is not a JSON payload (a raw-body task's), base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    /// The content type of `body_base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
}

/// What a dead letter delivers: a JSON payload, or bytes with their content type.
enum Body<'a> {
    Json(&'a [u8]),
    Raw(&'a [u8], &'a str),
}

fn body_of(work: Option<&Work>) -> Option<Body<'_>> {
    match work {
        Some(Work::Webhook(w)) if w.content_type.is_empty() => Some(Body::Json(&w.payload_json)),
        Some(Work::Webhook(w)) => Some(Body::Raw(&w.raw_body, &w.content_type)),
        Some(Work::Notify(n)) => Some(Body::Json(&n.event_json)),
        // A callback carries the failure payload or the upstream's answer; the
        // proxied request itself never dies.
        Some(Work::ProxyCallback(c)) if tern_core::media_type::is_json(&c.content_type) => {
            Some(Body::Json(&c.body))
        }
        Some(Work::ProxyCallback(c)) => Some(Body::Raw(&c.body, &c.content_type)),
        Some(Work::Proxy(_)) | None => None,
    }
}

fn view(letter: &DeadLetter, with_payload: bool) -> DeadLetterView {
    let task = letter.task.clone().unwrap_or_default();
    let (mut payload, mut body_base64, mut content_type) = (None, None, None);
    let body = if with_payload {
        body_of(task.work.as_ref())
    } else {
        None
    };
    match body {
        Some(Body::Json(bytes)) => {
            payload = String::from_utf8(bytes.to_vec())
                .ok()
                .and_then(|text| RawValue::from_string(text).ok());
        }
        Some(Body::Raw(bytes, kind)) => {
            body_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            content_type = Some(kind.to_string());
        }
        None => {}
    }
    DeadLetterView {
        task_id: task.id.clone(),
        tenant_id: task.tenant_id.clone(),
        queue: task.queue.clone(),
        dead_at: rfc3339(letter.dead_at_ms),
        reason: letter.reason.clone(),
        task: letter.record.as_ref().map(TaskView::from),
        payload,
        body_base64,
        content_type,
    }
}

fn parse_time(field: &str, value: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::BadRequest(format!("{field} must be an RFC 3339 time")))
}

fn filter_from(
    tenant: Option<String>,
    queue: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Filter, ApiError> {
    Ok(Filter {
        tenant_id: tenant,
        queue,
        since_ms: since.map(|s| parse_time("since", s)).transpose()?,
        until_ms: until.map(|u| parse_time("until", u)).transpose()?,
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct ListResponse {
    /// Newest first.
    dead_letters: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// Query of `GET /admin/v1/dlq`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this tenant's dead letters.
    tenant: Option<String>,
    /// Only this queue's.
    queue: Option<String>,
    /// Only those that died at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only those that died before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page size, 1-1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /admin/v1/dlq?tenant=&queue=&since=&until=&limit=&cursor=`, newest first.
#[utoipa::path(
    get,
    path = "/admin/v1/dlq",
    tag = "dlq",
    summary = "List dead letters, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = ListResponse),
        (status = 400, description = "An unknown or malformed query parameter", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<AdminState>,
    _: Admin,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    let Query(params) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "query string: {}; use tenant, queue, since, until, limit, cursor",
            e.body_text()
        ))
    })?;
    let limit = match &params.limit {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::BadRequest("limit must be 1-1000".into()))?,
    };
    let cursor = params
        .cursor
        .map(|c| c.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::BadRequest("cursor is not one this API returned".into()))?;
    let filter = filter_from(
        params.tenant,
        params.queue,
        params.since.as_deref(),
        params.until.as_deref(),
    )?;
    let page = state.dlq.list(&filter, cursor, limit).await?;
    Ok(Json(ListResponse {
        dead_letters: page.letters.iter().map(|l| view(l, false)).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

/// `GET /admin/v1/dlq/{task_id}`: the dead letter with its history and payload.
#[utoipa::path(
    get,
    path = "/admin/v1/dlq/{task_id}",
    tag = "dlq",
    summary = "Show a dead letter with its history and body",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        (status = 404, description = "No dead letter for this task", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<AdminState>,
    _: Admin,
    Path(task_id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    check_task_id(&task_id)?;
    let letter = state.dlq.get(&task_id).await?;
    Ok(Json(view(&letter, true)))
}

fn check_task_id(task_id: &str) -> Result<(), ApiError> {
    uuid::Uuid::try_parse(task_id)
        .map(|_| ())
        .map_err(|_| ApiError::NotFound(format!("no dead letter for task {task_id:?}")))
}

#[derive(Serialize, utoipa::ToSchema)]
struct TaskState {
    task_id: String,
    #[schema(value_type = String)]
    status: &'static str,
}

/// `POST /admin/v1/dlq/{task_id}/redrive`
#[utoipa::path(
    post,
    path = "/admin/v1/dlq/{task_id}/redrive",
    tag = "dlq",
    summary = "Re-drive one dead letter (a fresh retry budget, history kept)",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task is queued again", body = TaskState),
        (status = 404, description = "No dead letter for this task", body = ErrorBody),
        (status = 409, description = "The task is not dead", body = ErrorBody),
    ),
)]
async fn redrive_one(
    State(state): State<AdminState>,
    _: Admin,
    Path(task_id): Path<String>,
) -> Result<Json<TaskState>, ApiError> {
    check_task_id(&task_id)?;
    state.dlq.redrive(&task_id).await?;
    Ok(Json(TaskState {
        task_id,
        status: "queued",
    }))
}

/// `DELETE /admin/v1/dlq/{task_id}`
#[utoipa::path(
    delete,
    path = "/admin/v1/dlq/{task_id}",
    tag = "dlq",
    summary = "Purge a dead letter (the task stays dead)",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Purged", body = TaskState),
        (status = 404, description = "No dead letter for this task", body = ErrorBody),
        (status = 409, description = "The task is not dead", body = ErrorBody),
    ),
)]
async fn purge(
    State(state): State<AdminState>,
    _: Admin,
    Path(task_id): Path<String>,
) -> Result<Json<TaskState>, ApiError> {
    check_task_id(&task_id)?;
    state.dlq.purge(&task_id).await?;
    Ok(Json(TaskState {
        task_id,
        status: "dead",
    }))
}

/// Body of the bulk re-drive: every filter is optional.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkRedrive {
    tenant_id: Option<String>,
    queue: Option<String>,
    #[schema(format = DateTime)]
    since: Option<String>,
    #[schema(format = DateTime)]
    until: Option<String>,
    /// Most tasks to re-drive, 1-10000 (default 1000).
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct BulkResult {
    matched: usize,
    redriven: usize,
    failed: usize,
}

/// `POST /admin/v1/dlq/redrive`: re-drives every match (up to `limit`) at a bounded rate.
#[utoipa::path(
    post,
    path = "/admin/v1/dlq/redrive",
    tag = "dlq",
    summary = "Re-drive every matching dead letter at `ingress.redrive_rate`",
    request_body(content = BulkRedrive, content_type = "application/json"),
    responses(
        (status = 200, description = "What was re-driven", body = BulkResult),
        (status = 400, description = "Malformed JSON or time", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    ),
)]
async fn redrive_bulk(
    State(state): State<AdminState>,
    _: Admin,
    body: crate::body::AnyJson<BulkRedrive>,
) -> Result<Json<BulkResult>, ApiError> {
    let request = body.0;
    let limit = request.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::Validation("limit must be 1-10000".into()));
    }
    let filter = filter_from(
        request.tenant_id,
        request.queue,
        request.since.as_deref(),
        request.until.as_deref(),
    )?;
    let mut matched = Vec::new();
    let mut cursor = None;
    loop {
        let page = state
            .dlq
            .list(&filter, cursor, limit - matched.len())
            .await?;
        matched.extend(
            page.letters
                .into_iter()
                .filter_map(|l| l.task.map(|t| t.id)),
        );
        match page.next_cursor {
            Some(next) if matched.len() < limit => cursor = Some(next),
            _ => break,
        }
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / state.redrive_rate.max(1));
    let (mut redriven, mut failed) = (0, 0);
    for task_id in &matched {
        ticker.tick().await;
        match state.dlq.redrive(task_id).await {
            Ok(()) => redriven += 1,
            Err(e) => {
                tracing::warn!(task_id, error = %e, "bulk re-drive skipped a task");
                failed += 1;
            }
        }
    }
    Ok(Json(BulkResult {
        matched: matched.len(),
        redriven,
        failed,
    }))
}

/// Body of `POST /admin/v1/endpoints/enable`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EnableEndpoint {
    tenant_id: String,
    url: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Enabled {
    tenant_id: String,
    url: String,
    enabled: bool,
}

/// `POST /admin/v1/endpoints/enable`: lets deliveries to a 410'd endpoint resume.
#[utoipa::path(
    post,
    path = "/admin/v1/endpoints/enable",
    tag = "endpoints",
    summary = "Re-enable an endpoint disabled by a 410 Gone",
    request_body(content = EnableEndpoint, content_type = "application/json"),
    responses(
        (status = 200, description = "Deliveries to it resume", body = Enabled),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "The endpoint is not disabled", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
    ),
)]
async fn enable_endpoint(
    State(state): State<AdminState>,
    _: Admin,
    body: crate::body::AnyJson<EnableEndpoint>,
) -> Result<Json<Enabled>, ApiError> {
    let request = body.0;
    let existed = state
        .endpoints
        .enable(&request.tenant_id, &request.url)
        .await?;
    if !existed {
        return Err(ApiError::NotFound(format!(
            "endpoint {} of tenant {} is not disabled",
            request.url, request.tenant_id
        )));
    }
    Ok(Json(Enabled {
        tenant_id: request.tenant_id,
        url: request.url,
        enabled: true,
    }))
}
