//! Delayed tasks: held by NATS as message schedules until due.
//!
//! A delayed task is published to `TERN_DELAYED` with `Nats-Schedule: @at <time>`,
//! one subject per task, so a million pending delays cost NATS storage and no Tern
//! process any memory, and survive restarts of everything. The server's schedule
//! timer is coarse (it fires up to ~250 ms late), so the schedule is set a little
//! early and the scheduler holds the last stretch with a nak-with-delay, which
//! JetStream redelivers within a few milliseconds of the due time.

use std::time::Duration;

use async_nats::jetstream;
use tern_proto::Message;
use tern_proto::v1::Task;

use crate::topology::{DELAYED_STREAM, delayed_due_subject, delayed_schedule_subject};

/// How much earlier than due the schedule fires (the rest is a precise nak delay).
pub const LEAD: Duration = Duration::from_millis(1500);

/// Publishes and cancels delayed tasks.
#[derive(Clone)]
pub struct Delayed {
    js: jetstream::Context,
}

impl Delayed {
    /// Delayed tasks over JetStream `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Holds `task` until its `not_before_ms`.
    pub async fn delay(&self, task: &Task) -> Result<(), String> {
        crate::schedule::publish_at(
            &self.js,
            delayed_schedule_subject(&task.id),
            &delayed_due_subject(&task.id),
            task.not_before_ms - LEAD.as_millis() as i64,
            task.encode_to_vec().into(),
        )
        .await
    }

    /// Drops a cancelled task's schedule (best effort: the scheduler also skips it).
    pub async fn cancel_delayed(&self, task_id: &str) {
        if let Ok(stream) = self.js.get_stream_no_info(DELAYED_STREAM).await {
            for subject in [
                delayed_schedule_subject(task_id),
                delayed_due_subject(task_id),
            ] {
                if let Err(e) = stream.purge().filter(subject).await {
                    tracing::debug!(task_id, error = %e, "could not purge a cancelled schedule");
                }
            }
        }
    }
}
