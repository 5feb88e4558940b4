//! W3C trace context: the client's `traceparent` trace id reaches the receiver on
//! every delivery of the task, through INTAKE, the scheduler (also after a delay) and
//! the worker, and on the task's completion notification; a synchronous proxied call
//! sends it upstream; a request without one starts a trace of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tern_core::trace_context::TraceParent;
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Submits `body` with `traceparent` (if any); the 202's task id.
async fn submit_traced(system: &TernSystem, traceparent: Option<&str>, body: Value) -> String {
    let mut request = system
        .client()
        .post(format!("{}/v1/tasks", system.api_url))
        .bearer_auth(ACME.api_key)
        .json(&body);
    if let Some(value) = traceparent {
        request = request.header("traceparent", value);
    }
    let response = request.send().await.expect("submit");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("202 body");
    body["task_id"].as_str().expect("task_id").to_string()
}

/// The `traceparent` of each request `receiver` got on `path`, parsed.
fn traces_on(receiver: &Receiver, path: &str) -> Vec<TraceParent> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| {
            TraceParent::parse(r.header("traceparent").expect("traceparent sent"))
                .expect("valid traceparent")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_sees_the_clients_trace_id_on_every_attempt() {
    let nats = NatsServer::start().await;
    // The first attempt of /retried fails, so the trace must survive a redelivery.
    let failed_once = AtomicBool::new(false);
    let receiver = Receiver::start_with(move |r, _| {
        if r.path == "/retried" && !failed_once.swap(true, Ordering::SeqCst) {
            return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        }
        axum::http::StatusCode::OK
    })
    .await;
    let system = TernSystem::start(&nats).await;

    let hook = |path: &str| json!({"queue": "q", "webhook_url": receiver.url(path), "payload": {}});
    submit_traced(&system, Some(CLIENT), hook("/traced")).await;
    submit_traced(&system, Some(CLIENT), hook("/retried")).await;
    let mut delayed = hook("/delayed");
    delayed["delay"] = json!("1s");
    submit_traced(&system, Some(CLIENT), delayed).await;
    submit_traced(&system, Some("not-a-traceparent"), hook("/invalid")).await;
    submit_traced(&system, None, hook("/none")).await;

    wait_until("every delivery", Duration::from_secs(30), || async {
        (receiver.count() >= 6).then_some(())
    })
    .await;

    for path in ["/traced", "/retried", "/delayed"] {
        let traces = traces_on(&receiver, path);
        assert!(!traces.is_empty(), "{path} delivered");
        for trace in &traces {
            assert_eq!(trace.trace_id_hex(), CLIENT_TRACE, "{path}");
            // Tern's own span, not the client's.
            assert_ne!(trace.to_string(), CLIENT, "{path}");
        }
    }
    assert_eq!(
        traces_on(&receiver, "/retried").len(),
        2,
        "one failure, one retry"
    );
    for path in ["/invalid", "/none"] {
        let traces = traces_on(&receiver, path);
        assert_eq!(traces.len(), 1, "{path}");
        assert_ne!(
            traces[0].trace_id_hex(),
            CLIENT_TRACE,
            "{path} starts its own trace"
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_notifications_carry_the_clients_trace_id() {
    let nats = NatsServer::start().await;
    let receiver = Receiver::start().await;
    let system = TernSystem::start(&nats).await;

    // Ended by the worker (delivered), and by the ingress (cancelled while delayed).
    let delivered = json!({"queue": "q", "webhook_url": receiver.url("/hook"), "payload": {},
                           "notify_url": receiver.url("/delivered")});
    submit_traced(&system, Some(CLIENT), delivered).await;
    let delayed = json!({"queue": "q", "webhook_url": receiver.url("/never"), "payload": {},
                         "notify_url": receiver.url("/cancelled"), "delay": "1h"});
    let id = submit_traced(&system, Some(CLIENT), delayed).await;
    let (code, _) = system.cancel(ACME.api_key, &id).await;
    assert_eq!(code, 200);
    let untraced = json!({"queue": "q", "webhook_url": receiver.url("/hook"), "payload": {},
                          "notify_url": receiver.url("/untraced")});
    let untraced_id = submit_traced(&system, None, untraced).await;

    wait_until(
        "the three notifications",
        Duration::from_secs(30),
        || async {
            let paths = ["/delivered", "/cancelled", "/untraced"];
            paths
                .iter()
                .all(|p| receiver.requests().iter().any(|r| r.path == *p))
                .then_some(())
        },
    )
    .await;
    for path in ["/delivered", "/cancelled"] {
        let traces = traces_on(&receiver, path);
        assert_eq!(traces.len(), 1, "{path}");
        assert_eq!(traces[0].trace_id_hex(), CLIENT_TRACE, "{path}");
        assert_ne!(traces[0].to_string(), CLIENT, "{path}");
    }
    // A task that started its own trace is announced in that trace.
    let hook = receiver
        .requests()
        .into_iter()
        .find(|r| r.path == "/hook" && r.json()["task_id"] == untraced_id.as_str())
        .expect("the untraced task's delivery");
    let task_trace =
        TraceParent::parse(hook.header("traceparent").expect("traceparent")).expect("valid");
    let event_trace = traces_on(&receiver, "/untraced");
    assert_eq!(event_trace[0].trace_id_hex(), task_trace.trace_id_hex());
    assert_ne!(event_trace[0].trace_id_hex(), CLIENT_TRACE);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_proxied_call_sends_the_clients_trace_id_upstream() {
    let nats = NatsServer::start().await;
    // The first call fails, so the trace must hold across the call's rounds.
    let upstream = Receiver::start_with(|_, i| {
        if i == 0 {
            axum::http::StatusCode::BAD_GATEWAY
        } else {
            axum::http::StatusCode::OK
        }
    })
    .await;
    let system = TernSystem::start(&nats).await;
    let call = |traceparent: Option<&'static str>, path: &str| {
        let mut request = system
            .client()
            .post(format!("{}/v1/proxy", system.api_url))
            .bearer_auth(ACME.api_key)
            .header("X-Target-URL", upstream.url(path))
            .header("X-Retry-Count", "1")
            .header("X-Retry-Delay", "10ms");
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        request.send()
    };
    let response = call(Some(CLIENT), "/traced").await.expect("proxy");
    assert_eq!(response.status(), StatusCode::OK);
    let response = call(None, "/none").await.expect("proxy");
    assert_eq!(response.status(), StatusCode::OK);

    let traced = traces_on(&upstream, "/traced");
    assert_eq!(traced.len(), 2, "a failed round, then a good one");
    for trace in &traced {
        assert_eq!(trace.trace_id_hex(), CLIENT_TRACE);
        assert_ne!(trace.to_string(), CLIENT, "Tern's span, not the client's");
    }
    assert_ne!(traced[0].parent_id, traced[1].parent_id, "a span per round");
    let none = traces_on(&upstream, "/none");
    assert_eq!(none.len(), 1);
    assert_ne!(none[0].trace_id_hex(), CLIENT_TRACE, "a trace of its own");
    system.stop().await;
}
