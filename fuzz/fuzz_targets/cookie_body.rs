//! Arbitrary bytes as the plaintext body of a cookie, sealed with the test key, so the fuzzer
//! reaches the body decoder behind the AEAD (which mutated cookies never pass). What decodes must
//! encode back byte for byte where the encoder is deterministic, else to the same snapshot; a
//! deflated state may grow only up to MAX_STATE_BYTES, whatever the input.
#![no_main]

use handover_fuzz::{Budget, within_budget};
use handover_dataplane::fuzzing;

/// The fixed part holds one state inflated to MAX_STATE_BYTES (1 MiB) while it is resealed:
/// the inflated state, its vector's doubling, the re-deflated copy and the cookie's base64.
const BUDGET: Budget = Budget { per_byte: 64, fixed: 8 << 20, calls_per_byte: 4, fixed_calls: 1024 };

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    within_budget(data.len(), BUDGET, || fuzzing::cookie_body(data));
});
