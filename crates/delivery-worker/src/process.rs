//! One READY message from start to finish: claim the task, run an attempt round of
//! its job, record the attempts, then ack, nak with the retry delay, dead-letter, or
//! hand the outcome to a follow-up (a proxied call's callback).
//!
//! Ordering matters for crash safety: the record is written before the message is
//! acked or nak'd, so a crash in between redelivers a message whose record already
//! tells the truth (a finished task is then acked without a second call).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tern_core::endpoints::Endpoints;
use tern_core::executor::{AttemptOutcome, AttemptResult, Executor, Signing, excerpt};
use tern_core::retry::{self, Receiver, Step};
use tern_core::round::{self, Round};
use tern_core::sealing::Sealer;
use tern_core::task_span::trace_id_of;
use tern_core::task_store::{
    Change, CreateError, StoreError, TaskStore, Updated, initial_record, is_terminal,
};
use tern_core::tenants::Tenants;
use tern_core::topology::{dlq_subject, intake_subject};
use tern_core::url_guard::FailureKind;
use tern_proto::Message;
use tern_proto::v1::{
    Attempt, AttemptError, DeadLetter, Task, TaskRecord, TaskResult, TaskStatus, task::Work,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery_metrics;
use crate::job::{self, JobContext, OnExhaustion, OnSuccess};

/// Everything message processing needs, shared by all in-flight deliveries.
pub struct Context {
    /// Task records.
    pub store: TaskStore,
    /// Tenants (for signing secrets).
    pub tenants: Tenants,
    /// HTTP executor.
    pub executor: Executor,
    /// JetStream, for dead letters.
    pub js: jetstream::Context,
    /// Endpoints disabled after a 410.
    pub endpoints: Endpoints,
    /// Progress acks are sent this often during a call (a third of the ack wait).
    pub progress_every: Duration,
    /// Opens proxied calls' sealed headers (`proxy.secret_key`).
    pub sealer: Option<Sealer>,
    /// Largest upstream response body a proxied call keeps.
    pub max_proxy_response_bytes: usize,
}

/// Processes one message; never panics on bad input, always acks, naks or terms.
pub async fn handle(ctx: Arc<Context>, message: jetstream::Message, abort: CancellationToken) {
    let task = match Task::decode(message.payload.clone()) {
        Ok(task) => task,
        Err(e) => {
            tracing::error!(subject = %message.subject, error = %e, "undecodable READY message; terminating it");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tern_core::task_span::start(
        tern_core::task_span::Step::Deliver,
        &task.id,
        &task.traceparent,
    );
    deliver(ctx, message, task, abort).instrument(span).await;
}

/// One attempt at `task`, inside its `deliver` span.
async fn deliver(
    ctx: Arc<Context>,
    message: jetstream::Message,
    task: Task,
    abort: CancellationToken,
) {
    let claimed = claim_task(&ctx.store, &task).await;
    let (record, revision) = match claimed {
        Ok(Updated::Written(record, revision)) => (record, revision),
        Ok(Updated::Declined(record, _)) => {
            tracing::debug!(task_id = %task.id, trace_id = trace_id_of(&task.traceparent), status = ?record.status(), "task no longer deliverable; dropping message");
            let _ = message.ack().await;
            return;
        }
        Ok(Updated::Missing) => {
            tracing::warn!(task_id = %task.id, trace_id = trace_id_of(&task.traceparent), "task record missing (expired?); dropping message");
            let _ = message.ack().await;
            return;
        }
        Err(e) => {
            tracing::warn!(task_id = %task.id, trace_id = trace_id_of(&task.traceparent), error = %e, "could not claim task; retrying soon");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };

    // Attempt numbers count rounds: a cascade's calls in one round share one.
    let attempt_number = record.attempts.last().map_or(0, |a| a.number) + 1;
    let job_ctx = JobContext {
        sealer: ctx.sealer.as_ref(),
        max_proxy_response_bytes: ctx.max_proxy_response_bytes,
    };
    let job = job::build(&task, attempt_number, &job_ctx);
    let (receiver, phase) = match &job {
        Ok(job) => (job.receiver, job.phase),
        Err(_) => (Receiver::Webhook, ""),
    };
    let round = match (ctx.tenants.by_id(&task.tenant_id), &job) {
        (None, _) => refused_round(
            &task,
            FailureKind::Other,
            &format!("tenant {} is no longer configured", task.tenant_id),
        ),
        (_, Err(e)) => refused_round(&task, FailureKind::Other, &e.to_string()),
        (Some(tenant), Ok(job)) => {
            let shared: &Context = &ctx;
            let task = &task;
            let call = round::run(&job.targets, job.receiver, |request| {
                let signing = job.signed.then(|| Signing {
                    signer: &tenant.signer,
                    message_id: &task.id,
                });
                // Only signed deliveries go to endpoints a 410 can disable; an
                // upstream's 410 is its answer to this one request.
                let disabled = job
                    .signed
                    .then(|| shared.endpoints.disabled(&task.tenant_id, &request.url))
                    .flatten();
                async move {
                    match disabled {
                        Some(disabled) => refused_endpoint(&disabled),
                        None => shared.executor.execute(request, signing).await,
                    }
                }
            });
            tokio::select! {
                round = with_progress(&message, ctx.progress_every, call) => round,
                _ = abort.cancelled() => {
                    // Shutdown grace is over: hand the message back for immediate redelivery.
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return;
                }
            }
        }
    };

    let verdict = round.verdict(receiver);
    let policy = task.retry.unwrap_or_default();
    let now = tern_core::now_ms();
    // A phase's budget starts with its first message (a proxied call's callback
    // message is created when the upstream phase ends), or at a re-drive.
    let budget_started = record
        .budget_started_at_ms
        .max(record.created_at_ms)
        .max(task.created_at_ms);
    let step = retry::decide(
        &policy,
        rounds_in_budget(&record, phase) + 1,
        budget_started,
        now,
        &verdict,
        &mut rand::rng(),
    );
    let attempts: Vec<Attempt> = round
        .calls
        .iter()
        .map(|(url, outcome)| attempt_record(attempt_number, url, phase, outcome))
        .collect();
    for (_, outcome) in &round.calls {
        delivery_metrics::record_call(attempt_number, outcome, &step);
    }
    if let Step::Retry(_) = step {
        delivery_metrics::record_retry();
    }
    let (on_success, on_exhaustion) = match &job {
        Ok(job) => (job.on_success.clone(), job.on_exhaustion.clone()),
        Err(_) => (OnSuccess::Complete, OnExhaustion::DeadLetter),
    };
    let follow_up = matches!(
        (&step, &on_success, &on_exhaustion),
        (Step::Succeed, OnSuccess::DeliverResult, _)
            | (
                Step::Fail(_) | Step::Dead(_),
                _,
                OnExhaustion::DeliverFailure
            )
    );

    // What must be true before the record says so: a disabled endpoint before a
    // 410 failure is recorded, a dead letter before the task is marked dead, the
    // callback message before the upstream phase is recorded as over.
    let prepared = match &step {
        _ if follow_up => publish_callback(&ctx, &task, &round, &step)
            .await
            .map_err(|e| format!("could not queue the callback: {e}")),
        Step::Fail(reason) if receiver == Receiver::Webhook => {
            match round.calls.last().filter(|(_, o)| o.status() == Some(410)) {
                Some((url, _)) => ctx
                    .endpoints
                    .disable(&task.tenant_id, url, &task.id, reason)
                    .await
                    .map_err(|e| format!("could not disable endpoint: {e}")),
                None => Ok(()),
            }
        }
        Step::Dead(reason) => {
            let mut dead_record = record.clone();
            dead_record.attempts.extend(attempts.iter().cloned());
            dead_record.status = TaskStatus::Dead as i32;
            dead_record.last_error = reason.clone();
            publish_dead_letter(&ctx, &task, dead_record, reason)
                .await
                .map_err(|e| format!("could not dead-letter: {e}"))
        }
        _ => Ok(()),
    };
    if let Err(e) = prepared {
        tracing::warn!(task_id = %task.id, trace_id = trace_id_of(&task.traceparent), error = %e, "retrying soon");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }

    let result = round.winning().and_then(|(_, outcome)| result_of(outcome));
    let written = finish(&ctx, &task.id, (record, revision), |r| {
        r.attempts.extend(attempts.iter().cloned());
        r.next_attempt_at_ms = 0;
        match (&step, &on_success) {
            // The upstream answered: its response is the result; the task ends when
            // the callback has it.
            (Step::Succeed, OnSuccess::DeliverResult) => r.result = result.clone(),
            // The provider accepted the dispatch; only its callback (or the deadline)
            // ends the task now. A callback that already arrived has finished it.
            (Step::Succeed, OnSuccess::AwaitCallback) => r.status = TaskStatus::Waiting as i32,
            (Step::Succeed, OnSuccess::Complete) => {
                r.status = TaskStatus::Succeeded as i32;
                r.result = result.clone();
            }
            (Step::Succeed, OnSuccess::Settle { failure: None }) => {
                r.status = TaskStatus::Succeeded as i32;
            }
            (Step::Succeed, OnSuccess::Settle { failure: Some(e) }) => {
                r.status = TaskStatus::Failed as i32;
                r.last_error = e.clone();
            }
            (Step::Retry(delay), _) => r.next_attempt_at_ms = now + delay.as_millis() as i64,
            // The failure payload is on its way to the callback.
            (Step::Fail(reason) | Step::Dead(reason), _) if follow_up => {
                r.last_error = format!("upstream_failed: {reason}");
            }
            (Step::Fail(reason), _) => {
                r.status = TaskStatus::Failed as i32;
                r.last_error = reason.clone();
            }
            (Step::Dead(reason), _) => {
                r.status = TaskStatus::Dead as i32;
                r.last_error = reason.clone();
            }
        }
    })
    .await;
    let ack = match step {
        Step::Retry(delay) => AckKind::Nak(Some(delay)),
        _ => AckKind::Ack,
    };
    settle(&ctx, &message, written, ack).await;
}

/// Rounds of `phase` already made in the current retry budget (after a re-drive's
/// base).
fn rounds_in_budget(record: &TaskRecord, phase: &str) -> u32 {
    let mut numbers: Vec<u32> = record
        .attempts
        .iter()
        .filter(|a| a.phase == phase && a.number > record.retry_base)
        .map(|a| a.number)
        .collect();
    numbers.dedup();
    numbers.len() as u32
}

/// Queues the follow-up that delivers a proxied call's outcome to its callback.
async fn publish_callback(
    ctx: &Context,
    task: &Task,
    round: &Round,
    step: &Step,
) -> Result<(), String> {
    let Some(Work::Proxy(work)) = &task.work else {
        return Err("not a proxied call".into());
    };
    let failure = match step {
        Step::Fail(reason) | Step::Dead(reason) => Some(reason.as_str()),
        _ => None,
    };
    let callback = tern_core::proxy::callback_task(task, work, round, failure);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        tern_core::proxy::callback_message_id(&task.id).as_str(),
    );
    let publish = jetstream::message::PublishMessage::build()
        .payload(callback.encode_to_vec().into())
        .headers(headers);
    let tier = tern_core::tier::Tier::from_proto(task.tier());
    ctx.js
        .send_publish(intake_subject(tier, &task.tenant_id, &task.id), publish)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A round that made no call: the job could not be built or its tenant is gone.
fn refused_round(task: &Task, kind: FailureKind, message: &str) -> Round {
    let url = tern_core::task_store::initial_record(task).target_url;
    Round {
        calls: vec![(url, AttemptOutcome::refused(kind, message))],
        winner: None,
        last_per_target: vec![0],
    }
}

/// Claims `task`'s record. A deferred record is created as claimed; if it exists
/// already (a cancel came first, or this is a redelivery) the claim decides on it. A
/// fresh task's record is its initial record at `record_revision`; 0 means the
/// publisher could not vouch for that (a re-drive), so it is read first.
async fn claim_task(store: &TaskStore, task: &Task) -> Result<Updated, StoreError> {
    if task.record_deferred {
        let mut record = initial_record(task);
        claim(&mut record);
        match store.create(&record).await {
            Ok(revision) => return Ok(Updated::Written(record, revision)),
            Err(CreateError::Exists) => {}
            Err(CreateError::Store(e)) => return Err(e),
        }
        return store.update(&task.id, None, claim).await;
    }
    let known = (task.record_revision > 0).then(|| (initial_record(task), task.record_revision));
    store.update(&task.id, known, claim).await
}

/// The claim: queued (or re-claimed processing, after a crash) becomes processing.
fn claim(record: &mut TaskRecord) -> Change {
    match record.status() {
        TaskStatus::Queued | TaskStatus::Scheduled | TaskStatus::Processing => {
            record.status = TaskStatus::Processing as i32;
            record.updated_at_ms = tern_core::now_ms();
            record.next_attempt_at_ms = 0;
            Change::Write
        }
        _ => Change::Decline,
    }
}

/// Writes the attempt's consequences unless someone finished the task meanwhile;
/// returns the record as written (none when it had already ended).
async fn finish(
    ctx: &Context,
    id: &str,
    known: (TaskRecord, u64),
    apply: impl Fn(&mut TaskRecord),
) -> Result<Option<TaskRecord>, String> {
    let mut last_error = String::new();
    for round in 0..3u32 {
        let known = (round == 0).then(|| known.clone());
        match ctx
            .store
            .update(id, known, |r| {
                if is_terminal(r.status()) {
                    return Change::Decline;
                }
                apply(r);
                r.updated_at_ms = tern_core::now_ms();
                Change::Write
            })
            .await
        {
            Ok(Updated::Written(record, _)) => return Ok(Some(record)),
            Ok(_) => return Ok(None),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100 << round)).await;
    }
    Err(last_error)
}

/// Acks or naks once the record is written; if it could not be written the message
/// comes back soon and the attempt is made again (at-least-once). A task that has
/// just ended gets its completion notification.
async fn settle(
    ctx: &Context,
    message: &jetstream::Message,
    written: Result<Option<TaskRecord>, String>,
    kind: AckKind,
) {
    let kind = match written {
        Ok(Some(record)) => {
            tern_core::notify::announce(&ctx.js, &ctx.store, &record).await;
            kind
        }
        Ok(None) => kind,
        Err(e) => {
            tracing::warn!(error = %e, "could not record attempt; message will be redelivered");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack failed; message will be redelivered after the ack wait");
    }
}

/// Runs `work` while telling JetStream every `every` that the message is still
/// being worked on, so a long call (or a long wait for a rate token) is not redelivered.
pub(crate) async fn with_progress<T, F: std::future::Future<Output = T>>(
    message: &jetstream::Message,
    every: Duration,
    work: F,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            outcome = &mut work => return outcome,
            _ = ticker.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// The attempt that is not made because the endpoint answered 410 before.
fn refused_endpoint(disabled: &tern_proto::v1::DisabledEndpoint) -> AttemptOutcome {
    AttemptOutcome {
        started_at_ms: tern_core::now_ms(),
        duration: Duration::ZERO,
        result: AttemptResult::Disabled {
            message: format!(
                "endpoint disabled: it answered 410 Gone to task {} at {}; an operator must re-enable it (POST /admin/v1/endpoints/enable)",
                disabled.task_id,
                tern_core::task_view::rfc3339(disabled.disabled_at_ms)
            ),
        },
    }
}

fn attempt_record(number: u32, url: &str, phase: &str, outcome: &AttemptOutcome) -> Attempt {
    let (status_code, error, excerpt) = match &outcome.result {
        AttemptResult::Response { status, body, .. } => {
            (u32::from(*status), AttemptError::Unspecified, excerpt(body))
        }
        AttemptResult::Failed { kind, message } => (0, attempt_error(*kind), message.clone()),
        AttemptResult::Disabled { message } => (0, AttemptError::EndpointDisabled, message.clone()),
    };
    Attempt {
        number,
        started_at_ms: outcome.started_at_ms,
        duration_ms: outcome.duration.as_millis() as u64,
        status_code,
        error: error as i32,
        response_excerpt: excerpt,
        url: url.to_string(),
        phase: phase.to_string(),
    }
}

fn attempt_error(kind: FailureKind) -> AttemptError {
    match kind {
        FailureKind::Timeout => AttemptError::Timeout,
        FailureKind::Connect => AttemptError::Connect,
        FailureKind::Dns => AttemptError::Dns,
        FailureKind::Tls => AttemptError::Tls,
        FailureKind::RefusedByGuard => AttemptError::RefusedByGuard,
        FailureKind::Other => AttemptError::Other,
    }
}

fn result_of(outcome: &AttemptOutcome) -> Option<TaskResult> {
    match &outcome.result {
        AttemptResult::Response {
            status,
            headers,
            body,
        } => Some(TaskResult {
            status_code: u32::from(*status),
            // First value of each header (the record's map has one per name).
            headers: headers
                .keys()
                .filter_map(|name| {
                    let value = headers.get(name)?.to_str().ok()?;
                    Some((name.as_str().to_string(), value.to_string()))
                })
                .collect(),
            body: excerpt(body),
            duration_ms: outcome.duration.as_millis() as u64,
        }),
        AttemptResult::Failed { .. } | AttemptResult::Disabled { .. } => None,
    }
}

async fn publish_dead_letter(
    ctx: &Context,
    task: &Task,
    record: TaskRecord,
    reason: &str,
) -> Result<(), String> {
    let letter = DeadLetter {
        task: Some(task.clone()),
        record: Some(record),
        dead_at_ms: tern_core::now_ms(),
        reason: reason.to_string(),
    };
    let mut headers = async_nats::HeaderMap::new();
    // The attempt count keeps a second death (after a re-drive) from being dropped as
    // a duplicate of the first within JetStream's duplicate window.
    let attempts = letter.record.as_ref().map_or(0, |r| r.attempts.len());
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dead:{}:{attempts}", task.id).as_str(),
    );
    let publish = jetstream::message::PublishMessage::build()
        .payload(letter.encode_to_vec().into())
        .headers(headers);
    let ack = ctx
        .js
        .send_publish(dlq_subject(&task.tenant_id, &task.queue, &task.id), publish)
        .await
        .map_err(|e| e.to_string())?;
    ack.await
        .map(|_| delivery_metrics::record_dead_letter())
        .map_err(|e| e.to_string())
}
