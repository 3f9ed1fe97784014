//! A TLS test server: serves `GET /` (the request's TLS facts as JSON) with mcp-tls's
//! acceptor and accept loop. Used by `scripts/testssl.sh`.
//!
//! ```text
//! cargo run -p mcp-tls --example tls-server -- [--addr 127.0.0.1:0] [--cert F --key F]
//!     [--ca F --client-auth required|optional] [--min TLS1.2] [--max TLS1.3]
//! ```
//!
//! Without `--cert`/`--key`, a CA and a certificate for `localhost` / `127.0.0.1` are
//! made with rcgen in a temporary directory (the CA is written beside them as `ca.pem`).
//! Prints `listening on ADDR` once ready; stops on Ctrl-C (draining).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use axum::{Extension, Json, Router, routing::get};
use mcp_core::{PeerAddr, TlsInfo};
use mcp_tls::{Server, TlsAcceptor, TlsConfig};

async fn info(
    tls: Option<Extension<TlsInfo>>,
    Extension(peer): Extension<PeerAddr>,
) -> Json<serde_json::Value> {
    let tls = tls.map(|Extension(t)| t);
    Json(serde_json::json!({
        "peer": peer.0.to_string(),
        "protocol": tls.as_ref().and_then(|t| t.protocol),
        "alpn": tls.as_ref().and_then(|t| t.alpn.clone()),
        "sni": tls.as_ref().and_then(|t| t.server_name.clone()),
        "client_cn": tls.as_ref().and_then(|t| t.client.as_ref()).and_then(|c| c.common_name.clone()),
        "client_spiffe": tls.as_ref().and_then(|t| t.client.as_ref()).and_then(|c| c.spiffe_id().ok().flatten()),
    }))
}

fn generate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "mcp-tls example CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(90);
    let cert = p.signed_by(&key, &ca).unwrap();
    let (c, k) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&c, cert.pem() + &ca.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    (c, k)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:0".to_string();
    let (mut cert, mut key, mut ca, mut mode) = (None, None, None, None);
    let (mut min, mut max) = (None, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = val()?,
            "--cert" => cert = Some(PathBuf::from(val()?)),
            "--key" => key = Some(PathBuf::from(val()?)),
            "--ca" => ca = Some(PathBuf::from(val()?)),
            "--client-auth" => mode = Some(val()?),
            "--min" => min = Some(val()?),
            "--max" => max = Some(val()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let tmp = std::env::temp_dir().join(format!("mcp-tls-example-{}", std::process::id()));
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            std::fs::create_dir_all(&tmp)?;
            eprintln!("generated a CA and a certificate in {}", tmp.display());
            generate(&tmp)
        }
    };
    let mut cfg = TlsConfig::new(cert, key);
    if let Some(ca) = ca {
        cfg.ca_file = Some(ca);
        cfg.client_auth = mode.as_deref().unwrap_or("required").parse()?;
    }
    if let Some(v) = min {
        cfg.min_version = v.parse()?;
    }
    if let Some(v) = max {
        cfg.max_version = v.parse()?;
    }
    let acceptor = TlsAcceptor::from_config(&cfg)?;
    let _reloader = acceptor.spawn_reloader()?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new().route("/", get(info));
    Server::new(listener)
        .tls(acceptor)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .serve(app)
        .await?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
