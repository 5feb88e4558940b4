//! The callback resolver: the public endpoint third parties call back on.
//!
//! For now it only joins the deployment (NATS, topology) and serves its health and
//! metrics endpoints; callback resolution arrives with await-callback tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use tern_core::config::Config;
use tern_core::service::{Runtime, StartError, bind};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound resolver, ready to run.
pub struct Resolver {
    config: Arc<Config>,
    ops: TcpListener,
}

impl Resolver {
    /// Binds the ops listener.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let ops = bind(config.resolver.ops_listen).await?;
        Ok(Self {
            config: Arc::new(config),
            ops,
        })
    }

    /// Address of the ops endpoints.
    pub fn ops_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// Serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let runtime = Runtime::start(&self.config, "tern-callback-resolver", &shutdown).await?;
        tern_core::ops::serve(self.ops, runtime.health(), shutdown).await;
        Ok(())
    }
}

/// Binds and runs the resolver until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Resolver::bind(config).await?.run(shutdown).await
}
