//! Retry policies, Retry-After, 410 Gone, attempt records, and retry timing.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem};

async fn submit(system: &TernSystem, body: Value) -> String {
    system.submit_id(ACME.api_key, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_policies_can_be_set_read_listed_and_govern_their_tasks() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let failing = Receiver::start_with(|_, _| StatusCode::INTERNAL_SERVER_ERROR).await;

    // An unset queue shows the configured defaults.
    let (code, queue) = system
        .call(ACME.api_key, Method::GET, "/v1/queues/fresh", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(queue["configured"], false);
    assert_eq!(queue["max_retries"], 3);
    assert_eq!(queue["backoff"], "exponential");

    let policy = json!({"max_retries": 1, "backoff": "fixed", "initial_delay": "100ms", "max_delay": "1s", "timeout": 5, "max_age": "1h"});
    let (code, queue) = system
        .call(
            ACME.api_key,
            Method::PUT,
            "/v1/queues/billing",
            Some(&policy),
        )
        .await;
    assert_eq!(code, 200, "{queue}");
    assert_eq!(queue["name"], "billing");
    assert_eq!(queue["configured"], true);
    assert_eq!(queue["max_retries"], 1);
    assert_eq!(queue["backoff"], "fixed");
    assert_eq!(queue["initial_delay"], "100ms");
    assert_eq!(queue["timeout"], "5s");
    assert_eq!(queue["max_age"], "1h");
    let (_, read) = system
        .call(ACME.api_key, Method::GET, "/v1/queues/billing", None)
        .await;
    assert_eq!(read["max_retries"], 1);
    let (_, list) = system
        .call(ACME.api_key, Method::GET, "/v1/queues", None)
        .await;
    assert_eq!(list["queues"].as_array().unwrap().len(), 1);
    assert_eq!(list["queues"][0]["name"], "billing");
    // Another tenant sees none of it.
    let (_, theirs) = system
        .call(
            tern_tests::system::GLOBEX.api_key,
            Method::GET,
            "/v1/queues",
            None,
        )
        .await;
    assert_eq!(theirs["queues"].as_array().unwrap().len(), 0);

    // The queue's policy: 1 retry, so 2 attempts, then dead.
    let id = submit(
        &system,
        json!({"queue": "billing", "webhook_url": failing.url("/"), "payload": 1}),
    )
    .await;
    let dead = system.wait_for_status(ACME.api_key, &id, "dead").await;
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 2);

    // A task's own retry object wins over the queue's.
    let id = submit(
        &system,
        json!({"queue": "billing", "webhook_url": failing.url("/"), "payload": 1, "retry": {"max_retries": 0}}),
    )
    .await;
    let dead = system.wait_for_status(ACME.api_key, &id, "dead").await;
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 1);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_policies_are_422_naming_the_field() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let cases = [
        (json!({"max_retries": 101}), "max_retries"),
        (json!({"max_retries": -1}), "max_retries"),
        (json!({"timeout": "2h"}), "timeout"),
        (json!({"timeout": "0s"}), "timeout"),
        (json!({"initial_delay": "2d"}), "initial_delay"),
        (json!({"max_delay": "30d"}), "max_delay"),
        (json!({"max_age": "400d"}), "max_age"),
        (
            json!({"initial_delay": "10s", "max_delay": "1s"}),
            "max_delay",
        ),
        (json!({"backoff": "linear"}), "backoff"),
        (json!({"timeout": "soon"}), "timeout"),
        (json!({"retries": 3}), "retries"),
    ];
    for (body, field) in cases {
        let (code, error) = system
            .call(ACME.api_key, Method::PUT, "/v1/queues/q", Some(&body))
            .await;
        assert_eq!(code, 422, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");

        let task = json!({"queue": "q", "webhook_url": "http://127.0.0.1:9/", "payload": 1, "retry": body});
        let (code, error) = system
            .call(ACME.api_key, Method::POST, "/v1/tasks", Some(&task))
            .await;
        assert_eq!(code, 422, "{task}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(field));
    }
    let (code, _) = system
        .call(
            ACME.api_key,
            Method::PUT,
            "/v1/queues/bad.name",
            Some(&json!({})),
        )
        .await;
    assert_eq!(code, 422);
    let (code, _) = system
        .call(ACME.api_key, Method::GET, "/v1/queues", None)
        .await;
    assert_eq!(code, 200);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_fails_the_task_disables_the_endpoint_until_re_enabled() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let gone = Receiver::start_with(|_, _| StatusCode::GONE).await;
    let url = gone.url("/hook");

    let first = submit(
        &system,
        json!({"queue": "q", "webhook_url": url, "payload": 1}),
    )
    .await;
    let failed = system.wait_for_status(ACME.api_key, &first, "failed").await;
    assert_eq!(
        failed["attempts"].as_array().unwrap().len(),
        1,
        "410 is not retried"
    );
    assert_eq!(failed["attempts"][0]["status_code"], 410);
    assert_eq!(gone.count(), 1);

    // The next task to the same endpoint fails fast, without a call.
    let second = submit(
        &system,
        json!({"queue": "q", "webhook_url": url, "payload": 2}),
    )
    .await;
    let failed = system
        .wait_for_status(ACME.api_key, &second, "failed")
        .await;
    assert_eq!(failed["attempts"][0]["error"], "endpoint-disabled");
    assert!(failed["last_error"].as_str().unwrap().contains("disabled"));
    assert_eq!(gone.count(), 1, "a disabled endpoint is not called");

    // Another URL of the same receiver is a different endpoint.
    let other = submit(
        &system,
        json!({"queue": "q", "webhook_url": gone.url("/other"), "payload": 3}),
    )
    .await;
    system.wait_for_status(ACME.api_key, &other, "failed").await;
    assert_eq!(gone.count(), 2);

    let (code, body) = system
        .admin(
            Method::POST,
            "/admin/v1/endpoints/enable",
            Some(&json!({"tenant_id": ACME.id, "url": url})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = system
        .admin(
            Method::POST,
            "/admin/v1/endpoints/enable",
            Some(&json!({"tenant_id": ACME.id, "url": url})),
        )
        .await;
    assert_eq!(code, 404, "enabling an enabled endpoint says so");

    let third = submit(
        &system,
        json!({"queue": "q", "webhook_url": url, "payload": 4}),
    )
    .await;
    let failed = system.wait_for_status(ACME.api_key, &third, "failed").await;
    assert_eq!(
        failed["attempts"][0]["status_code"], 410,
        "re-enabled: called again"
    );
    assert_eq!(gone.count(), 3);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_sets_the_next_delay_and_next_attempt_at_shows_it() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start_full(Duration::ZERO, |_, index| {
        if index == 0 {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "1")],
                "busy",
            )
                .into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    // initial_delay 100ms would retry almost at once; Retry-After says 1 s.
    let id = submit(
        &system,
        json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": 1, "retry": {"max_delay": "10s"}}),
    )
    .await;
    let waiting = tern_tests::wait_until("retry scheduled", Duration::from_secs(10), || async {
        let (_, task) = system.task(ACME.api_key, &id).await;
        task["next_attempt_at"].is_string().then_some(task)
    })
    .await;
    assert_eq!(waiting["status"], "processing");
    assert_eq!(waiting["attempts"][0]["status_code"], 503);
    assert_eq!(
        waiting["attempts"][0]["response"], "busy",
        "the response body is kept"
    );
    let done = system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    assert!(done.get("next_attempt_at").is_none());
    let requests = receiver.requests();
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "gap {gap:?} shorter than Retry-After"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_failures_are_recorded_with_their_kind() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    // Nothing listens on a port we just released: connection refused.
    let closed = format!("http://127.0.0.1:{}/", tern_tests::free_port());
    let id = submit(
        &system,
        json!({"queue": "q", "webhook_url": closed, "payload": 1, "retry": {"max_retries": 0}}),
    )
    .await;
    let dead = system.wait_for_status(ACME.api_key, &id, "dead").await;
    assert_eq!(dead["attempts"][0]["error"], "connect");

    let slow = Receiver::start_slow(Duration::from_secs(3)).await;
    let id = submit(
        &system,
        json!({"queue": "q", "webhook_url": slow.url("/"), "payload": 1, "retry": {"max_retries": 0, "timeout": "300ms"}}),
    )
    .await;
    let dead = system.wait_for_status(ACME.api_key, &id, "dead").await;
    assert_eq!(dead["attempts"][0]["error"], "timeout");
    assert!(dead["attempts"][0]["duration_ms"].as_u64().unwrap() < 2000);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_non_public_addresses_at_delivery() {
    let nats = NatsServer::start().await;
    // The API accepts loopback (allowed when the task came in), but the worker that
    // delivers it has since been configured to allow no private network.
    let mut system = TernSystem::start(&nats).await;
    system.stop_worker().await;
    system
        .start_worker_with(|c| c.outbound.allowed_networks.clear())
        .await;
    let receiver = Receiver::start().await;
    let url = receiver.url("/");
    for target in [url.clone(), url.replace("127.0.0.1", "localhost")] {
        let id = submit(
            &system,
            json!({"queue": "q", "webhook_url": target, "payload": 1, "retry": {"max_retries": 0}}),
        )
        .await;
        let dead = system.wait_for_status(ACME.api_key, &id, "dead").await;
        assert_eq!(dead["attempts"][0]["error"], "refused-by-guard", "{dead}");
    }
    assert_eq!(receiver.count(), 0);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_non_public_ip_literals_unless_allowed() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start_with(&nats, |c| c.outbound.allowed_networks.clear()).await;
    for url in [
        "http://127.0.0.1:8080/",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://localhost/",
    ] {
        let (code, body) = system
            .call(
                ACME.api_key,
                Method::POST,
                "/v1/tasks",
                Some(&json!({"queue": "q", "webhook_url": url, "payload": 1})),
            )
            .await;
        assert_eq!(code, 422, "{url}: {body}");
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_gaps_follow_the_backoff_schedule() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let failing = Receiver::start_with(|_, _| StatusCode::INTERNAL_SERVER_ERROR).await;
    let fixed = Receiver::start_with(|_, _| StatusCode::INTERNAL_SERVER_ERROR).await;
    let exponential = submit(
        &system,
        json!({"queue": "q", "webhook_url": failing.url("/"), "payload": 1,
               "retry": {"max_retries": 3, "backoff": "exponential", "initial_delay": "1s", "max_delay": "1m"}}),
    )
    .await;
    let fixed_id = submit(
        &system,
        json!({"queue": "q", "webhook_url": fixed.url("/"), "payload": 1,
               "retry": {"max_retries": 3, "backoff": "fixed", "initial_delay": "400ms"}}),
    )
    .await;
    system
        .wait_for_status(ACME.api_key, &exponential, "dead")
        .await;
    system
        .wait_for_status(ACME.api_key, &fixed_id, "dead")
        .await;

    // Full jitter: retry n waits uniformly in [0, 1s * 2^(n-1)]; allow 300 ms of overhead.
    let at: Vec<_> = failing.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 4);
    for (n, pair) in at.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = Duration::from_secs(1 << n);
        assert!(
            gap <= ceiling + Duration::from_millis(300),
            "retry {} came after {gap:?} > {ceiling:?}",
            n + 1
        );
    }
    // Fixed backoff has no jitter: every gap is the delay (never early).
    let at: Vec<_> = fixed.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 4);
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(390),
            "fixed gap {gap:?} is early"
        );
        assert!(
            gap <= Duration::from_millis(400 + 300),
            "fixed gap {gap:?} is late"
        );
    }
    system.stop().await;
}
