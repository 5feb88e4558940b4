//! Releasing delayed tasks when they fall due.
//!
//! The schedule fires a little early (see `tern_core::delayed::LEAD`); the scheduler
//! holds the message for exactly the time left, then moves the task `scheduled →
//! queued` by compare-and-swap (a cancel that got there first wins, and the task is
//! dropped) and publishes it to INTAKE.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tern_core::task_store::{Change, TaskStore, Updated};
use tern_core::topology::{DELAYED_CONSUMER, DELAYED_STREAM};
use tern_proto::Message;
use tern_proto::v1::{Task, TaskStatus};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::forward::ForwardError;

/// The longest a due message is held in process before its time (schedules fire at
/// most `LEAD` plus the server's timer tick early).
const HOLD_AT_MOST: Duration = Duration::from_secs(5);

/// Delayed tasks held or being released at once; holding is only a sleeping task.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// Releases due tasks until `shutdown` fires.
pub async fn run(
    js: jetstream::Context,
    tasks: TaskStore,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    let shared = Arc::new((js.clone(), tasks));
    crate::pull::each_message(
        &js,
        DELAYED_STREAM,
        DELAYED_CONSUMER,
        MAX_IN_FLIGHT,
        shutdown,
        move |message| {
            let shared = shared.clone();
            async move {
                let (js, tasks) = &*shared;
                release(js, tasks, message).await;
            }
        },
    )
    .await
}

async fn release(js: &jetstream::Context, tasks: &TaskStore, message: jetstream::Message) {
    let Ok(task) = Task::decode(message.payload.clone()) else {
        tracing::error!(subject = %message.subject, "undecodable delayed task; dropping it");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let span = tern_core::task_span::start(
        tern_core::task_span::Step::Release,
        &task.id,
        &task.traceparent,
    );
    release_task(js, tasks, message, task)
        .instrument(span)
        .await;
}

async fn release_task(
    js: &jetstream::Context,
    tasks: &TaskStore,
    message: jetstream::Message,
    mut task: Task,
) {
    let remaining = task.not_before_ms - tern_core::now_ms();
    if remaining > HOLD_AT_MOST.as_millis() as i64 {
        // Far early (clock skew, or an early schedule): let JetStream hold it.
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_millis(remaining as u64))))
            .await;
        return;
    }
    if remaining > 1 {
        // The last stretch is held here: a nak-with-delay would do it precisely, but
        // after a burst of them the pull consumer stopped fetching redeliveries for
        // seconds (see the README). Holding costs a permit; a crash meanwhile only
        // makes JetStream redeliver the message after the ack wait.
        tokio::time::sleep(Duration::from_millis(remaining as u64)).await;
    }
    let updated = tasks
        .update(&task.id, None, |r| match r.status() {
            TaskStatus::Scheduled => {
                r.status = TaskStatus::Queued as i32;
                r.updated_at_ms = tern_core::now_ms();
                Change::Write
            }
            _ => Change::Decline,
        })
        .await;
    let release = match updated {
        Ok(Updated::Written(..)) => true,
        // Queued already: an earlier release was cut short before its publish.
        Ok(Updated::Declined(record, _)) => record.status() == TaskStatus::Queued,
        Ok(Updated::Missing) => false,
        Err(e) => {
            tracing::warn!(task_id = %task.id, error = %e, "could not release a due task; retrying");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    if release {
        // The record has moved on from the task's initial one: the worker reads it.
        task.record_revision = 0;
        task.record_deferred = false;
        let published = tern_core::accept::publish_to_intake(js, &task).await;
        if let Err(e) = published {
            tracing::warn!(task_id = %task.id, error = %e, "could not queue a due task; retrying");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
        metrics::counter!("tern_delayed_released_total").increment(1);
    }
    let outcome = if release { "released" } else { "dropped" };
    tracing::debug!(outcome, "due delayed task handled");
    tern_core::task_span::record_outcome(&tracing::Span::current(), outcome, true);
    // Handled (released or cancelled): acking deletes the due copy (work queue).
    let _ = message.ack().await;
}
