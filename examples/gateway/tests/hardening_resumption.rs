//! A client certificate that expired cannot come back through TLS session resumption, nor
//! keep a connection open past its notAfter: the gateway with
//! `clientAuth: RequireAndVerifyClientCert` and `auth.mode: mtls`, over real TLS, with a
//! certificate that expires during the test. The principal holds `audit:read`, so a
//! request that got through would answer 200 on the audit query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::HandshakeKind;
use rustls::client::{Resumption, Tls12Resumption};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Seconds the short-lived certificates are valid after they are made.
const LIFETIME: u64 = 12;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "resumption CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate `CN=cn` valid until `not_after` (seconds since the epoch).
    fn client(&self, cn: &str, not_after: u64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        p.not_before = epoch + Duration::from_secs(unix_now() - 3600);
        p.not_after = epoch + Duration::from_secs(not_after);
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls client presenting `cert`, resuming sessions (TLS 1.2 by `tls12`).
    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        cert: &(String, String),
        tls12: Tls12Resumption,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.0.der().clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.0.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap(),
        )
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg.resumption = Resumption::in_memory_sessions(64).tls12_resumption(tls12);
        Arc::new(cfg)
    }
}

fn write(dir: &Path, name: &str, s: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p.to_str().unwrap().to_owned()
}

/// The gateway: required client certificates of `ca`, mTLS authentication by common
/// name, `short-*` and `long-lived` holding `audit:read`.
fn gateway(dir: &Path, ca: &Ca) -> (Proc, Proc, std::net::SocketAddr) {
    let (up, upstream) = start_upstream(dir);
    let (cert, key) = ca.server();
    let yaml = format!(
        r#"server:
  addr: "127.0.0.1:0"
  tls:
    certFile: "{}"
    keyFile: "{}"
    clientAuth: RequireAndVerifyClientCert
    caFile: "{}"
auth:
  enabled: true
  mode: mtls
  mtls:
    identity: common_name
    scopes:
      short-13: ["audit:read"]
      short-12: ["audit:read"]
      short-kept: ["audit:read"]
      long-lived: ["audit:read"]
audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
        write(dir, "server.pem", &cert),
        write(dir, "server.key", &key),
        write(dir, "ca.pem", &ca.0.pem()),
        dir.join("a.db").display()
    );
    let (gw, base) = start_gateway(dir, &yaml);
    let addr = base
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    (up, gw, addr)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection with its handshake done, or the handshake's error.
fn connect(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(tls)
}

/// Sends `GET /api/audit/query?limit=1` (keep-alive) and reads one response: its status.
fn audit_query(tls: &mut Tls) -> Result<u16, String> {
    tls.write_all(b"GET /api/audit/query?limit=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(0) => return Err(format!("closed: {:?}", String::from_utf8_lossy(&buf))),
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
        if buf.len() > 64 * 1024 {
            return Err("head too long".into());
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head}"))?;
    if head.contains("transfer-encoding: chunked") {
        // A streamed page (the query API writes its pages chunk by chunk).
        loop {
            let line = read_line(tls)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| format!("bad chunk size: {line:?}"))?;
            let mut chunk = vec![0u8; size + 2];
            tls.read_exact(&mut chunk)
                .map_err(|e| format!("body: {e}"))?;
            if size == 0 {
                return Ok(status);
            }
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length: {head}"))?;
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

fn read_line(tls: &mut Tls) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        match tls.read(&mut byte) {
            Ok(0) => return Err("closed in a chunk".into()),
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
        if buf.len() > 64 {
            return Err("chunk line too long".into());
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One connection, one audit query: (handshake kind, status), or why none.
fn once(
    addr: std::net::SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> (Option<HandshakeKind>, Result<u16, String>) {
    match connect(addr, cfg.clone()) {
        Ok(mut tls) => {
            let kind = tls.conn.handshake_kind();
            (kind, audit_query(&mut tls))
        }
        Err(e) => (None, Err(e)),
    }
}

#[test]
fn an_expired_certificate_is_served_neither_through_resumption_nor_a_kept_connection() {
    ring();
    let dir = tempdir();
    let ca = Ca::new();
    let (_up, _gw, addr) = gateway(dir.path(), &ca);
    // Made once the gateway is up, so the positive controls have the whole lifetime.
    let not_after = unix_now() + LIFETIME;
    let tls13 = ca.client_config(
        &[&rustls::version::TLS13],
        &ca.client("short-13", not_after),
        Tls12Resumption::SessionIdOrTickets,
    );
    let tls12 = ca.client_config(
        &[&rustls::version::TLS12],
        &ca.client("short-12", not_after),
        Tls12Resumption::SessionIdOnly,
    );
    let control = ca.client_config(
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &ca.client("long-lived", unix_now() + 3600),
        Tls12Resumption::SessionIdOrTickets,
    );
    let kept_cfg = ca.client_config(
        &[&rustls::version::TLS13],
        &ca.client("short-kept", not_after),
        Tls12Resumption::SessionIdOrTickets,
    );

    // While valid: served, and resumed (the client says so) and served again.
    for cfg in [&tls13, &tls12, &control] {
        let (kind, status) = once(addr, cfg);
        assert_eq!((kind, status), (Some(HandshakeKind::Full), Ok(200)));
        let (kind, status) = once(addr, cfg);
        assert_eq!((kind, status), (Some(HandshakeKind::Resumed), Ok(200)));
    }
    let mut kept = connect(addr, kept_cfg).unwrap();
    assert_eq!(audit_query(&mut kept), Ok(200));

    // Past notAfter, with a margin.
    while unix_now() <= not_after + 2 {
        std::thread::sleep(Duration::from_millis(250));
    }

    // The attack: resume the sessions saved while the certificates were valid.
    for (name, cfg) in [("TLS 1.3 ticket", &tls13), ("TLS 1.2 session id", &tls12)] {
        for _ in 0..2 {
            let (kind, status) = once(addr, cfg);
            assert!(
                status.is_err(),
                "{name}: an expired certificate was served ({kind:?}, {status:?})"
            );
        }
    }
    // The connection opened while the certificate was valid serves nothing more.
    let late = audit_query(&mut kept);
    assert!(
        late.is_err() || late.as_ref().is_ok_and(|s| *s != 200),
        "a kept-alive connection served past notAfter: {late:?}"
    );
    // A valid certificate still resumes and is served.
    let (kind, status) = once(addr, &control);
    assert_eq!((kind, status), (Some(HandshakeKind::Resumed), Ok(200)));
}
