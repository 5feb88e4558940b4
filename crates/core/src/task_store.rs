//! Task records in the `tern_tasks` KV bucket, changed only by compare-and-swap.
//!
//! Several processes touch one task (ingress creates it, a worker claims and finishes
//! it, an operator cancels or re-drives it). Every change is a CAS on the record's
//! revision, so a stale writer can never move a task backwards: it loses the CAS,
//! re-reads, and its change function decides again on the fresh state.

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use tern_proto::Message;
use tern_proto::v1::{TaskRecord, TaskStatus};

/// Why a task store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS did not answer or refused.
    #[error("task store unavailable: {0}")]
    Unavailable(String),
    /// The stored bytes are not a TaskRecord (corruption or a foreign writer).
    #[error("record {0} is corrupt: {1}")]
    Corrupt(String, prost::DecodeError),
    /// Too many concurrent writers won the CAS; the caller may retry later.
    #[error("task record {0} is contended")]
    Contended(String),
}

/// The result of [`TaskStore::update`] (and of [`update`] on any protobuf record).
#[derive(Debug)]
pub enum Updated<T = TaskRecord> {
    /// The change was written; the record as stored and its new revision.
    Written(T, u64),
    /// The change function declined (the record is in a state where it does not apply).
    Declined(T, u64),
    /// There is no such record.
    Missing,
}

/// What a change function decides after looking at the current record.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Store the mutated record.
    Write,
    /// Leave the record as it is.
    Decline,
}

/// True for states a task never leaves on its own.
pub fn is_terminal(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Dead | TaskStatus::Cancelled
    )
}

/// Attempts to win a CAS before giving up. One task has few writers, but each lost
/// round only guarantees that *someone* won, so allow for many, with jittered pauses
/// so that losers do not collide again in lockstep.
const MAX_CAS_ROUNDS: u32 = 64;

/// Access to task records.
#[derive(Clone)]
pub struct TaskStore {
    kv: kv::Store,
}

impl TaskStore {
    /// Wraps the `tern_tasks` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Stores a new record; returns its revision. Fails if the id exists.
    pub async fn create(&self, record: &TaskRecord) -> Result<u64, CreateError> {
        self.kv
            .create(&record.id, Bytes::from(record.encode_to_vec()))
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => CreateError::Exists,
                _ => CreateError::Store(StoreError::Unavailable(e.to_string())),
            })
    }

    /// Removes a record (used to undo a create whose publish failed).
    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.kv
            .purge(id)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// The record and its revision, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<(TaskRecord, u64)>, StoreError> {
        read(&self.kv, id).await
    }

    /// Applies `change` by compare-and-swap, re-reading and re-deciding on conflict.
    ///
    /// `known` is the caller's belief of the current record and revision (for example
    /// rebuilt from a stream message); when right it saves a read on the hot path.
    pub async fn update<F>(
        &self,
        id: &str,
        known: Option<(TaskRecord, u64)>,
        change: F,
    ) -> Result<Updated, StoreError>
    where
        F: FnMut(&mut TaskRecord) -> Change,
    {
        update(&self.kv, id, known, change).await
    }
}

