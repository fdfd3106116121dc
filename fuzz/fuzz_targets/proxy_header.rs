//! Any bytes as the start of an ingress connection from a trusted proxy: the PROXY protocol
//! parser answers (absent, incomplete, a header, or malformed) and never panics; a complete
//! header's length is within the bytes given, and every prefix of those bytes parses too.
#![no_main]

use capstan_ingress::proxy_protocol::{Header, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Header::Complete { len, .. }) = parse(data) {
        assert!(len <= data.len());
        for cut in 0..len {
            let _ = parse(&data[..cut]);
        }
    }
});
