//! Accepting a task: the record first, then the durable publish.
//!
//! The ingress accepts tasks that clients submit and the scheduler accepts the tasks
//! that recurring schedules create; both go through [`Acceptor`], so a scheduled task
//! is indistinguishable from a submitted one downstream (tier, fairness, queue policy).
//!
//! A plain webhook task due now is only published: its record is deferred, and the
//! worker that claims it creates it (one KV write and one round trip fewer per task,
//! on the path every task takes; see [`crate::task_lookup`] for how such a task is
//! read and cancelled before then). Every other task's record is created before the
//! message is published, because something other than the claiming worker may touch
//! it first (a delay's release, a callback's deadline, a schedule's resumption); the
//! message carries the record's revision so the worker's claim needs no read. The
//! caller answers only after JetStream acknowledged the publish. If the publish fails
//! the record is removed, so a refused task leaves nothing behind.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use tern_proto::Message;
use tern_proto::v1::{CallbackRecord, RetryPolicy, Task, TaskStatus, WebhookWork, task::Work};

use crate::config::Config;
use crate::delayed::Delayed;
use crate::task_store::{CreateError, TaskStore, initial_record};
use crate::tenants::Tenant;
use crate::tier::Tier;
use crate::topology::{Topology, intake_subject};

/// A validated webhook task, ready to accept.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Pre-chosen id (idempotent requests and schedules pick it before accepting).
    pub id: String,
    /// Queue name (validated).
    pub queue: String,
    /// Webhook URL (validated).
    pub webhook_url: String,
    /// Payload JSON text, exactly as the client sent it (empty for a raw body).
    pub payload_json: String,
    /// A raw body, delivered as it is instead of the JSON envelope.
    pub raw_body: Option<RawBody>,
    /// The effective retry policy.
    pub retry: RetryPolicy,
    /// For await-callback tasks: how long the provider has to call back.
    pub await_timeout: Option<Duration>,
    /// Completion notification URL (empty for none).
    pub notify_url: String,
    /// Delayed tasks: not before this time (0 = now).
    pub not_before_ms: i64,
    /// When the task was created.
    pub created_at_ms: i64,
    /// The recurring schedule that created the task (empty for none).
    pub schedule_id: String,
    /// The schedule's slot (cron time) the task was created for.
    pub schedule_slot_ms: i64,
    /// W3C `traceparent` of the accepting span (see [`crate::trace_context`]).
    pub traceparent: String,
}

/// Bytes a task delivers as they are, with their own content type.
#[derive(Debug, Clone)]
pub struct RawBody {
    /// The body.
    pub bytes: bytes::Bytes,
    /// Its media type (validated), sent as `Content-Type`.
    pub content_type: String,
}

/// What the client is told about an accepted task besides its id.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The one-time callback URL of an await-callback task.
    pub callback_url: Option<String>,
}

/// Why a task was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// A task with this id exists already.
    #[error("task {0} exists already")]
    Exists(String),
    /// NATS refused or did not answer; nothing was accepted.
    #[error("could not enqueue the task, nothing was accepted: {0}")]
    Unavailable(String),
}

/// Publishes `task` to INTAKE and waits for JetStream's acknowledgement.
///
/// A task that may be published again (a delayed task's release, a schedule's
/// resumed firing) carries `Nats-Msg-Id` = task id, so the duplicate window drops
/// the repeat. A deferred-record task does not: its id is new and the ingress
/// publishes it once, and every id the window remembers costs the server memory
/// for two minutes, at thousands of tasks a second. The scheduler gives it the
/// header on its way to READY, where a re-forward can repeat it.
pub async fn publish_to_intake(js: &jetstream::Context, task: &Task) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    if !task.record_deferred {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, task.id.as_str());
    }
    if !task.traceparent.is_empty() {
        headers.insert(crate::trace_context::HEADER, task.traceparent.as_str());
    }
    let publish = PublishMessage::build()
        .payload(task.encode_to_vec().into())
        .headers(headers);
    js.send_publish(
        intake_subject(Tier::from_proto(task.tier()), &task.tenant_id, &task.id),
        publish,
    )
    .await
    .map_err(|e| e.to_string())?
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// True for a task whose record the claiming worker may create: a webhook due now
/// that awaits no callback and comes from no schedule. Nobody else writes such a
/// task's record before the claim but a cancel, which creates it as cancelled. A
/// task that comes from a schedule needs its record at once, since the record
/// tells a resumed firing whether the task exists (see
/// [`accept_or_resume`](Acceptor::accept_or_resume)).
pub fn defers_record(task: &Task) -> bool {
    matches!(task.work, Some(Work::Webhook(_)))
        && task.not_before_ms == 0
        && task.callback_deadline_ms == 0
        && task.schedule_id.is_empty()
}

