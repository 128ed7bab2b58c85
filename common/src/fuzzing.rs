//! Entry points for the fuzz targets in `fuzz/` (see `handover_dataplane::fuzzing`): each takes the
//! fuzzer's bytes, runs a parser, and panics when what it parsed does not encode back to the same
//! value. Not part of the crate's interface.
#![doc(hidden)]

use std::time::Duration;

use crate::{duration, keyfile};

/// A key file: what parses renders to a file that parses to the same keys, and rendering is
/// canonical (a rendered file renders to itself).
pub fn keyfile(data: &[u8]) {
    let Ok(ring) = keyfile::KeyRing::parse_bytes(data) else {
        return;
    };
    assert!(!ring.0.is_empty(), "an empty ring parsed");
    let text = ring.render();
    let again = keyfile::KeyRing::parse(&text);
    assert_eq!(again.as_ref(), Ok(&ring), "the rendered file parses to another ring");
    assert_eq!(again.map(|r| r.render()).as_deref(), Ok(text.as_str()), "rendering is not canonical");
    // The operator's rotation reads these on every parsed file.
    assert!(ring.0.iter().any(|k| k.id == ring.max_id()));
    if let Some(staged) = ring.staged() {
        assert_ne!(staged.id, ring.0[0].id, "the sealing key is reported as staged");
    }
}

/// A duration: the parser has no formatter, so this writes the parsed value back in its largest
/// exact unit and parses that, which must give the same value. Returns whether `data` parsed,
/// for the target to compare with the CRD's pattern.
pub fn duration(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(parsed) = duration::parse(text) else {
        return false;
    };
    let written = format(parsed);
    assert_eq!(
        duration::parse(&written),
        Ok(parsed),
        "{text:?} parsed, was written as {written:?}, and that parsed to another value"
    );
    true
}

/// `d` as `<int><unit>` in the largest unit that divides it. Every parsed duration is n × unit
/// with n under 10^9, so the written count is never larger than the one that was read.
fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_durations_use_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_millis(90_000)), "90s");
        assert_eq!(format(Duration::from_secs(7_200)), "2h");
        assert_eq!(format(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(format(Duration::ZERO), "0ms");
        assert!(duration(b"999999999h"));
        assert!(!duration(b"1d"));
    }

    #[test]
    fn a_rendered_key_file_round_trips() {
        let ring = keyfile::KeyRing(vec![keyfile::Key { id: 4, secret: [4; 32], created: 5 }]);
        keyfile(ring.render().as_bytes());
        keyfile(b"4 AAAA 5");
    }
}
