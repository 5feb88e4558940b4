//! The admin API: dead-letter inspection, re-drive (single and bulk), purge, auth.

use std::sync::atomic::Ordering;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use tern_tests::system::{ACME, ADMIN_TOKEN, GLOBEX};
use tern_tests::{NatsServer, Receiver, TernSystem};

async fn submit(system: &TernSystem, key: &str, body: Value) -> String {
    system.submit_id(key, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_inspected_redriven_once_and_purged() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    // Fails until healed, then accepts.
    let (receiver, healed) = Receiver::start_failing_until_healed().await;
    let no_retry = json!({"max_retries": 1});
    let a = submit(&system, ACME.api_key, json!({"queue": "orders", "webhook_url": receiver.url("/a"), "payload": {"n": 1}, "retry": no_retry})).await;
    let b = submit(&system, ACME.api_key, json!({"queue": "emails", "webhook_url": receiver.url("/b"), "payload": {"n": 2}, "retry": no_retry})).await;
    let c = submit(&system, GLOBEX.api_key, json!({"queue": "orders", "webhook_url": receiver.url("/c"), "payload": {"n": 3}, "retry": no_retry})).await;
    system.wait_for_status(ACME.api_key, &a, "dead").await;
    system.wait_for_status(ACME.api_key, &b, "dead").await;
    system.wait_for_status(GLOBEX.api_key, &c, "dead").await;

    // Listing: all three, newest first; filters narrow it; pages continue by cursor.
    let (code, all) = system.admin(Method::GET, "/admin/v1/dlq", None).await;
    assert_eq!(code, 200, "{all}");
    let ids: Vec<&str> = all["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    let dead_at: Vec<&str> = all["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["dead_at"].as_str().unwrap())
        .collect();
    assert!(
        dead_at.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {dead_at:?}"
    );
    let (_, acme) = system
        .admin(Method::GET, "/admin/v1/dlq?tenant=acme", None)
        .await;
    assert_eq!(acme["dead_letters"].as_array().unwrap().len(), 2);
    let (_, orders) = system
        .admin(Method::GET, "/admin/v1/dlq?tenant=acme&queue=orders", None)
        .await;
    assert_eq!(orders["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(orders["dead_letters"][0]["task_id"], a.as_str());
    let (_, future) = system
        .admin(
            Method::GET,
            "/admin/v1/dlq?since=2999-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(future["dead_letters"].as_array().unwrap().len(), 0);
    let (_, past) = system
        .admin(
            Method::GET,
            "/admin/v1/dlq?until=2000-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(past["dead_letters"].as_array().unwrap().len(), 0);
    let (_, page1) = system
        .admin(Method::GET, "/admin/v1/dlq?limit=2", None)
        .await;
    assert_eq!(page1["dead_letters"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a cursor for the rest")
        .to_string();
    let (_, page2) = system
        .admin(
            Method::GET,
            &format!("/admin/v1/dlq?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["dead_letters"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    for bad in [
        "/admin/v1/dlq?limit=0",
        "/admin/v1/dlq?since=yesterday",
        "/admin/v1/dlq?cursor=x",
        "/admin/v1/dlq?colour=red",
    ] {
        let (code, body) = system.admin(Method::GET, bad, None).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }

    // One dead letter: history and payload.
    let (code, letter) = system
        .admin(Method::GET, &format!("/admin/v1/dlq/{a}"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(letter["payload"], json!({"n": 1}));
    assert_eq!(letter["task"]["attempts"].as_array().unwrap().len(), 2);
    assert!(letter["reason"].as_str().unwrap().contains("HTTP 500"));

    // Re-drive twice at once: exactly one wins, one more delivery, history kept.
    healed.store(true, Ordering::SeqCst);
    let before = receiver.count();
    let path = format!("/admin/v1/dlq/{a}/redrive");
    let (r1, r2) = tokio::join!(
        system.admin(Method::POST, &path, None),
        system.admin(Method::POST, &path, None)
    );
    let mut codes = [r1.0, r2.0];
    codes.sort();
    assert_eq!(codes[0], 200, "{r1:?} {r2:?}");
    assert!(codes[1] == 404 || codes[1] == 409, "{r1:?} {r2:?}");
    let done = system.wait_for_status(ACME.api_key, &a, "succeeded").await;
    assert_eq!(
        done["attempts"].as_array().unwrap().len(),
        3,
        "history kept: 2 dead attempts + 1"
    );
    let (code, _) = system.admin(Method::POST, &path, None).await;
    assert!(code == 404 || code == 409);
    assert_eq!(receiver.count(), before + 1);
    let (code, _) = system
        .admin(Method::GET, &format!("/admin/v1/dlq/{a}"), None)
        .await;
    assert_eq!(code, 404, "a re-driven task leaves the DLQ");

    // Purge removes the letter; the task stays dead.
    let (code, _) = system
        .admin(Method::DELETE, &format!("/admin/v1/dlq/{b}"), None)
        .await;
    assert_eq!(code, 200);
    let (code, _) = system
        .admin(Method::DELETE, &format!("/admin/v1/dlq/{b}"), None)
        .await;
    assert_eq!(code, 404);
    let (_, task) = system.task(ACME.api_key, &b).await;
    assert_eq!(task["status"], "dead");

    // Bulk re-drive by filter answers with a count.
    let (code, result) = system
        .admin(
            Method::POST,
            "/admin/v1/dlq/redrive",
            Some(&json!({"tenant_id": "globex"})),
        )
        .await;
    assert_eq!(code, 200, "{result}");
    assert_eq!(result["redriven"], 1);
    assert_eq!(result["failed"], 0);
    system
        .wait_for_status(GLOBEX.api_key, &c, "succeeded")
        .await;
    let (code, body) = system
        .admin(
            Method::POST,
            "/admin/v1/dlq/redrive",
            Some(&json!({"limit": 0})),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_is_not_on_the_public_port() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let client = system.client();
    for (token, expected) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some(ACME.api_key), 401),
        (Some(ADMIN_TOKEN), 200),
    ] {
        let mut request = client.get(format!("{}/admin/v1/dlq", system.admin_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), expected, "{token:?}");
        let body: Value = response.json().await.unwrap();
        if expected == 401 {
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    let response = client
        .get(format!("{}/admin/v1/dlq", system.api_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (code, _) = system
        .admin(Method::GET, "/admin/v1/dlq/not-a-uuid", None)
        .await;
    assert_eq!(code, 404);
    let (code, body) = system
        .admin(
            Method::POST,
            "/admin/v1/endpoints/enable",
            Some(&json!({"tenant_id": "acme"})),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    system.stop().await;
}
