//! What every handler can reach.

use std::sync::Arc;

use tern_core::accept::Acceptor;
use tern_core::config::Config;
use tern_core::idempotency::IdempotencyStore;
use tern_core::queues::Queues;
use tern_core::schedules::Schedules;
use tern_core::task_request::TaskRules;
use tern_core::task_store::TaskStore;
use tern_core::tenants::Tenants;

/// Handler state; axum clones it per request, so it lives behind one `Arc`.
pub type AppState = Arc<Shared>;

/// What every handler can reach.
pub struct Shared {
    /// The deployment's configuration.
    pub config: Arc<Config>,
    /// API key → tenant.
    pub tenants: Arc<Tenants>,
    /// Task records.
    pub tasks: TaskStore,
    /// Finds tasks whose record is deferred as well (reads and cancels).
    pub lookup: tern_core::task_lookup::TaskLookup,
    /// Idempotency keys.
    pub idempotency: IdempotencyStore,
    /// JetStream, for completion notifications.
    pub js: async_nats::jetstream::Context,
    /// What a task body must satisfy.
    pub rules: TaskRules,
    /// Stores and publishes accepted tasks.
    pub acceptor: Acceptor,
    /// Queue policies.
    pub queues: Queues,
    /// Delayed tasks.
    pub delayed: tern_core::delayed::Delayed,
    /// Recurring schedules.
    pub schedules: Schedules,
    /// Per-key request rates.
    pub limits: crate::limits::RateLimits,
    /// Seals proxied calls' headers and route credentials (`proxy.secret_key`).
    pub sealer: Option<tern_core::sealing::Sealer>,
    /// Makes synchronous proxied calls.
    pub executor: tern_core::executor::Executor,
    /// Proxy routes (`tern_routes`).
    pub routes: async_nats::jetstream::kv::Store,
}
