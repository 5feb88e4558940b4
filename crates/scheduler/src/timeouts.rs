//! Await-callback deadlines: when a task's timer fires and the provider never called
//! back, the task fails with `callback_timeout`.
//!
//! Timers are JetStream message schedules set when the task is accepted, so a
//! deadline survives restarts of every process (and of NATS); a schedule whose time
//! passed during an outage fires as soon as the server is back.

use std::time::Duration;

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use tern_core::callbacks::Callbacks;
use tern_core::task_store::{Change, TaskStore, Updated, is_terminal};
use tern_core::topology::{TIMERS_CONSUMER, TIMERS_STREAM};
use tern_proto::Message;
use tern_proto::v1::{TaskStatus, Timer};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::forward::ForwardError;

/// The error a timed-out task reports.
pub const CALLBACK_TIMEOUT: &str = "callback_timeout";

/// Handles fired timers until `shutdown` fires.
pub async fn run(
    js: jetstream::Context,
    tasks: TaskStore,
    callbacks: Callbacks,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    let shared = Arc::new((js.clone(), tasks, callbacks));
    crate::pull::each_message(&js, TIMERS_STREAM, TIMERS_CONSUMER, 64, shutdown, move |message| {
        let shared = shared.clone();
        async move {
            let (js, tasks, callbacks) = &*shared;
            let Ok(timer) = Timer::decode(message.payload.clone()) else {
                tracing::error!(subject = %message.subject, "undecodable timer; dropping it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            };
            let span = tern_core::task_span::start(tern_core::task_span::Step::Expire, &timer.task_id, &timer.traceparent);
            async {
                match expire(js, tasks, &timer.task_id).await {
                    Ok(()) => {
                        callbacks.finish(&timer.callback_key, &timer.task_id).await;
                        let _ = message.ack().await;
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %timer.task_id, error = %e, "could not expire task; retrying");
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
            }
            .instrument(span)
            .await
        }
    })
    .await
}

/// Fails the task with `callback_timeout` unless it has already ended.
async fn expire(
    js: &jetstream::Context,
    tasks: &TaskStore,
    task_id: &str,
) -> Result<(), tern_core::task_store::StoreError> {
    let now = tern_core::now_ms();
    let updated = tasks
        .update(task_id, None, |r| {
            if is_terminal(r.status()) {
                return Change::Decline;
            }
            r.status = TaskStatus::Failed as i32;
            r.last_error = CALLBACK_TIMEOUT.to_string();
            r.next_attempt_at_ms = 0;
            r.updated_at_ms = now;
            Change::Write
        })
        .await?;
    if let Updated::Written(record, _) = updated {
        metrics::counter!("tern_callbacks_total", "result" => "timeout").increment(1);
        tern_core::task_span::record_outcome(&tracing::Span::current(), CALLBACK_TIMEOUT, false);
        tracing::info!(task_id, "await-callback task timed out");
        tern_core::notify::announce(js, tasks, &record).await;
    }
    Ok(())
}
