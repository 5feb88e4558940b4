//! Shared building blocks of the Tern services.
//!
//! Anything more than one binary needs lives here: configuration, Standard Webhooks
//! signing, idempotency, retry backoff and decisions, the HTTP executor, the outbound
//! URL guard, proxied calls and sealing of their credentials, the JetStream
//! topology, the task record store, health/metrics endpoints and shutdown.

pub mod accept;
pub mod backlog_gauges;
pub mod backoff;
pub mod callbacks;
pub mod config;
pub mod delayed;
pub mod dlq;
pub mod duration;
pub mod endpoints;
pub mod executor;
pub mod http_metrics;
pub mod idempotency;
pub mod kv_cache;
pub mod media_type;
pub mod nats;
pub mod notify;
pub mod openapi;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod queue_limits;
pub mod queues;
pub mod retry;
pub mod round;
pub mod schedule;
pub mod schedules;
pub mod sealing;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod task_lookup;
pub mod task_request;
pub mod task_span;
pub mod task_store;
pub mod task_view;
pub mod telemetry;
pub mod tenants;
pub mod tier;
pub mod token_bucket;
pub mod topology;
pub mod trace_context;
pub mod url_guard;

/// Version string sent as `User-Agent: Tern/<version>` and printed at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
