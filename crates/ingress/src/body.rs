//! The JSON body extractor of the public API.
//!
//! axum's own `Json` answers plain-text errors; this one checks, in order, the
//! content type (415), the size (413), the syntax (400) and the shape (422), and
//! answers each with the API's JSON error. It also hands back the raw bytes, which
//! idempotency fingerprints.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body, parsed into `T`, with its raw bytes.
pub struct JsonBody<T> {
    /// The parsed body.
    pub value: T,
    /// The bytes as received.
    pub raw: Bytes,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read(req, state.config.ingress.max_body_bytes).await
    }
}

/// A JSON body for routers without the public state (the admin API), capped at 64 KiB.
pub struct AnyJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AnyJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        read(req, 64 * 1024)
            .await
            .map(|body: JsonBody<T>| AnyJson(body.value))
    }
}

async fn read<T: DeserializeOwned>(req: Request, limit: usize) -> Result<JsonBody<T>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !tern_core::media_type::is_json(content_type) {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json",
        ));
    }
    let raw = raw(req.into_body(), limit).await?;
    let value = parse(&raw, "")?;
    Ok(JsonBody { value, raw })
}

/// Parses `raw` as `T`; errors name the field's path under `prefix` (`"task."` for a
/// body nested in another), as `retry.max_retries: …`.
pub fn parse<T: DeserializeOwned>(raw: &[u8], prefix: &str) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| shape_error(e, prefix))?;
    deserializer
        .end()
        .map_err(|e| ApiError::InvalidJson(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// The path tells the client which field is wrong ("retry.max_retries: …").
fn shape_error(e: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data if path == "." && prefix.is_empty() => {
            ApiError::Validation(inner.to_string())
        }
        serde_json::error::Category::Data if path == "." => {
            ApiError::Validation(format!("{}: {inner}", prefix.trim_end_matches('.')))
        }
        serde_json::error::Category::Data => {
            ApiError::Validation(format!("{prefix}{path}: {inner}"))
        }
        _ => ApiError::InvalidJson(format!("request body is not valid JSON: {inner}")),
    }
}

/// Reads a body of any type up to `limit` bytes (413 above it).
pub async fn raw(body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("could not read request body: {e}"))
        }
    })
}

/// True when reading stopped at the size limit (rather than a broken connection).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.to_string().contains("length limit exceeded") {
            return true;
        }
        source = err.source();
    }
    false
}
