//! Client certificates: the identity the TLS handshake verified, as a principal.
//!
//! The TLS accept loop (`mcp-tls`, or any other) puts a [`mcp_core::TlsInfo`] in every
//! request's extensions; under mutual TLS its `client` holds the verified
//! [`mcp_core::ClientCertIdentity`]. This authenticator maps it to a [`Principal`]:
//! the id is the SPIFFE ID, else the common name (configurable), optionally only for
//! certificates on an allow list of SHA-256 fingerprints or SANs, with scopes by principal.

use std::collections::{HashMap, HashSet};
use std::fmt;

use http::request::Parts;
use mcp_core::{AuthMethod, ClientCertIdentity, Principal, TlsInfo};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::authenticator::{AuthFuture, Authenticator, Failure, Outcome, Scheme};
use crate::error::ConfigError;
use crate::secret::parse_sha256_hex;

/// Which part of the certificate names the principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityField {
    /// The SPIFFE ID (`spiffe://` URI SAN), else the common name.
    #[default]
    SpiffeIdOrCommonName,
    /// The SPIFFE ID only.
    SpiffeId,
    /// The subject common name only.
    CommonName,
    /// The first DNS name SAN.
    DnsName,
    /// The full subject DN.
    Subject,
}

/// Authenticates TLS client certificates.
///
/// ```
/// use mcp_auth::{ClientCertAuthenticator, mtls::IdentityField};
/// let mtls = ClientCertAuthenticator::builder()
///     .identity(IdentityField::SpiffeIdOrCommonName)
///     .allow_san("spiffe://example.org/ns/prod/sa/agent")
///     .scopes_for("spiffe://example.org/ns/prod/sa/agent", ["tools:call"])
///     .build()
///     .unwrap();
/// # let _ = mtls;
/// ```
#[derive(Clone)]
pub struct ClientCertAuthenticator {
    identity: IdentityField,
    fingerprints: HashSet<[u8; 32]>,
    sans: HashSet<String>,
    scopes: HashMap<String, Vec<String>>,
    default_scopes: Vec<String>,
}

impl fmt::Debug for ClientCertAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertAuthenticator")
            .field("identity", &self.identity)
            .field("fingerprints", &self.fingerprints.len())
            .field("sans", &self.sans)
            .field("scopes", &self.scopes)
            .field("default_scopes", &self.default_scopes)
            .finish()
    }
}

/// Builder of [`ClientCertAuthenticator`].
#[derive(Debug, Default)]
pub struct ClientCertAuthenticatorBuilder {
    identity: IdentityField,
    fingerprints: Vec<String>,
    sans: Vec<String>,
    scopes: HashMap<String, Vec<String>>,
    default_scopes: Vec<String>,
}

impl ClientCertAuthenticatorBuilder {
    /// Which field names the principal (default: SPIFFE ID, else CN).
    pub fn identity(mut self, field: IdentityField) -> Self {
        self.identity = field;
        self
    }

    /// Allows a certificate by SHA-256 fingerprint (hex, colons allowed). With any allow
    /// entry configured, certificates matching none are refused.
    pub fn allow_fingerprint(mut self, hex: impl Into<String>) -> Self {
        self.fingerprints.push(hex.into());
        self
    }

    /// Allows certificates carrying this DNS name or URI SAN (a SPIFFE ID, say).
    pub fn allow_san(mut self, san: impl Into<String>) -> Self {
        self.sans.push(san.into());
        self
    }

