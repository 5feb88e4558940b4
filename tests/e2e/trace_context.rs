//! W3C trace context: the client's `traceparent` trace id reaches the receiver on
//! every delivery of the task, through INTAKE, the scheduler (also after a delay) and
//! the worker; a request without one starts a trace of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tern_core::trace_context::TraceParent;
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn submit_traced(system: &TernSystem, traceparent: Option<&str>, body: Value) {
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
