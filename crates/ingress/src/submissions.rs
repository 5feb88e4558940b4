//! `tern_task_submissions_total{tier, queue, outcome, reason}`: what became of each
//! task submission (`POST /v1/tasks`, asynchronous proxied calls): `accepted`,
//! `replayed` (an idempotent repeat), or `rejected` with the error code as `reason`.
//!
//! `tier` is empty when the API key was not recognised, and `queue` when the request
//! named none that is valid, so unauthenticated input cannot add series.

use axum::response::Response;
use tern_core::tier::Tier;

use crate::error::ApiError;

/// Counts one submission that ended in `result`.
pub fn record(tier: Option<Tier>, queue: &str, result: &Result<Response, ApiError>) {
    let (outcome, reason) = match result {
        Ok(response) if response.headers().contains_key("idempotent-replayed") => ("replayed", ""),
        Ok(_) => ("accepted", ""),
        Err(e) => ("rejected", e.code()),
    };
    count(tier, queue, outcome, reason);
}

/// Counts one submission refused with `error`.
pub fn record_rejected(tier: Option<Tier>, queue: &str, error: &ApiError) {
    count(tier, queue, "rejected", error.code());
}

fn count(tier: Option<Tier>, queue: &str, outcome: &'static str, reason: &'static str) {
    let queue = if tier.is_some() && tern_core::topology::is_subject_token(queue) {
        queue.to_string()
    } else {
        String::new()
    };
    metrics::counter!(
        "tern_task_submissions_total",
        "tier" => tier.map_or("", |t| t.as_str()),
        "queue" => queue,
        "outcome" => outcome,
        "reason" => reason,
    )
    .increment(1);
}
