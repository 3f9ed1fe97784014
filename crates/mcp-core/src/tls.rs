//! Connection facts from TLS: [`TlsInfo`] and the verified client certificate
//! [`ClientCertIdentity`].
//!
//! They are defined here, not in `mcp-tls`, so that any accept loop can provide them and
//! any layer can read them (HSTS only over TLS, client-certificate authentication) without
//! the crates depending on each other. `mcp-tls` fills them in per connection and puts them
//! in every request's extensions.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// Facts about the TLS connection a request arrived on. Its presence in the request
/// extensions means the connection is TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The negotiated protocol version (`"TLSv1.3"`, `"TLSv1.2"`).
    pub protocol: Option<&'static str>,
    /// The negotiated ALPN protocol (`"h2"`, `"http/1.1"`).
    pub alpn: Option<String>,
    /// The SNI server name the client asked for.
    pub server_name: Option<String>,
    /// The verified client certificate, under mutual TLS.
    pub client: Option<Arc<ClientCertIdentity>>,
}

/// The identity in a client certificate that the TLS handshake verified against the
/// configured CA bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCertIdentity {
    /// The subject's common name, when present.
    pub common_name: Option<String>,
    /// The full subject distinguished name (RFC 4514 form).
    pub subject: String,
    /// The issuer distinguished name (RFC 4514 form).
    pub issuer: String,
    /// DNS names from the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// URIs from the subject alternative name extension (SPIFFE IDs among them).
    pub uris: Vec<String>,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER certificate.
    pub fingerprint_sha256: [u8; 32],
    /// The DER certificate (public data).
    pub der: Bytes,
}

impl fmt::Debug for ClientCertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertIdentity")
            .field("common_name", &self.common_name)
            .field("subject", &self.subject)
            .field("dns_names", &self.dns_names)
            .field("uris", &self.uris)
            .field("fingerprint_sha256", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

impl ClientCertIdentity {
    /// The first `spiffe://` URI SAN, if any.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|u| u.len() > 9 && u[..9].eq_ignore_ascii_case("spiffe://"))
    }

    /// The SHA-256 fingerprint as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(64);
        for b in self.fingerprint_sha256 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_and_fingerprint() {
        let id = ClientCertIdentity {
            common_name: Some("svc".into()),
            subject: "CN=svc".into(),
            issuer: "CN=ca".into(),
            dns_names: vec![],
            uris: vec!["https://x".into(), "SPIFFE://td/ns/a".into()],
            serial: "01".into(),
            fingerprint_sha256: [0xab; 32],
            der: Bytes::new(),
        };
        assert_eq!(id.spiffe_id(), Some("SPIFFE://td/ns/a"));
        assert_eq!(id.fingerprint_hex(), "ab".repeat(32));
    }
}
