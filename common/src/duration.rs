//! Durations as the CRD and the sidecar's flags write them: `<int>(ms|s|m|h)`.

use std::time::Duration;

/// A duration string that does not match `<int>(ms|s|m|h)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected an integer and one unit of ms, s, m or h (e.g. 500ms, 20s, 12h)")]
pub struct ParseDurationError(pub String);

/// Parses `<int>(ms|s|m|h)`, e.g. `500ms`, `20s`, `12h`.
pub fn parse(text: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError(text.to_owned());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 9 {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(err)?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        for bad in ["", "s", "10", "1.5s", "-1s", "1d", "1 s", "1sm", "1234567890s", "1H", "ms"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in ".{0,40}") {
            let _ = parse(&text);
        }

        #[test]
        fn every_pattern_match_parses(n in 0u64..1_000_000_000, unit in "(ms|s|m|h)") {
            let text = format!("{n}{unit}");
            proptest::prop_assert!(parse(&text).is_ok());
        }
    }
}
