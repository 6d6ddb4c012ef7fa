//! Human-friendly quantities in `sidekey.toml`: durations (`"250ms"`, `"5s"`,
//! `"10m"`, `"1h"`) and byte sizes (`"32MiB"`, `"512KiB"`, `"1MB"`, `"1024"`).

use std::time::Duration;

use super::error::described;

/// The longest duration accepted: 30 days. Every setting means far less, and
/// a bound keeps deadline arithmetic (`now + timeout`) from overflowing.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses a duration: an unsigned integer followed by `ms`, `s`, `m` or `h`,
/// at most [`MAX_DURATION`].
///
/// # Errors
///
/// A message saying what was expected.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "{} is not a duration; expected e.g. \"250ms\", \"5s\", \"10m\"",
            described(s)
        )
    })?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => return Err(format!("{} needs a unit: ms, s, m or h", described(s))),
        _ => {
            return Err(format!(
                "{} has an unknown unit; use ms, s, m or h",
                described(s)
            ));
        }
    };
    if d > MAX_DURATION {
        return Err(format!(
            "{} is too long: at most 30 days (\"720h\")",
            described(s)
        ));
    }
    Ok(d)
}

/// Parses a byte size: an unsigned integer with an optional unit
/// (`B`, `KB`, `MB`, `GB` powers of 1000; `KiB`, `MiB`, `GiB` powers of 1024).
///
/// # Errors
///
/// A message saying what was expected.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "{} is not a size; expected e.g. \"32MiB\" or \"1048576\"",
            described(s)
        )
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{} has an unknown unit; use B, KiB, MiB, GiB, KB, MB or GB",
                described(s)
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{} is too large", described(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1KB").unwrap(), 1000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("-1").is_err());
    }
}
