//! Recurring schedules: every slot fires once across scheduler replicas, missed slots
//! collapse into one firing on recovery, deletion stops firings, an abandoned claim
//! is finished with the same task, and bad input is refused with nothing stored.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};
use tern_core::schedules::{CronSpec, slot_task_id};
use tern_core::task_store::{TaskStore, initial_record};
use tern_proto::Message;
use tern_proto::v1::{ScheduleRecord, Task, WebhookWork, task::Work};
use tern_tests::system::{ACME, GLOBEX};
use tern_tests::{NatsServer, Receiver, TernSystem, wait_until};

fn task_body(receiver: &Receiver) -> Value {
    json!({"queue": "cron", "webhook_url": receiver.url("/tick"), "payload": {"from": "schedule"}})
}

async fn create(system: &TernSystem, api_key: &str, body: &Value) -> Value {
    let (code, schedule) = system
        .call(api_key, Method::POST, "/v1/schedules", Some(body))
        .await;
    assert_eq!(code, 201, "schedule not created: {schedule}");
    schedule
}

/// Creates an ACME schedule on `cron` whose tasks go to `receiver`: its id and creation time.
async fn every(system: &TernSystem, cron: &str, receiver: &Receiver) -> (String, i64) {
    let schedule = create(
        system,
        ACME.api_key,
        &json!({"cron": cron, "task": task_body(receiver)}),
    )
    .await;
    let id = schedule["schedule_id"].as_str().unwrap().to_string();
    (id, ms(schedule["created_at"].as_str().unwrap()))
}

/// Waits until `receiver` got `n` distinct tasks.
async fn deliveries(receiver: &Receiver, n: usize) {
    wait_until(
        &format!("{n} deliveries"),
        Duration::from_secs(120),
        || async { (receiver.distinct_ids().len() >= n).then_some(()) },
    )
    .await;
}

/// The slot an ACME schedule last fired for.
async fn last_run(system: &TernSystem, id: &str) -> i64 {
    let (code, schedule) = system
        .call(
            ACME.api_key,
            Method::GET,
            &format!("/v1/schedules/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{schedule}");
    ms(schedule["last_run_at"].as_str().expect("last_run_at"))
}

/// The schedule ids `GET /v1/schedules` lists for `api_key`.
async fn listed(system: &TernSystem, api_key: &str) -> Vec<String> {
    let (code, list) = system
        .call(api_key, Method::GET, "/v1/schedules", None)
        .await;
    assert_eq!(code, 200, "{list}");
    list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["schedule_id"].as_str().unwrap().to_string())
        .collect()
}

