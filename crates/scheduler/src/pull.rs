//! The consume loop every scheduler duty shares: pull a durable consumer in batches
//! and handle up to `max_in_flight` messages at once until shutdown, then let the
//! in-flight ones finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::forward::ForwardError;

/// Runs `handle` on every message of `consumer` on `stream` until `shutdown` fires.
pub async fn each_message<F, Fut>(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    max_in_flight: usize,
    shutdown: CancellationToken,
    handle: F,
) -> Result<(), ForwardError>
where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let pull: consumer::PullConsumer = js
        .get_consumer_from_stream(consumer, stream)
        .await
        .map_err(|e| ForwardError::new(format!("consumer {consumer}: {e}")))?;
    let mut messages = pull
        .stream()
        .max_messages_per_batch(max_in_flight.clamp(1, 1000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| ForwardError::new(format!("consumer {consumer}: {e}")))?;
    let permits = Arc::new(Semaphore::new(max_in_flight));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit
                .map_err(|e| ForwardError::new(e.to_string()))?,
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // Missed heartbeats and reconnects surface here; the stream recovers.
                tracing::warn!(consumer, error = %e, "consumer hiccup");
                continue;
            }
            None => return Err(ForwardError::new(format!("consumer {consumer} ended"))),
        };
        let work = handle(message);
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
    // Let in-flight handlers finish so none is cut between its publish and its ack.
    let _ = permits.acquire_many(max_in_flight as u32).await;
    Ok(())
}
