//! Pulling INTAKE one tenant at a time.
//!
//! Each tenant has its own durable consumer (shared by every scheduler replica), and
//! each scheduler keeps at most `intake_buffer` of a tenant's messages in hand. So a
//! tenant with a deep backlog fills only its own small buffer, and another tenant's new
//! task reaches the fair queue as soon as it is published.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use tern_core::tier::Tier;
use tern_core::topology::{INTAKE_STREAM, intake_consumer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::ForwardError;

/// Pause before pulling again after the consumer failed (NATS away, consumer deleted).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An intake message in the scheduler's hands.
pub struct Pulled {
    /// The tenant's tier when it was pulled.
    pub tier: Tier,
    /// The tenant.
    pub tenant: Arc<str>,
    /// The message, acked once READY has its copy.
    pub message: jetstream::Message,
    /// When it was pulled (held messages get their ack wait extended).
    pub since: Instant,
    /// A place in the tenant's buffer, freed when the message is dropped.
    _room: OwnedSemaphorePermit,
}

/// Starts one puller per tenant, each sending into `into` until `shutdown`.
pub async fn start(
    js: &jetstream::Context,
    tenants: Vec<(String, Tier)>,
    buffer: usize,
    into: mpsc::Sender<Pulled>,
    shutdown: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ForwardError> {
    let mut pullers = Vec::with_capacity(tenants.len());
    for (tenant, tier) in tenants {
        let durable = intake_consumer(&tenant).durable_name.unwrap_or_default();
        let consumer: PullConsumer = js
            .get_consumer_from_stream(&durable, INTAKE_STREAM)
            .await
            .map_err(|e| ForwardError::new(format!("intake consumer {durable}: {e}")))?;
        pullers.push(tokio::spawn(pull(
            consumer,
            Arc::from(tenant),
            tier,
            buffer,
            into.clone(),
            shutdown.clone(),
        )));
    }
    Ok(pullers)
}

async fn pull(
    consumer: PullConsumer,
    tenant: Arc<str>,
    tier: Tier,
    buffer: usize,
    into: mpsc::Sender<Pulled>,
    shutdown: CancellationToken,
) {
    let room = Arc::new(Semaphore::new(buffer));
    while !shutdown.is_cancelled() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(buffer.clamp(1, 1000))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "intake consumer unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => continue,
                }
            }
        };
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = room.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    // Missed heartbeats and reconnects surface here; the stream recovers.
                    tracing::warn!(tenant = %tenant, error = %e, "intake consumer hiccup");
                    continue;
                }
                None => break,
            };
            let pulled = Pulled {
                tier,
                tenant: tenant.clone(),
                message,
                since: Instant::now(),
                _room: permit,
            };
            if into.send(pulled).await.is_err() {
                return;
            }
        }
    }
}
