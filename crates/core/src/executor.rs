//! Performs one HTTP call: optionally sign, send with a timeout, read a bounded
//! response.
//!
//! Shared by the delivery worker (every kind of task) and the ingress (synchronous
//! proxied calls), so both make calls, classify failures and bound bodies alike.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::signing::Signer;
use crate::url_guard::{FailureKind, UrlGuard, classify};

/// How much of a response body is kept on the attempt record.
pub const EXCERPT_BYTES: usize = 4096;

/// Most response headers kept from one response.
const MAX_RESPONSE_HEADERS: usize = 64;

/// One outbound HTTP request.
#[derive(Clone)]
pub struct HttpRequest {
    /// Method.
    pub method: Method,
    /// Target URL.
    pub url: String,
    /// Headers to send (besides the signature, when signed).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Timeout of the whole call (connect, send, response body).
    pub timeout: Duration,
    /// How much of the response body to keep: the excerpt for deliveries, the
    /// whole body (up to this) for proxied calls, whose body is the result.
    pub keep_body: BodyLimit,
}

// Header values can hold credentials (a proxied call's Authorization), so the
// request is never printed with them.
impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How much of a response body a request keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLimit {
    /// The first [`EXCERPT_BYTES`]; the rest is read (up to the executor's limit) and
    /// dropped.
    Excerpt,
    /// The whole body; a larger one fails the call.
    Whole(usize),
}

/// Signs a request the Standard Webhooks way.
pub struct Signing<'a> {
    /// The tenant's signer.
    pub signer: &'a Signer,
    /// `webhook-id`: the same on every attempt, so receivers can deduplicate.
    pub message_id: &'a str,
}

/// What one call produced.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// Wall-clock start, ms since the epoch.
    pub started_at_ms: i64,
    /// How long it took.
    pub duration: Duration,
    /// Response or failure.
    pub result: AttemptResult,
}

/// A response, or why there was none.
#[derive(Debug, Clone)]
pub enum AttemptResult {
    /// The receiver answered.
    Response {
        /// HTTP status.
        status: u16,
        /// Response headers (at most 64).
        headers: HeaderMap,
        /// The body as far as the request's [`BodyLimit`] keeps it.
        body: Bytes,
    },
    /// Not attempted: the endpoint was disabled after a 410.
    Disabled {
        /// Why, for the attempt record.
        message: String,
    },
    /// No response.
    Failed {
        /// Timeout, connect, dns, tls, refused-by-guard, other.
        kind: FailureKind,
        /// Human description (no secrets: URLs carry none of ours).
        message: String,
    },
}

impl AttemptOutcome {
    /// The HTTP status, when a response came back.
    pub fn status(&self) -> Option<u16> {
        match &self.result {
            AttemptResult::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a 2xx response.
    pub fn succeeded(&self) -> bool {
        self.status().is_some_and(|s| (200..300).contains(&s))
    }

    /// An outcome without a call (refused before sending).
    pub fn refused(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            started_at_ms: crate::now_ms(),
            duration: Duration::ZERO,
            result: AttemptResult::Failed {
                kind,
                message: message.into(),
            },
        }
    }
}

/// The first [`EXCERPT_BYTES`] of a body, lossily decoded, for attempt records.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]).into_owned()
}

/// Sends requests through the guarded client.
#[derive(Clone)]
pub struct Executor {
    client: reqwest::Client,
    guard: UrlGuard,
    max_response_bytes: usize,
}

impl Executor {
    /// An executor over a client whose resolver applies `guard` to DNS answers;
    /// `max_response_bytes` bounds how much of an excerpt-only body is read.
    pub fn new(client: reqwest::Client, guard: UrlGuard, max_response_bytes: usize) -> Self {
        Self {
            client,
            guard,
            max_response_bytes,
        }
    }

    /// Performs `request` once, signed when `signing` is given.
    pub async fn execute(
        &self,
        request: &HttpRequest,
        signing: Option<Signing<'_>>,
    ) -> AttemptOutcome {
        let started_at_ms = crate::now_ms();
        let started = Instant::now();
        let refuse = |kind, message: String| AttemptOutcome {
            started_at_ms,
            duration: started.elapsed(),
            result: AttemptResult::Failed { kind, message },
        };
        // IP-literal hosts never reach the guarded resolver, so check them here, on
        // every attempt (the allow-list may have changed since the task was accepted).
        // The parsed URL is what is sent, so it is parsed once per attempt.
        let url = match url::Url::parse(&request.url) {
            Ok(url) => url,
            Err(e) => return refuse(FailureKind::Other, format!("invalid URL: {e}")),
        };
        if let Err(e) = self.guard.check_url_host(&url) {
            return refuse(FailureKind::RefusedByGuard, e.to_string());
        }
        let mut headers = request.headers.clone();
        if let Some(signing) = signing
            && let Err(e) = signing.signer.apply(
                &mut headers,
                signing.message_id,
                started_at_ms / 1000,
                &request.body,
            )
        {
            return refuse(FailureKind::Other, e.to_string());
        }
        let sent = self
            .client
            .request(request.method.clone(), url)
            .headers(headers)
            .body(request.body.clone())
            .timeout(request.timeout)
            .send()
            .await;
        let result = match sent {
            Ok(response) => self.read(response, request.keep_body).await,
            Err(e) => failed(&e),
        };
        AttemptOutcome {
            started_at_ms,
            duration: started.elapsed(),
            result,
        }
    }

    async fn read(&self, mut response: reqwest::Response, keep: BodyLimit) -> AttemptResult {
        let status = response.status().as_u16();
        let mut headers = HeaderMap::new();
        for (name, value) in response.headers().iter().take(MAX_RESPONSE_HEADERS) {
            headers.append(name.clone(), value.clone());
        }
        let (keep_bytes, read_limit) = match keep {
            BodyLimit::Excerpt => (EXCERPT_BYTES, self.max_response_bytes),
            BodyLimit::Whole(limit) => (limit, limit),
        };
        let mut body = Vec::new();
        let mut read = 0usize;
        // Read (and discard past what is kept) up to the limit so the connection can
        // be reused for small bodies; stop early on huge ones.
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > read_limit {
                        if let BodyLimit::Whole(limit) = keep {
                            return AttemptResult::Failed {
                                kind: FailureKind::Other,
                                message: format!("response body is larger than {limit} bytes"),
                            };
                        }
                        break;
                    }
                    let room = keep_bytes.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return AttemptResult::Failed {
                        kind: FailureKind::Timeout,
                        message: "timed out reading the response body".into(),
                    };
                }
                Err(e) => {
                    if let BodyLimit::Whole(_) = keep {
                        return failed(&e);
                    }
                    break;
                }
            }
        }
        AttemptResult::Response {
            status,
            headers,
            body: Bytes::from(body),
        }
    }
}

/// A JSON content type header map, the start of every delivery's headers.
pub fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

/// Inserts `name: value` when `value` is a valid header value (it always is for the
/// ids and URLs Tern builds; a bad one is left out rather than failing the call).
pub fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn failed(e: &reqwest::Error) -> AttemptResult {
    let kind = classify(e);
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    AttemptResult::Failed { kind, message }
}
