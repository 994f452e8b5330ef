//! Human units in the YAML: durations (`5s`, `250ms`) and sizes (`10MiB`), parsed once at load.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Longest accepted duration: keeps deadline arithmetic far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration written as `250ms`, `5s`, `1m30s`, `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, like `250ms`, `5s` or `1m`")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<HumanDuration, E> {
                let duration = parse_duration(value).ok_or_else(|| {
                    E::custom(format!(
                        "invalid duration `{value}`; write whole numbers with the units ms, s, m, h or d and no \
                         spaces, like `250ms`, `5s`, `1m30s`"
                    ))
                })?;
                if duration > MAX_DURATION {
                    return Err(E::custom(format!(
                        "`{value}` is longer than the 365 days a duration may be"
                    )));
                }
                Ok(HumanDuration(duration))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// `250ms`, `5s`, `1m30s`, `2h`, `1d`: whole numbers, each followed by one of `ms`, `s`, `m`, `h`, `d`,
/// nothing else. Spelled-out or spaced forms (`2sec`, `2 s`, `5 minutes`) are refused rather than guessed.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.as_bytes();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let number: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        rest = &rest[digits..];
        let (unit, length) = match rest {
            [b'm', b's', ..] => (Duration::from_millis(1), 2),
            [b's', ..] => (Duration::from_secs(1), 1),
            [b'm', ..] => (Duration::from_secs(60), 1),
            [b'h', ..] => (Duration::from_secs(3600), 1),
            [b'd', ..] => (Duration::from_secs(86_400), 1),
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(number).ok()?)?)?;
        rest = &rest[length..];
    }
    Some(total)
}

/// An optional configured duration, or a default.
pub trait DurationOr {
    fn or_secs(self, default: u64) -> Duration;
}

impl DurationOr for Option<HumanDuration> {
    fn or_secs(self, default: u64) -> Duration {
        self.map_or(Duration::from_secs(default), |d| d.0)
    }
}

/// `api.example.com` or `*.example.com`, lowercase-insensitive, no ports.
pub fn check_host_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    // A fully qualified name may end in a dot.
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && !name.contains('*')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{pattern}` is not a host name or a `*.example.com` wildcard"
        ))
    }
}

/// A size in bytes written as `512KiB`, `10MiB`, `1GB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like `64KiB`, `10MiB` or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                value
                    .trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|size| ByteSize(size.as_u64()))
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid size `{value}` ({e}); write it like `64KiB`, `10MiB` or `1GB`"
                        ))
                    })
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        let d: HumanDuration = serde_yaml_ng::from_str("1m30s").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        let d: HumanDuration = serde_yaml_ng::from_str("250ms").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        assert!(serde_yaml_ng::from_str::<HumanDuration>("5").is_err());
        assert!(serde_yaml_ng::from_str::<HumanDuration>("1000000000y").is_err());
        for ambiguous in [
            "2sec",
            "2 s",
            "5 minutes",
            "1.5s",
            "-1s",
            "s",
            "1m 30s",
            " 5s",
        ] {
            assert!(
                serde_yaml_ng::from_str::<HumanDuration>(&format!("'{ambiguous}'")).is_err(),
                "{ambiguous}"
            );
        }
        let d: HumanDuration = serde_yaml_ng::from_str("1d2h").unwrap();
        assert_eq!(d.0, Duration::from_secs(26 * 3600));
        assert!(serde_yaml_ng::from_str::<HumanDuration>("400d").is_err());
        let s: ByteSize = serde_yaml_ng::from_str("10MiB").unwrap();
        assert_eq!(s.0, 10 * 1024 * 1024);
        let s: ByteSize = serde_yaml_ng::from_str("4096").unwrap();
        assert_eq!(s.0, 4096);
        assert!(serde_yaml_ng::from_str::<ByteSize>("ten").is_err());
    }
}
