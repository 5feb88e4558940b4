//! Bearer API key authentication: the key's SHA-256 identifies the tenant.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use tern_core::tenants::Tenant;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated tenant of a request.
pub struct Authenticated(pub Arc<Tenant>);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "missing Authorization header; send Authorization: Bearer <api key>",
            ))?;
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, key) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized(
                "Authorization header must be: Bearer <api key>",
            ))?;
        let (digest, tenant) = state
            .tenants
            .lookup(key)
            .ok_or(ApiError::Unauthorized("unknown API key"))?;
        state
            .limits
            .take(digest, tenant.tier, std::time::Instant::now())
            .map_err(|limited| ApiError::RateLimited {
                retry_after: limited.retry_after,
                limit: limited.limit,
            })?;
        Ok(Authenticated(tenant.clone()))
    }
}
