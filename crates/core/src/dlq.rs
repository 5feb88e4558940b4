//! The dead-letter queue: inspecting, re-driving and purging dead tasks.
//!
//! Dead letters live on the `TERN_DLQ` stream, one subject per task
//! (`tern.dlq.<tenant>.<queue>.<task>`), each carrying the task (payload included) and
//! its record with the whole attempt history. Re-drive is a compare-and-swap of the
//! record from `dead` back to `queued` with a fresh retry budget, followed by a publish
//! to READY (the queue's own subject when it has limits, so a re-driven task counts
//! toward them): of two concurrent re-drives only one wins the CAS, so a task is never
//! delivered twice by re-driving it twice.

use async_nats::jetstream::{self, stream};
use tern_proto::Message;
use tern_proto::v1::{DeadLetter, TaskStatus};

use crate::queues::Queues;
use crate::task_store::{Change, StoreError, TaskStore, Updated};
use crate::topology::{DLQ_STREAM, dlq_subject};

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// No dead letter for that task.
    #[error("no dead letter for task {0}")]
    NotFound(String),
    /// The task is not dead (already re-driven, or never died).
    #[error("task {0} is not dead (current: {1})")]
    NotDead(String, &'static str),
    /// NATS failed.
    #[error("dead-letter queue unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for DlqError {
    fn from(e: StoreError) -> Self {
        DlqError::Unavailable(e.to_string())
    }
}

fn unavailable(e: impl std::fmt::Display) -> DlqError {
    DlqError::Unavailable(e.to_string())
}

/// Which dead letters a listing or bulk re-drive covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only letters that died at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only letters that died before this time (ms).
    pub until_ms: Option<i64>,
}

impl Filter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        let Some(task) = letter.task.as_ref() else {
            return false;
        };
        self.tenant_id.as_ref().is_none_or(|t| *t == task.tenant_id)
            && self.queue.as_ref().is_none_or(|q| *q == task.queue)
            && self.since_ms.is_none_or(|s| letter.dead_at_ms >= s)
            && self.until_ms.is_none_or(|u| letter.dead_at_ms < u)
    }
}

/// One page of a newest-first listing.
pub struct Page {
    /// Dead letters, newest first.
    pub letters: Vec<DeadLetter>,
    /// Pass as `cursor` to continue; none when the listing is complete.
    pub next_cursor: Option<u64>,
}

/// Messages examined per page at most, so one request stays bounded.
const SCAN_BUDGET: usize = 5_000;

/// Access to the dead-letter stream and the records it refers to.
#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    tasks: TaskStore,
    queues: Queues,
}

impl DeadLetters {
    /// Dead letters over `js` with task records in `tasks`; `queues` routes re-drives.
    pub fn new(js: jetstream::Context, tasks: TaskStore, queues: Queues) -> Self {
        Self { js, tasks, queues }
    }

    async fn stream(&self) -> Result<stream::Stream, DlqError> {
        self.js.get_stream(DLQ_STREAM).await.map_err(unavailable)
    }

