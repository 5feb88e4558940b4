//! Proxied calls: retries against an upstream, the outcome delivered to a callback,
//! routes that cascade over providers, idempotency windows, header validation, the
//! synchronous mode, the `proxy` queue's limits, and the identity key kept out of
//! logs, records and responses.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tern_core::signing::{SigningSecret, Verifier};
use tern_tests::system::{ACME, GLOBEX};
use tern_tests::{NatsServer, Received, Receiver, TernSystem, wait_until};

/// A proxy request: `path` on the public API with `headers`, authenticated as ACME.
async fn send(
    system: &TernSystem,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> reqwest::Response {
    let mut request = system
        .client()
        .request(method, format!("{}{path}", system.api_url))
        .bearer_auth(ACME.api_key)
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("proxy request")
}

/// `POST /v1/proxy` with `headers` and no body.
async fn proxy_post(system: &TernSystem, headers: &[(&str, &str)]) -> reqwest::Response {
    send(system, Method::POST, "/v1/proxy", headers, "").await
}

/// An async proxied call that must be accepted: its job id.
async fn accepted(system: &TernSystem, headers: &[(&str, &str)], body: &'static str) -> String {
    let response = send(system, Method::POST, "/v1/proxy", headers, body).await;
    assert_eq!(response.status(), 202);
    let json: Value = response.json().await.expect("202 body");
    assert_eq!(json["status"], "Accepted", "{json}");
    json["job_id"].as_str().expect("job_id").to_string()
}

async fn received(receiver: &Receiver, n: usize) -> Vec<Received> {
    wait_until(
        &format!("{n} request(s)"),
        Duration::from_secs(30),
        || async {
            let requests = receiver.requests();
            (requests.len() >= n).then_some(requests)
        },
    )
    .await
}

fn phases(task: &Value) -> Vec<String> {
    task["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["phase"].as_str().unwrap_or("").to_string())
        .collect()
}

fn verifier() -> Verifier {
    Verifier::new(vec![SigningSecret::parse(ACME.secret).expect("secret")])
}

/// Answers `status` to the first `failures` requests, then 200 with a JSON body.
async fn flaky_upstream(failures: usize, status: StatusCode) -> Receiver {
    Receiver::start_full(Duration::ZERO, move |_, i| {
        if i < failures {
            (status, "try again").into_response()
        } else {
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"charge":"ch_1","paid":true}"#,
            )
                .into_response()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_fails_then_succeeds_has_its_body_delivered_to_the_callback() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let upstream = flaky_upstream(2, StatusCode::INTERNAL_SERVER_ERROR).await;
    let callback = Receiver::start().await;

    let target = upstream.url("/v1/charges?expand=customer");
    let hook = callback.url("/hooks/payments");
    let job_id = accepted(
        &system,
        &[
            ("X-Target-URL", target.as_str()),
            ("X-Webhook-Callback", hook.as_str()),
            ("X-Identity-Key", "Bearer sk_test_upstream"),
            ("X-Retry-Count", "3"),
            ("X-Retry-Delay", "100ms"),
            ("X-Proxy-Timeout", "5s"),
            ("Content-Type", "application/json"),
            ("X-Custom", "kept"),
        ],
        r#"{"amount":2000}"#,
    )
    .await;

    let delivered = received(&callback, 1).await;
    let calls = upstream.requests();
    assert_eq!(calls.len(), 3, "two failures, then the success");
    for call in &calls {
        assert_eq!(call.path, "/v1/charges");
        assert_eq!(
            call.header("authorization"),
            Some("Bearer sk_test_upstream")
        );
        assert_eq!(call.header("x-custom"), Some("kept"));
        assert_eq!(call.header("content-type"), Some("application/json"));
        assert_eq!(call.body.as_ref(), br#"{"amount":2000}"#);
        for control in [
            "x-target-url",
            "x-webhook-callback",
            "x-identity-key",
            "x-retry-count",
            "x-proxy-timeout",
            "webhook-signature",
        ] {
            assert!(call.header(control).is_none(), "{control} was forwarded");
        }
    }

    let hit = &delivered[0];
    assert_eq!(hit.path, "/hooks/payments");
    assert_eq!(hit.body.as_ref(), br#"{"charge":"ch_1","paid":true}"#);
    assert_eq!(hit.header("content-type"), Some("application/json"));
    assert_eq!(hit.header("x-tern-job-id"), Some(job_id.as_str()));
    assert_eq!(hit.header("x-tern-upstream-status"), Some("200"));
    verifier()
        .verify(&hit.headers, &hit.body)
        .expect("callback is signed");

    let task = system
        .wait_for_status(ACME.api_key, &job_id, "succeeded")
        .await;
    assert_eq!(
        phases(&task),
        ["upstream", "upstream", "upstream", "callback"]
    );
    assert_eq!(task["attempts"][0]["status_code"], 500);
    assert_eq!(task["attempts"][2]["status_code"], 200);
    assert_eq!(task["attempts"][3]["url"], hook.as_str());
    assert_eq!(task["upstream_url"], target.as_str());
    assert_eq!(task["callback_url"], hook.as_str());
    assert_eq!(task["queue"], "proxy");
    assert_eq!(task["result"]["statusCode"], 200);
    assert!(task.get("webhook_url").is_none());
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_always_fails_sends_the_failure_payload_with_its_own_retries() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let upstream = Receiver::start_with(|_, _| StatusCode::SERVICE_UNAVAILABLE).await;
    // The callback itself fails once: its delivery retries on its own budget.
    let callback = Receiver::start_with(|_, i| {
        if i == 0 {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        }
    })
    .await;

    let target = upstream.url("/flaky");
    let hook = callback.url("/cb");
    let job_id = accepted(
        &system,
        &[
            ("X-Target-URL", target.as_str()),
            ("X-Webhook-Callback", hook.as_str()),
            ("X-Retry-Count", "2"),
            ("X-Retry-Delay", "50ms"),
        ],
        "",
    )
    .await;
    let delivered = received(&callback, 2).await;
    assert_eq!(upstream.count(), 3, "the first call and two retries");
    for hit in &delivered {
        let body = hit.json();
        assert_eq!(body["error"], "upstream_failed");
        assert_eq!(body["job_id"], job_id.as_str());
        assert_eq!(body["status_code"], 503);
        assert_eq!(
            body["message"],
            format!("All retry attempts failed for {target}").as_str()
        );
        assert_eq!(body["errors"][0]["url"], target.as_str());
        assert_eq!(hit.header("x-tern-upstream-status"), Some("503"));
        assert_eq!(hit.header("webhook-id"), Some(job_id.as_str()));
    }
    let task = system
        .wait_for_status(ACME.api_key, &job_id, "failed")
        .await;
    assert_eq!(
        phases(&task),
        ["upstream", "upstream", "upstream", "callback", "callback"]
    );
    assert!(
        task["last_error"]
            .as_str()
            .unwrap()
            .starts_with("upstream_failed"),
        "{task}"
    );

    // A callback that never answers 2xx dead-letters the job like any delivery.
    let (code, _) = system
        .call(
            ACME.api_key,
            Method::PUT,
            "/v1/queues/proxy",
            Some(&json!({"max_retries": 1, "initial_delay": "50ms"})),
        )
        .await;
    assert_eq!(code, 200);
    let ok = flaky_upstream(0, StatusCode::OK).await;
    let broken = Receiver::start_with(|_, _| StatusCode::INTERNAL_SERVER_ERROR).await;
    let (ok_url, broken_url) = (ok.url("/"), broken.url("/"));
    let job_id = accepted(
        &system,
        &[
            ("X-Target-URL", ok_url.as_str()),
            ("X-Webhook-Callback", broken_url.as_str()),
        ],
        "",
    )
    .await;
    let task = system.wait_for_status(ACME.api_key, &job_id, "dead").await;
    assert_eq!(phases(&task), ["upstream", "callback", "callback"]);
    let (code, letter) = system
        .admin(Method::GET, &format!("/admin/v1/dlq/{job_id}"), None)
        .await;
    assert_eq!(code, 200, "{letter}");
    assert_eq!(letter["payload"]["charge"], "ch_1");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_queue_limits_hold_upstream_calls_and_callbacks_alike() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    // One receiver plays upstream and callback, so it sees every dispatch of the
    // queue; each is held long enough that unlimited ones would overlap.
    let both = Receiver::start_slow(Duration::from_millis(200)).await;
    system
        .put_queue_first("proxy", json!({"max_concurrent": 1}))
        .await;

    let (upstream, hook) = (both.url("/upstream"), both.url("/hook"));
    let headers = [
        ("X-Target-URL", upstream.as_str()),
        ("X-Webhook-Callback", hook.as_str()),
    ];
    let mut jobs = Vec::new();
    for _ in 0..6 {
        jobs.push(accepted(&system, &headers, "{}").await);
    }
    for job_id in &jobs {
        let task = system
            .wait_for_status(ACME.api_key, job_id, "succeeded")
            .await;
        assert_eq!(phases(&task), ["upstream", "callback"]);
    }

    let paths: Vec<String> = both.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/upstream").count(), 6);
    assert_eq!(paths.iter().filter(|p| *p == "/hook").count(), 6);
    assert_eq!(
        both.max_in_flight(),
        1,
        "max_concurrent 1 holds for the proxy queue's upstream calls and callbacks"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_times_out_after_x_proxy_timeout() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let slow = Receiver::start_slow(Duration::from_secs(5)).await;
    let callback = Receiver::start().await;
    let (target, hook) = (slow.url("/slow"), callback.url("/cb"));
    let job_id = accepted(
        &system,
        &[
            ("X-Target-URL", target.as_str()),
            ("X-Webhook-Callback", hook.as_str()),
            ("X-Proxy-Timeout", "300ms"),
            ("X-Retry-Count", "1"),
            ("X-Retry-Delay", "10ms"),
        ],
        "",
    )
    .await;
    let body = received(&callback, 1).await[0].json();
    assert_eq!(body["error"], "upstream_failed");
    assert_eq!(body["status_code"], 504);
    let task = system
        .wait_for_status(ACME.api_key, &job_id, "failed")
        .await;
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for attempt in &attempts[..2] {
        assert_eq!(attempt["error"], "timeout", "{attempt}");
    }
    assert_eq!(slow.count(), 2);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_cascades_past_a_provider_that_is_down() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let down = format!("http://127.0.0.1:{}/v1/chat", tern_tests::free_port());
    let second = flaky_upstream(0, StatusCode::OK).await;
    let third = Receiver::start().await;
    let route = json!({"targets": [
        {"url": down, "timeout": "2s"},
        {"url": second.url("/v1/messages"), "headers": {"Authorization": "Bearer sk_provider_two", "X-Provider": "two"}, "retries": 1},
        {"url": third.url("/v1/other")}
    ]});
    let (code, stored) = system
        .call(
            ACME.api_key,
            Method::PUT,
            "/v1/routes/ai-cascade",
            Some(&route),
        )
        .await;
    assert_eq!(code, 200, "{stored}");
    let (code, read) = system
        .call(ACME.api_key, Method::GET, "/v1/routes/ai-cascade", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(read["key"], "ai-cascade");
    assert_eq!(read["targets"].as_array().unwrap().len(), 3);
    assert_eq!(read["targets"][0]["timeout"], "2s");
    assert_eq!(read["targets"][1]["retries"], 1);
    assert_eq!(
        read["targets"][1]["header_names"],
        json!(["authorization", "x-provider"])
    );
    assert!(!read.to_string().contains("sk_provider_two"), "{read}");
    // Routes are the tenant's own.
    let (code, _) = system
        .call(GLOBEX.api_key, Method::GET, "/v1/routes/ai-cascade", None)
        .await;
    assert_eq!(code, 404);

    let callback = Receiver::start().await;
    let hook = callback.url("/cb");
    let job_id = accepted(
        &system,
        &[
            ("X-Route-Key", "ai-cascade"),
            ("X-Webhook-Callback", hook.as_str()),
            ("X-Identity-Key", "Bearer sk_client"),
        ],
        r#"{"prompt":"hi"}"#,
    )
    .await;
    let hit = &received(&callback, 1).await[0];
    assert_eq!(hit.json()["charge"], "ch_1");
    let calls = second.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].header("authorization"),
        Some("Bearer sk_provider_two")
    );
    assert_eq!(calls[0].header("x-provider"), Some("two"));
    assert_eq!(third.count(), 0, "the first success ends the cascade");
    let task = system
        .wait_for_status(ACME.api_key, &job_id, "succeeded")
        .await;
    assert_eq!(task["route_key"], "ai-cascade");
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["url"], down.as_str());
    assert_eq!(attempts[0]["error"], "connect");
    assert_eq!(attempts[1]["status_code"], 200);
    assert_eq!(attempts[0]["number"], attempts[1]["number"], "one round");

    // Every provider down: the failure payload lists each one's last error.
    let dead = format!("http://127.0.0.1:{}/", tern_tests::free_port());
    let failing = Receiver::start_with(|_, _| StatusCode::INTERNAL_SERVER_ERROR).await;
    let route = json!({"targets": [{"url": dead}, {"url": failing.url("/x")}]});
    let (code, _) = system
        .call(
            ACME.api_key,
            Method::PUT,
            "/v1/routes/all-down",
            Some(&route),
        )
        .await;
    assert_eq!(code, 200);
    accepted(
        &system,
        &[
            ("X-Route-Key", "all-down"),
            ("X-Webhook-Callback", hook.as_str()),
            ("X-Retry-Count", "1"),
            ("X-Retry-Delay", "10ms"),
        ],
        "",
    )
    .await;
    let body = received(&callback, 2).await[1].json();
    assert_eq!(body["error"], "upstream_failed");
    assert_eq!(body["status_code"], 500);
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["url"], dead.as_str());
    assert!(errors[0]["error"].as_str().unwrap().starts_with("connect"));
    assert_eq!(errors[1]["error"], "HTTP 500");
    assert_eq!(failing.count(), 2, "one call per round");

    // Deleting a route: gone for GET and for calls.
    let (code, _) = system
        .call(ACME.api_key, Method::DELETE, "/v1/routes/all-down", None)
        .await;
    assert_eq!(code, 204);
    let (code, _) = system
        .call(ACME.api_key, Method::GET, "/v1/routes/all-down", None)
        .await;
    assert_eq!(code, 404);
    let response = proxy_post(
        &system,
        &[
            ("X-Route-Key", "all-down"),
            ("X-Webhook-Callback", hook.as_str()),
        ],
    )
    .await;
    assert_eq!(response.status(), 404);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_definitions_are_validated_field_by_field() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let cases = [
        (json!({"targets": []}), "targets"),
        (json!({"targets": [{"url": "not a url"}]}), "targets[0].url"),
        (
            json!({"targets": [{"url": "http://127.0.0.1/"}, {"url": "http://10.1.2.3/"}]}),
            "targets[1].url",
        ),
        (
            json!({"targets": [{"url": "http://127.0.0.1/", "timeout": "10ms"}]}),
            "targets[0].timeout",
        ),
        (
            json!({"targets": [{"url": "http://127.0.0.1/", "retries": 11}]}),
            "targets[0].retries",
        ),
        (
            json!({"targets": [{"url": "http://127.0.0.1/", "headers": {"Connection": "close"}}]}),
            "targets[0].headers.Connection",
        ),
        (
            json!({"targets": [{"url": "http://127.0.0.1/", "headers": {"bad name": "x"}}]}),
            "targets[0].headers.bad name",
        ),
        (
            json!({"targets": [{"url": "http://127.0.0.1/", "weight": 2}]}),
            "weight",
        ),
    ];
    for (body, field) in cases {
        let (code, error) = system
            .call(ACME.api_key, Method::PUT, "/v1/routes/r1", Some(&body))
            .await;
        assert_eq!(code, 422, "{body} -> {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field} not named in {message:?}");
    }
    let (code, error) = system
        .call(
            ACME.api_key,
            Method::PUT,
            "/v1/routes/bad.key",
            Some(&json!({"targets": [{"url": "http://127.0.0.1/"}]})),
        )
        .await;
    assert_eq!(code, 422, "{error}");
    let (code, _) = system
        .call(ACME.api_key, Method::GET, "/v1/routes/r1", None)
        .await;
    assert_eq!(code, 404, "a rejected route leaves nothing behind");
    let (code, _) = system
        .call(ACME.api_key, Method::DELETE, "/v1/routes/r1", None)
        .await;
    assert_eq!(code, 404);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job_within_its_window_only() {
    let nats = NatsServer::start().await;
    let window = Duration::from_secs(2);
    let system = TernSystem::start_with(&nats, |config| {
        config.proxy.idempotency_window = window.into();
    })
    .await;
    let upstream = flaky_upstream(0, StatusCode::OK).await;
    let callback = Receiver::start().await;
    let (target, hook) = (upstream.url("/pay"), callback.url("/cb"));
    let headers = [
        ("X-Target-URL", target.as_str()),
        ("X-Webhook-Callback", hook.as_str()),
        ("X-Proxy-Idempotency-Key", "order_789_pay_attempt_1"),
    ];
    let first_at = Instant::now();
    let first = accepted(&system, &headers, r#"{"amount":9900}"#).await;
    let again = send(
        &system,
        Method::POST,
        "/v1/proxy",
        &headers,
        r#"{"amount":9900}"#,
    )
    .await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job_id"], first.as_str());
    // The same key with another request is a conflict, not a second job.
    let other = send(
        &system,
        Method::POST,
        "/v1/proxy",
        &headers,
        r#"{"amount":1}"#,
    )
    .await;
    assert_eq!(other.status(), 409);
    system
        .wait_for_status(ACME.api_key, &first, "succeeded")
        .await;
    assert_eq!(upstream.count(), 1);
    assert_eq!(callback.count(), 1);
    // Another tenant's identical key is its own.
    let theirs = system
        .client()
        .post(format!("{}/v1/proxy", system.api_url))
        .bearer_auth(GLOBEX.api_key)
        .header("X-Target-URL", target.as_str())
        .header("X-Webhook-Callback", hook.as_str())
        .header("X-Proxy-Idempotency-Key", "order_789_pay_attempt_1")
        .body(r#"{"amount":9900}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 202);
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["job_id"], first.as_str());

    // Once the window has passed, the key starts a new job.
    let second = wait_until(
        "the idempotency window to pass",
        Duration::from_secs(30),
        || async {
            let response = send(
                &system,
                Method::POST,
                "/v1/proxy",
                &headers,
                r#"{"amount":9900}"#,
            )
            .await;
            let json: Value = response.json().await.ok()?;
            let id = json["job_id"].as_str()?.to_string();
            (id != first).then_some(id)
        },
    )
    .await;
    assert!(
        first_at.elapsed() >= window,
        "a new job only after the window"
    );
    system
        .wait_for_status(ACME.api_key, &second, "succeeded")
        .await;
    received(&callback, 3).await;
    assert_eq!(
        upstream.count(),
        3,
        "first, other tenant's, and the new job"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_headers_are_refused_naming_the_header_and_leave_nothing() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let upstream = Receiver::start().await;
    let callback = Receiver::start().await;
    let (target, hook) = (upstream.url("/"), callback.url("/cb"));
    let ok = |extra: &[(&'static str, &'static str)]| {
        let mut headers: Vec<(&str, String)> = vec![
            ("X-Target-URL", target.clone()),
            ("X-Webhook-Callback", hook.clone()),
        ];
        for (name, value) in extra {
            headers.retain(|(n, _)| n != name);
            headers.push((*name, value.to_string()));
        }
        headers
    };
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("X-Webhook-Callback", hook.clone())], "X-Target-URL"),
        (ok(&[("X-Target-URL", "not a url")]), "X-Target-URL"),
        (
            ok(&[("X-Target-URL", "http://10.0.0.8/private")]),
            "X-Target-URL",
        ),
        (
            ok(&[("X-Webhook-Callback", "ftp://example.com/")]),
            "X-Webhook-Callback",
        ),
        (ok(&[("X-Retry-Count", "many")]), "X-Retry-Count"),
        (ok(&[("X-Retry-Count", "101")]), "X-Retry-Count"),
        (ok(&[("X-Retry-Delay", "soon")]), "X-Retry-Delay"),
        (ok(&[("X-Retry-Delay", "2d")]), "X-Retry-Delay"),
        (ok(&[("X-Proxy-Timeout", "10ms")]), "X-Proxy-Timeout"),
        (ok(&[("X-Proxy-Timeout", "2h")]), "X-Proxy-Timeout"),
        (
            ok(&[("X-Proxy-Idempotency-Key", "has space")]),
            "X-Proxy-Idempotency-Key",
        ),
        (ok(&[("X-Route-Key", "a.b")]), "X-Route-Key"),
        (ok(&[("X-Route-Key", "valid-but-both")]), "X-Route-Key"),
    ];
    for (headers, named) in cases {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = send(&system, Method::POST, "/v1/proxy", &pairs, "{}").await;
        assert_eq!(response.status(), 400, "{pairs:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_header");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(named),
            "{named} not named in {message:?}"
        );
    }
    // The callback can come as ?webhook=; a bad one is named too.
    let response = send(
        &system,
        Method::POST,
        "/v1/proxy?webhook=nope",
        &[("X-Target-URL", target.as_str())],
        "",
    )
    .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("webhook")
    );
    let response = send(
        &system,
        Method::POST,
        &format!(
            "/v1/proxy?webhook={}",
            hook.replace(':', "%3A").replace('/', "%2F")
        ),
        &[("X-Target-URL", target.as_str())],
        "",
    )
    .await;
    assert_eq!(response.status(), 202);
    received(&callback, 1).await;
    // An unknown route, no key, a body over the limit.
    let response = proxy_post(
        &system,
        &[
            ("X-Route-Key", "nope"),
            ("X-Webhook-Callback", hook.as_str()),
        ],
    )
    .await;
    assert_eq!(response.status(), 404);
    let response = system
        .client()
        .post(format!("{}/v1/proxy", system.api_url))
        .header("X-Target-URL", target.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let big = "x".repeat(system.config.ingress.max_body_bytes + 1);
    let response = system
        .client()
        .post(format!("{}/v1/proxy", system.api_url))
        .bearer_auth(ACME.api_key)
        .header("X-Target-URL", target.as_str())
        .header("X-Webhook-Callback", hook.as_str())
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // `/` without proxy headers is no route at all.
    let response = send(&system, Method::POST, "/", &[], "").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        upstream.count(),
        1,
        "only the one valid call reached the upstream"
    );
    assert_eq!(callback.count(), 1);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_callback_the_call_is_synchronous_with_the_same_retries() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let upstream = Receiver::start_full(Duration::ZERO, |request, i| {
        if i == 0 {
            (StatusCode::BAD_GATEWAY, "warming up").into_response()
        } else {
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "text/plain"),
                    (header::HeaderName::from_static("x-upstream"), "yes"),
                ],
                format!("{} {}", request.method, request.path),
            )
                .into_response()
        }
    })
    .await;
    let target = upstream.url("/customers");
    // `POST /` with X-Target-URL, as existing proxy clients call it.
    let response = send(
        &system,
        Method::POST,
        "/",
        &[
            ("X-Target-URL", target.as_str()),
            ("X-Identity-Key", "Bearer sk_sync"),
            ("X-Retry-Count", "2"),
            ("X-Retry-Delay", "20ms"),
        ],
        "name=Jenny",
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["x-tern-attempts"], "2");
    assert_eq!(response.text().await.unwrap(), "POST /customers");
    let calls = upstream.requests();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].header("authorization"), Some("Bearer sk_sync"));
    assert_eq!(calls[1].body.as_ref(), b"name=Jenny");

    // Any method: a GET through `/` is a GET upstream.
    let response = send(
        &system,
        Method::GET,
        "/",
        &[("X-Target-URL", target.as_str())],
        "",
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.text().await.unwrap(), "GET /customers");

    // Out of retries: the upstream's last answer, as it came.
    let failing = Receiver::start_full(Duration::ZERO, |_, _| {
        (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response()
    })
    .await;
    let failing_url = failing.url("/x");
    let response = proxy_post(
        &system,
        &[
            ("X-Target-URL", failing_url.as_str()),
            ("X-Retry-Count", "1"),
            ("X-Retry-Delay", "10ms"),
        ],
    )
    .await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.text().await.unwrap(), "broken");
    assert_eq!(failing.count(), 2);

    // No answer at all: the gateway's JSON errors.
    let down = format!("http://127.0.0.1:{}/", tern_tests::free_port());
    let response = proxy_post(
        &system,
        &[("X-Target-URL", down.as_str()), ("X-Retry-Count", "0")],
    )
    .await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_failed");
    assert!(error["error"]["message"].as_str().unwrap().contains(&down));
    let slow = Receiver::start_slow(Duration::from_secs(5)).await;
    let slow_url = slow.url("/");
    let response = proxy_post(
        &system,
        &[
            ("X-Target-URL", slow_url.as_str()),
            ("X-Retry-Count", "0"),
            ("X-Proxy-Timeout", "200ms"),
        ],
    )
    .await;
    assert_eq!(response.status(), 504);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");
    system.stop().await;
}

