//! `POST /v1/callbacks/{callbackId}`: a provider's answer resolves its task, once.
//!
//! The callback id is the credential, so there is no API key. Resolution is a
//! compare-and-swap of the task record from `waiting` (or `processing`, when the
//! provider calls back before answering the dispatch) to `succeeded`: of any number of
//! concurrent calls with one id exactly one wins. The id is never logged; only a short
//! prefix of its hash is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tern_core::callbacks::{self, Callbacks};
use tern_core::config::ResolverConfig;
use tern_core::task_span::trace_id_of;
use tern_core::task_store::{Change, TaskStore, Updated};
use tern_core::task_view::{ResultView, rfc3339, status_name};
use tern_proto::v1::{CallbackRecord, TaskResult, TaskStatus};
use tracing::{Instrument, Span};

use crate::rate_limit::{RateLimiter, client_ip};

/// What the handler reaches.
pub struct Shared {
    /// Resolver settings.
    pub config: ResolverConfig,
    /// Task records.
    pub tasks: TaskStore,
    /// Pending callbacks.
    pub callbacks: Callbacks,
    /// Per-address limits.
    pub limiter: RateLimiter,
    /// JetStream, for completion notifications.
    pub js: async_nats::jetstream::Context,
}

/// Handler state.
pub type ResolverState = Arc<Shared>;

/// Every answer but a 200: `{"error": "<message>"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CallbackError {
    /// What went wrong, for the provider's logs.
    #[schema(example = "Invalid or expired callback ID")]
    pub error: String,
}

impl CallbackError {
    /// The answer `status` with `message`.
    pub fn response(status: StatusCode, message: impl Into<String>) -> Response {
        (
            status,
            Json(CallbackError {
                error: message.into(),
            }),
        )
            .into_response()
    }
}

/// A resolver error: `{"error": "<message>"}` with its status.
pub struct ResolveError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ResolveError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Invalid or expired callback ID")
    }

    fn unavailable(e: impl std::fmt::Display) -> Self {
        metrics::counter!("tern_callbacks_total", "result" => "error").increment(1);
        tracing::warn!(error = %e, "callback could not be resolved");
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service temporarily unavailable",
        );
        error.retry_after = Some(1);
        error
    }
}

impl IntoResponse for ResolveError {
    fn into_response(self) -> Response {
        let mut response = CallbackError::response(self.status, self.message);
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// The answer to a callback that resolved its task.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Resolved {
    /// The task, now finished.
    task: ResolvedTask,
}

/// The task as the resolver reports it.
#[derive(Serialize, utoipa::ToSchema)]
struct ResolvedTask {
    /// The task id.
    #[schema(example = "01934f5e-7a3b-7c9d-8e1f-2a3b4c5d6e7f")]
    id: String,
    /// Its status: `succeeded`.
    #[schema(example = "succeeded")]
    status: &'static str,
    /// The callback as the task's result: `statusCode` 200, the request's headers
    /// (credentials left out), its body as text, and the time since dispatch in ms.
    result: ResultView,
    /// When the task was created (RFC 3339).
    #[serde(rename = "createdAt")]
    #[schema(format = DateTime)]
    created_at: String,
    /// When the callback resolved it (RFC 3339).
    #[serde(rename = "completedAt")]
    #[schema(format = DateTime)]
    completed_at: String,
}

/// Request headers kept in the result: everything but credentials.
fn kept_headers(headers: &axum::http::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "authorization" | "cookie" | "proxy-authorization"
            )
        })
        .take(64)
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// `POST /v1/callbacks/{callbackId}`
#[utoipa::path(
    post,
    path = "/v1/callbacks/{id}",
    tag = "callbacks",
    summary = "Resolve an await-callback task with the provider's answer",
    description = "No credentials: the callback id (from `callback_url`) is one. The whole body becomes the task's result and the task `succeeded`; an id resolves its task once.",
    params(("id" = String, Path, description = "The callback id: 64 hex characters", min_length = 64, max_length = 64, pattern = "^[0-9A-Fa-f]{64}$")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "The provider's answer: any JSON"),
    responses(
        (status = 200, description = "The task is resolved", body = Resolved),
        (status = 400, description = "The body is not JSON", body = CallbackError),
        (status = 404, description = "Unknown, malformed, used or expired callback id", body = CallbackError),
        (status = 409, description = "The task is no longer waiting (it timed out or was cancelled)", body = CallbackError),
        (status = 413, description = "Body larger than `resolver.max_body_bytes`", body = CallbackError),
        (status = 429, description = "Over `resolver.rate_limit` calls per `resolver.rate_window` from this address", body = CallbackError, headers(
            ("Retry-After" = String, description = "Seconds until a call is allowed again"),
        )),
        (status = 503, description = "NATS did not answer; call again", body = CallbackError, headers(
            ("Retry-After" = String, description = "Seconds to wait"),
        )),
    ),
)]
pub async fn resolve(
    State(state): State<ResolverState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ResolveError> {
    let source = client_ip(peer.ip(), request.headers(), &state.config.trusted_proxies);
    if let Err(retry_after) = state.limiter.check(source, Instant::now()) {
        metrics::counter!("tern_callbacks_total", "result" => "rate_limited").increment(1);
        let mut error = ResolveError::new(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
        error.retry_after = Some(retry_after.as_secs().max(1));
        return Err(error);
    }
    // A segment that does not even decode is as unknown as a malformed id.
    let id = id.map(|Path(id)| id).unwrap_or_default();
    if !callbacks::is_well_formed(&id) {
        metrics::counter!("tern_callbacks_total", "result" => "invalid").increment(1);
        return Err(ResolveError::not_found());
    }
    let key = callbacks::key_of(&id);
    let headers = kept_headers(request.headers());
    let limit = state.config.max_body_bytes;
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            metrics::counter!("tern_callbacks_total", "result" => "invalid").increment(1);
            ResolveError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Callback body is larger than {limit} bytes"),
            )
        })?;
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        metrics::counter!("tern_callbacks_total", "result" => "invalid").increment(1);
        return Err(ResolveError::new(
            StatusCode::BAD_REQUEST,
            "Callback body must be valid JSON",
        ));
    }
    let Some(callback) = state
        .callbacks
        .lookup(&key)
        .await
        .map_err(ResolveError::unavailable)?
    else {
        metrics::counter!("tern_callbacks_total", "result" => "unknown").increment(1);
        return Err(ResolveError::not_found());
    };
    let span = tern_core::task_span::start(
        tern_core::task_span::Step::Resolve,
        &callback.task_id,
        &callback.traceparent,
    );
    resolve_task(&state, &key, callback, headers, &body)
        .instrument(span)
        .await
}

