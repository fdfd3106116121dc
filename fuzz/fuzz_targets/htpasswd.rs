//! Any basic-auth Secret text: parsing htpasswd lines never panics, every parsed user names a
//! non-empty user from the input, and base64 decoding never yields more than 3 bytes per 4.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(users) = capstan_table::Htpasswd::from_lines("fuzz", text) {
        assert!(!users.users.is_empty());
        for user in users.users.keys() {
            assert!(!user.is_empty() && text.contains(&**user));
        }
    }
    if let Some(decoded) = capstan_table::base64_decode(text) {
        assert!(decoded.len() <= text.len() / 4 * 3);
    }
});
