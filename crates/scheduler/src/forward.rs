//! Moving accepted tasks from INTAKE to READY in fair order.
//!
//! Pullers (one per tenant, see [`crate::intake`]) hand messages to one dispatcher,
//! which buffers them in a [`FairQueue`] and forwards the next fair one whenever READY
//! has room ([`ReadyCredit`]). A forward publishes the message to its READY subject and
//! acks the intake copy once READY acknowledged; publishes pipeline, up to
//! `max_in_flight` at a time. A crash between the READY publish and the INTAKE ack
//! republishes with the same `Nats-Msg-Id`, which JetStream's duplicate window drops.
//!
//! The READY subject depends on the task's queue: a queue with limits has its own (see
//! [`tern_core::queue_limits`]), decided here from the scheduler's mirror of the
//! policies, so a policy change applies to tasks forwarded after it. Such tasks wait on
//! their queue's own consumer, so they take no READY credit. A limited queue's subject
//! does not name the task, so a task whose record is deferred gets its record here,
//! before it goes there (see [`tern_core::task_lookup`]).
//!
//! Several scheduler replicas share the per-tenant consumers, so each task reaches one
//! of them; each replica orders what it holds. They read the same READY backlog, so
//! together they may overfill it by up to one credit each, which only blurs the order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tern_core::config::SchedulerConfig;
use tern_core::queues::Queues;
use tern_core::task_store::{CreateError, TaskStore, initial_record};
use tern_core::tier::Tier;
use tern_core::topology::{READY_OPEN_FILTER, READY_STREAM, WORKER_CONSUMER};
use tern_proto::Message;
use tern_proto::v1::Task;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::fair_queue::FairQueue;
use crate::intake::{self, Pulled};
use crate::ready_credit::ReadyCredit;

/// How often held intake messages get their ack wait extended (and the buffer gauges
/// are updated).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Held longer than this, an intake message gets its ack wait extended.
const PROGRESS_AFTER: Duration = Duration::from_secs(10);

/// Why a scheduler loop stopped.
#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct ForwardError(String);

