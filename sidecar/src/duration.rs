//! Durations as operators write them: `500ms`, `1s`, `5m`, `12h`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("duration {text:?} does not start with a whole number"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!("duration {text:?} has unknown unit {unit:?} (use ms, s, m or h)"));
        }
    };
    millis.map(Duration::from_millis).ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(43_200)));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(parse("10").is_err());
        assert!(parse("s").is_err());
        assert!(parse("5d").is_err());
        assert!(parse("-1s").is_err());
        assert!(parse("99999999999999999999h").is_err());
    }
}
