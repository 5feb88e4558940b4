//! End-to-end test harness: real nats-server processes on ephemeral ports with
//! temporary stores, Tern services run in-process, and loopback HTTP receivers that
//! record what they get.
//!
//! Nothing here mocks NATS. Tests poll for conditions with deadlines ([`wait_until`])
//! instead of sleeping for fixed times.

pub mod load;
pub mod nats;
pub mod process;
pub mod receiver;
pub mod system;

use std::future::Future;
use std::time::{Duration, Instant};

pub use nats::{NatsCluster, NatsServer};
pub use receiver::{Received, Receiver};
pub use system::{Tenant, TernSystem};

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client for tests (installs the TLS provider reqwest is built without).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()
        .expect("test HTTP client")
}

/// A free TCP port on loopback (bound then released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
