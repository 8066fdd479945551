//! Durations written as `"500ms"`, `"3s"`, `"2m"`, `"1h"` (integer and unit).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configured duration; (de)serialized as a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    /// `n` milliseconds.
    pub const fn ms(n: u64) -> Dur {
        Dur(Duration::from_millis(n))
    }
    /// `n` seconds.
    pub const fn secs(n: u64) -> Dur {
        Dur(Duration::from_secs(n))
    }
    /// The std duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || {
            format!("invalid duration {s:?}: expected an integer and a unit (ms, s, m, h), e.g. \"500ms\" or \"30s\"")
        };
        if num.is_empty() {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(bad()),
        }
        .ok_or_else(|| format!("duration {s:?} is too large"))?;
        Ok(Dur::ms(ms))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for (s, ms, back) in [
            ("500ms", 500, "500ms"),
            ("3s", 3000, "3s"),
            ("2m", 120_000, "2m"),
            ("1h", 3_600_000, "1h"),
            ("90s", 90_000, "90s"),
            ("0s", 0, "0s"),
        ] {
            let d: Dur = s.parse().unwrap();
            assert_eq!(d, Dur::ms(ms));
            assert_eq!(d.to_string(), back);
        }
        for bad in [
            "",
            "s",
            "3",
            "3 sec",
            "1.5s",
            "-1s",
            "99999999999999999999h",
        ] {
            assert!(bad.parse::<Dur>().is_err(), "{bad}");
        }
    }
}
