//! The delivery worker: executes HTTP jobs pulled from the READY stream.
//!
//! Messages are pulled in batches from one durable consumer shared by every worker
//! replica, and up to `worker.concurrency` deliveries run at once. On shutdown the
//! worker stops pulling, lets in-flight calls finish within the grace period, and
//! hands anything left back to JetStream for immediate redelivery.

pub mod job;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, consumer};
use futures::StreamExt;
use tern_core::config::Config;
use tern_core::service::{Runtime, StartError, bind};
use tern_core::task_store::TaskStore;
use tern_core::tenants::Tenants;
use tern_core::topology::{READY_STREAM, WORKER_CONSUMER};
use tern_core::url_guard::{UrlGuard, http_client};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
    let consumer: consumer::PullConsumer = runtime
        .topology
        .js
        .get_consumer_from_stream(WORKER_CONSUMER, READY_STREAM)
        .await
        .map_err(|e| StartError::Failed(format!("delivery consumer: {e}")))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency.clamp(1, 500))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| StartError::Failed(format!("delivery consumer: {e}")))?;
    let permits = Arc::new(Semaphore::new(concurrency));
    let abort = CancellationToken::new();
    tracing::info!(concurrency, "delivery worker pulling");
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "delivery consumer hiccup");
                continue;
            }
            None => return Err(StartError::Failed("delivery consumer stream ended".into())),
        };
        let ctx = ctx.clone();
        let abort = abort.clone();
        tokio::spawn(async move {
            process::handle(ctx, message, abort).await;
            drop(permit);
        });
    }

    // Stop pulling: what was already delivered to us but not started goes straight
    // back. Bounded, because a nak'd message may be redelivered to our still-open pull
    // request at once; whatever reaches it after we stop listening comes back to
    // another worker after the ack wait.
    let drain_until = tokio::time::Instant::now() + Duration::from_millis(250);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(drain_until, messages.next()).await {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
    drop(messages);
    let all = concurrency as u32;
    let grace = config.worker.shutdown_grace.get();
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "grace period over; handing in-flight deliveries back"
        );
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(all)).await;
    }
    Ok(())
}

/// Binds and runs a worker until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Worker::bind(config).await?.run(shutdown).await
}
