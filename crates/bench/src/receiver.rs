//! The benchmark's webhook receiver: notes when each task id arrives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// First arrival of each task id.
    pub first: HashMap<String, Instant>,
    /// Requests for a task id that had already been answered 2xx.
    pub duplicates: u64,
    /// Requests answered with a failure on purpose.
    pub failed: u64,
    /// Attempts per task id (1 = delivered at the first try).
    pub attempts: HashMap<String, u32>,
    /// For delayed tasks: first arrival minus the due time, in ms (negative = early).
    pub lateness_ms: Vec<i64>,
}

struct Shared {
    seen: Mutex<Seen>,
    fail_rate: f64,
    delay: std::time::Duration,
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Binds `port` on loopback (0 = any) and serves on a thread of its own; every
    /// answer waits `delay` first (a slow receiver, as real endpoints are).
    ///
    /// The receiver is another party than the submitting clients: on the clients'
    /// thread, its work would queue in front of their responses and count in the
    /// accept latency the bench reports.
    pub fn start(port: u16, fail_rate: f64, delay: std::time::Duration) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            seen: Mutex::new(Seen::default()),
            fail_rate,
            delay,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let serving = shared.clone();
        std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, serving).await,
                        Err(e) => eprintln!("tern-bench: receiver cannot listen: {e}"),
                    }
                })
            })?;
        Ok(Self { addr, shared })
    }

    /// Runs `f` over what was seen so far.
    pub fn with_seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        let seen = self.shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        f(&seen)
    }
}

/// Pulls the number after `"due_ms":` out of the body, if present.
fn due_ms(body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"due_ms\":")? + "\"due_ms\":".len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Pulls `"task_id":"…"` out of the envelope without parsing the whole body.
fn task_id(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"task_id\":\"")? + "\"task_id\":\"".len();
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_string())
}

/// Serves every connection on `listener` with plain hyper: the receiver stands in
/// for the endpoints, and a router's per-request work would be charged to Tern's
/// machine share.
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                eprintln!("tern-bench: receiver cannot accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    let status = match request.into_body().collect().await {
                        Ok(body) => receive(&shared, body.to_bytes()).await,
                        Err(_) => StatusCode::BAD_REQUEST,
                    };
                    let mut response = hyper::Response::new(Empty::<Bytes>::new());
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn receive(shared: &Shared, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let Some(id) = task_id(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    let fail = shared.fail_rate > 0.0 && rand::rng().random_bool(shared.fail_rate.min(1.0));
    let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
    *seen.attempts.entry(id.clone()).or_insert(0) += 1;
    if fail {
        seen.failed += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    match seen.first.entry(id) {
        std::collections::hash_map::Entry::Occupied(_) => seen.duplicates += 1,
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(now);
            if let Some(due) = due_ms(&body) {
                seen.lateness_ms.push(tern_core::now_ms() - due);
            }
        }
    }
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_task_id() {
        assert_eq!(
            super::task_id(br#"{"task_id":"abc-1","queue":"q"}"#).as_deref(),
            Some("abc-1")
        );
        assert_eq!(super::task_id(b"{}"), None);
    }
}
