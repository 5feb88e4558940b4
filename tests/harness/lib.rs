//! End-to-end test harness: real nats-server processes on ephemeral ports with
//! temporary stores, Tern services run in-process, and loopback HTTP receivers that
//! record what they get.
//!
//! Nothing here mocks NATS. Tests poll for conditions with deadlines ([`wait_until`])
//! instead of sleeping for fixed times.

pub mod collector;
pub mod load;
pub mod nats;
pub mod process;
pub mod prometheus;
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

/// A free TCP port on loopback, for a listener that must know its port before it
/// binds (its URL goes into configuration).
///
/// Chosen below Linux's ephemeral range (32768-60999): a port the kernel hands out
/// for port 0 is also what every outgoing connection of the parallel tests draws
/// from, so one of them could take it between this check and the real bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each test process starts at a random offset (processes started together have
    // neighbouring pids, so the pid would make them walk the same ports) and walks on.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static START: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = *START.get_or_init(|| {
        let random = uuid::Uuid::new_v4().as_u128();
        (random % u128::from(SPAN)) as u16
    });
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) % SPAN;
        let port = LOW + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}