/// Stores and publishes new tasks.
#[derive(Clone)]
pub struct Acceptor {
    tasks: TaskStore,
    js: jetstream::Context,
    delayed: Delayed,
    callbacks: crate::callbacks::Callbacks,
    resolver_url: String,
}

impl Acceptor {
    /// An acceptor over `topology`, building callback URLs from `config`.
    pub fn new(topology: &Topology, config: &Config) -> Self {
        Self {
            tasks: TaskStore::new(topology.tasks.clone()),
            js: topology.js.clone(),
            delayed: Delayed::new(topology.js.clone()),
            callbacks: crate::callbacks::Callbacks::new(
                topology.callbacks.clone(),
                topology.js.clone(),
            ),
            resolver_url: config.resolver.public_url.trim_end_matches('/').to_string(),
        }
    }

    /// Stores and publishes `new`; returns once JetStream has it. Fails with
    /// [`AcceptError::Exists`] if its id is taken.
    pub async fn accept(&self, tenant: &Tenant, new: NewTask) -> Result<Accepted, AcceptError> {
        let (task, accepted) = self.prepare(tenant, new).await?;
        self.enqueue(tenant, task).await?;
        Ok(accepted)
    }

    /// Publishes `task` (to INTAKE, or to the delayed stream when it has a
    /// `not_before`), after storing its initial record unless the record is deferred
    /// ([`defers_record`]); returns once JetStream has it. Work other than a webhook
    /// (a proxied call) is built by its caller and accepted here, so every task takes
    /// the same path to the scheduler.
    pub async fn enqueue(&self, tenant: &Tenant, mut task: Task) -> Result<(), AcceptError> {
        if defers_record(&task) {
            task.record_deferred = true;
            self.publish(&task)
                .await
                .map_err(AcceptError::Unavailable)?;
        } else {
            self.store_and_publish(&mut task).await?;
        }
        metrics::counter!("tern_tasks_accepted_total", "tier" => tenant.tier.as_str()).increment(1);
        Ok(())
    }

    /// The record first, then the message; a failed publish removes the record.
    async fn store_and_publish(&self, task: &mut Task) -> Result<(), AcceptError> {
        match self.tasks.create(&initial_record(task)).await {
            Ok(revision) => task.record_revision = revision,
            Err(CreateError::Exists) => return Err(AcceptError::Exists(task.id.clone())),
            Err(CreateError::Store(e)) => return Err(AcceptError::Unavailable(e.to_string())),
        }
        if let Err(e) = self.publish(task).await {
            if let Err(cleanup) = self.tasks.remove(&task.id).await {
                tracing::error!(task_id = %task.id, error = %cleanup, "could not remove record of unpublished task");
            }
            return Err(AcceptError::Unavailable(e));
        }
        Ok(())
    }

    /// Like [`accept`](Self::accept), for ids derived from something that may be
    /// retried (a schedule's slot): when the task exists already but nobody has acted
    /// on it since its creation, the earlier attempt may have stopped between the
    /// record and the publish, so it is published again (a copy that did go out is
    /// dropped by the duplicate window, or found claimed by the worker). A task that
    /// moved on is left alone.
    pub async fn accept_or_resume(
        &self,
        tenant: &Tenant,
        new: NewTask,
    ) -> Result<Accepted, AcceptError> {
        let id = new.id.clone();
        let retry = new.clone();
        match self.accept(tenant, new).await {
            Err(AcceptError::Exists(_)) => {}
            other => return other,
        }
        let existing = self
            .tasks
            .get(&id)
            .await
            .map_err(|e| AcceptError::Unavailable(e.to_string()))?;
        let Some((record, _)) = existing else {
            return Err(AcceptError::Unavailable(format!(
                "task {id} vanished while being resumed"
            )));
        };
        let untouched = record.updated_at_ms == record.created_at_ms
            && matches!(record.status(), TaskStatus::Queued | TaskStatus::Scheduled);
        if !untouched {
            return Ok(Accepted::default());
        }
        let (mut task, accepted) = self.prepare(tenant, retry).await?;
        // The stored record was not built from this message: the worker reads it.
        task.record_revision = 0;
        self.publish(&task)
            .await
            .map_err(AcceptError::Unavailable)?;
        Ok(accepted)
    }

