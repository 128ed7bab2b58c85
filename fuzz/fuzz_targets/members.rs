//! A member list (`--peers`, the peers file, the admin `/members` answer): `parse_members` ↔
//! `render_members` round trip, and never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handover_dataplane::fuzzing::members(data));
