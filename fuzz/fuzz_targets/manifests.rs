//! Any bytes as a Kubernetes manifest file: parse, convert and validate must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = capstan::source::parse_manifests(Path::new("fuzz.yaml"), text);
    }
});
