//! Await-callback tasks: dispatch with a one-time callback URL, `waiting`, resolution
//! by the provider's POST exactly once, every resolver error, and deadlines that hold
//! across restarts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

/// How the fake provider treats a dispatch.
#[derive(Clone, Copy)]
enum Provider {
    /// Calls back before answering the dispatch.
    CallsBackAtOnce,
    /// Answers 202 and leaves calling back to the test.
    Later,
}

#[derive(Clone)]
struct ProviderState {
    mode: Provider,
    dispatches: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    callback_answers: Arc<Mutex<Vec<u16>>>,
}

async fn dispatch(
    State(state): State<ProviderState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    state
        .dispatches
        .lock()
        .unwrap()
        .push((headers.clone(), body));
    if let Provider::CallsBackAtOnce = state.mode {
        let url = headers["x-tern-callback-url"].to_str().unwrap().to_string();
        let answer = tern_tests::http()
            .post(url)
            .json(&json!({"image": "https://cdn.example/1.png", "seed": 42}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        state.callback_answers.lock().unwrap().push(answer);
    }
    StatusCode::ACCEPTED
}

async fn provider(mode: Provider) -> (String, ProviderState) {
    let state = ProviderState {
        mode,
        dispatches: Default::default(),
        callback_answers: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/generate", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(axum::routing::post(dispatch))
        .with_state(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, state)
}

async fn submit_await(system: &TernSystem, url: &str, timeout: &str) -> (String, String) {
    let response = system
        .submit(
            ACME.api_key,
            &json!({"queue": "ai", "webhook_url": url, "await_callback": {"timeout": timeout},
                    "payload": {"prompt": "a tern", "reply_to": "{{callback_url}}"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    (
        body["task_id"].as_str().unwrap().to_string(),
        body["callback_url"]
            .as_str()
            .expect("callback_url in the 202")
            .to_string(),
    )
}

async fn post_callback(url: &str, body: &str) -> (u16, Value, Option<String>) {
    let response = tern_tests::http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_calling_back_at_once_resolves_the_task() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let (url, provider) = provider(Provider::CallsBackAtOnce).await;
    let (id, callback_url) = submit_await(&system, &url, "1h").await;

    let done = system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    let result_body: Value =
        serde_json::from_str(done["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(result_body["seed"], 42);
    assert_eq!(done["result"]["statusCode"], 200);
    assert!(done["result"]["headers"]["content-type"].is_string());

    let dispatches = provider.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1);
    let (headers, body) = &dispatches[0];
    assert_eq!(
        headers["x-tern-callback-url"].to_str().unwrap(),
        callback_url
    );
    assert_eq!(
        body["payload"]["reply_to"],
        callback_url.as_str(),
        "{{callback_url}} substituted"
    );
    let id_part = callback_url.rsplit('/').next().unwrap();
    assert_eq!(id_part.len(), 64);
    assert!(id_part.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(provider.callback_answers.lock().unwrap().as_slice(), &[200]);

    // The id is single use.
    let (code, body, _) = post_callback(&callback_url, "{}").await;
    assert!(code == 404 || code == 409, "{code} {body}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_callback_resolves_a_waiting_task_and_a_second_is_refused() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let (url, _provider) = provider(Provider::Later).await;
    let (id, callback_url) = submit_await(&system, &url, "1h").await;
    let waiting = system.wait_for_status(ACME.api_key, &id, "waiting").await;
    assert_eq!(waiting["attempts"][0]["status_code"], 202);

    // The resolver restarts while the task waits; the callback still works.
    system.stop_resolver().await;
    system.start_resolver().await;

    let raw = r#"{"status":"done","items":[1,2,3]}"#;
    let (code, body, _) = post_callback(&callback_url, raw).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["task"]["id"], id.as_str());
    assert_eq!(body["task"]["status"], "succeeded");
    assert_eq!(body["task"]["result"]["statusCode"], 200);
    assert_eq!(body["task"]["result"]["body"], raw);
    assert!(body["task"]["result"]["duration"].is_u64());
    assert!(body["task"]["createdAt"].is_string() && body["task"]["completedAt"].is_string());
    let done = system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    assert_eq!(done["result"]["body"], raw);

    let (code, body, _) = post_callback(&callback_url, raw).await;
    assert_eq!(code, 404, "a used id is gone: {body}");
    assert_eq!(body["error"], "Invalid or expired callback ID");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_simultaneous_callbacks_resolve_once() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let (url, _provider) = provider(Provider::Later).await;
    let (id, callback_url) = submit_await(&system, &url, "1h").await;
    system.wait_for_status(ACME.api_key, &id, "waiting").await;

    let answers = futures::future::join_all((0..100).map(|i| {
        let url = callback_url.clone();
        async move { post_callback(&url, &format!(r#"{{"n":{i}}}"#)).await }
    }))
    .await;
    let ok: Vec<_> = answers.iter().filter(|(code, _, _)| *code == 200).collect();
    assert_eq!(ok.len(), 1, "exactly one 200");
    for (code, body, _) in &answers {
        assert!([200, 404, 409].contains(code), "{code} {body}");
    }
    let winner = ok[0].1["task"]["result"]["body"].clone();
    let done = system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    assert_eq!(
        done["result"]["body"], winner,
        "the stored result is the winner's"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_never_comes_fails_the_task_even_across_a_scheduler_restart() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let (url, _provider) = provider(Provider::Later).await;
    let (id, callback_url) = submit_await(&system, &url, "2s").await;
    system.wait_for_status(ACME.api_key, &id, "waiting").await;

    // The scheduler is down when the deadline passes; the timer fires once it is back.
    system.stop_scheduler().await;
    let (_, task) = system.task(ACME.api_key, &id).await;
    assert_eq!(task["status"], "waiting");
    wait_until("the deadline to pass", Duration::from_secs(10), || async {
        let (_, task) = system.task(ACME.api_key, &id).await;
        (tern_core::now_ms() > 3_000 + parse_ms(task["created_at"].as_str()?)?).then_some(())
    })
    .await;
    system.start_scheduler().await;

    let failed = system.wait_for_status(ACME.api_key, &id, "failed").await;
    assert_eq!(failed["last_error"], "callback_timeout");
    let (code, body, _) = post_callback(&callback_url, "{}").await;
    assert!(code == 404 || code == 409, "{code} {body}");
    system.stop().await;
}

fn parse_ms(rfc3339: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolver_answers_every_error_case() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start_with(&nats, |c| {
        c.resolver.max_body_bytes = 1024;
    })
    .await;
    let base = format!("{}/v1/callbacks", system.resolver_url);
    let not_found = json!({"error": "Invalid or expired callback ID"});
    for id in [
        "short",
        &"z".repeat(64),
        &"a".repeat(65),
        &tern_core::callbacks::new_id(),
    ] {
        let (code, body, _) = post_callback(&format!("{base}/{id}"), "{}").await;
        assert_eq!((code, &body), (404, &not_found), "{id}");
    }

    // A task whose dispatch has not happened yet (no worker): 409 with its state.
    system.stop_worker().await;
    let receiver = Receiver::start().await;
    let (id, callback_url) = submit_await(&system, &receiver.url("/p"), "1h").await;
    let (code, body, _) = post_callback(&callback_url, "{}").await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["error"],
        "Task is not in waiting/polling state (current: queued)"
    );
    let (code, body, _) = post_callback(&callback_url, "not json").await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].is_string());
    let (code, body, _) =
        post_callback(&callback_url, &format!(r#"{{"x":"{}"}}"#, "y".repeat(2000))).await;
    assert_eq!(code, 413, "{body}");
    system.start_worker().await;
    system.wait_for_status(ACME.api_key, &id, "waiting").await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_flooding_the_resolver_is_rate_limited() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start_with(&nats, |c| {
        c.resolver.rate_limit = 5;
        c.resolver.rate_window = tern_core::duration::HumanDuration(Duration::from_secs(60));
    })
    .await;
    let url = format!(
        "{}/v1/callbacks/{}",
        system.resolver_url,
        tern_core::callbacks::new_id()
    );
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let (code, body, retry) = post_callback(&url, "{}").await;
        if code == 429 {
            assert_eq!(body["error"], "Rate limit exceeded");
            retry_after = retry;
        }
        codes.push(code);
    }
    assert_eq!(codes, [404, 404, 404, 404, 404, 429, 429, 429]);
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&seconds));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_ids_and_api_keys_never_reach_the_logs() {
    let nats = NatsServer::start().await;
    let system = tern_tests::process::ProcessSystem::start(
        &nats.url(),
        &[("TERN_LOG__FILTER", "debug".to_string())],
        &[],
    )
    .await;
    let (url, _provider) = provider(Provider::Later).await;
    let response = tern_tests::http()
        .post(format!("{}/v1/tasks", system.api_url))
        .bearer_auth(ACME.api_key)
        .json(&json!({"queue": "ai", "webhook_url": url, "await_callback": {"timeout": "1h"}, "payload": {"cb": "{{callback_url}}"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let (id, callback_url) = (
        body["task_id"].as_str().unwrap().to_string(),
        body["callback_url"].as_str().unwrap().to_string(),
    );
    assert!(callback_url.starts_with(&system.resolver_url));
    let client = tern_tests::http();
    wait_until("waiting", Duration::from_secs(30), || async {
        let task =
            tern_tests::load::fetch_task(&client, &system.api_url, ACME.api_key, &id).await?;
        (task["status"] == "waiting").then_some(())
    })
    .await;
    let (code, _, _) = post_callback(&callback_url, r#"{"ok":true}"#).await;
    assert_eq!(code, 200);
    let (code, _, _) = post_callback(&callback_url, r#"{"ok":true}"#).await;
    assert_eq!(code, 404);

    let callback_id = callback_url.rsplit('/').next().unwrap();
    let logs = system.logs();
    assert!(
        logs.contains("task resolved by callback"),
        "the resolution is logged"
    );
    for secret in [callback_id, ACME.api_key, ACME.secret] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}
