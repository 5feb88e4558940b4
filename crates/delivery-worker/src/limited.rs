//! Queues with limits: one pull loop per limited queue, on that queue's own consumer.
//!
//! - `max_concurrent` is the consumer's `max_ack_pending`: JetStream hands out no more
//!   unacked messages than that across all workers, and a worker acks only after its
//!   call ended and the attempt was recorded, so calls in flight never exceed it.
//! - `rate_limit` is a token bucket in KV shared by all workers ([`RateGate`]): every
//!   dispatch, first attempt or retry, takes a token before its call. Without a token
//!   the message is kept (with progress acks) until the next one is due, rather than
//!   nak'd in a spin.
//!
//! The set of loops follows the policies this worker mirrors, plus every limited
//! consumer that still holds messages (a queue whose limits were lifted drains what
//! was routed to it before). A worker creates a missing consumer of a limited policy
//! but never changes an existing one: the ingress does when the policy is set, so a
//! worker with a stale view cannot undo a newer limit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::TryStreamExt;
use tern_core::queue_limits::{self, rate_of};
use tern_core::queues::{Queues, queue_key};
use tern_core::token_bucket::{Rate, TokenBuckets};
use tern_core::topology::{
    READY_STREAM, create_missing_limited_consumer, limited_consumer_name,
    parse_limited_consumer_name,
};
use tern_proto::v1::QueueLimits;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::{Context, with_progress};

/// How often the loops are matched to the mirrored policies.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// How often limited consumers are listed to find leftovers of lifted limits.
const LIST_EVERY: Duration = Duration::from_secs(5);
/// Longest single sleep while waiting for a token, so a raised rate applies soon.
const MAX_TOKEN_SLEEP: Duration = Duration::from_secs(1);

/// What the limited queues' loops share.
pub struct Limited {
    /// JetStream, for the queues' consumers.
    pub js: jetstream::Context,
    /// Mirrored queue policies.
    pub queues: Queues,
    /// The shared token buckets.
    pub buckets: TokenBuckets,
    /// Message processing.
    pub ctx: Arc<Context>,
    /// Deliveries in flight per loop in this worker (JetStream caps the queue).
    pub concurrency: usize,
    /// Ack wait of consumers this worker creates.
    pub ack_wait: Duration,
    /// How long in-flight calls may finish when a loop stops.
    pub grace: Duration,
}

type QueueId = (String, String);

struct Lane {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Limited {
    /// Runs one loop per limited queue until `shutdown` fires, then waits for them.
    pub async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        // Acting on a half-loaded mirror would dispatch a rate-limited queue's leftovers
        // without tokens.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = self.queues.synced() => {}
        }
        let mut lanes: HashMap<QueueId, Lane> = HashMap::new();
        let mut stopping: Vec<JoinHandle<()>> = Vec::new();
        let mut leftovers: HashSet<QueueId> = HashSet::new();
        let mut listed_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if listed_at.is_none_or(|at| at.elapsed() >= LIST_EVERY) {
                match self.consumers_with_backlog().await {
                    Ok(found) => leftovers = found,
                    Err(e) => tracing::warn!(error = %e, "could not list limited consumers"),
                }
                listed_at = Some(Instant::now());
            }
            let mut wanted: HashMap<QueueId, Option<QueueLimits>> =
                leftovers.iter().map(|id| (id.clone(), None)).collect();
            for (tenant, queue, limits) in self.queues.limited() {
                wanted.insert((tenant, queue), Some(limits));
            }

            let finished: Vec<QueueId> = lanes
                .iter()
                .filter(|(id, lane)| !wanted.contains_key(*id) || lane.handle.is_finished())
                .map(|(id, _)| id.clone())
                .collect();
            for id in finished {
                if let Some(lane) = lanes.remove(&id) {
                    lane.stop.cancel();
                    stopping.push(lane.handle);
                }
            }
            stopping.retain(|handle| !handle.is_finished());

