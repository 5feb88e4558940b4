//! `/v1/queues`: per-queue retry policies.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use tern_core::policy::{self, PolicyView, RetryOverrides};
use tern_core::task_view::rfc3339;
use tern_core::topology::is_subject_token;
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

/// `PUT /v1/queues/{name}`: replaces the queue's policy; absent fields take defaults.
pub async fn put(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(name): Path<String>,
    body: JsonBody<RetryOverrides>,
) -> Result<Json<QueueView>, ApiError> {
    check_name(&name)?;
    let overrides = body.value;
    overrides
        .validate("")
        .map_err(|e| ApiError::Validation(e.to_string()))?;
    let mut retry = policy::defaults(&state.config.retry);
    overrides.apply(&mut retry);
    policy::validate_merged(&retry, "").map_err(|e| ApiError::Validation(e.to_string()))?;
    let stored = state.queues.put(&tenant.id, &name, retry).await?;
    Ok(Json(view(&state, &name, Some(&stored))))
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
