//! Performs one HTTP attempt: sign, send with a timeout, read a bounded response.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tern_core::signing::Signer;
use tern_core::url_guard::{FailureKind, UrlGuard, classify};

use crate::job::HttpJob;

/// How much of a response body is kept on the attempt record.
pub const EXCERPT_BYTES: usize = 4096;

/// What one attempt produced.
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
        /// Response headers (first value of each).
        headers: BTreeMap<String, String>,
        /// The first [`EXCERPT_BYTES`] of the body, lossily decoded.
        body_excerpt: String,
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
}

/// Sends signed requests.
#[derive(Clone)]
pub struct Executor {
    client: reqwest::Client,
    guard: UrlGuard,
    max_response_bytes: usize,
}

impl Executor {
    /// An executor over a client whose resolver applies `guard` to DNS answers.
    pub fn new(client: reqwest::Client, guard: UrlGuard, max_response_bytes: usize) -> Self {
        Self {
            client,
            guard,
            max_response_bytes,
        }
    }

    /// Performs `job` once, signed by `signer`.
    pub async fn execute(&self, job: &HttpJob, signer: &Signer) -> AttemptOutcome {
        let started_at_ms = tern_core::now_ms();
        let started = Instant::now();
        let refuse = |kind, message: String| AttemptOutcome {
            started_at_ms,
            duration: started.elapsed(),
            result: AttemptResult::Failed { kind, message },
        };
        // IP-literal hosts never reach the guarded resolver, so check them here, on
        // every attempt (the allow-list may have changed since the task was accepted).
        match url::Url::parse(&job.url) {
            Ok(url) => {
                if let Err(e) = self.guard.check_url_host(&url) {
                    return refuse(FailureKind::RefusedByGuard, e.to_string());
                }
            }
            Err(e) => return refuse(FailureKind::Other, format!("invalid URL: {e}")),
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(job.content_type));
        if let Some(url) = &job.callback_url
            && let Ok(value) = HeaderValue::from_str(url)
        {
            headers.insert("x-tern-callback-url", value);
        }
        if let Err(e) = signer.apply(
            &mut headers,
            &job.message_id,
            started_at_ms / 1000,
            &job.body,
        ) {
            return refuse(FailureKind::Other, e.to_string());
        }
        let sent = self
            .client
            .post(&job.url)
            .headers(headers)
            .body(job.body.clone())
            .timeout(job.timeout)
            .send()
            .await;
        let result = match sent {
            Ok(response) => self.read(response).await,
            Err(e) => failed(&e),
        };
        AttemptOutcome {
            started_at_ms,
            duration: started.elapsed(),
            result,
        }
    }

    async fn read(&self, mut response: reqwest::Response) -> AttemptResult {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .take(64)
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let mut excerpt = Vec::new();
        let mut read = 0usize;
        // Read (and discard past the excerpt) up to the limit so the connection can be
        // reused for small bodies; stop early on huge ones.
        while read < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = EXCERPT_BYTES.saturating_sub(excerpt.len());
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return AttemptResult::Failed {
                        kind: FailureKind::Timeout,
                        message: "timed out reading the response body".into(),
                    };
                }
                Err(_) => break,
            }
        }
        AttemptResult::Response {
            status,
            headers,
            body_excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
        }
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
