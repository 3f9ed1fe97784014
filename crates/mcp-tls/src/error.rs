//! Errors: [`ConfigError`] for configuration that breaks a rule, [`TlsError`] for files
//! that cannot be used.

use std::path::PathBuf;

/// A configuration value that breaks a rule. Names the key (as in the gateway's
/// configuration file, e.g. `server.tls.minVersion`) and the rule; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {rule}")]
pub struct ConfigError {
    /// The configuration key, e.g. `server.tls.minVersion`.
    pub key: &'static str,
    /// The rule the value breaks.
    pub rule: String,
}

impl ConfigError {
    pub(crate) fn new(key: &'static str, rule: impl Into<String>) -> Self {
        Self {
            key,
            rule: rule.into(),
        }
    }
}

/// Why a TLS configuration could not be built or reloaded.
///
/// Paths are named; file contents (private keys above all) never appear.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The configuration breaks a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configured file does not exist.
    #[error("{key}: file not found: {}", path.display())]
    MissingFile {
        /// The configuration key that names the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A configured file exists but could not be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Io {
        /// The configuration key that names the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid PEM, or holds no item of the expected kind.
    #[error("{key}: {} is not usable PEM: {reason}", path.display())]
    InvalidPem {
        /// The configuration key that names the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong (never file contents).
        reason: String,
    },
    /// A certificate (or CRL) could not be parsed or used.
    #[error("{key}: invalid certificate in {}: {reason}", path.display())]
    InvalidCertificate {
        /// The configuration key that names the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "server.tls.keyFile: the private key in {} does not match the certificate in {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// The private key could not be loaded (unsupported algorithm or malformed key).
    #[error("server.tls.keyFile: unusable private key in {}: {reason}", path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never key material).
        reason: String,
    },
    /// The certificate has expired.
    #[error("server.tls.certFile: the certificate in {} expired at {not_after}", path.display())]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// When it expired (RFC 3339).
        not_after: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the CA bundle and CRLs.
    #[error("server.tls.caFile: cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The file watcher could not be started.
    #[error("cannot watch {}: {reason}", path.display())]
    Watch {
        /// The directory that could not be watched.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// ACME failed.
    #[cfg(feature = "acme")]
    #[error("ACME: {0}")]
    Acme(String),
}
