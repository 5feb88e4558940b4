//! Subscription tiers: the unit of weighted capacity sharing between tenants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tern_proto::v1;

/// A tenant's subscription tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Paying business customers: the largest share.
    Business,
    /// Developer plan.
    Developer,
    /// Free plan: the smallest share.
    Free,
}

impl Tier {
    /// Every tier, highest weight first.
    pub const ALL: [Tier; 3] = [Tier::Business, Tier::Developer, Tier::Free];

    /// Lower-case name, also the subject token (`tern.ready.<tier>.…`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Business => "business",
            Tier::Developer => "developer",
            Tier::Free => "free",
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> v1::Tier {
        match self {
            Tier::Business => v1::Tier::Business,
            Tier::Developer => v1::Tier::Developer,
            Tier::Free => v1::Tier::Free,
        }
    }

    /// From the wire enum; unknown values fall back to the lowest tier.
    pub fn from_proto(tier: v1::Tier) -> Self {
        match tier {
            v1::Tier::Business => Tier::Business,
            v1::Tier::Developer => Tier::Developer,
            v1::Tier::Free | v1::Tier::Unspecified => Tier::Free,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "business" => Ok(Tier::Business),
            "developer" => Ok(Tier::Developer),
            "free" => Ok(Tier::Free),
            other => Err(format!(
                "unknown tier {other:?}: expected business, developer or free"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_names_and_proto() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            assert_eq!(Tier::from_proto(tier.to_proto()), tier);
        }
        assert!("gold".parse::<Tier>().is_err());
    }
}
