//! Queue limits: how fast (`rate_limit`) and how widely (`max_concurrent`) a queue's
//! tasks may be dispatched, across every worker and scheduler replica.
//!
//! A queue with a limit gets its own READY subject and durable consumer, so its
//! backlog never occupies the shared `delivery` consumer: `max_concurrent` is that
//! consumer's `max_ack_pending` (JetStream counts unacked messages for all workers
//! together, and a worker acks only after its call ended), and `rate_limit` is a token
//! bucket in KV that every dispatch of the queue draws from.

use serde::{Deserialize, Serialize};
use tern_proto::v1::{QueueLimits, QueuePolicy, Task, task::Work};

use crate::policy::PolicyError;
use crate::tier::Tier;
use crate::topology::{ready_limited_subject, ready_subject};

/// Bounds of `rate_limit.per_second`.
pub const RATE: (f64, f64) = (0.001, 10_000.0);
/// Bounds of `rate_limit.burst`.
pub const BURST: (u32, u32) = (1, 10_000);
/// Bounds of `max_concurrent`.
pub const MAX_CONCURRENT: (u32, u32) = (1, 10_000);

/// Unacked messages a rate-only queue's consumer may hand out: the burst plus 30 s of
/// calls at the full rate, so slow receivers still get the whole rate, within bounds
/// that keep a worker from holding a large backlog while it waits for tokens.
fn rate_only_ack_pending(rate: f64, burst: u32) -> i64 {
    let in_flight = f64::from(burst) + (rate * 30.0).ceil();
    (in_flight as i64).clamp(16, 10_000)
}

/// `rate_limit` as the API accepts it: `5` or `{"per_second": 5, "burst": 10}`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitSpec {
    /// Dispatches per second (may be fractional).
    pub per_second: f64,
    /// Bucket size; `None` = one second's worth, at least 1.
    pub burst: Option<u32>,
    /// Whether it was spelled as an object (for naming the field in errors).
    object: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitObject {
    per_second: f64,
    #[serde(default)]
    burst: Option<u32>,
}

impl utoipa::PartialSchema for RateLimitSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some(
                "Dispatches per second, or {\"per_second\", \"burst\"}.",
            ))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property("per_second", ObjectBuilder::new().schema_type(Type::Number))
                    .required("per_second")
                    .property(
                        "burst",
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    )
                    .additional_properties(Some(
                        utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                    )),
            )
            .into()
    }
}

impl utoipa::ToSchema for RateLimitSpec {}

impl<'de> Deserialize<'de> for RateLimitSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Number(n) => Ok(Self {
                per_second: n.as_f64().unwrap_or(f64::NAN),
                burst: None,
                object: false,
            }),
            value @ serde_json::Value::Object(_) => {
                let RateLimitObject { per_second, burst } =
                    serde_json::from_value(value).map_err(D::Error::custom)?;
                Ok(Self {
                    per_second,
                    burst,
                    object: true,
                })
            }
            _ => Err(D::Error::custom(
                "expected dispatches per second or {\"per_second\", \"burst\"}",
            )),
        }
    }
}

/// The limit fields of a queue policy as the API accepts them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Dispatches per second, with burst.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Deliveries in flight at once.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

impl LimitOverrides {
    /// Checks each present field's range, naming the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(rate) = &self.rate_limit {
            let field = if rate.object {
                "rate_limit.per_second"
            } else {
                "rate_limit"
            };
            // Written so that NaN fails too.
            if !(rate.per_second >= RATE.0 && rate.per_second <= RATE.1) {
                return Err(PolicyError {
                    field: field.into(),
                    message: format!(
                        "must be between {} and {} dispatches per second, got {}",
                        RATE.0, RATE.1, rate.per_second
                    ),
                });
            }
            if let Some(burst) = rate.burst
                && !(BURST.0..=BURST.1).contains(&burst)
            {
                return Err(PolicyError {
                    field: "rate_limit.burst".into(),
                    message: format!("must be between {} and {}, got {burst}", BURST.0, BURST.1),
                });
            }
        }
        if let Some(n) = self.max_concurrent
            && !(MAX_CONCURRENT.0..=MAX_CONCURRENT.1).contains(&n)
        {
            return Err(PolicyError {
                field: "max_concurrent".into(),
                message: format!(
                    "must be between {} and {}, got {n}",
                    MAX_CONCURRENT.0, MAX_CONCURRENT.1
                ),
            });
        }
        Ok(())
    }

    /// The stored form; `None` when no limit is set. Call after [`Self::validate`].
    pub fn to_limits(&self) -> Option<QueueLimits> {
        let limits = QueueLimits {
            rate_per_second: self.rate_limit.as_ref().map_or(0.0, |r| r.per_second),
            rate_burst: self.rate_limit.as_ref().map_or(0, |r| {
                r.burst.unwrap_or_else(|| default_burst(r.per_second))
            }),
            max_concurrent: self.max_concurrent.unwrap_or(0),
        };
        is_limited(Some(&limits)).then_some(limits)
    }
}

