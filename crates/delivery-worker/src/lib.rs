//! The delivery worker: executes HTTP jobs pulled from the READY stream.
//!
//! Messages are pulled in batches from one durable consumer shared by every worker
//! replica, and up to `worker.concurrency` deliveries run at once (fewer while the
//! worker has no CPU to spare, see [`in_flight`]); each queue with
//! limits has its own consumer and loop besides (see [`limited`]). On shutdown the
//! worker stops pulling, lets in-flight calls finish within the grace period, and
//! hands anything left back to JetStream for immediate redelivery.

mod delivery_metrics;
pub mod in_flight;
pub mod job;
pub mod limited;
pub mod process;
mod pull;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream::consumer;
use tern_core::config::Config;
use tern_core::queues::Queues;
use tern_core::service::{Runtime, StartError, bind};
use tern_core::task_store::TaskStore;
use tern_core::tenants::Tenants;
use tern_core::token_bucket::TokenBuckets;
use tern_core::topology::{READY_STREAM, WORKER_CONSUMER};
use tern_core::url_guard::{UrlGuard, http_client};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::process::Context;
use tern_core::executor::Executor;

/// A bound worker, ready to run.
pub struct Worker {
    config: Arc<Config>,
    ops: TcpListener,
}

impl Worker {
    /// Binds the ops listener.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let ops = bind(config.worker.ops_listen).await?;
        Ok(Self {
            config: Arc::new(config),
            ops,
        })
    }

    /// Address of the ops endpoints.
    pub fn ops_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// Delivers until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let config = self.config.clone();
        let tenants = Tenants::from_config(&config.tenants).map_err(StartError::Config)?;
        let guard = UrlGuard::new(config.outbound.allowed_networks.clone());
        let client = http_client(
            guard.clone(),
            &format!("Tern/{}", tern_core::VERSION),
            config.worker.connect_timeout.get(),
        )
        .map_err(|e| StartError::Config(format!("HTTP client: {e}")))?;
        let runtime = Runtime::start(&config, "tern-delivery-worker", &shutdown).await?;
        let ctx = Arc::new(Context {
            store: TaskStore::new(runtime.topology.tasks.clone()),
            tenants,
            executor: Executor::new(client, guard, config.worker.max_response_bytes),
            js: runtime.topology.js.clone(),
            endpoints: tern_core::endpoints::Endpoints::follow(
                runtime.topology.endpoints.clone(),
                shutdown.child_token(),
            ),
            progress_every: config.worker.ack_wait.get() / 3,
            sealer: config
                .proxy
                .secret_key
                .as_ref()
                .map(|key| tern_core::sealing::Sealer::from_secret(key.expose())),
            max_proxy_response_bytes: config.proxy.max_response_bytes,
        });
        let ops_shutdown = CancellationToken::new();
        let ops = tokio::spawn(tern_core::ops::serve(
            self.ops,
            runtime.health(),
            ops_shutdown.clone(),
        ));
        let result = consume(&runtime, ctx, &config, shutdown).await;
        runtime.flush().await;
        ops_shutdown.cancel();
        let _ = ops.await;
        result
    }
}

async fn consume(
    runtime: &Runtime,
    ctx: Arc<Context>,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let concurrency = config.worker.concurrency;
    let grace = config.worker.shutdown_grace.get();
    let consumer: consumer::PullConsumer = runtime
        .topology
        .js
        .get_consumer_from_stream(WORKER_CONSUMER, READY_STREAM)
        .await
        .map_err(|e| StartError::Failed(format!("delivery consumer: {e}")))?;
    let limited = Arc::new(limited::Limited {
        js: runtime.topology.js.clone(),
        queues: Queues::follow(runtime.topology.queues.clone(), shutdown.child_token()),
        buckets: TokenBuckets::new(runtime.topology.rate.clone()),
        ctx: ctx.clone(),
        concurrency,
        ack_wait: config.worker.ack_wait.get(),
        grace,
    });
    // Whatever stops the open loop (shutdown or a lost consumer) stops the limited
    // queues' loops too.
    let stop = shutdown.child_token();
    let limited = tokio::spawn(limited.supervise(stop.clone()));
    tracing::info!(concurrency, "delivery worker pulling");
    let in_flight = in_flight::InFlight::adaptive(concurrency);
    let adapt = tokio::spawn(in_flight.clone().adapt(stop.clone()));
    let open = pull::deliver(&consumer, ctx, in_flight, None, stop.clone(), grace).await;
    stop.cancel();
    let _ = limited.await;
    let _ = adapt.await;
    open.map_err(|e| StartError::Failed(format!("delivery consumer: {e}")))
}

/// Binds and runs a worker until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Worker::bind(config).await?.run(shutdown).await
}
