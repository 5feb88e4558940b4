//! One submitting client's HTTP/1.1 connection to the ingress, its requests in turn.
//!
//! A load generator shares the machine with the system it measures, so every
//! microsecond it spends is one Tern does not get. Through reqwest, a submission cost
//! the bench about as much CPU as the ingress spent accepting it (its pool, redirect,
//! retry and timeout layers); each client therefore drives one hyper connection of
//! its own, as wrk does, and reconnects when the ingress closes it.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;

/// Where and as whom the clients submit.
#[derive(Clone)]
pub struct Target {
    /// `host:port` to connect to (and send as `Host`).
    authority: String,
    /// Path of `POST /v1/tasks`, below any base path of the URL.
    path: String,
    /// `Bearer <api key>`.
    authorization: HeaderValue,
}

impl Target {
    /// The tasks endpoint below `base_url` (plain `http://` only), with `api_key`.
    pub fn new(base_url: &str, api_key: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(base_url).with_context(|| format!("--url {base_url}"))?;
        anyhow::ensure!(
            url.scheme() == "http",
            "--url {base_url}: tern-bench submits over plain http (run it next to the ingress)"
        );
        let host = url.host_str().context("--url has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let authorization = HeaderValue::from_str(&format!("Bearer {api_key}"))
            .context("the API key is not a valid header value")?;
        Ok(Self {
            authority: format!("{host}:{port}"),
            path: format!("{}/v1/tasks", url.path().trim_end_matches('/')),
            authorization,
        })
    }
}

/// One kept-alive connection.
pub struct Submitter {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl Submitter {
    /// A client for `target`; it connects on its first submission.
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            sender: None,
            timeout,
        }
    }

    /// POSTs `body` as JSON; the status and the response body.
    pub async fn submit(&mut self, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        match tokio::time::timeout(self.timeout, self.send(body)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may still carry the late answer: start afresh.
                self.sender = None;
                anyhow::bail!("no answer within {:?}", self.timeout)
            }
        }
    }

    async fn send(&mut self, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.sender.insert(connect(&self.target.authority).await?),
        };
        sender.ready().await.context("connection closed")?;
        let request = hyper::Request::post(self.target.path.as_str())
            .header(HOST, self.target.authority.as_str())
            .header(AUTHORIZATION, self.target.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("request")?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(e).context("sending the request");
            }
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the response")?
            .to_bytes();
        Ok((status, body))
    }
}

/// Opens an HTTP/1.1 connection to `authority` and drives it in the background.
async fn connect(authority: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_the_tasks_endpoint_below_the_base_url() {
        let target = Target::new("http://127.0.0.1:8080", "k").expect("target");
        assert_eq!(target.authority, "127.0.0.1:8080");
        assert_eq!(target.path, "/v1/tasks");
        assert_eq!(target.authorization, "Bearer k");
        let below = Target::new("http://tern.local/api/", "k").expect("target");
        assert_eq!(
            (below.authority.as_str(), below.path.as_str()),
            ("tern.local:80", "/api/v1/tasks")
        );
        assert!(Target::new("https://tern.example", "k").is_err());
        assert!(Target::new("not a url", "k").is_err());
    }
}