/// The burst of a rate given without one: one second's worth, at least 1.
pub fn default_burst(per_second: f64) -> u32 {
    (per_second.ceil() as u32).clamp(BURST.0, BURST.1)
}

/// True when `limits` sets any limit.
pub fn is_limited(limits: Option<&QueueLimits>) -> bool {
    limits.is_some_and(|l| l.rate_per_second > 0.0 || l.max_concurrent > 0)
}

/// The rate limit of a queue's limits, if it has one: (per second, burst).
pub fn rate_of(limits: Option<&QueueLimits>) -> Option<(f64, u32)> {
    limits
        .filter(|l| l.rate_per_second > 0.0)
        .map(|l| (l.rate_per_second, l.rate_burst.max(1)))
}

/// The `max_ack_pending` of a limited queue's consumer. Without a concurrency limit
/// it only bounds what workers hold while waiting for tokens; for a queue whose limits
/// were removed it lets the leftovers drain quickly.
pub fn max_ack_pending(limits: Option<&QueueLimits>) -> i64 {
    match limits {
        Some(l) if l.max_concurrent > 0 => i64::from(l.max_concurrent),
        Some(l) if l.rate_per_second > 0.0 => {
            rate_only_ack_pending(l.rate_per_second, l.rate_burst)
        }
        _ => 1_000,
    }
}

/// The READY subject a task goes to: its queue's own subject when the queue has
/// limits, else the shared open subject. The queue's own work is limited (webhooks,
/// proxied calls and the deliveries of their outcomes, all on the `proxy` queue); a
/// completion notification goes to the client's `notify_url`, not to the queue's
/// receiver, so it is not.
pub fn ready_subject_for(task: &Task, policy: Option<&QueuePolicy>) -> String {
    let queue_work = matches!(
        task.work,
        Some(Work::Webhook(_) | Work::Proxy(_) | Work::ProxyCallback(_))
    );
    let limited = queue_work && is_limited(policy.and_then(|p| p.limits.as_ref()));
    if limited {
        ready_limited_subject(&task.tenant_id, &task.queue)
    } else {
        ready_subject(Tier::from_proto(task.tier()), &task.tenant_id, &task.id)
    }
}

/// A rate limit as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RateLimitView {
    /// Dispatches per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

/// A queue's limits as the API shows them (`null` = unlimited).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LimitsView {
    /// Dispatches per second, with burst.
    pub rate_limit: Option<RateLimitView>,
    /// Deliveries in flight at once.
    pub max_concurrent: Option<u32>,
}

