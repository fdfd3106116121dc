//! HTTP basic authentication (RFC 7617) of a route's requests against its users: the
//! `Authorization: Basic` header decoded, the password checked against the stored hash (bcrypt,
//! Apache's apr1 MD5, `{SHA}`, `{PLAIN}`), good credentials remembered per setting so the slow
//! schemes cost once, and the `WWW-Authenticate` challenge for a 401. A slow scheme's check runs
//! on tokio's blocking pool, so a flood of wrong passwords for a bcrypt user cannot stall the
//! worker's event loop (nginx's `auth_basic` blocks its worker instead).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use capstan_table::{BasicAuth, PasswordHash, Route, VERIFIED_CAPACITY, base64_decode};
use http::HeaderValue;
use md5::{Digest as _, Md5};
use sha1::Sha1;

/// Whether the request's `Authorization` header names a user of `auth` with its password.
pub(crate) async fn authorized(auth: &Arc<BasicAuth>, header: Option<&HeaderValue>) -> bool {
    let Some((user, password)) = header.and_then(credentials) else {
        return false;
    };
    let Some(hash) = auth.users.users.get(user.as_str()) else {
        return false;
    };
    let mut key = Sha1::new();
    key.update(user.as_bytes());
    key.update([0]);
    key.update(&password);
    let key: [u8; 20] = key.finalize().into();
    if auth.verified.pin().contains(&key) {
        return true;
    }
    let good = match hash {
        PasswordHash::Bcrypt(_) | PasswordHash::Apr1 { .. } => {
            let (auth, user) = (auth.clone(), user.clone());
            let check = move || {
                let hash = &auth.users.users[user.as_str()];
                verify(hash, &password)
            };
            tokio::task::spawn_blocking(check).await.unwrap_or(false)
        }
        PasswordHash::Sha1(_) | PasswordHash::Plain(_) => verify(hash, &password),
    };
    if !good {
        return false;
    }
    let verified = auth.verified.pin();
    if verified.len() >= VERIFIED_CAPACITY {
        verified.clear();
    }
    verified.insert(key);
    true
}

/// Checks `route`'s basic authentication, counting a refusal; `Ok` when it has none.
pub(crate) async fn check(route: &Route, header: Option<&HeaderValue>) -> Result<(), ()> {
    let Some(auth) = &route.basic_auth else {
        return Ok(());
    };
    if authorized(auth, header).await {
        return Ok(());
    }
    route.state.unauthorized.fetch_add(1, Ordering::Relaxed);
    Err(())
}

/// `WWW-Authenticate: Basic realm="…", charset="UTF-8"` (the realm was checked for quotes and
/// control characters when it was read).
pub(crate) fn challenge(auth: &BasicAuth) -> HeaderValue {
    HeaderValue::try_from(format!("Basic realm=\"{}\", charset=\"UTF-8\"", auth.realm))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
}

