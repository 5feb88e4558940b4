//! `/v1/queues`: per-queue policies (retries and dispatch limits).

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use serde_json::{Map, Value};
use tern_core::policy::{self, PolicyView, RetryOverrides};
use tern_core::queue_limits::{self, LimitOverrides, LimitsView};
use tern_core::task_view::rfc3339;
use tern_core::topology::{ensure_limited_consumer, is_subject_token, limited_consumer_name};
use tern_proto::v1::QueuePolicy;

use crate::auth::Authenticated;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

/// A queue as the API shows it.
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
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

/// `PUT /v1/queues/{name}`: replaces the queue's policy; absent fields take defaults
/// (no limits).
///
/// A limited queue's READY consumer is created or updated before the policy is
/// stored, so the scheduler never routes tasks to a subject nobody consumes. Removing
/// the limits keeps the consumer (tasks already routed to it still drain) but lifts
/// its cap.
pub async fn put(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(name): Path<String>,
    body: JsonBody<Map<String, Value>>,
) -> Result<Json<QueueView>, ApiError> {
    check_name(&name)?;
    let (overrides, limit_overrides) = split_policy(body.value)?;
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

/// A policy body is the retry settings plus the limit fields; each part refuses
/// fields it does not know.
fn split_policy(
    mut body: Map<String, Value>,
) -> Result<(RetryOverrides, LimitOverrides), ApiError> {
    let mut limits = Map::new();
    for field in LimitOverrides::FIELDS {
        if let Some(value) = body.remove(field) {
            limits.insert(field.to_string(), value);
        }
    }
    let retry = crate::body::from_value(Value::Object(body))?;
    let limits = crate::body::from_value(Value::Object(limits))?;
    Ok((retry, limits))
}

/// `GET /v1/queues/{name}`: the effective policy (defaults when never set).
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
