//! Operations endpoints: readiness follows NATS, metrics move as tasks flow.

use std::time::Duration;

use serde_json::json;
use tern_tests::system::ACME;
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_is_not_ready_while_nats_is_down() {
    let mut nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let readyz = format!("{}/readyz", system.ingress_ops_url);
    let status = |url: String| async move {
        tern_tests::http()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(status(readyz.clone()).await, 200);
    nats.kill();
    wait_until("not ready", Duration::from_secs(30), || async {
        (status(readyz.clone()).await == 503).then_some(())
    })
    .await;
    let healthz = format!("{}/healthz", system.ingress_ops_url);
    assert_eq!(status(healthz).await, 200, "alive, just not ready");
    nats.restart().await;
    wait_until("ready again", Duration::from_secs(30), || async {
        (status(readyz.clone()).await == 200).then_some(())
    })
    .await;
    system.stop().await;
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_accepted_tasks_and_deliveries() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let scrape = || async {
        tern_tests::http()
            .get(format!("{}/metrics", system.ingress_ops_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    for i in 0..5 {
        let id = system
            .submit_id(
                ACME.api_key,
                &json!({"queue": "q", "webhook_url": receiver.url("/"), "payload": i}),
            )
            .await;
        system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    }
    // The services share this test's process, so one scrape shows all of them.
    let after = scrape().await;
    for name in ["tern_tasks_accepted_total", "tern_deliveries_total"] {
        let moved = counter(&after, name) - counter(&before, name);
        assert!(moved >= 5.0, "{name} moved by {moved}:\n{after}");
    }
    assert!(
        after.contains("tern_delivery_seconds"),
        "the latency histogram is exported"
    );
    system.stop().await;
}
