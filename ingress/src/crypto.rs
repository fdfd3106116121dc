//! The rustls `CryptoProvider` of the TLS listener and the TLS upstream clients: aws-lc-rs, with
//! two changes measured on the full-handshake path (`benches/peers.sh`, issue 15):
//!
//! - **TLS 1.3 HKDF over precomputed HMAC keys.** rustls's aws-lc-rs provider keeps a lazily
//!   extracted PRK, so every `HKDF-Expand-Label` of the key schedule (about 15 per handshake)
//!   runs HKDF-Extract again and re-keys HMAC: about 8 hash compressions where 2 do. Here the PRK
//!   is extracted once into an HMAC key whose inner and outer pads are hashed once
//!   (`aws_lc_rs::hmac::Key`), and rustls's own [`HkdfUsingHmac`] does RFC 5869 over it. The
//!   bytes are the same (RFC 5869 is HMAC); only the repeated work goes.
//! - **The key-exchange groups are the operator's** (`--tls-key-exchange`, as nginx's
//!   `ssl_ecdh_curve` and HAProxy's `curves`), in preference order; rustls's default is
//!   `X25519MLKEM768, X25519, secp256r1, secp384r1`.
//!
//! Must not import: anything outside rustls and aws-lc-rs.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use aws_lc_rs::hmac;
use rustls::Tls13CipherSuite;
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs as provider};
use rustls::{CipherSuiteCommon, SupportedCipherSuite};

/// A TLS key-exchange group (`--tls-key-exchange`), by its IANA name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyExchange {
    /// The post-quantum hybrid (ML-KEM-768 with X25519), rustls's first choice.
    X25519Mlkem768,
    X25519,
    Secp256r1,
    Secp384r1,
}

impl KeyExchange {
    /// rustls's default preference order.
    pub const DEFAULT: [Self; 4] = [
        Self::X25519Mlkem768,
        Self::X25519,
        Self::Secp256r1,
        Self::Secp384r1,
    ];

    fn group(self) -> &'static dyn SupportedKxGroup {
        match self {
            Self::X25519Mlkem768 => provider::kx_group::X25519MLKEM768,
            Self::X25519 => provider::kx_group::X25519,
            Self::Secp256r1 => provider::kx_group::SECP256R1,
            Self::Secp384r1 => provider::kx_group::SECP384R1,
        }
    }
}

impl FromStr for KeyExchange {
    type Err = String;

    /// IANA names (`X25519MLKEM768`, `x25519`, `secp256r1`, `secp384r1`) in any case, and the
    /// names nginx and HAProxy take for the two NIST curves (`P-256`, `prime256v1`, `P-384`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "x25519mlkem768" => Ok(Self::X25519Mlkem768),
            "x25519" => Ok(Self::X25519),
            "secp256r1" | "p-256" | "prime256v1" => Ok(Self::Secp256r1),
            "secp384r1" | "p-384" => Ok(Self::Secp384r1),
            other => Err(format!(
                "{other:?} is not X25519MLKEM768, X25519, secp256r1 (P-256) or secp384r1 (P-384)"
            )),
        }
    }
}

/// aws-lc-rs with HKDF over precomputed HMAC keys and the given key-exchange groups (all of
/// rustls's defaults when `groups` is empty).
pub fn provider(groups: &[KeyExchange]) -> Arc<CryptoProvider> {
    let mut crypto = provider::default_provider();
    crypto.cipher_suites = crypto
        .cipher_suites
        .iter()
        .map(|&suite| match suite {
            SupportedCipherSuite::Tls13(tls13) => SupportedCipherSuite::Tls13(precomputed(tls13)),
            tls12 => tls12,
        })
        .collect();
    if !groups.is_empty() {
        crypto.kx_groups = groups.iter().map(|g| g.group()).collect();
    }
    Arc::new(crypto)
}

