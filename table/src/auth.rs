//! Basic-auth credentials as the snapshot carries them: htpasswd lines (ingress-nginx's
//! `auth-file`) or a user → hash map (`auth-map`), parsed and checked once when the Secret or
//! file is read. Checking a password is the ingress plane's (it owns the hash functions).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The users of one basic-auth Secret or file.
#[derive(Clone, PartialEq, Eq)]
pub struct Htpasswd {
    /// `namespace/name` of the Secret, or the file, for logs and dumps.
    pub source: Arc<str>,
    pub users: HashMap<Box<str>, PasswordHash>,
}

/// A stored password, in a scheme nginx's `auth_basic` and Apache's `htpasswd` write.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$2y$…`, `$2b$…`, `$2a$…` (`htpasswd -B`): bcrypt, checked as written.
    Bcrypt(Box<str>),
    /// `$apr1$salt$hash` (`htpasswd`'s default): Apache's MD5 with 1,000 rounds.
    Apr1 { salt: Box<str>, hash: Box<str> },
    /// `{SHA}base64` (`htpasswd -s`; the only scheme Envoy's basic_auth filter reads): SHA-1.
    Sha1([u8; 20]),
    /// `{PLAIN}password` (nginx): the password itself.
    Plain(Box<str>),
}

/// A route's basic authentication in force: its users, the realm named in the challenge, and the
/// credentials already checked good.
#[derive(Debug)]
pub struct BasicAuth {
    pub users: Htpasswd,
    /// `WWW-Authenticate: Basic realm="…"`.
    pub realm: Arc<str>,
    /// SHA-1 of `user \0 password` pairs that passed: bcrypt and apr1 are slow on purpose
    /// (milliseconds), so each good pair is checked once per setting, not per request. Bounded
    /// by [`VERIFIED_CAPACITY`] (emptied when full); failures are never cached.
    pub verified: papaya::HashSet<[u8; 20]>,
}

/// At most this many good credentials are remembered per setting.
pub const VERIFIED_CAPACITY: usize = 4096;

impl BasicAuth {
    pub fn new(users: Htpasswd, realm: Arc<str>) -> Self {
        Self {
            users,
            realm,
            verified: papaya::HashSet::new(),
        }
    }

    /// Whether this setting checks the same users under the same realm as `other` (so `other`'s
    /// remembered credentials may be kept).
    pub fn same_setting(&self, users: &Htpasswd, realm: &str) -> bool {
        self.users == *users && *self.realm == *realm
    }
}

// === impl Htpasswd ===

impl Htpasswd {
    /// Parses htpasswd lines: `user:hash`, blank lines and `#` comments skipped.
    pub fn from_lines(source: &str, text: &str) -> Result<Self, String> {
        let pairs = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
            .map(|(i, line)| {
                line.split_once(':')
                    .ok_or_else(|| format!("line {}: not user:hash", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_pairs(source, pairs)
    }

    /// Parses `(user, hash)` pairs (ingress-nginx's `auth-map`: each Secret key a user).
    pub fn from_pairs<'a>(
        source: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (user, hash) in pairs {
            if user.is_empty() || user.contains(char::is_control) {
                return Err(format!("user {user:?}: empty or has control characters"));
            }
            let hash = PasswordHash::parse(hash.trim()).map_err(|e| format!("user {user}: {e}"))?;
            if users.insert(user.into(), hash).is_some() {
                return Err(format!("user {user} is listed twice"));
            }
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(Self {
            source: source.into(),
            users,
        })
    }
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("source", &self.source)
            .field("users", &self.users.len())
            .finish()
    }
}

// === impl PasswordHash ===

impl PasswordHash {
    pub fn parse(hash: &str) -> Result<Self, String> {
        if let Some(rest) = hash.strip_prefix("$apr1$") {
            let (salt, digest) = rest
                .split_once('$')
                .ok_or("$apr1$ hash without salt separator")?;
            if salt.is_empty() || salt.len() > 8 || digest.len() != 22 {
                return Err("$apr1$ hash: salt of 1-8 characters and 22 of digest expected".into());
            }
            return Ok(PasswordHash::Apr1 {
                salt: salt.into(),
                hash: digest.into(),
            });
        }
        if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            if hash.len() != 60 {
                return Err("bcrypt hash is not 60 characters".into());
            }
            return Ok(PasswordHash::Bcrypt(hash.into()));
        }
        if let Some(encoded) = hash.strip_prefix("{SHA}") {
            let digest = base64_decode(encoded).ok_or("{SHA} hash is not base64")?;
            let digest = <[u8; 20]>::try_from(digest).map_err(|_| "{SHA} hash is not 20 bytes")?;
            return Ok(PasswordHash::Sha1(digest));
        }
        if let Some(plain) = hash.strip_prefix("{PLAIN}") {
            return Ok(PasswordHash::Plain(plain.into()));
        }
        Err(
            "unsupported hash scheme: use $apr1$ (htpasswd), $2y$ (htpasswd -B), {SHA} (htpasswd -s) or {PLAIN}"
                .into(),
        )
    }

    /// The scheme's name, for dumps.
    pub fn scheme(&self) -> &'static str {
        match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Apr1 { .. } => "apr1",
            PasswordHash::Sha1(_) => "sha1",
            PasswordHash::Plain(_) => "plain",
        }
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// Standard base64 with padding (RFC 4648 §4); `None` for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (i, quad) in text.chunks(4).enumerate() {
        let last = i + 1 == text.len() / 4;
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut bits = 0u32;
        for &c in &quad[..4 - padding] {
            bits = bits << 6 | value(c)?;
        }
        bits <<= 6 * padding as u32;
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_lines_and_maps_parse_every_supported_scheme() {
        let text = "# users\nalice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n\n\
                    bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
                    carol:$2y$05$Z4YWv5aFJ1FZcG3R9xZUee0FxqZq9qk8n3K9p7v8mJ0Cq2i0m9R5G\n\
                    dave:{PLAIN}secret\n";
        let parsed = Htpasswd::from_lines("demo/auth", text).expect("parsed");
        let schemes: Vec<_> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|u| parsed.users[*u].scheme())
            .collect();
        assert_eq!(schemes, ["apr1", "sha1", "bcrypt", "plain"]);
        let PasswordHash::Sha1(digest) = &parsed.users["bob"] else {
            panic!("sha1")
        };
        assert_eq!(digest[..4], [0x5b, 0xaa, 0x61, 0xe4]);
        let map = Htpasswd::from_pairs("m", [("eve", "{PLAIN}x")]).expect("map");
        assert_eq!(map.users.len(), 1);
    }

    #[test]
    fn bad_credentials_are_refused_with_the_user_and_reason() {
        for (text, expected) in [
            ("", "no users"),
            ("alice", "not user:hash"),
            ("alice:$1$abc$def", "unsupported hash scheme"),
            ("alice:crypt13chars", "unsupported hash scheme"),
            ("alice:{SHA}notbase64!", "not base64"),
            ("alice:{SHA}YWJj", "not 20 bytes"),
            ("alice:$apr1$nosalt", "without salt"),
            ("alice:$2y$05$short", "not 60 characters"),
            ("alice:{PLAIN}a\nalice:{PLAIN}b", "listed twice"),
        ] {
            let error = Htpasswd::from_lines("t", text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn base64_round_trips_rfc4648_vectors() {
        for (encoded, decoded) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(base64_decode(encoded).as_deref(), Some(decoded.as_bytes()));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "===="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }
}
