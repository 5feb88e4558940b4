//! Completion notifications: when a task reaches a terminal state and carries a
//! `notify_url`, a signed event is sent there.
//!
//! The event is a task of its own (a `NotifyWork`), published to INTAKE like any
//! other, so it gets the same retries, attempt history and dead-letter queue; its task
//! id is the `event_id`, which is the `webhook-id` of every attempt, so receivers can
//! deduplicate. Terminal states are reached in the worker, the resolver and the
//! scheduler; all of them call [`announce`] right after their winning compare-and-swap.

use async_nats::jetstream;
use serde::Serialize;
use tern_proto::v1::{NotifyWork, Task, TaskRecord, task::Work};

use crate::task_store::{TaskStore, initial_record, is_terminal};
use crate::task_view::{TaskView, rfc3339, status_name};
use crate::trace_context::TraceParent;

/// The event body receivers get.
#[derive(Serialize)]
struct Event<'a> {
    event_id: &'a str,
    #[serde(rename = "type")]
    kind: String,
    occurred_at: String,
    spec_version: &'static str,
    data: TaskView,
}

/// The event JSON for `record` (terminal) with id `event_id`.
pub fn event_json(event_id: &str, record: &TaskRecord) -> Vec<u8> {
    let event = Event {
        event_id,
        kind: format!("task.{}", status_name(record.status())),
        occurred_at: rfc3339(record.updated_at_ms),
        spec_version: "1",
        data: TaskView::from(record),
    };
    serde_json::to_vec(&event).unwrap_or_default()
}

/// Sends the completion event of `record` if it asked for one; errors are logged
/// (the task itself is already finished and must not be retried for this).
pub async fn announce(js: &jetstream::Context, tasks: &TaskStore, record: &TaskRecord) {
    if record.notify_url.is_empty() || !is_terminal(record.status()) {
        return;
    }
    if let Err(e) = publish(js, tasks, record).await {
        tracing::error!(task_id = %record.id, error = %e, "completion notification not sent");
    }
}

async fn publish(
    js: &jetstream::Context,
    tasks: &TaskStore,
    record: &TaskRecord,
) -> Result<(), String> {
    let event_id = uuid::Uuid::now_v7().to_string();
    let mut task = Task {
        id: event_id.clone(),
        tenant_id: record.tenant_id.clone(),
        tier: record.tier,
        queue: record.queue.clone(),
        created_at_ms: crate::now_ms(),
        retry: record.retry,
        record_revision: 0,
        record_deferred: false,
        callback_deadline_ms: 0,
        notify_url: String::new(),
        not_before_ms: 0,
        schedule_id: String::new(),
        schedule_slot_ms: 0,
        traceparent: event_traceparent(record),
        work: Some(Work::Notify(NotifyWork {
            url: record.notify_url.clone(),
            event_json: event_json(&event_id, record).into(),
            subject_task_id: record.id.clone(),
        })),
    };
    task.record_revision = tasks
        .create(&initial_record(&task))
        .await
        .map_err(|e| e.to_string())?;
    crate::accept::publish_to_intake(js, &task).await?;
    Ok(())
}

/// The event's trace context, in the task's trace so its receiver sees the client's
/// trace id: a child of the span ending the task while spans are exported (the
/// `deliver`, `resolve` or `expire` span of the task), else a new span of the task's
/// trace. A record stored before records kept the trace starts a new one.
fn event_traceparent(record: &TaskRecord) -> String {
    let task = TraceParent::parse(&record.traceparent);
    match (task, crate::task_span::current_traceparent()) {
        (Some(task), Some(current))
            if crate::task_span::trace_id_of(&current) == task.trace_id_hex() =>
        {
            current
        }
        _ => crate::trace_context::for_accepted_task(Some(&record.traceparent)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::v1::TaskStatus;

    #[test]
    fn events_join_the_tasks_trace() {
        let task = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let record = TaskRecord {
            traceparent: task.into(),
            ..Default::default()
        };
        let event = TraceParent::parse(&event_traceparent(&record)).expect("valid");
        assert_eq!(event.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(event.to_string(), task, "a span of its own");
        let untraced = TraceParent::parse(&event_traceparent(&TaskRecord::default()));
        assert!(untraced.is_some(), "a record without one starts a trace");
    }

    #[test]
    fn events_have_the_documented_shape() {
        let record = TaskRecord {
            id: "t-1".into(),
            status: TaskStatus::Dead as i32,
            queue: "q".into(),
            updated_at_ms: 1_000,
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&event_json("e-1", &record)).unwrap();
        assert_eq!(json["event_id"], "e-1");
        assert_eq!(json["type"], "task.dead");
        assert_eq!(json["spec_version"], "1");
        assert_eq!(json["occurred_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(json["data"]["task_id"], "t-1");
        assert_eq!(json["data"]["status"], "dead");
    }
}
