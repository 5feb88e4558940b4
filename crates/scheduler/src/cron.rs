//! Firing recurring schedules.
//!
//! Every scheduler replica mirrors the `tern_schedules` bucket and wakes at the next
//! slot of any schedule. A due slot is *claimed* by compare-and-swap on the
//! schedule's record (`claimed_slot_ms` moves forward), so of all the replicas that
//! woke for it exactly one owns it. The owner creates the slot's task through the
//! same accept path as `POST /v1/tasks`, under an id derived from (schedule, slot),
//! then marks the slot fired (`fired_slot_ms`). A claim that is not marked fired
//! within [`LEASE_MS`] (its owner crashed, or NATS failed it) is taken over and
//! finished by whichever replica sees it first; the derived id makes that repeat
//! find or republish the same task rather than create a second one.
//!
//! Slots missed while no scheduler ran collapse into one firing for the latest of
//! them (`tern_core::schedules::due_slot`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tern_core::accept::Acceptor;
use tern_core::kv_cache::KvCache;
use tern_core::queues::Queues;
use tern_core::schedules::{CronSpec, due_slot, slot_task_id};
use tern_core::task_request::{TaskRequest, TaskRules};
use tern_core::task_store::{Change, Updated, update};
use tern_core::tenants::Tenants;
use tern_proto::v1::ScheduleRecord;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a claim may stay unfired before another replica takes it over.
pub const LEASE_MS: i64 = 5_000;

/// The longest the loop sleeps: new schedules reach the mirror at any moment.
const MAX_SLEEP_MS: i64 = 1_000;

/// What firing a slot needs.
pub struct Firing {
    /// The schedules bucket (claims and marks are compare-and-swap writes to it).
    pub schedules: kv::Store,
    /// Creates the slot's task like an API-submitted one.
    pub acceptor: Acceptor,
    /// Validation of the task body.
    pub rules: TaskRules,
    /// Queue policies (a fired task gets the policy in force when it fires).
    pub queues: Queues,
    /// Tenants by id (tier).
    pub tenants: Arc<Tenants>,
}

