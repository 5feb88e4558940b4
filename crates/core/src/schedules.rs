//! Recurring schedules: a cron expression read in a time zone, the slots it yields,
//! and the schedule records in the `tern_schedules` bucket.
//!
//! A *slot* is one time the expression matches, in milliseconds since the epoch
//! (always whole seconds). Scheduler replicas fire a schedule's due slot by
//! compare-and-swap on its record (see `ScheduleRecord`), and name the slot's task
//! after the schedule and the slot, so a slot yields one task however many replicas
//! and retries touch it.

use std::str::FromStr;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use sha2::{Digest, Sha256};
use tern_proto::Message;
use tern_proto::v1::ScheduleRecord;

use crate::task_store::{StoreError, read};

/// The time zone of a schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Why a cron expression or time zone was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The expression does not parse.
    #[error("cron: {0}")]
    Cron(String),
    /// The expression parses but matches no time at all (e.g. 30 February).
    #[error("cron: the expression never matches a time")]
    Never,
    /// Not an IANA time zone name.
    #[error("timezone: unknown time zone {0:?}; use an IANA name such as \"Europe/Paris\"")]
    TimeZone(String),
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    zone: Tz,
}

impl CronSpec {
    /// Parses `expression` (5 fields, or 6 with leading seconds; `@hourly` and the
    /// like) read in `timezone` (an IANA name).
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, SpecError> {
        let zone = Tz::from_str(timezone).map_err(|_| SpecError::TimeZone(timezone.into()))?;
        // Seconds are the finest field, so no schedule fires more than once a second;
        // a year field is refused (a sixth field is always seconds, never a year).
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| SpecError::Cron(e.to_string()))?;
        let spec = Self { cron, zone };
        if spec.next_after(0).is_none() {
            return Err(SpecError::Never);
        }
        Ok(spec)
    }

    /// The first slot strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let start = self.at(ms.div_euclid(1000) * 1000)?;
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The last slot at or before `ms`.
    pub fn latest_until(&self, ms: i64) -> Option<i64> {
        let start = self.at(ms.div_euclid(1000) * 1000)?;
        self.cron
            .find_previous_occurrence(&start, true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    fn at(&self, ms: i64) -> Option<DateTime<Tz>> {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .map(|t| self.zone.from_utc_datetime(&t.naive_utc()))
    }
}

/// The slot to fire at `now_ms`, if any: the latest slot at or before now that lies
/// after both the schedule's creation and the last slot claimed. However many slots
/// were missed (every scheduler down), they collapse into this one firing.
pub fn due_slot(spec: &CronSpec, record: &ScheduleRecord, now_ms: i64) -> Option<i64> {
    let latest = spec.latest_until(now_ms)?;
    (latest > record.created_at_ms && latest > record.claimed_slot_ms).then_some(latest)
}

/// When the schedule fires next, as of `now_ms`.
pub fn next_run(spec: &CronSpec, record: &ScheduleRecord, now_ms: i64) -> Option<i64> {
    due_slot(spec, record, now_ms)
        .map(|_| now_ms)
        .or_else(|| spec.next_after(now_ms.max(record.claimed_slot_ms)))
}

/// The id of the task a schedule creates for `slot_ms`: a UUIDv7 whose time is the
/// slot and whose other bits hash (schedule, slot), so every replica and every retry
/// names the same task and JetStream's duplicate window and the create-if-absent
/// of the task record see one task.
pub fn slot_task_id(schedule_id: &str, slot_ms: i64) -> String {
    let digest = Sha256::digest(format!("tern-schedule:{schedule_id}:{slot_ms}"));
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(slot_ms.max(0) as u64, &bits)
        .into_uuid()
        .to_string()
}

/// The bucket key of a tenant's schedule (both are subject tokens, so `.` separates).
pub fn schedule_key(tenant_id: &str, schedule_id: &str) -> String {
    format!("{tenant_id}.{schedule_id}")
}

/// The schedule records.
#[derive(Clone)]
pub struct Schedules {
    kv: kv::Store,
}

impl Schedules {
    /// Wraps the `tern_schedules` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// The bucket, for followers and compare-and-swap writers.
    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    /// Stores a new schedule.
    pub async fn create(&self, record: &ScheduleRecord) -> Result<(), StoreError> {
        self.kv
            .create(
                schedule_key(&record.tenant_id, &record.id),
                Bytes::from(record.encode_to_vec()),
            )
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// A tenant's schedule, read from the bucket itself.
    pub async fn get(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<ScheduleRecord>, StoreError> {
        Ok(read(&self.kv, &schedule_key(tenant_id, id))
            .await?
            .map(|(r, _)| r))
    }

    /// Deletes a tenant's schedule and returns it as it was; `None` when there was
    /// none. Scheduler replicas holding an older revision then lose their
    /// compare-and-swap, so no slot is claimed after this returns.
    pub async fn delete(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<ScheduleRecord>, StoreError> {
        let key = schedule_key(tenant_id, id);
        loop {
            let Some((record, revision)) = read::<ScheduleRecord>(&self.kv, &key).await? else {
                return Ok(None);
            };
            match self.kv.delete_expect_revision(&key, Some(revision)).await {
                Ok(()) => return Ok(Some(record)),
                // A scheduler fired it meanwhile: read the new revision and try again.
                Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
        }
    }

    /// A tenant's schedules, oldest first (ids are UUIDv7), read from the bucket.
    pub async fn list(&self, tenant_id: &str) -> Result<Vec<ScheduleRecord>, StoreError> {
        let prefix = schedule_key(tenant_id, "");
        let records = crate::task_store::list_prefixed(&self.kv, &prefix).await?;
        Ok(records.into_iter().map(|(_, record)| record).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of an RFC 3339 time.
    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    fn record(created: &str, claimed: i64) -> ScheduleRecord {
        ScheduleRecord {
            created_at_ms: ms(created),
            claimed_slot_ms: claimed,
            ..Default::default()
        }
    }

    #[test]
    fn five_and_six_field_expressions() {
        let every_five_minutes = CronSpec::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            every_five_minutes.next_after(ms("2026-03-01T10:02:30Z")),
            Some(ms("2026-03-01T10:05:00Z"))
        );
        let every_second = CronSpec::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(ms("2026-03-01T10:02:30.400Z")),
            Some(ms("2026-03-01T10:02:31Z"))
        );
        assert_eq!(
            every_second.latest_until(ms("2026-03-01T10:02:30.400Z")),
            Some(ms("2026-03-01T10:02:30Z"))
        );
        let hourly = CronSpec::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            hourly.next_after(ms("2026-03-01T10:00:00Z")),
            Some(ms("2026-03-01T11:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_name_the_field() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * *",
            "*/0 * * * *",
            "hello",
        ] {
            let error = CronSpec::parse(bad, "UTC").unwrap_err();
            assert!(error.to_string().starts_with("cron:"), "{bad:?}: {error}");
        }
        assert_eq!(
            CronSpec::parse("0 0 30 2 *", "UTC").unwrap_err(),
            SpecError::Never
        );
        let error = CronSpec::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(error.to_string().starts_with("timezone:"), "{error}");
    }

    #[test]
    fn time_zones_follow_daylight_saving() {
        let paris = CronSpec::parse("0 9 * * *", "Europe/Paris").unwrap();
        // Winter: 09:00 in Paris is 08:00 UTC.
        assert_eq!(
            paris.next_after(ms("2026-03-28T12:00:00Z")),
            Some(ms("2026-03-29T07:00:00Z")),
            "the clocks went forward on 29 March 2026: 09:00 CEST is 07:00 UTC"
        );
        assert_eq!(
            paris.next_after(ms("2026-03-27T12:00:00Z")),
            Some(ms("2026-03-28T08:00:00Z"))
        );
        // Autumn: back to CET on 25 October 2026.
        assert_eq!(
            paris.next_after(ms("2026-10-25T00:00:00Z")),
            Some(ms("2026-10-25T08:00:00Z"))
        );
        let new_york = CronSpec::parse("30 2 * * *", "America/New_York").unwrap();
        // 02:30 does not exist on 8 March 2026 in New York: a fixed time runs just after the gap.
        assert_eq!(
            new_york.next_after(ms("2026-03-08T05:00:00Z")),
            Some(ms("2026-03-08T07:00:00Z"))
        );
        // 01:30 happens twice on 1 November 2026: a fixed time runs once.
        let twice = CronSpec::parse("30 1 * * *", "America/New_York").unwrap();
        let first = twice.next_after(ms("2026-11-01T04:00:00Z")).unwrap();
        assert_eq!(first, ms("2026-11-01T05:30:00Z"));
        assert_eq!(twice.next_after(first), Some(ms("2026-11-02T06:30:00Z")));
    }

    #[test]
    fn due_slot_collapses_missed_slots_into_the_latest() {
        let every_second = CronSpec::parse("* * * * * *", "UTC").unwrap();
        let created = "2026-03-01T10:00:00.300Z";
        // Not before the first slot after creation.
        assert_eq!(
            due_slot(
                &every_second,
                &record(created, 0),
                ms("2026-03-01T10:00:00.900Z")
            ),
            None
        );
        assert_eq!(
            due_slot(
                &every_second,
                &record(created, 0),
                ms("2026-03-01T10:00:01.010Z")
            ),
            Some(ms("2026-03-01T10:00:01Z"))
        );
        // Ten slots missed: one firing, for the latest.
        let claimed = ms("2026-03-01T10:00:05Z");
        assert_eq!(
            due_slot(
                &every_second,
                &record(created, claimed),
                ms("2026-03-01T10:00:15.500Z")
            ),
            Some(ms("2026-03-01T10:00:15Z"))
        );
        // A claimed slot is not due again.
        assert_eq!(
            due_slot(&every_second, &record(created, claimed), claimed + 999),
            None
        );
    }

    #[test]
    fn next_run_is_the_next_slot_or_now_when_one_is_due() {
        let every_minute = CronSpec::parse("* * * * *", "UTC").unwrap();
        let now = ms("2026-03-01T10:00:30Z");
        assert_eq!(
            next_run(&every_minute, &record("2026-03-01T10:00:10Z", 0), now),
            Some(ms("2026-03-01T10:01:00Z"))
        );
        assert_eq!(
            next_run(&every_minute, &record("2026-03-01T09:00:10Z", 0), now),
            Some(now)
        );
    }

    #[test]
    fn slot_task_ids_are_stable_uuids_per_slot() {
        let a = slot_task_id("s-1", 1_772_358_000_000);
        assert_eq!(a, slot_task_id("s-1", 1_772_358_000_000));
        assert_ne!(a, slot_task_id("s-1", 1_772_358_001_000));
        assert_ne!(a, slot_task_id("s-2", 1_772_358_000_000));
        let uuid = uuid::Uuid::try_parse(&a).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        let (secs, _) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, 1_772_358_000);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One cron field: `*`, a value, a range, a step or a list, in or out of range.
    fn field(max: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            (0..=max).prop_map(|v| v.to_string()),
            (0..=max, 0..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (1..=max.max(1)).prop_map(|s| format!("*/{s}")),
            prop::collection::vec(0..=max, 1..4).prop_map(|v| v
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")),
        ]
    }

    fn zone() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn parsing_never_panics(expression in "[ -~]{0,40}", timezone in "[ -~]{0,20}") {
            let _ = CronSpec::parse(&expression, &timezone);
            let _ = CronSpec::parse(&expression, "UTC");
        }

        #[test]
        fn cron_shaped_input_never_panics(
            fields in prop::collection::vec("(\\*|[0-9]{1,3}|[0-9]{1,2}-[0-9]{1,2}|\\*/[0-9]{1,3}|[A-Za-z]{3}|L|W|#|\\?)", 0..8),
        ) {
            let _ = CronSpec::parse(&fields.join(" "), "UTC");
        }

        /// A valid expression parses, and its slots are where they should be: the next
        /// one after a time is later, the latest until a time is not.
        #[test]
        fn valid_expressions_have_ordered_slots(
            minute in field(59), hour in field(23), day in field(28), month in field(11),
            zone in zone(), at in 0i64..4_000_000_000_000,
        ) {
            let month = month.split(',').map(|m| {
                m.split('-').map(|v| v.parse::<u32>().map_or(v.to_string(), |n| (n + 1).to_string()))
                    .collect::<Vec<_>>().join("-")
            }).collect::<Vec<_>>().join(",");
            let day = day.replace("*/0", "*");
            let expression = format!("{minute} {hour} {day} {month} *");
            // `0` is not a day of the month, nor a `*/0` step anything.
            prop_assume!(!expression.split(' ').any(|f| f == "0-0" || f.contains("*/0")));
            if let Ok(spec) = CronSpec::parse(&expression, zone) {
                if let Some(next) = spec.next_after(at) {
                    prop_assert!(next > at);
                }
                if let Some(latest) = spec.latest_until(at) {
                    prop_assert!(latest <= at);
                }
            }
        }

        #[test]
        fn every_minute_fires_within_a_minute(zone in zone(), at in 0i64..4_000_000_000_000) {
            let spec = CronSpec::parse("* * * * *", zone).unwrap();
            let next = spec.next_after(at).unwrap();
            prop_assert!(next > at && next - at <= 60_000 && next % 60_000 == 0);
        }
    }
}
