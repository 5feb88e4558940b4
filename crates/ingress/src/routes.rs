//! `/v1/routes/{key}`: named cascades of upstreams for proxied calls (`X-Route-Key`).
//!
//! A route is an ordered list of targets, each with its own URL, headers (provider
//! credentials), timeout and retries. Routes live in the `tern_routes` bucket under
//! `<tenant>.<key>`; target headers are sealed before they are stored and only their
//! names are ever shown.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_core::duration::HumanDuration;
use tern_core::policy;
use tern_core::task_view::rfc3339;
use tern_core::topology::is_subject_token;
use tern_proto::Message;
use tern_proto::v1::{ProxyTarget, Route, RouteHeaderNames};

use crate::auth::Authenticated;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Most targets a route may have.
pub const MAX_TARGETS: usize = 10;
/// Most extra calls of one target within a round.
pub const MAX_TARGET_RETRIES: u32 = 10;
/// Most headers one target may set.
const MAX_TARGET_HEADERS: usize = 32;
/// Longest header value a target may set.
const MAX_HEADER_VALUE: usize = 8 * 1024;

/// Body of `PUT /v1/routes/{key}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// Tried in this order in every attempt round (1-10).
    #[schema(min_items = 1, max_items = 10)]
    pub targets: Vec<TargetRequest>,
}

/// One target of a route.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetRequest {
    /// Upstream URL.
    #[schema(format = "uri")]
    pub url: String,
    /// Headers sent to this target (provider credentials); stored sealed.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-call timeout of this target (default: the call's `X-Proxy-Timeout`).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Extra calls of this target before the cascade moves on (0-10).
    #[serde(default)]
    #[schema(maximum = 10)]
    pub retries: u32,
}

/// A route as the API shows it: header values never leave Tern.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    /// The route key.
    pub key: String,
    /// Targets in cascade order.
    pub targets: Vec<TargetView>,
    /// When it was last set.
    pub updated_at: String,
}

/// A target as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TargetView {
    /// Upstream URL.
    pub url: String,
    /// Names of the headers it sets (values are stored sealed and never returned).
    pub header_names: Vec<String>,
    /// Its timeout, when it has its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Extra calls within a round.
    pub retries: u32,
}

fn kv_key(tenant_id: &str, key: &str) -> String {
    format!("{tenant_id}.{key}")
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if is_subject_token(key) {
        Ok(())
    } else {
        Err(ApiError::Validation(
            "route key must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
        ))
    }
}

fn view(key: &str, route: &Route) -> RouteView {
    RouteView {
        key: key.to_string(),
        targets: route
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| TargetView {
                url: t.url.clone(),
                header_names: route
                    .header_names
                    .get(i)
                    .map(|n| n.names.clone())
                    .unwrap_or_default(),
                timeout: (t.timeout_ms > 0)
                    .then(|| HumanDuration(Duration::from_millis(t.timeout_ms))),
                retries: t.retries,
            })
            .collect(),
        updated_at: rfc3339(route.updated_at_ms),
    }
}

