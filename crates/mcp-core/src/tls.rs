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

/// The longest SPIFFE ID accepted, in bytes (the SPIFFE ID specification's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a certificate's URI SANs give no SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// More than one URI SAN has the `spiffe` scheme (an X.509-SVID has exactly one).
    Several,
    /// The `spiffe` URI SAN breaks the SPIFFE ID syntax; the rule broken.
    Invalid(&'static str),
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Several => f.write_str("more than one SPIFFE ID (spiffe:// URI SAN)"),
            Self::Invalid(rule) => write!(f, "the spiffe:// URI SAN is no valid SPIFFE ID: {rule}"),
        }
    }
}

impl std::error::Error for SpiffeIdError {}

/// Whether a URI's scheme is `spiffe`, in any case (`SPIFFE://...` too).
pub fn is_spiffe_uri(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("spiffe"))
}

/// Checks a URI with the `spiffe` scheme against the SPIFFE ID syntax and returns it with
/// the scheme in lowercase: `spiffe://<trust domain>/<path>`, the trust domain made of
/// lowercase letters, digits, `.`, `-` and `_` (no port, no user info), the path of one or
/// more non-empty segments of letters, digits, `.`, `-` and `_` other than `.` and `..`,
/// no trailing `/`, no query, no fragment, no percent-encoding, at most
/// [`MAX_SPIFFE_ID_LEN`] bytes. A trust domain without a path names the trust domain, not
/// a workload, and is refused.
pub fn parse_spiffe_id(uri: &str) -> Result<String, SpiffeIdError> {
    use SpiffeIdError::Invalid;
    if uri.len() > MAX_SPIFFE_ID_LEN {
        return Err(Invalid("longer than 2048 bytes"));
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(Invalid("no scheme"));
    };
    if !scheme.eq_ignore_ascii_case("spiffe") {
        return Err(Invalid("the scheme is not spiffe"));
    }
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(Invalid("no //authority"));
    };
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if td.is_empty() {
        return Err(Invalid("empty trust domain"));
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(Invalid(
            "the trust domain holds a character other than a-z, 0-9, '.', '-', '_'",
        ));
    }
    if path.is_empty() {
        return Err(Invalid("no path (a trust domain, not a workload)"));
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(Invalid("an empty path segment (// or a trailing /)"));
        }
        if seg == "." || seg == ".." {
            return Err(Invalid("a . or .. path segment"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(Invalid(
                "the path holds a character other than letters, digits, '.', '-', '_'",
            ));
        }
    }
    Ok(format!("spiffe://{rest}"))
}

impl ClientCertIdentity {
    /// The SPIFFE ID: the one URI SAN with the `spiffe` scheme (in any case), checked
    /// against the SPIFFE ID syntax ([`parse_spiffe_id`]) and returned with a lowercase
    /// scheme. `Ok(None)` when no URI SAN has that scheme; an error when several do (the
    /// X.509-SVID specification allows exactly one) or when it is malformed. Only URI SANs
    /// are read: a common name or DNS name that looks like a SPIFFE ID is not one.
    pub fn spiffe_id(&self) -> Result<Option<String>, SpiffeIdError> {
        let mut found = self.uris.iter().filter(|u| is_spiffe_uri(u));
        let Some(first) = found.next() else {
            return Ok(None);
        };
        if found.next().is_some() {
            return Err(SpiffeIdError::Several);
        }
        parse_spiffe_id(first).map(Some)
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
        assert_eq!(id.spiffe_id(), Ok(Some("spiffe://td/ns/a".into())));
        assert_eq!(id.fingerprint_hex(), "ab".repeat(32));
        let with = |uris: &[&str]| ClientCertIdentity {
            uris: uris.iter().map(|u| u.to_string()).collect(),
            ..id.clone()
        };
        assert_eq!(with(&[]).spiffe_id(), Ok(None));
        assert_eq!(with(&["https://td/a"]).spiffe_id(), Ok(None));
        assert_eq!(
            with(&["spiffe://td/a", "Spiffe://td/b"]).spiffe_id(),
            Err(SpiffeIdError::Several)
        );
        assert_eq!(
            with(&["spiffe://td/a", "spiffe://td/a"]).spiffe_id(),
            Err(SpiffeIdError::Several)
        );
        for bad in [
            "spiffe://TD/a",
            "spiffe://td/a/",
            "spiffe://td//a",
            "spiffe://td/./a",
            "spiffe://td/a/..",
            "spiffe://td/a?q",
            "spiffe://td/a#f",
            "spiffe://td/a%41",
            "spiffe://u@td/a",
            "spiffe://td:443/a",
            "spiffe:///a",
            "spiffe://td",
            "spiffe:td/a",
            "spiffe:",
        ] {
            assert!(
                matches!(with(&[bad]).spiffe_id(), Err(SpiffeIdError::Invalid(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_spiffe_id("spiffe://example.org/ns/prod/sa/Admin-1_x.y").as_deref(),
            Ok("spiffe://example.org/ns/prod/sa/Admin-1_x.y")
        );
        assert!(parse_spiffe_id(&format!("spiffe://td/{}", "a".repeat(2048))).is_err());
    }
}
