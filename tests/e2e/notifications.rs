//! Completion notifications: a signed event on every terminal state, with an
//! `event_id` that stays the same across the event's own retries.

use axum::http::StatusCode;
use serde_json::{Value, json};
use tern_core::signing::{SigningSecret, Verifier};
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

async fn submit(system: &TernSystem, body: Value) -> Value {
    system.accepted(ACME.api_key, &body).await
}

async fn events(notified: &Receiver, n: usize) -> Vec<tern_tests::Received> {
    wait_until(
        &format!("{n} notification(s)"),
        std::time::Duration::from_secs(30),
        || async {
            let requests = notified.requests();
            (requests.len() >= n).then_some(requests)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_states_send_signed_events() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let ok = Receiver::start().await;
    let failing = Receiver::start_with(|_, _| StatusCode::INTERNAL_SERVER_ERROR).await;
    let gone = Receiver::start_with(|_, _| StatusCode::GONE).await;
    let notified = Receiver::start().await;
    let verifier = Verifier::new(vec![SigningSecret::parse(ACME.secret).unwrap()]);

    let cases = [
        (ok.url("/"), "task.succeeded", "succeeded"),
        (failing.url("/"), "task.dead", "dead"),
        (gone.url("/"), "task.failed", "failed"),
    ];
    for (i, (url, kind, status)) in cases.iter().enumerate() {
        let task = submit(
            &system,
            json!({"queue": "q", "webhook_url": url, "payload": i, "notify_url": notified.url("/events"),
                   "retry": {"max_retries": 0}}),
        )
        .await;
        let id = task["task_id"].as_str().unwrap();
        system.wait_for_status(ACME.api_key, id, status).await;
        let event = events(&notified, i + 1).await[i].clone();
        verifier
            .verify(&event.headers, &event.body)
            .expect("signed event");
        let body = event.json();
        assert_eq!(body["type"], *kind, "{body}");
        assert_eq!(body["spec_version"], "1");
        assert!(body["occurred_at"].is_string());
        assert_eq!(body["data"]["task_id"], id);
        assert_eq!(body["data"]["status"], *status);
        assert_eq!(event.header("webhook-id"), body["event_id"].as_str());
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_notification_target_is_retried_with_the_same_event_id() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let ok = Receiver::start().await;
    let notified = Receiver::start_with(|_, index| {
        if index < 2 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let task = submit(
        &system,
        json!({"queue": "q", "webhook_url": ok.url("/"), "payload": 1, "notify_url": notified.url("/e")}),
    )
    .await;
    let id = task["task_id"].as_str().unwrap();
    system.wait_for_status(ACME.api_key, id, "succeeded").await;
    let attempts = events(&notified, 3).await;
    let event_ids: Vec<_> = attempts
        .iter()
        .map(|r| r.json()["event_id"].clone())
        .collect();
    assert!(
        event_ids.iter().all(|e| *e == event_ids[0]),
        "{event_ids:?}"
    );
    let webhook_ids: Vec<_> = attempts
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert!(webhook_ids.iter().all(|w| *w == webhook_ids[0]));
    // The event is a task of its own, visible with its attempts.
    let event_id = event_ids[0].as_str().unwrap();
    let event_task = system
        .wait_for_status(ACME.api_key, event_id, "succeeded")
        .await;
    assert_eq!(event_task["attempts"].as_array().unwrap().len(), 3);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_outcomes_are_announced_too() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let provider = Receiver::start_with(|_, _| StatusCode::ACCEPTED).await;
    let notified = Receiver::start().await;
    let resolved = submit(
        &system,
        json!({"queue": "ai", "webhook_url": provider.url("/"), "payload": 1, "notify_url": notified.url("/e"),
               "await_callback": {"timeout": "1h"}}),
    )
    .await;
    let resolved_id = resolved["task_id"].as_str().unwrap();
    system
        .wait_for_status(ACME.api_key, resolved_id, "waiting")
        .await;
    let response = tern_tests::http()
        .post(resolved["callback_url"].as_str().unwrap())
        .json(&json!({"answer": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let event = events(&notified, 1).await[0].json();
    assert_eq!(event["type"], "task.succeeded");
    assert_eq!(event["data"]["task_id"], resolved_id);

    let expired = submit(
        &system,
        json!({"queue": "ai", "webhook_url": provider.url("/"), "payload": 2, "notify_url": notified.url("/e"),
               "await_callback": {"timeout": "1s"}}),
    )
    .await;
    let expired_id = expired["task_id"].as_str().unwrap();
    system
        .wait_for_status(ACME.api_key, expired_id, "failed")
        .await;
    let event = events(&notified, 2).await[1].json();
    assert_eq!(event["type"], "task.failed");
    assert_eq!(event["data"]["last_error"], "callback_timeout");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_is_announced() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let never = Receiver::start().await;
    let notified = Receiver::start().await;
    let task = submit(
        &system,
        json!({"queue": "q", "webhook_url": never.url("/"), "payload": 1, "notify_url": notified.url("/e"), "delay": "1h"}),
    )
    .await;
    let id = task["task_id"].as_str().unwrap();
    let (code, _) = system.cancel(ACME.api_key, id).await;
    assert_eq!(code, 200);
    let event = events(&notified, 1).await[0].json();
    assert_eq!(event["type"], "task.cancelled");
    assert_eq!(event["data"]["task_id"], id);
    assert_eq!(event["data"]["status"], "cancelled");
    assert_eq!(never.count(), 0);
    system.stop().await;
}
