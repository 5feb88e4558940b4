//! Queue limits: `max_concurrent` and `rate_limit` hold across two workers, count
//! retries, survive policy changes, and refuse bad values.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem};

async fn submit_many(system: &TernSystem, queue: &str, url: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            system
                .submit_id(
                    ACME.api_key,
                    &json!({"queue": queue, "webhook_url": url, "payload": i}),
                )
                .await,
        );
    }
    ids
}

async fn wait_all(system: &TernSystem, ids: &[String], status: &str) -> Vec<Value> {
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        done.push(system.wait_for_status(ACME.api_key, id, status).await);
    }
    done
}

/// The largest number of arrivals found in any window, beyond what a token bucket of
/// `per_second` and `burst` allows over that window (`slack` seconds of dispatch to
/// arrival jitter granted); positive = exceeded.
fn worst_excess(arrivals: &[Instant], per_second: f64, burst: f64, slack: f64) -> f64 {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut worst = f64::NEG_INFINITY;
    for i in 0..sorted.len() {
        for j in i..sorted.len() {
            let window = (sorted[j] - sorted[i]).as_secs_f64();
            let count = (j - i + 1) as f64;
            worst = worst.max(count - (per_second * (window + slack) + burst));
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_holds_across_two_workers() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    system.start_extra_worker().await;
    let narrow = Receiver::start_slow(Duration::from_millis(150)).await;
    let wide = Receiver::start_slow(Duration::from_millis(300)).await;

    let queue = system
        .put_queue_first("narrow", json!({"max_concurrent": 2}))
        .await;
    assert_eq!(queue["max_concurrent"], 2);
    assert!(queue["rate_limit"].is_null());
    let (_, read) = system
        .call(ACME.api_key, Method::GET, "/v1/queues/narrow", None)
        .await;
    assert_eq!(read["max_concurrent"], 2);

    let ids = submit_many(&system, "narrow", &narrow.url("/narrow"), 40).await;
    // The receiver counts concurrent requests: without a limit, two workers of 64
    // would hold these all at once (the unlimited queue below shows it).
    let unlimited = submit_many(&system, "wide", &wide.url("/wide"), 12).await;
    wait_all(&system, &ids, "succeeded").await;
    wait_all(&system, &unlimited, "succeeded").await;

    assert!(
        narrow.max_in_flight() <= 2,
        "max_concurrent 2 exceeded: {} at once",
        narrow.max_in_flight()
    );
    assert_eq!(narrow.count(), 40, "each task delivered exactly once");
    assert_eq!(narrow.distinct_ids().len(), 40);
    assert!(
        wide.max_in_flight() > 2,
        "the receiver counts concurrency (unlimited queue reached {})",
        wide.max_in_flight()
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_over_every_window_with_retries_counted() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    system.start_extra_worker().await;
    // Every task's first attempt fails, so half the dispatches are retries.
    let receiver = Receiver::start_with(|request, _| {
        if request.json()["attempt"] == 1 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    })
    .await;
    let queue = system.put_queue_first(
        "paced",
        json!({"rate_limit": {"per_second": 5, "burst": 5}, "max_retries": 3, "backoff": "fixed", "initial_delay": "100ms"}),
    )
    .await;
    assert_eq!(queue["rate_limit"], json!({"per_second": 5.0, "burst": 5}));
    assert!(queue["max_concurrent"].is_null());

    let ids = submit_many(&system, "paced", &receiver.url("/paced"), 20).await;
    let done = wait_all(&system, &ids, "succeeded").await;
    for task in &done {
        assert_eq!(task["attempts"].as_array().unwrap().len(), 2, "{task}");
    }
    let arrivals: Vec<Instant> = receiver.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 40);
    // A token is taken just before the call; up to half a second between the two is
    // granted (a noisy machine), which admits 2.5 more arrivals per window. Without
    // the shared bucket, 40 dispatches would arrive in about a second.
    let excess = worst_excess(&arrivals, 5.0, 5.0, 0.5);
    assert!(excess <= 0.0, "rate limit exceeded by {excess:.2} requests");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifting_limits_drains_what_was_already_routed() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let receiver = Receiver::start_slow(Duration::from_millis(200)).await;
    system
        .put_queue_first("gated", json!({"max_concurrent": 1}))
        .await;
    let routed = submit_many(&system, "gated", &receiver.url("/"), 10).await;
    // One at a time: the rest wait on the queue's own consumer.
    let js = async_nats::jetstream::new(
        async_nats::connect(nats.url())
            .await
            .expect("connect to NATS"),
    );
    let ready = js.get_stream("TERN_READY").await.expect("READY stream");
    tern_tests::wait_until("tasks held back", Duration::from_secs(10), || async {
        let info = ready.consumer_info("limited-4-acme-gated").await.ok()?;
        (info.num_ack_pending == 1 && info.num_pending >= 5).then_some(())
    })
    .await;
    // The limits are lifted while no worker runs: the one that starts next has no
    // limited policy to follow and must find the leftovers on the consumer itself.
    system.stop_worker().await;
    let queue = system.put_queue("gated", json!({})).await;
    assert!(queue["max_concurrent"].is_null());
    assert!(receiver.count() < 10);
    system.start_worker().await;
    let later = submit_many(&system, "gated", &receiver.url("/"), 10).await;
    wait_all(&system, &routed, "succeeded").await;
    wait_all(&system, &later, "succeeded").await;
    assert_eq!(receiver.distinct_ids().len(), 20);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_for_its_backoff_holds_its_slot() {
    // JetStream keeps a message nak'd with a delay among the consumer's unacked
    // messages until it is redelivered: with `max_concurrent: 1` the queue waits for
    // the retry before the next task. This records that behaviour (README).
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let receiver = Receiver::start_with(|request, _| {
        if request.json()["payload"] == "flaky" && request.json()["attempt"] == 1 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    system.put_queue_first(
        "single",
        json!({"max_concurrent": 1, "backoff": "fixed", "initial_delay": "2s", "max_delay": "2s"}),
    )
    .await;
    let flaky = system
        .submit_id(
            ACME.api_key,
            &json!({"queue": "single", "webhook_url": receiver.url("/"), "payload": "flaky"}),
        )
        .await;
    tern_tests::wait_until("first attempt", Duration::from_secs(10), || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    let next = system
        .submit_id(
            ACME.api_key,
            &json!({"queue": "single", "webhook_url": receiver.url("/"), "payload": "next"}),
        )
        .await;
    system
        .wait_for_status(ACME.api_key, &flaky, "succeeded")
        .await;
    system
        .wait_for_status(ACME.api_key, &next, "succeeded")
        .await;
    let order: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["payload"].clone())
        .collect();
    assert_eq!(order, vec![json!("flaky"), json!("flaky"), json!("next")]);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limit_values_are_422_naming_the_field_and_store_nothing() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let cases = [
        (json!({"rate_limit": 0}), "rate_limit"),
        (json!({"rate_limit": -1}), "rate_limit"),
        (json!({"rate_limit": 20000}), "rate_limit"),
        (json!({"rate_limit": "5/s"}), "rate_limit"),
        (
            json!({"rate_limit": {"per_second": 0.0001}}),
            "rate_limit.per_second",
        ),
        (
            json!({"rate_limit": {"per_second": 5, "burst": 0}}),
            "rate_limit.burst",
        ),
        (
            json!({"rate_limit": {"per_second": 5, "burst": 1.5}}),
            "rate_limit",
        ),
        (json!({"rate_limit": {"burst": 5}}), "per_second"),
        (
            json!({"rate_limit": {"per_second": 5, "bursts": 5}}),
            "bursts",
        ),
        (json!({"max_concurrent": 0}), "max_concurrent"),
        (json!({"max_concurrent": 10001}), "max_concurrent"),
        (json!({"max_concurrent": -2}), "max_concurrent"),
        (json!({"max_concurrent": "2"}), "max_concurrent"),
        (
            json!({"max_concurrent": 2, "max_retries": 101}),
            "max_retries",
        ),
    ];
    for (body, field) in cases {
        let (code, error) = system
            .call(ACME.api_key, Method::PUT, "/v1/queues/q", Some(&body))
            .await;
        assert_eq!(code, 422, "{body}: {error}");
        assert_eq!(error["error"]["code"], "validation_failed");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (_, queue) = system
        .call(ACME.api_key, Method::GET, "/v1/queues/q", None)
        .await;
    assert_eq!(queue["configured"], false, "{queue}");
    let (_, list) = system
        .call(ACME.api_key, Method::GET, "/v1/queues", None)
        .await;
    assert_eq!(list["queues"], json!([]));

    // The plain number form takes a burst of one second's worth, at least 1.
    let queue = system.put_queue("slow", json!({"rate_limit": 0.5})).await;
    assert_eq!(queue["rate_limit"], json!({"per_second": 0.5, "burst": 1}));
    let (_, list) = system
        .call(ACME.api_key, Method::GET, "/v1/queues", None)
        .await;
    assert_eq!(list["queues"][0]["rate_limit"]["per_second"], 0.5);
    system.stop().await;
}

#[test]
fn worst_excess_detects_a_burst() {
    let start = Instant::now();
    let spaced: Vec<Instant> = (0..20)
        .map(|i| start + Duration::from_millis(200 * i))
        .collect();
    assert!(worst_excess(&spaced, 5.0, 1.0, 0.0) <= 0.0);
    let bunched = vec![start; 10];
    assert!(worst_excess(&bunched, 5.0, 5.0, 0.5) > 0.0);
}
