//! One READY message from start to finish: claim the task, attempt it, record the
//! attempt, then ack, nak with the retry delay, or dead-letter.
//!
//! Ordering matters for crash safety: the record is written before the message is
//! acked or nak'd, so a crash in between redelivers a message whose record already
//! tells the truth (a finished task is then acked without a second call).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tern_core::endpoints::Endpoints;
use tern_core::task_store::{Change, TaskStore, Updated, initial_record, is_terminal};
use tern_core::tenants::Tenants;
use tern_core::topology::dlq_subject;
use tern_core::url_guard::FailureKind;
use tern_proto::Message;
use tern_proto::v1::{Attempt, AttemptError, DeadLetter, Task, TaskRecord, TaskResult, TaskStatus};
use tokio_util::sync::CancellationToken;

use crate::executor::{AttemptOutcome, AttemptResult, Executor};
use crate::job;
use crate::retry::{self, Step, Verdict};

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
    // A fresh task's record is its initial record at `record_revision`; 0 means the
    // publisher could not vouch for that (a re-drive), so read it first.
    let known = (task.record_revision > 0).then(|| (initial_record(&task), task.record_revision));
    let claimed = ctx.store.update(&task.id, known, claim).await;
    let (record, revision) = match claimed {
        Ok(Updated::Written(record, revision)) => (record, revision),
        Ok(Updated::Declined(record, _)) => {
            tracing::debug!(task_id = %task.id, status = ?record.status(), "task no longer deliverable; dropping message");
            let _ = message.ack().await;
            return;
        }
        Ok(Updated::Missing) => {
            tracing::warn!(task_id = %task.id, "task record missing (expired?); dropping message");
            let _ = message.ack().await;
            return;
        }
        Err(e) => {
            tracing::warn!(task_id = %task.id, error = %e, "could not claim task; retrying soon");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };

    let attempt_number = record.attempts.len() as u32 + 1;
    let outcome = match ctx.tenants.by_id(&task.tenant_id) {
        None => refused(
            FailureKind::Other,
            &format!("tenant {} is no longer configured", task.tenant_id),
        ),
        Some(tenant) => match job::build(&task, attempt_number) {
            Err(e) => refused(FailureKind::Other, &e.to_string()),
            Ok(job) => match ctx.endpoints.disabled(&task.tenant_id, &job.url) {
                Some(disabled) => refused_endpoint(&disabled),
                None => {
                    let call = ctx.executor.execute(&job, &tenant.signer);
                    tokio::select! {
                        outcome = with_progress(&message, ctx.progress_every, call) => outcome,
                        _ = abort.cancelled() => {
                            // Shutdown grace is over: hand the message back for immediate redelivery.
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            return;
                        }
                    }
                }
            },
        },
    };

    let verdict = verdict_of(&outcome);
    let policy = task.retry.unwrap_or_default();
    let now = tern_core::now_ms();
    let budget_started = if record.budget_started_at_ms > 0 {
        record.budget_started_at_ms
    } else {
        task.created_at_ms
    };
    let step = retry::decide(
        &policy,
        attempt_number.saturating_sub(record.retry_base),
        budget_started,
        now,
        &verdict,
        &mut rand::rng(),
    );
    let attempt = attempt_record(attempt_number, &outcome);
    record_metrics(&outcome, &step);

    // What must be true before the record says so: a disabled endpoint before a
    // 410 failure is recorded, a dead letter before the task is marked dead.
    let prepared = match &step {
        Step::Fail(reason) if outcome.status() == Some(410) => match task_url(&task) {
            Some(url) => ctx
                .endpoints
                .disable(&task.tenant_id, url, &task.id, reason)
                .await
                .map_err(|e| format!("could not disable endpoint: {e}")),
            None => Ok(()),
        },
        Step::Dead(reason) => {
            let mut dead_record = record.clone();
            dead_record.attempts.push(attempt.clone());
            dead_record.status = TaskStatus::Dead as i32;
            dead_record.last_error = reason.clone();
            publish_dead_letter(&ctx, &task, dead_record, reason)
                .await
                .map_err(|e| format!("could not dead-letter: {e}"))
        }
        _ => Ok(()),
    };
    if let Err(e) = prepared {
        tracing::warn!(task_id = %task.id, error = %e, "retrying soon");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }

    let result = result_of(&outcome);
    let awaits_callback = record.awaits_callback;
    let written = finish(&ctx, &task.id, (record, revision), |r| {
        r.attempts.push(attempt.clone());
        r.next_attempt_at_ms = 0;
        match &step {
            // The provider accepted the dispatch; only its callback (or the deadline)
            // ends the task now. A callback that already arrived has finished it.
            Step::Succeed if awaits_callback => r.status = TaskStatus::Waiting as i32,
            Step::Succeed => {
                r.status = TaskStatus::Succeeded as i32;
                r.result = result.clone();
            }
            Step::Retry(delay) => r.next_attempt_at_ms = now + delay.as_millis() as i64,
            Step::Fail(reason) => {
                r.status = TaskStatus::Failed as i32;
                r.last_error = reason.clone();
            }
            Step::Dead(reason) => {
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

fn refused(kind: FailureKind, message: &str) -> AttemptOutcome {
    AttemptOutcome {
        started_at_ms: tern_core::now_ms(),
        duration: Duration::ZERO,
        result: AttemptResult::Failed {
            kind,
            message: message.to_string(),
        },
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

fn task_url(task: &Task) -> Option<&str> {
    match &task.work {
        Some(tern_proto::v1::task::Work::Webhook(w)) => Some(&w.url),
        Some(tern_proto::v1::task::Work::Notify(n)) => Some(&n.url),
        None => None,
    }
}

fn verdict_of(outcome: &AttemptOutcome) -> Verdict {
    match &outcome.result {
        AttemptResult::Response { status, .. } if (200..300).contains(status) => Verdict::Success,
        AttemptResult::Response { status: 410, .. } => {
            Verdict::Permanent("HTTP 410 Gone: the endpoint is now disabled".into())
        }
        AttemptResult::Disabled { message } => Verdict::Permanent(message.clone()),
        AttemptResult::Response {
            status, headers, ..
        } => Verdict::Retryable {
            reason: format!("HTTP {status}"),
            retry_after: (*status == 429 || *status == 503)
                .then(|| headers.get("retry-after"))
                .flatten()
                .and_then(|v| {
                    tern_core::backoff::parse_retry_after(v, std::time::SystemTime::now())
                }),
        },
        AttemptResult::Failed { kind, message } => Verdict::Retryable {
            reason: format!("{}: {message}", kind.as_str()),
            retry_after: None,
        },
    }
}

fn attempt_record(number: u32, outcome: &AttemptOutcome) -> Attempt {
    let (status_code, error, excerpt) = match &outcome.result {
        AttemptResult::Response {
            status,
            body_excerpt,
            ..
        } => (
            u32::from(*status),
            AttemptError::Unspecified,
            body_excerpt.clone(),
        ),
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
            body_excerpt,
        } => Some(TaskResult {
            status_code: u32::from(*status),
            headers: headers.clone().into_iter().collect(),
            body: body_excerpt.clone(),
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
    ack.await.map(|_| ()).map_err(|e| e.to_string())
}

fn record_metrics(outcome: &AttemptOutcome, step: &Step) {
    let class = match &outcome.result {
        AttemptResult::Response { status, .. } => match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        AttemptResult::Failed { kind, .. } => kind.as_str(),
        AttemptResult::Disabled { .. } => "endpoint-disabled",
    };
    let step_name = match step {
        Step::Succeed => "succeeded",
        Step::Retry(_) => "retry",
        Step::Dead(_) => "dead",
        Step::Fail(_) => "failed",
    };
    metrics::counter!("tern_deliveries_total", "class" => class, "outcome" => step_name)
        .increment(1);
    metrics::histogram!("tern_delivery_seconds").record(outcome.duration.as_secs_f64());
}
