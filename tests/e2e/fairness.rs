//! Fair sharing: tiers split worker capacity by weight when all have a backlog, a
//! tenant's backlog never holds back another tenant's new task, and several scheduler
//! replicas (one of them killed) neither lose nor double any task.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tern_tests::load::{Accepted, submit_all, wait_all_status};
use tern_tests::process::{ProcessSystem, Service};
use tern_tests::system::{ACME, GLOBEX, INITECH, Tenant, UMBRELLA};
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

/// Submits `count` tasks of `tenant`, each delivered to `/<tenant id>` on `receiver`.
async fn flood(system: &TernSystem, tenant: &Tenant, receiver: &Receiver, count: usize) {
    let url = receiver.url(&format!("/{}", tenant.id));
    submit_all(
        &system.api_url,
        tenant.api_key,
        count,
        32,
        move |i| json!({"queue": "flood", "webhook_url": url, "payload": {"i": i}}),
        Accepted::default(),
        Duration::from_secs(60),
    )
    .await;
}

/// Tenant ids (the receiver paths) in delivery order.
fn delivery_order(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .map(|r| r.path.trim_start_matches('/').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogged_tiers_share_one_delivery_slot_by_weight() {
    let nats = NatsServer::start().await;
    let receiver = Receiver::start().await;
    let mut system = TernSystem::start(&nats).await;
    // Build a backlog in every tier while no worker runs, then give them one slot.
    system.stop_worker().await;
    for tenant in [&GLOBEX, &INITECH, &ACME] {
        flood(&system, tenant, &receiver, 150).await;
    }
    system
        .start_worker_with(|config| config.worker.concurrency = 1)
        .await;
    wait_until("100 deliveries", Duration::from_secs(60), || async {
        (receiver.count() >= 100).then_some(())
    })
    .await;
    let first: Vec<String> = delivery_order(&receiver).into_iter().take(100).collect();
    let share = |tenant: &Tenant| first.iter().filter(|id| *id == tenant.id).count();
    let (business, developer, free) = (share(&ACME), share(&INITECH), share(&GLOBEX));
    // 6 : 3 : 1. The couple of tasks READY holds while nothing drains it
    // (`ready_backlog_min`) went there before the other tiers' floods arrived.
    assert!(
        (54..=66).contains(&business),
        "business {business} of 100: {first:?}"
    );
    assert!(
        (24..=36).contains(&developer),
        "developer {developer} of 100: {first:?}"
    );
    assert!((6..=14).contains(&free), "free {free} of 100: {first:?}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_new_task_overtakes_another_tenants_ten_thousand_task_backlog() {
    let nats = NatsServer::start().await;
    // One slow delivery slot: the backlog drains at ~200/s, far slower than it arrives.
    let receiver = Receiver::start_slow(Duration::from_millis(5)).await;
    let mut system = TernSystem::start(&nats).await;
    system.stop_worker().await;
    system
        .start_worker_with(|config| config.worker.concurrency = 1)
        .await;
    flood(&system, &GLOBEX, &receiver, 10_000).await;
    let before = receiver.count();

    let url = receiver.url(&format!("/{}", UMBRELLA.id));
    let id = system
        .submit_id(
            UMBRELLA.api_key,
            &json!({"queue": "q", "webhook_url": url, "payload": {}}),
        )
        .await;
    system
        .wait_for_status(UMBRELLA.api_key, &id, "succeeded")
        .await;

    let order = delivery_order(&receiver);
    let position = order
        .iter()
        .position(|tenant| tenant == UMBRELLA.id)
        .expect("umbrella delivered");
    let waited_behind = position.saturating_sub(before);
    assert!(
        position > before || before == 0,
        "the backlog was still draining when the new task arrived"
    );
    // Ahead of it: the one delivery in flight, READY's short backlog, nothing more.
    assert!(
        waited_behind <= 10,
        "the new task waited behind {waited_behind} backlog deliveries"
    );
    assert!(
        order.len() < 10_000,
        "the backlog must still be there when the new task overtook it"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_replicas_one_killed_lose_and_double_nothing() {
    const PER_TENANT: usize = 600;
    let nats = NatsServer::start().await;
    let receiver = Receiver::start_slow(Duration::from_millis(20)).await;
    let mut system = ProcessSystem::start(&nats.url(), &[], &[]).await;
    let mut second = system.processes.start(Service::Scheduler, &[]).await;

    let accepted: HashMap<&str, Accepted> = [ACME.id, GLOBEX.id]
        .into_iter()
        .map(|id| (id, Accepted::default()))
        .collect();
    let submitting: Vec<_> = [&ACME, &GLOBEX]
        .into_iter()
        .map(|tenant| {
            let url = receiver.url(&format!("/{}", tenant.id));
            let api = system.api_url.clone();
            let accepted = accepted[tenant.id].clone();
            let key = tenant.api_key;
            tokio::spawn(async move {
                submit_all(
                    &api,
                    key,
                    PER_TENANT,
                    16,
                    move |i| json!({"queue": "q", "webhook_url": url, "payload": {"i": i}}),
                    accepted,
                    Duration::from_secs(120),
                )
                .await;
            })
        })
        .collect();
    wait_until("deliveries under way", Duration::from_secs(60), || async {
        (receiver.count() >= 100).then_some(())
    })
    .await;
    second.kill9();
    for handle in submitting {
        handle.await.expect("submitting");
    }

    for tenant in [&ACME, &GLOBEX] {
        let ids: Vec<String> = accepted[tenant.id].lock().await.values().cloned().collect();
        assert_eq!(ids.len(), PER_TENANT);
        wait_all_status(
            &system.api_url,
            tenant.api_key,
            &ids,
            "succeeded",
            Duration::from_secs(120),
        )
        .await;
    }
    let requests = receiver.requests();
    let distinct = receiver.distinct_ids();
    assert_eq!(distinct.len(), 2 * PER_TENANT, "every task delivered");
    // A task the killed replica had already put on READY but not yet acked on INTAKE
    // is forwarded again; READY's duplicate window drops the copy, so nothing is
    // delivered twice.
    assert_eq!(requests.len(), 2 * PER_TENANT, "no task delivered twice");
}
