#![no_main]
//! cargo-fuzz target `error_body`: see `tests/fuzz_targets/mod.rs`.

#[path = "../../tests/fuzz_targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::error_body(data));
