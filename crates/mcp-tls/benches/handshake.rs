//! TLS handshakes per second over loopback TCP: mcp-tls's `TlsAcceptor` (current config
//! from the reload swap, TlsInfo and client identity extracted) against a bare
//! `tokio_rustls::TlsAcceptor` holding the very same `Arc<ServerConfig>`, in the same
//! run. Full handshakes (no resumption), resumed handshakes (TLS 1.3 tickets), and full
//! handshakes under required mutual TLS (where our acceptor also parses the client
//! certificate into a `ClientCertIdentity`). Full handshakes with an ECDSA P-256 and an
//! RSA-2048 server key side by side (`full_handshake_by_key`); for nginx beside them,
//! see `scripts/load.sh tls-handshake`.
//!
//! One iteration = TCP connect + TLS handshake + one byte written by the server after its
//! side of the handshake completed and read by the client.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_tls::{ClientAuth, TlsAcceptor, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone)]
enum Acceptor {
    Ours(TlsAcceptor),
    Bare(tokio_rustls::TlsAcceptor),
}

async fn spawn_server(acceptor: Acceptor) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Acceptor::Ours(a) => {
                        if let Ok((mut s, info)) = a.accept(tcp).await {
                            std::hint::black_box(&info);
                            let _ = s.write_all(b"x").await;
                            let _ = s.flush().await;
                        }
                    }
                    Acceptor::Bare(a) => {
                        if let Ok(mut s) = a.accept(tcp).await {
                            let _ = s.write_all(b"x").await;
                            let _ = s.flush().await;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn handshake(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).await.unwrap();
    tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    client: (Vec<CertificateDer<'static>>, String),
}

/// A PKI whose server key is ECDSA P-256 (rcgen's default).
fn pki() -> Pki {
    pki_with(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A PKI whose server certificate has a key of this algorithm (ECDSA P-256 or RSA-2048).
fn pki_with(server_alg: &'static rcgen::SignatureAlgorithm) -> Pki {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "bench CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate_for(server_alg).unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let ckey = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["svc.cluster.local".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "svc");
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://example.org/ns/default/sa/svc".try_into().unwrap(),
    ));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let ccert = p.signed_by(&ckey, &ca).unwrap();
    Pki {
        ca: ca.der().clone(),
        client: (vec![ccert.der().clone()], ckey.serialize_pem()),
        dir,
    }
}

fn client(pki: &Pki, resume: bool, with_cert: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(mcp_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = if with_cert {
        b.with_client_auth_cert(
            pki.client.0.clone(),
            PrivateKeyDer::from_pem_slice(pki.client.1.as_bytes()).unwrap(),
        )
        .unwrap()
    } else {
        b.with_no_client_auth()
    };
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(cfg)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pki = pki();
    let files = TlsConfig::new(
        pki.dir.path().join("server.pem"),
        pki.dir.path().join("server.key"),
    );
    let ours = TlsAcceptor::from_config(&files).unwrap();
    let bare = tokio_rustls::TlsAcceptor::from(ours.server_config());
    let (ours_addr, bare_addr) = rt.block_on(async {
        (
            spawn_server(Acceptor::Ours(ours.clone())).await,
            spawn_server(Acceptor::Bare(bare)).await,
        )
    });
    let mtls_cfg = files
        .clone()
        .client_auth(ClientAuth::Required, pki.dir.path().join("ca.pem"));
    let ours_m = TlsAcceptor::from_config(&mtls_cfg).unwrap();
    let bare_m = tokio_rustls::TlsAcceptor::from(ours_m.server_config());
    let (ours_m_addr, bare_m_addr) = rt.block_on(async {
        (
            spawn_server(Acceptor::Ours(ours_m.clone())).await,
            spawn_server(Acceptor::Bare(bare_m)).await,
        )
    });

    let full = client(&pki, false, false);
    let resumed = client(&pki, true, false);
    let mtls = client(&pki, false, true);
    // Check that the resumed benchmark really resumes.
    rt.block_on(async {
        for addr in [ours_addr, bare_addr] {
            handshake(addr, resumed.clone()).await;
            assert!(handshake(addr, resumed.clone()).await, "no resumption");
            assert!(!handshake(addr, full.clone()).await);
        }
    });

    let mut g = c.benchmark_group("full_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tokio-rustls", |b| {
        b.to_async(&rt).iter(|| handshake(bare_addr, full.clone()))
    });
    g.bench_function("mcp-tls", |b| {
        b.to_async(&rt).iter(|| handshake(ours_addr, full.clone()))
    });
    g.finish();

    // The server's key type: its signature is most of a full handshake's server CPU.
    let rsa_pki = pki_with(&rcgen::PKCS_RSA_SHA256);
    let rsa = TlsAcceptor::from_config(&TlsConfig::new(
        rsa_pki.dir.path().join("server.pem"),
        rsa_pki.dir.path().join("server.key"),
    ))
    .unwrap();
    let rsa_addr = rt.block_on(spawn_server(Acceptor::Ours(rsa)));
    let rsa_full = client(&rsa_pki, false, false);
    let mut g = c.benchmark_group("full_handshake_by_key");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ecdsa-p256", |b| {
        b.to_async(&rt).iter(|| handshake(ours_addr, full.clone()))
    });
    g.bench_function("rsa-2048", |b| {
        b.to_async(&rt)
            .iter(|| handshake(rsa_addr, rsa_full.clone()))
    });
    g.finish();

    let mut g = c.benchmark_group("resumed_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tokio-rustls", |b| {
        b.to_async(&rt)
            .iter(|| handshake(bare_addr, resumed.clone()))
    });
    g.bench_function("mcp-tls", |b| {
        b.to_async(&rt)
            .iter(|| handshake(ours_addr, resumed.clone()))
    });
    g.finish();

    let mut g = c.benchmark_group("mtls_full_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tokio-rustls", |b| {
        b.to_async(&rt)
            .iter(|| handshake(bare_m_addr, mtls.clone()))
    });
    g.bench_function("mcp-tls", |b| {
        b.to_async(&rt)
            .iter(|| handshake(ours_m_addr, mtls.clone()))
    });
    g.finish();

    // Paired A/B under load: alternate blocks of handshakes through each acceptor, so
    // that machine noise hits both alike, and report the median per-round ratio.
    if std::env::var_os("MCP_TLS_PAIRED").is_some() {
        for (name, ours_a, bare_a, cfg) in [
            ("full_handshake", ours_addr, bare_addr, full.clone()),
            ("resumed_handshake", ours_addr, bare_addr, resumed.clone()),
            (
                "mtls_full_handshake",
                ours_m_addr,
                bare_m_addr,
                mtls.clone(),
            ),
        ] {
            let mut ratios = Vec::new();
            let (mut t_ours, mut t_bare) = (0f64, 0f64);
            for round in 0..20 {
                let block = |addr| {
                    let cfg = cfg.clone();
                    rt.block_on(async move {
                        let t = std::time::Instant::now();
                        for _ in 0..100 {
                            handshake(addr, cfg.clone()).await;
                        }
                        t.elapsed().as_secs_f64()
                    })
                };
                // Alternate which goes first.
                let (o, b) = if round % 2 == 0 {
                    let o = block(ours_a);
                    (o, block(bare_a))
                } else {
                    let b = block(bare_a);
                    (block(ours_a), b)
                };
                t_ours += o;
                t_bare += b;
                ratios.push(o / b);
            }
            ratios.sort_by(|a, b| a.total_cmp(b));
            println!(
                "paired {name}: mcp-tls {:.0}/s, tokio-rustls {:.0}/s, median ratio (time mcp-tls / tokio-rustls) {:.3}, range {:.3}..{:.3}, 20 rounds x 100 handshakes each",
                2000.0 / t_ours,
                2000.0 / t_bare,
                ratios[10],
                ratios[0],
                ratios[19]
            );
        }
    }

    // What our acceptor adds under mTLS: reading the identity from the client certificate.
    let der = pki.client.0[0].clone();
    c.bench_function("identity_from_der", |b| {
        b.iter(|| mcp_tls::identity_from_der(std::hint::black_box(&der)))
    });
}

criterion_group!(handshakes, benches);
criterion_main!(handshakes);
