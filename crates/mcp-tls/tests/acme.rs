//! ACME against a real pebble (Let's Encrypt's test server) on loopback, with real
//! tls-alpn-01 validation: pebble resolves the host through pebble-challtestsrv's DNS
//! (every name -> 127.0.0.1) and connects to our serving port, which it is configured to
//! use as its `tlsPort`.
#![cfg(feature = "acme")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mcp_tls::acme::AcmeManager;
use mcp_tls::{AutoCertConfig, TlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "mcp.acme.test";

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` not found: the ACME test runs Let's Encrypt's test server. Install it with \
         `apt-get install -y pebble` (scripts/test.sh does)."
    );
}

struct Proc(Child, PathBuf);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

fn wait_tcp(port: u16, p: &mut Proc, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = p.0.try_wait() {
            panic!("{what} exited with {st}: {}", p.log());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Pebble {
    _dns: Proc,
    pebble: Proc,
    dir: tempfile::TempDir,
    directory: String,
    mgmt: SocketAddr,
    https_ca: CertificateDer<'static>,
}

impl Pebble {
    /// Starts pebble-challtestsrv (DNS only) and pebble, validating tls-alpn-01 on
    /// `tls_port`.
    fn start(tls_port: u16) -> Self {
        let pebble_bin = binary("pebble");
        let dns_bin = binary("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();
        // pebble's own HTTPS certificate, from a CA made here.
        let ca = Ca::new("pebble HTTPS test CA");
        let (cert, key) = ca.server("pebble");
        std::fs::write(dir.path().join("https.pem"), &cert).unwrap();
        std::fs::write(dir.path().join("https.key"), &key).unwrap();
        std::fs::write(dir.path().join("https-ca.pem"), ca.pem()).unwrap();

        let dns_port = mcp_testkit::free_port();
        let dns_mgmt = mcp_testkit::free_port();
        let log = dir.path().join("challtestsrv.log");
        let mut dns = Proc(
            Command::new(dns_bin)
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.path().join("challtestsrv.err")).unwrap(),
                ))
                .spawn()
                .unwrap(),
            log,
        );
        wait_tcp(dns_mgmt, &mut dns, "pebble-challtestsrv");

        let (api, mgmt, http) = (
            mcp_testkit::free_port(),
            mcp_testkit::free_port(),
            mcp_testkit::free_port(),
        );
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{api}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.path().join("https.pem"),
                "privateKey": dir.path().join("https.key"),
                "httpPort": http,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, config.to_string()).unwrap();
        let log = dir.path().join("pebble.log");
        let logfile = std::fs::File::create(&log).unwrap();
        let mut pebble = Proc(
            Command::new(pebble_bin)
                .arg("-config")
                .arg(&cfg_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                // Every order validates afresh (no reuse of earlier authorizations).
                .env("PEBBLE_AUTHZREUSE", "0")
                .env_remove("PEBBLE_VA_ALWAYS_VALID")
                .stdout(logfile.try_clone().unwrap())
                .stderr(Stdio::from(logfile))
                .spawn()
                .unwrap(),
            log,
        );
        wait_tcp(api, &mut pebble, "pebble");
        wait_tcp(mgmt, &mut pebble, "pebble management");
        Pebble {
            _dns: dns,
            pebble,
            directory: format!("https://127.0.0.1:{api}/dir"),
            mgmt: format!("127.0.0.1:{mgmt}").parse().unwrap(),
            https_ca: ca.der(),
            dir,
        }
    }

    /// The root that pebble signs certificates with (from its management interface).
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let pem = https_get(self.mgmt, &self.https_ca, "localhost", "/roots/0", &[]).await;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}

/// A GET over rustls trusting `ca`; returns the body. `alpn` empty means http/1.1.
async fn https_get(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    sni: &str,
    path: &str,
    alpn: &[&[u8]],
) -> String {
    let cfg = tls_client(ca, alpn);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn tls_client(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(mcp_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = if alpn.is_empty() {
        vec![b"http/1.1".to_vec()]
    } else {
        alpn.iter().map(|a| a.to_vec()).collect()
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Connects with SNI `HOST` and returns the served leaf certificate.
async fn served_leaf(addr: SocketAddr, root: &CertificateDer<'static>) -> CertificateDer<'static> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_client(root, &[]))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_serves_renews_and_caches_a_certificate_from_pebble() {
    // Bind first: pebble validates by connecting to this port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pebble = Pebble::start(addr.port());
    let cache = pebble.dir.path().join("acme-cache");
    let cfg = TlsConfig {
        auto_cert: Some(AutoCertConfig {
            enabled: true,
            host: HOST.into(),
            email: Some("ops@example.com".into()),
            cache_dir: cache.clone(),
            directory_url: Some(pebble.directory.clone()),
            directory_ca_file: Some(pebble.dir.path().join("https-ca.pem")),
            renew_before: Duration::from_secs(30 * 86_400),
        }),
        ..TlsConfig::default()
    };
    let (acceptor, manager) = AcmeManager::start(&cfg).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        mcp_tls::Server::new(listener)
            .tls(acceptor)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .serve(echo_router()),
    );

    if tokio::time::timeout(Duration::from_secs(120), manager.ready())
        .await
        .is_err()
    {
        panic!(
            "no certificate from pebble; pebble log:\n{}",
            pebble.pebble.log()
        );
    }
    let root = pebble.issuing_root().await;

    // A client trusting pebble's root reaches the handler with the issued certificate.
    let body = https_get(addr, &root, HOST, "/echo", &[]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["sni"], HOST);
    let leaf = served_leaf(addr, &root).await;
    let id = mcp_tls::identity_from_der(&leaf).unwrap();
    assert_eq!(id.dns_names, vec![HOST.to_string()]);
    // pebble validated for real (PEBBLE_VA_ALWAYS_VALID unset): it connected to our port
    // with acme-tls/1 and got the challenge certificate, and marked the authorization
    // valid.
    assert!(manager.challenge_handshakes() >= 1);
    let log = pebble.pebble.log();
    assert!(log.contains("set VALID by completed challenge"), "{log}");
    let before_renewal = manager.challenge_handshakes();

    // Attack: once no order is pending, an acme-tls/1 ClientHello gets no certificate
    // (and never reaches the service).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(tls_client(&root, &[b"acme-tls/1"]))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await;
    assert!(
        r.is_err(),
        "acme-tls/1 handshake completed outside validation"
    );

    // The cache holds the account, the certificate and its key (keys private).
    let key_file = cache.join(format!("{HOST}.key"));
    let cert_file = cache.join(format!("{HOST}.crt"));
    assert!(cert_file.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let account = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("account-")
            })
            .expect("account cached");
        assert_eq!(
            std::fs::metadata(&account).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // Renewal: a new certificate, served to new connections.
    manager.renew_now().await.unwrap();
    assert!(
        manager.challenge_handshakes() > before_renewal,
        "renewal was not validated"
    );
    let renewed = served_leaf(addr, &root).await;
    assert_ne!(fingerprint(&renewed), fingerprint(&leaf));
    let cached: Vec<u8> = {
        let pem = std::fs::read(&cert_file).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
    };
    assert_eq!(fingerprint(&cached), fingerprint(&renewed));

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    drop(manager);

    // A restart with pebble gone: the cached certificate is served without an order.
    drop(pebble.pebble);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr2 = listener.local_addr().unwrap();
    let (acceptor, manager) = AcmeManager::new(&cfg).unwrap();
    assert!(manager.load_cached().await.unwrap());
    let server = tokio::spawn(
        mcp_tls::Server::new(listener)
            .tls(acceptor)
            .serve(echo_router()),
    );
    let again = served_leaf(addr2, &root).await;
    assert_eq!(fingerprint(&again), fingerprint(&renewed));
    server.abort();
}

#[test]
fn acme_without_enabled_autocert_is_refused() {
    let cfg = TlsConfig::new("c.pem", "k.pem");
    let err = AcmeManager::new(&cfg).unwrap_err();
    assert!(
        err.to_string().contains("server.tls.autoCert.enabled"),
        "{err}"
    );
}
