//! Submitting many tasks the way a careful client does under faults: each logical
//! task has its own `Idempotency-Key`, and a failed submission is retried with the
//! same key until it is accepted, so retries never create a second task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Task ids accepted (202) per logical task index.
pub type Accepted = Arc<Mutex<HashMap<usize, String>>>;

/// Submits tasks `0..count` to `api_url` with `clients` concurrent clients; returns
/// when all are accepted (panics if one is not accepted within `deadline`).
pub async fn submit_all(
    api_url: &str,
    api_key: &str,
    count: usize,
    clients: usize,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
    accepted: Accepted,
    deadline: Duration,
) {
    let body = Arc::new(body);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + deadline;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (body, next, accepted) = (body.clone(), next.clone(), accepted.clone());
            let url = format!("{api_url}/v1/tasks");
            let key = api_key.to_string();
            tokio::spawn(async move {
                let client = crate::http();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= count {
                        return;
                    }
                    let payload = body(i);
                    loop {
                        let response = client
                            .post(&url)
                            .bearer_auth(&key)
                            .header("idempotency-key", format!("load-{i}"))
                            .timeout(Duration::from_secs(5))
                            .json(&payload)
                            .send()
                            .await;
                        if let Ok(r) = response
                            && r.status().as_u16() == 202
                            && let Ok(v) = r.json::<Value>().await
                            && let Some(id) = v["task_id"].as_str()
                        {
                            accepted.lock().await.insert(i, id.to_string());
                            break;
                        }
                        assert!(Instant::now() < until, "task {i} was never accepted");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("submitting client");
    }
}

/// A webhook body for task `i` to `url`.
pub fn webhook(url: &str, i: usize) -> Value {
    json!({"queue": "load", "webhook_url": url, "payload": {"i": i}})
}

/// `GET {api_url}/v1/tasks/{id}` as JSON; none when the call or its decoding fails.
pub async fn fetch_task(
    client: &reqwest::Client,
    api_url: &str,
    api_key: &str,
    id: &str,
) -> Option<Value> {
    client
        .get(format!("{api_url}/v1/tasks/{id}"))
        .bearer_auth(api_key)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Waits until every task in `ids` reports `status` (polling the status API in
/// rounds), panicking after `timeout` with the first few stragglers.
pub async fn wait_all_status(
    api_url: &str,
    api_key: &str,
    ids: &[String],
    status: &str,
    timeout: Duration,
) {
    let client = crate::http();
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<String> = ids.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for chunk in pending.chunks(64) {
            let results = futures::future::join_all(chunk.iter().map(|id| {
                let client = client.clone();
                async move {
                    let body = fetch_task(&client, api_url, api_key, id).await?;
                    Some(body["status"].as_str()?.to_string())
                }
            }))
            .await;
            for (id, got) in chunk.iter().zip(results) {
                if got.as_deref() != Some(status) {
                    still.push(id.clone());
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} tasks never became {status}, e.g. {:?}",
            pending.len(),
            &pending[..pending.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
