//! Any bytes as a Dockerfile: parsing, then expanding, planning and reading the
//! `RUN --mount` flags of whatever parsed, must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = berth_build::plan::exercise(text);
    }
});
