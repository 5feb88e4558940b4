//! The callback resolver: the public endpoint third parties call back on.
//!
//! Providers POST their answer to `/v1/callbacks/{callbackId}`; the resolver
//! resolves the waiting task exactly once and stores the body as its result. The
//! listener also serves its OpenAPI document at `/openapi.json`.

pub mod openapi;
pub mod rate_limit;
pub mod resolve;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;

use resolve::CallbackError;
use tern_core::config::Config;
use tern_core::service::{Runtime, StartError, bind};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound resolver, ready to run.
pub struct Resolver {
    config: Arc<Config>,
    public: TcpListener,
    ops: TcpListener,
}

impl Resolver {
    /// Binds the public and ops listeners.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let public = bind(config.resolver.listen).await?;
        let ops = bind(config.resolver.ops_listen).await?;
        Ok(Self {
            config: Arc::new(config),
            public,
            ops,
        })
    }

    /// Address of the public callback endpoint.
    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.local_addr()
    }

    /// Address of the ops endpoints.
    pub fn ops_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// Serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let runtime = Runtime::start(&self.config, "tern-callback-resolver", &shutdown).await?;
        let resolver = &self.config.resolver;
        let state = Arc::new(resolve::Shared {
            config: resolver.clone(),
            tasks: tern_core::task_store::TaskStore::new(runtime.topology.tasks.clone()),
            callbacks: tern_core::callbacks::Callbacks::new(
                runtime.topology.callbacks.clone(),
                runtime.topology.js.clone(),
            ),
            limiter: rate_limit::RateLimiter::new(resolver.rate_limit, resolver.rate_window.get()),
            js: runtime.topology.js.clone(),
        });
        let app = openapi::api()
            .split_for_parts()
            .0
            .fallback(|| async { CallbackError::response(StatusCode::NOT_FOUND, "Not found") })
            .method_not_allowed_fallback(|| async {
                CallbackError::response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method not allowed: callbacks are POSTed (GET /openapi.json describes them)",
                )
            })
            .with_state(state);
        let app = tern_core::http_metrics::instrument(app, "callbacks");
        let ops = tokio::spawn(tern_core::ops::serve(
            self.ops,
            runtime.health(),
            shutdown.clone(),
        ));
        let served = axum::serve(
            self.public,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
        let _ = ops.await;
        served.map_err(|e| StartError::Failed(format!("callback listener: {e}")))
    }
}

/// Binds and runs the resolver until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Resolver::bind(config).await?.run(shutdown).await
}
