//! Backlog gauges: how much work waits where, read from JetStream every
//! `telemetry.gauge_interval` (a few seconds), off every message path.
//!
//! - `tern_consumer_pending{stream, consumer}`: messages not yet delivered
//! - `tern_consumer_ack_pending{stream, consumer}`: delivered and not yet acked
//!   (in flight, or a retry waiting out its backoff)
//! - `tern_consumer_redelivered{stream, consumer}`: delivered more than once, unacked
//! - `tern_dlq_messages`, `tern_dlq_bytes`: what the dead-letter stream holds
//!
//! One service reads them (the scheduler), for every consumer of Tern's work streams;
//! with several replicas each exports the same values (aggregate with `max`).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::topology::{DELAYED_STREAM, DLQ_STREAM, INTAKE_STREAM, READY_STREAM, TIMERS_STREAM};

/// The streams whose consumers are watched.
const WORK_STREAMS: [&str; 4] = [INTAKE_STREAM, READY_STREAM, DELAYED_STREAM, TIMERS_STREAM];

/// One consumer's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerBacklog {
    /// The stream it reads.
    pub stream: &'static str,
    /// Its durable name.
    pub consumer: String,
    /// Not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acked.
    pub ack_pending: u64,
    /// Delivered more than once and not yet acked.
    pub redelivered: u64,
}

/// Reads every watched consumer's backlog; a stream that cannot be read is skipped
/// (and reported) so the others still update.
pub async fn read_consumers(js: &jetstream::Context) -> Vec<ConsumerBacklog> {
    let mut backlogs = Vec::new();
    for stream_name in WORK_STREAMS {
        let stream = match js.get_stream_no_info(stream_name).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(stream = stream_name, error = %e, "cannot read stream for the backlog gauges");
                continue;
            }
        };
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            match info {
                Ok(info) => backlogs.push(ConsumerBacklog {
                    stream: stream_name,
                    consumer: info.name,
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending as u64,
                    redelivered: info.num_redelivered as u64,
                }),
                Err(e) => {
                    tracing::debug!(stream = stream_name, error = %e, "cannot list consumers for the backlog gauges");
                    break;
                }
            }
        }
    }
    backlogs
}

/// Sets the gauges from `backlogs`, and zeroes those of consumers in `seen` that are
/// gone (a deleted limited queue's consumer); returns the consumers now present.
fn publish(
    backlogs: &[ConsumerBacklog],
    seen: HashSet<(&'static str, String)>,
) -> HashSet<(&'static str, String)> {
    let mut now = HashSet::with_capacity(backlogs.len());
    for backlog in backlogs {
        let labels = [
            ("stream", backlog.stream.to_string()),
            ("consumer", backlog.consumer.clone()),
        ];
        metrics::gauge!("tern_consumer_pending", &labels).set(backlog.pending as f64);
        metrics::gauge!("tern_consumer_ack_pending", &labels).set(backlog.ack_pending as f64);
        metrics::gauge!("tern_consumer_redelivered", &labels).set(backlog.redelivered as f64);
        now.insert((backlog.stream, backlog.consumer.clone()));
    }
    for (stream, consumer) in seen.difference(&now) {
        let labels = [
            ("stream", stream.to_string()),
            ("consumer", consumer.clone()),
        ];
        for name in [
            "tern_consumer_pending",
            "tern_consumer_ack_pending",
            "tern_consumer_redelivered",
        ] {
            metrics::gauge!(name, &labels).set(0.0);
        }
    }
    now
}

async fn read_dlq(js: &jetstream::Context) {
    match js.get_stream(DLQ_STREAM).await {
        Ok(stream) => {
            let state = &stream.cached_info().state;
            metrics::gauge!("tern_dlq_messages").set(state.messages as f64);
            metrics::gauge!("tern_dlq_bytes").set(state.bytes as f64);
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the dead-letter stream for its gauges"),
    }
}

/// Updates the gauges every `every` until `shutdown` fires.
pub async fn run(js: jetstream::Context, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let read = async {
            let backlogs = read_consumers(&js).await;
            read_dlq(&js).await;
            backlogs
        };
        // A slow or absent NATS must not hold the loop past its next tick for long.
        match tokio::time::timeout(every.max(Duration::from_secs(5)), read).await {
            Ok(backlogs) => seen = publish(&backlogs, seen),
            Err(_) => tracing::debug!("JetStream too slow for the backlog gauges; retrying"),
        }
    }
}
