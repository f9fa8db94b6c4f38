#![no_main]
//! cargo-fuzz target `entra_json`: see `azmutex::auth::entra::fuzzing::json` (issue 17).

libfuzzer_sys::fuzz_target!(|data: &[u8]| azmutex::auth::entra::fuzzing::json(data));