/// Fires due slots until `shutdown` fires; firings in progress finish first.
pub async fn run(firing: Firing, shutdown: CancellationToken) {
    let mirror: KvCache<ScheduleRecord> =
        KvCache::follow(firing.schedules.clone(), shutdown.clone());
    let firing = Arc::new(firing);
    let mut specs: HashMap<String, Option<CronSpec>> = HashMap::new();
    // The latest slot this replica knows to be fired (by itself or another): the
    // mirror lags the bucket by a moment, and this keeps it from re-reading a slot.
    let mut handled: HashMap<String, i64> = HashMap::new();
    // Schedules not to look at before a time: another replica's claim is still
    // within its lease, or NATS just failed.
    let mut deferred: HashMap<String, i64> = HashMap::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut in_flight: JoinSet<(String, Fired)> = JoinSet::new();
    loop {
        while let Some(done) = in_flight.try_join_next() {
            reap(done, &mut busy, &mut handled, &mut deferred);
        }
        let now = tern_core::now_ms();
        let mut wake = now + MAX_SLEEP_MS;
        let mut due = Vec::new();
        let mut present = HashSet::new();
        mirror.for_each(|key, record| {
            present.insert(key.to_string());
            let spec = specs
                .entry(key.to_string())
                .or_insert_with(|| CronSpec::parse(&record.cron, &record.timezone).ok());
            let Some(spec) = spec else { return };
            if let Some(next) = spec.next_after(now) {
                wake = wake.min(next);
            }
            if busy.contains(key) {
                return;
            }
            if let Some(until) = deferred.get(key).copied().filter(|until| *until > now) {
                wake = wake.min(until);
                return;
            }
            let seen = handled.get(key).copied().unwrap_or(0);
            if record.claimed_slot_ms > record.fired_slot_ms {
                if seen >= record.claimed_slot_ms {
                    // Settled already; the mirror has not caught up yet.
                    return;
                }
                // Someone is firing it; if they went quiet, take over after the lease.
                let expiry = record.claimed_at_ms + LEASE_MS;
                if now >= expiry {
                    due.push((key.to_string(), spec.clone()));
                } else {
                    wake = wake.min(expiry);
                }
                return;
            }
            if due_slot(spec, record, now).is_some_and(|slot| slot > seen) {
                due.push((key.to_string(), spec.clone()));
            }
        });
        specs.retain(|key, _| present.contains(key));
        handled.retain(|key, _| present.contains(key));
        deferred.retain(|key, until| present.contains(key) && *until > now);
        for (key, spec) in due {
            busy.insert(key.clone());
            let firing = firing.clone();
            in_flight.spawn(async move {
                let fired = fire(&firing, &key, &spec).await;
                (key, fired)
            });
        }
        let pause =
            Duration::from_millis((wake - tern_core::now_ms()).clamp(1, MAX_SLEEP_MS) as u64);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                reap(done, &mut busy, &mut handled, &mut deferred);
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// How a firing attempt ended.
enum Fired {
    /// Every slot up to this one is fired.
    Settled(i64),
    /// Leave the schedule alone until this time (another replica's claim is within
    /// its lease, or NATS failed).
    Later(i64),
}

fn reap(
    done: Result<(String, Fired), tokio::task::JoinError>,
    busy: &mut HashSet<String>,
    handled: &mut HashMap<String, i64>,
    deferred: &mut HashMap<String, i64>,
) {
    let Ok((key, fired)) = done else { return };
    busy.remove(&key);
    match fired {
        Fired::Settled(slot) => {
            let seen = handled.entry(key).or_insert(0);
            *seen = (*seen).max(slot);
        }
        Fired::Later(until) => {
            deferred.insert(key, until);
        }
    }
}

/// How long to leave a schedule alone after NATS failed.
const RETRY_MS: i64 = 1_000;

/// Claims and fires the due slot of schedule `key` (or finishes an abandoned claim).
async fn fire(firing: &Firing, key: &str, spec: &CronSpec) -> Fired {
    let now = tern_core::now_ms();
    let mut slot = 0;
    let mut took_over = false;
    let claimed = update(&firing.schedules, key, None, |r: &mut ScheduleRecord| {
        took_over = false;
        if r.claimed_slot_ms > r.fired_slot_ms {
            if now - r.claimed_at_ms < LEASE_MS {
                return Change::Decline;
            }
            slot = r.claimed_slot_ms;
            took_over = true;
        } else {
            match due_slot(spec, r, now) {
                Some(due) => slot = due,
                None => return Change::Decline,
            }
        }
        r.claimed_slot_ms = slot;
        r.claimed_at_ms = now;
        Change::Write
    })
    .await;
    let (record, revision) = match claimed {
        Ok(Updated::Written(record, revision)) => (record, revision),
        // Another replica is firing it: look again at the next slot, or when its
        // lease runs out should it go quiet.
        Ok(Updated::Declined(record, _)) if record.claimed_slot_ms > record.fired_slot_ms => {
            let expiry = record.claimed_at_ms + LEASE_MS;
            let next = spec.next_after(now).unwrap_or(expiry);
            return Fired::Later(next.min(expiry));
        }
        // Another replica fired it.
        Ok(Updated::Declined(record, _)) => return Fired::Settled(record.fired_slot_ms),
        // Deleted: it fires no more.
        Ok(Updated::Missing) => return Fired::Settled(i64::MAX),
        Err(e) => {
            tracing::warn!(schedule = key, error = %e, "could not claim a schedule's slot; retrying");
            return Fired::Later(now + RETRY_MS);
        }
    };
    if took_over {
        tracing::info!(schedule = %record.id, slot, "taking over an unfinished firing");
        metrics::counter!("tern_schedule_takeovers_total").increment(1);
    }
    let task_id = slot_task_id(&record.id, slot);
    let outcome = match create_task(firing, &record, &task_id, slot).await {
        Ok(()) => Ok(()),
        Err(Failure::Transient(e)) => {
            // The claim stays open: after the lease, some replica (maybe this one)
            // finishes it with the same task id.
            tracing::warn!(schedule = %record.id, slot, error = %e, "could not create a scheduled task; will retry");
            return Fired::Later(now + LEASE_MS);
        }
        Err(Failure::Permanent(e)) => {
            tracing::warn!(schedule = %record.id, slot, error = %e, "schedule slot skipped");
            metrics::counter!("tern_schedule_skipped_total").increment(1);
            Err(e)
        }
    };
    let marked = update(
        &firing.schedules,
        key,
        Some((record, revision)),
        |r: &mut ScheduleRecord| {
            if r.claimed_slot_ms != slot || r.fired_slot_ms >= slot {
                return Change::Decline;
            }
            r.fired_slot_ms = slot;
            match &outcome {
                Ok(()) => {
                    r.last_task_id = task_id.clone();
                    r.last_error.clear();
                }
                Err(e) => r.last_error = e.clone(),
            }
            Change::Write
        },
    )
    .await;
    if let Err(e) = marked {
        // The task exists; the claim is taken over after the lease and finds it.
        tracing::warn!(schedule = key, slot, error = %e, "could not mark a slot fired");
        return Fired::Later(now + LEASE_MS);
    }
    if outcome.is_ok() {
        metrics::counter!("tern_schedule_fired_total").increment(1);
    }
    Fired::Settled(slot)
}

enum Failure {
    /// NATS failed: try the same slot again.
    Transient(String),
    /// The slot can never create its task (tenant gone, body no longer valid).
    Permanent(String),
}

async fn create_task(
    firing: &Firing,
    record: &ScheduleRecord,
    task_id: &str,
    slot: i64,
) -> Result<(), Failure> {
    let tenant = firing
        .tenants
        .by_id(&record.tenant_id)
        .ok_or_else(|| Failure::Permanent("the tenant is no longer configured".into()))?;
    let request: TaskRequest = serde_json::from_slice(&record.task_json)
        .map_err(|e| Failure::Permanent(format!("task: {e}")))?;
    let queue = firing.queues.policy(&tenant.id, &request.queue);
    let mut new = request
        .validate(
            &firing.rules,
            queue,
            task_id.to_string(),
            tern_core::now_ms(),
            "task.",
        )
        .map_err(|e| Failure::Permanent(e.0))?;
    new.schedule_id = record.id.clone();
    new.schedule_slot_ms = slot;
    match firing.acceptor.accept_or_resume(tenant, new).await {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Transient(e.to_string())),
    }
}