impl ForwardError {
    /// An error with this description.
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

/// The READY subject for an INTAKE subject (`tern.intake.X` → `tern.ready.X`).
pub fn ready_subject_for(intake_subject: &str) -> Option<String> {
    intake_subject
        .strip_prefix("tern.intake.")
        .map(|rest| format!("tern.ready.open.{rest}"))
}

/// Where an intake message goes.
struct Destination {
    /// Its queue's limited subject or the open one.
    subject: String,
    /// The forward's span, in the task's trace.
    span: Span,
    /// True for the open subject, which takes READY credit.
    open: bool,
    /// The task's id (empty for an undecodable message).
    task_id: String,
    /// A deferred task bound for a limited subject, whose record must be created first.
    needs_record: Option<Task>,
}

/// Where an intake message goes. An undecodable task still goes to the open subject,
/// where a worker terminates it.
fn destination(message: &jetstream::Message, queues: &Queues) -> Option<Destination> {
    let Ok(task) = Task::decode(message.payload.clone()) else {
        return ready_subject_for(&message.subject).map(|subject| Destination {
            subject,
            span: Span::none(),
            open: true,
            task_id: String::new(),
            needs_record: None,
        });
    };
    let subject = tern_core::queue_limits::ready_subject_for(
        &task,
        queues.policy(&task.tenant_id, &task.queue).as_ref(),
    );
    let span = tern_core::task_span::start(
        tern_core::task_span::Step::Schedule,
        &task.id,
        &task.traceparent,
    );
    let open = subject.starts_with(READY_OPEN_FILTER.trim_end_matches('>'));
    Some(Destination {
        subject,
        span,
        open,
        task_id: task.id.clone(),
        needs_record: (task.record_deferred && !open).then_some(task),
    })
}

/// The payload to forward for `task`, after creating its deferred record: the task
/// then carries the record's revision, or 0 when the record exists already (a cancel
/// came first, or an earlier forward was cut short), so the worker reads it.
async fn with_record(tasks: &TaskStore, mut task: Task) -> Result<bytes::Bytes, String> {
    task.record_revision = match tasks.create(&initial_record(&task)).await {
        Ok(revision) => revision,
        Err(CreateError::Exists) => 0,
        Err(CreateError::Store(e)) => return Err(e.to_string()),
    };
    task.record_deferred = false;
    Ok(task.encode_to_vec().into())
}

/// Forwards the intake of `tenants` until `shutdown` fires; in-flight forwards finish
/// and buffered messages go back to INTAKE first.
pub async fn run(
    js: jetstream::Context,
    tasks: TaskStore,
    tenants: Vec<(String, Tier)>,
    queues: Queues,
    config: SchedulerConfig,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    // Routing on a half-loaded mirror could send a limited queue's task to the open
    // subject, past its limits.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = queues.synced() => {}
    }
    let ready = js
        .get_consumer_from_stream(WORKER_CONSUMER, READY_STREAM)
        .await
        .map_err(|e| ForwardError::new(format!("READY consumer {WORKER_CONSUMER}: {e}")))?;
    let mut credit = ReadyCredit::new(ready, config.ready_backlog.get(), config.ready_backlog_min);
    let (sender, mut pulled) = mpsc::channel::<Pulled>(1024);
    let stop_pulling = shutdown.child_token();
    let pullers = intake::start(
        &js,
        tenants,
        config.intake_buffer,
        sender,
        stop_pulling.clone(),
    )
    .await?;
    let mut fair: FairQueue<Pulled> = FairQueue::new(&config.tier_weights);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let shared = Arc::new(js);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    loop {
        while !fair.is_empty() && credit.take() {
            let Some((tier, _, next)) = fair.pop() else {
                break;
            };
            let Some(destination) = destination(&next.message, &queues) else {
                tracing::error!(subject = %next.message.subject, "unexpected intake subject; dropping");
                let _ = next.message.ack_with(AckKind::Term).await;
                credit.give_back();
                continue;
            };
            let Destination {
                subject,
                span,
                open,
                task_id,
                needs_record,
            } = destination;
            if !open {
                credit.give_back();
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => {
                    fair.push(tier, &next.tenant.clone(), next);
                    break;
                }
                permit = in_flight.clone().acquire_owned() => permit
                    .map_err(|e| ForwardError::new(e.to_string()))?,
            };
            forward(
                &shared,
                &tasks,
                subject,
                task_id,
                needs_record,
                next,
                permit,
            )
            .instrument(span)
            .await;
        }
        if shutdown.is_cancelled() {
            break;
        }
        let needs_credit = !fair.is_empty();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = pulled.recv() => match next {
                Some(next) => {
                    fair.push(next.tier, &next.tenant.clone(), next);
                    while let Ok(next) = pulled.try_recv() {
                        fair.push(next.tier, &next.tenant.clone(), next);
                    }
                }
                None => return Err(ForwardError::new("every intake puller stopped".into())),
            },
            _ = tokio::time::sleep_until(credit.next_poll()), if needs_credit => {
                let unconfirmed = config.max_in_flight - in_flight.available_permits();
                if let Err(e) = credit.refresh(unconfirmed as u64).await {
                    tracing::warn!(error = %e, "cannot read the READY backlog; retrying");
                }
            }
            _ = progress.tick() => {
                for held in fair.iter().filter(|held| held.since.elapsed() > PROGRESS_AFTER) {
                    let _ = held.message.ack_with(AckKind::Progress).await;
                }
                // Off the per-message path: a gauge a few seconds old is fresh enough.
                for tier in Tier::ALL {
                    metrics::gauge!("tern_scheduler_buffered", "tier" => tier.as_str())
                        .set(fair.tier_len(tier) as f64);
                }
            }
        }
    }
    // Hand back what this replica holds, so another replica (or the next start) takes
    // it at once instead of after the ack wait.
    stop_pulling.cancel();
    for puller in pullers {
        let _ = puller.await;
    }
    pulled.close();
    while let Some(held) = pulled.recv().await {
        let _ = held.message.ack_with(AckKind::Nak(None)).await;
    }
    while let Some((_, _, held)) = fair.pop() {
        let _ = held.message.ack_with(AckKind::Nak(None)).await;
    }
    // Let in-flight forwards finish so none is cut between its publish and its ack.
    let _ = in_flight.acquire_many(config.max_in_flight as u32).await;
    Ok(())
}