/// Validates one target's headers into a header map, naming the offending one.
fn target_headers(prefix: &str, headers: &BTreeMap<String, String>) -> Result<HeaderMap, ApiError> {
    if headers.len() > MAX_TARGET_HEADERS {
        return Err(ApiError::Validation(format!(
            "{prefix}headers: at most {MAX_TARGET_HEADERS} headers"
        )));
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let field = format!("{prefix}headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::Validation(format!("{field}: not a valid header name")))?;
        if tern_core::proxy::is_reserved(header.as_str()) {
            return Err(ApiError::Validation(format!(
                "{field}: a hop-by-hop or Tern control header cannot be set on a target"
            )));
        }
        if value.len() > MAX_HEADER_VALUE {
            return Err(ApiError::Validation(format!(
                "{field}: value longer than {MAX_HEADER_VALUE} bytes"
            )));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| ApiError::Validation(format!("{field}: not a valid header value")))?;
        map.insert(header, value);
    }
    Ok(map)
}

/// `PUT /v1/routes/{key}`: creates or replaces a route.
#[utoipa::path(
    put,
    path = "/v1/routes/{key}",
    tag = "routes",
    summary = "Create or replace a route",
    params(("key" = String, Path, description = "Route key: 1-64 of `A-Z a-z 0-9 _ -`", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = RouteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The route (header names only)", body = RouteView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body larger than `ingress.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A field (or the key) is invalid; the message names it", body = ErrorBody),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(key): Path<String>,
    body: JsonBody<RouteRequest>,
) -> Result<Json<RouteView>, ApiError> {
    check_key(&key)?;
    let request = body.value;
    if request.targets.is_empty() || request.targets.len() > MAX_TARGETS {
        return Err(ApiError::Validation(format!(
            "targets: give 1 to {MAX_TARGETS} targets"
        )));
    }
    let mut route = Route {
        updated_at_ms: tern_core::now_ms(),
        ..Default::default()
    };
    for (i, target) in request.targets.iter().enumerate() {
        let prefix = format!("targets[{i}].");
        state
            .rules
            .guard
            .validate_url(&target.url, state.config.ingress.max_url_len)
            .map_err(|e| ApiError::Validation(format!("{prefix}url: {e}")))?;
        if let Some(timeout) = target.timeout {
            let (low, high) = policy::TIMEOUT;
            if timeout.get() < low || timeout.get() > high {
                return Err(ApiError::Validation(format!(
                    "{prefix}timeout: must be between {} and {}",
                    HumanDuration(low),
                    HumanDuration(high)
                )));
            }
        }
        if target.retries > MAX_TARGET_RETRIES {
            return Err(ApiError::Validation(format!(
                "{prefix}retries: must be between 0 and {MAX_TARGET_RETRIES}"
            )));
        }
        let headers = target_headers(&prefix, &target.headers)?;
        let sealed_headers = if headers.is_empty() {
            Bytes::new()
        } else {
            let sealer = state.sealer.as_ref().ok_or_else(crate::proxy::no_key)?;
            tern_core::proxy::seal_headers(sealer, &tenant.id, &headers).into()
        };
        route.targets.push(ProxyTarget {
            url: target.url.clone(),
            sealed_headers,
            timeout_ms: target.timeout.map_or(0, |t| t.get().as_millis() as u64),
            retries: target.retries,
        });
        route.header_names.push(RouteHeaderNames {
            names: headers.keys().map(|n| n.as_str().to_string()).collect(),
        });
    }
    state
        .routes
        .put(kv_key(&tenant.id, &key), route.encode_to_vec().into())
        .await
        .map_err(|e| ApiError::Unavailable(format!("route store: {e}")))?;
    Ok(Json(view(&key, &route)))
}

/// The tenant's route `key`, if it exists.
pub async fn load(state: &AppState, tenant_id: &str, key: &str) -> Result<Option<Route>, ApiError> {
    let entry = state
        .routes
        .get(kv_key(tenant_id, key))
        .await
        .map_err(|e| ApiError::Unavailable(format!("route store: {e}")))?;
    entry
        .map(|bytes| {
            Route::decode(bytes)
                .map_err(|e| ApiError::Unavailable(format!("route {key} is corrupt: {e}")))
        })
        .transpose()
}

/// `GET /v1/routes/{key}`: the route, without header values.
#[utoipa::path(
    get,
    path = "/v1/routes/{key}",
    tag = "routes",
    summary = "Read a route (header names only)",
    params(("key" = String, Path, description = "Route key: 1-64 of `A-Z a-z 0-9 _ -`", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The route", body = RouteView),
        (status = 404, description = "No such route", body = ErrorBody),
        (status = 422, description = "Not a route key", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(key): Path<String>,
) -> Result<Json<RouteView>, ApiError> {
    check_key(&key)?;
    match load(&state, &tenant.id, &key).await? {
        Some(route) => Ok(Json(view(&key, &route))),
        None => Err(ApiError::NotFound(format!("no route {key:?}"))),
    }
}

/// `DELETE /v1/routes/{key}`: removes the route (calls already accepted keep the
/// targets they were accepted with).
#[utoipa::path(
    delete,
    path = "/v1/routes/{key}",
    tag = "routes",
    summary = "Delete a route",
    params(("key" = String, Path, description = "Route key: 1-64 of `A-Z a-z 0-9 _ -`", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such route", body = ErrorBody),
        (status = 422, description = "Not a route key", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(tenant): Authenticated,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_key(&key)?;
    if load(&state, &tenant.id, &key).await?.is_none() {
        return Err(ApiError::NotFound(format!("no route {key:?}")));
    }
    state
        .routes
        .purge(kv_key(&tenant.id, &key))
        .await
        .map_err(|e| ApiError::Unavailable(format!("route store: {e}")))?;
    Ok(StatusCode::NO_CONTENT)
}
