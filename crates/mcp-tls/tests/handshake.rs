//! Protocol versions, ALPN, PEM key formats and file errors, with real clients (rustls and
//! `openssl s_client`) over loopback TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mcp_tls::{TlsAcceptor, TlsConfig, TlsError, TlsVersion};
use rustls::version::{TLS12, TLS13};

#[tokio::test]
async fn rustls_client_tls13_and_tls12_succeed_and_handler_sees_tls_info() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    let server = start(Some(acceptor)).await;

    for (versions, expect) in [
        (&[&TLS13][..], "TLSv1.3"),
        (&[&TLS12][..], "TLSv1.2"),
        (BOTH, "TLSv1.3"),
    ] {
        let seen = get_echo(server.addr, client_config(&ca.der(), versions, None))
            .await
            .unwrap();
        assert_eq!(seen.json["protocol"], expect);
        assert_eq!(seen.json["alpn"], "http/1.1");
        assert_eq!(seen.json["sni"], "localhost");
        assert_eq!(seen.json["tls"], true);
        assert!(seen.json["client"].is_null());
        assert!(
            seen.json["peer"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{}",
            seen.json
        );
        assert_eq!(cn(&seen.server_cert), "server-1");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn openssl_tls13_tls12_succeed_tls11_tls10_refused() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    let ca_path = files.write("ca.pem", &ca.pem());
    let ca_arg = ca_path.to_str().unwrap().to_string();
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    let server = start(Some(acceptor)).await;
    let addr = server.addr;

    let r = tokio::task::spawn_blocking(move || {
        let v13 = s_client(
            addr,
            &["-tls1_3", "-CAfile", &ca_arg, "-verify_return_error"],
        );
        let v12 = s_client(
            addr,
            &["-tls1_2", "-CAfile", &ca_arg, "-verify_return_error"],
        );
        // SECLEVEL=0 so that openssl itself is willing to offer the old protocol and the
        // refusal observed is the server's.
        let v11 = s_client(addr, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
        let v10 = s_client(addr, &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
        (v13, v12, v11, v10)
    })
    .await
    .unwrap();
    let (v13, v12, v11, v10) = r;
    assert!(v13.connected, "{}", v13.output);
    assert_eq!(v13.protocol.as_deref(), Some("TLSv1.3"), "{}", v13.output);
    assert!(
        v13.output.contains("\"protocol\":\"TLSv1.3\""),
        "{}",
        v13.output
    );
    assert!(v12.connected, "{}", v12.output);
    assert_eq!(v12.protocol.as_deref(), Some("TLSv1.2"), "{}", v12.output);
    assert!(
        v12.output.contains("\"protocol\":\"TLSv1.2\""),
        "{}",
        v12.output
    );
    for old in [&v11, &v10] {
        assert!(!old.connected, "{}", old.output);
        // openssl sent its ClientHello and the server answered with a fatal alert
        // (rustls sends handshake_failure or protocol_version): the refusal is the
        // server's, not openssl's own.
        assert!(
            old.output.contains("alert handshake failure")
                || old.output.contains("alert protocol version"),
            "{}",
            old.output
        );
        assert!(old.output.contains("Cipher is (NONE)"), "{}", old.output);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn min_version_13_refuses_tls12_clients() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    let cfg = files
        .config()
        .versions(TlsVersion::Tls13, TlsVersion::Tls13);
    let server = start(Some(TlsAcceptor::from_config(&cfg).unwrap())).await;
    let err = get_echo(server.addr, client_config(&ca.der(), &[&TLS12], None)).await;
    assert!(err.is_err());
    let ok = get_echo(server.addr, client_config(&ca.der(), &[&TLS13], None))
        .await
        .unwrap();
    assert_eq!(ok.json["protocol"], "TLSv1.3");
    server.shutdown().await;
}

#[tokio::test]
async fn max_version_12_serves_tls12_only() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    let cfg = files
        .config()
        .versions(TlsVersion::Tls12, TlsVersion::Tls12);
    let server = start(Some(TlsAcceptor::from_config(&cfg).unwrap())).await;
    assert!(
        get_echo(server.addr, client_config(&ca.der(), &[&TLS13], None))
            .await
            .is_err()
    );
    let ok = get_echo(server.addr, client_config(&ca.der(), BOTH, None))
        .await
        .unwrap();
    assert_eq!(ok.json["protocol"], "TLSv1.2");
    server.shutdown().await;
}

#[tokio::test]
async fn alpn_h2_is_negotiated_and_served_over_http2() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    let server = start(Some(TlsAcceptor::from_config(&files.config()).unwrap())).await;
    let mut cfg = (*client_config(&ca.der(), BOTH, None)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/echo")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["alpn"], "h2");
    drop(send);
    server.shutdown().await;
}

fn openssl_run(args: &[&str]) {
    let out = std::process::Command::new(openssl())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn pkcs8_pkcs1_and_sec1_keys_load_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let ca = Ca::new("Key format CA");
    // RSA: PKCS#8 from genpkey, converted to PKCS#1 ("RSA PRIVATE KEY").
    openssl_run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa8.key"),
    ]);
    openssl_run(&[
        "rsa",
        "-in",
        &p("rsa8.key"),
        "-traditional",
        "-out",
        &p("rsa1.key"),
    ]);
    // EC: SEC1 ("EC PRIVATE KEY") from ecparam.
    openssl_run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p("ec1.key"),
    ]);
    // Certificates for those keys, signed by the test CA.
    for (key, cert) in [("rsa8.key", "rsa.pem"), ("ec1.key", "ec.pem")] {
        openssl_run(&["pkey", "-in", &p(key), "-pubout", "-out", &p("pub.pem")]);
        let spki =
            rcgen::SubjectPublicKeyInfo::from_pem(&std::fs::read_to_string(p("pub.pem")).unwrap())
                .unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let c = params.signed_by(&spki, &ca.issuer).unwrap();
        std::fs::write(p(cert), c.pem()).unwrap();
    }
    let head = |n: &str| std::fs::read_to_string(p(n)).unwrap();
    assert!(head("rsa1.key").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(head("rsa8.key").starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(head("ec1.key").starts_with("-----BEGIN EC PRIVATE KEY-----"));

    for (cert, key) in [
        ("rsa.pem", "rsa8.key"),
        ("rsa.pem", "rsa1.key"),
        ("ec.pem", "ec1.key"),
    ] {
        let acceptor = TlsAcceptor::from_config(&TlsConfig::new(p(cert), p(key)))
            .unwrap_or_else(|e| panic!("{cert} {key}: {e}"));
        let server = start(Some(acceptor)).await;
        let seen = get_echo(server.addr, client_config(&ca.der(), BOTH, None))
            .await
            .unwrap_or_else(|e| panic!("{cert} {key}: {e}"));
        assert_eq!(seen.json["protocol"], "TLSv1.3");
        server.shutdown().await;
    }
}

#[test]
fn missing_file_is_named() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("s");
    let files = Files::new(&cert, &key);
    let missing = files.path("nope.pem");
    let cfg = TlsConfig::new(&missing, files.path("server.key"));
    let err = TlsAcceptor::from_config(&cfg).unwrap_err();
    assert!(matches!(
        err,
        TlsError::MissingFile {
            key: "server.tls.certFile",
            ..
        }
    ));
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    let cfg = TlsConfig::new(files.path("server.pem"), files.path("gone.key"));
    let err = TlsAcceptor::from_config(&cfg).unwrap_err();
    assert!(err.to_string().contains("gone.key"), "{err}");
    let cfg = files
        .config()
        .client_auth(mcp_tls::ClientAuth::Required, files.path("no-ca.pem"));
    let err = TlsAcceptor::from_config(&cfg).unwrap_err();
    assert!(err.to_string().starts_with("server.tls.caFile"), "{err}");
    assert!(err.to_string().contains("no-ca.pem"), "{err}");
}

