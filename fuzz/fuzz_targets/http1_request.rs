//! A client's bytes at the data port's HTTP/1.1 path: what it takes is one whole, unambiguous
//! HTTP/1.1 message, what it leaves is handed to hyper untouched, and never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handover_dataplane::fuzzing::http1_request(data));