fn ms(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 time");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Task id → slot, remembered between polls.
type Known = tokio::sync::Mutex<HashMap<String, i64>>;

/// The slot of every distinct task the receiver got from `schedule_id`, by slot;
/// `known` caches task lookups between calls.
async fn delivered_slots(
    system: &TernSystem,
    receiver: &Receiver,
    schedule_id: &str,
    known: &Known,
) -> BTreeMap<i64, String> {
    let mut known = known.lock().await;
    for id in receiver.distinct_ids() {
        if known.contains_key(&id) {
            continue;
        }
        let (code, task) = system.task(ACME.api_key, &id).await;
        assert_eq!(code, 200, "{task}");
        if task["schedule_id"] != schedule_id {
            continue;
        }
        known.insert(
            id,
            ms(task["schedule_slot"].as_str().expect("schedule_slot")),
        );
    }
    let mut slots = BTreeMap::new();
    for (id, slot) in known.iter() {
        if let Some(other) = slots.insert(*slot, id.clone()) {
            panic!("slot {slot} fired twice: tasks {other} and {id}");
        }
    }
    slots
}

/// Waits until the slots delivered from `schedule_id` satisfy `done`; returns them.
async fn slots_until(
    system: &TernSystem,
    receiver: &Receiver,
    schedule_id: &str,
    what: &str,
    done: impl Fn(&BTreeMap<i64, String>) -> bool,
) -> BTreeMap<i64, String> {
    let known = Known::default();
    wait_until(what, Duration::from_secs(30), || {
        let (known, done) = (&known, &done);
        async move {
            let slots = delivered_slots(system, receiver, schedule_id, known).await;
            done(&slots).then_some(slots)
        }
    })
    .await
}

fn expect_every_second(slots: &BTreeMap<i64, String>, step: i64) {
    let list: Vec<i64> = slots.keys().copied().collect();
    let gaps: Vec<_> = list.windows(2).filter(|w| w[1] - w[0] != step).collect();
    assert!(gaps.is_empty(), "slots not contiguous: {gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slot_fires_exactly_once_across_two_scheduler_replicas() {
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    system.start_scheduler().await;
    let receiver = Receiver::start().await;
    let (id, created) = every(&system, "* * * * * *", &receiver).await;
    deliveries(&receiver, 60).await;
    let last = last_run(&system, &id).await;
    let (code, _) = system
        .call(
            ACME.api_key,
            Method::DELETE,
            &format!("/v1/schedules/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 200);

    let slots = slots_until(&system, &receiver, &id, "every fired slot", |slots| {
        slots.keys().next().is_some_and(|first| {
            (*first..=last)
                .step_by(1000)
                .all(|s| slots.contains_key(&s))
        })
    })
    .await;
    let first = *slots.keys().next().unwrap();
    assert_eq!(
        first,
        (created / 1000 + 1) * 1000,
        "the first slot after creation fired"
    );
    expect_every_second(&slots, 1000);
    assert!(slots.len() >= 60, "{} slots", slots.len());
    assert_eq!(
        receiver.count(),
        slots.len(),
        "one delivery per slot, no duplicate"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_slots_fire_once_on_recovery_then_regularly() {
    // Every two seconds, so that the catch-up slot (the latest one missed) and the
    // next regular slot are told apart with a second to spare for the restart.
    const STEP: i64 = 2000;
    let nats = NatsServer::start().await;
    let mut system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let (id, _) = every(&system, "*/2 * * * * *", &receiver).await;
    deliveries(&receiver, 2).await;

    system.stop_scheduler().await;
    let stopped = tern_core::now_ms();
    let last_before = last_run(&system, &id).await;
    // An outage of at least five seconds, ending early in a slot's interval.
    wait_until(
        "the outage to last 5 s",
        Duration::from_secs(30),
        || async {
            let now = tern_core::now_ms();
            (now - stopped >= 5000 && (300..700).contains(&now.rem_euclid(STEP))).then_some(())
        },
    )
    .await;
    let restarted = tern_core::now_ms();
    system.start_scheduler().await;

    let slots = slots_until(&system, &receiver, &id, "three firings after it", |slots| {
        slots.range(last_before + 1..).count() >= 3
    })
    .await;
    let after: Vec<i64> = slots.range(last_before + 1..).map(|(s, _)| *s).collect();
    let latest_missed = restarted.div_euclid(STEP) * STEP;
    assert!(
        latest_missed - last_before >= 2 * STEP,
        "the outage missed at least two slots"
    );
    assert_eq!(
        after[0], latest_missed,
        "one catch-up firing, for the latest missed slot (slots after {last_before}: {after:?})"
    );
    assert_eq!(after[1], latest_missed + STEP, "then regular");
    assert_eq!(after[2], latest_missed + 2 * STEP, "then regular");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_schedule_stops_its_firings() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let doomed_receiver = Receiver::start().await;
    let clock_receiver = Receiver::start().await;
    let (doomed_id, _) = every(&system, "* * * * * *", &doomed_receiver).await;
    let (clock_id, _) = every(&system, "* * * * * *", &clock_receiver).await;
    deliveries(&doomed_receiver, 2).await;

    // A fired task shows where it came from.
    let some_task = doomed_receiver.distinct_ids().into_iter().next().unwrap();
    let (_, task) = system.task(ACME.api_key, &some_task).await;
    assert_eq!(task["schedule_id"], doomed_id.as_str());
    let slot = ms(task["schedule_slot"].as_str().unwrap());
    assert_eq!(some_task, slot_task_id(&doomed_id, slot));

    let (code, deleted) = system
        .call(
            ACME.api_key,
            Method::DELETE,
            &format!("/v1/schedules/{doomed_id}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(deleted["schedule_id"], doomed_id.as_str());
    let deleted_at = tern_core::now_ms();
    let clock_seen = clock_receiver.distinct_ids().len();
    // The other schedule is the clock: three more of its slots go by.
    deliveries(&clock_receiver, clock_seen + 3).await;
    let slots = delivered_slots(&system, &doomed_receiver, &doomed_id, &Known::default()).await;
    let latest = *slots.keys().last().unwrap();
    assert!(
        latest <= deleted_at,
        "slot {latest} fired after the delete at {deleted_at}"
    );
    for method in [Method::GET, Method::DELETE] {
        let (code, _) = system
            .call(
                ACME.api_key,
                method,
                &format!("/v1/schedules/{doomed_id}"),
                None,
            )
            .await;
        assert_eq!(code, 404);
    }
    assert_eq!(listed(&system, ACME.api_key).await, [clock_id]);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_claim_is_finished_with_the_same_task() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = js.get_key_value("tern_schedules").await.unwrap();
    let tasks = TaskStore::new(js.get_key_value("tern_tasks").await.unwrap());

    // Yearly: no slot of its own falls due during the test.
    let ids = [
        every(&system, "0 0 1 1 *", &receiver).await.0,
        every(&system, "0 0 1 1 *", &receiver).await.0,
    ];
    let slot = (tern_core::now_ms() / 1000 - 30) * 1000;
    // The second one's claimant got as far as the task record before it died.
    let orphan = Task {
        id: slot_task_id(&ids[1], slot),
        tenant_id: ACME.id.into(),
        queue: "cron".into(),
        created_at_ms: tern_core::now_ms(),
        schedule_id: ids[1].clone(),
        schedule_slot_ms: slot,
        work: Some(Work::Webhook(WebhookWork {
            url: receiver.url("/tick"),
            ..Default::default()
        })),
        ..Default::default()
    };
    tasks.create(&initial_record(&orphan)).await.unwrap();
    // Both claims were made 10 s ago by a scheduler that crashed before marking them.
    for id in &ids {
        let key = format!("{}.{id}", ACME.id);
        let entry = bucket.entry(key.as_str()).await.unwrap().unwrap();
        let mut record = ScheduleRecord::decode(entry.value).unwrap();
        record.claimed_slot_ms = slot;
        record.claimed_at_ms = tern_core::now_ms() - 10_000;
        bucket
            .update(key.as_str(), record.encode_to_vec().into(), entry.revision)
            .await
            .unwrap();
    }

    for id in &ids {
        let task_id = slot_task_id(id, slot);
        let task = system
            .wait_for_status(ACME.api_key, &task_id, "succeeded")
            .await;
        assert_eq!(task["schedule_id"], id.as_str());
        assert_eq!(last_run(&system, id).await, slot);
        let (_, schedule) = system
            .call(
                ACME.api_key,
                Method::GET,
                &format!("/v1/schedules/{id}"),
                None,
            )
            .await;
        assert_eq!(schedule["last_task_id"], task_id.as_str());
    }
    let delivered = receiver.requests();
    assert_eq!(delivered.len(), 2, "one delivery per abandoned claim");
    for request in &delivered {
        assert_eq!(request.json()["payload"]["from"], "schedule");
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_endpoints_refuse_bad_input_and_store_nothing() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let task = task_body(&receiver);

    let mut cases = vec![
        (
            json!({"cron": "61 * * * *", "task": task}),
            "cron:".to_string(),
        ),
        (
            json!({"cron": "* * * * * * *", "task": task}),
            "cron:".to_string(),
        ),
        (
            json!({"cron": "every minute", "task": task}),
            "cron:".to_string(),
        ),
        (
            json!({"cron": "0 0 30 2 *", "task": task}),
            "cron:".to_string(),
        ),
        (
            json!({"cron": "x".repeat(300), "task": task}),
            "cron:".to_string(),
        ),
        (json!({"cron": 5, "task": task}), "cron:".to_string()),
        (json!({"task": task}), "cron".to_string()),
        (
            json!({"cron": "* * * * *", "timezone": "Mars/Olympus", "task": task}),
            "timezone:".to_string(),
        ),
        (json!({"cron": "* * * * *"}), "task".to_string()),
        (
            json!({"cron": "* * * * *", "task": "hello"}),
            "task:".to_string(),
        ),
        (
            json!({"cron": "* * * * *", "task": task, "extra": 1}),
            "extra".to_string(),
        ),
    ];
    for (field, value) in [
        ("queue", json!("no.dots")),
        ("webhook_url", json!("ftp://example.com")),
        ("retry", json!({"max_retries": 1000})),
        ("delay", json!("400d")),
        ("not_before", json!("2030-01-01T00:00:00Z")),
        ("surprise", json!(true)),
    ] {
        let mut bad = task.clone();
        bad[field] = value;
        cases.push((
            json!({"cron": "* * * * *", "task": bad}),
            format!("task.{field}"),
        ));
    }
    let mut missing_payload = task.clone();
    missing_payload.as_object_mut().unwrap().remove("payload");
    cases.push((
        json!({"cron": "* * * * *", "task": missing_payload}),
        "task.payload: required".to_string(),
    ));
    for (body, field) in &cases {
        let (code, error) = system
            .call(ACME.api_key, Method::POST, "/v1/schedules", Some(body))
            .await;
        assert_eq!(code, 422, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field.as_str()), "{body}: {message}");
    }

    let url = format!("{}/v1/schedules", system.api_url);
    let plain = system
        .client()
        .post(&url)
        .bearer_auth(ACME.api_key)
        .header("content-type", "text/plain")
        .body(r#"{"cron":"* * * * *"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 415);
    let malformed = system
        .client()
        .post(&url)
        .bearer_auth(ACME.api_key)
        .header("content-type", "application/json")
        .body(r#"{"cron": "* * * * *", "task": {"#)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    let anonymous = system.client().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // Nothing of the refused requests was stored.
    assert!(listed(&system, ACME.api_key).await.is_empty());

    // A good one, in a time zone; another tenant cannot see or delete it.
    let response = system
        .client()
        .post(&url)
        .bearer_auth(ACME.api_key)
        .json(&json!({"cron": "0 9 * * *", "timezone": "Europe/Paris", "task": task}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let schedule: Value = response.json().await.unwrap();
    let id = schedule["schedule_id"].as_str().unwrap();
    assert!(location.ends_with(&format!("/v1/schedules/{id}")));
    assert_eq!(schedule["cron"], "0 9 * * *");
    assert_eq!(schedule["timezone"], "Europe/Paris");
    assert_eq!(schedule["task"], task);
    assert!(schedule.get("last_run_at").is_none());
    let created = ms(schedule["created_at"].as_str().unwrap());
    let expected = CronSpec::parse("0 9 * * *", "Europe/Paris")
        .unwrap()
        .next_after(created)
        .unwrap();
    assert_eq!(ms(schedule["next_run_at"].as_str().unwrap()), expected);
    // 09:00 in Paris is 07:00 or 08:00 UTC, whichever the season.
    let next = schedule["next_run_at"].as_str().unwrap();
    assert!(
        next.ends_with("T07:00:00.000Z") || next.ends_with("T08:00:00.000Z"),
        "{next}"
    );
    let utc = create(
        &system,
        GLOBEX.api_key,
        &json!({"cron": "*/5 * * * *", "task": task}),
    )
    .await;
    assert_eq!(utc["timezone"], "UTC");

    let path = format!("/v1/schedules/{id}");
    for method in [Method::GET, Method::DELETE] {
        let (code, error) = system
            .call(GLOBEX.api_key, method.clone(), &path, None)
            .await;
        assert_eq!(code, 404, "{method} by another tenant: {error}");
        assert_eq!(error["error"]["code"], "not_found");
    }
    let (code, mine) = system.call(ACME.api_key, Method::GET, &path, None).await;
    assert_eq!(code, 200);
    assert_eq!(mine["schedule_id"], id);
    for unknown in [
        uuid::Uuid::now_v7().to_string(),
        "not-an-id".into(),
        "a.b".into(),
    ] {
        for method in [Method::GET, Method::DELETE] {
            let (code, _) = system
                .call(
                    ACME.api_key,
                    method,
                    &format!("/v1/schedules/{unknown}"),
                    None,
                )
                .await;
            assert_eq!(code, 404, "{unknown}");
        }
    }
    let (code, _) = system.call(ACME.api_key, Method::PUT, &path, None).await;
    assert_eq!(code, 405);

    // Each tenant lists only its own.
    assert_eq!(listed(&system, ACME.api_key).await, [id]);
    let globex_id = utc["schedule_id"].as_str().unwrap();
    assert_eq!(listed(&system, GLOBEX.api_key).await, [globex_id]);
    system.stop().await;
}
