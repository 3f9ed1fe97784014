//! [`ConfigError`]: an invalid configuration, naming the key and the rule, never a secret.

use crate::key_policy::KeyPolicyViolation;

/// An invalid configuration, found when a builder's `build()` runs.
///
/// The message names the configuration key (`auth.apiKeys[1].key`, `auth.jwt.issuers[0]`)
/// and the rule that failed. It never contains a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value breaks a rule.
    #[error("{key}: {rule}")]
    Invalid {
        /// The configuration key.
        key: String,
        /// The rule that failed.
        rule: String,
    },
    /// An API key breaks the key policy.
    #[error("{key}: API key policy: {violation}")]
    WeakApiKey {
        /// The configuration key.
        key: String,
        /// The rule that failed.
        violation: KeyPolicyViolation,
    },
    /// A file could not be read.
    #[error("{key}: cannot read {path}: {source}")]
    Io {
        /// The configuration key.
        key: String,
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// A value at `key` breaks `rule`.
    pub fn invalid(key: impl Into<String>, rule: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            rule: rule.into(),
        }
    }

    /// The configuration key the error is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Invalid { key, .. } | Self::WeakApiKey { key, .. } | Self::Io { key, .. } => key,
        }
    }
}
