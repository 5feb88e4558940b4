//! API errors, mapped to HTTP once, here at the edge.
//!
//! Every error leaves as `{"error":{"code","message"}}` with the right status, so
//! clients can branch on `code` and show `message`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every error answer: `{"error":{"code","message"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`validation_failed`, `not_found`, …).
    #[schema(example = "validation_failed")]
    pub code: &'static str,
    /// What to fix, naming the field or header.
    pub message: String,
}

/// Everything the public API can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or unknown API key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The body is not valid JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// A header or path parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A control header is malformed or out of bounds; names the header.
    #[error("{header}: {message}")]
    InvalidHeader {
        /// The header, as clients spell it (`X-Retry-Count`).
        header: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A synchronous proxied call got no usable answer from its upstream.
    #[error("{message}")]
    Upstream {
        /// 502, or 504 when the last call timed out.
        status: u16,
        /// Which upstream and its last error.
        message: String,
    },
    /// The JSON is well-formed but a field is missing or wrong.
    #[error("{0}")]
    Validation(String),
    /// The body is larger than allowed.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body's `Content-Type` is missing or not one the endpoint takes.
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    /// No such resource (or not this tenant's).
    #[error("{0}")]
    NotFound(String),
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The resource is in a state that forbids the operation.
    #[error("{0}")]
    Conflict(String),
    /// The idempotency key was used with a different request.
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// An identical request with this key is still being processed.
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyInProgress,
    /// The API key used up its rate.
    #[error("rate limit of {limit} requests per second exceeded for this API key")]
    RateLimited {
        /// Until a request would be allowed again.
        retry_after: std::time::Duration,
        /// The key's limit per second.
        limit: u32,
    },
    /// NATS is unreachable or failed; nothing was accepted.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The stable code clients (and metrics) see.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidHeader { .. } => (StatusCode::BAD_REQUEST, "invalid_header"),
            ApiError::Upstream { status: 504, .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            }
            ApiError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::IdempotencyConflict => (StatusCode::CONFLICT, "idempotency_key_reused"),
            ApiError::IdempotencyInProgress => (StatusCode::CONFLICT, "idempotency_in_progress"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        match &self {
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after, limit } => {
                // Whole seconds, rounded up: a client waiting this long will succeed.
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let headers = response.headers_mut();
                for (name, value) in [
                    (header::RETRY_AFTER.as_str(), seconds.to_string()),
                    ("ratelimit-limit", limit.to_string()),
                    ("ratelimit-remaining", "0".to_string()),
                    ("ratelimit-reset", seconds.to_string()),
                ] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
            }
            ApiError::Unavailable(_) | ApiError::IdempotencyInProgress => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<tern_core::task_store::StoreError> for ApiError {
    fn from(e: tern_core::task_store::StoreError) -> Self {
        ApiError::Unavailable(format!("task store: {e}"))
    }
}

impl From<tern_core::task_request::InvalidTask> for ApiError {
    fn from(e: tern_core::task_request::InvalidTask) -> Self {
        ApiError::Validation(e.0)
    }
}

impl From<tern_core::accept::AcceptError> for ApiError {
    fn from(e: tern_core::accept::AcceptError) -> Self {
        match e {
            tern_core::accept::AcceptError::Exists(_) => {
                ApiError::Unavailable("task id collision; retry".into())
            }
            tern_core::accept::AcceptError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}