#[test]
fn key_not_matching_the_certificate_is_refused() {
    let ca = Ca::new("Test CA");
    let (cert, _) = ca.server("s");
    let (_, other_key) = ca.server("t");
    let files = Files::new(&cert, &other_key);
    let err = TlsAcceptor::from_config(&files.config()).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("does not match"), "{msg}");
    // The key material never appears in the error.
    let body: String = other_key.lines().nth(1).unwrap().chars().take(20).collect();
    assert!(!msg.contains(&body));
    assert!(!format!("{err:?}").contains(&body));
}

#[test]
fn unparsable_pem_is_refused_without_echoing_contents() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("s");
    // Truncated certificate (no END line).
    let files = Files::new(&cert[..cert.len() / 2], &key);
    let err = TlsAcceptor::from_config(&files.config()).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::InvalidPem {
                key: "server.tls.certFile",
                ..
            }
        ),
        "{err}"
    );
    // A key file that holds a certificate, not a key.
    let files = Files::new(&cert, &cert);
    let err = TlsAcceptor::from_config(&files.config()).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::InvalidPem {
                key: "server.tls.keyFile",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    // Corrupted base64 inside the key: the error says so and shows none of it.
    let mut lines: Vec<String> = key.lines().map(str::to_owned).collect();
    lines[1] = format!("!!!!{}", &lines[1][4..]);
    let bad_key = lines.join("\n");
    let files = Files::new(&cert, &bad_key);
    let err = TlsAcceptor::from_config(&files.config()).unwrap_err();
    assert!(!err.to_string().contains(&lines[1][4..20]), "{err}");
    // Garbage DER inside a well-formed PEM certificate.
    let junk = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
    let files = Files::new(junk, &key);
    let err = TlsAcceptor::from_config(&files.config()).unwrap_err();
    assert!(matches!(err, TlsError::InvalidCertificate { .. }), "{err}");
}

