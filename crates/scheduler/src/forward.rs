//! Moving accepted tasks from INTAKE to READY.
//!
//! For now every task is due at once, so the scheduler forwards each intake message
//! unchanged and acks it once READY acknowledged the copy. The READY subject depends
//! on the task's queue: a queue with limits has its own (see
//! [`tern_core::queue_limits`]), decided here from the scheduler's mirror of the
//! policies, so a policy change applies to tasks forwarded after it. Many
//! forwards are in flight at a time (the publish acks pipeline); a crash between the
//! READY publish and the INTAKE ack republishes with the same `Nats-Msg-Id`, which
//! JetStream's duplicate window drops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tern_core::queues::Queues;
use tern_core::topology::{INTAKE_STREAM, SCHEDULER_CONSUMER};
use tern_proto::Message;
use tern_proto::v1::Task;
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

/// The open READY subject for an INTAKE subject (`tern.intake.X` → `tern.ready.open.X`).
pub fn ready_subject_for(intake_subject: &str) -> Option<String> {
    intake_subject
        .strip_prefix("tern.intake.")
        .map(|rest| format!("tern.ready.open.{rest}"))
}

/// Where an intake message goes: its queue's limited subject or the open one. An
/// undecodable task still goes to the open subject, where a worker terminates it.
fn destination(message: &jetstream::Message, queues: &Queues) -> Option<String> {
    match Task::decode(message.payload.clone()) {
        Ok(task) => Some(tern_core::queue_limits::ready_subject_for(
            &task,
            queues.policy(&task.tenant_id, &task.queue).as_ref(),
        )),
        Err(_) => ready_subject_for(&message.subject),
    }
}

/// Forwards until `shutdown` fires; in-flight forwards finish first.
pub async fn run(
    js: jetstream::Context,
    queues: Queues,
    max_in_flight: usize,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    // Routing on a half-loaded mirror could send a limited queue's task to the open
    // subject, past its limits.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = queues.synced() => {}
    }
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
            let queues = queues.clone();
            async move { forward_one(&js, &queues, message).await }
        },
    )
    .await
}

async fn forward_one(js: &jetstream::Context, queues: &Queues, message: jetstream::Message) {
    let Some(subject) = destination(&message, queues) else {
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
            Some("tern.ready.open.free.3.acme")
        );
        assert_eq!(ready_subject_for("tern.other.x"), None);
    }
}
