#![no_main]
//! cargo-fuzz target `retry_after`: see `tests/fuzz_targets/mod.rs`.

#[path = "../../tests/fuzz_targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::retry_after(data));
