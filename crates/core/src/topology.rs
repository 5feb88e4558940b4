//! The JetStream topology every service shares: stream, consumer and bucket names,
//! subject layout, and the idempotent bootstrap that creates them.
//!
//! Each service calls [`Topology::ensure`] at start-up, so whichever starts first
//! creates everything and the rest find it in place; replicas come from configuration.
//!
//! Hot subjects carry the tier and a partition token
//! (`tern.<kind>.<tier>.<partition>.<tenant>`, partition = hash of tenant) so INTAKE and
//! READY can later be split into several streams with their own leaders without
//! changing message formats.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use crate::config::Config;
use crate::tier::Tier;

/// Stream of accepted tasks, consumed by the scheduler.
pub const INTAKE_STREAM: &str = "TERN_INTAKE";
/// Stream of work due now, consumed by delivery workers.
pub const READY_STREAM: &str = "TERN_READY";
/// Stream of dead letters, kept for operators.
pub const DLQ_STREAM: &str = "TERN_DLQ";
/// Durable consumer of the scheduler on INTAKE.
pub const SCHEDULER_CONSUMER: &str = "scheduler";
/// Durable consumer shared by all delivery workers on READY.
pub const WORKER_CONSUMER: &str = "delivery";
/// KV bucket of task records.
pub const TASKS_BUCKET: &str = "tern_tasks";
/// KV bucket of idempotency keys.
pub const IDEMPOTENCY_BUCKET: &str = "tern_idempotency";
/// KV bucket of queue policies.
pub const QUEUES_BUCKET: &str = "tern_queues";
/// KV bucket of endpoints disabled after a 410.
pub const ENDPOINTS_BUCKET: &str = "tern_endpoints";
/// KV bucket of recurring schedules.
pub const SCHEDULES_BUCKET: &str = "tern_schedules";
/// KV bucket of pending callbacks (per-key TTL).
pub const CALLBACKS_BUCKET: &str = "tern_callbacks";
/// Stream of durable timers (JetStream message schedules).
pub const TIMERS_STREAM: &str = "TERN_TIMERS";
/// Durable consumer of the scheduler on fired timers.
pub const TIMERS_CONSUMER: &str = "timers";

/// Stream of delayed tasks (JetStream message schedules).
pub const DELAYED_STREAM: &str = "TERN_DELAYED";
/// Durable consumer of the scheduler on delayed tasks that fell due.
pub const DELAYED_CONSUMER: &str = "delayed";

/// Subject holding a delayed task's schedule (one schedule per subject).
pub fn delayed_schedule_subject(task_id: &str) -> String {
    format!("tern.delayed.schedule.{task_id}")
}

/// Subject a delayed task is republished on when due.
pub fn delayed_due_subject(task_id: &str) -> String {
    format!("tern.delayed.due.{task_id}")
}

/// Subject holding the schedule of a task's timer (one schedule per subject).
pub fn timer_schedule_subject(task_id: &str) -> String {
    format!("tern.timers.schedule.{task_id}")
}

/// Subject a task's timer fires on.
pub fn timer_fire_subject(task_id: &str) -> String {
    format!("tern.timers.fire.{task_id}")
}

/// Number of partition tokens in hot subjects; fixed, since it is part of subjects.
pub const PARTITIONS: u32 = 16;

/// How long JetStream remembers `Nats-Msg-Id`s to drop duplicate publishes.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a task record is kept after its last change.
const TASK_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Largest message Tern publishes: 1 MiB payload plus envelope and headers.
const MAX_MESSAGE_BYTES: i32 = 4 * 1024 * 1024;

/// True when `s` can be one token of a NATS subject and a KV key segment.
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The partition token of a tenant (stable FNV-1a hash, independent of Rust versions).
pub fn partition(tenant_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in tenant_id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % PARTITIONS
}

/// Subject of an accepted task on INTAKE.
pub fn intake_subject(tier: Tier, tenant_id: &str) -> String {
    format!(
        "tern.intake.{}.{}.{}",
        tier.as_str(),
        partition(tenant_id),
        tenant_id
    )
}

/// Subject of a due task on READY.
pub fn ready_subject(tier: Tier, tenant_id: &str) -> String {
    format!(
        "tern.ready.{}.{}.{}",
        tier.as_str(),
        partition(tenant_id),
        tenant_id
    )
}

/// Subject of a dead letter: one per task, so an operator can fetch it directly.
pub fn dlq_subject(tenant_id: &str, queue: &str, task_id: &str) -> String {
    format!("tern.dlq.{tenant_id}.{queue}.{task_id}")
}

/// Handles to everything a service uses in JetStream.
#[derive(Clone)]
pub struct Topology {
    /// The JetStream context (publishes, stream and consumer lookups).
    pub js: jetstream::Context,
    /// Task records.
    pub tasks: kv::Store,
    /// Idempotency keys.
    pub idempotency: kv::Store,
    /// Queue policies.
    pub queues: kv::Store,
    /// Disabled endpoints.
    pub endpoints: kv::Store,
    /// Pending callbacks.
    pub callbacks: kv::Store,
    /// Recurring schedules.
    pub schedules: kv::Store,
}

/// Why the topology could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[error("JetStream topology: {what}: {source}")]
pub struct TopologyError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn err<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
) -> impl FnOnce(E) -> TopologyError {
    let what = what.to_string();
    move |source| TopologyError {
        what,
        source: Box::new(source),
    }
}

