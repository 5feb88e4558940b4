//! The ingress: Tern's public HTTP API.
//!
//! It authenticates API keys, validates input, applies idempotency, writes the task
//! record, publishes the task to JetStream and answers `202` only after JetStream
//! acknowledged it. It also serves the status API.

mod admin;
mod auth;
mod body;
mod error;
mod idempotent;
mod limits;
mod openapi;
mod proxy;
mod queues;
mod routes;
mod schedules;
mod state;
mod submissions;
mod tasks;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tern_core::config::Config;
use tern_core::service::{Runtime, StartError, bind};
use tern_core::tenants::Tenants;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
use state::AppState;

/// Every route of the public API, with its documentation: the router and the
/// OpenAPI document are both built from this one table.
fn public_api() -> OpenApiRouter<AppState> {
    // Proxied calls take any method (it is the upstream's); the document lists the
    // usual ones.
    let (schemas, paths, _) = routes!(proxy::handle);
    let proxy = (schemas, paths, axum::routing::any(proxy::handle));
    let (schemas, paths, _) = routes!(proxy::root);
    let root = (schemas, paths, axum::routing::any(proxy::root));
    OpenApiRouter::with_openapi(openapi::PublicDoc::openapi())
        .routes(routes!(tasks::create))
        .routes(routes!(tasks::create_raw))
        .routes(routes!(tasks::get, tasks::cancel))
        .routes(proxy)
        .routes(root)
        .routes(routes!(routes::get, routes::put, routes::delete))
        .routes(routes!(schedules::list, schedules::create))
        .routes(routes!(schedules::get, schedules::delete))
        .routes(routes!(queues::list))
        .routes(routes!(queues::get, queues::put))
        .routes(routes!(openapi::public_document))
}

/// The public API router over `state`.
fn router(state: AppState) -> Router {
    let router = public_api()
        .split_for_parts()
        .0
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    tern_core::http_metrics::instrument(router, "api").with_state(state)
}

/// A bound ingress, ready to run; tests bind port 0 and read the addresses back.
pub struct Ingress {
    config: Arc<Config>,
    api: TcpListener,
    admin: TcpListener,
    ops: TcpListener,
}

impl Ingress {
    /// Binds the public and ops listeners from `config`.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let api = bind(config.ingress.listen).await?;
        let admin = bind(config.ingress.admin_listen).await?;
        let ops = bind(config.ingress.ops_listen).await?;
        Ok(Self {
            config: Arc::new(config),
            api,
            admin,
            ops,
        })
    }

    /// Address of the admin API.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Address of the public API.
    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.api.local_addr()
    }

    /// Address of the ops endpoints.
    pub fn ops_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// Serves until `shutdown` fires, then drains in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let tenants = Tenants::from_config(&self.config.tenants).map_err(StartError::Config)?;
        let rules = tern_core::task_request::TaskRules::from_config(&self.config);
        let client = tern_core::url_guard::http_client(
            rules.guard.clone(),
            &format!("Tern/{}", tern_core::VERSION),
            self.config.worker.connect_timeout.get(),
        )
        .map_err(|e| StartError::Config(format!("HTTP client: {e}")))?;
        let runtime = Runtime::start(&self.config, "tern-ingress", &shutdown).await?;
        let queues =
            tern_core::queues::Queues::follow(runtime.topology.queues.clone(), shutdown.clone());
        let tasks = tern_core::task_store::TaskStore::new(runtime.topology.tasks.clone());
        let lookup = tern_core::task_lookup::TaskLookup::new(&runtime.topology.js, tasks.clone())
            .await
            .map_err(|e| StartError::Config(e.to_string()))?;
        let state = Arc::new(state::Shared {
            tenants: Arc::new(tenants),
            tasks,
            lookup,
            idempotency: tern_core::idempotency::IdempotencyStore::new(
                runtime.topology.idempotency.clone(),
            ),
            js: runtime.topology.js.clone(),
            executor: tern_core::executor::Executor::new(
                client,
                rules.guard.clone(),
                self.config.proxy.max_response_bytes,
            ),
            sealer: self
                .config
                .proxy
                .secret_key
                .as_ref()
                .map(|key| tern_core::sealing::Sealer::from_secret(key.expose())),
            routes: runtime.topology.routes.clone(),
            rules,
            acceptor: tern_core::accept::Acceptor::new(&runtime.topology, &self.config),
            delayed: tern_core::delayed::Delayed::new(runtime.topology.js.clone()),
            schedules: tern_core::schedules::Schedules::new(runtime.topology.schedules.clone()),
            limits: limits::RateLimits::new(self.config.ingress.rate_limits.clone()),
            queues: queues.clone(),
            config: self.config.clone(),
        });
        let admin_state = Arc::new(admin::AdminShared {
            dlq: tern_core::dlq::DeadLetters::new(
                runtime.topology.js.clone(),
                tern_core::task_store::TaskStore::new(runtime.topology.tasks.clone()),
                queues,
            ),
            endpoints: tern_core::endpoints::Endpoints::follow(
                runtime.topology.endpoints.clone(),
                shutdown.clone(),
            ),
            token: self.config.ingress.admin_token.clone(),
            redrive_rate: self.config.ingress.redrive_rate,
        });
        // SIGTERM makes `/readyz` fail at once; the listeners close `shutdown_delay`
        // later, once load balancers have had the time to stop sending.
        let closing = CancellationToken::new();
        let delay = self.config.ingress.shutdown_delay.get();
        let close_later = tokio::spawn({
            let (shutdown, closing) = (shutdown.clone(), closing.clone());
            async move {
                shutdown.cancelled().await;
                if !delay.is_zero() {
                    tracing::info!(
                        ?delay,
                        "shutting down: not ready, serving for the shutdown delay"
                    );
                    tokio::time::sleep(delay).await;
                }
                closing.cancel();
            }
        });
        let admin = axum::serve(
            self.admin,
            tern_core::http_metrics::instrument(admin::router(admin_state), "admin"),
        )
        .with_graceful_shutdown(closing.clone().cancelled_owned())
        .into_future();
        let ops = tokio::spawn(tern_core::ops::serve(
            self.ops,
            runtime.health().not_ready_after(shutdown.clone()),
            closing.clone(),
        ));
        tracing::info!(addr = ?self.api.local_addr().ok(), "ingress listening");
        let api = axum::serve(self.api, router(state))
            .with_graceful_shutdown(closing.clone().cancelled_owned())
            .into_future();
        // When the listeners close, requests in flight may finish; a slow one (a
        // synchronous proxied call may take `proxy.sync_deadline`) must not hold the
        // process past its grace, after which the orchestrator kills it without
        // flushing anything.
        let grace = self.config.ingress.shutdown_grace.get();
        let grace_over = async {
            closing.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            (served, _) = async { tokio::join!(api, admin) } => served,
            () = grace_over => {
                tracing::warn!(?grace, "shutdown grace over; closing the requests still in flight");
                Ok(())
            }
        };
        closing.cancel();
        close_later.abort();
        let _ = ops.await;
        served.map_err(|source| StartError::Bind {
            addr: self.config.ingress.listen,
            source,
        })
    }
}

/// Binds and runs the ingress until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Ingress::bind(config).await?.run(shutdown).await
}
