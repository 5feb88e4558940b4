//! Observability across real service processes: the spans of one task reach an OTLP
//! collector from every service, all in the trace the client sent; every service's
//! `/metrics` counts tasks as they flow; logs carry each task's id and trace id on the
//! lines about it and never a secret.

use std::time::Duration;

use serde_json::{Value, json};
use tern_tests::collector::{CollectedSpan, Collector};
use tern_tests::process::{ProcessSystem, ServiceProcess};
use tern_tests::prometheus::{exported, scrape, value};
use tern_tests::system::{ACME, ADMIN_TOKEN, PROXY_KEY};
use tern_tests::{NatsServer, Receiver, wait_until};

const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A client `traceparent` in trace `trace` (32 hex digits).
fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{CLIENT_SPAN}-01")
}

/// `POST /v1/tasks` as ACME with the client's `traceparent` and optional
/// `Idempotency-Key`: status and JSON body.
async fn submit(
    api_url: &str,
    body: &Value,
    trace: &str,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut request = tern_tests::http()
        .post(format!("{api_url}/v1/tasks"))
        .bearer_auth(ACME.api_key)
        .header("traceparent", traceparent(trace))
        .json(body);
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("submit");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `(task id, callback URL)` of an await-callback task to `provider_url`.
async fn submit_await_callback(api_url: &str, provider_url: &str, trace: &str) -> (String, String) {
    let (code, body) = submit(
        api_url,
        &json!({"queue": "obs", "webhook_url": provider_url, "await_callback": {"timeout": "1h"},
                "payload": {"reply_to": "{{callback_url}}"}}),
        trace,
        None,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    (
        body["task_id"].as_str().expect("task_id").to_string(),
        body["callback_url"]
            .as_str()
            .expect("callback_url")
            .to_string(),
    )
}

async fn post_callback(url: &str) {
    let response = tern_tests::http()
        .post(url)
        .json(&json!({"image": "done"}))
        .send()
        .await
        .expect("callback");
    assert_eq!(response.status().as_u16(), 200);
}

async fn wait_status(api_url: &str, id: &str, status: &str) {
    tern_tests::load::wait_all_status(
        api_url,
        ACME.api_key,
        &[id.to_string()],
        status,
        Duration::from_secs(60),
    )
    .await;
}

fn metrics_url(process: &ServiceProcess) -> String {
    format!("http://127.0.0.1:{}/metrics", process.ops_port)
}

/// The span `name` from `service` for `task` in `trace`, once the collector has it.
async fn span_of(
    collector: &Collector,
    service: &str,
    name: &str,
    task: &str,
    trace: &str,
) -> CollectedSpan {
    wait_until(
        &format!("span {name} from {service}"),
        Duration::from_secs(30),
        || async {
            collector.spans().into_iter().find(|s| {
                s.service == service
                    && s.name == name
                    && s.trace_id == trace
                    && s.attributes.get("task_id").map(String::as_str) == Some(task)
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_its_spans_of_a_task_in_the_clients_trace() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let nats = NatsServer::start().await;
    let collector = Collector::start().await;
    let provider = Receiver::start().await;
    let system = ProcessSystem::start(
        &nats.url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url().to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ],
        &[],
    )
    .await;

    let (id, callback_url) =
        submit_await_callback(&system.api_url, &provider.url("/generate"), TRACE).await;
    wait_until("the dispatch", Duration::from_secs(30), || async {
        (provider.count() >= 1).then_some(())
    })
    .await;
    post_callback(&callback_url).await;
    wait_status(&system.api_url, &id, "succeeded").await;

    let accept = span_of(&collector, "tern-ingress", "accept", &id, TRACE).await;
    assert_eq!(
        accept.parent_span_id, CLIENT_SPAN,
        "the client's span is the parent"
    );
    let schedule = span_of(&collector, "tern-scheduler", "schedule", &id, TRACE).await;
    let deliver = span_of(&collector, "tern-delivery-worker", "deliver", &id, TRACE).await;
    let resolve = span_of(&collector, "tern-callback-resolver", "resolve", &id, TRACE).await;
    for later in [&schedule, &deliver, &resolve] {
        assert_eq!(
            later.parent_span_id, accept.span_id,
            "{} descends from the accept span",
            later.name
        );
    }
    for (key, expected) in [
        ("attempt", "1"),
        ("http.response.status_code", "200"),
        ("outcome", "succeeded"),
        ("trace_id", TRACE),
    ] {
        assert_eq!(
            deliver.attributes.get(key).map(String::as_str),
            Some(expected),
            "deliver span attribute {key}: {:?}",
            deliver.attributes
        );
    }
    assert!(deliver.attributes.contains_key("duration_ms"));
    assert_eq!(
        resolve.attributes.get("outcome").map(String::as_str),
        Some("resolved")
    );

    // The provider's request is a child of the deliver span, in the same trace.
    let dispatch = &provider.requests()[0];
    let sent = dispatch.header("traceparent").expect("traceparent sent");
    assert_eq!(
        sent,
        format!("00-{TRACE}-{}-01", deliver.span_id),
        "the outbound call's parent is the deliver span"
    );
    // No span carries a secret: the callback id is only in the URL, never recorded.
    let callback_id = callback_url.rsplit('/').next().expect("callback id");
    for span in collector.spans() {
        let printed = format!("{span:?}");
        assert!(!printed.contains(callback_id), "{printed}");
        assert!(!printed.contains(ACME.api_key), "{printed}");
    }
}

/// Every line Tern wrote in `log` about `task` (naming its id) carries the task id
/// and `trace` as fields; returns how many there are. Libraries' own debug lines
/// (async-nats dumps its JetStream responses, which may hold a task id) are about
/// NATS requests, not tasks, and are left out.
fn lines_about(log: &str, task: &str, trace: &str, service: &str) -> usize {
    let mut count = 0;
    for line in log.lines().filter(|line| line.contains(task)) {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{service}: a log line is not JSON ({e}): {line}"));
        let target = parsed["target"].as_str().unwrap_or_default();
        if !target.starts_with("tern") {
            continue;
        }
        assert!(
            line.contains(&format!("\"task_id\":\"{task}\"")),
            "{service}: line about {task} without its task_id field: {line}"
        );
        assert!(
            line.contains(&format!("\"trace_id\":\"{trace}\"")),
            "{service}: line about {task} without trace_id {trace}: {line}"
        );
        assert!(parsed.get("timestamp").is_some(), "{line}");
        count += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_flow_and_logs_carry_ids_but_never_secrets() {
    const OK_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const DEAD_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
    const AWAIT_TRACE: &str = "b7ad6b7169203331b7ad6b7169203331";
    const IDENTITY: &str = "Bearer sk_live_identity_key_9f8e7d6c5b4a";
    const BAD_KEY: &str = "not-a-tenant-key-3141592653";
    let nats = NatsServer::start().await;
    let receiver = Receiver::start_with(|r, _| {
        if r.path == "/fail" {
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        } else {
            axum::http::StatusCode::OK
        }
    })
    .await;
    let admin_port = tern_tests::free_port();
    let mut system = ProcessSystem::start(
        &nats.url(),
        &[
            ("RUST_LOG", "debug".to_string()),
            ("TERN_TELEMETRY__GAUGE_INTERVAL", "1s".to_string()),
            (
                "TERN_INGRESS__ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            ),
        ],
        &[],
    )
    .await;
    let api = system.api_url.clone();
    let services = [
        ("ingress", &system.ingress),
        ("scheduler", &system.scheduler),
        ("worker", &system.worker),
        ("resolver", &system.resolver),
    ];
    let mut before = Vec::new();
    for (_, process) in services {
        before.push(scrape(&metrics_url(process)).await);
    }

    // A task that succeeds, submitted twice under one key (the second is a replay).
    let ok_body = json!({"queue": "obs", "webhook_url": receiver.url("/ok"), "payload": {"n": 1}});
    let (code, first) = submit(&api, &ok_body, OK_TRACE, Some("obs-key-1")).await;
    assert_eq!(code, 202, "{first}");
    let ok_id = first["task_id"].as_str().expect("task_id").to_string();
    let (code, replay) = submit(&api, &ok_body, OK_TRACE, Some("obs-key-1")).await;
    assert_eq!(
        (code, replay["task_id"].as_str()),
        (202, Some(ok_id.as_str()))
    );
    // One that fails, is retried once, and dies.
    let (code, dead) = submit(
        &api,
        &json!({"queue": "obs", "webhook_url": receiver.url("/fail"), "payload": {},
                "retry": {"max_retries": 1, "initial_delay": "100ms"}}),
        DEAD_TRACE,
        None,
    )
    .await;
    assert_eq!(code, 202, "{dead}");
    let dead_id = dead["task_id"].as_str().expect("task_id").to_string();
    // One resolved by its provider's callback.
    let (await_id, callback_url) =
        submit_await_callback(&api, &receiver.url("/provider"), AWAIT_TRACE).await;
    // Two rejected: an unknown API key and an invalid body.
    let unauthorized = tern_tests::http()
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(BAD_KEY)
        .json(&ok_body)
        .send()
        .await
        .expect("submit");
    assert_eq!(unauthorized.status().as_u16(), 401);
    let (code, _) = submit(
        &api,
        &json!({"queue": "obs", "webhook_url": "not a url", "payload": {}}),
        OK_TRACE,
        None,
    )
    .await;
    assert_eq!(code, 422);
    // An asynchronous proxied call carrying an identity key.
    let proxied = tern_tests::http()
        .post(format!("{api}/v1/proxy"))
        .bearer_auth(ACME.api_key)
        .header("X-Target-URL", receiver.url("/upstream"))
        .header("X-Webhook-Callback", receiver.url("/proxy-callback"))
        .header("X-Identity-Key", IDENTITY)
        .json(&json!({"q": 1}))
        .send()
        .await
        .expect("proxy");
    assert_eq!(proxied.status().as_u16(), 202);
    let job: Value = proxied.json().await.expect("202 body");
    let job_id = job["job_id"].as_str().expect("job_id").to_string();

    wait_until(
        "the provider's dispatch",
        Duration::from_secs(30),
        || async {
            receiver
                .requests()
                .iter()
                .any(|r| r.path == "/provider")
                .then_some(())
        },
    )
    .await;
    post_callback(&callback_url).await;
    wait_status(&api, &ok_id, "succeeded").await;
    wait_status(&api, &dead_id, "dead").await;
    wait_status(&api, &await_id, "succeeded").await;
    wait_status(&api, &job_id, "succeeded").await;
    let upstream = receiver
        .requests()
        .into_iter()
        .find(|r| r.path == "/upstream")
        .expect("upstream called");
    assert_eq!(upstream.header("authorization"), Some(IDENTITY));
    let listed = tern_tests::http()
        .get(format!(
            "http://127.0.0.1:{admin_port}/admin/v1/dlq?tenant=acme"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(listed.status().as_u16(), 200);

    // The scheduler's gauges are read every second: wait for the dead letter.
    let scheduler_url = metrics_url(&system.scheduler);
    let scheduler = wait_until("the DLQ gauge", Duration::from_secs(30), || async {
        let text = scrape(&scheduler_url).await;
        (value(&text, "tern_dlq_messages", &[]) >= 1.0).then_some(text)
    })
    .await;
    let mut after = Vec::new();
    for (_, process) in services {
        after.push(scrape(&metrics_url(process)).await);
    }
    after[1] = scheduler;
    let moved = |service: usize, name: &str, labels: &[(&str, &str)]| {
        value(&after[service], name, labels) - value(&before[service], name, labels)
    };

    // Ingress: submissions by outcome, and request latency by route.
    let accepted = [
        ("tier", "business"),
        ("queue", "obs"),
        ("outcome", "accepted"),
    ];
    assert_eq!(moved(0, "tern_task_submissions_total", &accepted), 3.0);
    let replayed = [("queue", "obs"), ("outcome", "replayed")];
    assert_eq!(moved(0, "tern_task_submissions_total", &replayed), 1.0);
    let unknown_key = [
        ("tier", ""),
        ("outcome", "rejected"),
        ("reason", "unauthorized"),
    ];
    assert_eq!(moved(0, "tern_task_submissions_total", &unknown_key), 1.0);
    let invalid = [
        ("queue", "obs"),
        ("outcome", "rejected"),
        ("reason", "validation_failed"),
    ];
    assert_eq!(moved(0, "tern_task_submissions_total", &invalid), 1.0);
    let proxy = [("queue", "proxy"), ("outcome", "accepted")];
    assert_eq!(moved(0, "tern_task_submissions_total", &proxy), 1.0);
    let route =
        |listener, method, route| [("listener", listener), ("method", method), ("route", route)];
    let posts = route("api", "POST", "/v1/tasks");
    assert_eq!(
        moved(0, "tern_http_request_duration_seconds_count", &posts),
        6.0
    );
    let reads = route("api", "GET", "/v1/tasks/{id}");
    assert!(moved(0, "tern_http_request_duration_seconds_count", &reads) >= 4.0);
    let admin = route("admin", "GET", "/admin/v1/dlq");
    assert_eq!(
        moved(0, "tern_http_request_duration_seconds_count", &admin),
        1.0
    );

    // Scheduler: forwards, the dead letter, and every work consumer's backlog.
    assert!(moved(1, "tern_scheduler_forwarded_total", &[]) >= 5.0);
    assert!(value(&after[1], "tern_dlq_messages", &[]) >= 1.0);
    for name in ["tern_consumer_pending", "tern_consumer_ack_pending"] {
        for (stream, consumer) in [
            ("TERN_READY", "delivery"),
            ("TERN_INTAKE", "intake-acme"),
            ("TERN_TIMERS", "timers"),
        ] {
            let labels = [("stream", stream), ("consumer", consumer)];
            assert!(exported(&after[1], name, &labels), "{name} {labels:?}");
        }
    }

    // Worker: calls by outcome and class, the retry, the dead letter, latency.
    let succeeded = [("outcome", "succeeded"), ("class", "2xx")];
    assert!(moved(2, "tern_deliveries_total", &succeeded) >= 4.0);
    let retried = [("outcome", "retry"), ("class", "5xx")];
    assert_eq!(moved(2, "tern_deliveries_total", &retried), 1.0);
    let died = [("outcome", "dead"), ("class", "5xx")];
    assert_eq!(moved(2, "tern_deliveries_total", &died), 1.0);
    assert_eq!(moved(2, "tern_delivery_retries_total", &[]), 1.0);
    assert_eq!(moved(2, "tern_dlq_inflow_total", &[]), 1.0);
    assert!(moved(2, "tern_delivery_seconds_count", &[]) >= 6.0);
    // An idle worker allows all of `worker.concurrency` (64 in the test config).
    assert_eq!(value(&after[2], "tern_worker_in_flight_limit", &[]), 64.0);

    // Resolver: the resolution, and its route (the pattern, never the id).
    let resolved = [("result", "resolved")];
    assert_eq!(moved(3, "tern_callbacks_total", &resolved), 1.0);
    let callbacks = [
        ("listener", "callbacks"),
        ("route", "/v1/callbacks/{id}"),
        ("status", "2xx"),
    ];
    assert_eq!(
        moved(3, "tern_http_request_duration_seconds_count", &callbacks),
        1.0
    );

    // Logs: no secret anywhere, in any service, even at debug level.
    let callback_id = callback_url.rsplit('/').next().expect("callback id");
    let bare_secret = ACME.secret.trim_start_matches("whsec_");
    let logs = system.logs();
    for (what, secret) in [
        ("API key", ACME.api_key),
        ("rejected API key", BAD_KEY),
        ("signing secret", bare_secret),
        ("callback id", callback_id),
        ("identity key", "sk_live_identity_key_9f8e7d6c5b4a"),
        ("admin token", ADMIN_TOKEN),
        ("proxy sealing key", PROXY_KEY),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }
    // Every line about a task carries its task id and trace id; each service wrote
    // some about each task it handled.
    for (id, trace, handled_by) in [
        (
            &ok_id,
            OK_TRACE,
            &[&system.ingress, &system.scheduler, &system.worker][..],
        ),
        (
            &dead_id,
            DEAD_TRACE,
            &[&system.ingress, &system.scheduler, &system.worker][..],
        ),
        (
            &await_id,
            AWAIT_TRACE,
            &[
                &system.ingress,
                &system.scheduler,
                &system.worker,
                &system.resolver,
            ][..],
        ),
    ] {
        for process in handled_by {
            let name = format!("{:?}", process.service);
            let lines = lines_about(&process.log(), id, trace, &name);
            assert!(lines > 0, "{name} logged nothing about task {id}");
        }
    }
    // Also the services that did not handle a task: lines naming it carry it too.
    lines_about(&system.resolver.log(), &ok_id, OK_TRACE, "resolver");

    // The backlog gauges follow READY: with no worker a task waits there, and the
    // next worker takes it (last, as it replaces the worker whose logs were read).
    let pending = [("stream", "TERN_READY"), ("consumer", "delivery")];
    let ready_pending = || async {
        value(
            &scrape(&scheduler_url).await,
            "tern_consumer_pending",
            &pending,
        )
    };
    assert!(system.worker.terminate(Duration::from_secs(20)).await);
    let (code, waiting) = submit(&api, &ok_body, OK_TRACE, None).await;
    assert_eq!(code, 202, "{waiting}");
    wait_until(
        "the task pending on READY",
        Duration::from_secs(30),
        || async { (ready_pending().await >= 1.0).then_some(()) },
    )
    .await;
    system.worker = system
        .processes
        .start(tern_tests::process::Service::Worker, &[])
        .await;
    wait_status(
        &api,
        waiting["task_id"].as_str().expect("task_id"),
        "succeeded",
    )
    .await;
    wait_until("READY drained", Duration::from_secs(30), || async {
        (ready_pending().await == 0.0).then_some(())
    })
    .await;
}
