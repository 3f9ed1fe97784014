//! The API key policy and generators of compliant keys and tokens.
//!
//! The policy is the seeds' rule: at least [`MIN_API_KEY_LEN`] characters and at least 3
//! of the 4 classes upper case, lower case, digit, special (from [`SPECIAL_CHARACTERS`]).
//! On top of it, every character must be visible ASCII, because a key travels in an HTTP
//! header. Keys are checked when configuration is built; the error names the rule, never
//! the key.
//!
//! Keys and tokens are generated from `rand::rng()`, a CSPRNG (ChaCha12) seeded from the
//! operating system and reseeded periodically.

use base64::Engine as _;
use rand::Rng;

/// The minimum length of an API key.
pub const MIN_API_KEY_LEN: usize = 16;

/// The special characters that count as the fourth character class.
pub const SPECIAL_CHARACTERS: &str = "!@#$%^&*()_+-=[]{}|;:,.<>?";

/// The length of keys made by [`generate_api_key`].
pub const GENERATED_API_KEY_LEN: usize = 32;

/// The minimum length of a static bearer token.
pub const MIN_BEARER_TOKEN_LEN: usize = 32;

/// Which rule of the key policy a key breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyPolicyViolation {
    /// Shorter than the minimum.
    #[error("must be at least {min} characters long")]
    TooShort {
        /// The minimum length.
        min: usize,
    },
    /// Fewer than 3 of the 4 character classes.
    #[error(
        "must contain at least 3 of: upper case letters, lower case letters, digits, special characters (!@#$%^&*()_+-=[]{{}}|;:,.<>?)"
    )]
    TooFewClasses,
    /// A character outside visible ASCII (it could not be sent in a header).
    #[error("must contain only visible ASCII characters")]
    NotVisibleAscii,
}

/// Checks a key against the policy.
///
/// ```
/// use mcp_auth::key_policy::{check_api_key, KeyPolicyViolation};
/// assert!(check_api_key("Abc123!@#Xyz789!@#").is_ok());
/// assert!(check_api_key("Abc123Xyz789Abc123").is_ok());
/// assert_eq!(check_api_key("Abc123!@#"), Err(KeyPolicyViolation::TooShort { min: 16 }));
/// assert_eq!(check_api_key("abcdefgh12345678"), Err(KeyPolicyViolation::TooFewClasses));
/// ```
pub fn check_api_key(key: &str) -> Result<(), KeyPolicyViolation> {
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(KeyPolicyViolation::NotVisibleAscii);
    }
    if key.len() < MIN_API_KEY_LEN {
        return Err(KeyPolicyViolation::TooShort {
            min: MIN_API_KEY_LEN,
        });
    }
    if character_classes(key) < 3 {
        return Err(KeyPolicyViolation::TooFewClasses);
    }
    Ok(())
}

fn character_classes(key: &str) -> usize {
    let (mut upper, mut lower, mut digit, mut special) = (false, false, false, false);
    for c in key.chars() {
        upper |= c.is_ascii_uppercase();
        lower |= c.is_ascii_lowercase();
        digit |= c.is_ascii_digit();
        special |= SPECIAL_CHARACTERS.contains(c);
    }
    [upper, lower, digit, special]
        .iter()
        .filter(|b| **b)
        .count()
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";
// A subset of the special set that needs no quoting in shells or YAML.
const SAFE_SPECIAL: &[u8] = b"!@#%^*_+-=.";

/// Generates an API key of [`GENERATED_API_KEY_LEN`] characters that meets the policy
/// (all four classes), from a CSPRNG.
///
/// ```
/// let k = mcp_auth::key_policy::generate_api_key();
/// assert!(mcp_auth::key_policy::check_api_key(&k).is_ok());
/// ```
pub fn generate_api_key() -> String {
    generate_api_key_of_len(GENERATED_API_KEY_LEN)
}

/// Generates an API key of `len` characters (at least [`MIN_API_KEY_LEN`]; shorter
/// requests are raised to it) containing all four character classes.
pub fn generate_api_key_of_len(len: usize) -> String {
    let len = len.max(MIN_API_KEY_LEN);
    let mut rng = rand::rng();
    let alphabet: Vec<u8> = [UPPER, LOWER, DIGITS, SAFE_SPECIAL].concat();
    let mut out: Vec<u8> = Vec::with_capacity(len);
    // One of each class, then uniform over the whole alphabet, then shuffled.
    for class in [UPPER, LOWER, DIGITS, SAFE_SPECIAL] {
        out.push(class[rng.random_range(0..class.len())]);
    }
    while out.len() < len {
        out.push(alphabet[rng.random_range(0..alphabet.len())]);
    }
    for i in (1..out.len()).rev() {
        let j = rng.random_range(0..=i);
        out.swap(i, j);
    }
    out.into_iter().map(char::from).collect()
}

/// Generates an opaque bearer token: 32 random bytes, base64url without padding
/// (43 characters, 256 bits of entropy).
///
/// ```
/// let t = mcp_auth::key_policy::generate_bearer_token();
/// assert_eq!(t.len(), 43);
/// ```
pub fn generate_bearer_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks a static bearer token: at least [`MIN_BEARER_TOKEN_LEN`] characters, all of the
/// RFC 6750 `b64token` alphabet (so it can be sent in an `Authorization` header).
pub fn check_bearer_token(token: &str) -> Result<(), &'static str> {
    if token.len() < MIN_BEARER_TOKEN_LEN {
        return Err("must be at least 32 characters long");
    }
    if !crate::credentials::is_token68(token) {
        return Err(
            "must contain only the RFC 6750 b64token characters (A-Z a-z 0-9 - . _ ~ + / and trailing =)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples() {
        for ok in [
            "Abc123!@#Xyz789!@#",
            "Abc123Xyz789Abc123",
            "ABC123!@#XYZ789!@#",
        ] {
            assert_eq!(check_api_key(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_api_key("Abc123!@#"),
            Err(KeyPolicyViolation::TooShort { min: 16 })
        );
        assert_eq!(
            check_api_key("abcdefgh12345678"),
            Err(KeyPolicyViolation::TooFewClasses)
        );
        assert_eq!(
            check_api_key("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Err(KeyPolicyViolation::TooFewClasses)
        );
        assert_eq!(
            check_api_key("Abc123!@#Xyz789 !@#"),
            Err(KeyPolicyViolation::NotVisibleAscii)
        );
    }

    #[test]
    fn generated_keys_comply_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let k = generate_api_key();
            assert_eq!(k.len(), GENERATED_API_KEY_LEN);
            assert_eq!(check_api_key(&k), Ok(()));
            assert_eq!(character_classes(&k), 4);
            assert!(seen.insert(k));
        }
        let t = generate_bearer_token();
        assert_eq!(check_bearer_token(&t), Ok(()));
        assert_ne!(t, generate_bearer_token());
        assert_eq!(generate_api_key_of_len(3).len(), MIN_API_KEY_LEN);
    }

    #[test]
    fn violation_messages_name_the_rule() {
        let e = KeyPolicyViolation::TooFewClasses.to_string();
        assert!(e.contains("at least 3 of"));
    }

    proptest::proptest! {
        #[test]
        fn policy_never_panics_and_matches_definition(s in "\\PC{0,40}") {
            let r = check_api_key(&s);
            let visible = s.bytes().all(|b| (0x21..=0x7e).contains(&b));
            let expected = visible && s.len() >= MIN_API_KEY_LEN && character_classes(&s) >= 3;
            proptest::prop_assert_eq!(r.is_ok(), expected);
        }
    }
}
