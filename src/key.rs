//! The API key format: `lk_<key id>_<secret><checksum>`.
//!
//! - `lk_` is a fixed prefix that secret scanners can match.
//! - The key id is public: 12 base62 characters (≈ 71 random bits). The server
//!   finds the ApiKey by it in O(1) without ever seeing a Secret.
//! - The secret is 43 base62 characters drawn uniformly from the OS CSPRNG:
//!   43 · log2(62) ≈ 256.03 bits.
//! - The checksum is the CRC32 of everything before it, as 6 base62 characters
//!   (zero-padded), GitHub style: a mistyped or garbage key is refused without
//!   any lookup.
//!
//! Base62 keeps the key one "word" (double-click selects it, no URL escaping).
//! Pure: no I/O, no clock.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use std::fmt;

/// The fixed prefix of every latchkey API key.
pub const PREFIX: &str = "lk";
/// Length of the public key id.
pub const KEY_ID_LEN: usize = 12;
/// Length of the random secret part.
pub const SECRET_LEN: usize = 43;
/// Length of the base62 CRC32 checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a key.
pub const KEY_LEN: usize = PREFIX.len() + 1 + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

/// Why a presented string is not a latchkey API key. Never carries the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key does not have the length of a latchkey key ({KEY_LEN} characters)")]
    Length,
    #[error("the key does not start with `{PREFIX}_`")]
    Prefix,
    #[error("the key is not of the form lk_<key id>_<secret>")]
    Shape,
    #[error("the key contains characters outside [0-9A-Za-z_]")]
    Alphabet,
    #[error("the key's checksum does not match (mistyped or truncated key)")]
    Checksum,
}

/// A parsed or freshly generated API key. `Debug` and `Display` never show the
/// secret; only [`ApiKeyValue::expose`] gives the full key, for writing it into
/// the consumer's Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyValue {
    full: String,
}

impl fmt::Debug for ApiKeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyValue({PREFIX}_{}_…)", self.key_id())
    }
}

impl ApiKeyValue {
    /// A new key with a fresh key id and secret from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let key_id = Alphanumeric.sample_string(&mut rng, KEY_ID_LEN);
        let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
        Self::assemble(&key_id, &secret)
    }

    /// A well-formed key under `key_id` with a fresh random secret: what a
    /// brute force presents (tests of the throttle). Not a valid key.
    pub fn with_random_secret(key_id: &str) -> Self {
        Self::assemble(key_id, &Alphanumeric.sample_string(&mut rand::rng(), SECRET_LEN))
    }

    fn assemble(key_id: &str, secret: &str) -> Self {
        let body = format!("{PREFIX}_{key_id}_{secret}");
        let checksum = checksum(&body);
        Self {
            full: body + &checksum,
        }
    }

    /// Parses and checks a presented key: length, prefix, shape, alphabet and
    /// checksum, in that order, all before any lookup.
    pub fn parse(presented: &str) -> Result<Self, KeyFormatError> {
        check(presented)?;
        Ok(Self {
            full: presented.to_owned(),
        })
    }

    /// The public key id.
    pub fn key_id(&self) -> &str {
        &self.full[PREFIX.len() + 1..PREFIX.len() + 1 + KEY_ID_LEN]
    }

    /// Lower-case hex SHA-256 of the whole key: what status records and what
    /// the server compares against.
    pub fn sha256_hex(&self) -> String {
        sha256_hex(self.full.as_bytes())
    }

    /// The full key. Only for writing into the consumer's Secret.
    pub fn expose(&self) -> &str {
        &self.full
    }
}

/// Checks a presented key like [`ApiKeyValue::parse`] without copying it,
/// and returns its key id: the auth server's first step on every request.
pub fn check(presented: &str) -> Result<&str, KeyFormatError> {
    if presented.len() != KEY_LEN {
        return Err(KeyFormatError::Length);
    }
    if !presented.is_ascii() {
        return Err(KeyFormatError::Alphabet);
    }
    let Some(rest) = presented.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('_')) else {
        return Err(KeyFormatError::Prefix);
    };
    let (key_id, tail) = rest.split_at(KEY_ID_LEN);
    let Some(secret_and_sum) = tail.strip_prefix('_') else {
        return Err(KeyFormatError::Shape);
    };
    if !key_id
        .bytes()
        .chain(secret_and_sum.bytes())
        .all(|b| b.is_ascii_alphanumeric())
    {
        return Err(KeyFormatError::Alphabet);
    }
    let (body, sum) = presented.split_at(KEY_LEN - CHECKSUM_LEN);
    if !checksum_matches(body, sum) {
        return Err(KeyFormatError::Checksum);
    }
    Ok(key_id)
}

/// Whether `sum` is [`checksum`]`(body)`, without building the string (the
/// request path's check allocates nothing): `sum` has exactly
/// [`CHECKSUM_LEN`] base62 digits, and a number has one such spelling, so
/// decoding it and comparing the numbers is the same test.
fn checksum_matches(body: &str, sum: &str) -> bool {
    sum.len() == CHECKSUM_LEN
        && base62::decode(sum).is_ok_and(|n| n == u128::from(crc32fast::hash(body.as_bytes())))
}

