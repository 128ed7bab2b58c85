//! Arbitrary bytes as a state through the state's compressor: libdeflate for states with repeats,
//! a block of literals under a code of our own for those without (dataplane/src/deflate.rs). What
//! it writes must be shorter and inflate back to the state, byte for byte.
#![no_main]

use handover_fuzz::{Budget, within_budget};

/// The fixed part is libdeflate's compressor (~300 KB, made once per thread) and the inflater's
/// tables; each input byte is held a few times (the block, the inflated copy, their growth).
const BUDGET: Budget = Budget { per_byte: 16, fixed: 1 << 20, calls_per_byte: 1, fixed_calls: 64 };

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    within_budget(data.len(), BUDGET, || handover_dataplane::fuzzing::deflate(data));
});
