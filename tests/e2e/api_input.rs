//! Bad input: every rejection is a JSON error with the right status, and nothing of
//! a rejected request is stored.

use futures::StreamExt;
use serde_json::{Value, json};
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem};

struct Case {
    name: &'static str,
    api_key: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, body: Value, status: u16, code: &'static str) -> Case {
    Case {
        name,
        api_key: Some(ACME.api_key),
        content_type: Some("application/json"),
        body: serde_json::to_vec(&body).unwrap(),
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors_and_leave_nothing_behind() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let url = receiver.url("/hook");
    let good = json!({"queue": "q", "webhook_url": url, "payload": {}});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };

    let cases = vec![
        Case {
            name: "malformed JSON",
            body: b"{\"queue\": \"q\",".to_vec(),
            ..case("", json!(null), 400, "invalid_json")
        },
        Case {
            name: "not JSON at all",
            body: b"hello".to_vec(),
            ..case("", json!(null), 400, "invalid_json")
        },
        Case {
            name: "empty body",
            body: Vec::new(),
            ..case("", json!(null), 400, "invalid_json")
        },
        case("JSON array", json!([1, 2]), 422, "validation_failed"),
        case("missing queue", without("queue"), 422, "validation_failed"),
        case(
            "missing webhook_url",
            without("webhook_url"),
            422,
            "validation_failed",
        ),
        case(
            "missing payload",
            without("payload"),
            422,
            "validation_failed",
        ),
        case(
            "queue not a string",
            with("queue", json!(5)),
            422,
            "validation_failed",
        ),
        case(
            "queue with dots",
            with("queue", json!("a.b")),
            422,
            "validation_failed",
        ),
        case(
            "queue with space",
            with("queue", json!("a b")),
            422,
            "validation_failed",
        ),
        case(
            "queue with wildcard",
            with("queue", json!("a*")),
            422,
            "validation_failed",
        ),
        case(
            "empty queue",
            with("queue", json!("")),
            422,
            "validation_failed",
        ),
        case(
            "queue too long",
            with("queue", json!("q".repeat(65))),
            422,
            "validation_failed",
        ),
        case(
            "ftp URL",
            with("webhook_url", json!("ftp://example.com/x")),
            422,
            "validation_failed",
        ),
        case(
            "relative URL",
            with("webhook_url", json!("/hook")),
            422,
            "validation_failed",
        ),
        case(
            "javascript URL",
            with("webhook_url", json!("javascript:alert(1)")),
            422,
            "validation_failed",
        ),
        case(
            "over-long URL",
            with(
                "webhook_url",
                json!(format!("http://example.com/{}", "a".repeat(3000))),
            ),
            422,
            "validation_failed",
        ),
        case(
            "metadata address",
            with(
                "webhook_url",
                json!("http://169.254.169.254/latest/meta-data"),
            ),
            422,
            "validation_failed",
        ),
        case(
            "unknown field",
            with("surprise", json!(1)),
            422,
            "validation_failed",
        ),
        Case {
            name: "body over 1 MiB",
            body: serde_json::to_vec(&with("payload", json!("x".repeat(1024 * 1024 + 10))))
                .unwrap(),
            ..case("", json!(null), 413, "payload_too_large")
        },
        Case {
            name: "text/plain",
            content_type: Some("text/plain"),
            ..case("", good.clone(), 415, "unsupported_media_type")
        },
        Case {
            name: "no content type",
            content_type: None,
            ..case("", good.clone(), 415, "unsupported_media_type")
        },
        Case {
            name: "form encoded",
            content_type: Some("application/x-www-form-urlencoded"),
            ..case("", good.clone(), 415, "unsupported_media_type")
        },
        Case {
            name: "missing API key",
            api_key: None,
            ..case("", good.clone(), 401, "unauthorized")
        },
        Case {
            name: "unknown API key",
            api_key: Some("not-a-key"),
            ..case("", good.clone(), 401, "unauthorized")
        },
    ];
    for c in &cases {
        let mut request = system
            .client()
            .post(format!("{}/v1/tasks", system.api_url))
            .body(c.body.clone());
        if let Some(key) = c.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(ct) = c.content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert!(
            content_type.starts_with("application/json"),
            "{}: {content_type}",
            c.name
        );
        assert_eq!(body["error"]["code"], c.code, "{}: {body}", c.name);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            c.name
        );
    }

    // Other endpoints and methods answer JSON errors too.
    let checks = [
        (
            system
                .client()
                .get(format!("{}/v1/tasks/not-a-uuid", system.api_url))
                .bearer_auth(ACME.api_key),
            404,
        ),
        (
            system
                .client()
                .get(format!(
                    "{}/v1/tasks/{}",
                    system.api_url,
                    uuid::Uuid::now_v7()
                ))
                .bearer_auth(ACME.api_key),
            404,
        ),
        (
            system.client().get(format!(
                "{}/v1/tasks/{}",
                system.api_url,
                uuid::Uuid::now_v7()
            )),
            401,
        ),
        (
            system
                .client()
                .get(format!("{}/v1/nothing", system.api_url)),
            404,
        ),
        (
            system
                .client()
                .delete(format!("{}/v1/tasks", system.api_url)),
            405,
        ),
        (
            system
                .client()
                .post(format!("{}/v1/tasks", system.api_url))
                .bearer_auth(ACME.api_key)
                .header("content-type", "application/json")
                .header("idempotency-key", "has space")
                .body(serde_json::to_vec(&good).unwrap()),
            400,
        ),
    ];
    for (request, expected) in checks {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), expected);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }

    // Nothing was stored: no task records, no messages on any stream.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let tasks = js
        .get_key_value(tern_core::topology::TASKS_BUCKET)
        .await
        .unwrap();
    let keys: Vec<_> = tasks.keys().await.unwrap().collect().await;
    assert!(
        keys.is_empty(),
        "rejected requests left task records: {keys:?}"
    );
    for name in [
        tern_core::topology::INTAKE_STREAM,
        tern_core::topology::READY_STREAM,
    ] {
        let mut stream = js.get_stream(name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 0, "{name}");
        assert_eq!(
            stream.info().await.unwrap().state.last_sequence,
            0,
            "{name}"
        );
    }
    assert_eq!(receiver.count(), 0);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_rate_limited_by_tier() {
    let nats = NatsServer::start().await;
    // The free tier (globex) may make 5 requests per second; business is unlimited.
    let system = TernSystem::start_with(&nats, |c| {
        c.ingress.rate_limits.free = 5;
        c.ingress.rate_limits.business = 0;
    })
    .await;
    let mut codes = Vec::new();
    let mut limited = None;
    for _ in 0..30 {
        let response = system
            .client()
            .get(format!("{}/v1/queues", system.api_url))
            .bearer_auth(tern_tests::system::GLOBEX.api_key)
            .send()
            .await
            .unwrap();
        codes.push(response.status().as_u16());
        if response.status() == 429 {
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            limited = Some((
                header("retry-after"),
                header("ratelimit-limit"),
                header("ratelimit-remaining"),
            ));
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert!(ok >= 5, "the burst is allowed: {codes:?}");
    assert!(codes.contains(&429), "then requests are refused: {codes:?}");
    let (retry_after, limit, remaining) = limited.unwrap();
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(limit.as_deref(), Some("5"));
    assert_eq!(remaining.as_deref(), Some("0"));
    for _ in 0..30 {
        let (code, _) = system
            .call(ACME.api_key, axum::http::Method::GET, "/v1/queues", None)
            .await;
        assert_eq!(code, 200, "another tier's key is unaffected");
    }
    system.stop().await;
}
