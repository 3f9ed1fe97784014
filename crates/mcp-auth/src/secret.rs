//! [`SecretString`]: a credential that never shows in Debug output, and the hashing and
//! constant-time helpers the authenticators share.

use std::fmt;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A credential (API key, token, password, shared secret) held in memory.
///
/// Its `Debug` and `Display` print `***`; it has no `Serialize`, so it cannot leak into a
/// serialized configuration dump. Read it with [`SecretString::expose`] only where the value
/// is needed (hashing it at build time, handing a freshly generated key to its owner).
///
/// ```
/// use mcp_auth::SecretString;
/// let s = SecretString::new("Abc123!@#Xyz789!@#");
/// assert_eq!(format!("{s:?}"), "SecretString(***)");
/// assert_eq!(s.expose(), "Abc123!@#Xyz789!@#");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value of the environment variable `name`, if set and not empty (the seeds'
    /// `MCP_AUTH_API_KEY` style of configuration).
    pub fn from_env(name: &str) -> Option<Self> {
        std::env::var(name).ok().filter(|v| !v.is_empty()).map(Self)
    }

    /// The value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// A secret of raw bytes (an HMAC key from a KMS, say), held in memory.
///
/// Like [`SecretString`], its `Debug` prints `***` and it has no `Serialize`. Made from
/// bytes (`Vec<u8>`, `&[u8]`, `[u8; N]`) or from text (`&str`, `String`, `SecretString`:
/// its UTF-8 bytes).
///
/// ```
/// use mcp_auth::SecretBytes;
/// let s = SecretBytes::from(vec![0xff, 0x00, 0x7f]);
/// assert_eq!(format!("{s:?}"), "SecretBytes(***)");
/// assert_eq!(s.expose(), &[0xff, 0x00, 0x7f]);
/// assert_eq!(SecretBytes::from("abc").expose(), b"abc");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps a value.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(value.into())
    }

    /// The bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(***)")
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<&[u8]> for SecretBytes {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

impl<const N: usize> From<[u8; N]> for SecretBytes {
    fn from(v: [u8; N]) -> Self {
        Self(v.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for SecretBytes {
    fn from(v: &[u8; N]) -> Self {
        Self(v.to_vec())
    }
}

impl From<String> for SecretBytes {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl From<&str> for SecretBytes {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<SecretString> for SecretBytes {
    fn from(s: SecretString) -> Self {
        Self(s.0.into_bytes())
    }
}

impl From<&SecretString> for SecretBytes {
    fn from(s: &SecretString) -> Self {
        Self(s.0.as_bytes().to_vec())
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality of two digests.
pub(crate) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Parses a lowercase or uppercase hex SHA-256 digest (64 hex digits).
pub(crate) fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = SecretString::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        let d: SecretString = serde_json::from_str("\"hunter2-very-secret\"").unwrap();
        assert_eq!(d, s);
    }

    #[test]
    fn hex_digest_round_trip() {
        let d = sha256(b"abc");
        assert_eq!(parse_sha256_hex(&hex::encode(d)), Some(d));
        assert_eq!(parse_sha256_hex("zz"), None);
        assert!(ct_eq(&d, &d));
        assert!(!ct_eq(&d, &sha256(b"abd")));
    }
}
