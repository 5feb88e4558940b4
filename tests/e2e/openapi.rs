//! The OpenAPI documents as served: `/openapi.json` on the public and the admin
//! listener, and every operation they describe answers on a running ingress (behind
//! its credentials), while methods they do not describe are `405`.

use serde_json::Value;
use tern_tests::{NatsServer, TernSystem};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Probes every operation of the document at `base` without credentials.
async fn probe(system: &TernSystem, base: &str) -> usize {
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
