//! The client identity read from a verified certificate, and the [`TlsInfo`] of a
//! connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mcp_core::{ClientCertIdentity, TlsInfo};
use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;
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

/// When the client certificate chain of `conn` stops being valid: the first moment past
/// the earliest `notAfter` of the chain (X.509 validity includes the `notAfter` second).
/// `None` when the client presented no certificate.
///
/// Counted: the end-entity certificate, and each other certificate the client presented
/// that is valid now (the certificates of the path the handshake verified are all valid
/// now; one the client sent beside them, such as an expired cross-signature, is not part
/// of it and is not counted). An end-entity certificate that does not parse or is not
/// valid now gives a moment already past.
///
/// [`Server`](crate::Server) closes a connection at this moment and no longer attaches
/// the identity to its requests from then on; an accept loop of your own should do the
/// same.
pub fn client_cert_expires_at(conn: &ServerConnection) -> Option<SystemTime> {
    chain_expires_at(conn.peer_certificates()?, SystemTime::now())
}

/// [`client_cert_expires_at`] for a chain (end-entity first) at `now`.
pub(crate) fn chain_expires_at(
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Option<SystemTime> {
    let (leaf, rest) = chain.split_first()?;
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    // (notBefore, notAfter) in seconds since the epoch.
    let validity = |der: &CertificateDer<'_>| {
        X509Certificate::from_der(der.as_ref()).ok().map(|(_, c)| {
            let v = c.validity();
            (v.not_before.timestamp(), v.not_after.timestamp())
        })
    };
    let at = |unix: i64| {
        let secs = Duration::from_secs(u64::try_from(unix.saturating_add(1)).unwrap_or(0));
        UNIX_EPOCH.checked_add(secs).unwrap_or(UNIX_EPOCH)
    };
    let mut end = match validity(leaf) {
        Some((from, until)) if from <= now_unix && now_unix <= until => until,
        _ => return Some(UNIX_EPOCH),
    };
    for (from, until) in rest.iter().filter_map(validity) {
        if from <= now_unix && now_unix <= until {
            end = end.min(until);
        }
    }
    Some(at(end))
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

    #[test]
    fn a_chain_ends_with_its_earliest_valid_certificate() {
        let at = |y, m, d| rcgen::date_time_ymd(y, m, d);
        let cert = |from, until| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.not_before = from;
            p.not_after = until;
            p.self_signed(&KeyPair::generate().unwrap())
                .unwrap()
                .der()
                .clone()
        };
        let unix =
            |t: time::OffsetDateTime| UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64);
        let now = unix(at(2030, 6, 1));
        let leaf = cert(at(2030, 1, 1), at(2031, 1, 1));
        let inter = cert(at(2029, 1, 1), at(2030, 7, 1));
        let expired_extra = cert(at(2020, 1, 1), at(2021, 1, 1));
        let one_second = Duration::from_secs(1);
        assert_eq!(chain_expires_at(&[], now), None);
        assert_eq!(
            chain_expires_at(std::slice::from_ref(&leaf), now),
            Some(unix(at(2031, 1, 1)) + one_second)
        );
        // The intermediate ends first; an expired certificate beside them is no part of
        // the verified path and is not counted.
        assert_eq!(
            chain_expires_at(&[leaf.clone(), inter.clone(), expired_extra.clone()], now),
            Some(unix(at(2030, 7, 1)) + one_second)
        );
        // An end-entity certificate that is not valid now: already past.
        assert_eq!(
            chain_expires_at(&[leaf.clone(), inter], unix(at(2031, 1, 2))),
            Some(UNIX_EPOCH)
        );
        assert_eq!(chain_expires_at(&[expired_extra], now), Some(UNIX_EPOCH));
        assert_eq!(
            chain_expires_at(&[CertificateDer::from(vec![1u8, 2, 3])], now),
            Some(UNIX_EPOCH)
        );
    }

    proptest! {
        #[test]
        fn garbage_der_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = identity_from_der(&bytes);
        }
    }
}
