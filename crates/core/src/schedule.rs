//! Publishing JetStream message schedules (nats-server ≥ 2.12).
//!
//! A schedule is a message on its own subject carrying `Nats-Schedule: @at <time>`
//! and `Nats-Schedule-Target: <subject>`; when the time comes the server publishes
//! the payload on the target subject of the same stream. async-nats has the header
//! names but no API for it, hence this one function.

use async_nats::jetstream;
use bytes::Bytes;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Schedules `payload` to appear on `target` at `at` (whole seconds, rounded down:
/// callers that need precision schedule early and hold the rest themselves).
pub async fn publish_at(
    js: &jetstream::Context,
    subject: String,
    target: &str,
    at_unix_ms: i64,
    payload: Bytes,
) -> Result<(), String> {
    let at = OffsetDateTime::from_unix_timestamp(at_unix_ms.div_euclid(1000))
        .map_err(|e| e.to_string())?
        .format(&Rfc3339)
        .map_err(|e| e.to_string())?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_SCHEDULE,
        format!("@at {at}").as_str(),
    );
    headers.insert(async_nats::header::NATS_SCHEDULE_TARGET, target);
    let publish = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers);
    js.send_publish(subject, publish)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
