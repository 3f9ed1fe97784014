//! From PEM files to a rustls [`ServerConfig`].
//!
//! Protocol versions: TLS 1.2 and 1.3 only. Cipher suites: rustls's defaults with the
//! `aws-lc-rs` provider, all AEAD with forward secrecy:
//! TLS 1.3 `TLS13_AES_256_GCM_SHA384`, `TLS13_AES_128_GCM_SHA256`,
//! `TLS13_CHACHA20_POLY1305_SHA256`; TLS 1.2 `TLS_ECDHE_{ECDSA,RSA}_WITH_AES_256_GCM_SHA384`,
//! `..._AES_128_GCM_SHA256`, `..._CHACHA20_POLY1305_SHA256`. Key exchange X25519, P-256,
//! P-384, and the hybrid post-quantum X25519MLKEM768 for clients that offer it. No RSA
//! key exchange, no CBC, no RC4/3DES, no renegotiation, no compression. The server's
//! cipher order is preferred. ALPN `h2` then `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{ClientAuth, TlsConfig, TlsVersion};
use crate::error::TlsError;

/// The ALPN protocols offered, in preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider used everywhere in this crate: rustls's `aws-lc-rs` provider (the
/// default of rustls) with its default (safe) cipher suites and key exchange groups.
///
/// Every configuration this crate builds names it (`builder_with_provider`), so the
/// crate never depends on a process-level default. A program whose other libraries
/// build rustls configurations with `ClientConfig::builder()` (which reads the process
/// default, and panics when several providers are compiled in and none was installed)
/// can install this one at startup: `rustls::crypto::CryptoProvider::install_default(
/// std::sync::Arc::unwrap_or_clone(mcp_tls::provider()))`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The protocol versions between `min` and `max` (both validated to be 1.2 or 1.3).
pub(crate) fn protocol_versions(
    min: TlsVersion,
    max: TlsVersion,
) -> Vec<&'static SupportedProtocolVersion> {
    let mut v = Vec::with_capacity(2);
    if min <= TlsVersion::Tls13 && max >= TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 && max >= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// The raw bytes of every file a configuration uses, read once, so that a build sees a
/// consistent snapshot and a reload can tell whether anything changed.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub cert: (PathBuf, Vec<u8>),
    pub key: (PathBuf, Vec<u8>),
    pub ca: Option<(PathBuf, Vec<u8>)>,
    pub crls: Vec<(PathBuf, Vec<u8>)>,
}

impl Snapshot {
    /// Reads the files named by `cfg` (blocking file I/O).
    pub fn read(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let cert_path = cfg
            .cert_file
            .clone()
            .ok_or_else(|| crate::ConfigError::new("server.tls.certFile", "required"))?;
        let key_path = cfg
            .key_file
            .clone()
            .ok_or_else(|| crate::ConfigError::new("server.tls.keyFile", "required"))?;
        let cert = read_file("server.tls.certFile", &cert_path)?;
        let key = read_file("server.tls.keyFile", &key_path)?;
        let ca = match &cfg.ca_file {
            Some(p) => Some((p.clone(), read_file("server.tls.caFile", p)?)),
            None => None,
        };
        let mut crls = Vec::with_capacity(cfg.crl_files.len());
        for p in &cfg.crl_files {
            crls.push((p.clone(), read_file("server.tls.crlFiles", p)?));
        }
        Ok(Self {
            cert: (cert_path, cert),
            key: (key_path, key),
            ca,
            crls,
        })
    }

    /// SHA-256 over the server certificate and key files.
    pub fn identity_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [&self.cert.1, &self.key.1] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    /// SHA-256 over the CA bundle and CRLs (what client verification depends on).
    pub fn trust_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        if let Some((_, ca)) = &self.ca {
            h.update((ca.len() as u64).to_be_bytes());
            h.update(ca);
        }
        for (_, crl) in &self.crls {
            h.update((crl.len() as u64).to_be_bytes());
            h.update(crl);
        }
        h.finalize().into()
    }
}

pub(crate) fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TlsError::MissingFile {
                key,
                path: path.to_owned(),
            }
        } else {
            TlsError::Io {
                key,
                path: path.to_owned(),
                source: e,
            }
        }
    })
}

fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        E::IllegalSectionStart { .. } => "malformed BEGIN line".into(),
        E::Base64Decode(_) => "invalid base64 in a PEM section".into(),
        E::NoItemsFound => "no item of the expected kind".into(),
        E::SectionTooLarge => "PEM section too large".into(),
        _ => "unreadable PEM".into(),
    }
}