impl Topology {
    /// Creates (or updates to the configured shape) every stream, consumer and bucket.
    pub async fn ensure(js: jetstream::Context, config: &Config) -> Result<Self, TopologyError> {
        let replicas = config.nats.replicas;
        let work_queue = |name: &str, subjects: &str| stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            max_message_size: MAX_MESSAGE_BYTES,
            allow_direct: true,
            ..Default::default()
        };
        js.create_or_update_stream(work_queue(INTAKE_STREAM, "tern.intake.>"))
            .await
            .map_err(err("create stream TERN_INTAKE"))?;
        js.create_or_update_stream(work_queue(READY_STREAM, "tern.ready.>"))
            .await
            .map_err(err("create stream TERN_READY"))?;
        js.create_or_update_stream(stream::Config {
            name: DLQ_STREAM.to_string(),
            subjects: vec!["tern.dlq.>".to_string()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: config.nats.dlq_max_age.get(),
            duplicate_window: DUPLICATE_WINDOW,
            max_message_size: MAX_MESSAGE_BYTES,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(err("create stream TERN_DLQ"))?;

        // Timers and delayed tasks are message schedules: limits retention (a work
        // queue would delete a schedule when acked); the scheduler deletes what it has
        // handled. Pending schedules live in NATS, not in any Tern process's memory.
        let schedules = |name: &str, subjects: &str| stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_message_schedules: true,
            allow_direct: true,
            max_message_size: MAX_MESSAGE_BYTES,
            ..Default::default()
        };
        js.create_or_update_stream(schedules(TIMERS_STREAM, "tern.timers.>"))
            .await
            .map_err(err("create stream TERN_TIMERS"))?;
        js.create_or_update_stream(schedules(DELAYED_STREAM, "tern.delayed.>"))
            .await
            .map_err(err("create stream TERN_DELAYED"))?;

        let pull = |name: &str, ack_wait: Duration, max_ack_pending: i64| consumer::pull::Config {
            durable_name: Some(name.to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_ack_pending,
            ..Default::default()
        };
        js.create_consumer_on_stream(
            pull(SCHEDULER_CONSUMER, Duration::from_secs(30), 20_000),
            INTAKE_STREAM,
        )
        .await
        .map_err(err("create consumer scheduler"))?;
        js.create_consumer_on_stream(
            pull(WORKER_CONSUMER, config.worker.ack_wait.get(), 50_000),
            READY_STREAM,
        )
        .await
        .map_err(err("create consumer delivery"))?;
        js.create_consumer_on_stream(
            consumer::pull::Config {
                filter_subject: "tern.timers.fire.>".to_string(),
                ..pull(TIMERS_CONSUMER, Duration::from_secs(30), 10_000)
            },
            TIMERS_STREAM,
        )
        .await
        .map_err(err("create consumer timers"))?;
        js.create_consumer_on_stream(
            consumer::pull::Config {
                filter_subject: "tern.delayed.due.>".to_string(),
                ..pull(DELAYED_CONSUMER, Duration::from_secs(30), 20_000)
            },
            DELAYED_STREAM,
        )
        .await
        .map_err(err("create consumer delayed"))?;

        let bucket = |name: &str, max_age: Duration| kv::Config {
            bucket: name.to_string(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_value_size: MAX_MESSAGE_BYTES,
            ..Default::default()
        };
        let tasks = js
            .create_or_update_key_value(bucket(TASKS_BUCKET, TASK_RETENTION))
            .await
            .map_err(err("create bucket tern_tasks"))?;
        let idempotency = js
            .create_or_update_key_value(bucket(
                IDEMPOTENCY_BUCKET,
                config.ingress.idempotency_ttl.get(),
            ))
            .await
            .map_err(err("create bucket tern_idempotency"))?;

        let queues = js
            .create_or_update_key_value(bucket(QUEUES_BUCKET, Duration::ZERO))
            .await
            .map_err(err("create bucket tern_queues"))?;
        let endpoints = js
            .create_or_update_key_value(bucket(ENDPOINTS_BUCKET, Duration::ZERO))
            .await
            .map_err(err("create bucket tern_endpoints"))?;

        let schedules = js
            .create_or_update_key_value(bucket(SCHEDULES_BUCKET, Duration::ZERO))
            .await
            .map_err(err("create bucket tern_schedules"))?;

        let callbacks = js
            .create_or_update_key_value(kv::Config {
                // Per-key TTLs (each callback expires with its own timeout).
                limit_markers: Some(Duration::from_secs(60)),
                ..bucket(CALLBACKS_BUCKET, Duration::ZERO)
            })
            .await
            .map_err(err("create bucket tern_callbacks"))?;

        Ok(Self {
            js,
            tasks,
            idempotency,
            queues,
            endpoints,
            callbacks,
            schedules,
        })
    }

    /// True when every stream still exists (readiness: someone may have deleted one).
    pub async fn is_present(&self) -> bool {
        for name in [
            INTAKE_STREAM,
            READY_STREAM,
            DLQ_STREAM,
            TIMERS_STREAM,
            DELAYED_STREAM,
        ] {
            // A real lookup (get_stream_no_info would not ask the server).
            if self.js.get_stream(name).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens() {
        assert!(is_subject_token("acme_1-b"));
        for bad in ["", "a.b", "a b", "a*", "a>", "ä", &"x".repeat(65)] {
            assert!(!is_subject_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn partitions_are_stable_and_bounded() {
        assert_eq!(partition("acme"), partition("acme"));
        for id in ["a", "b", "tenant-42", "zzzzzzzz"] {
            assert!(partition(id) < PARTITIONS);
        }
        assert_eq!(
            intake_subject(Tier::Free, "acme"),
            format!("tern.intake.free.{}.acme", partition("acme"))
        );
    }
}
