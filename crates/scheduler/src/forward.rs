//! Moving accepted tasks from INTAKE to READY.
//!
//! For now every task is due at once, so the scheduler forwards each intake message to
//! its READY subject unchanged and acks it once READY acknowledged the copy. Many
//! forwards are in flight at a time (the publish acks pipeline); a crash between the
//! READY publish and the INTAKE ack republishes with the same `Nats-Msg-Id`, which
//! JetStream's duplicate window drops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tern_core::topology::{INTAKE_STREAM, SCHEDULER_CONSUMER};
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
    // Cloned per message: an Arc keeps that to a reference count.
    let shared = Arc::new(js.clone());
    crate::pull::each_message(
        &js,
        INTAKE_STREAM,
        SCHEDULER_CONSUMER,
        max_in_flight,
        shutdown,
        move |message| {
            let js = shared.clone();
            async move { forward_one(&js, message).await }
        },
    )
    .await
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
