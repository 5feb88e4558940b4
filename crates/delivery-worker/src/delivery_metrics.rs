//! The worker's metrics and the attempt attributes of its `deliver` span.
//!
//! Each handle is registered on first use and kept, so recording a delivery costs a
//! few atomic operations and no lookup or allocation:
//!
//! - `tern_deliveries_total{outcome, class}`: calls by what the round led to
//!   (`succeeded`, `retry`, `failed`, `dead`) and the answer's class (`2xx` … `5xx`,
//!   or `error` when no answer came)
//! - `tern_delivery_errors_total{kind}`: calls that got no answer, by why
//!   (`timeout`, `connect`, `dns`, `tls`, `refused-by-guard`, `other`,
//!   `endpoint-disabled`)
//! - `tern_delivery_seconds`: call latency histogram
//! - `tern_delivery_retries_total`: rounds that end in a retry (a nak with delay)
//! - `tern_dlq_inflow_total`: tasks dead-lettered

use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use tern_core::executor::{AttemptOutcome, AttemptResult};
use tern_core::retry::Step;
use tern_core::url_guard::FailureKind;

const OUTCOMES: [&str; 4] = ["succeeded", "retry", "failed", "dead"];
const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];
const ERRORS: [&str; 7] = [
    "timeout",
    "connect",
    "dns",
    "tls",
    "refused-by-guard",
    "other",
    "endpoint-disabled",
];

/// Handles, registered lazily so that only label sets that occur are exported.
struct Handles {
    deliveries: [[OnceLock<Counter>; CLASSES.len()]; OUTCOMES.len()],
    errors: [OnceLock<Counter>; ERRORS.len()],
    latency: OnceLock<Histogram>,
    retries: OnceLock<Counter>,
    dead_letters: OnceLock<Counter>,
}

static HANDLES: Handles = Handles {
    deliveries: [const { [const { OnceLock::new() }; CLASSES.len()] }; OUTCOMES.len()],
    errors: [const { OnceLock::new() }; ERRORS.len()],
    latency: OnceLock::new(),
    retries: OnceLock::new(),
    dead_letters: OnceLock::new(),
};

fn outcome_index(step: &Step) -> usize {
    match step {
        Step::Succeed => 0,
        Step::Retry(_) => 1,
        Step::Fail(_) => 2,
        Step::Dead(_) => 3,
    }
}

/// The class index of a call, and the error index when it got no answer.
fn class_index(outcome: &AttemptOutcome) -> (usize, Option<usize>) {
    match &outcome.result {
        AttemptResult::Response { status, .. } => match status {
            200..=299 => (0, None),
            300..=399 => (1, None),
            400..=499 => (2, None),
            _ => (3, None),
        },
        AttemptResult::Failed { kind, .. } => (
            4,
            Some(match kind {
                FailureKind::Timeout => 0,
                FailureKind::Connect => 1,
                FailureKind::Dns => 2,
                FailureKind::Tls => 3,
                FailureKind::RefusedByGuard => 4,
                FailureKind::Other => 5,
            }),
        ),
        AttemptResult::Disabled { .. } => (4, Some(6)),
    }
}

/// Counts one call of a round that led to `step`, and records it on the current
/// `deliver` span as attempt `attempt`.
pub fn record_call(attempt: u32, outcome: &AttemptOutcome, step: &Step) {
    let (class, error) = class_index(outcome);
    let (o, c) = (outcome_index(step), class);
    HANDLES.deliveries[o][c]
        .get_or_init(|| {
            metrics::counter!("tern_deliveries_total", "outcome" => OUTCOMES[o], "class" => CLASSES[c])
        })
        .increment(1);
    if let Some(e) = error {
        HANDLES.errors[e]
            .get_or_init(|| metrics::counter!("tern_delivery_errors_total", "kind" => ERRORS[e]))
            .increment(1);
    }
    HANDLES
        .latency
        .get_or_init(|| metrics::histogram!("tern_delivery_seconds"))
        .record(outcome.duration.as_secs_f64());
    tracing::debug!(
        attempt,
        status = outcome.status(),
        outcome = OUTCOMES[o],
        duration_ms = outcome.duration.as_millis() as u64,
        "delivery attempt"
    );
    let span = tracing::Span::current();
    tern_core::task_span::record_attempt(&span, attempt, outcome.status(), outcome.duration);
    tern_core::task_span::record_outcome(&span, OUTCOMES[o], matches!(step, Step::Succeed));
}

/// Counts a round that ends in a retry.
pub fn record_retry() {
    HANDLES
        .retries
        .get_or_init(|| metrics::counter!("tern_delivery_retries_total"))
        .increment(1);
}

/// Counts a task published to the dead-letter stream.
pub fn record_dead_letter() {
    HANDLES
        .dead_letters
        .get_or_init(|| metrics::counter!("tern_dlq_inflow_total"))
        .increment(1);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn outcome(result: AttemptResult) -> AttemptOutcome {
        AttemptOutcome {
            started_at_ms: 0,
            duration: Duration::ZERO,
            result,
        }
    }

    #[test]
    fn answers_are_classed_by_status_and_failures_by_kind() {
        let answered = |status| AttemptResult::Response {
            status,
            headers: Default::default(),
            body: Default::default(),
        };
        let class = |result| {
            let (c, e) = class_index(&outcome(result));
            (CLASSES[c], e.map(|e| ERRORS[e]))
        };
        assert_eq!(class(answered(204)), ("2xx", None));
        assert_eq!(class(answered(302)), ("3xx", None));
        assert_eq!(class(answered(429)), ("4xx", None));
        assert_eq!(class(answered(503)), ("5xx", None));
        for kind in [
            FailureKind::Timeout,
            FailureKind::Connect,
            FailureKind::Dns,
            FailureKind::Tls,
            FailureKind::RefusedByGuard,
            FailureKind::Other,
        ] {
            let failed = AttemptResult::Failed {
                kind,
                message: String::new(),
            };
            assert_eq!(class(failed), ("error", Some(kind.as_str())));
        }
        let disabled = AttemptResult::Disabled {
            message: String::new(),
        };
        assert_eq!(class(disabled), ("error", Some("endpoint-disabled")));
    }

    #[test]
    fn steps_name_their_outcome() {
        let name = |step: Step| OUTCOMES[outcome_index(&step)];
        assert_eq!(name(Step::Succeed), "succeeded");
        assert_eq!(name(Step::Retry(Duration::from_secs(1))), "retry");
        assert_eq!(name(Step::Fail("gone".into())), "failed");
        assert_eq!(name(Step::Dead("exhausted".into())), "dead");
    }
}
