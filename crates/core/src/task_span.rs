//! The spans of a task's work, one per step in each service, each in the task's
//! trace: `accept` (ingress), `schedule` and `release` (scheduler), `deliver` (worker,
//! one per attempt), `resolve` (callback resolver) and `expire` (scheduler, a
//! callback that never came).
//!
//! Every span carries `task_id` and `trace_id`, so each log line written while a task
//! is processed carries them too. While spans are exported (see
//! [`crate::telemetry`]) they are made at INFO level with the task's stored
//! `traceparent` as their remote parent; otherwise at DEBUG level, which costs nothing
//! on the hot path unless debug logging is on.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::exporting;
use crate::trace_context::TraceParent;

/// The trace id part of a stored `traceparent` (`""` when it has none), without
/// allocating: `00-<trace id>-<parent id>-<flags>`.
pub fn trace_id_of(traceparent: &str) -> &str {
    match traceparent.get(3..35) {
        Some(id) if traceparent.len() >= 55 && traceparent.as_bytes()[2] == b'-' => id,
        _ => "",
    }
}

/// One span per step; a macro because a span's name and level must be constants.
macro_rules! task_span {
    ($name:literal, $kind:literal, $task_id:expr, $trace_id:expr) => {
        if exporting() {
            task_span!(tracing::Level::INFO, $name, $kind, $task_id, $trace_id)
        } else {
            task_span!(tracing::Level::DEBUG, $name, $kind, $task_id, $trace_id)
        }
    };
    ($level:expr, $name:literal, $kind:literal, $task_id:expr, $trace_id:expr) => {
        tracing::span!(
            $level,
            $name,
            otel.kind = $kind,
            task_id = %$task_id,
            trace_id = $trace_id,
            attempt = Empty,
            http.response.status_code = Empty,
            duration_ms = Empty,
            outcome = Empty,
            otel.status_code = Empty,
        )
    };
}

/// Makes `span` a child of the remote span `traceparent` names (exporting only).
fn join(span: &Span, traceparent: &str) {
    if !exporting() || span.is_disabled() {
        return;
    }
    if let Some(parent) = TraceParent::parse(traceparent) {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// The ingress accepting task `task_id` from a request that carried `incoming` (its
/// `traceparent` header, if any): the span and the `traceparent` to store with the
/// task. The stored one names the accept span itself while spans are exported (so
/// every later step is its child), else a fresh span id in the client's trace (or a
/// new trace when the request brought none).
pub fn accept(task_id: &str, incoming: Option<&str>) -> (Span, String) {
    if !exporting() {
        let traceparent = crate::trace_context::for_accepted_task(incoming);
        let span = task_span!("accept", "server", task_id, trace_id_of(&traceparent));
        return (span, traceparent);
    }
    let client = incoming.and_then(TraceParent::parse);
    let span = task_span!("accept", "server", task_id, Empty);
    if let Some(client) = client {
        join(&span, &client.to_string());
    }
    let traceparent =
        traceparent_of(&span).unwrap_or_else(|| crate::trace_context::for_accepted_task(incoming));
    span.record("trace_id", trace_id_of(&traceparent));
    (span, traceparent)
}

/// A step on a task after its acceptance, each a span of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The scheduler forwarding it from INTAKE to READY.
    Schedule,
    /// The scheduler releasing it (a delayed task) when it falls due.
    Release,
    /// A worker's delivery attempt (see [`record_attempt`]).
    Deliver,
    /// The resolver resolving it with its provider's callback.
    Resolve,
    /// The scheduler failing it because its callback never came.
    Expire,
}

/// The span of `step` on task `task_id`, a child of its stored `traceparent`.
pub fn start(step: Step, task_id: &str, traceparent: &str) -> Span {
    let trace_id = trace_id_of(traceparent);
    let span = match step {
        Step::Schedule => task_span!("schedule", "consumer", task_id, trace_id),
        Step::Release => task_span!("release", "consumer", task_id, trace_id),
        Step::Deliver => task_span!("deliver", "consumer", task_id, trace_id),
        Step::Resolve => task_span!("resolve", "server", task_id, trace_id),
        Step::Expire => task_span!("expire", "consumer", task_id, trace_id),
    };
    join(&span, traceparent);
    span
}

/// Records how a step ended on `span`: `outcome` (`succeeded`, `retry`, `failed`,
/// `dead`, `resolved`, …), an error status unless `ok`.
pub fn record_outcome(span: &Span, outcome: &str, ok: bool) {
    span.record("outcome", outcome);
    span.record("otel.status_code", if ok { "ok" } else { "error" });
}

/// Records a delivery attempt's call on the current `deliver` span: its number, the
/// HTTP status (none for a network failure), and how long the call took.
pub fn record_attempt(
    span: &Span,
    attempt: u32,
    status: Option<u16>,
    duration: std::time::Duration,
) {
    span.record("attempt", attempt);
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    span.record("duration_ms", duration.as_millis() as u64);
}

/// The `traceparent` for an outbound call made in the current span while spans are
/// exported (the receiver's parent is then the `deliver` span); `None` otherwise.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let current = Span::current();
    if current.is_disabled() {
        return None;
    }
    traceparent_of(&current)
}

/// The `traceparent` naming `span` itself, once its OpenTelemetry span exists.
fn traceparent_of(span: &Span) -> Option<String> {
    let own = span.context().span().span_context().clone();
    own.is_valid().then(|| {
        TraceParent {
            trace_id: own.trace_id().to_bytes(),
            parent_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
        }
        .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_ids_are_sliced_from_valid_traceparents_only() {
        assert_eq!(trace_id_of(SAMPLE), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace_id_of(""), "");
        assert_eq!(trace_id_of("00-4bf92f35"), "");
        assert_eq!(
            trace_id_of("é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ""
        );
    }

    #[test]
    fn without_export_the_stored_trace_keeps_the_clients_trace_id() {
        let (_, stored) = accept("task", Some(SAMPLE));
        assert_eq!(trace_id_of(&stored), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(stored, SAMPLE);
        let (_, fresh) = accept("task", None);
        assert!(TraceParent::parse(&fresh).is_some());
        assert_eq!(current_traceparent(), None);
    }
}
