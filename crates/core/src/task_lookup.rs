//! Finding a task by id wherever it is: its record, or, while its record is deferred
//! (see [`crate::accept::defers_record`]), its message on INTAKE or READY.
//!
//! A deferred task moves INTAKE → READY → record, and each step writes the next
//! place before it leaves the previous one (the scheduler acks INTAKE after READY
//! confirmed the copy; the worker creates the record before it acks READY). So
//! looking in the record, then INTAKE, then READY, then the record again cannot miss
//! a task that exists: whichever place a look misses, the task is in a later one by
//! then. Both stream subjects end with the task id, so each look is one direct get.
//!
//! A cancel of a deferred task creates its record, as cancelled, from the message it
//! found; the worker's claim is a create too, so of the two exactly one wins.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use tern_proto::Message;
use tern_proto::v1::{Task, TaskRecord, TaskStatus};

use crate::task_store::{Change, CreateError, StoreError, TaskStore, Updated, initial_record};
use crate::tenants::Tenant;
use crate::tier::Tier;
use crate::topology::{INTAKE_STREAM, READY_STREAM, intake_subject, ready_subject};

/// A task as it stands now.
#[derive(Debug)]
pub enum Found {
    /// Its record, with the record's revision.
    Record(TaskRecord, u64),
    /// A deferred task no worker has claimed yet: its record is the initial one.
    Unclaimed(Task),
}

impl Found {
    /// The task's record (the initial one for an unclaimed task).
    pub fn record(&self) -> TaskRecord {
        match self {
            Found::Record(record, _) => record.clone(),
            Found::Unclaimed(task) => initial_record(task),
        }
    }
}

/// Reads and cancels tasks whose record may not exist yet.
#[derive(Clone)]
pub struct TaskLookup {
    store: TaskStore,
    intake: jetstream::stream::Stream<()>,
    ready: jetstream::stream::Stream<()>,
}

impl TaskLookup {
    /// A lookup over the task records in `store` and the streams of `js`.
    pub async fn new(js: &jetstream::Context, store: TaskStore) -> Result<Self, StoreError> {
        let open = |name: &'static str| async move {
            js.get_stream_no_info(name)
                .await
                .map_err(|e| StoreError::Unavailable(format!("stream {name}: {e}")))
        };
        Ok(Self {
            store,
            intake: open(INTAKE_STREAM).await?,
            ready: open(READY_STREAM).await?,
        })
    }

    /// `tenant`'s task `id`, if it exists. Another tenant's task is not found.
    pub async fn find(&self, tenant: &Tenant, id: &str) -> Result<Option<Found>, StoreError> {
        if let Some((record, revision)) = self.store.get(id).await? {
            return Ok((record.tenant_id == tenant.id).then_some(Found::Record(record, revision)));
        }
        if let Some(task) = self.unclaimed(tenant, id).await? {
            return Ok(Some(Found::Unclaimed(task)));
        }
        Ok(self
            .store
            .get(id)
            .await?
            .filter(|(record, _)| record.tenant_id == tenant.id)
            .map(|(record, revision)| Found::Record(record, revision)))
    }

    /// Cancels `tenant`'s task `id` if it has not started: the record as it is now
    /// (cancelled, or the state that refused), or none for an unknown task.
    pub async fn cancel(
        &self,
        tenant: &Tenant,
        id: &str,
        now_ms: i64,
    ) -> Result<Updated, StoreError> {
        let cancel = |r: &mut TaskRecord| {
            if r.tenant_id != tenant.id {
                return Change::Decline;
            }
            match r.status() {
                TaskStatus::Queued | TaskStatus::Scheduled => {
                    r.status = TaskStatus::Cancelled as i32;
                    r.updated_at_ms = now_ms;
                    Change::Write
                }
                _ => Change::Decline,
            }
        };
        match self.store.update(id, None, cancel).await? {
            Updated::Missing => {}
            other => return Ok(other),
        }
        let Some(task) = self.unclaimed(tenant, id).await? else {
            // Claimed between the two looks, or no such task.
            return self.store.update(id, None, cancel).await;
        };
        let mut record = initial_record(&task);
        record.status = TaskStatus::Cancelled as i32;
        record.updated_at_ms = now_ms;
        match self.store.create(&record).await {
            Ok(revision) => Ok(Updated::Written(record, revision)),
            // A worker claimed it first: the record now says what happened.
            Err(CreateError::Exists) => self.store.update(id, None, cancel).await,
            Err(CreateError::Store(e)) => Err(e),
        }
    }

    /// The message of `tenant`'s deferred task `id` on INTAKE or READY, in that order.
    /// Its tier is looked for first under the tenant's current tier, then the others
    /// (the configuration may have changed the tenant's tier since).
    async fn unclaimed(&self, tenant: &Tenant, id: &str) -> Result<Option<Task>, StoreError> {
        let tiers =
            std::iter::once(tenant.tier).chain(Tier::ALL.into_iter().filter(|t| *t != tenant.tier));
        let tiers: Vec<Tier> = tiers.collect();
        for (stream, subject_of) in [
            (
                &self.intake,
                intake_subject as fn(Tier, &str, &str) -> String,
            ),
            (&self.ready, ready_subject),
        ] {
            for tier in &tiers {
                if let Some(task) = direct_get(stream, &subject_of(*tier, &tenant.id, id)).await? {
                    return Ok(Some(task).filter(|t| t.tenant_id == tenant.id && t.record_deferred));
                }
            }
        }
        Ok(None)
    }
}

/// The task on `subject` of `stream`, if there is one.
async fn direct_get(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
) -> Result<Option<Task>, StoreError> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Task::decode(message.payload)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(subject.to_string(), e)),
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    }
}