impl From<Option<&QueueLimits>> for LimitsView {
    fn from(limits: Option<&QueueLimits>) -> Self {
        Self {
            rate_limit: rate_of(limits)
                .map(|(per_second, burst)| RateLimitView { per_second, burst }),
            max_concurrent: limits.map(|l| l.max_concurrent).filter(|&n| n > 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::v1::{NotifyWork, ProxyCallbackWork, ProxyWork, WebhookWork};

    fn parse(json: &str) -> Result<LimitOverrides, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn rate_limit_takes_a_number_or_an_object() {
        let plain = parse(r#"{"rate_limit": 5}"#).unwrap();
        let limits = plain.to_limits().unwrap();
        assert_eq!((limits.rate_per_second, limits.rate_burst), (5.0, 5));
        assert_eq!(limits.max_concurrent, 0);

        let slow = parse(r#"{"rate_limit": 0.5}"#)
            .unwrap()
            .to_limits()
            .unwrap();
        assert_eq!((slow.rate_per_second, slow.rate_burst), (0.5, 1));
        let odd = parse(r#"{"rate_limit": 2.5}"#)
            .unwrap()
            .to_limits()
            .unwrap();
        assert_eq!(odd.rate_burst, 3);

        let object =
            parse(r#"{"rate_limit": {"per_second": 5, "burst": 10}, "max_concurrent": 2}"#)
                .unwrap()
                .to_limits()
                .unwrap();
        assert_eq!(
            (
                object.rate_per_second,
                object.rate_burst,
                object.max_concurrent
            ),
            (5.0, 10, 2)
        );
        let no_burst = parse(r#"{"rate_limit": {"per_second": 3}}"#)
            .unwrap()
            .to_limits()
            .unwrap();
        assert_eq!(no_burst.rate_burst, 3);

        assert_eq!(parse("{}").unwrap().to_limits(), None);
        assert_eq!(parse(r#"{"rate_limit": null}"#).unwrap().to_limits(), None);
    }

    #[test]
    fn bad_shapes_are_refused() {
        for bad in [
            r#"{"rate_limit": "5"}"#,
            r#"{"rate_limit": true}"#,
            r#"{"rate_limit": {"burst": 2}}"#,
            r#"{"rate_limit": {"per_second": 1, "extra": 1}}"#,
            r#"{"rate_limit": {"per_second": 1, "burst": -1}}"#,
            r#"{"max_concurrent": -1}"#,
            r#"{"max_concurrent": 1.5}"#,
            r#"{"max_concurrency": 1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let field = |json: &str| parse(json).unwrap().validate().unwrap_err().field;
        assert_eq!(field(r#"{"rate_limit": 0}"#), "rate_limit");
        assert_eq!(field(r#"{"rate_limit": -2}"#), "rate_limit");
        assert_eq!(field(r#"{"rate_limit": 10001}"#), "rate_limit");
        assert_eq!(
            field(r#"{"rate_limit": {"per_second": 0.0001}}"#),
            "rate_limit.per_second"
        );
        assert_eq!(
            field(r#"{"rate_limit": {"per_second": 1, "burst": 0}}"#),
            "rate_limit.burst"
        );
        assert_eq!(
            field(r#"{"rate_limit": {"per_second": 1, "burst": 10001}}"#),
            "rate_limit.burst"
        );
        assert_eq!(field(r#"{"max_concurrent": 0}"#), "max_concurrent");
        assert_eq!(field(r#"{"max_concurrent": 10001}"#), "max_concurrent");
        let message = parse(r#"{"max_concurrent": 0}"#)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("max_concurrent: must be between 1 and 10000"),
            "{message}"
        );
        assert!(
            parse(
                r#"{"rate_limit": {"per_second": 0.001, "burst": 10000}, "max_concurrent": 10000}"#
            )
            .unwrap()
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn consumers_hold_at_most_max_concurrent() {
        let limits = |rate: f64, burst: u32, max: u32| QueueLimits {
            rate_per_second: rate,
            rate_burst: burst,
            max_concurrent: max,
        };
        assert_eq!(max_ack_pending(Some(&limits(0.0, 0, 2))), 2);
        assert_eq!(max_ack_pending(Some(&limits(100.0, 100, 3))), 3);
        assert_eq!(max_ack_pending(Some(&limits(5.0, 5, 0))), 155);
        assert_eq!(max_ack_pending(Some(&limits(0.01, 1, 0))), 16);
        assert_eq!(max_ack_pending(Some(&limits(10_000.0, 10_000, 0))), 10_000);
        assert_eq!(max_ack_pending(None), 1_000);
    }

    fn task(work: Work) -> Task {
        Task {
            id: "t1".into(),
            tenant_id: "acme".into(),
            tier: tern_proto::v1::Tier::Business as i32,
            queue: "orders".into(),
            work: Some(work),
            ..Default::default()
        }
    }

    fn policy(limits: Option<QueueLimits>) -> QueuePolicy {
        QueuePolicy {
            retry: None,
            updated_at_ms: 1,
            limits,
        }
    }

    #[test]
    fn limited_queues_get_their_own_subject() {
        let webhook = task(Work::Webhook(WebhookWork::default()));
        let open = ready_subject(Tier::Business, "acme", "t1");
        let limited = "tern.ready.limited.acme.orders";
        assert_eq!(ready_subject_for(&webhook, None), open);
        assert_eq!(ready_subject_for(&webhook, Some(&policy(None))), open);
        let unlimited = QueueLimits::default();
        assert_eq!(
            ready_subject_for(&webhook, Some(&policy(Some(unlimited)))),
            open
        );
        let concurrency = QueueLimits {
            max_concurrent: 2,
            ..Default::default()
        };
        assert_eq!(
            ready_subject_for(&webhook, Some(&policy(Some(concurrency)))),
            limited
        );
        let rate = QueueLimits {
            rate_per_second: 0.5,
            rate_burst: 1,
            ..Default::default()
        };
        assert_eq!(
            ready_subject_for(&webhook, Some(&policy(Some(rate)))),
            limited
        );
        // Proxied calls and their callbacks are the queue's work too.
        for work in [
            Work::Proxy(ProxyWork::default()),
            Work::ProxyCallback(ProxyCallbackWork::default()),
        ] {
            assert_eq!(
                ready_subject_for(&task(work.clone()), Some(&policy(Some(concurrency)))),
                limited
            );
            assert_eq!(ready_subject_for(&task(work), None), open);
        }
        // Notifications go to the client, not to the queue's receiver.
        let notify = task(Work::Notify(NotifyWork::default()));
        assert_eq!(
            ready_subject_for(&notify, Some(&policy(Some(concurrency)))),
            open
        );
    }

    #[test]
    fn views_show_null_for_unlimited() {
        let view = serde_json::to_value(LimitsView::from(None)).unwrap();
        assert!(view["rate_limit"].is_null() && view["max_concurrent"].is_null());
        let limits = QueueLimits {
            rate_per_second: 0.5,
            rate_burst: 1,
            max_concurrent: 4,
        };
        let view = serde_json::to_value(LimitsView::from(Some(&limits))).unwrap();
        assert_eq!(view["rate_limit"]["per_second"], 0.5);
        assert_eq!(view["rate_limit"]["burst"], 1);
        assert_eq!(view["max_concurrent"], 4);
    }
}