    /// The task message for `new`, after registering its callback if it awaits one.
    async fn prepare(
        &self,
        tenant: &Tenant,
        mut new: NewTask,
    ) -> Result<(Task, Accepted), AcceptError> {
        let mut accepted = Accepted::default();
        let mut callback_deadline_ms = 0;
        if let Some(timeout) = new.await_timeout {
            // Registered before the task exists: if a later step fails, the orphan
            // callback points at no task (404) and its timer finds nothing to fail.
            let id = crate::callbacks::new_id();
            let key = crate::callbacks::key_of(&id);
            let url = format!("{}/v1/callbacks/{id}", self.resolver_url);
            self.callbacks
                .register(
                    &key,
                    &CallbackRecord {
                        task_id: new.id.clone(),
                        tenant_id: tenant.id.clone(),
                        traceparent: new.traceparent.clone(),
                    },
                    timeout,
                )
                .await
                .map_err(|e| AcceptError::Unavailable(e.to_string()))?;
            // A raw body is delivered unchanged; its receiver finds the URL in the
            // X-Tern-Callback-Url header.
            new.payload_json = new.payload_json.replace("{{callback_url}}", &url);
            callback_deadline_ms = crate::now_ms() + timeout.as_millis() as i64;
            accepted.callback_url = Some(url);
        }
        let task = Task {
            id: new.id,
            tenant_id: tenant.id.clone(),
            tier: tenant.tier.to_proto() as i32,
            queue: new.queue,
            created_at_ms: new.created_at_ms,
            retry: Some(new.retry),
            record_revision: 0,
            record_deferred: false,
            callback_deadline_ms,
            notify_url: new.notify_url,
            not_before_ms: new.not_before_ms,
            schedule_id: new.schedule_id,
            schedule_slot_ms: new.schedule_slot_ms,
            traceparent: new.traceparent,
            work: Some(Work::Webhook(WebhookWork {
                url: new.webhook_url,
                payload_json: new.payload_json.into_bytes().into(),
                callback_url: accepted.callback_url.clone().unwrap_or_default(),
                raw_body: new
                    .raw_body
                    .as_ref()
                    .map(|r| r.bytes.clone())
                    .unwrap_or_default(),
                content_type: new.raw_body.map(|r| r.content_type).unwrap_or_default(),
            })),
        };
        Ok((task, accepted))
    }

    async fn publish(&self, task: &Task) -> Result<(), String> {
        if task.not_before_ms > 0 {
            // Held by NATS until due; the scheduler moves it on then.
            self.delayed.delay(task).await
        } else {
            publish_to_intake(&self.js, task).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::v1::NotifyWork;

    fn webhook() -> Task {
        Task {
            id: "t-1".into(),
            work: Some(Work::Webhook(WebhookWork::default())),
            ..Default::default()
        }
    }

    #[test]
    fn only_plain_webhooks_due_now_defer_their_record() {
        assert!(defers_record(&webhook()));
        let delayed = Task {
            not_before_ms: 1,
            ..webhook()
        };
        let awaiting = Task {
            callback_deadline_ms: 1,
            ..webhook()
        };
        let scheduled = Task {
            schedule_id: "s-1".into(),
            ..webhook()
        };
        let notification = Task {
            work: Some(Work::Notify(NotifyWork::default())),
            ..webhook()
        };
        for task in [delayed, awaiting, scheduled, notification] {
            assert!(!defers_record(&task), "{task:?}");
        }
    }
}
