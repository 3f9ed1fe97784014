//! The API key policy and generators of compliant keys and tokens.
//!
//! A key is accepted when it is visible ASCII (it travels in an HTTP header), at least
//! [`MIN_API_KEY_LEN`] characters long, and either
//!
//! - **a key a person chose**: the seeds' rule, at least 3 of the 4 classes upper case,
//!   lower case, digit, special (from [`SPECIAL_CHARACTERS`]), *and* not guessable: the
//!   [zxcvbn](https://docs.rs/zxcvbn) estimator finds it needs at least 10^10 guesses
//!   (its score 4), so `Password1234!!!!` (a dictionary word, a sequence, a repeat) is
//!   refused; or
//! - **a random key**: hex of at least 32 characters (`openssl rand -hex 32` gives 64) or
//!   base64 / base64url of at least 22 (`openssl rand -base64 32` gives 44), that is at
//!   least [`MIN_RANDOM_KEY_BITS`] bits by its length, and that zxcvbn finds no more
//!   structure in than random data holds by chance: see [`random_key_strength`].
//!
//! Keys are checked when configuration is built; the error names the rule and how to
//! generate a good key ([`GENERATE_HINT`]), never the key.
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

/// The strength, in bits, a random (hex or base64) key must have by its length.
pub const MIN_RANDOM_KEY_BITS: u32 = 128;

/// The least strength, in bits, zxcvbn's pattern analysis may leave a random key of
/// [`MIN_RANDOM_KEY_BITS`]: half, for the short words, dates and runs that random data
/// holds by chance (keys of 16 random bytes were measured at 80 bits and more, keys of 32
/// random bytes at more than 190), while a key built from a repeated or sequential
/// pattern stays far below it.
pub const MIN_RANDOM_KEY_ESTIMATE_BITS: f64 = 64.0;

/// How to generate a good key, as every refusal says it.
pub const GENERATE_HINT: &str = "generate one with `openssl rand -hex 32`, `openssl rand -base64 32` \
     or mcp_auth::generate_api_key()";

/// Which rule of the key policy a key breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyPolicyViolation {
    /// Shorter than the minimum.
    #[error("must be at least {min} characters long; {GENERATE_HINT}")]
    TooShort {
        /// The minimum length.
        min: usize,
    },
    /// Fewer than 3 of the 4 character classes, and not a random hex or base64 key of 128
    /// bits.
    #[error(
        "must contain at least 3 of: upper case letters, lower case letters, digits, special characters (!@#$%^&*()_+-=[]{{}}|;:,.<>?), or be random hex of 32+ or base64 of 22+ characters; {GENERATE_HINT}"
    )]
    TooFewClasses,
    /// A character outside visible ASCII (it could not be sent in a header).
    #[error("must contain only visible ASCII characters; {GENERATE_HINT}")]
    NotVisibleAscii,
    /// Meets the character rule (or is hex / base64) but is guessable: words, names,
    /// keyboard runs, dates, sequences or repeats (zxcvbn).
    #[error(
        "is guessable (common words, keyboard runs, dates, sequences or repeats); {GENERATE_HINT}"
    )]
    Guessable,
}

/// Checks a key against the policy (see the [module](self) documentation).
///
/// ```
/// use mcp_auth::key_policy::{check_api_key, KeyPolicyViolation};
/// assert!(check_api_key("Abc123!@#Xyz789!@#").is_ok());
/// assert!(check_api_key("Abc123Xyz789Abc123").is_ok());
/// // openssl rand -hex 32, openssl rand -base64 32
/// assert!(check_api_key("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08").is_ok());
/// assert!(check_api_key("n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=").is_ok());
/// assert_eq!(check_api_key("Abc123!@#"), Err(KeyPolicyViolation::TooShort { min: 16 }));
/// assert_eq!(check_api_key("abcdefgh12345678"), Err(KeyPolicyViolation::TooFewClasses));
/// assert_eq!(check_api_key("Password1234!!!!"), Err(KeyPolicyViolation::Guessable));
/// assert_eq!(check_api_key(&"0123456789abcdef".repeat(4)), Err(KeyPolicyViolation::Guessable));
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
    let random = random_key_strength(key);
    if random.is_some_and(|s| s.accepted()) {
        return Ok(());
    }
    if character_classes(key) >= 3 {
        return if zxcvbn::zxcvbn(key, &[]).score() >= zxcvbn::Score::Four {
            Ok(())
        } else {
            Err(KeyPolicyViolation::Guessable)
        };
    }
    if random.is_some() {
        // Hex or base64 long enough, but repetitive, sequential or made of words.
        return Err(KeyPolicyViolation::Guessable);
    }
    Err(KeyPolicyViolation::TooFewClasses)
}