/// Everything logged in this test process (tracing at every level).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("capture subscriber");
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_key_never_appears_in_logs_records_or_responses() {
    let logs = captured_logs();
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let identity = format!("Bearer sk_live_{}", uuid::Uuid::now_v7().simple());
    let provider_secret = format!("sk_provider_{}", uuid::Uuid::now_v7().simple());
    // The upstream fails once, so retries, dead ends and warnings get logged too.
    let upstream = flaky_upstream(1, StatusCode::SERVICE_UNAVAILABLE).await;
    let callback = Receiver::start().await;
    let (target, hook) = (upstream.url("/v1/charges"), callback.url("/cb"));

    let job_id = accepted(
        &system,
        &[
            ("X-Target-URL", target.as_str()),
            ("X-Webhook-Callback", hook.as_str()),
            ("X-Identity-Key", identity.as_str()),
            ("X-Retry-Delay", "10ms"),
        ],
        "{}",
    )
    .await;
    let route = json!({"targets": [{"url": target, "headers": {"X-Api-Key": provider_secret}}]});
    let (code, view) = system
        .call(ACME.api_key, Method::PUT, "/v1/routes/secret", Some(&route))
        .await;
    assert_eq!(code, 200);
    assert!(!view.to_string().contains(&provider_secret));
    let routed = accepted(
        &system,
        &[
            ("X-Route-Key", "secret"),
            ("X-Webhook-Callback", hook.as_str()),
            ("X-Identity-Key", identity.as_str()),
        ],
        "{}",
    )
    .await;
    let sync = send(
        &system,
        Method::POST,
        "/v1/proxy",
        &[
            ("X-Target-URL", target.as_str()),
            ("X-Identity-Key", identity.as_str()),
        ],
        "{}",
    )
    .await;
    assert_eq!(sync.status(), 200);
    let sync_headers = format!("{:?}", sync.headers());
    let sync_text = format!("{sync_headers}{}", sync.text().await.unwrap());
    assert!(!sync_text.contains(&identity));

    received(&callback, 2).await;
    let upstream_calls = upstream.requests();
    assert!(
        upstream_calls
            .iter()
            .all(|c| c.header("authorization") == Some(identity.as_str())),
        "the identity reached the upstream as Authorization"
    );
    assert!(
        upstream_calls
            .iter()
            .any(|c| c.header("x-api-key") == Some(provider_secret.as_str()))
    );
    for id in [&job_id, &routed] {
        let task = system.wait_for_status(ACME.api_key, id, "succeeded").await;
        assert!(!task.to_string().contains(&identity), "{task}");
        // The stored record and the route hold neither secret in clear.
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let tasks = js.get_key_value("tern_tasks").await.unwrap();
        let raw = tasks.get(id.as_str()).await.unwrap().expect("record");
        assert!(!contains(&raw, &identity));
        let routes = js.get_key_value("tern_routes").await.unwrap();
        let raw = routes.get("acme.secret").await.unwrap().expect("route");
        assert!(!contains(&raw, &provider_secret));
    }
    for call in callback.requests() {
        assert!(!contains(&call.body, &identity));
        assert!(!format!("{:?}", call.headers).contains(&identity));
    }

    system.stop().await;
    let logs = logs.lock().unwrap().clone();
    assert!(
        contains(&logs, "ingress listening"),
        "the services' logs were captured"
    );
    assert!(!contains(&logs, &identity), "the identity key was logged");
    assert!(
        !contains(&logs, &provider_secret),
        "a provider secret was logged"
    );
}