#[test]
fn expired_certificate_is_refused_and_near_expiry_warns() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server_with("old", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let files = Files::new(&cert, &key);
    let err = TlsAcceptor::from_config(&files.config()).unwrap_err();
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("2021-01-01"), "{err}");

    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let (cert, key) = ca.server_with("soon", |p| p.not_after = soon);
    let files = Files::new(&cert, &key);
    let logs = capture_logs(|| {
        TlsAcceptor::from_config(&files.config()).unwrap();
    });
    assert!(logs.contains("TLS certificate expires soon"), "{logs}");
    assert!(logs.contains("WARN"), "{logs}");
    // With a 5-day window, 10 days left draws no warning.
    let logs = capture_logs(|| {
        TlsAcceptor::from_config(
            &files
                .config()
                .expiry_warning(std::time::Duration::from_secs(5 * 86_400)),
        )
        .unwrap();
    });
    assert!(!logs.contains("expires soon"), "{logs}");
}

#[test]
fn old_protocol_versions_in_config_are_build_errors() {
    let ca = Ca::new("Test CA");
    let (cert, key) = ca.server("s");
    let files = Files::new(&cert, &key);
    for v in ["TLS1.0", "TLS1.1"] {
        let yaml = format!(
            "certFile: {}\nkeyFile: {}\nminVersion: \"{v}\"\n",
            files.path("server.pem").display(),
            files.path("server.key").display()
        );
        let cfg: TlsConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        let err = TlsAcceptor::from_config(&cfg).unwrap_err();
        assert!(
            err.to_string().starts_with("server.tls.minVersion: TLS1."),
            "{err}"
        );
    }
}

fn capture_logs(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let b2 = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || b2.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let v = buf.0.lock().unwrap().clone();
    String::from_utf8_lossy(&v).into_owned()
}