/// Resolves the task `callback` names with the provider's `body`, inside its span.
async fn resolve_task(
    state: &Shared,
    key: &str,
    callback: CallbackRecord,
    headers: BTreeMap<String, String>,
    body: &[u8],
) -> Result<Response, ResolveError> {
    let now = tern_core::now_ms();
    let body_text = String::from_utf8_lossy(body).into_owned();
    let updated = state
        .tasks
        .update(&callback.task_id, None, |r| {
            let waiting = r.status() == TaskStatus::Waiting
                || (r.status() == TaskStatus::Processing && r.awaits_callback);
            if !waiting || r.tenant_id != callback.tenant_id {
                return Change::Decline;
            }
            let dispatched = r
                .attempts
                .first()
                .map_or(r.created_at_ms, |a| a.started_at_ms);
            r.status = TaskStatus::Succeeded as i32;
            r.result = Some(TaskResult {
                status_code: 200,
                headers: headers.clone().into_iter().collect(),
                body: body_text.clone(),
                duration_ms: u64::try_from(now - dispatched).unwrap_or(0),
            });
            r.next_attempt_at_ms = 0;
            r.updated_at_ms = now;
            Change::Write
        })
        .await
        .map_err(ResolveError::unavailable)?;
    let record = match updated {
        Updated::Written(record, _) => record,
        Updated::Declined(record, _) => {
            metrics::counter!("tern_callbacks_total", "result" => "conflict").increment(1);
            tern_core::task_span::record_outcome(&Span::current(), "conflict", false);
            return Err(ResolveError::new(
                StatusCode::CONFLICT,
                format!(
                    "Task is not in waiting/polling state (current: {})",
                    status_name(record.status())
                ),
            ));
        }
        Updated::Missing => return Err(ResolveError::not_found()),
    };
    state.callbacks.finish(key, &record.id).await;
    tern_core::notify::announce(&state.js, &state.tasks, &record).await;
    metrics::counter!("tern_callbacks_total", "result" => "resolved").increment(1);
    tern_core::task_span::record_outcome(&Span::current(), "resolved", true);
    tracing::info!(
        task_id = %record.id,
        trace_id = trace_id_of(&callback.traceparent),
        callback = callbacks::log_tag(key),
        "task resolved by callback"
    );
    let result = record.result.as_ref().map(|r| ResultView {
        status_code: r.status_code,
        headers: r.headers.clone().into_iter().collect(),
        body: r.body.clone(),
        duration: r.duration_ms,
    });
    let Some(result) = result else {
        return Err(ResolveError::unavailable("resolved record lost its result"));
    };
    Ok((
        StatusCode::OK,
        Json(Resolved {
            task: ResolvedTask {
                id: record.id.clone(),
                status: status_name(record.status()),
                result,
                created_at: rfc3339(record.created_at_ms),
                completed_at: rfc3339(record.updated_at_ms),
            },
        }),
    )
        .into_response())
}
