//! Shared test support: a PKI made with rcgen, an echo server, rustls and openssl clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router, routing::get};
use mcp_core::{PeerAddr, TlsInfo};
use mcp_tls::{Server, TlsAcceptor, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub name: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        Self {
            issuer,
            name: name.into(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for localhost / 127.0.0.1 with this CN; (cert PEM, key PEM).
    pub fn server(&self, cn: &str) -> (String, String) {
        self.server_with(cn, |_| {})
    }

    pub fn server_with(
        &self,
        cn: &str,
        f: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        f(&mut p);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with this CN, a DNS SAN and a SPIFFE URI; (cert PEM, key PEM,
    /// serial).
    pub fn client(&self, cn: &str, serial: u64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![format!("{cn}.svc.cluster.local")]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "MCP Tests");
        p.subject_alt_names.push(SanType::URI(
            format!("spiffe://example.org/ns/default/sa/{cn}")
                .try_into()
                .unwrap(),
        ));
        p.serial_number = Some(serial.to_be_bytes().to_vec().into());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A CRL revoking these serials.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(30),
            crl_number: rcgen::SerialNumber::from(1u64.to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: s.to_be_bytes().to_vec().into(),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

/// Writes `contents` to `dir/name` atomically (temp file + rename), like cert-manager.
pub fn replace_file(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A temp dir with server.pem / server.key (and ca.pem when given).
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new(cert: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        Self { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
    pub fn config(&self) -> TlsConfig {
        TlsConfig::new(self.path("server.pem"), self.path("server.key"))
    }
}

/// The echo handler: the request's TlsInfo and PeerAddr as JSON.
pub async fn echo(
    tls: Option<Extension<TlsInfo>>,
    peer: Option<Extension<PeerAddr>>,
) -> axum::Json<serde_json::Value> {
    let tls = tls.map(|Extension(t)| t);
    let client = tls.as_ref().and_then(|t| t.client.clone()).map(|c| {
        serde_json::json!({
            "cn": c.common_name,
            "subject": c.subject,
            "issuer": c.issuer,
            "dns": c.dns_names,
            "uris": c.uris,
            "spiffe": c.spiffe_id().ok().flatten(),
            "serial": c.serial,
            "fingerprint": c.fingerprint_hex(),
        })
    });
    axum::Json(serde_json::json!({
        "tls": tls.is_some(),
        "protocol": tls.as_ref().and_then(|t| t.protocol),
        "alpn": tls.as_ref().and_then(|t| t.alpn.clone()),
        "sni": tls.as_ref().and_then(|t| t.server_name.clone()),
        "client": client,
        "peer": peer.map(|Extension(p)| p.0.to_string()),
    }))
}

pub fn echo_router() -> Router {
    Router::new().route("/echo", get(echo))
}

/// A running server; shut down (and drained) on drop of the sender.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

pub async fn start(acceptor: Option<TlsAcceptor>) -> Running {
    start_with(acceptor, |s| s, echo_router()).await
}

pub async fn start_with(
    acceptor: Option<TlsAcceptor>,
    f: impl FnOnce(Server) -> Server,
    router: Router,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = f(Server::new(listener)
        .maybe_tls(acceptor)
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        }));
    let task = tokio::spawn(server.serve(router));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// A rustls client configuration trusting `ca`, with the given versions and optional
/// client certificate (PEM cert, PEM key).
pub fn client_config(
    ca: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<(&str, &str)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(mcp_tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The same client configuration without session resumption: every connection is a
/// full handshake that shows the certificate served now.
pub fn full_handshakes(cfg: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut c = (**cfg).clone();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

pub const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What a rustls client saw.
#[derive(Debug)]
pub struct Seen {
    pub json: serde_json::Value,
    pub server_cert: CertificateDer<'static>,
}

/// Connects with rustls, GETs /echo over HTTP/1.1 and returns the JSON and the server's
/// certificate. Errors are the handshake's or the read's.
pub async fn get_echo(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Seen> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| std::io::Error::other("no server certificate"))?;
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("no HTTP response: {text:?}")));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status: {head}")));
    }
    let json = serde_json::from_str(body)
        .map_err(|e| std::io::Error::other(format!("body {body:?}: {e}")))?;
    Ok(Seen { json, server_cert })
}

/// The SHA-256 fingerprint (hex) of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    mcp_tls::identity_from_der(der).unwrap().fingerprint_hex()
}

/// The CN of a DER certificate.
pub fn cn(der: &[u8]) -> String {
    mcp_tls::identity_from_der(der)
        .unwrap()
        .common_name
        .unwrap_or_default()
}

/// The openssl binary, or a failure saying how to install it.
pub fn openssl() -> &'static str {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`openssl` not found: this test drives a real openssl s_client. Install it with \
         `apt-get install -y openssl` (scripts/test.sh does)."
    );
    "openssl"
}

/// Result of an `openssl s_client` run.
#[derive(Debug)]
pub struct SClient {
    pub connected: bool,
    pub protocol: Option<String>,
    pub output: String,
}

/// Runs `openssl s_client` against `addr` with extra args; sends an HTTP request and
/// reports whether the handshake completed and with which protocol.
pub fn s_client(addr: SocketAddr, args: &[&str]) -> SClient {
    use std::io::Write;
    let mut child = Command::new(openssl())
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-ign_eof"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    if let Some(mut stdin) = child.stdin.take() {
        let _ =
            stdin.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    }
    let out = child.wait_with_output().expect("openssl output");
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Connected means the HTTP response arrived through the TLS session.
    let connected = output.contains("HTTP/1.1 200");
    let protocol = output
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("Protocol  :")
                .or_else(|| l.strip_prefix("Protocol version:"))
                .or_else(|| l.strip_prefix("Protocol:"))
                .map(|p| p.trim().to_string())
        })
        .or_else(|| {
            output.lines().find_map(|l| {
                l.split(", Cipher is")
                    .next()
                    .and_then(|p| p.strip_prefix("New, "))
                    .map(|p| p.trim().to_string())
            })
        });
    SClient {
        connected,
        protocol,
        output,
    }
}

/// Every log line of this test binary, from a global `tracing` subscriber at `debug`
/// (installed on the first call; it also takes `log` records). Global, because servers
/// and reloaders log from runtime and blocking-pool threads: tests tell their lines apart
/// by something of their own (a temp dir).
pub fn logs() -> &'static Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogSink(writer.clone()))
            .try_init()
            .unwrap();
        buf
    })
}

struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lines of [`logs`] that contain both `a` and `b`.
pub fn lines_with(a: &str, b: &str) -> usize {
    let buf = logs().lock().unwrap();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| l.contains(a) && l.contains(b))
        .count()
}
