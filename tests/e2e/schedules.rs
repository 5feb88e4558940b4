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
    let schedule = create(
        &system,
        ACME.api_key,
        &json!({"cron": "* * * * * *", "task": task_body(&receiver)}),
    )
    .await;
    let id = schedule["schedule_id"].as_str().unwrap().to_string();
    let created = ms(schedule["created_at"].as_str().unwrap());

    wait_until("60 deliveries", Duration::from_secs(120), || async {
        (receiver.distinct_ids().len() >= 60).then_some(())
    })
    .await;
    let (code, before) = system
        .call(
            ACME.api_key,
            Method::GET,
            &format!("/v1/schedules/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{before}");
    let last = ms(before["last_run_at"].as_str().unwrap());
    let (code, _) = system
        .call(
            ACME.api_key,
            Method::DELETE,
            &format!("/v1/schedules/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 200);

    let known = Known::default();
    let slots = wait_until(
        "every fired slot to be delivered",
        Duration::from_secs(30),
        || {
            let (system, receiver, id, known) = (&system, &receiver, &id, &known);
            async move {
                let slots = delivered_slots(system, receiver, id, known).await;
                let first = *slots.keys().next()?;
                let complete = (first..=last).step_by(1000).all(|s| slots.contains_key(&s));
                complete.then_some(slots)
            }
        },
    )
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
    let schedule = create(
        &system,
        ACME.api_key,
        &json!({"cron": "*/2 * * * * *", "task": task_body(&receiver)}),
    )
    .await;
    let id = schedule["schedule_id"].as_str().unwrap().to_string();
    wait_until("two deliveries", Duration::from_secs(30), || async {
        (receiver.distinct_ids().len() >= 2).then_some(())
    })
    .await;

    system.stop_scheduler().await;
    let stopped = tern_core::now_ms();
    let (_, before) = system
        .call(
            ACME.api_key,
            Method::GET,
            &format!("/v1/schedules/{id}"),
            None,
        )
        .await;
    let last_before = ms(before["last_run_at"].as_str().unwrap());
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

    let known = Known::default();
    let after = wait_until(
        "three firings after the restart",
        Duration::from_secs(30),
        || {
            let (system, receiver, id, known) = (&system, &receiver, &id, &known);
            async move {
                let slots = delivered_slots(system, receiver, id, known).await;
                let after: Vec<i64> = slots.range(last_before + 1..).map(|(s, _)| *s).collect();
                (after.len() >= 3).then_some(after)
            }
        },
    )
    .await;
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
    let doomed = create(
        &system,
        ACME.api_key,
        &json!({"cron": "* * * * * *", "task": task_body(&doomed_receiver)}),
    )
    .await;
    let clock = create(
        &system,
        ACME.api_key,
        &json!({"cron": "* * * * * *", "task": task_body(&clock_receiver)}),
    )
    .await;
    let doomed_id = doomed["schedule_id"].as_str().unwrap().to_string();
    wait_until("two firings", Duration::from_secs(30), || async {
        (doomed_receiver.distinct_ids().len() >= 2).then_some(())
    })
    .await;

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
    wait_until(
        "three more clock firings",
        Duration::from_secs(30),
        || async { (clock_receiver.distinct_ids().len() >= clock_seen + 3).then_some(()) },
    )
    .await;
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
    let (_, list) = system
        .call(ACME.api_key, Method::GET, "/v1/schedules", None)
        .await;
    let ids: Vec<&str> = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["schedule_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [clock["schedule_id"].as_str().unwrap()]);
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
    let mut ids = Vec::new();
    for _ in 0..2 {
        let schedule = create(
            &system,
            ACME.api_key,
            &json!({"cron": "0 0 1 1 *", "task": task_body(&receiver)}),
        )
        .await;
        ids.push(schedule["schedule_id"].as_str().unwrap().to_string());
    }
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
        let (_, schedule) = system
            .call(
                ACME.api_key,
                Method::GET,
                &format!("/v1/schedules/{id}"),
                None,
            )
            .await;
        assert_eq!(ms(schedule["last_run_at"].as_str().unwrap()), slot);
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
        "task: missing field `payload`".to_string(),
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
    let (code, list) = system
        .call(ACME.api_key, Method::GET, "/v1/schedules", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["schedules"], json!([]));

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
    for (key, expected) in [
        (ACME.api_key, id),
        (GLOBEX.api_key, utc["schedule_id"].as_str().unwrap()),
    ] {
        let (_, list) = system.call(key, Method::GET, "/v1/schedules", None).await;
        let ids: Vec<&str> = list["schedules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["schedule_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [expected]);
    }
    system.stop().await;
}