/// The strength of a key that looks like random bytes in hex or base64, as
/// [`random_key_strength`] finds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomKeyStrength {
    /// Bits by the length and alphabet alone: 3.3 a decimal digit, 4 a hex digit, 6 a
    /// base64 character.
    pub nominal_bits: u32,
    /// Bits by zxcvbn's pattern analysis of the first [`ANALYSED_CHARS`] characters:
    /// 4 or 6 a character where it finds no pattern, the logarithm of its guesses for
    /// each word, date, keyboard run, sequence or repeat it finds. 0 when a run of
    /// [`REPEATED_RUN`] characters occurs twice.
    pub estimated_bits: f64,
}

impl RandomKeyStrength {
    /// Whether the key is accepted as a random key: at least [`MIN_RANDOM_KEY_BITS`] by
    /// its length and [`MIN_RANDOM_KEY_ESTIMATE_BITS`] by zxcvbn's analysis.
    pub fn accepted(&self) -> bool {
        self.nominal_bits >= MIN_RANDOM_KEY_BITS
            && self.estimated_bits >= MIN_RANDOM_KEY_ESTIMATE_BITS
    }
}

/// The characters of a random key that zxcvbn analyses (its own limit is 100).
pub const ANALYSED_CHARS: usize = 96;

/// A key in which a run of this many characters occurs twice is repetitive (in random
/// hex that happens about once in 10^11 keys).
pub const REPEATED_RUN: usize = 12;

// zxcvbn counts guesses in a u64: past about 19 hex digits of brute force every split of
// the key saturates it, and it stops telling patterns apart. So the key is analysed in
// pieces of this many characters, whose guesses stay far below saturation.
const PIECE: usize = 16;

/// The strength of `key` if it is decimal or hex digits (`0-9a-fA-F`, at least 32
/// characters, credited 3.3 or 4 bits each) or base64 / base64url (`A-Za-z0-9+/` or
/// `A-Za-z0-9-_`, at most two `=` of padding, at least 22 characters before the padding,
/// credited 6 bits each); `None` for any other key.
///
/// zxcvbn's analysis is run on pieces of 16 characters (its guess counts saturate on
/// longer random strings), in two tilings, from the start and from the 8th character,
/// so that a word cut by one is whole in the other; the lower total counts. Random keys
/// of 32 bytes score 190 bits and more; `aaaa...`, `0123456789abcdef` repeated or
/// `deadbeef` repeated score under 50.
pub fn random_key_strength(key: &str) -> Option<RandomKeyStrength> {
    let body = key.trim_end_matches('=');
    let standard = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    let url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if key.len() - body.len() > 2 || !(body.bytes().all(standard) || body.bytes().all(url)) {
        return None;
    }
    // Credit each character by the smallest alphabet the key fits: decimal digits, hex
    // digits (not padded), or base64.
    let unpadded = key.len() == body.len();
    let (bits_per_char, min_len) = if unpadded && body.bytes().all(|b| b.is_ascii_digit()) {
        (10f64.log2(), 32)
    } else if unpadded && body.bytes().all(|b| b.is_ascii_hexdigit()) {
        (4.0, 32)
    } else {
        (6.0, 22)
    };
    if body.len() < min_len {
        return None;
    }
    // At most a few hundred bits for any key a header carries; the cast saturates.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let nominal_bits = (body.len() as f64 * bits_per_char) as u32;
    // The alphabets are ASCII: byte and character positions agree.
    let analysed = &body[..body.len().min(ANALYSED_CHARS)];
    let estimated_bits = if has_repeated_run(analysed) {
        0.0
    } else {
        let split = analysed.len().min(PIECE / 2);
        let from_start = pieces_bits(&[analysed], bits_per_char);
        let shifted = pieces_bits(&[&analysed[..split], &analysed[split..]], bits_per_char);
        from_start.min(shifted)
    };
    Some(RandomKeyStrength {
        nominal_bits,
        estimated_bits,
    })
}

fn has_repeated_run(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < REPEATED_RUN {
        return false;
    }
    let mut seen = std::collections::HashSet::new();
    b.windows(REPEATED_RUN).any(|w| !seen.insert(w))
}

