//! Idempotency-Key: replay, conflict, and concurrent duplicates.

use std::collections::HashSet;

use serde_json::{Value, json};
use tern_tests::system::{ACME, GLOBEX};
use tern_tests::{NatsServer, Receiver, TernSystem};

async fn post(system: &TernSystem, api_key: &str, key: &str, body: &Value) -> (u16, bool, Value) {
    let response = system
        .client()
        .post(format!("{}/v1/tasks", system.api_url))
        .bearer_auth(api_key)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (status, replayed, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_same_body_replays_and_different_body_conflicts() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let body = json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": {"n": 1}});

    let (status, replayed, first) = post(&system, ACME.api_key, "order-1", &body).await;
    assert_eq!((status, replayed), (202, false));
    let (status, replayed, second) = post(&system, ACME.api_key, "order-1", &body).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(first, second, "a replay returns the same response");

    let other = json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": {"n": 2}});
    let (status, _, conflict) = post(&system, ACME.api_key, "order-1", &other).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"]["code"], "idempotency_key_reused");

    // Keys are per tenant: another tenant's identical key is a new task.
    let (status, replayed, theirs) = post(&system, GLOBEX.api_key, "order-1", &body).await;
    assert_eq!((status, replayed), (202, false));
    assert_ne!(theirs["task_id"], first["task_id"]);

    let id = first["task_id"].as_str().unwrap();
    system.wait_for_status(ACME.api_key, id, "succeeded").await;
    let theirs_id = theirs["task_id"].as_str().unwrap();
    system
        .wait_for_status(GLOBEX.api_key, theirs_id, "succeeded")
        .await;
    assert_eq!(
        receiver.count(),
        2,
        "one delivery per task, none for the replay"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_identical_requests_create_one_task() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let body = json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": {"n": 1}});

    let results = futures::future::join_all(
        (0..50).map(|_| post(&system, ACME.api_key, "concurrent-1", &body)),
    )
    .await;
    let ids: HashSet<String> = results
        .iter()
        .map(|(status, _, json)| {
            assert_eq!(*status, 202, "{json}");
            json["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "all 50 answers name the same task");
    assert_eq!(
        results.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );

    let id = ids.into_iter().next().unwrap();
    system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    // Another task after it proves the worker moved past anything that could duplicate.
    let (_, _, later) = post(&system, ACME.api_key, "after", &body).await;
    system
        .wait_for_status(
            ACME.api_key,
            later["task_id"].as_str().unwrap(),
            "succeeded",
        )
        .await;
    assert_eq!(receiver.count(), 2);
    system.stop().await;
}
