//! The pull loop shared by the `delivery` consumer and each limited queue's consumer:
//! pull in batches, run as many deliveries at once as `in_flight` allows, and on stop
//! hand back what has not started, let in-flight calls finish within the grace
//! period, then hand back the rest.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::in_flight::InFlight;
use crate::limited::RateGate;
use crate::process::{self, Context};

/// How long a stopping loop keeps handing back what its pull request still brings.
const DRAIN_WINDOW: Duration = Duration::from_millis(250);

/// How long a message handed back while its pull request is open stays away from
/// it: longer than the rest of the drain window plus the unsubscribe's trip.
const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// Delivers from `consumer` until `stop` fires, each delivery in a slot of
/// `in_flight`; `gate` makes every delivery take a rate token first. An error means
/// the consumer went away.
pub async fn deliver(
    consumer: &PullConsumer,
    ctx: Arc<Context>,
    in_flight: Arc<InFlight>,
    gate: Option<Arc<RateGate>>,
    stop: CancellationToken,
    grace: Duration,
) -> Result<(), String> {
    let mut messages = consumer
        .stream()
        // Never a batch of 1: async-nats then sometimes loses track of its pull request
        // and waits out the 35 s safety re-pull (seen with `worker.concurrency = 1`).
        .max_messages_per_batch(in_flight.limit().clamp(2, 500))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let abort = CancellationToken::new();
    let mut result = Ok(());
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = in_flight.acquire() => slot,
        };
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer hiccup");
                continue;
            }
            None => {
                result = Err("consumer stream ended".to_string());
                break;
            }
        };
        let ctx = ctx.clone();
        let abort = abort.clone();
        let gate = gate.clone();
        let stop = stop.clone();
        // Boxed: the delivery future is large, and spawning it unboxed copies it
        // (several kilobytes) on every message.
        tokio::spawn(Box::pin(async move {
            let admitted = match &gate {
                Some(gate) => gate.admit(&message, ctx.progress_every, &stop).await,
                None => true,
            };
            if admitted {
                process::handle(ctx, message, abort).await;
            }
            drop(slot);
        }));
    }

    // Stop pulling: what was already delivered to us but not started goes back. Our
    // pull request stays open on the server until we unsubscribe, and an immediate nak
    // would be redelivered to it at once (and be lost to us after the unsubscribe,
    // until the ack wait ran out); a short delay keeps the message away from it until
    // the unsubscribe has reached the server, which then offers it to other workers.
    // Whatever new reaches the request after we stop listening comes back to another
    // worker after the ack wait.
    let drain_until = tokio::time::Instant::now() + DRAIN_WINDOW;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(drain_until, messages.next()).await {
        let _ = message.ack_with(AckKind::Nak(Some(HAND_BACK_DELAY))).await;
    }
    drop(messages);
    if tokio::time::timeout(grace, in_flight.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "grace period over; handing in-flight deliveries back"
        );
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.drained()).await;
    }
    result
}