/// zxcvbn's estimate, in bits, of `parts` cut into pieces of [`PIECE`] characters.
fn pieces_bits(parts: &[&str], bits_per_char: f64) -> f64 {
    use zxcvbn::matching::patterns::MatchPattern;
    let mut total = 0.0;
    for part in parts {
        for piece in part.as_bytes().chunks(PIECE) {
            let Ok(piece) = std::str::from_utf8(piece) else {
                continue;
            };
            if piece.is_empty() {
                continue;
            }
            for m in zxcvbn::zxcvbn(piece, &[]).sequence() {
                let chars = m.token.chars().count() as f64;
                let random = chars * bits_per_char;
                total += match m.pattern {
                    MatchPattern::BruteForce => random,
                    _ => (m.guesses.unwrap_or(1).max(1) as f64).log2().min(random),
                };
            }
        }
    }
    total
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
        // Base64 alphabet and long enough, but a sequence.
        assert_eq!(
            check_api_key("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Err(KeyPolicyViolation::Guessable)
        );
        assert_eq!(
            check_api_key("ABCDEFGHIJKLMNOPQRSTU"),
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

    /// 256 random bits from `openssl rand -hex 32` / `-base64 32` were refused by the
    /// character-class rule.
    #[test]
    fn openssl_rand_keys_are_accepted() {
        for k in [
            // openssl rand -hex 32
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "ea8b05209df8bd3dafc2917eb7d1466bc5b818d5af2dc14d9acac758809e49f7",
            // openssl rand -hex 16 (128 bits)
            "f82dbfdf8ae1295b2d68a573fb879287",
            // openssl rand -base64 32 / 16
            "BeR3nkC0N1RHhXLU/ZeZ0GxcwLexSga1dJgQ91NL3HA=",
            "PsDGiZZDK8H+XVzvOOiMyw==",
            // a bearer token made here (base64url, 32 bytes)
            "wR2bVQ8u1kX0tLzN7dYh5cPq3sJmA9eG4fUoIxHyTnE",
        ] {
            assert_eq!(check_api_key(k), Ok(()), "{k}");
        }
    }

    /// Keys that meet the class rule but are guessable, and hex / base64 keys that are
    /// long enough but repetitive or sequential, are refused.
    #[test]
    fn guessable_keys_are_refused() {
        for k in [
            "Password1234!!!!".to_owned(),
            "Password1234Password1234".to_owned(),
            "R3ader!@#R3ader!@#".to_owned(),
            "Qwerty123456!@#$".to_owned(),
            "a".repeat(64),
            "0".repeat(32),
            "0123456789abcdef".repeat(4),
            "fedcba9876543210".repeat(2),
            "deadbeef".repeat(4),
            "deadbeef".repeat(8),
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH".to_owned(),
            "correcthorsebatterystaplecorrecthorse".to_owned(),
            // A random half repeated: 64 bits twice.
            "9f86d081884c7d659f86d081884c7d65".to_owned(),
            // A 10-character random run four times: zxcvbn's repeat is found whole.
            "9f86d081889f86d081889f86d081889f86d08188".to_owned(),
        ] {
            assert_eq!(check_api_key(&k), Err(KeyPolicyViolation::Guessable), "{k}");
        }
    }

    /// Every refusal says how to generate a good key.
    #[test]
    fn refusals_name_the_generators() {
        for v in [
            KeyPolicyViolation::Guessable,
            KeyPolicyViolation::TooFewClasses,
            KeyPolicyViolation::TooShort { min: 16 },
            KeyPolicyViolation::NotVisibleAscii,
        ] {
            let m = v.to_string();
            assert!(m.contains("openssl rand -hex 32"), "{m}");
            assert!(m.contains("openssl rand -base64 32"), "{m}");
            assert!(m.contains("generate_api_key()"), "{m}");
        }
        let e = check_api_key("Password1234!!!!").unwrap_err().to_string();
        assert!(e.contains("guessable"), "{e}");
        assert!(!e.contains("Password1234"), "{e}");
    }

    #[test]
    fn random_key_strength_reads_the_alphabets() {
        let hex64 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let s = random_key_strength(hex64).unwrap();
        assert_eq!(s.nominal_bits, 256);
        assert!(s.accepted());
        // 31 hex digits (124 bits) or 21 base64 characters (126 bits) are too short, and
        // hex digits are not credited as base64.
        assert!(random_key_strength(&hex64[..31]).is_none());
        assert_eq!(random_key_strength(&hex64[..32]).unwrap().nominal_bits, 128);
        assert!(random_key_strength("PsDGiZZDK8H+XVzvOOiMy").is_none());
        assert_eq!(
            random_key_strength("PsDGiZZDK8H+XVzvOOiMyw==")
                .unwrap()
                .nominal_bits,
            132
        );
        // Decimal digits: 3.3 bits each; 39 of them (129 bits) are needed.
        assert_eq!(
            random_key_strength(&"7".repeat(32)).unwrap().nominal_bits,
            106
        );
        // Padding: at most two `=`, and only at the end.
        assert!(random_key_strength("PsDGiZZDK8H+XVzvOOiMyw===").is_none());
        assert!(random_key_strength("PsDGiZZDK8H+X=VzvOOiMyw").is_none());
        // One alphabet at a time: base64 and base64url mixed is neither.
        assert!(random_key_strength("PsDGiZZDK8H+XVzvOOi_Myw").is_none());
        assert!(random_key_strength("Abc123!@#Xyz789!@#").is_none());
    }

    proptest::proptest! {
        // zxcvbn is slow in a debug build: fewer cases than proptest's 256.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        #[test]
        fn policy_never_panics_and_keeps_its_floor(
            any in "\\PC{0,120}",
            ascii in "[!-~]{0,80}",
            b64 in "[A-Za-z0-9+/=_-]{0,80}",
        ) {
            for s in [any, ascii, b64] {
                let r = check_api_key(&s);
                let visible = s.bytes().all(|b| (0x21..=0x7e).contains(&b));
                if r.is_ok() {
                    proptest::prop_assert!(visible && s.len() >= MIN_API_KEY_LEN);
                    // Accepted either by the class rule or as a random key.
                    proptest::prop_assert!(
                        character_classes(&s) >= 3
                            || random_key_strength(&s).is_some_and(|k| k.accepted())
                    );
                }
                if let Some(k) = random_key_strength(&s) {
                    proptest::prop_assert!(k.estimated_bits >= 0.0);
                    proptest::prop_assert!(s.len() >= 22);
                }
            }
        }

        #[test]
        fn random_32_byte_encodings_are_accepted(bytes in proptest::prelude::any::<[u8; 32]>()) {
            use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
            for k in [
                hex::encode(bytes),
                hex::encode_upper(bytes),
                STANDARD.encode(bytes),
                STANDARD_NO_PAD.encode(bytes),
                URL_SAFE.encode(bytes),
                URL_SAFE_NO_PAD.encode(bytes),
            ] {
                proptest::prop_assert_eq!(check_api_key(&k), Ok(()), "{}", k);
            }
        }

        #[test]
        fn generated_keys_are_accepted(_seed in 0u8..=255) {
            let k = generate_api_key();
            proptest::prop_assert_eq!(check_api_key(&k), Ok(()), "{}", k);
            let t = generate_bearer_token();
            proptest::prop_assert_eq!(check_api_key(&t), Ok(()), "{}", t);
        }

        /// A hex unit of 1 to 10 characters or a lower case and digits unit of 1 to 6
        /// repeated to 32+ characters, and runs of the hex digits, are refused; no
        /// repeated base64url unit passes as a random key (one with 3 character classes
        /// is a key a person chose, judged by zxcvbn as a whole).
        #[test]
        fn repetitive_and_sequential_keys_are_refused(
            unit in "[0-9a-f]{1,10}",
            b64unit in "[a-z0-9]{1,6}",
            anyunit in "[A-Za-z0-9_-]{1,10}",
            start in 0usize..16,
            len in 32usize..96,
        ) {
            let hexkey: String = unit.chars().cycle().take(len).collect();
            proptest::prop_assert!(check_api_key(&hexkey).is_err(), "{}", hexkey);
            let b64key: String = b64unit.chars().cycle().take(len).collect();
            proptest::prop_assert!(check_api_key(&b64key).is_err(), "{}", b64key);
            let anykey: String = anyunit.chars().cycle().take(len).collect();
            proptest::prop_assert!(
                !random_key_strength(&anykey).is_some_and(|k| k.accepted()),
                "{}", anykey
            );
            let anykey: String = anyunit.chars().cycle().take(len).collect();
            proptest::prop_assert!(
                !random_key_strength(&anykey).is_some_and(|k| k.accepted()),
                "{}", anykey
            );
            let digits = "0123456789abcdef";
            let run: String = digits.chars().cycle().skip(start).take(len).collect();
            proptest::prop_assert!(check_api_key(&run).is_err(), "{}", run);
            let down: String = digits.chars().rev().cycle().skip(start).take(len).collect();
            proptest::prop_assert!(check_api_key(&down).is_err(), "{}", down);
        }
    }
}
