//! The scheduler: decides when and in what order accepted work runs.
//!
//! It forwards accepted tasks from INTAKE to READY in fair order (tiers by weight,
//! tenants in turn), releases delayed tasks when they fall due, fires recurring
//! schedules, and fails await-callback tasks whose deadline passed. It also keeps the
//! backlog gauges (consumer pending counts, dead letters) up to date.

pub mod cron;
pub mod delayed;
pub mod fair_queue;
pub mod forward;
pub mod intake;
mod pull;
pub mod ready_credit;
pub mod timeouts;

use std::net::SocketAddr;
use std::sync::Arc;

use tern_core::config::Config;
use tern_core::service::{Runtime, StartError, bind};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound scheduler, ready to run.
pub struct Scheduler {
    config: Arc<Config>,
    ops: TcpListener,
}

impl Scheduler {
    /// Binds the ops listener.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let ops = bind(config.scheduler.ops_listen).await?;
        Ok(Self {
            config: Arc::new(config),
            ops,
        })
    }

    /// Address of the ops endpoints.
    pub fn ops_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// Runs until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let tenants = tern_core::tenants::Tenants::from_config(&self.config.tenants)
            .map_err(StartError::Config)?;
        let runtime = Runtime::start(&self.config, "tern-scheduler", &shutdown).await?;
        let ops = tokio::spawn(tern_core::ops::serve(
            self.ops,
            runtime.health(),
            shutdown.clone(),
        ));
        let gauges = tokio::spawn(tern_core::backlog_gauges::run(
            runtime.topology.js.clone(),
            self.config.telemetry.gauge_interval.get(),
            shutdown.clone(),
        ));
        tracing::info!("scheduler forwarding intake to ready");
        let timers = timeouts::run(
            runtime.topology.js.clone(),
            tern_core::task_store::TaskStore::new(runtime.topology.tasks.clone()),
            tern_core::callbacks::Callbacks::new(
                runtime.topology.callbacks.clone(),
                runtime.topology.js.clone(),
            ),
            shutdown.clone(),
        );
        let releasing = delayed::run(
            runtime.topology.js.clone(),
            tern_core::task_store::TaskStore::new(runtime.topology.tasks.clone()),
            shutdown.clone(),
        );
        let tenant_tiers: Vec<(String, tern_core::tier::Tier)> = self
            .config
            .tenants
            .iter()
            .map(|tenant| (tenant.id.clone(), tenant.tier))
            .collect();
        let tenant_ids: Vec<String> = tenant_tiers.iter().map(|(id, _)| id.clone()).collect();
        runtime
            .topology
            .ensure_intake_consumers(&tenant_ids)
            .await
            .map_err(|e| StartError::Failed(e.to_string()))?;
        let queues =
            tern_core::queues::Queues::follow(runtime.topology.queues.clone(), shutdown.clone());
        let firing = cron::run(
            cron::Firing {
                schedules: runtime.topology.schedules.clone(),
                acceptor: tern_core::accept::Acceptor::new(&runtime.topology, &self.config),
                rules: tern_core::task_request::TaskRules::from_config(&self.config),
                queues: queues.clone(),
                tenants: Arc::new(tenants),
            },
            shutdown.clone(),
        );
        let forwarding = forward::run(
            runtime.topology.js.clone(),
            tern_core::task_store::TaskStore::new(runtime.topology.tasks.clone()),
            tenant_tiers,
            queues,
            self.config.scheduler.clone(),
            shutdown.clone(),
        );
        // Either loop failing stops the other and the service (the orchestrator
        // restarts it); on shutdown both finish what they have in flight.
        let stop_on_error = |r: Result<(), forward::ForwardError>| {
            if r.is_err() {
                shutdown.cancel();
            }
            r
        };
        let (forwarded, timed, released, ()) = tokio::join!(
            async { stop_on_error(forwarding.await) },
            async { stop_on_error(timers.await) },
            async { stop_on_error(releasing.await) },
            firing
        );
        let result = forwarded.and(timed).and(released);
        shutdown.cancel();
        runtime.flush().await;
        let _ = gauges.await;
        let _ = ops.await;
        result.map_err(|e| StartError::Failed(e.to_string()))
    }
}

/// Binds and runs the scheduler until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Scheduler::bind(config).await?.run(shutdown).await
}
