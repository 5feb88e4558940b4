//! The operations listener every service exposes: `/healthz`, `/readyz`, `/metrics`.
//!
//! It is separate from public listeners so probes and scrapes never compete with, or
//! are exposed alongside, client traffic.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::topology::Topology;

/// The process-wide Prometheus recorder (installed once, shared by in-process services).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Another recorder may already be global (tests); ours then just renders empty.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Health {
    client: async_nats::Client,
    topology: Topology,
    stopping: Option<CancellationToken>,
}

impl Health {
    /// Readiness = NATS connected and the topology present.
    pub fn new(client: async_nats::Client, topology: Topology) -> Self {
        Self {
            client,
            topology,
            stopping: None,
        }
    }

    /// Also not ready once `stopping` fires (a service that goes on serving for a
    /// while after SIGTERM tells load balancers to stop sending first).
    pub fn not_ready_after(mut self, stopping: CancellationToken) -> Self {
        self.stopping = Some(stopping);
        self
    }

    async fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.as_ref().is_some_and(|s| s.is_cancelled()) {
            return Err("shutting down");
        }
        if !crate::nats::is_connected(&self.client) {
            return Err("NATS disconnected");
        }
        match tokio::time::timeout(Duration::from_secs(2), self.topology.is_present()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("JetStream topology missing"),
            Err(_) => Err("JetStream not answering"),
        }
    }
}

/// The ops router; mountable into another router when a service prefers one port.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    match health.ready().await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

/// Serves the ops endpoints until `shutdown` fires.
pub async fn serve(listener: TcpListener, health: Health, shutdown: CancellationToken) {
    let app = router(health);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "ops listener failed");
    }
}
