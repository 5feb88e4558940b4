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
//! their queue's own consumer, so they take no READY credit.
//!
//! Several scheduler replicas share the per-tenant consumers, so each task reaches one
//! of them; each replica orders what it holds. They read the same READY backlog, so
//! together they may overfill it by up to one credit each, which only blurs the order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tern_core::config::SchedulerConfig;
use tern_core::queues::Queues;
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

/// Where an intake message goes: its queue's limited subject or the open one. An
/// undecodable task still goes to the open subject, where a worker terminates it.
/// Also the span of the forward, in the task's trace.
fn destination(message: &jetstream::Message, queues: &Queues) -> Option<(String, Span)> {
    match Task::decode(message.payload.clone()) {
        Ok(task) => Some((
            tern_core::queue_limits::ready_subject_for(
                &task,
                queues.policy(&task.tenant_id, &task.queue).as_ref(),
            ),
            tern_core::task_span::start(
                tern_core::task_span::Step::Schedule,
                &task.id,
                &task.traceparent,
            ),
        )),
        Err(_) => ready_subject_for(&message.subject).map(|subject| (subject, Span::none())),
    }
}

/// Forwards the intake of `tenants` until `shutdown` fires; in-flight forwards finish
/// and buffered messages go back to INTAKE first.
pub async fn run(
    js: jetstream::Context,
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
            let Some((subject, span)) = destination(&next.message, &queues) else {
                tracing::error!(subject = %next.message.subject, "unexpected intake subject; dropping");
                let _ = next.message.ack_with(AckKind::Term).await;
                credit.give_back();
                continue;
            };
            if !subject.starts_with(READY_OPEN_FILTER.trim_end_matches('>')) {
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
            forward(&shared, subject, next, permit)
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

/// Publishes `held` to READY now (so READY keeps the dispatch order) and acks the
/// intake copy in the background once READY confirmed it.
async fn forward(
    js: &Arc<jetstream::Context>,
    subject: String,
    held: Pulled,
    permit: OwnedSemaphorePermit,
) {
    let message = &held.message;
    let mut publish = jetstream::message::PublishMessage::build().payload(message.payload.clone());
    if let Some(headers) = message.headers.clone() {
        publish = publish.headers(headers);
    }
    let sent = js.send_publish(subject, publish).await;
    let tier = held.tier;
    let span = Span::current();
    let confirmed = async move {
        let result = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
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
            ready_subject_for("tern.intake.free.3.acme").as_deref(),
            Some("tern.ready.open.free.3.acme")
        );
        assert_eq!(ready_subject_for("tern.other.x"), None);
    }
}