            for (id, limits) in wanted {
                if lanes.contains_key(&id) {
                    continue;
                }
                if let Some(limits) = limits {
                    let (tenant, queue) = &id;
                    if let Err(e) = create_missing_limited_consumer(
                        &self.js,
                        tenant,
                        queue,
                        queue_limits::max_ack_pending(Some(&limits)),
                        self.ack_wait,
                    )
                    .await
                    {
                        tracing::warn!(tenant_id = %tenant, queue = %queue, error = %e, "limited queue consumer unavailable");
                        continue;
                    }
                }
                let stop = shutdown.child_token();
                let handle = tokio::spawn(self.clone().serve(id.clone(), stop.clone()));
                lanes.insert(id, Lane { stop, handle });
            }
        }
        for (_, lane) in lanes {
            lane.stop.cancel();
            stopping.push(lane.handle);
        }
        for handle in stopping {
            let _ = handle.await;
        }
    }

    /// Limited queues whose consumer holds messages (pending or unacked).
    async fn consumers_with_backlog(&self) -> Result<HashSet<QueueId>, String> {
        let stream = self
            .js
            .get_stream_no_info(READY_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let mut consumers = stream.consumers();
        let mut found = HashSet::new();
        while let Some(info) = consumers.try_next().await.map_err(|e| e.to_string())? {
            if let Some((tenant, queue)) = parse_limited_consumer_name(&info.name)
                && (info.num_pending > 0 || info.num_ack_pending > 0)
            {
                found.insert((tenant.to_string(), queue.to_string()));
            }
        }
        Ok(found)
    }

    /// One queue's loop, until `stop` fires or its consumer goes away.
    async fn serve(self: Arc<Self>, (tenant, queue): QueueId, stop: CancellationToken) {
        let name = limited_consumer_name(&tenant, &queue);
        let consumer: PullConsumer = match self
            .js
            .get_consumer_from_stream(&name, READY_STREAM)
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => {
                // Ended; the supervisor starts it again on its next round.
                tracing::warn!(consumer = %name, error = %e, "limited queue consumer unavailable");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                return;
            }
        };
        let gate = Arc::new(RateGate {
            key: queue_key(&tenant, &queue),
            tenant,
            queue,
            queues: self.queues.clone(),
            buckets: self.buckets.clone(),
            turn: tokio::sync::Mutex::new(()),
        });
        tracing::info!(consumer = %name, "serving limited queue");
        if let Err(e) = crate::pull::deliver(
            &consumer,
            self.ctx.clone(),
            crate::in_flight::InFlight::fixed(self.concurrency),
            Some(gate),
            stop,
            self.grace,
        )
        .await
        {
            tracing::warn!(consumer = %name, error = %e, "limited queue loop ended");
        }
    }
}

/// Admission to one rate-limited queue: a dispatch waits here for a shared token.
pub struct RateGate {
    tenant: String,
    queue: String,
    key: String,
    queues: Queues,
    buckets: TokenBuckets,
    /// One waiter per queue and worker asks the bucket at a time; the rest queue
    /// here in order, so workers do not stampede the bucket on every token.
    turn: tokio::sync::Mutex<()>,
}

impl RateGate {
    /// Waits for a token when the queue's current policy has a rate limit; false
    /// (the message handed back) when `stop` fired first.
    pub async fn admit(
        &self,
        message: &jetstream::Message,
        progress_every: Duration,
        stop: &CancellationToken,
    ) -> bool {
        tokio::select! {
            _ = with_progress(message, progress_every, self.take_token()) => true,
            _ = stop.cancelled() => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                false
            }
        }
    }

    async fn take_token(&self) {
        let _turn = self.turn.lock().await;
        loop {
            let limits = self
                .queues
                .policy(&self.tenant, &self.queue)
                .and_then(|p| p.limits);
            let Some((per_second, burst)) = rate_of(limits.as_ref()) else {
                return;
            };
            let wait = match self
                .buckets
                .try_take(&self.key, Rate { per_second, burst })
                .await
            {
                Ok(None) => {
                    metrics::counter!("tern_rate_tokens_taken_total").increment(1);
                    return;
                }
                Ok(Some(wait)) => wait.min(MAX_TOKEN_SLEEP),
                Err(e) => {
                    tracing::warn!(queue = %self.key, error = %e, "token bucket unavailable; waiting");
                    Duration::from_millis(500)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
