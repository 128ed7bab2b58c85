//! Arbitrary bytes as the whole value of a request's `Cookie` header, through the proxy's decode
//! path (cookie pairs, the join of the chunks, open) with the fixed test ring and pool. Nothing may
//! panic, decoding may allocate only in proportion to the header, and a cookie that opened is
//! sealed, split and sent back, and must open to the same snapshot.
#![no_main]

use handover_fuzz::{Budget, within_budget};
use handover_dataplane::fuzzing;

/// Legitimate costs: the pairs the proxy copies out of the header (a 48-byte pair for every 2
/// header bytes of `=;`, doubled while the vector grows) and a few copies of the value; the fixed
/// part covers a state deflated up to MAX_STATE_BYTES (1 MiB, the vector doubling to 2) and the
/// first input's key ring. Anything that allocates per claimed chunk or byte breaks it.
const BUDGET: Budget = Budget { per_byte: 128, fixed: 4 << 20, calls_per_byte: 4, fixed_calls: 1024 };

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let decoded = within_budget(data.len(), BUDGET, || fuzzing::decode_cookie_header(data));
    fuzzing::check_cookie_header(&decoded);
});