/// Parses a PEM certificate chain (end-entity first).
pub fn parse_cert_chain(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidPem {
            key,
            path: path.to_owned(),
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::InvalidPem {
            key,
            path: path.to_owned(),
            reason: "no CERTIFICATE section".into(),
        });
    }
    for c in &certs {
        X509Certificate::from_der(c.as_ref()).map_err(|e| TlsError::InvalidCertificate {
            key,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`). Errors never include key material.
pub fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::InvalidPem {
        key: "server.tls.keyFile",
        path: path.to_owned(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section".into()
            }
            other => pem_reason(&other),
        },
    })
}

/// Loads a certificate chain and its key into a [`CertifiedKey`], checking that the key
/// belongs to the certificate.
pub fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_cert_chain("server.tls.certFile", cert_path, cert_pem)?;
    let key = parse_private_key(key_path, key_pem)?;
    let signing =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::InvalidKey {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
            })
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => Err(TlsError::InvalidCertificate {
            key: "server.tls.certFile",
            path: cert_path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// How close a certificate is to the end of its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiryStatus {
    /// Valid for longer than the warning window.
    Ok {
        /// The end of validity (RFC 3339).
        not_after: String,
    },
    /// Valid, but expires within the warning window.
    ExpiresSoon {
        /// The end of validity (RFC 3339).
        not_after: String,
        /// Time left.
        remaining: Duration,
    },
    /// Already expired.
    Expired {
        /// The end of validity (RFC 3339).
        not_after: String,
    },
}

/// The expiry status of a DER certificate at `now` (seconds since the Unix epoch).
pub fn expiry_status(der: &[u8], window: Duration, now_unix: i64) -> Option<ExpiryStatus> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let not_after = cert.validity().not_after;
    let ts = not_after.timestamp();
    let text = not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ts.to_string());
    Some(if ts <= now_unix {
        ExpiryStatus::Expired { not_after: text }
    } else {
        let remaining = Duration::from_secs((ts - now_unix) as u64);
        if remaining <= window {
            ExpiryStatus::ExpiresSoon {
                not_after: text,
                remaining,
            }
        } else {
            ExpiryStatus::Ok { not_after: text }
        }
    })
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A certificate valid for less than the warning window: what the warning says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpiresSoon {
    pub not_after: String,
    pub remaining: Duration,
}

/// Refuses an expired certificate; tells (without logging it) when it expires within
/// `window`, for [`warn_expires_soon`] to log when the caller's schedule says so.
pub(crate) fn check_expiry(
    path: &Path,
    leaf: &CertificateDer<'_>,
    window: Duration,
) -> Result<Option<ExpiresSoon>, TlsError> {
    match expiry_status(leaf.as_ref(), window, now_unix()) {
        Some(ExpiryStatus::Expired { not_after }) => Err(TlsError::Expired {
            path: path.to_owned(),
            not_after,
        }),
        Some(ExpiryStatus::ExpiresSoon {
            not_after,
            remaining,
        }) => Ok(Some(ExpiresSoon {
            not_after,
            remaining,
        })),
        _ => Ok(None),
    }
}

/// Logs the near-expiry warning of the certificate in `path`.
pub(crate) fn warn_expires_soon(path: &Path, soon: &ExpiresSoon) {
    tracing::warn!(
        path = %path.display(),
        not_after = %soon.not_after,
        days_left = soon.remaining.as_secs() / 86_400,
        "TLS certificate expires soon (logged once per certificate, then daily)"
    );
}

/// The resumption state shared by successive configurations, so that a reload that only
/// changes the server certificate keeps sessions resumable. Replaced when the CA bundle
/// or CRLs change, so that no session verified under the old trust is resumed.
#[derive(Clone)]
pub(crate) struct Resumption {
    pub storage: Arc<dyn StoresServerSessions + Send + Sync>,
    pub ticketer: Arc<dyn ProducesTickets>,
}

impl Resumption {
    pub fn new() -> Result<Self, TlsError> {
        Ok(Self {
            storage: rustls::server::ServerSessionMemoryCache::new(1024),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
        })
    }
}

/// A built configuration and what it was built from.
pub(crate) struct Built {
    pub config: Arc<ServerConfig>,
    /// The client certificate verifier inside `config` (rustls does not hand it back),
    /// to verify the client chain of a resumed session again.
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Set when the certificate expires within the warning window (not logged here).
    pub expires_soon: Option<ExpiresSoon>,
}

/// A rustls configuration builder with the versions and client verification of `cfg`
/// (the CA bundle and CRLs given as read from their files), and the client certificate
/// verifier it holds, if any.
pub(crate) type ServerBuilder = (
    rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>,
    Option<Arc<dyn ClientCertVerifier>>,
);

/// See [`ServerBuilder`].
pub(crate) fn server_builder(
    cfg: &TlsConfig,
    ca: Option<&(PathBuf, Vec<u8>)>,
    crl_files: &[(PathBuf, Vec<u8>)],
) -> Result<ServerBuilder, TlsError> {
    let provider = provider();
    let versions = protocol_versions(cfg.min_version, cfg.max_version);
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    Ok(match (cfg.client_auth, ca) {
        (ClientAuth::Optional | ClientAuth::Required, Some((ca_path, ca_pem))) => {
            let cas = parse_cert_chain("server.tls.caFile", ca_path, ca_pem)?;
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca).map_err(|e| TlsError::InvalidCertificate {
                    key: "server.tls.caFile",
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let mut crls = Vec::new();
            for (path, pem) in crl_files {
                let list = CertificateRevocationListDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsError::InvalidPem {
                        key: "server.tls.crlFiles",
                        path: path.clone(),
                        reason: pem_reason(&e),
                    })?;
                if list.is_empty() {
                    return Err(TlsError::InvalidPem {
                        key: "server.tls.crlFiles",
                        path: path.clone(),
                        reason: "no X509 CRL section".into(),
                    });
                }
                crls.extend(list);
            }
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls);
            if cfg.client_auth == ClientAuth::Optional {
                vb = vb.allow_unauthenticated();
            }
            let verifier: Arc<dyn ClientCertVerifier> = vb.build()?;
            (
                builder.with_client_cert_verifier(verifier.clone()),
                Some(verifier),
            )
        }
        _ => (builder.with_no_client_auth(), None),
    })
}

/// Builds the rustls configuration from a snapshot of the files.
pub(crate) fn build_server_config(
    cfg: &TlsConfig,
    snap: &Snapshot,
    resumption: &Resumption,
) -> Result<Built, TlsError> {
    cfg.validate()?;
    let provider = provider();
    let ck = certified_key(
        &snap.cert.0,
        &snap.cert.1,
        &snap.key.0,
        &snap.key.1,
        &provider,
    )?;
    let expires_soon = match ck.cert.first() {
        Some(leaf) => check_expiry(&snap.cert.0, leaf, cfg.expiry_warning)?,
        None => None,
    };

    let (builder, verifier) = server_builder(cfg, snap.ca.as_ref(), &snap.crls)?;
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(ck)));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = true;
    config.session_storage = resumption.storage.clone();
    config.ticketer = resumption.ticketer.clone();
    Ok(Built {
        config: Arc::new(config),
        verifier,
        expires_soon,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pem_parsers_never_panic_nor_echo_input(
            body in "[A-Za-z0-9+/=\\n -]{0,400}",
            label in prop::sample::select(vec!["CERTIFICATE", "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "X509 CRL", "JUNK"]),
        ) {
            let pem = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
            let p = Path::new("f.pem");
            if let Err(e) = parse_cert_chain("server.tls.certFile", p, pem.as_bytes()) {
                let msg = e.to_string();
                prop_assert!(body.trim().len() < 12 || !msg.contains(body.trim()));
            }
            if let Err(e) = parse_private_key(p, pem.as_bytes()) {
                let msg = format!("{e} {e:?}");
                prop_assert!(body.trim().len() < 12 || !msg.contains(body.trim()));
            }
            let _ = parse_cert_chain("server.tls.certFile", p, body.as_bytes());
        }
    }

    #[test]
    fn versions_between() {
        assert_eq!(
            protocol_versions(TlsVersion::Tls12, TlsVersion::Tls13).len(),
            2
        );
        let only13 = protocol_versions(TlsVersion::Tls13, TlsVersion::Tls13);
        assert_eq!(only13.len(), 1);
        assert_eq!(only13[0].version, rustls::ProtocolVersion::TLSv1_3);
        let only12 = protocol_versions(TlsVersion::Tls12, TlsVersion::Tls12);
        assert_eq!(only12[0].version, rustls::ProtocolVersion::TLSv1_2);
    }

    #[test]
    fn provider_suites_are_aead_with_forward_secrecy() {
        for suite in &provider().cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
    }

    #[test]
    fn expiry_statuses() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let der = p.self_signed(&key).unwrap().der().clone();
        let end = time::macros::datetime!(2030-01-01 0:00 UTC).unix_timestamp();
        let day = Duration::from_secs(86_400);
        assert!(matches!(
            expiry_status(&der, 30 * day, end - 100 * 86_400),
            Some(ExpiryStatus::Ok { .. })
        ));
        match expiry_status(&der, 30 * day, end - 10 * 86_400) {
            Some(ExpiryStatus::ExpiresSoon {
                remaining,
                not_after,
            }) => {
                assert_eq!(remaining, 10 * day);
                assert!(not_after.starts_with("2030-01-01"), "{not_after}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            expiry_status(&der, 30 * day, end + 1),
            Some(ExpiryStatus::Expired { .. })
        ));
    }
}
