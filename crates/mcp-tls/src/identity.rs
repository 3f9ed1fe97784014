//! The client identity read from a verified certificate, and the [`TlsInfo`] of a
//! connection.

use std::sync::Arc;

use bytes::Bytes;
use mcp_core::{ClientCertIdentity, TlsInfo};
use rustls::ServerConnection;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// At most this many DNS names and as many URIs are kept from a certificate. URIs with the
/// `spiffe` scheme are kept apart (two at most, enough to refuse a certificate with more
/// than one), so that other URIs cannot push a second SPIFFE ID out of sight.
pub const MAX_SAN_ENTRIES: usize = 64;

/// Reads the identity from a DER certificate (subject, CN, issuer, SAN DNS names and
/// URIs, serial, SHA-256 fingerprint). `None` when the DER does not parse.
///
/// Only call this for certificates the handshake verified: the accept loop does.
pub fn identity_from_der(der: &[u8]) -> Option<ClientCertIdentity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut dns_names = Vec::new();
    let mut uris = Vec::new();
    let (mut spiffe, mut other) = (0, 0);
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) if dns_names.len() < MAX_SAN_ENTRIES => {
                    dns_names.push((*d).to_owned())
                }
                GeneralName::URI(u) if mcp_core::tls::is_spiffe_uri(u) && spiffe < 2 => {
                    spiffe += 1;
                    uris.push((*u).to_owned());
                }
                // A third SPIFFE URI adds nothing: two already refuse the certificate.
                GeneralName::URI(u) if mcp_core::tls::is_spiffe_uri(u) => {}
                GeneralName::URI(u) if other < MAX_SAN_ENTRIES => {
                    other += 1;
                    uris.push((*u).to_owned());
                }
                _ => {}
            }
        }
    }
    let serial = hex_lower(cert.raw_serial());
    let fingerprint_sha256: [u8; 32] = Sha256::digest(der).into();
    Some(ClientCertIdentity {
        common_name,
        subject: subject.to_string(),
        issuer: cert.issuer().to_string(),
        dns_names,
        uris,
        serial,
        fingerprint_sha256,
        der: Bytes::copy_from_slice(der),
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// The [`TlsInfo`] of an established server connection: protocol, ALPN, SNI and the
/// verified client identity.
pub fn tls_info(conn: &ServerConnection) -> TlsInfo {
    let protocol = conn.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    });
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let client = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| identity_from_der(der.as_ref()))
        .map(Arc::new);
    TlsInfo {
        protocol,
        alpn,
        server_name: conn.server_name().map(str::to_owned),
        client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    #[test]
    fn reads_names_spiffe_and_fingerprint() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["svc.example.com".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "svc-a");
        p.distinguished_name.push(DnType::OrganizationName, "Acme");
        p.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/ns/prod/sa/svc-a".try_into().unwrap(),
        ));
        p.serial_number = Some(vec![0x01, 0xab].into());
        let cert = p.self_signed(&key).unwrap();
        let id = identity_from_der(cert.der()).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("svc-a"));
        assert!(id.subject.contains("CN=svc-a"), "{}", id.subject);
        assert!(id.subject.contains("O=Acme"));
        assert_eq!(id.issuer, id.subject);
        assert_eq!(id.dns_names, vec!["svc.example.com"]);
        assert_eq!(
            id.spiffe_id(),
            Ok(Some("spiffe://example.org/ns/prod/sa/svc-a".to_owned()))
        );
        assert_eq!(id.serial, "01ab");
        let fp: [u8; 32] = Sha256::digest(cert.der()).into();
        assert_eq!(id.fingerprint_sha256, fp);
        assert_eq!(&id.der[..], cert.der().as_ref());
    }

    #[test]
    fn a_second_spiffe_id_is_kept_behind_many_other_uris() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "x");
        p.subject_alt_names
            .push(SanType::URI("spiffe://td/admin".try_into().unwrap()));
        for i in 0..(MAX_SAN_ENTRIES + 5) {
            p.subject_alt_names
                .push(SanType::URI(format!("https://td/{i}").try_into().unwrap()));
        }
        for _ in 0..3 {
            p.subject_alt_names
                .push(SanType::URI("spiffe://td/intern".try_into().unwrap()));
        }
        let cert = p.self_signed(&key).unwrap();
        let id = identity_from_der(cert.der()).unwrap();
        assert_eq!(id.uris.len(), MAX_SAN_ENTRIES + 2);
        assert_eq!(id.spiffe_id(), Err(mcp_core::SpiffeIdError::Several));
    }

    proptest! {
        #[test]
        fn garbage_der_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = identity_from_der(&bytes);
        }
    }
}
