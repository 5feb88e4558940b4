//! Connecting to NATS the way every Tern service needs: wait for the server at start,
//! reconnect forever afterwards, and size JetStream's publish pipeline for the hot path.

use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;

/// Why the NATS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configured options are unusable (bad credentials file, URL).
    #[error("NATS options: {0}")]
    Options(String),
    /// Shutdown was requested before the server answered.
    #[error("shutdown requested before NATS was reachable")]
    Shutdown,
}

/// Publish acks the JetStream context keeps in flight before applying backpressure.
/// Deep pipelining is what makes publishing fast (see NATS-NOTES.md).
const MAX_ACKS_IN_FLIGHT: usize = 16_384;

/// Connects to NATS, retrying until it answers or `shutdown` fires.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<async_nats::Client, ConnectError> {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .client_capacity(65_536)
            .subscription_capacity(65_536)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            });
        if let Some(token) = &config.token {
            options = options.token(token.expose().clone());
        }
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| ConnectError::Options(e.to_string()))?;
        }
        // async-nats parses one address per string; the config lists several.
        let servers: Vec<&str> = config
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        match options.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                tracing::warn!(error = %e, url = %config.url, "NATS not reachable yet; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(ConnectError::Shutdown),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// A JetStream context with a deep publish pipeline that waits (not fails) when full.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
        .backpressure_on_inflight(true)
        .build(client)
}

/// True while the client holds a live connection.
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
