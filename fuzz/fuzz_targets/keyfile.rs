//! The key file (the Secret's `keys`): parse ↔ render round trip, and never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handover_common::fuzzing::keyfile(data));
