//! The duration syntax of the CRD and the sidecar's flags. The parser must accept exactly what
//! the CRD's schema pattern accepts (the API server checks the pattern, the operator and sidecar
//! then parse), and what it parses must write back to the same value.
#![no_main]

use std::sync::LazyLock;

/// `DURATION_PATTERN` of operator/src/crd.rs, which this crate cannot link (it would pull in the
/// Kubernetes client): keep the two alike.
const CRD_PATTERN: &str = "^[0-9]{1,9}(ms|s|m|h)$";

static PATTERN: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(CRD_PATTERN).unwrap_or_else(|e| panic!("{CRD_PATTERN}: {e}")));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let parsed = handover_common::fuzzing::duration(data);
    let matches = std::str::from_utf8(data).is_ok_and(|text| PATTERN.is_match(text));
    assert_eq!(parsed, matches, "{:?}: the parser and the CRD's pattern disagree", String::from_utf8_lossy(data));
});
