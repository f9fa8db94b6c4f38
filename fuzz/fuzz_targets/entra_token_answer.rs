#![no_main]
//! cargo-fuzz target `entra_token_answer`: see `azmutex::auth::entra::fuzzing::token_answer` (issue 17).

libfuzzer_sys::fuzz_target!(|data: &[u8]| azmutex::auth::entra::fuzzing::token_answer(data));