    /// The dead letter of `task_id`, found through its record's tenant and queue.
    pub async fn get(&self, task_id: &str) -> Result<DeadLetter, DlqError> {
        let not_found = || DlqError::NotFound(task_id.to_string());
        let Some((record, _)) = self.tasks.get(task_id).await? else {
            return Err(not_found());
        };
        let subject = dlq_subject(&record.tenant_id, &record.queue, task_id);
        let message = match self
            .stream()
            .await?
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Err(not_found());
            }
            Err(e) => return Err(unavailable(e)),
        };
        DeadLetter::decode(message.payload).map_err(unavailable)
    }

    /// Lists dead letters newest first, starting below `cursor` (a stream sequence).
    pub async fn list(
        &self,
        filter: &Filter,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, DlqError> {
        let mut stream = self.stream().await?;
        let state = stream.info().await.map_err(unavailable)?.state.clone();
        let mut seq = cursor
            .unwrap_or(state.last_sequence)
            .min(state.last_sequence);
        let mut letters = Vec::new();
        let mut examined = 0;
        while seq >= state.first_sequence.max(1) && letters.len() < limit {
            if examined == SCAN_BUDGET {
                return Ok(Page {
                    letters,
                    next_cursor: Some(seq),
                });
            }
            examined += 1;
            let current = seq;
            seq -= 1;
            let message = match stream.get_raw_message(current).await {
                Ok(message) => message,
                // Re-driven and purged letters leave holes in the sequence.
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(unavailable(e)),
            };
            let Ok(letter) = DeadLetter::decode(message.payload) else {
                continue;
            };
            if filter
                .since_ms
                .is_some_and(|since| letter.dead_at_ms < since)
            {
                // Sequences are in time order: nothing older can match.
                seq = 0;
                break;
            }
            if filter.matches(&letter) {
                letters.push(letter);
            }
        }
        let more = seq >= state.first_sequence.max(1) && seq > 0;
        Ok(Page {
            letters,
            next_cursor: more.then_some(seq),
        })
    }

    /// Sends a dead task back to READY with a fresh retry budget, keeping its history.
    pub async fn redrive(&self, task_id: &str) -> Result<(), DlqError> {
        let letter = self.get(task_id).await?;
        let Some(mut task) = letter.task else {
            return Err(DlqError::NotFound(task_id.to_string()));
        };
        let now = crate::now_ms();
        let updated = self
            .tasks
            .update(task_id, None, |r| {
                if r.status() != TaskStatus::Dead {
                    return Change::Decline;
                }
                r.status = TaskStatus::Queued as i32;
                // Attempt numbers count rounds (a cascade makes several calls per
                // round), so the budget restarts after the last round's number.
                r.retry_base = r.attempts.last().map_or(0, |a| a.number);
                r.budget_started_at_ms = now;
                r.redrives += 1;
                r.last_error.clear();
                r.next_attempt_at_ms = 0;
                r.updated_at_ms = now;
                Change::Write
            })
            .await?;
        let record = match updated {
            Updated::Written(record, _) => record,
            Updated::Declined(record, _) => {
                return Err(DlqError::NotDead(
                    task_id.to_string(),
                    crate::task_view::status_name(record.status()),
                ));
            }
            Updated::Missing => return Err(DlqError::NotFound(task_id.to_string())),
        };
        // The record no longer looks like the task's initial record (it has history),
        // so the worker must read it rather than CAS from a rebuilt one.
        task.record_revision = 0;
        task.record_deferred = false;
        let subject = crate::queue_limits::ready_subject_for(
            &task,
            self.queues.policy(&task.tenant_id, &task.queue).as_ref(),
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("redrive:{task_id}:{}", record.redrives).as_str(),
        );
        let publish = jetstream::message::PublishMessage::build()
            .payload(task.encode_to_vec().into())
            .headers(headers);
        let published = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = published {
            // Put the task back where it was so the operator can try again.
            let _ = self
                .tasks
                .update(task_id, None, |r| {
                    if r.status() != TaskStatus::Queued {
                        return Change::Decline;
                    }
                    r.status = TaskStatus::Dead as i32;
                    Change::Write
                })
                .await;
            return Err(DlqError::Unavailable(format!(
                "re-drive publish failed: {e}"
            )));
        }
        // The task is live again; its dead letter no longer describes it.
        let subject = dlq_subject(&task.tenant_id, &task.queue, task_id);
        if let Err(e) = self.stream().await?.purge().filter(subject).await {
            tracing::warn!(task_id, error = %e, "re-driven, but the dead letter could not be removed");
        }
        Ok(())
    }

    /// Deletes the dead letter of `task_id` (its record stays `dead`).
    pub async fn purge(&self, task_id: &str) -> Result<(), DlqError> {
        let letter = self.get(task_id).await?;
        let task = letter
            .task
            .ok_or_else(|| DlqError::NotFound(task_id.to_string()))?;
        self.stream()
            .await?
            .purge()
            .filter(dlq_subject(&task.tenant_id, &task.queue, task_id))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
