//! An app's answer at the app client's HTTP/1.1 path: the head read as httparse reads it, a body
//! framed by length, chunks or the close that never hands on more than there is, and never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handover_dataplane::fuzzing::app_response(data));
