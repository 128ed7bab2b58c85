//! Arbitrary bytes as a state through the state's compressor: greedy LZ77 of our own for states
//! with repeats, a block of literals for those without, libdeflate for what those two do not take
//! (dataplane/src/deflate.rs). What it writes must be shorter and inflate back to the state, byte
//! for byte.
#![no_main]

use handover_fuzz::{Budget, within_budget};

/// The fixed part is libdeflate's compressor (~300 KB, made once per thread) and the inflater's
/// tables; each input byte is held a few times: LZ77's tokens (4 bytes) and hash table (up to 8:
/// two 2-byte positions a bucket, a bucket a byte rounded up to a power of two) while it runs,
/// then the block, the inflated copy and their growth.
const BUDGET: Budget = Budget { per_byte: 24, fixed: 1 << 20, calls_per_byte: 1, fixed_calls: 64 };

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    within_budget(data.len(), BUDGET, || handover_dataplane::fuzzing::deflate(data));
});