/// The protobuf record under `key` and its revision, if it exists (not deleted).
pub async fn read<T: Message + Default>(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, StoreError> {
    let entry = kv
        .entry(key)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let record =
                T::decode(entry.value).map_err(|e| StoreError::Corrupt(key.to_string(), e))?;
            Ok(Some((record, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// Every protobuf record whose key starts with `prefix`, by key, read from the bucket
/// itself (not a mirror), so a caller sees writes made through any replica.
pub async fn list_prefixed<T: Message + Default>(
    kv: &kv::Store,
    prefix: &str,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut matching = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        if key.starts_with(prefix) {
            matching.push(key);
        }
    }
    matching.sort();
    let mut out = Vec::with_capacity(matching.len());
    for key in matching {
        // Deleted between the listing and the read: not there any more.
        if let Some((record, _)) = read(kv, &key).await? {
            out.push((key, record));
        }
    }
    Ok(out)
}

/// Applies `change` to the protobuf record under `key` by compare-and-swap,
/// re-reading and re-deciding on conflict; a deleted record is [`Updated::Missing`].
pub async fn update<T, F>(
    kv: &kv::Store,
    key: &str,
    known: Option<(T, u64)>,
    mut change: F,
) -> Result<Updated<T>, StoreError>
where
    T: Message + Default + Clone,
    F: FnMut(&mut T) -> Change,
{
    let mut current = match known {
        Some(known) => Some(known),
        None => read(kv, key).await?,
    };
    for round in 0..MAX_CAS_ROUNDS {
        let Some((mut record, revision)) = current.take() else {
            return Ok(Updated::Missing);
        };
        let before = record.clone();
        if change(&mut record) == Change::Decline {
            return Ok(Updated::Declined(before, revision));
        }
        match kv
            .update(key, Bytes::from(record.encode_to_vec()), revision)
            .await
        {
            Ok(new_revision) => return Ok(Updated::Written(record, new_revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                if round > 2 {
                    let pause = rand::random_range(0..=u64::from(round.min(20)));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                current = read(kv, key).await?;
            }
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        }
    }
    Err(StoreError::Contended(key.to_string()))
}

/// Why [`TaskStore::create`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A record with this id exists already.
    #[error("task exists already")]
    Exists,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The record a task starts with. Ingress stores it; a worker rebuilds the same value
/// from the stream message to CAS against `record_revision` without reading first, so
/// everything in it must be derivable from the [`Task`](tern_proto::v1::Task).
pub fn initial_record(task: &tern_proto::v1::Task) -> TaskRecord {
    use tern_proto::v1::task::Work;
    let (target_url, awaits_callback) = match &task.work {
        Some(Work::Webhook(w)) => (w.url.clone(), !w.callback_url.is_empty()),
        Some(Work::Notify(n)) => (n.url.clone(), false),
        Some(Work::Proxy(p)) => (
            p.targets.first().map(|t| t.url.clone()).unwrap_or_default(),
            false,
        ),
        Some(Work::ProxyCallback(c)) => (c.url.clone(), false),
        None => (String::new(), false),
    };
    let (callback_url, route_key) = match &task.work {
        Some(Work::Proxy(p)) => (p.callback_url.clone(), p.route_key.clone()),
        _ => (String::new(), String::new()),
    };
    TaskRecord {
        id: task.id.clone(),
        tenant_id: task.tenant_id.clone(),
        tier: task.tier,
        queue: task.queue.clone(),
        status: if task.not_before_ms > task.created_at_ms {
            TaskStatus::Scheduled as i32
        } else {
            TaskStatus::Queued as i32
        },
        scheduled_for_ms: task.not_before_ms,
        created_at_ms: task.created_at_ms,
        updated_at_ms: task.created_at_ms,
        target_url,
        awaits_callback,
        callback_deadline_ms: task.callback_deadline_ms,
        notify_url: task.notify_url.clone(),
        retry: task.retry,
        callback_url,
        route_key,
        schedule_id: task.schedule_id.clone(),
        schedule_slot_ms: task.schedule_slot_ms,
        content_type: match &task.work {
            Some(Work::Webhook(w)) => w.content_type.clone(),
            _ => String::new(),
        },
        traceparent: task.traceparent.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states() {
        for s in [
            TaskStatus::Succeeded,
            TaskStatus::Failed,
            TaskStatus::Dead,
            TaskStatus::Cancelled,
        ] {
            assert!(is_terminal(s));
        }
        for s in [
            TaskStatus::Queued,
            TaskStatus::Scheduled,
            TaskStatus::Processing,
            TaskStatus::Waiting,
        ] {
            assert!(!is_terminal(s));
        }
    }
}
