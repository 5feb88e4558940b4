//! The OpenAPI documents as served: `/openapi.json` on the public and the admin
//! listener, and every operation they describe answers on a running ingress (behind
//! its credentials), while methods they do not describe are `405`; the same for the
//! callback resolver's document on its listener (no credentials there).

use serde_json::{Value, json};
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// The OpenAPI 3.1 document served at `base`, checked to be JSON.
async fn document(system: &TernSystem, base: &str) -> Value {
    let response = system
        .client()
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    doc
}

/// Probes every operation of the document at `base` without credentials.
async fn probe(system: &TernSystem, base: &str) -> usize {
    let doc = document(system, base).await;
    let mut probed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{task_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{key}", "k")
            .replace("{name}", "q");
        let any_method = path == "/" || path == "/v1/proxy";
        for method in METHODS {
            let documented = item.get(method).is_some();
            let response = system
                .client()
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{base}{concrete}"),
                )
                // `/` answers only proxied calls; nothing is called without a key.
                .header("x-target-url", "http://127.0.0.1:9/")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if path == "/openapi.json" && method == "get" {
                assert_eq!(status, 200);
            } else if documented {
                assert_eq!(status, 401, "{method} {path}: {body}");
                assert_eq!(body["error"]["code"], "unauthorized");
                probed += 1;
            } else if !any_method {
                assert_eq!(status, 405, "{method} {path} is not documented: {body}");
                assert_eq!(body["error"]["code"], "method_not_allowed");
            }
        }
    }
    probed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_served_and_describe_live_routes() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let public = probe(&system, &system.api_url).await;
    assert!(public >= 20, "public operations probed: {public}");
    let admin = probe(&system, &system.admin_url).await;
    assert_eq!(admin, 6, "admin operations probed");

    // Undescribed paths are not routes.
    let response = system
        .client()
        .get(format!("{}/v1/not-a-route", system.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolver_serves_its_document_and_answers_as_it_says() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let base = &system.resolver_url;
    let doc = document(&system, base).await;
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/openapi.json", "/v1/callbacks/{id}"]);

    // Every documented operation answers as documented, without credentials; the
    // other methods are 405, in the resolver's error shape.
    let unknown = "ab".repeat(32);
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", &unknown);
        for method in METHODS {
            let response = system
                .client()
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{base}{concrete}"),
                )
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let Some(operation) = item.get(method) else {
                assert_eq!(status, 405, "{method} {path}: {body}");
                assert!(body["error"].is_string(), "{method} {path}: {body}");
                continue;
            };
            assert!(
                operation["responses"].get(status.to_string()).is_some(),
                "{method} {path}: {status} is not documented"
            );
            if path == "/openapi.json" {
                assert_eq!(status, 200);
            } else {
                assert_eq!(status, 404, "{body}");
                assert_eq!(body, json!({"error": "Invalid or expired callback ID"}));
            }
        }
    }
    let response = system
        .client()
        .get(format!("{base}/v1/not-a-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "Not found"})
    );

    // A callback that resolves its task answers with the documented fields.
    let receiver = Receiver::start().await;
    let accepted = system
        .accepted(
            ACME.api_key,
            &json!({"queue": "gen", "webhook_url": receiver.url("/gen"), "payload": {}, "await_callback": {"timeout": "1h"}}),
        )
        .await;
    let id = accepted["task_id"].as_str().unwrap();
    system.wait_for_status(ACME.api_key, id, "waiting").await;
    let response = system
        .client()
        .post(accepted["callback_url"].as_str().unwrap())
        .json(&json!({"image": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let task = &response.json::<Value>().await.unwrap()["task"];
    let schema = &doc["components"]["schemas"]["ResolvedTask"];
    let mut documented: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let mut answered: Vec<&String> = task.as_object().unwrap().keys().collect();
    documented.sort();
    answered.sort();
    assert_eq!(answered, documented, "{task}");
    assert_eq!(task["status"], "succeeded");
    system.stop().await;
}
