//! Accepting work under an idempotency key: one claim protocol for `Idempotency-Key`
//! on tasks and `X-Proxy-Idempotency-Key` on proxied calls.
//!
//! The key is claimed with an atomic create-if-absent; of concurrent duplicates one
//! accepts the work and the others wait for it and replay its task id. A failed
//! acceptance releases the key; an abandoned claim is taken over.

use std::future::Future;
use std::time::{Duration, Instant};

use tern_core::idempotency::Claim;

use crate::error::ApiError;
use crate::state::AppState;

/// How long an identical request waits for the first one to finish.
const IN_PROGRESS_WAIT: Duration = Duration::from_secs(10);
/// A claim older than this whose request never completed is taken over.
const ABANDONED_AFTER_MS: i64 = 30_000;

/// How an idempotent submission ended.
pub enum Outcome<T> {
    /// This request accepted the work (`task_id` is the id it was given).
    Accepted(T),
    /// An earlier identical request did; its task id.
    Replayed(String),
}

/// Runs `accept` for the task `task_id` unless `storage_key` was already used by a
/// request with `fingerprint` (replay) or another request (409). With a `window`,
/// uses older than it do not count.
pub async fn submit<T, F, Fut>(
    state: &AppState,
    storage_key: &str,
    fingerprint: &[u8],
    task_id: &str,
    window: Option<Duration>,
    accept: F,
) -> Result<Outcome<T>, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let store = &state.idempotency;
    let started = Instant::now();
    let mut claim = store
        .claim(storage_key, fingerprint, task_id, window)
        .await?;
    loop {
        match claim {
            Claim::New { revision } => {
                let accepted = match accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        if let Err(release) = store.release(storage_key).await {
                            tracing::warn!(error = %release, "could not release idempotency key");
                        }
                        return Err(e);
                    }
                };
                store
                    .complete(storage_key, revision, fingerprint, task_id)
                    .await?;
                return Ok(Outcome::Accepted(accepted));
            }
            Claim::Replay { task_id } => return Ok(Outcome::Replayed(task_id)),
            Claim::Conflict => return Err(ApiError::IdempotencyConflict),
            Claim::Expired { revision } => {
                claim = match store
                    .take_over(storage_key, revision, fingerprint, task_id)
                    .await?
                {
                    Some(revision) => Claim::New { revision },
                    // A concurrent request renewed it first: see what it left.
                    None => store.inspect(storage_key, fingerprint, window).await?,
                };
            }
            Claim::InProgress {
                claimed_at_ms,
                revision,
            } => {
                if tern_core::now_ms() - claimed_at_ms > ABANDONED_AFTER_MS {
                    if let Some(revision) = store
                        .take_over(storage_key, revision, fingerprint, task_id)
                        .await?
                    {
                        claim = Claim::New { revision };
                        continue;
                    }
                } else if started.elapsed() > IN_PROGRESS_WAIT {
                    return Err(ApiError::IdempotencyInProgress);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                claim = match store.inspect(storage_key, fingerprint, window).await? {
                    // The first request failed and released the key: claim it afresh.
                    Claim::InProgress { revision: 0, .. } => {
                        store
                            .claim(storage_key, fingerprint, task_id, window)
                            .await?
                    }
                    other => other,
                };
            }
        }
    }
}
