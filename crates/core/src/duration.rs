//! Human durations as the API and configuration spell them.
//!
//! Clients write `"30s"`, `"5m"`, `"1h"`, `"500ms"`, `"2d"` or a bare integer number
//! of seconds; one parser serves config files, JSON bodies and control headers so
//! every place accepts exactly the same spellings.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("duration is empty")]
    Empty,
    /// Not `<integer><unit>` or a plain integer.
    #[error("invalid duration {0:?}: use an integer with a unit (ms, s, m, h, d), e.g. \"30s\"")]
    Invalid(String),
    /// The value does not fit.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"` or `"30"` (seconds).
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::Invalid(input.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(input.to_string()))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(DurationError::Invalid(input.to_string())),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::Overflow(input.to_string()))
}

/// Formats a duration the shortest exact way (`"1h"`, `"90s"`, `"250ms"`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A `Duration` that (de)serialises in the human form above.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl utoipa::PartialSchema for HumanDuration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some(
                "A duration: \"500ms\", \"30s\", \"5m\", \"1h\", \"2d\", or integer seconds.",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*[0-9]+\s*(ms|s|m|h|d)?\s*$"))
                    .examples(["30s"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .into()
    }
}

impl utoipa::ToSchema for HumanDuration {}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\", \"1h\" or integer seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                v.checked_mul(1000)
                    .map(|ms| HumanDuration(Duration::from_millis(ms)))
                    .ok_or_else(|| E::custom(format!("duration {v} s is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("duration must not be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<HumanDuration, E> {
                Err(E::custom(
                    "duration must be an integer number of seconds or a string like \"1500ms\"",
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse(v).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse(" 7s "), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in ["", "s", "-1s", "1.5s", "1x", "ms10", "1 h h", "１s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_shortest_exact_unit() {
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }

    #[test]
    fn deserialises_strings_and_integers() {
        let d: HumanDuration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(d.get(), Duration::from_secs(300));
        let d: HumanDuration = serde_json::from_str("12").unwrap();
        assert_eq!(d.get(), Duration::from_secs(12));
        assert!(serde_json::from_str::<HumanDuration>("-3").is_err());
        assert!(serde_json::from_str::<HumanDuration>("1.5").is_err());
        assert!(serde_json::from_str::<HumanDuration>("true").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics(input in any::<String>()) {
            let _ = parse(&input);
        }

        #[test]
        fn formatted_durations_parse_back(ms in 0u64..=u64::MAX / 1000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn every_unit_means_what_it_says(n in 0u64..1_000_000, unit in prop::sample::select(vec![
            ("ms", 1u64), ("s", 1_000), ("", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000),
        ])) {
            let (suffix, ms) = unit;
            prop_assert_eq!(parse(&format!(" {n}{suffix} ")), Ok(Duration::from_millis(n * ms)));
        }

        #[test]
        fn what_is_not_digits_and_a_unit_is_refused(
            digits in "[0-9]{0,5}",
            unit in "[a-zA-Z]{1,3}",
        ) {
            prop_assume!(!["ms", "s", "m", "h", "d"].contains(&unit.as_str()));
            let input = format!("{digits}{unit}");
            prop_assert!(parse(&input).is_err());
        }
    }
}