    /// The scopes of one principal id.
    pub fn scopes_for<I, T>(mut self, principal: impl Into<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.scopes.insert(
            principal.into(),
            scopes.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// The scopes of principals without their own entry.
    pub fn default_scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.default_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<ClientCertAuthenticator, ConfigError> {
        let mut fingerprints = HashSet::new();
        for (i, f) in self.fingerprints.iter().enumerate() {
            let clean: String = f.chars().filter(|c| *c != ':').collect();
            let d = parse_sha256_hex(&clean).ok_or_else(|| {
                ConfigError::invalid(
                    format!("auth.mtls.allowFingerprints[{i}]"),
                    "must be a SHA-256 fingerprint (64 hex digits)",
                )
            })?;
            fingerprints.insert(d);
        }
        Ok(ClientCertAuthenticator {
            identity: self.identity,
            fingerprints,
            sans: self.sans.into_iter().collect(),
            scopes: self.scopes,
            default_scopes: self.default_scopes,
        })
    }
}

impl ClientCertAuthenticator {
    /// A builder.
    pub fn builder() -> ClientCertAuthenticatorBuilder {
        ClientCertAuthenticatorBuilder::default()
    }

    /// Maps a verified certificate identity to a principal.
    pub fn check(&self, cert: &ClientCertIdentity) -> Outcome {
        let scheme = Scheme::ClientCertificate;
        let restricted = !self.fingerprints.is_empty() || !self.sans.is_empty();
        if restricted {
            let allowed = self.fingerprints.contains(&cert.fingerprint_sha256)
                || cert
                    .dns_names
                    .iter()
                    .chain(cert.uris.iter())
                    .any(|s| self.sans.contains(s));
            if !allowed {
                return Outcome::Failed(Failure::invalid(
                    scheme,
                    format!(
                        "client certificate {} not on the allow list",
                        cert.fingerprint_hex()
                    ),
                ));
            }
        }
        let id = match self.identity {
            IdentityField::SpiffeIdOrCommonName => cert
                .spiffe_id()
                .map(str::to_owned)
                .or_else(|| cert.common_name.clone()),
            IdentityField::SpiffeId => cert.spiffe_id().map(str::to_owned),
            IdentityField::CommonName => cert.common_name.clone(),
            IdentityField::DnsName => cert.dns_names.first().cloned(),
            IdentityField::Subject => Some(cert.subject.clone()).filter(|s| !s.is_empty()),
        };
        let Some(id) = id.filter(|s| !s.is_empty()) else {
            return Outcome::Failed(Failure::invalid(
                scheme,
                format!("client certificate has no {:?}", self.identity),
            ));
        };
        let scopes = self.scopes.get(&id).unwrap_or(&self.default_scopes).clone();
        let mut claims = Map::new();
        claims.insert("subject".into(), Value::String(cert.subject.clone()));
        claims.insert("issuer".into(), Value::String(cert.issuer.clone()));
        claims.insert("serial".into(), Value::String(cert.serial.clone()));
        claims.insert(
            "sans".into(),
            Value::Array(
                cert.dns_names
                    .iter()
                    .chain(cert.uris.iter())
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ),
        );
        Outcome::Authenticated(
            Principal::new(id, AuthMethod::ClientCertificate)
                .with_credential_id(cert.fingerprint_hex())
                .with_scopes(scopes)
                .with_claims(claims),
        )
    }
}

impl Authenticator for ClientCertAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::ClientCertificate
    }

    fn authenticate<'a>(&'a self, req: &'a Parts) -> AuthFuture<'a> {
        AuthFuture::Ready(
            match req
                .extensions
                .get::<TlsInfo>()
                .and_then(|t| t.client.as_deref())
            {
                Some(cert) => self.check(cert),
                None => Outcome::NoCredential,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, uris: &[&str]) -> ClientCertIdentity {
        ClientCertIdentity {
            common_name: cn.map(str::to_owned),
            subject: cn.map(|c| format!("CN={c}")).unwrap_or_default(),
            issuer: "CN=ca".into(),
            dns_names: vec!["svc.local".into()],
            uris: uris.iter().map(|s| s.to_string()).collect(),
            serial: "01".into(),
            fingerprint_sha256: [7; 32],
            der: bytes::Bytes::new(),
        }
    }

    #[test]
    fn identity_and_scopes() {
        let a = ClientCertAuthenticator::builder()
            .scopes_for("spiffe://td/a", ["x"])
            .default_scopes(["d"])
            .build()
            .unwrap();
        let Outcome::Authenticated(p) = a.check(&cert(Some("cn"), &["spiffe://td/a"])) else {
            panic!()
        };
        assert_eq!(p.id(), "spiffe://td/a");
        assert!(p.has_scope("x"));
        let Outcome::Authenticated(p) = a.check(&cert(Some("cn"), &[])) else {
            panic!()
        };
        assert_eq!(p.id(), "cn");
        assert!(p.has_scope("d"));
        assert!(matches!(a.check(&cert(None, &[])), Outcome::Failed(_)));
    }

    #[test]
    fn allow_list() {
        let a = ClientCertAuthenticator::builder()
            .allow_san("spiffe://td/ok")
            .build()
            .unwrap();
        assert!(matches!(
            a.check(&cert(Some("x"), &["spiffe://td/ok"])),
            Outcome::Authenticated(_)
        ));
        assert!(matches!(
            a.check(&cert(Some("x"), &["spiffe://td/bad"])),
            Outcome::Failed(_)
        ));
        let b = ClientCertAuthenticator::builder()
            .allow_fingerprint(hex::encode([7u8; 32]))
            .build()
            .unwrap();
        assert!(matches!(
            b.check(&cert(Some("x"), &[])),
            Outcome::Authenticated(_)
        ));
        assert!(
            ClientCertAuthenticator::builder()
                .allow_fingerprint("zz")
                .build()
                .is_err()
        );
    }
}