/// SHA-256 of `bytes`.
/// A random base62 identifier of `len` characters (token ids, `jti`).
pub fn random_id(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn checksum(body: &str) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    format!("{:0>width$}", base62::encode(crc), width = CHECKSUM_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_test_without_allocation_agrees_with_the_checksum() {
        for _ in 0..2_000 {
            let key = ApiKeyValue::generate();
            let (body, sum) = key.expose().split_at(KEY_LEN - CHECKSUM_LEN);
            assert!(checksum_matches(body, sum));
            assert_eq!(checksum(body), sum);
            // Every other digit in every position is refused.
            let pos = rand::random_range(0..CHECKSUM_LEN);
            for c in b'0'..=b'z' {
                let mut other = sum.as_bytes().to_vec();
                if !c.is_ascii_alphanumeric() || other[pos] == c {
                    continue;
                }
                other[pos] = c;
                let other = std::str::from_utf8(&other).unwrap();
                assert!(!checksum_matches(body, other), "{other} accepted for {sum}");
            }
        }
        // Leading zeros are part of the spelling: a shorter sum is refused.
        assert!(!checksum_matches("x", &checksum("x")[1..]));
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let key = ApiKeyValue::generate();
        let s = key.expose();
        assert_eq!(s.len(), KEY_LEN);
        assert!(s.starts_with("lk_"));
        assert_eq!(&s[3 + KEY_ID_LEN..4 + KEY_ID_LEN], "_");
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert_eq!(ApiKeyValue::parse(s), Ok(key));
    }

    #[test]
    fn secret_part_carries_at_least_256_bits() {
        assert!(SECRET_LEN as f64 * 62f64.log2() >= 256.0);
    }

    #[test]
    fn generated_keys_differ() {
        let a = ApiKeyValue::generate();
        let b = ApiKeyValue::generate();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.key_id(), b.key_id());
    }

    #[test]
    fn key_id_is_stable_across_parses_and_is_the_public_part() {
        let key = ApiKeyValue::assemble("AbCdEf012345", &"x".repeat(SECRET_LEN));
        assert_eq!(key.key_id(), "AbCdEf012345");
        let reparsed = ApiKeyValue::parse(key.expose()).unwrap();
        assert_eq!(reparsed.key_id(), "AbCdEf012345");
        assert_eq!(reparsed.sha256_hex(), key.sha256_hex());
    }

    #[test]
    fn checksum_rejects_every_one_character_change() {
        let key = ApiKeyValue::generate();
        let original = key.expose().as_bytes().to_vec();
        for i in 0..original.len() {
            if original[i] == b'_' {
                continue;
            }
            let mut changed = original.clone();
            changed[i] = if original[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(changed).unwrap();
            let err = ApiKeyValue::parse(&changed).unwrap_err();
            // A change in the prefix is caught by the prefix check, the rest by the checksum.
            if i < PREFIX.len() {
                assert_eq!(err, KeyFormatError::Prefix, "position {i}");
            } else {
                assert_eq!(err, KeyFormatError::Checksum, "position {i}");
            }
        }
    }

    #[test]
    fn malformed_inputs_are_refused_with_the_reason() {
        let key = ApiKeyValue::generate();
        let s = key.expose();
        assert_eq!(ApiKeyValue::parse(""), Err(KeyFormatError::Length));
        assert_eq!(ApiKeyValue::parse(&s[1..]), Err(KeyFormatError::Length));
        assert_eq!(
            ApiKeyValue::parse(&format!("xx{}", &s[2..])),
            Err(KeyFormatError::Prefix)
        );
        let mut shape = s.to_owned();
        shape.replace_range(3 + KEY_ID_LEN..4 + KEY_ID_LEN, "x");
        assert_eq!(ApiKeyValue::parse(&shape), Err(KeyFormatError::Shape));
        let mut alphabet = s.to_owned();
        alphabet.replace_range(20..21, "-");
        assert_eq!(ApiKeyValue::parse(&alphabet), Err(KeyFormatError::Alphabet));
        let mut unicode = s[..KEY_LEN - 2].to_owned();
        unicode.push('é');
        assert_eq!(ApiKeyValue::parse(&unicode), Err(KeyFormatError::Alphabet));
    }

    #[test]
    fn checksum_is_crc32_in_fixed_width_base62() {
        assert_eq!(checksum("").len(), CHECKSUM_LEN);
        assert_eq!(checksum(""), "000000"); // CRC32 of "" is 0
        assert_eq!(checksum("lk_x").len(), CHECKSUM_LEN);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ApiKeyValue::generate();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.key_id()));
        assert!(!shown.contains(&key.expose()[4 + KEY_ID_LEN..]));
    }

    #[test]
    fn sha256_is_hex_of_the_full_key() {
        let key = ApiKeyValue::assemble("AAAAAAAAAAAA", &"B".repeat(SECRET_LEN));
        assert_eq!(key.sha256_hex(), sha256_hex(key.expose().as_bytes()));
        assert_eq!(key.sha256_hex().len(), 64);
    }
}
