//! Durations and sizes as people type them on the command line: the one
//! parser of each, used by every option that takes one.

use std::time::Duration;

/// A duration: a whole number with a unit, `ms`, `s` (the default), `m`,
/// `h` or `d`; more than zero. `1500ms`, `30s`, `30`, `5m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?}: use a whole number with a unit (1500ms, not 1.5s)"
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1500ms, 30s, 5m, 1h or 7d"))?;
    let ms_per_unit = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    match value.checked_mul(ms_per_unit) {
        Some(0) => Err("the duration must be more than 0".into()),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("{text:?} is too long")),
    }
}

/// A duration of whole seconds (for what is counted in seconds: lifetimes,
/// expiries): as [`parse_duration`], refusing a fraction of a second
/// rather than rounding it away.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "{:?}: this is counted in whole seconds",
            text.trim()
        ));
    }
    Ok(duration)
}

/// A size: a whole number with an optional unit (B, kB/KB/K = 1000,
/// KiB = 1024, MB/M, MiB, GB/G, GiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1MiB, 500kB, 65536)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "kB" | "KB" => 1000,
        "Ki" | "KiB" | "kiB" => 1024,
        "M" | "MB" => 1000 * 1000,
        "Mi" | "MiB" => 1024 * 1024,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Gi" | "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, kB, KiB, MB, MiB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_unit_either_old_parser_took() {
        // The cover parser knew ms but not d; the Dropbox's d but not ms.
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        // Spaces around the number and before the unit, as cover allowed.
        assert_eq!(parse_duration(" 5 m "), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn durations_refuse_zero_fractions_unknown_units_and_overflow_precisely() {
        assert_eq!(
            parse_duration("0s"),
            Err("the duration must be more than 0".into())
        );
        assert_eq!(
            parse_duration("0ms"),
            Err("the duration must be more than 0".into())
        );
        assert!(parse_duration("1.5s").unwrap_err().contains("whole number"));
        assert!(parse_duration("1,5s").unwrap_err().contains("whole number"));
        assert!(
            parse_duration("5 fortnights")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").unwrap_err().contains("not a duration"));
        assert!(
            parse_duration("-5s")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(
            parse_duration("999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn whole_seconds_refuse_a_fraction_instead_of_rounding_it_away() {
        assert_eq!(parse_seconds("2000ms"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds("4m"), Ok(Duration::from_secs(240)));
        assert!(
            parse_seconds("1500ms")
                .unwrap_err()
                .contains("whole seconds")
        );
        assert!(parse_seconds("500ms").is_err(), "not a lifetime of 0 s");
    }

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1.5MB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
