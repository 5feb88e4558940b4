//! A webhook task end to end: accepted, delivered once, signed, reported.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tern_core::signing::{SigningSecret, Verifier};
use tern_core::tier::Tier;
use tern_tests::system::{ACME, GLOBEX};
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_task_is_delivered_once_signed_and_reported() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;

    let payload = json!({"order": 42, "items": ["a", "b"], "nested": {"x": null}});
    let response = system
        .submit(
            ACME.api_key,
            &json!({"queue": "orders", "webhook_url": receiver.url("/hook"), "payload": payload}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("Location header");
    let accepted: serde_json::Value = response.json().await.unwrap();
    let task_id = accepted["task_id"].as_str().unwrap().to_string();
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["status_url"], location.as_str());
    assert!(location.ends_with(&format!("/v1/tasks/{task_id}")));
    let uuid = uuid::Uuid::parse_str(&task_id).unwrap();
    assert_eq!(uuid.get_version_num(), 7, "task ids are UUIDv7");

    let done = system
        .wait_for_status(ACME.api_key, &task_id, "succeeded")
        .await;
    assert_eq!(done["queue"], "orders");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(done["attempts"][0]["number"], 1);
    assert_eq!(done["attempts"][0]["status_code"], 200);
    assert!(done["attempts"][0]["duration_ms"].is_u64());
    assert!(done["attempts"][0]["started_at"].is_string());
    assert_eq!(done["result"]["statusCode"], 200);
    assert!(done["created_at"].as_str().unwrap() <= done["updated_at"].as_str().unwrap());

    // Exactly one delivery, even after giving duplicates a chance to show up.
    let status_url = location.clone();
    let _ = system.client().get(&status_url).send().await;
    assert_eq!(receiver.count(), 1);
    let delivery = &receiver.requests()[0];
    assert_eq!(delivery.path, "/hook");
    let body = delivery.json();
    assert_eq!(body["task_id"], task_id.as_str());
    assert_eq!(body["queue"], "orders");
    assert_eq!(body["payload"], payload);
    assert_eq!(body["attempt"], 1);
    assert_eq!(delivery.header("webhook-id"), Some(task_id.as_str()));
    assert_eq!(delivery.header("content-type"), Some("application/json"));
    assert!(
        delivery
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("Tern/"))
    );

    let verifier = Verifier::new(vec![SigningSecret::parse(ACME.secret).unwrap()]);
    verifier
        .verify(&delivery.headers, &delivery.body)
        .expect("signature verifies with the tenant's secret");
    let other = Verifier::new(vec![SigningSecret::parse(GLOBEX.secret).unwrap()]);
    assert!(other.verify(&delivery.headers, &delivery.body).is_err());

    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_tasks() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let response = system
        .submit(
            ACME.api_key,
            &json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": 1}),
        )
        .await;
    let task_id = response.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = system.task(GLOBEX.api_key, &task_id).await;
    assert_eq!(code, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (code, _) = system.task(ACME.api_key, &task_id).await;
    assert_eq!(code, 200);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_accepted_while_no_worker_runs_is_delivered_when_one_starts() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    system.stop_worker().await;

    let mut ids = Vec::new();
    for i in 0..5 {
        let response = system
            .submit(
                ACME.api_key,
                &json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": {"i": i}}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids.push(
            response.json::<serde_json::Value>().await.unwrap()["task_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Nothing can be delivered without a worker; the tasks wait, queued.
    for id in &ids {
        let (_, body) = system.task(ACME.api_key, id).await;
        assert_eq!(body["status"], "queued");
    }
    assert_eq!(receiver.count(), 0);

    system.start_worker().await;
    for id in &ids {
        system.wait_for_status(ACME.api_key, id, "succeeded").await;
    }
    assert_eq!(receiver.count(), 5);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_is_retried_with_a_stable_webhook_id() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    // Fails twice, then accepts.
    let receiver = Receiver::start_with(|_, index| {
        if index < 2 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    })
    .await;
    let response = system
        .submit(
            ACME.api_key,
            &json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": "x"}),
        )
        .await;
    let task_id = response.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = system
        .wait_for_status(ACME.api_key, &task_id, "succeeded")
        .await;
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[1]["status_code"], 500);
    assert_eq!(attempts[2]["status_code"], 200);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(request.header("webhook-id"), Some(task_id.as_str()));
        assert_eq!(request.json()["attempt"], i as u64 + 1);
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_task_is_dead_lettered_with_its_history() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start_with(|_, _| StatusCode::BAD_GATEWAY).await;
    let response = system
        .submit(
            ACME.api_key,
            &json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": "x"}),
        )
        .await;
    let task_id = response.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dead = system.wait_for_status(ACME.api_key, &task_id, "dead").await;
    // max_retries = 3 in the test config: 1 attempt + 3 retries.
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 4);
    assert!(dead["last_error"].as_str().unwrap().contains("HTTP 502"));
    assert_eq!(receiver.count(), 4);

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(tern_core::topology::DLQ_STREAM)
        .await
        .unwrap();
    let subject = tern_core::topology::dlq_subject(ACME.id, "q", &task_id);
    let message = wait_until("dead letter", Duration::from_secs(10), || {
        let stream = stream.clone();
        let subject = subject.clone();
        async move { stream.get_last_raw_message_by_subject(&subject).await.ok() }
    })
    .await;
    let letter =
        <tern_proto::v1::DeadLetter as tern_proto::Message>::decode(message.payload).unwrap();
    assert_eq!(letter.record.unwrap().attempts.len(), 4);
    assert_eq!(letter.task.unwrap().id, task_id);
    system.stop().await;
}

/// Messages on `stream` right now.
async fn messages_on(nats: &NatsServer, stream: &str) -> u64 {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = tern_core::nats::jetstream(client);
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// The `Nats-Msg-Id` of the message on `subject` in `stream` (None without one).
async fn message_id_on(nats: &NatsServer, stream: &str, subject: &str) -> Option<String> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = tern_core::nats::jetstream(client);
    let stream = js.get_stream(stream).await.unwrap();
    let message = stream
        .direct_get_last_for_subject(subject)
        .await
        .unwrap_or_else(|e| panic!("no message on {subject}: {e}"));
    message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|id| id.as_str().to_string())
}

