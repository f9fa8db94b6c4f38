#![no_main]
//! cargo-fuzz target `entra_az_output`: see `azmutex::auth::entra::fuzzing::az_output` (issue 17).

libfuzzer_sys::fuzz_target!(|data: &[u8]| azmutex::auth::entra::fuzzing::az_output(data));