static HMAC_SHA256: PrecomputedHmac = PrecomputedHmac(hmac::HMAC_SHA256);
static HMAC_SHA384: PrecomputedHmac = PrecomputedHmac(hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// The same suite with its HKDF done over precomputed HMAC keys: one leaked copy per suite for
/// the whole process (three small structs), whatever the number of providers built.
fn precomputed(suite: &'static Tls13CipherSuite) -> &'static Tls13CipherSuite {
    static SUITES: OnceLock<Vec<&'static Tls13CipherSuite>> = OnceLock::new();
    let suites = SUITES.get_or_init(|| {
        provider::DEFAULT_CIPHER_SUITES
            .iter()
            .filter_map(SupportedCipherSuite::tls13)
            .filter_map(|theirs| {
                let hkdf: &'static HkdfUsingHmac<'static> =
                    match theirs.common.hash_provider.output_len() {
                        48 => &HKDF_SHA384,
                        32 => &HKDF_SHA256,
                        _ => return None,
                    };
                let ours = Tls13CipherSuite {
                    common: CipherSuiteCommon {
                        suite: theirs.common.suite,
                        hash_provider: theirs.common.hash_provider,
                        confidentiality_limit: theirs.common.confidentiality_limit,
                    },
                    hkdf_provider: hkdf,
                    aead_alg: theirs.aead_alg,
                    quic: theirs.quic,
                };
                Some(&*Box::leak(Box::new(ours)))
            })
            .collect()
    });
    suites
        .iter()
        .find(|ours| ours.common.suite == suite.common.suite)
        .copied()
        .unwrap_or(suite)
}

/// HMAC whose key schedule (the hashed inner and outer pads) is computed once per key.
struct PrecomputedHmac(hmac::Algorithm);

impl Hmac for PrecomputedHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(PrecomputedKey(hmac::Key::new(self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

struct PrecomputedKey(hmac::Key);

impl Key for PrecomputedKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(first);
        for part in middle {
            context.update(part);
        }
        context.update(last);
        Tag::new(context.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::tls13::Hkdf;

    use super::*;

    /// RFC 5869 appendix A.1 (SHA-256): the precomputed-key HKDF gives the published OKM.
    #[test]
    fn rfc5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let expander = HKDF_SHA256.extract_from_secret(Some(&salt), &ikm);
        let mut okm = [0u8; 42];
        expander.expand_slice(&[&info], &mut okm).expect("expand");
        let want = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
                    34007208d5b887185865";
        let got: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    /// The SHA-384 HKDF agrees with aws-lc-rs's own HKDF on the same inputs.
    #[test]
    fn sha384_matches_aws_lc_hkdf() {
        let (salt, secret, info) = (b"salt".as_slice(), [7u8; 48], b"tls13 c hs traffic");
        let expander = HKDF_SHA384.extract_from_secret(Some(salt), &secret);
        let mut ours = [0u8; 48];
        expander.expand_slice(&[info], &mut ours).expect("expand");
        let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA384, salt).extract(&secret);
        let mut theirs = [0u8; 48];
        prk.expand(&[info], aws_lc_rs::hkdf::HKDF_SHA384)
            .and_then(|okm| okm.fill(&mut theirs))
            .expect("aws-lc hkdf");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn every_tls13_suite_uses_the_precomputed_hkdf_and_groups_follow_the_flag() {
        let crypto = provider(&[KeyExchange::X25519, KeyExchange::Secp256r1]);
        let tls13: Vec<_> = crypto
            .cipher_suites
            .iter()
            .filter_map(|s| s.tls13())
            .collect();
        assert_eq!(tls13.len(), 3);
        for suite in tls13 {
            let hkdf = suite.hkdf_provider as *const dyn Hkdf as *const u8;
            let ours = [
                &HKDF_SHA256 as *const HkdfUsingHmac as *const u8,
                &HKDF_SHA384 as *const HkdfUsingHmac as *const u8,
            ];
            assert!(ours.contains(&hkdf), "{:?}", suite.common.suite);
        }
        let names: Vec<_> = crypto.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            names,
            [rustls::NamedGroup::X25519, rustls::NamedGroup::secp256r1]
        );
        assert_eq!(provider(&[]).kx_groups.len(), 4);
    }

    #[test]
    fn key_exchange_names_parse_as_nginx_and_haproxy_spell_them() {
        for (name, want) in [
            ("X25519MLKEM768", KeyExchange::X25519Mlkem768),
            ("x25519", KeyExchange::X25519),
            ("P-256", KeyExchange::Secp256r1),
            ("prime256v1", KeyExchange::Secp256r1),
            ("secp384r1", KeyExchange::Secp384r1),
        ] {
            assert_eq!(name.parse::<KeyExchange>(), Ok(want));
        }
        assert!("ffdhe2048".parse::<KeyExchange>().is_err());
    }
}
