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
/// The single INTAKE consumer of earlier versions, replaced by one per tenant; its
/// filter overlaps theirs, which a work-queue stream forbids, so it is removed.
const LEGACY_INTAKE_CONSUMER: &str = "scheduler";
/// Durable consumer shared by all delivery workers on READY.
pub const WORKER_CONSUMER: &str = "delivery";
/// KV bucket of task records.
pub const TASKS_BUCKET: &str = "tern_tasks";
/// KV bucket of idempotency keys.
pub const IDEMPOTENCY_BUCKET: &str = "tern_idempotency";
/// KV bucket of queue policies.
pub const QUEUES_BUCKET: &str = "tern_queues";
/// KV bucket of the shared token buckets of rate-limited queues.
pub const RATE_BUCKET: &str = "tern_rate";
/// KV bucket of endpoints disabled after a 410.
pub const ENDPOINTS_BUCKET: &str = "tern_endpoints";
/// KV bucket of recurring schedules.
pub const SCHEDULES_BUCKET: &str = "tern_schedules";
/// KV bucket of pending callbacks (per-key TTL).
pub const CALLBACKS_BUCKET: &str = "tern_callbacks";
/// KV bucket of proxy routes.
pub const ROUTES_BUCKET: &str = "tern_routes";
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

/// Subject of an accepted task on INTAKE. It ends with the task id so that a task
/// whose record is deferred can be found by its message (see [`crate::task_lookup`]).
pub fn intake_subject(tier: Tier, tenant_id: &str, task_id: &str) -> String {
    format!(
        "tern.intake.{}.{}.{tenant_id}.{task_id}",
        tier.as_str(),
        partition(tenant_id),
    )
}

/// Durable INTAKE consumer of one tenant's tasks, shared by every scheduler replica.
/// One per tenant lets the scheduler take any tenant's next task without reading
/// through another tenant's backlog.
pub fn intake_consumer(tenant_id: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(format!("intake-{tenant_id}")),
        // The second filter takes what a Tern from before the task id in the subject
        // left in the stream.
        filter_subjects: vec![
            format!("tern.intake.*.*.{tenant_id}.*"),
            format!("tern.intake.*.*.{tenant_id}"),
        ],
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Subject of a due task on READY that no queue limit governs; like INTAKE's, it
/// ends with the task id.
pub fn ready_subject(tier: Tier, tenant_id: &str, task_id: &str) -> String {
    format!(
        "tern.ready.open.{}.{}.{tenant_id}.{task_id}",
        tier.as_str(),
        partition(tenant_id),
    )
}

/// What the shared `delivery` consumer takes from READY: everything not limited.
/// Work-queue streams refuse consumers with overlapping filters, hence two prefixes.
pub const READY_OPEN_FILTER: &str = "tern.ready.open.>";

/// Subject of a due task of a queue with limits (its own consumer takes it).
pub fn ready_limited_subject(tenant_id: &str, queue: &str) -> String {
    format!("tern.ready.limited.{tenant_id}.{queue}")
}

const LIMITED_CONSUMER_PREFIX: &str = "limited-";

/// Name of the durable READY consumer of a limited queue:
/// `limited-<length of tenant>-<tenant>-<queue>`. Both parts may contain `-` and `_`,
/// so the tenant's length keeps every pair distinct.
pub fn limited_consumer_name(tenant_id: &str, queue: &str) -> String {
    format!(
        "{LIMITED_CONSUMER_PREFIX}{}-{tenant_id}-{queue}",
        tenant_id.len()
    )
}

/// The tenant and queue of a limited queue's consumer name, if it is one.
pub fn parse_limited_consumer_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(LIMITED_CONSUMER_PREFIX)?;
    let (len, rest) = rest.split_once('-')?;
    let len: usize = len.parse().ok()?;
    let tenant = rest.get(..len)?;
    let queue = rest.get(len..)?.strip_prefix('-')?;
    (is_subject_token(tenant) && is_subject_token(queue)).then_some((tenant, queue))
}

/// Creates or updates the READY consumer of a limited queue. `max_ack_pending` is
/// what caps the queue's deliveries in flight across every worker replica: a worker
/// acks only after its call ended.
pub async fn ensure_limited_consumer(
    js: &jetstream::Context,
    tenant_id: &str,
    queue: &str,
    max_ack_pending: i64,
    ack_wait: Duration,
) -> Result<(), TopologyError> {
    js.create_consumer_on_stream(
        limited_consumer_config(tenant_id, queue, max_ack_pending, ack_wait),
        READY_STREAM,
    )
    .await
    .map_err(err("create limited queue consumer"))?;
    Ok(())
}

/// Creates the READY consumer of a limited queue only if it does not exist, so a
/// process with a stale view never overwrites a newer limit.
pub async fn create_missing_limited_consumer(
    js: &jetstream::Context,
    tenant_id: &str,
    queue: &str,
    max_ack_pending: i64,
    ack_wait: Duration,
) -> Result<(), TopologyError> {
    let name = limited_consumer_name(tenant_id, queue);
    let stream = js
        .get_stream_no_info(READY_STREAM)
        .await
        .map_err(err("open stream TERN_READY"))?;
    if stream.consumer_info(&name).await.is_ok() {
        return Ok(());
    }
    match js
        .create_consumer_strict_on_stream(
            limited_consumer_config(tenant_id, queue, max_ack_pending, ack_wait),
            READY_STREAM,
        )
        .await
    {
        Ok(_) => Ok(()),
        // Someone else created it meanwhile: theirs stands.
        Err(e) if stream.consumer_info(&name).await.is_ok() => {
            tracing::debug!(error = %e, consumer = %name, "limited consumer created concurrently");
            Ok(())
        }
        Err(e) => Err(err("create limited queue consumer")(e)),
    }
}

