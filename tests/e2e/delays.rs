//! Delayed tasks and cancellation: never early, all fire, durable across a scheduler
//! restart, and a cancel racing the firing leaves exactly one outcome.

use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::{Value, json};
use tern_tests::system::{ACME, GLOBEX};
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

async fn submit(system: &TernSystem, body: Value) -> String {
    system.submit_id(ACME.api_key, &body).await
}

fn rfc3339_in(ms: i64) -> String {
    tern_core::task_view::rfc3339(tern_core::now_ms() + ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_never_fire_early_and_all_fire() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let mut due = Vec::new();
    for i in 0..20u64 {
        let delay_ms = 1000 + 100 * i;
        let body = if i % 2 == 0 {
            json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": {"i": i}, "delay": format!("{delay_ms}ms")})
        } else {
            json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": {"i": i}, "not_before": rfc3339_in(delay_ms as i64)})
        };
        let before = tern_core::now_ms();
        let id = submit(&system, body).await;
        due.push((id, before + delay_ms as i64));
    }
    let (_, first) = system.task(ACME.api_key, &due[0].0).await;
    assert_eq!(first["status"], "scheduled");
    assert!(first["scheduled_for"].is_string());
    for (id, _) in &due {
        system.wait_for_status(ACME.api_key, id, "succeeded").await;
    }
    assert_eq!(receiver.count(), 20);
    for request in receiver.requests() {
        let i = request.json()["payload"]["i"].as_u64().unwrap() as usize;
        let (_, at) = &due[i];
        let task = request.json();
        assert_eq!(task["task_id"], due[i].0.as_str());
        // Received no earlier than due (the submit time was taken before the request,
        // so allow the clock's millisecond truncation).
        let received_ms = tern_core::now_ms() - request.at.elapsed().as_millis() as i64;
        assert!(
            received_ms + 2 >= *at,
            "task {i} fired {} ms early",
            at - received_ms
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_times_fire_at_once_and_bad_delays_are_422() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let id = submit(
        &system,
        json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": 1, "not_before": "2001-01-01T00:00:00Z"}),
    )
    .await;
    system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    for (extra, field) in [
        (json!({"delay": "366d"}), "delay"),
        (json!({"delay": "soon"}), "delay"),
        (json!({"not_before": "tomorrow"}), "not_before"),
        (json!({"not_before": "2999-01-01T00:00:00Z"}), "not_before"),
        (
            json!({"delay": "1s", "not_before": "2999-01-01T00:00:00Z"}),
            "not_before",
        ),
    ] {
        let mut body = json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": 1});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (code, error) = system
            .call(ACME.api_key, Method::POST, "/v1/tasks", Some(&body))
            .await;
        assert_eq!(code, 422, "{body}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_scheduled_and_queued_tasks() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;

    let scheduled = submit(
        &system,
        json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": 1, "delay": "2s"}),
    )
    .await;
    let (code, body) = system.cancel(ACME.api_key, &scheduled).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "cancelled");

    system.stop_worker().await;
    let queued = submit(
        &system,
        json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": 2}),
    )
    .await;
    let (code, _) = system.cancel(GLOBEX.api_key, &queued).await;
    assert_eq!(code, 404, "another tenant cannot cancel it");
    let (code, body) = system.cancel(ACME.api_key, &queued).await;
    assert_eq!(code, 200, "{body}");
    system.start_worker().await;

    // A task that ran cannot be cancelled.
    let done = submit(
        &system,
        json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": 3}),
    )
    .await;
    system
        .wait_for_status(ACME.api_key, &done, "succeeded")
        .await;
    let (code, body) = system.cancel(ACME.api_key, &done).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("succeeded")
    );
    let (code, _) = system
        .cancel(ACME.api_key, &uuid::Uuid::now_v7().to_string())
        .await;
    assert_eq!(code, 404);

    // Past the scheduled task's due time: neither cancelled task was delivered.
    wait_until(
        "the cancelled task's due time",
        Duration::from_secs(10),
        || async {
            let (_, task) = system.task(ACME.api_key, &scheduled).await;
            let due = task["scheduled_for"].as_str()?.to_string();
            (tern_core::task_view::rfc3339(tern_core::now_ms() - 1000) > due).then_some(())
        },
    )
    .await;
    assert_eq!(receiver.count(), 1, "only the third task was delivered");
    for id in [&scheduled, &queued] {
        let (_, task) = system.task(ACME.api_key, id).await;
        assert_eq!(task["status"], "cancelled");
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_the_firing_leaves_exactly_one_outcome() {
    const TASKS: usize = 40;
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let mut ids = Vec::new();
    for i in 0..TASKS {
        ids.push(submit(&system, json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": i, "delay": "1500ms"})).await);
    }
    // Cancel each around its due time, some before and some after it fires.
    let start = Instant::now();
    let mut answers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let at = Duration::from_millis(1200 + 20 * i as u64);
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let (code, _) = system.cancel(ACME.api_key, id).await;
        answers.push(code);
    }
    for (id, code) in ids.iter().zip(&answers) {
        match code {
            200 => {
                let (_, task) = system.task(ACME.api_key, id).await;
                assert_eq!(task["status"], "cancelled");
            }
            409 => {
                system.wait_for_status(ACME.api_key, id, "succeeded").await;
            }
            other => panic!("cancel answered {other}"),
        }
    }
    // Settle: every succeeded task delivered once, no cancelled task delivered.
    let delivered = receiver.distinct_ids();
    for (id, code) in ids.iter().zip(&answers) {
        assert_eq!(
            delivered.contains(id),
            *code == 409,
            "task {id}: cancel said {code}"
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restart_with_pending_delays_loses_none() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(submit(&system, json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": i, "delay": "2s"})).await);
    }
    system.stop_scheduler().await;
    let past_due = Instant::now() + Duration::from_millis(2500);
    wait_until("the delays to pass", Duration::from_secs(10), || async {
        (Instant::now() >= past_due).then_some(())
    })
    .await;
    assert_eq!(receiver.count(), 0, "nothing fires without a scheduler");
    system.start_scheduler().await;
    for id in &ids {
        system.wait_for_status(ACME.api_key, id, "succeeded").await;
    }
    assert_eq!(receiver.distinct_ids().len(), 30);
    system.stop().await;
}
