//! Moving accepted tasks from INTAKE to READY.
//!
//! For now every task is due at once, so the scheduler forwards each intake message to
//! its READY subject unchanged and acks it once READY acknowledged the copy. Many
//! forwards are in flight at a time (the publish acks pipeline); a crash between the
//! READY publish and the INTAKE ack republishes with the same `Nats-Msg-Id`, which
//! JetStream's duplicate window drops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use tern_core::topology::{INTAKE_STREAM, SCHEDULER_CONSUMER};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Why a scheduler loop stopped.
#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct ForwardError(String);

impl ForwardError {
    /// An error with this description.
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

/// The READY subject for an INTAKE subject (`tern.intake.X` → `tern.ready.X`).
pub fn ready_subject_for(intake_subject: &str) -> Option<String> {
    intake_subject
        .strip_prefix("tern.intake.")
        .map(|rest| format!("tern.ready.{rest}"))
}

/// Forwards until `shutdown` fires; in-flight forwards finish first.
pub async fn run(
    js: jetstream::Context,
    max_in_flight: usize,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    let consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(SCHEDULER_CONSUMER, INTAKE_STREAM)
        .await
        .map_err(|e| ForwardError(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(max_in_flight));
    // Cloned per message: an Arc keeps that to a reference count.
    let js = Arc::new(js);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(max_in_flight.clamp(1, 1000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| ForwardError(e.to_string()))?;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.map_err(|e| ForwardError(e.to_string()))?,
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // Heartbeat misses and reconnects surface here; the stream recovers.
                tracing::warn!(error = %e, "intake consumer hiccup");
                continue;
            }
            None => return Err(ForwardError("intake consumer stream ended".into())),
        };
        let js = js.clone();
        tokio::spawn(async move {
            forward_one(&js, message).await;
            drop(permit);
        });
    }
    // Wait for in-flight forwards so none is cut between publish and ack.
    let _ = permits.acquire_many(max_in_flight as u32).await;
    Ok(())
}

async fn forward_one(js: &jetstream::Context, message: jetstream::Message) {
    let Some(subject) = ready_subject_for(&message.subject) else {
        tracing::error!(subject = %message.subject, "unexpected intake subject; dropping");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let mut publish = jetstream::message::PublishMessage::build().payload(message.payload.clone());
    if let Some(headers) = message.headers.clone() {
        publish = publish.headers(headers);
    }
    let result = match js.send_publish(subject, publish).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "intake ack failed; the message will be forwarded again and deduplicated");
            }
            metrics::counter!("tern_scheduler_forwarded_total").increment(1);
        }
        Err(e) => {
            tracing::warn!(error = %e, "READY publish failed; retrying the intake message");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_intake_to_ready_subjects() {
        assert_eq!(
            ready_subject_for("tern.intake.free.3.acme").as_deref(),
            Some("tern.ready.free.3.acme")
        );
        assert_eq!(ready_subject_for("tern.other.x"), None);
    }
}