fn limited_consumer_config(
    tenant_id: &str,
    queue: &str,
    max_ack_pending: i64,
    ack_wait: Duration,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(limited_consumer_name(tenant_id, queue)),
        filter_subject: ready_limited_subject(tenant_id, queue),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        // Unlimited, like `delivery`: the worker decides when retries are exhausted.
        max_deliver: -1,
        ..Default::default()
    }
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
    /// Token buckets of rate-limited queues.
    pub rate: kv::Store,
    /// Pending callbacks.
    pub callbacks: kv::Store,
    /// Proxy routes.
    pub routes: kv::Store,
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

/// Deletes the pre-fairness INTAKE consumer if a store still has it.
async fn remove_legacy_intake_consumer(js: &jetstream::Context) -> Result<(), TopologyError> {
    let stream = js
        .get_stream_no_info(INTAKE_STREAM)
        .await
        .map_err(err("open stream TERN_INTAKE"))?;
    match stream.delete_consumer(LEGACY_INTAKE_CONSUMER).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                stream::ConsumerErrorKind::JetStream(ref js_error)
                    if js_error.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(err("delete legacy consumer scheduler")(e)),
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

        // Timers and delayed tasks are message schedules on work-queue streams. Only
        // the fired subjects have a consumer, so a pending schedule is never delivered
        // and stays until it fires; acking the fired copy deletes it, so the streams
        // hold only what is pending. Pending schedules live in NATS, not in any Tern
        // process's memory.
        let schedules = |name: &str, subjects: &str| stream::Config {
            allow_message_schedules: true,
            ..work_queue(name, subjects)
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
        remove_legacy_intake_consumer(&js).await?;
        js.create_consumer_on_stream(
            consumer::pull::Config {
                filter_subject: READY_OPEN_FILTER.to_string(),
                ..pull(WORKER_CONSUMER, config.worker.ack_wait.get(), 50_000)
            },
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
        // No expiry: a bucket unused for long must not come back full before its time.
        let rate = js
            .create_or_update_key_value(bucket(RATE_BUCKET, Duration::ZERO))
            .await
            .map_err(err("create bucket tern_rate"))?;
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

        let routes = js
            .create_or_update_key_value(bucket(ROUTES_BUCKET, Duration::ZERO))
            .await
            .map_err(err("create bucket tern_routes"))?;

        Ok(Self {
            js,
            tasks,
            idempotency,
            queues,
            endpoints,
            rate,
            callbacks,
            routes,
            schedules,
        })
    }

    /// Creates (or updates) the INTAKE consumer of each tenant.
    pub async fn ensure_intake_consumers(
        &self,
        tenant_ids: &[String],
    ) -> Result<(), TopologyError> {
        for tenant_id in tenant_ids {
            self.js
                .create_consumer_on_stream(intake_consumer(tenant_id), INTAKE_STREAM)
                .await
                .map_err(err(&format!("create intake consumer of {tenant_id}")))?;
        }
        Ok(())
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
            intake_subject(Tier::Free, "acme", "t-1"),
            format!("tern.intake.free.{}.acme.t-1", partition("acme"))
        );
        assert_eq!(
            ready_subject(Tier::Free, "acme", "t-1"),
            format!("tern.ready.open.free.{}.acme.t-1", partition("acme"))
        );
    }

    #[test]
    fn limited_subjects_stay_outside_the_open_filter() {
        let subject = ready_limited_subject("acme", "orders");
        assert_eq!(subject, "tern.ready.limited.acme.orders");
        let open = READY_OPEN_FILTER.trim_end_matches('>');
        assert!(!subject.starts_with(open));
        assert!(ready_subject(Tier::Business, "open", "t-1").starts_with(open));
    }

    #[test]
    fn limited_consumer_names_are_unambiguous_and_round_trip() {
        let a = limited_consumer_name("a_b", "c");
        let b = limited_consumer_name("a", "b_c");
        assert_ne!(a, b);
        assert_eq!(a, "limited-3-a_b-c");
        let c = limited_consumer_name("a-b", "c");
        let d = limited_consumer_name("a", "b-c");
        assert_ne!(c, d);
        for (tenant, queue) in [("a_b", "c"), ("a", "b-c"), ("a-b", "c-d"), ("9", "-")] {
            let name = limited_consumer_name(tenant, queue);
            assert_eq!(parse_limited_consumer_name(&name), Some((tenant, queue)));
        }
        let longest = limited_consumer_name(&"t".repeat(64), &"q".repeat(64));
        assert!(longest.len() <= 255, "NATS names are at most 255 bytes");
        for bad in [
            "delivery",
            "limited-",
            "limited-x-a-b",
            "limited-5-a-b",
            "limited-1-ab",
            "limited-1-a-",
        ] {
            assert_eq!(parse_limited_consumer_name(bad), None, "{bad}");
        }
    }
}
