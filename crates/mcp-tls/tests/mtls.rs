//! Mutual TLS: required and optional client certificates, CRLs, the identity the handler
//! sees; with rustls and openssl clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mcp_tls::{ClientAuth, TlsAcceptor};

struct Setup {
    ca: Ca,
    files: Files,
}

fn setup() -> Setup {
    let ca = Ca::new("Client CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca.pem());
    Setup { ca, files }
}

#[tokio::test]
async fn required_mtls_refuses_no_cert_and_foreign_ca_and_admits_the_ca_with_identity() {
    let Setup { ca, files } = setup();
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    let server = start(Some(TlsAcceptor::from_config(&cfg).unwrap())).await;

    // Attack: no certificate at all.
    let r = get_echo(server.addr, client_config(&ca.der(), BOTH, None)).await;
    assert!(r.is_err(), "no client cert got through: {r:?}");
    // Attack: a certificate with the same CN from another CA.
    let other = Ca::new("Client CA");
    let (c, k) = other.client("svc-a", 7);
    let r = get_echo(server.addr, client_config(&ca.der(), BOTH, Some((&c, &k)))).await;
    assert!(r.is_err(), "foreign-CA cert got through: {r:?}");
    // Attack: a TLS 1.2 client without certificate.
    let r = get_echo(
        server.addr,
        client_config(&ca.der(), &[&rustls::version::TLS12], None),
    )
    .await;
    assert!(r.is_err());

    // The CA's client gets through, and the handler sees who it is.
    let (c, k) = ca.client("svc-a", 42);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let seen = get_echo(
            server.addr,
            client_config(&ca.der(), versions, Some((&c, &k))),
        )
        .await
        .unwrap();
        let client = &seen.json["client"];
        assert_eq!(client["cn"], "svc-a", "{}", seen.json);
        assert_eq!(client["spiffe"], "spiffe://example.org/ns/default/sa/svc-a");
        assert_eq!(client["dns"][0], "svc-a.svc.cluster.local");
        assert!(client["subject"].as_str().unwrap().contains("CN=svc-a"));
        assert!(client["subject"].as_str().unwrap().contains("O=MCP Tests"));
        assert!(client["issuer"].as_str().unwrap().contains("CN=Client CA"));
        assert_eq!(client["serial"], "2a");
        let der = rustls_pki_types::CertificateDer::from(
            {
                use rustls_pki_types::pem::PemObject;
                rustls_pki_types::CertificateDer::from_pem_slice(c.as_bytes()).unwrap()
            }
            .to_vec(),
        );
        assert_eq!(client["fingerprint"], fingerprint(&der));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn required_mtls_with_openssl_s_client() {
    let Setup { ca, files } = setup();
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    let server = start(Some(TlsAcceptor::from_config(&cfg).unwrap())).await;
    let (c, k) = ca.client("svc-openssl", 9);
    let cert = files.write("client.pem", &c);
    let key = files.write("client.key", &k);
    let other = Ca::new("Other CA");
    let (oc, ok) = other.client("svc-openssl", 9);
    let ocert = files.write("other.pem", &oc);
    let okey = files.write("other.key", &ok);
    let ca_file = files.path("ca.pem");
    let addr = server.addr;
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (good, none, foreign) = tokio::task::spawn_blocking({
        let (cert, key, ocert, okey, ca_file) =
            (s(&cert), s(&key), s(&ocert), s(&okey), s(&ca_file));
        move || {
            let good = s_client(addr, &["-CAfile", &ca_file, "-cert", &cert, "-key", &key]);
            let none = s_client(addr, &["-CAfile", &ca_file]);
            let foreign = s_client(addr, &["-CAfile", &ca_file, "-cert", &ocert, "-key", &okey]);
            (good, none, foreign)
        }
    })
    .await
    .unwrap();
    assert!(good.connected, "{}", good.output);
    assert!(
        good.output.contains("\"cn\":\"svc-openssl\""),
        "{}",
        good.output
    );
    assert!(!none.connected, "{}", none.output);
    assert!(!foreign.connected, "{}", foreign.output);
    // The server told the client which CA it accepts.
    assert!(
        good.output
            .contains("Acceptable client certificate CA names"),
        "{}",
        good.output
    );
    server.shutdown().await;
}

#[tokio::test]
async fn optional_mtls_admits_anonymous_but_refuses_bad_certs() {
    let Setup { ca, files } = setup();
    let cfg = files
        .config()
        .client_auth(ClientAuth::Optional, files.path("ca.pem"));
    let server = start(Some(TlsAcceptor::from_config(&cfg).unwrap())).await;
    let anon = get_echo(server.addr, client_config(&ca.der(), BOTH, None))
        .await
        .unwrap();
    assert!(anon.json["client"].is_null());
    let (c, k) = ca.client("svc-b", 3);
    let known = get_echo(server.addr, client_config(&ca.der(), BOTH, Some((&c, &k))))
        .await
        .unwrap();
    assert_eq!(known.json["client"]["cn"], "svc-b");
    // Attack: a certificate from another CA is refused, not treated as anonymous.
    let other = Ca::new("Evil CA");
    let (c, k) = other.client("svc-b", 3);
    let r = get_echo(server.addr, client_config(&ca.der(), BOTH, Some((&c, &k)))).await;
    assert!(r.is_err(), "{r:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn revoked_client_certificate_is_refused() {
    let Setup { ca, files } = setup();
    files.write("ca.crl", &ca.crl(&[66]));
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"))
        .crl_file(files.path("ca.crl"));
    let server = start(Some(TlsAcceptor::from_config(&cfg).unwrap())).await;
    let (c, k) = ca.client("revoked", 66);
    let r = get_echo(server.addr, client_config(&ca.der(), BOTH, Some((&c, &k)))).await;
    assert!(r.is_err(), "revoked cert got through: {r:?}");
    let (c, k) = ca.client("fine", 67);
    let ok = get_echo(server.addr, client_config(&ca.der(), BOTH, Some((&c, &k))))
        .await
        .unwrap();
    assert_eq!(ok.json["client"]["cn"], "fine");
    server.shutdown().await;
}

#[test]
fn invalid_ca_and_crl_files_are_errors() {
    let Setup { files, .. } = setup();
    files.write("junk.pem", "not pem at all\n");
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("junk.pem"));
    let err = TlsAcceptor::from_config(&cfg).unwrap_err();
    assert!(err.to_string().starts_with("server.tls.caFile"), "{err}");
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"))
        .crl_file(files.path("junk.pem"));
    let err = TlsAcceptor::from_config(&cfg).unwrap_err();
    assert!(err.to_string().starts_with("server.tls.crlFiles"), "{err}");
}
