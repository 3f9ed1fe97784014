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
        "is guessable (common words or passphrases, keyboard runs, dates, sequences, repeats, well-known digests, or hex / base64 of such text); generate keys, don't choose them: {GENERATE_HINT}"
    )]
    Guessable,
}

/// Checks a key against the policy (see the [module](self) documentation).
///
/// ```
/// use mcp_auth::key_policy::{check_api_key, KeyPolicyViolation};
/// assert!(check_api_key("hR7!mZq2@Wx9#vLc4%").is_ok());
/// // A common password, sequences and keyboard runs: under 10^14 guesses.
/// assert_eq!(check_api_key("Abc123!@#Xyz789!@#"), Err(KeyPolicyViolation::Guessable));
/// // openssl rand -hex 32, openssl rand -base64 32
/// assert!(check_api_key("69dec51ab72347da71ba17cbe450634b2fe32d4a902bdede5b819e2a36c95be5").is_ok());
/// assert!(check_api_key("VSt24od0EpKIRILix1M8Ao9GF+o4Yrx/TrOmn9DLXRQ=").is_ok());
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
    if random.is_some() {
        match decoded_view(key) {
            DecodedView::Opaque => {}
            DecodedView::Guessable => return Err(KeyPolicyViolation::Guessable),
            // Hex or base64 of text is as strong as the text: it must pass the bar of a
            // key a person chose.
            DecodedView::Text(text) => {
                return if chosen_key_passes(&text) {
                    Ok(())
                } else {
                    Err(KeyPolicyViolation::Guessable)
                };
            }
        }
    }
    if random.is_some_and(|s| s.accepted()) {
        // `The-Quick-Brown-Fox-Jumps-Over-1` is in the base64url alphabet.
        return if mostly_joined_words(key) {
            Err(KeyPolicyViolation::Guessable)
        } else {
            Ok(())
        };
    }
    if character_classes(key) >= 3 {
        return if chosen_key_passes(key) {
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

/// The least number of guesses, as a power of ten, zxcvbn must find a key a person chose
/// needs: 10^14, far past its score 4 (10^10).
pub const MIN_CHOSEN_KEY_GUESSES_LOG10: f64 = 14.0;

/// Whether a key a person chose passes the bar: at least 3 of the 4 character classes,
/// at least 10^[`MIN_CHOSEN_KEY_GUESSES_LOG10`] guesses by zxcvbn, both for the whole key
/// and summed over its pieces of 16 characters in two tilings (zxcvbn's count saturates
/// on longer keys and then reports no pattern), and none of the patterns that make a key
/// guessable whatever its length, as zxcvbn finds them in the whole key or a piece: a
/// repeat of 8 characters or more, a sequence of 5 or more (`abcde`, `13579`), keyboard
/// walks of 4 or more over more than a third of the key, dictionary words of 3 letters
/// or more (passphrases included, found whole or between separators and case changes)
/// over half of it; nor a run of 6 characters twice, nor
/// characters that advance in step (`Aa1!Bb2@Cc3#`).
fn chosen_key_passes(key: &str) -> bool {
    use zxcvbn::matching::patterns::MatchPattern;
    if character_classes(key) < 3 {
        return false;
    }
    // zxcvbn reads the first 100 characters; the rest adds to the key's strength.
    let chars: Vec<char> = key.chars().take(100).collect();
    let len = chars.len();
    let piece = |from: usize, to: usize| -> String { chars[from..to].iter().collect() };
    let mut spatial = vec![false; len];
    let mut words = vec![false; len];
    // (start, end) of the pieces: the whole key, then the two tilings.
    let whole = [(0, len)];
    let from_start: Vec<(usize, usize)> = (0..len)
        .step_by(PIECE)
        .map(|i| (i, (i + PIECE).min(len)))
        .collect();
    let split = len.min(PIECE / 2);
    let shifted: Vec<(usize, usize)> = std::iter::once((0, split))
        .chain(
            (split..len)
                .step_by(PIECE)
                .map(|i| (i, (i + PIECE).min(len))),
        )
        .collect();
    for tiling in [&whole[..], &from_start, &shifted] {
        let mut guesses_log10 = 0.0;
        for &(from, to) in tiling {
            if from >= to {
                continue;
            }
            let entropy = zxcvbn::zxcvbn(&piece(from, to), &[]);
            guesses_log10 += entropy.guesses_log10();
            for m in entropy.sequence() {
                let n = m.j + 1 - m.i;
                let covered = (from + m.i)..=(from + m.j).min(len - 1);
                match m.pattern {
                    MatchPattern::Repeat(_) if n >= 8 => return false,
                    MatchPattern::Sequence(_) if n >= 5 => return false,
                    MatchPattern::Spatial(_) if n >= 4 => {
                        spatial[covered].iter_mut().for_each(|c| *c = true);
                    }
                    MatchPattern::Dictionary(_) if n >= 3 => {
                        words[covered].iter_mut().for_each(|c| *c = true);
                    }
                    _ => {}
                }
            }
        }
        if guesses_log10 < MIN_CHOSEN_KEY_GUESSES_LOG10 {
            return false;
        }
    }
    mark_joined_words(&chars, &mut words);
    let count = |v: &[bool]| v.iter().filter(|c| **c).count();
    if count(&spatial) * 3 > len || count(&words) * 2 > len {
        return false;
    }
    let mut seen = std::collections::HashSet::new();
    if chars.windows(6).any(|w| !seen.insert(w)) {
        return false;
    }
    let bytes: Vec<u8> = key.bytes().take(100).collect();
    !in_step(&bytes, false)
}

/// Marks in `words` the words of `chars` joined by separators or in camel case
/// (`The-Quick-Brown`, `CorrectHorse`): each run of 4 letters or more, cut before an
/// upper case letter that follows a lower case one, that zxcvbn finds whole in its
/// dictionaries.
fn mark_joined_words(chars: &[char], words: &mut [bool]) {
    let len = chars.len().min(words.len());
    let mut start = 0;
    for i in 1..=len {
        let cut = i == len
            || !chars[i].is_ascii_alphabetic()
            || !chars[i - 1].is_ascii_alphabetic()
            || (chars[i].is_ascii_uppercase() && chars[i - 1].is_ascii_lowercase());
        if !cut {
            continue;
        }
        if i - start >= 4 && chars[start].is_ascii_alphabetic() {
            let segment: String = chars[start..i].iter().collect();
            let entropy = zxcvbn::zxcvbn(&segment, &[]);
            if let [m] = entropy.sequence()
                && matches!(
                    m.pattern,
                    zxcvbn::matching::patterns::MatchPattern::Dictionary(_)
                )
            {
                words[start..i].iter_mut().for_each(|c| *c = true);
            }
        }
        start = if i < len && chars[i].is_ascii_alphabetic() {
            i
        } else {
            i + 1
        };
    }
}

/// Whether dictionary words joined by separators or in camel case make more than half
/// of `key` (its first 100 characters): a passphrase, even in the base64url alphabet.
fn mostly_joined_words(key: &str) -> bool {
    let chars: Vec<char> = key.chars().take(100).collect();
    let mut words = vec![false; chars.len()];
    mark_joined_words(&chars, &mut words);
    words.iter().filter(|w| **w).count() * 2 > chars.len()
}

/// What the bytes a hex or base64 key decodes to say about it.
enum DecodedView {
    /// Bytes with no structure random bytes would not show by chance.
    Opaque,
    /// A well-known digest of a guessable string, or structured bytes.
    Guessable,
    /// Mostly printable text, to judge as a key a person chose.
    Text(String),
}

/// The decoded bytes shorter than this are not judged (no key decodes to fewer than 16).
const MIN_DECODED: usize = 12;

/// Decodes a key that [`random_key_strength`] reads as hex or base64 and judges the bytes.
fn decoded_view(key: &str) -> DecodedView {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let body = key.trim_end_matches('=');
    let bytes = if key.len() == body.len() && body.bytes().all(|b| b.is_ascii_hexdigit()) {
        // An odd digit left over is ignored.
        hex::decode(&body[..body.len() / 2 * 2]).ok()
    } else {
        let config = GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true);
        let alphabet = if body.bytes().any(|b| b == b'-' || b == b'_') {
            &base64::alphabet::URL_SAFE
        } else {
            &base64::alphabet::STANDARD
        };
        // A single character past a group of 4 carries no whole byte.
        let whole = if body.len() % 4 == 1 {
            &body[..body.len() - 1]
        } else {
            body
        };
        GeneralPurpose::new(alphabet, config).decode(whole).ok()
    };
    let Some(bytes) = bytes else {
        return DecodedView::Opaque;
    };
    if bytes.len() < MIN_DECODED {
        return DecodedView::Opaque;
    }
    if known_digests().contains(bytes.as_slice()) {
        return DecodedView::Guessable;
    }
    // Random bytes are printable 37% of the time: 15 of 16 or more by chance happens to
    // fewer than 4 keys in a million.
    let printable = bytes.iter().filter(|b| (0x20..=0x7e).contains(*b)).count();
    if printable * 10 >= bytes.len() * 9 {
        return DecodedView::Text(bytes.iter().map(|&b| char::from(b)).collect());
    }
    if in_step(&bytes, true) || few_distinct(&bytes) || has_repeated_window(&bytes) {
        return DecodedView::Guessable;
    }
    DecodedView::Opaque
}

/// Whether values advance in step: at a stride of 1 to 4, the difference between a value
/// and the one a stride before equals the previous such difference (a repeat is a step
/// of 0, `0 1 2 3` a step of 1, `A a 1 B b 2` a step of 1 at stride 3) at a quarter or
/// more of the positions (and 4 at least), or, for decoded bytes (`bytes`), 3 times in a
/// row at stride 1. Random bytes do that at one position in 256; a key chosen from about
/// 70 characters at one in 70.
fn in_step(values: &[u8], bytes: bool) -> bool {
    for stride in 1..=4 {
        if values.len() < 2 * stride + 2 {
            break;
        }
        let (mut steps, mut run, mut longest) = (0usize, 0usize, 0usize);
        for i in stride..values.len() - stride {
            let before = values[i].wrapping_sub(values[i - stride]);
            let after = values[i + stride].wrapping_sub(values[i]);
            if before == after {
                steps += 1;
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        let positions = values.len() - 2 * stride;
        if steps >= 4 && steps * 4 >= positions {
            return true;
        }
        // Five bytes in step (`00 01 02 03 04`): one chance in 256^3 a position.
        if bytes && stride == 1 && longest >= 3 {
            return true;
        }
    }
    false
}

/// Whether fewer distinct byte values occur than half the length (up to 256) would
/// have: random bytes of 16 hold 15 or 16 distinct values.
fn few_distinct(bytes: &[u8]) -> bool {
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    distinct * 2 < bytes.len().min(256)
}

/// Whether a run of 4 bytes occurs twice (in 32 random bytes, about once in 10^7 keys).
fn has_repeated_window(bytes: &[u8]) -> bool {
    let mut seen = std::collections::HashSet::new();
    bytes.windows(4).any(|w| !seen.insert(w))
}

/// The most common passwords (the top of the lists zxcvbn's own dictionary is built
/// from), whose MD5, SHA-1 and SHA-256 digests, with those of the empty string, are in
/// every rainbow table: a hex or base64 key equal to one is refused.
pub const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "123456",
    "12345678",
    "1234",
    "qwerty",
    "12345",
    "dragon",
    "pussy",
    "baseball",
    "football",
    "letmein",
    "monkey",
    "696969",
    "abc123",
    "mustang",
    "michael",
    "shadow",
    "master",
    "jennifer",
    "111111",
    "2000",
    "jordan",
    "superman",
    "harley",
    "1234567",
    "fuckme",
    "hunter",
    "fuckyou",
    "trustno1",
    "ranger",
    "buster",
    "thomas",
    "tigger",
    "robert",
    "soccer",
    "fuck",
    "batman",
    "test",
    "pass",
    "killer",
    "hockey",
    "george",
    "charlie",
    "andrew",
    "michelle",
    "love",
    "sunshine",
    "jessica",
    "asshole",
    "6969",
    "pepper",
    "daniel",
    "access",
    "123456789",
    "654321",
    "joshua",
    "maggie",
    "starwars",
    "silver",
    "william",
    "dallas",
    "yankees",
    "123123",
    "ashley",
    "666666",
    "hello",
    "amanda",
    "orange",
    "biteme",
    "freedom",
    "computer",
    "sexy",
    "thunder",
    "nicole",
    "ginger",
    "heather",
    "hammer",
    "summer",
    "corvette",
    "taylor",
    "fucker",
    "austin",
    "1111",
    "merlin",
    "matthew",
    "121212",
    "golfer",
    "cheese",
    "princess",
    "martin",
    "chelsea",
    "patrick",
    "richard",
    "diamond",
    "yellow",
    "bigdog",
    "secret",
    "asdfgh",
    "sparky",
    "cowboy",
    "admin",
    "root",
    "toor",
    "changeme",
    "welcome",
    "iloveyou",
    "qwerty123",
    "1q2w3e4r",
    "password1",
    "Password",
    "Password1",
    "123qwe",
    "000000",
    "1234567890",
    "qwertyuiop",
    "passw0rd",
    "P@ssw0rd",
    "guest",
    "administrator",
    "default",
    "user",
    "demo",
    "apikey",
    "api_key",
    "token",
    "key",
    "secret_key",
    "mysecret",
    "deadbeef",
    "foobar",
    "foo",
    "bar",
    "hello world",
    "Hello, World!",
    "example",
    "sample",
    "changeit",
    "letmein123",
];

/// The digests of [`COMMON_PASSWORDS`] and the empty string, computed once.
fn known_digests() -> &'static std::collections::HashSet<Vec<u8>> {
    static DIGESTS: std::sync::OnceLock<std::collections::HashSet<Vec<u8>>> =
        std::sync::OnceLock::new();
    DIGESTS.get_or_init(|| {
        let mut set = std::collections::HashSet::new();
        for p in std::iter::once("").chain(COMMON_PASSWORDS.iter().copied()) {
            set.insert(<md5::Md5 as md5::Digest>::digest(p).to_vec());
            set.insert(<sha1::Sha1 as sha1::Digest>::digest(p).to_vec());
            set.insert(<sha2::Sha256 as sha2::Digest>::digest(p).to_vec());
        }
        set
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
        // The last three are the example gateway's test keys.
        for ok in [
            "hR7!mZq2@Wx9#vLc4%",
            "Vt8#qLm2!xRw9@Kp",
            "hR7!mZq2@Wx9#vLc4%Test",
            "hR7!mZq2@Wx9#vLc4%Props",
            "hR7!mZq2@Wx9#vLc4%PyTest",
        ] {
            assert_eq!(check_api_key(ok), Ok(()), "{ok}");
        }
        // Accepted at zxcvbn's score 4 (10^10 guesses), refused at 10^14: a common
        // password (`abc123`), sequences and a keyboard run.
        for guessable in [
            "Abc123!@#Xyz789!@#",
            "Abc123Xyz789Abc123",
            "ABC123!@#XYZ789!@#",
        ] {
            assert_eq!(
                check_api_key(guessable),
                Err(KeyPolicyViolation::Guessable),
                "{guessable}"
            );
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
            "69dec51ab72347da71ba17cbe450634b2fe32d4a902bdede5b819e2a36c95be5",
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

    /// Keys an outside review found accepted: hex or base64 whose decoded bytes are
    /// guessable text or structured bytes, hex of well-known digests of guessable
    /// strings, and passphrases, repeats and keyboard walks that zxcvbn scored 4. Each is
    /// refused, while random keys of the minimum length and the old refusals hold.
    #[test]
    fn review_keys_are_refused_and_random_keys_held() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let refused = [
            // base64 of guessable text or ordered bytes
            "ZGVhZGJlZWZkZWFkYmVlZmRlYWRiZWVm".to_owned(),
            "cGFzc3dvcmRwYXNzd29yZHBhc3N3b3Jk".to_owned(),
            "YWRtaW5hZG1pbmFkbWluYWRtaW4=".to_owned(),
            "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0".to_owned(),
            STANDARD.encode((0u8..32).collect::<Vec<u8>>()),
            URL_SAFE_NO_PAD.encode((0u8..16).collect::<Vec<u8>>()),
            // digests in every rainbow table: MD5 of password, admin, test; MD5, SHA-1
            // and SHA-256 of the empty string
            "5f4dcc3b5aa765d61d8327deb882cf99".to_owned(),
            "21232f297a57a5a743894a0e4a801fc3".to_owned(),
            "098f6bcd4621d373cade4e832627b4f6".to_owned(),
            "d41d8cd98f00b204e9800998ecf8427e".to_owned(),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709".to_owned(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
            "5F4DCC3B5AA765D61D8327DEB882CF99".to_owned(),
            // SHA-256 of "test", in hex and base64 (once this module's own example)
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
            "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=".to_owned(),
            // famous, repeated, keyboard walks, sequences
            "CorrectHorseBatteryStaple1!".to_owned(),
            "Tr0ub4dor&3Tr0ub4dor&3".to_owned(),
            "MyCompanyName2024MyCompanyName2024".to_owned(),
            "zaq1@WSXcde3$RFVbgt5^YHN".to_owned(),
            "!QAZ2wsx#EDC4rfv%TGB6yhn".to_owned(),
            "1q2w3e4r5t6y7u8i9o0pASDFGHJKL".to_owned(),
            "Aa1!Bb2@Cc3#Dd4$Ee5%".to_owned(),
            "The-Quick-Brown-Fox-Jumps-Over-1".to_owned(),
            "sk-proj-abcdefghijklmnopqrstuvwxyz1234".to_owned(),
            // held from before
            "Password1234!!!!".to_owned(),
            "a".repeat(64),
            "0123456789abcdef".repeat(4),
            "ab".repeat(32),
        ];
        let accepted: Vec<&String> = refused
            .iter()
            .filter(|k| check_api_key(k) != Err(KeyPolicyViolation::Guessable))
            .collect();
        assert!(
            accepted.is_empty(),
            "not refused as guessable: {accepted:?}"
        );
        // Random keys of the minimum length, 100 of each encoding, none refused.
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE};
        let mut rng = rand::rng();
        for _ in 0..100 {
            let b16: [u8; 16] = rng.random();
            let b20: [u8; 20] = rng.random();
            for k in [
                hex::encode(b16),
                hex::encode(b20),
                STANDARD_NO_PAD.encode(b16),
                URL_SAFE_NO_PAD.encode(b16),
                STANDARD.encode(b16),
                URL_SAFE.encode(b16),
            ] {
                assert_eq!(check_api_key(&k), Ok(()), "{k}");
            }
        }
    }

    /// How many random keys of the minimum length the policy refuses: 2,000 of 16 bytes
    /// in each of hex, base64 and base64url (unpadded), and 2,000 generated keys. Slow
    /// in a debug build (zxcvbn): `cargo test -p mcp-auth --lib -- --ignored
    /// refusal_rate --nocapture`; the counts are in BENCHMARKS.md.
    #[test]
    #[ignore = "slow in a debug build; run for the figures"]
    fn refusal_rate_of_random_minimum_keys() {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let mut rng = rand::rng();
        let (mut hex_refused, mut b64_refused, mut url_refused, mut gen_refused) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..2000 {
            let b: [u8; 16] = rng.random();
            for (k, refused) in [
                (hex::encode(b), &mut hex_refused),
                (STANDARD_NO_PAD.encode(b), &mut b64_refused),
                (URL_SAFE_NO_PAD.encode(b), &mut url_refused),
                (generate_api_key(), &mut gen_refused),
            ] {
                if check_api_key(&k).is_err() {
                    refused.push(k);
                }
            }
        }
        println!(
            "refused of 2000: hex {hex_refused:?}, base64 {b64_refused:?}, base64url {url_refused:?}, generated {gen_refused:?}"
        );
        // At most 1 in 1,000 of any kind.
        for r in [&hex_refused, &b64_refused, &url_refused, &gen_refused] {
            assert!(r.len() <= 2, "{r:?}");
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
        let hex64 = "69dec51ab72347da71ba17cbe450634b2fe32d4a902bdede5b819e2a36c95be5";
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
        assert!(random_key_strength("hR7!mZq2@Wx9#vLc4%").is_none());
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
