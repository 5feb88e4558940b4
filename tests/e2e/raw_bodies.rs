//! Non-JSON payloads: `body_base64` + `content_type` on `POST /v1/tasks`, and the raw
//! body of `POST /v1/tasks/raw`, delivered byte for byte with their content type and
//! signed over those bytes.

use axum::http::StatusCode;
use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};
use tern_core::signing::{SigningSecret, Verifier};
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

/// Bytes that are not UTF-8, with a NUL and every byte value once.
fn awkward_bytes() -> Vec<u8> {
    let mut bytes = vec![0xff, 0xfe, 0x00, b'<', 0x80, 0xc3];
    bytes.extend(0..=255u8);
    bytes
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/tasks/raw` with `query`, `content_type` and `body`.
async fn post_raw(
    system: &TernSystem,
    query: &[(&str, &str)],
    content_type: Option<&str>,
    idempotency_key: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let url = reqwest::Url::parse_with_params(&format!("{}/v1/tasks/raw", system.api_url), query)
        .expect("raw task URL");
    let mut request = system
        .client()
        .post(url)
        .bearer_auth(ACME.api_key)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("raw task request")
}

/// A raw-body request and the error it must get: name, query, content type, body,
/// status, error code.
type RawCase<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
);

fn assert_signed_by_acme(delivery: &tern_tests::Received) {
    let verifier = Verifier::new(vec![SigningSecret::parse(ACME.secret).unwrap()]);
    verifier
        .verify(&delivery.headers, &delivery.body)
        .expect("signature verifies over the raw bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bodies_are_delivered_byte_for_byte_with_their_type_and_signed() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let bytes = awkward_bytes();

    // The raw-body endpoint: the request's body and Content-Type are the task's.
    let url = receiver.url("/raw");
    let response = post_raw(
        &system,
        &[("queue", "files"), ("webhook_url", url.as_str())],
        Some("application/octet-stream"),
        None,
        bytes.clone(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().contains_key("location"));
    let raw_id = response.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The JSON endpoint with body_base64.
    let xml = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>\xe9t\xe9</a>".to_vec();
    let b64_id = system
        .submit_id(
            ACME.api_key,
            &json!({
                "queue": "files",
                "webhook_url": receiver.url("/b64"),
                "body_base64": base64(&xml),
                "content_type": "application/xml; charset=ISO-8859-1",
            }),
        )
        .await;

    let raw_done = system
        .wait_for_status(ACME.api_key, &raw_id, "succeeded")
        .await;
    assert_eq!(raw_done["content_type"], "application/octet-stream");
    let b64_done = system
        .wait_for_status(ACME.api_key, &b64_id, "succeeded")
        .await;
    assert_eq!(
        b64_done["content_type"],
        "application/xml; charset=ISO-8859-1"
    );

    assert_eq!(receiver.count(), 2);
    for delivery in receiver.requests() {
        let (id, body, content_type) = match delivery.path.as_str() {
            "/raw" => (&raw_id, &bytes, "application/octet-stream"),
            "/b64" => (&b64_id, &xml, "application/xml; charset=ISO-8859-1"),
            other => panic!("unexpected delivery to {other}"),
        };
        assert_eq!(&delivery.body[..], &body[..], "{id}: bytes unchanged");
        assert_eq!(delivery.header("content-type"), Some(content_type));
        assert_eq!(delivery.header("webhook-id"), Some(id.as_str()));
        assert_signed_by_acme(&delivery);
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_covers_the_raw_bytes() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    system.stop_worker().await;
    let receiver = Receiver::start().await;
    let url = receiver.url("/");
    let query = [("queue", "q"), ("webhook_url", url.as_str())];

    let first = post_raw(
        &system,
        &query,
        Some("text/csv"),
        Some("k-1"),
        b"a,b\n1,2\n".to_vec(),
    )
    .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first_id = first.json::<Value>().await.unwrap()["task_id"].clone();

    let replay = post_raw(
        &system,
        &query,
        Some("text/csv"),
        Some("k-1"),
        b"a,b\n1,2\n".to_vec(),
    )
    .await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(
        replay
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(replay.json::<Value>().await.unwrap()["task_id"], first_id);

    // One byte different, or another content type: a different request.
    for (content_type, body) in [
        ("text/csv", b"a,b\n1,3\n".to_vec()),
        ("text/plain", b"a,b\n1,2\n".to_vec()),
    ] {
        let other = post_raw(&system, &query, Some(content_type), Some("k-1"), body).await;
        assert_eq!(other.status(), StatusCode::CONFLICT);
        let error: Value = other.json().await.unwrap();
        assert_eq!(error["error"]["code"], "idempotency_key_reused");
    }

    // body_base64 is part of the JSON body, which the fingerprint covers.
    let body = |bytes: &[u8]| json!({"queue": "q", "webhook_url": url, "body_base64": base64(bytes), "content_type": "image/png"});
    let response = system
        .client()
        .post(format!("{}/v1/tasks", system.api_url))
        .bearer_auth(ACME.api_key)
        .header("idempotency-key", "k-2")
        .json(&body(&[1, 2, 3]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = system
        .client()
        .post(format!("{}/v1/tasks", system.api_url))
        .bearer_auth(ACME.api_key)
        .header("idempotency-key", "k-2")
        .json(&body(&[1, 2, 4]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_raw_task_shows_its_body_in_the_dlq() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start_with(|_, _| StatusCode::INTERNAL_SERVER_ERROR).await;
    let bytes = awkward_bytes();
    let id = system
        .submit_id(
            ACME.api_key,
            &json!({
                "queue": "q",
                "webhook_url": receiver.url("/"),
                "body_base64": base64(&bytes),
                "content_type": "application/octet-stream",
                "retry": {"max_retries": 0},
            }),
        )
        .await;
    system.wait_for_status(ACME.api_key, &id, "dead").await;
    let letter = wait_until(
        "the dead letter",
        std::time::Duration::from_secs(10),
        || async {
            let (code, body) = system
                .admin(http::Method::GET, &format!("/admin/v1/dlq/{id}"), None)
                .await;
            (code == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(letter["content_type"], "application/octet-stream");
    assert_eq!(letter["body_base64"], base64(&bytes));
    assert!(letter.get("payload").is_none(), "{letter}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_raw_bodies_get_json_errors_and_leave_nothing_behind() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let url = receiver.url("/");
    let too_big = vec![b'x'; 1024 * 1024 + 1];

    let json_cases = [
        (
            "bad base64",
            json!({"queue": "q", "webhook_url": url, "body_base64": "not base64!", "content_type": "text/plain"}),
            422,
            "validation_failed",
        ),
        (
            "both payload and body_base64",
            json!({"queue": "q", "webhook_url": url, "payload": {}, "body_base64": "AA==", "content_type": "text/plain"}),
            422,
            "validation_failed",
        ),
        (
            "missing content_type",
            json!({"queue": "q", "webhook_url": url, "body_base64": "AA=="}),
            422,
            "validation_failed",
        ),
        (
            "content_type that is not a media type",
            json!({"queue": "q", "webhook_url": url, "body_base64": "AA==", "content_type": "plain text"}),
            422,
            "validation_failed",
        ),
        (
            "content_type with a JSON payload",
            json!({"queue": "q", "webhook_url": url, "payload": 1, "content_type": "text/plain"}),
            422,
            "validation_failed",
        ),
        (
            "body_base64 not a string",
            json!({"queue": "q", "webhook_url": url, "body_base64": 12, "content_type": "text/plain"}),
            422,
            "validation_failed",
        ),
        (
            "oversize body_base64",
            json!({"queue": "q", "webhook_url": url, "body_base64": base64(&too_big), "content_type": "text/plain"}),
            413,
            "payload_too_large",
        ),
    ];
    for (name, body, status, code) in json_cases {
        let response = system.submit(ACME.api_key, &body).await;
        assert_eq!(response.status().as_u16(), status, "{name}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{name}: {error}");
        assert!(error["error"]["message"].is_string(), "{name}");
    }

    let good = [("queue", "q"), ("webhook_url", url.as_str())];
    let raw_cases: [RawCase; 8] = [
        (
            "no content type",
            good.to_vec(),
            None,
            b"x".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "malformed content type",
            good.to_vec(),
            Some("text"),
            b"x".to_vec(),
            400,
            "invalid_header",
        ),
        (
            "oversize",
            good.to_vec(),
            Some("text/plain"),
            too_big.clone(),
            413,
            "payload_too_large",
        ),
        (
            "missing queue",
            vec![("webhook_url", url.as_str())],
            Some("text/plain"),
            b"x".to_vec(),
            400,
            "bad_request",
        ),
        (
            "unknown parameter",
            vec![
                ("queue", "q"),
                ("webhook_url", url.as_str()),
                ("payload", "1"),
            ],
            Some("text/plain"),
            b"x".to_vec(),
            400,
            "bad_request",
        ),
        (
            "bad queue",
            vec![("queue", "a.b"), ("webhook_url", url.as_str())],
            Some("text/plain"),
            b"x".to_vec(),
            422,
            "validation_failed",
        ),
        (
            "bad webhook_url",
            vec![("queue", "q"), ("webhook_url", "ftp://example.com")],
            Some("text/plain"),
            b"x".to_vec(),
            422,
            "validation_failed",
        ),
        (
            "bad delay",
            vec![
                ("queue", "q"),
                ("webhook_url", url.as_str()),
                ("delay", "soon"),
            ],
            Some("text/plain"),
            b"x".to_vec(),
            422,
            "validation_failed",
        ),
    ];
    for (name, query, content_type, body, status, code) in raw_cases {
        let response = post_raw(&system, &query, content_type, None, body).await;
        assert_eq!(response.status().as_u16(), status, "{name}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{name}: {error}");
    }

    // Nothing was stored.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let tasks = js
        .get_key_value(tern_core::topology::TASKS_BUCKET)
        .await
        .unwrap();
    let keys: Vec<_> = tasks.keys().await.unwrap().collect().await;
    assert!(keys.is_empty(), "rejected requests left records: {keys:?}");
    let mut intake = js
        .get_stream(tern_core::topology::INTAKE_STREAM)
        .await
        .unwrap();
    assert_eq!(intake.info().await.unwrap().state.last_sequence, 0);
    assert_eq!(receiver.count(), 0);
    system.stop().await;
}
