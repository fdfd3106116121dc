//! Any bytes as a `capstan.yaml`: parse and validate must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = capstan::source::parse_standalone(Path::new("capstan.yaml"), text);
    }
});
