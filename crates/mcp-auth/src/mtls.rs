//! Client certificates: the identity the TLS handshake verified, as a principal.
//!
//! The TLS accept loop (`mcp-tls`, or any other) puts a [`mcp_core::TlsInfo`] in every
//! request's extensions; under mutual TLS its `client` holds the verified
//! [`mcp_core::ClientCertIdentity`]. This authenticator maps it to a [`Principal`]
//! whose qualified id is `mtls:<identity>`. The identity is, by [`IdentityField`]:
//!
//! 1. `spiffe_id_or_common_name` (default): the SPIFFE ID, else the common name;
//! 2. `spiffe_id`: the SPIFFE ID only; `common_name`: the subject CN only;
//!    `dns_name`: the first DNS name SAN; `subject`: the full subject DN.
//!
//! The SPIFFE ID comes only from a URI SAN with the `spiffe` scheme (any case), which
//! must be the only one and follow the SPIFFE ID syntax, or the certificate is refused
//! ([`ClientCertIdentity::spiffe_id`]). A common name or DNS name that looks like a SPIFFE
//! ID is never read as one; under `spiffe_id_or_common_name`, a certificate without a
//! SPIFFE ID whose common name starts with `spiffe:` is refused, since its identity could
//! not be told from that SPIFFE ID's.
//!
//! The allow list (SHA-256 fingerprints, and [identities](ClientCertAuthenticatorBuilder::allow_san))
//! and the scopes by principal apply to that identity, the value that becomes the
//! principal, never to another name the certificate also carries.

use std::collections::{HashMap, HashSet};
use std::fmt;

use http::request::Parts;
use mcp_core::principal::split_qualified;
use mcp_core::tls::is_spiffe_uri;
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
    /// The SPIFFE ID (the one `spiffe://` URI SAN), else the common name (refused when it
    /// looks like a SPIFFE ID).
    #[default]
    SpiffeIdOrCommonName,
    /// The SPIFFE ID only (the one `spiffe://` URI SAN).
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

    /// Allows certificates whose identity (the value the [`IdentityField`] chooses, which
    /// becomes the principal: a SPIFFE ID, a common name, the first DNS name) is `identity`.
    /// Another SAN the certificate carries does not count. With any allow entry
    /// configured, certificates matching none are refused.
    pub fn allow_san(mut self, san: impl Into<String>) -> Self {
        self.sans.push(san.into());
        self
    }

    /// The scopes of one certificate identity: `spiffe://td/x`, or qualified
    /// `mtls:spiffe://td/x` (any other method's prefix is refused at build).
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
        let mut scopes = HashMap::new();
        for (key, s) in self.scopes {
            let id = match split_qualified(&key) {
                None => key.clone(),
                Some((AuthMethod::ClientCertificate, rest)) => rest.to_owned(),
                Some(_) => {
                    return Err(ConfigError::invalid(
                        format!("auth.mtls.scopes.{key}"),
                        "names another authentication method's principal; these scopes \
                         are for client certificates (write the identity, or mtls:<identity>)",
                    ));
                }
            };
            scopes.insert(id, s);
        }
        Ok(ClientCertAuthenticator {
            identity: self.identity,
            fingerprints,
            sans: self.sans.into_iter().collect(),
            scopes,
            default_scopes: self.default_scopes,
        })
    }
}

impl ClientCertAuthenticator {
    /// A builder.
    pub fn builder() -> ClientCertAuthenticatorBuilder {
        ClientCertAuthenticatorBuilder::default()
    }

    /// The identity the configured [`IdentityField`] chooses, or why there is none.
    fn identity_of(&self, cert: &ClientCertIdentity) -> Result<String, String> {
        let spiffe = || cert.spiffe_id().map_err(|e| e.to_string());
        let id = match self.identity {
            IdentityField::SpiffeIdOrCommonName => match spiffe()? {
                Some(s) => Some(s),
                None => match &cert.common_name {
                    Some(cn) if is_spiffe_uri(cn.trim()) => {
                        return Err("has no SPIFFE ID (URI SAN) but a common name that looks \
                                    like one"
                            .into());
                    }
                    cn => cn.clone(),
                },
            },
            IdentityField::SpiffeId => spiffe()?,
            IdentityField::CommonName => cert.common_name.clone(),
            IdentityField::DnsName => cert.dns_names.first().cloned(),
            IdentityField::Subject => Some(cert.subject.clone()),
        };
        id.filter(|s| !s.is_empty())
            .ok_or_else(|| format!("has no {:?}", self.identity))
    }

    /// Maps a verified certificate identity to a principal (see the
    /// [module documentation](self)).
    pub fn check(&self, cert: &ClientCertIdentity) -> Outcome {
        let scheme = Scheme::ClientCertificate;
        let id = match self.identity_of(cert) {
            Ok(id) => id,
            Err(why) => {
                return Outcome::Failed(Failure::invalid(
                    scheme,
                    format!("client certificate {} {why}", cert.fingerprint_hex()),
                ));
            }
        };
        let restricted = !self.fingerprints.is_empty() || !self.sans.is_empty();
        if restricted
            && !self.fingerprints.contains(&cert.fingerprint_sha256)
            && !self.sans.contains(&id)
        {
            return Outcome::Failed(Failure::invalid(
                scheme,
                format!(
                    "client certificate {} not on the allow list",
                    cert.fingerprint_hex()
                ),
            ));
        }
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
        assert_eq!(p.qualified_id(), "mtls:cn");
        // A common name spelled as a SPIFFE ID is refused; two SPIFFE IDs are refused.
        for cn in ["spiffe://td/a", "SPIFFE://td/a", " spiffe://td/a"] {
            assert!(
                matches!(a.check(&cert(Some(cn), &[])), Outcome::Failed(_)),
                "{cn}"
            );
        }
        assert!(matches!(
            a.check(&cert(Some("cn"), &["spiffe://td/a", "spiffe://td/b"])),
            Outcome::Failed(_)
        ));
        // Under common_name, such a CN is just a CN.
        let c = ClientCertAuthenticator::builder()
            .identity(IdentityField::CommonName)
            .build()
            .unwrap();
        let Outcome::Authenticated(p) = c.check(&cert(Some("spiffe://td/a"), &[])) else {
            panic!()
        };
        assert_eq!(p.qualified_id(), "mtls:spiffe://td/a");
        // Scopes keys: bare or mtls:-qualified; another method's prefix is refused.
        let q = ClientCertAuthenticator::builder()
            .scopes_for("mtls:spiffe://td/a", ["y"])
            .build()
            .unwrap();
        let Outcome::Authenticated(p) = q.check(&cert(Some("cn"), &["spiffe://td/a"])) else {
            panic!()
        };
        assert!(p.has_scope("y"));
        let e = ClientCertAuthenticator::builder()
            .scopes_for("apikey:ops", ["y"])
            .build()
            .unwrap_err();
        assert_eq!(e.key(), "auth.mtls.scopes.apikey:ops");
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
        // The allow list checks the identity, not any SAN: the allowed DNS name beside
        // CN=admin does not let `admin` in.
        let d = ClientCertAuthenticator::builder()
            .allow_san("svc.local")
            .build()
            .unwrap();
        assert!(matches!(
            d.check(&cert(Some("admin"), &[])),
            Outcome::Failed(_)
        ));
        let dns = ClientCertAuthenticator::builder()
            .identity(IdentityField::DnsName)
            .allow_san("svc.local")
            .build()
            .unwrap();
        assert!(matches!(
            dns.check(&cert(Some("admin"), &[])),
            Outcome::Authenticated(p) if p.id() == "svc.local"
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
