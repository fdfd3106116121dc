//! Any `Cookie` header lines and any cookie name: finding the sticky-session cookie never
//! panics, and a value found is a substring of a header line.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((name, rest)) = data.split_first() else {
        return;
    };
    let name_len = usize::from(*name % 16).min(rest.len());
    let (name, lines) = rest.split_at(name_len);
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(header::COOKIE, value);
        }
    }
    if let Some(value) = capstan_ingress::cookie(&headers, name) {
        assert!(lines.windows(value.len().max(1)).any(|w| w == value.as_bytes()) || value.is_empty());
    }
});
