//! Accepting a task: the record first, then the durable publish, then the answer.
//!
//! The record is created before the message is published so that the moment a
//! worker sees the task, its record exists to be claimed; the message carries the
//! record's revision so the worker's claim needs no read. 202 goes out only after
//! JetStream acknowledged the publish. If the publish fails the record is removed, so
//! a refused request leaves nothing behind.

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use tern_core::task_store::{CreateError, initial_record};
use tern_core::tenants::Tenant;
use tern_core::topology::intake_subject;
use tern_proto::Message;
use tern_proto::v1::{CallbackRecord, RetryPolicy, Task, WebhookWork, task::Work};

use crate::error::ApiError;
use crate::state::AppState;

/// A validated webhook task, ready to accept.
pub struct NewTask {
    /// Pre-chosen id (idempotent requests pick it before claiming their key).
    pub id: String,
    /// Queue name (validated).
    pub queue: String,
    /// Webhook URL (validated).
    pub webhook_url: String,
    /// Payload JSON text, exactly as the client sent it.
    pub payload_json: String,
    /// The effective retry policy.
    pub retry: RetryPolicy,
    /// For await-callback tasks: how long the provider has to call back.
    pub await_timeout: Option<std::time::Duration>,
    /// Completion notification URL (empty for none).
    pub notify_url: String,
    /// Delayed tasks: not before this time (0 = now).
    pub not_before_ms: i64,
}

/// What the client is told about an accepted task besides its id.
#[derive(Default)]
pub struct AcceptedTask {
    /// The one-time callback URL of an await-callback task.
    pub callback_url: Option<String>,
}

/// Stores and publishes `new`; returns once JetStream has it.
pub async fn accept(
    state: &AppState,
    tenant: &Tenant,
    mut new: NewTask,
) -> Result<AcceptedTask, ApiError> {
    let mut accepted = AcceptedTask::default();
    let mut callback_deadline_ms = 0;
    if let Some(timeout) = new.await_timeout {
        // Registered before the task exists: if a later step fails, the orphan callback
        // points at no task (404) and its timer finds nothing to fail.
        let id = tern_core::callbacks::new_id();
        let key = tern_core::callbacks::key_of(&id);
        let url = format!(
            "{}/v1/callbacks/{id}",
            state.config.resolver.public_url.trim_end_matches('/')
        );
        state
            .callbacks
            .register(
                &key,
                &CallbackRecord {
                    task_id: new.id.clone(),
                    tenant_id: tenant.id.clone(),
                },
                timeout,
            )
            .await?;
        new.payload_json = new.payload_json.replace("{{callback_url}}", &url);
        callback_deadline_ms = tern_core::now_ms() + timeout.as_millis() as i64;
        accepted.callback_url = Some(url);
    }
    let task = Task {
        id: new.id,
        tenant_id: tenant.id.clone(),
        tier: tenant.tier.to_proto() as i32,
        queue: new.queue,
        created_at_ms: tern_core::now_ms(),
        retry: Some(new.retry),
        record_revision: 0,
        callback_deadline_ms,
        notify_url: new.notify_url,
        not_before_ms: new.not_before_ms,
        work: Some(Work::Webhook(WebhookWork {
            url: new.webhook_url,
            payload_json: new.payload_json.into_bytes().into(),
            callback_url: accepted.callback_url.clone().unwrap_or_default(),
        })),
    };
    enqueue(state, tenant, task).await?;
    Ok(accepted)
}

/// Stores `task`'s initial record and publishes it (to INTAKE, or to the delayed
/// stream when it has a `not_before`); on a failed publish the record is removed, so
/// nothing of a refused request remains.
pub async fn enqueue(state: &AppState, tenant: &Tenant, mut task: Task) -> Result<(), ApiError> {
    let revision = state
        .tasks
        .create(&initial_record(&task))
        .await
        .map_err(|e| match e {
            CreateError::Exists => ApiError::Unavailable("task id collision; retry".into()),
            CreateError::Store(e) => e.into(),
        })?;
    task.record_revision = revision;

    let published = if task.not_before_ms > 0 {
        // Held by NATS until due; the scheduler moves it on then.
        state
            .schedules
            .delay(&task)
            .await
            .map_err(|e| e.to_string())
    } else {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, task.id.as_str());
        let publish = PublishMessage::build()
            .payload(task.encode_to_vec().into())
            .headers(headers);
        match state
            .js
            .send_publish(intake_subject(tenant.tier, &tenant.id), publish)
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    if let Err(e) = published {
        if let Err(cleanup) = state.tasks.remove(&task.id).await {
            tracing::error!(task_id = %task.id, error = %cleanup, "could not remove record of unpublished task");
        }
        return Err(ApiError::Unavailable(format!(
            "could not enqueue the task, nothing was accepted: {e}"
        )));
    }
    metrics::counter!("tern_tasks_accepted_total", "tier" => tenant.tier.as_str()).increment(1);
    Ok(())
}
