//! The HTTP client of the Tern APIs: sends JSON, turns every failure into a
//! [`ClientError`] a person can act on.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::connection::{Api, Endpoint};

/// How long a call may take unless the command says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a body that is not Tern's JSON an error message quotes.
const SNIPPET_CHARS: usize = 200;

/// Why a call produced no answer to show.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API refused the call with its JSON error.
    #[error("{code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error's `code`.
        code: String,
        /// The error's `message`.
        message: String,
    },
    /// Nothing listens at the URL (or the name does not resolve).
    #[error("cannot connect to {url} ({reason}); is Tern running (`make run`)? Otherwise {hint}")]
    Connect {
        /// What was called.
        url: String,
        /// The underlying cause.
        reason: String,
        /// Which setting points there.
        hint: &'static str,
    },
    /// The call took longer than allowed.
    #[error("{url} did not answer within {seconds} s")]
    Timeout {
        /// What was called.
        url: String,
        /// The limit.
        seconds: u64,
    },
    /// Any other transport failure.
    #[error("{method} {url}: {reason}")]
    Transport {
        /// The method.
        method: Method,
        /// What was called.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// A success without JSON where JSON was due.
    #[error("{url} answered {status} with a body that is not JSON: {snippet:?}")]
    NotJson {
        /// What was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        snippet: String,
    },
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as sent (empty for `204`).
    pub raw: String,
    /// The body parsed (`null` when empty).
    pub body: Value,
}

/// A client of one API endpoint.
pub struct Client {
    http: reqwest::Client,
    endpoint: Endpoint,
    api: Api,
}

impl Client {
    /// A client of `api` at `endpoint`.
    pub fn new(api: Api, endpoint: Endpoint) -> anyhow::Result<Self> {
        // reqwest is built with `rustls-no-provider`: the process picks the provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("ternctl/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            endpoint,
            api,
        })
    }

    /// `method path` with an optional JSON body and extra headers.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer, ClientError> {
        self.call_within(method, path, body, headers, DEFAULT_TIMEOUT)
            .await
    }

    /// [`Client::call`] with its own time limit (for calls the server paces).
    pub async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.endpoint.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.endpoint.token)
            .timeout(timeout);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |e: reqwest::Error| self.transport_error(&method, &url, timeout, e);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let raw = response.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(status, &raw));
        }
        let body = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).map_err(|_| ClientError::NotJson {
                url: url.clone(),
                status: status.as_u16(),
                snippet: snippet(&raw),
            })?
        };
        Ok(Answer { headers, raw, body })
    }

    fn transport_error(
        &self,
        method: &Method,
        url: &str,
        timeout: Duration,
        error: reqwest::Error,
    ) -> ClientError {
        let url = url.to_string();
        if error.is_timeout() {
            ClientError::Timeout {
                url,
                seconds: timeout.as_secs(),
            }
        } else if error.is_connect() {
            ClientError::Connect {
                url: self.endpoint.base.clone(),
                reason: root_cause(&error),
                hint: match self.api {
                    Api::Public => "pass --url or set TERN_URL",
                    Api::Admin => "pass --admin-url or set TERN_ADMIN_URL",
                },
            }
        } else {
            ClientError::Transport {
                method: method.clone(),
                url,
                reason: root_cause(&error),
            }
        }
    }
}

/// The API's `{"error":{"code","message"}}`, or what a proxy in between said.
fn api_error(status: StatusCode, raw: &str) -> ClientError {
    let parsed: Option<(String, String)> =
        serde_json::from_str::<Value>(raw)
            .ok()
            .and_then(|v| match &v["error"] {
                Value::Object(e) => Some((
                    e.get("code")?.as_str()?.to_string(),
                    e.get("message")?.as_str()?.to_string(),
                )),
                // The callback resolver's shape: `{"error":"…"}`.
                Value::String(message) => {
                    Some((format!("http_{}", status.as_u16()), message.clone()))
                }
                _ => None,
            });
    let (code, message) = parsed.unwrap_or_else(|| {
        let reason = status.canonical_reason().unwrap_or("error").to_string();
        let text = snippet(raw);
        (
            format!("http_{}", status.as_u16()),
            if text.is_empty() {
                reason
            } else {
                format!("{reason}: {text}")
            },
        )
    });
    ClientError::Api {
        status: status.as_u16(),
        code,
        message,
    }
}

fn snippet(raw: &str) -> String {
    let trimmed = raw.trim();
    let mut text: String = trimmed.chars().take(SNIPPET_CHARS).collect();
    if text.len() < trimmed.len() {
        text.push('…');
    }
    text
}

/// The innermost cause: "Connection refused (os error 111)" rather than reqwest's
/// "error sending request".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Runs `future` to completion on a single-threaded runtime (one call at a time is
/// all a command needs).
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(status: u16, raw: &str) -> String {
        api_error(StatusCode::from_u16(status).unwrap(), raw).to_string()
    }

    #[test]
    fn api_errors_show_code_and_message() {
        assert_eq!(
            shown(
                401,
                r#"{"error":{"code":"unauthorized","message":"unknown API key"}}"#
            ),
            "unauthorized: unknown API key"
        );
        assert_eq!(
            shown(404, r#"{"error":"Invalid or expired callback ID"}"#),
            "http_404: Invalid or expired callback ID"
        );
        assert_eq!(
            shown(502, "<html>bad gateway</html>"),
            "http_502: Bad Gateway: <html>bad gateway</html>"
        );
        assert_eq!(shown(503, ""), "http_503: Service Unavailable");
        let long = "x".repeat(500);
        assert_eq!(
            shown(500, &long),
            format!("http_500: Internal Server Error: {}…", "x".repeat(200))
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("019a-Ab_9.~"), "019a-Ab_9.~");
        assert_eq!(segment("../admin?x=1"), "..%2Fadmin%3Fx%3D1");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