/// A plain webhook task has no record until a worker claims it: before that it is
/// read and cancelled through its message, on INTAKE (no scheduler) and on READY (no
/// worker), and stays private to its tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_tasks_are_read_and_cancelled_where_they_wait() {
    let nats = NatsServer::start().await;
    // READY may hold all four while no worker pulls (it holds 2 by default).
    let mut system = TernSystem::start_with(&nats, |config| {
        config.scheduler.ready_backlog_min = 10;
    })
    .await;
    let receiver = Receiver::start().await;
    system.stop_worker().await;
    system.stop_scheduler().await;
    let task =
        |n: u32| json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": {"n": n}});

    // On INTAKE.
    let kept = system.submit_id(ACME.api_key, &task(1)).await;
    let cancelled_early = system.submit_id(ACME.api_key, &task(2)).await;
    assert_eq!(messages_on(&nats, "TERN_INTAKE").await, 2);
    // Published once with a new id, it needs no duplicate-window entry on INTAKE; on
    // READY it has one, against a repeated forward.
    let intake = tern_core::topology::intake_subject(Tier::Business, ACME.id, &kept);
    assert_eq!(message_id_on(&nats, "TERN_INTAKE", &intake).await, None);
    let (status, body) = system.task(ACME.api_key, &kept).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["queue"], "q");
    assert_eq!(body["webhook_url"], receiver.url("/"));
    assert!(body["created_at"].is_string(), "{body}");
    assert_eq!(body["attempts"], json!([]));
    for (status, body) in [
        system.task(GLOBEX.api_key, &kept).await,
        system.cancel(GLOBEX.api_key, &kept).await,
    ] {
        assert_eq!(status, 404, "another tenant's unclaimed task: {body}");
    }
    let (status, body) = system.cancel(ACME.api_key, &cancelled_early).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("cancelled")),
        "{body}"
    );
    let (status, _) = system.cancel(ACME.api_key, &cancelled_early).await;
    assert_eq!(status, 409, "a cancelled task cannot be cancelled again");

    // On READY.
    system.start_scheduler().await;
    let cancelled_late = system.submit_id(ACME.api_key, &task(3)).await;
    let last = system.submit_id(ACME.api_key, &task(4)).await;
    wait_until("all four on READY", Duration::from_secs(10), || async {
        (messages_on(&nats, "TERN_INTAKE").await == 0
            && messages_on(&nats, "TERN_READY").await == 4)
            .then_some(())
    })
    .await;
    let ready = tern_core::topology::ready_subject(Tier::Business, ACME.id, &last);
    assert_eq!(
        message_id_on(&nats, "TERN_READY", &ready).await.as_deref(),
        Some(last.as_str())
    );
    let (_, body) = system.task(ACME.api_key, &cancelled_late).await;
    assert_eq!(body["status"], "queued");
    let (status, body) = system.cancel(ACME.api_key, &cancelled_late).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("cancelled")),
        "{body}"
    );
    let (_, body) = system.task(ACME.api_key, &cancelled_early).await;
    assert_eq!(body["status"], "cancelled");

    // The worker delivers the two that were kept and drops the others.
    system.start_worker().await;
    for id in [&kept, &last] {
        system.wait_for_status(ACME.api_key, id, "succeeded").await;
    }
    wait_until("READY drained", Duration::from_secs(10), || async {
        (messages_on(&nats, "TERN_READY").await == 0).then_some(())
    })
    .await;
    let mut delivered: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    delivered.sort();
    let mut expected = vec![kept.clone(), last.clone()];
    expected.sort();
    assert_eq!(delivered, expected, "each kept task once, no cancelled one");
    let (status, body) = system.cancel(ACME.api_key, &kept).await;
    assert_eq!(status, 409, "{body}");
    system.stop().await;
}
