#![no_main]
//! cargo-fuzz target `connection_string`: see `tests/fuzz_targets/mod.rs`.

#[path = "../../tests/fuzz_targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::connection_string(data));
