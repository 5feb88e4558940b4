//! What every service does around its own work: read configuration, set up logging,
//! connect to NATS, make sure the topology exists, serve ops endpoints, and map
//! signals to the shutdown token. Binaries are then a few lines of `main.rs`.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ops::Health;
use crate::topology::{Topology, TopologyError};

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// NATS could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
    /// Streams or buckets could not be created.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A listener could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address that was refused.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The service's main loop failed after starting.
    #[error("{0}")]
    Failed(String),
}

/// Binds a TCP listener with a useful error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// The NATS side every service shares once started.
#[derive(Clone)]
pub struct Runtime {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Streams, consumers and buckets.
    pub topology: Topology,
}

impl Runtime {
    /// Connects and ensures the topology.
    pub async fn start(
        config: &Config,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Self, StartError> {
        // Metrics recorded before the recorder exists would be lost.
        crate::ops::metrics_handle();
        let client = crate::nats::connect(&config.nats, name, shutdown).await?;
        let js = crate::nats::jetstream(client.clone());
        let topology = Topology::ensure(js, config).await?;
        Ok(Self { client, topology })
    }

    /// Sends whatever the client still buffers (acks and naks are published without
    /// waiting) before the process exits, so a message handed back on shutdown is not
    /// left to the ack wait; bounded, as NATS may be gone.
    pub async fn flush(&self) {
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "NATS flush on shutdown failed"),
            Err(_) => tracing::warn!("NATS flush on shutdown timed out"),
        }
    }

    /// The readiness view of this runtime.
    pub fn health(&self) -> Health {
        Health::new(self.client.clone(), self.topology.clone())
    }
}

/// The configuration path: `--config <path>` or `TERN_CONFIG`, else none (defaults + env).
pub fn config_path_from_args() -> Result<Option<PathBuf>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(std::env::var_os("TERN_CONFIG").map(PathBuf::from)),
        [flag, path] if flag == "--config" || flag == "-c" => Ok(Some(PathBuf::from(path))),
        [arg] if arg.starts_with("--config=") => Ok(Some(PathBuf::from(&arg["--config=".len()..]))),
        [arg] if arg == "--help" || arg == "-h" => Err("usage: <binary> [--config <file.toml>]\n\
             Configuration: the TOML file plus TERN_<SECTION>__<KEY> environment overrides."
            .to_string()),
        other => Err(format!(
            "unexpected arguments {other:?}; usage: [--config <file.toml>]"
        )),
    }
}

/// The body of every binary's `main`: config, logging, runtime, signals, run, exit code.
///
/// The Tokio runtime is built here rather than by `#[tokio::main]` so that its
/// thread count comes from configuration (`runtime.worker_threads`): on a small
/// machine shared by several services, one thread each avoids cross-thread wake-ups.
pub fn main<F, Fut, E>(name: &'static str, run: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let config = match config_path_from_args()
        .and_then(|path| Config::load(path.as_deref()).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = crate::telemetry::init(&config.log, &config.telemetry, name);
    let mut builder = if config.runtime.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.runtime.worker_threads > 1 {
        builder.worker_threads(config.runtime.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            telemetry.shutdown();
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        tracing::info!(service = name, version = crate::VERSION, config = %config.redacted(), "starting");
        let shutdown = crate::shutdown::on_signals();
        match run(config, shutdown).await {
            Ok(()) => {
                tracing::info!(service = name, "stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(service = name, error = %e, "failed");
                ExitCode::FAILURE
            }
        }
    });
    // After the runtime stopped, so every span has ended and is in the export buffer.
    drop(runtime);
    telemetry.shutdown();
    code
}