/// How a forward reaches READY.
enum Send {
    /// Published at once; the acknowledgement is pending.
    Now(Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>),
    /// A deferred task's record is created first, then it is published.
    AfterRecord(Box<AfterRecord>),
}

/// A forward that waits for its task's record (see [`with_record`]).
struct AfterRecord {
    task: Task,
    subject: String,
    publish: jetstream::message::PublishMessage,
    js: Arc<jetstream::Context>,
    tasks: TaskStore,
}

/// Publishes `held` to READY now (so READY keeps the dispatch order) and acks the
/// intake copy in the background once READY confirmed it. A task that needs its
/// record first is published in the background, after the record is written (its
/// limited queue keeps an order of its own, which the creates, issued in order, keep).
async fn forward(
    js: &Arc<jetstream::Context>,
    tasks: &TaskStore,
    subject: String,
    task_id: String,
    needs_record: Option<Task>,
    held: Pulled,
    permit: OwnedSemaphorePermit,
) {
    // READY's duplicate window drops the copy a re-forward makes (after a crash
    // between this publish and the INTAKE ack); a deferred-record task reaches
    // INTAKE without the header (see `publish_to_intake`).
    let mut headers = held.message.headers.clone().unwrap_or_default();
    if headers.get(async_nats::header::NATS_MESSAGE_ID).is_none() && !task_id.is_empty() {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, task_id.as_str());
    }
    let publish = jetstream::message::PublishMessage::build().headers(headers);
    // Exactly one of the two: published now, or once the record is written.
    let send = match needs_record {
        None => Send::Now(
            js.send_publish(subject, publish.payload(held.message.payload.clone()))
                .await,
        ),
        Some(task) => Send::AfterRecord(Box::new(AfterRecord {
            task,
            subject,
            publish,
            js: js.clone(),
            tasks: tasks.clone(),
        })),
    };
    let tier = held.tier;
    let span = Span::current();
    let confirmed = async move {
        let sent = match send {
            Send::Now(sent) => sent.map_err(|e| e.to_string()),
            Send::AfterRecord(later) => {
                let AfterRecord {
                    task,
                    subject,
                    publish,
                    js,
                    tasks,
                } = *later;
                match with_record(&tasks, task).await {
                    Ok(payload) => js
                        .send_publish(subject, publish.payload(payload))
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            }
        };
        let result = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if let Err(e) = held.message.ack().await {
                    tracing::warn!(error = %e, "intake ack failed; the message will be forwarded again and deduplicated");
                }
                metrics::counter!("tern_scheduler_forwarded_total", "tier" => tier.as_str())
                    .increment(1);
                tern_core::task_span::record_outcome(&Span::current(), "forwarded", true);
                tracing::debug!("task forwarded to READY");
            }
            Err(e) => {
                tracing::warn!(error = %e, "READY publish failed; retrying the intake message");
                let _ = held
                    .message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
                tern_core::task_span::record_outcome(&Span::current(), "retry", false);
            }
        }
        drop(permit);
    };
    tokio::spawn(confirmed.instrument(span));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_intake_to_ready_subjects() {
        assert_eq!(
            ready_subject_for("tern.intake.free.3.acme.t-1").as_deref(),
            Some("tern.ready.open.free.3.acme.t-1")
        );
        assert_eq!(ready_subject_for("tern.other.x"), None);
    }
}
