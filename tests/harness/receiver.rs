//! A loopback HTTP receiver that records every request and answers as told.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request method.
    pub method: axum::http::Method,
    /// Request path.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Respond = dyn Fn(&Received, usize) -> Response + Send + Sync;

struct Shared {
    requests: Mutex<Vec<Received>>,
    respond: Box<Respond>,
    delay: Duration,
    /// Held requests wait for this before they are answered (see [`Receiver::start_holding`]).
    release: Option<CancellationToken>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub async fn start() -> Self {
        Self::start_with(|_, _| StatusCode::OK).await
    }

    /// A receiver answering `respond(request, index of this request)`.
    pub async fn start_with(
        respond: impl Fn(&Received, usize) -> StatusCode + Send + Sync + 'static,
    ) -> Self {
        Self::start_full(Duration::ZERO, move |r, i| respond(r, i).into_response()).await
    }

    /// A receiver answering 500 until the returned flag is set, then 200 (for tasks
    /// that must die first and succeed when re-driven).
    pub async fn start_failing_until_healed() -> (Self, Arc<AtomicBool>) {
        let healed = Arc::new(AtomicBool::new(false));
        let flag = healed.clone();
        let receiver = Self::start_with(move |_, _| {
            if flag.load(Ordering::SeqCst) {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        })
        .await;
        (receiver, healed)
    }

    /// A receiver that holds every request for `delay`, then answers 200.
    pub async fn start_slow(delay: Duration) -> Self {
        Self::start_full(delay, |_, _| StatusCode::OK.into_response()).await
    }

    /// A receiver that holds every request until the returned token is cancelled,
    /// then answers 200 (to this and every later request, at once).
    pub async fn start_holding() -> (Self, CancellationToken) {
        let release = CancellationToken::new();
        let receiver = Self::start_inner(
            Duration::ZERO,
            Some(release.clone()),
            Box::new(|_, _| StatusCode::OK.into_response()),
        )
        .await;
        (receiver, release)
    }

    /// A receiver that waits `delay`, then answers with a full response.
    pub async fn start_full(
        delay: Duration,
        respond: impl Fn(&Received, usize) -> Response + Send + Sync + 'static,
    ) -> Self {
        Self::start_inner(delay, None, Box::new(respond)).await
    }

    async fn start_inner(
        delay: Duration,
        release: Option<CancellationToken>,
        respond: Box<Respond>,
    ) -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            respond,
            delay,
            release,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let app = Router::new().fallback(record).with_state(shared.clone());
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });
        Self { addr, shared, stop }
    }

    /// URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().expect("lock").clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().expect("lock").len()
    }

    /// Requests being held right now (slow and holding receivers).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests held at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The distinct `webhook-id`s received.
    pub fn distinct_ids(&self) -> std::collections::HashSet<String> {
        self.requests()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_string))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received {
        method,
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    };
    let index = {
        let mut requests = shared.requests.lock().expect("lock");
        requests.push(received.clone());
        requests.len() - 1
    };
    let held = match &shared.release {
        Some(release) => !release.is_cancelled(),
        None => !shared.delay.is_zero(),
    };
    if held {
        // The caller may give up (timeout) and drop this future mid-sleep: count the
        // request out in a guard so in_flight stays right either way.
        struct Holding<'a>(&'a AtomicUsize);
        impl Drop for Holding<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _holding = Holding(&shared.in_flight);
        match &shared.release {
            Some(release) => release.cancelled().await,
            None => tokio::time::sleep(shared.delay).await,
        }
    }
    (shared.respond)(&received, index)
}
