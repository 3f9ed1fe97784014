//! TLS and mutual TLS on the gateway's listener (mcp-tls), client-certificate
//! authentication, and an https upstream that requires the gateway's client certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }
    fn pem(&self) -> String {
        self.0.pem()
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
    fn client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names.push(SanType::URI(
            format!("spiffe://example.org/sa/{cn}").try_into().unwrap(),
        ));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn rustls_client(ca_pem: &str, cert: Option<(&str, &str)>) -> rustls::ClientConfig {
    ring();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match cert {
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    }
}

fn https_client(cfg: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

fn write(dir: &std::path::Path, name: &str, s: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn tls_listener_with_api_keys() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server();
    let cert_f = write(dir.path(), "server.pem", &cert);
    let key_f = write(dir.path(), "server.key", &key);
    let yaml = base_config(&upstream, &dir.path().join("a.db"), "").replace(
        "  addr: \"127.0.0.1:0\"\n",
        &format!("  addr: \"127.0.0.1:0\"\n  tls:\n    certFile: \"{cert_f}\"\n    keyFile: \"{key_f}\"\n    minVersion: \"TLS1.2\"\n    maxVersion: \"TLS1.3\"\n"),
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    assert!(base.starts_with("https://"), "{base}");
    let base = base.replace("127.0.0.1", "localhost");
    let c = https_client(rustls_client(&ca.pem(), None));
    let r = call_tool(
        &c,
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "over tls"}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // HSTS only over TLS.
    assert!(r.headers().contains_key("strict-transport-security"));
    assert_eq!(
        last(&r.text().await.unwrap())["result"]["content"][0]["text"],
        "over tls"
    );
    // A client that does not trust the CA cannot connect; plain HTTP gets nothing.
    let other = Ca::new("other CA");
    let c2 = https_client(rustls_client(&other.pem(), None));
    assert!(c2.get(format!("{base}/healthz")).send().await.is_err());
    let plain = base.replace("https://", "http://");
    assert!(
        client()
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .is_err()
    );
    // Both show in the metrics as failed handshakes.
    let m = metrics_text_with(&c, &base).await;
    let failed = metric_value(
        &m,
        "mcp_gateway_tls_handshake_failures_total{reason=\"failed\"}",
    );
    assert!(failed.is_some_and(|n| n >= 2.0), "{m}");
    let accepted = metric_value(&m, "mcp_gateway_connections_accepted_total");
    assert!(accepted.is_some_and(|n| n >= 3.0), "{m}");
}

#[tokio::test]
async fn mutual_tls_required_and_client_certificate_authentication() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server();
    let cert_f = write(dir.path(), "server.pem", &cert);
    let key_f = write(dir.path(), "server.key", &key);
    let ca_f = write(dir.path(), "ca.pem", &ca.pem());
    let yaml = format!(
        r#"server:
  addr: "127.0.0.1:0"
  tls:
    certFile: "{cert_f}"
    keyFile: "{key_f}"
    clientAuth: RequireAndVerifyClientCert
    caFile: "{ca_f}"
auth:
  enabled: true
  mode: mtls
  mtls:
    identity: spiffe_id_or_common_name
    defaultScopes: ["mcp:tools"]
audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
        dir.path().join("a.db").display()
    );
    let db = dir.path().join("a.db");
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let base = base.replace("127.0.0.1", "localhost");
    let (ccert, ckey) = ca.client("agent-1");
    let c = https_client(rustls_client(&ca.pem(), Some((&ccert, &ckey))));
    let r = call_tool(
        &c,
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "mtls"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Without a client certificate, or with one from another CA: no connection.
    let none = https_client(rustls_client(&ca.pem(), None));
    assert!(
        call_tool(
            &none,
            &format!("{base}/mcp"),
            "echo",
            json!({"message": "x"})
        )
        .send()
        .await
        .is_err()
    );
    let rogue = Ca::new("rogue CA");
    let (rc, rk) = rogue.client("agent-1");
    let bad = https_client(rustls_client(&ca.pem(), Some((&rc, &rk))));
    assert!(
        call_tool(
            &bad,
            &format!("{base}/mcp"),
            "echo",
            json!({"message": "x"})
        )
        .send()
        .await
        .is_err()
    );
    // The audit trail names the certificate's identity.
    let ok = eventually(|| {
        audit_rows(&db)
            .iter()
            .any(|r| r.user.as_deref() == Some("mtls:spiffe://example.org/sa/agent-1"))
    })
    .await;
    assert!(
        ok,
        "{:?}",
        audit_rows(&db)
            .iter()
            .map(|r| r.user.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn https_upstream_with_gateway_client_certificate() {
    let dir = tempdir();
    ring();
    // The upstream: an mcp-tls server requiring a client certificate from `ca`.
    let ca = Ca::new("upstream CA");
    let (scert, skey) = ca.server();
    let scert_f = write(dir.path(), "up.pem", &scert);
    let skey_f = write(dir.path(), "up.key", &skey);
    let ca_f = write(dir.path(), "upca.pem", &ca.pem());
    let tls = mcp_tls::TlsConfig::new(&scert_f, &skey_f)
        .client_auth(mcp_tls::ClientAuth::Required, &ca_f);
    let acceptor = mcp_tls::TlsAcceptor::from_config(&tls).unwrap();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|tls: Option<axum::Extension<mcp_core::TlsInfo>>| async move {
            let who = tls
                .and_then(|t| t.0.client.clone().and_then(|c| c.common_name.clone()))
                .unwrap_or_default();
            (
                [("content-type", "application/json")],
                json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": format!("hello {who}")}]}}).to_string(),
            )
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        mcp_tls::Server::new(l)
            .tls(acceptor)
            .serve(app)
            .await
            .unwrap()
    });
    let (gcert, gkey) = ca.client("mcp-gateway");
    let gcert_f = write(dir.path(), "gw-client.pem", &gcert);
    let gkey_f = write(dir.path(), "gw-client.key", &gkey);
    let yaml = base_config(&format!("https://localhost:{}/mcp", addr.port()), &dir.path().join("a.db"), "").replace(
        "    path: /mcp\n",
        &format!("    path: /mcp\n    tls:\n      caFile: \"{ca_f}\"\n      certFile: \"{gcert_f}\"\n      keyFile: \"{gkey_f}\"\n"),
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        last(&r.text().await.unwrap())["result"]["content"][0]["text"],
        "hello mcp-gateway"
    );
}

/// `check` reads the listener's certificate and key as the start does: a missing file,
/// a key that belongs to another certificate and PEM that is not a certificate are
/// reported with the file and the key, and a good pair passes.
#[test]
fn check_reads_the_listener_certificate() {
    let dir = tempdir();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server();
    let (_, other_key) = ca.server();
    let cert_f = write(dir.path(), "server.pem", &cert);
    let key_f = write(dir.path(), "server.key", &key);
    let other_key_f = write(dir.path(), "other.key", &other_key);
    let junk_f = write(
        dir.path(),
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    let missing = dir.path().join("missing.pem");
    let missing_f = missing.to_str().unwrap();
    let config = |name: &str, cert: &str, key: &str| {
        let yaml = base_config("http://127.0.0.1:9/mcp", &dir.path().join("a.db"), "").replace(
            "  addr: \"127.0.0.1:0\"\n",
            &format!("  addr: \"127.0.0.1:0\"\n  tls:\n    certFile: \"{cert}\"\n    keyFile: \"{key}\"\n"),
        );
        write(dir.path(), name, &yaml)
    };
    let ok = config("ok.yaml", &cert_f, &key_f);
    let (code, out, err) = run(&["check", "--config", &ok], dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");

    let gone = config("gone.yaml", missing_f, &key_f);
    let (code, out, err) = run(&["check", "--config", &gone], dir.path(), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("gone.yaml") && err.contains("server.tls") && err.contains(missing_f),
        "{err}"
    );

    let mismatch = config("mismatch.yaml", &cert_f, &other_key_f);
    let (code, out, err) = run(&["check", "--config", &mismatch], dir.path(), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("mismatch.yaml")
            && err.contains("server.tls.keyFile")
            && err.contains("does not match"),
        "{err}"
    );
    // The key file's content is never printed.
    let body = other_key.lines().nth(1).unwrap();
    assert!(!err.contains(body) && !out.contains(body), "{err}");

    let junk = config("junk.yaml", &junk_f, &key_f);
    let (code, out, err) = run(&["check", "--config", &junk], dir.path(), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("junk.yaml") && err.contains(&junk_f), "{err}");
}

/// The README's complete configuration example passes `check` as written, with only its
/// file paths pointed at real files (certificates made here) and its `${VAR}`s set.
#[test]
fn the_readme_complete_example_passes_check() {
    let readme = include_str!("../README.md");
    let example = mcp_testkit::fenced_block(readme, "A complete example:", "yaml");

    let dir = tempdir();
    let server_ca = Ca::new("server CA");
    let clients_ca = Ca::new("clients CA");
    let upstream_ca = Ca::new("upstream CA");
    let (cert, key) = server_ca.server();
    let (gw_cert, gw_key) = upstream_ca.client("gateway");
    let files = [
        ("/etc/mcp/tls/tls.crt", cert),
        ("/etc/mcp/tls/tls.key", key),
        ("/etc/mcp/tls/clients-ca.crt", clients_ca.pem()),
        ("/etc/mcp/upstream-ca.crt", upstream_ca.pem()),
        ("/etc/mcp/gw.crt", gw_cert),
        ("/etc/mcp/gw.key", gw_key),
    ];
    let mut yaml = example.to_owned();
    for (i, (path, pem)) in files.iter().enumerate() {
        assert!(
            yaml.contains(path),
            "the README example no longer names {path}"
        );
        yaml = yaml.replace(path, &write(dir.path(), &format!("f{i}.pem"), pem));
    }
    let db = dir.path().join("audit").join("audit.db");
    yaml = yaml.replace("/var/lib/mcp-gateway/audit.db", db.to_str().unwrap());
    assert!(
        !yaml.contains("/etc/") && !yaml.contains("/var/"),
        "a path of the README example is not provided by this test:\n{yaml}"
    );
    let config = write(dir.path(), "gateway.yaml", &yaml);
    let env = [
        ("MCP_AUTH_API_KEY", "Zq7!kP2@wL9#xR4$aaBB"),
        ("MCP_BEARER", "tok_0123456789abcdefghijklmnopqrstuvwxyzAB"),
        ("MCP_ADMIN_PASSWORD", "a-Long-passw0rd!"),
        ("MCP_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("CI_KEY", "Yq7!kP2@wL9#xR4$bbCC"),
        ("UPSTREAM_TOKEN", "upstream-token"),
    ];
    let (code, out, err) = run(&["check", "--config", &config], dir.path(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("listening on 0.0.0.0:8443") && out.contains("1 upstream(s)"),
        "{out}"
    );
    // `check` runs beside the live gateway: it opens, creates and writes no storage.
    assert!(!db.exists(), "check created the audit storage");
    // The seed settings it accepts without acting on are pointed out, with their lines.
    for key in ["server.mode", "secrets"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("note: ") && l.contains(&format!(": {key}: "))),
            "{err}"
        );
    }
    // Without one of its variables the same file is refused, naming the variable.
    let (code, _, err) = run(&["check", "--config", &config], dir.path(), &env[1..]);
    assert_ne!(code, 0);
    assert!(err.contains("MCP_AUTH_API_KEY"), "{err}");
}
