//! `/v1/queues`: per-queue policies (retries and dispatch limits).

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use tern_core::duration::HumanDuration;
use tern_core::policy::{self, BackoffName, PolicyView, RetryOverrides};
use tern_core::queue_limits::{self, LimitOverrides, LimitsView, RateLimitSpec};
use tern_core::task_view::rfc3339;
use tern_core::topology::{ensure_limited_consumer, is_subject_token, limited_consumer_name};
use tern_proto::v1::QueuePolicy;

use crate::auth::Authenticated;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// A queue as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// False while the queue runs on the configured defaults.
    pub configured: bool,
    /// The effective retry policy.
    #[serde(flatten)]
    pub policy: PolicyView,
    /// Dispatch limits (`null` = unlimited).
    #[serde(flatten)]
    pub limits: LimitsView,
    /// When the policy was last set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// Body of `GET /v1/queues`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueList {
    /// The tenant's configured queues, by name.
    pub queues: Vec<QueueView>,
}

fn view(state: &AppState, name: &str, stored: Option<&QueuePolicy>) -> QueueView {
    let defaults = policy::defaults(&state.config.retry);
    let retry = stored.and_then(|p| p.retry.as_ref()).unwrap_or(&defaults);
    QueueView {
        name: name.to_string(),
        configured: stored.is_some(),
        policy: PolicyView::from(retry),
        limits: LimitsView::from(stored.and_then(|p| p.limits.as_ref())),
        updated_at: stored.map(|p| rfc3339(p.updated_at_ms)),
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    if is_subject_token(name) {
        Ok(())
    } else {
        Err(ApiError::Validation(
            "queue name must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
        ))
    }
}

/// Body of `PUT /v1/queues/{name}`: the retry settings plus the dispatch limits,
/// every field optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuePolicyRequest {
    /// Retries after the first attempt (0-100).
    #[serde(default)]
    #[schema(maximum = 100)]
    pub max_retries: Option<u32>,
    /// Backoff shape.
    #[serde(default)]
    pub backoff: Option<BackoffName>,
    /// First retry delay (up to 1d).
    #[serde(default)]
    pub initial_delay: Option<HumanDuration>,
    /// Cap of any single delay (up to 7d).
    #[serde(default)]
    pub max_delay: Option<HumanDuration>,
    /// Per-attempt timeout (100ms-1h).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Overall deadline (1s-365d).
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    /// Dispatches per second (0.001-10000), as a number or `{"per_second","burst"}`.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Deliveries in flight at once (1-10000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_concurrent: Option<u32>,
}

impl QueuePolicyRequest {
    /// The retry part and the limits part, each validated by its own rules.
    fn split(self) -> (RetryOverrides, LimitOverrides) {
        (
            RetryOverrides {
                max_retries: self.max_retries,
                backoff: self.backoff,
                initial_delay: self.initial_delay,
                max_delay: self.max_delay,
                timeout: self.timeout,
                max_age: self.max_age,
            },
            LimitOverrides {
                rate_limit: self.rate_limit,
                max_concurrent: self.max_concurrent,
            },
        )
    }
}

/// `PUT /v1/queues/{name}`: replaces the queue's policy; absent fields take defaults
/// (no limits).
///
/// A limited queue's READY consumer is created or updated before the policy is
/// stored, so the scheduler never routes tasks to a subject nobody consumes. Removing
/// the limits keeps the consumer (tasks already routed to it still drain) but lifts
/// its cap.
#[utoipa::path(
    put,
    path = "/v1/queues/{name}",
    tag = "queues",
    summary = "Set a queue's retry policy and dispatch limits",
    params(("name" = String, Path, description = "Queue name: 1-64 of `A-Z a-z 0-9 _ -`", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = QueuePolicyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The queue's effective policy", body = QueueView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body larger than `ingress.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A field (or the name) is invalid; the message names it", body = ErrorBody),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(name): Path<String>,
    body: JsonBody<QueuePolicyRequest>,
) -> Result<Json<QueueView>, ApiError> {
    check_name(&name)?;
    let (overrides, limit_overrides) = body.value.split();
    overrides
        .validate("")
        .map_err(|e| ApiError::Validation(e.to_string()))?;
    limit_overrides
        .validate()
        .map_err(|e| ApiError::Validation(e.to_string()))?;
    let mut retry = policy::defaults(&state.config.retry);
    overrides.apply(&mut retry);
    policy::validate_merged(&retry, "").map_err(|e| ApiError::Validation(e.to_string()))?;
    let limits = limit_overrides.to_limits();
    if limits.is_some() || consumer_exists(&state, &tenant.id, &name).await {
        ensure_limited_consumer(
            &state.js,
            &tenant.id,
            &name,
            queue_limits::max_ack_pending(limits.as_ref()),
            state.config.worker.ack_wait.get(),
        )
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    let stored = state.queues.put(&tenant.id, &name, retry, limits).await?;
    Ok(Json(view(&state, &name, Some(&stored))))
}

/// Whether a limited queue's consumer exists (its limits may have been lifted before).
async fn consumer_exists(state: &AppState, tenant_id: &str, queue: &str) -> bool {
    match state
        .js
        .get_stream_no_info(tern_core::topology::READY_STREAM)
        .await
    {
        Ok(stream) => stream
            .consumer_info(limited_consumer_name(tenant_id, queue))
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// `GET /v1/queues/{name}`: the effective policy (defaults when never set).
#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    tag = "queues",
    summary = "Read a queue's effective policy",
    params(("name" = String, Path, description = "Queue name: 1-64 of `A-Z a-z 0-9 _ -`", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The policy (`configured: false` while on defaults)", body = QueueView),
        (status = 422, description = "Not a queue name", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    check_name(&name)?;
    let stored = state.queues.policy(&tenant.id, &name);
    Ok(Json(view(&state, &name, stored.as_ref())))
}

/// `GET /v1/queues`: the tenant's configured queues.
#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "queues",
    summary = "List the tenant's configured queues",
    responses((status = 200, description = "The configured queues", body = QueueList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
) -> Result<Json<QueueList>, ApiError> {
    let queues = state
        .queues
        .list(&tenant.id)
        .await?
        .iter()
        .map(|(name, policy)| view(&state, name, Some(policy)))
        .collect();
    Ok(Json(QueueList { queues }))
}