/// `Basic <base64 of user:password>` → the user (UTF-8) and the password's bytes.
fn credentials(header: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let value = header.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(token.trim())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// Whether `password` matches `hash`.
fn verify(hash: &PasswordHash, password: &[u8]) -> bool {
    match hash {
        PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        PasswordHash::Apr1 { salt, hash } => {
            constant_time_eq(apr1(password, salt.as_bytes()).as_bytes(), hash.as_bytes())
        }
        PasswordHash::Sha1(digest) => {
            let computed: [u8; 20] = Sha1::digest(password).into();
            constant_time_eq(&computed, digest)
        }
        PasswordHash::Plain(plain) => constant_time_eq(password, plain.as_bytes()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's `$apr1$` digest of `password` with `salt` (the 22 characters after the salt): FreeBSD's
/// MD5-crypt with the magic `$apr1$`, as `apr_md5_encode` computes it.
pub(crate) fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let mut alternate = Md5::new();
    alternate.update(password);
    alternate.update(salt);
    alternate.update(password);
    let alternate = alternate.finalize();

    let mut context = Md5::new();
    context.update(password);
    context.update(MAGIC);
    context.update(salt);
    for chunk in (0..password.len()).step_by(16) {
        context.update(&alternate[..(password.len() - chunk).min(16)]);
    }
    let mut length = password.len();
    while length != 0 {
        if length & 1 == 1 {
            context.update([0]);
        } else {
            context.update(&password[..1]);
        }
        length >>= 1;
    }
    let mut digest = context.finalize();
    for round in 0..1000 {
        let mut next = Md5::new();
        if round & 1 == 1 {
            next.update(password);
        } else {
            next.update(digest);
        }
        if round % 3 != 0 {
            next.update(salt);
        }
        if round % 7 != 0 {
            next.update(password);
        }
        if round & 1 == 1 {
            next.update(digest);
        } else {
            next.update(password);
        }
        digest = next.finalize();
    }
    let d = digest;
    let mut out = String::with_capacity(22);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        let value = u32::from(d[a]) << 16 | u32::from(d[b]) << 8 | u32::from(d[c]);
        crypt_base64(&mut out, value, 4);
    }
    crypt_base64(&mut out, u32::from(d[11]), 2);
    out
}

/// crypt(3)'s base64: `count` characters of `value`, low 6 bits first.
fn crypt_base64(out: &mut String, mut value: u32, count: usize) {
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for _ in 0..count {
        out.push(char::from(ALPHABET[(value & 0x3f) as usize]));
        value >>= 6;
    }
}

#[cfg(test)]
mod tests {
    use capstan_table::Htpasswd;

    use super::*;

    fn basic(user_password: &str) -> HeaderValue {
        let encoded = encode(user_password.as_bytes());
        HeaderValue::try_from(format!("Basic {encoded}")).expect("header")
    }

    /// Standard base64 with padding, for building test headers.
    fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut buf = [0u8; 3];
            buf[..chunk.len()].copy_from_slice(chunk);
            let n = u32::from(buf[0]) << 16 | u32::from(buf[1]) << 8 | u32::from(buf[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn apr1_matches_openssl_passwd_and_htpasswd() {
        // `openssl passwd -apr1 -salt …` on this machine, and Apache's documented example.
        for (password, salt, expected) in [
            ("password", "lZL6V/ci", "eIMz/iKDkbtys/uU7LEK00"),
            ("password", "RandSalt", "PgCXHRrkpSt4cbyC2C6bm/"),
            ("", "abc", "BfqKdn9xFDWJPa3kcp/PH0"),
            (
                "a much longer password than sixteen bytes",
                "xyz12345",
                "r.IjpzLakBP5krbs.gQ3F/",
            ),
        ] {
            assert_eq!(
                apr1(password.as_bytes(), salt.as_bytes()),
                expected,
                "{password:?}"
            );
        }
    }

    #[tokio::test]
    async fn every_scheme_admits_its_password_and_refuses_others() {
        let bcrypt_hash = bcrypt::hash("bcrypt-pass", 4).expect("bcrypt");
        let text = format!(
            "alice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
             carol:{bcrypt_hash}\ndave:{{PLAIN}}plain:with:colons\n"
        );
        let users = Htpasswd::from_lines("t", &text).expect("users");
        let auth = Arc::new(BasicAuth::new(users, Arc::from("r")));
        for good in [
            "alice:password",
            "bob:password",
            "carol:bcrypt-pass",
            "dave:plain:with:colons",
        ] {
            assert!(authorized(&auth, Some(&basic(good))).await, "{good}");
            assert!(
                authorized(&auth, Some(&basic(good))).await,
                "{good}, remembered"
            );
        }
        for bad in [
            "alice:Password",
            "bob:",
            "carol:bcrypt-pas",
            "dave:plain",
            "erin:password",
            "alice",
        ] {
            assert!(!authorized(&auth, Some(&basic(bad))).await, "{bad}");
        }
        assert!(!authorized(&auth, None).await);
        for header in ["Bearer abc", "Basic", "Basic !!!!", "basic"] {
            let header = HeaderValue::from_static(header);
            assert!(!authorized(&auth, Some(&header)).await, "{header:?}");
        }
        let lower =
            HeaderValue::try_from(format!("basic {}", encode(b"bob:password"))).expect("header");
        assert!(
            authorized(&auth, Some(&lower)).await,
            "the scheme is case-insensitive"
        );
        assert_eq!(
            auth.verified.len(),
            4,
            "only good credentials are remembered"
        );
        assert_eq!(
            challenge(&auth),
            HeaderValue::from_static("Basic realm=\"r\", charset=\"UTF-8\"")
        );
    }
}
