//! A client certificate is valid for every request it authenticates: one that expired (or
//! whose intermediate expired, or that a CRL revoked) cannot come back through TLS 1.3
//! tickets, TLS 1.2 session ids or TLS 1.2 tickets, and a connection kept open (HTTP/1.1
//! keep-alive, HTTP/2) serves no request past the chain's notAfter. Certificates here
//! expire a few seconds into the test; each attack has a positive control that resumes
//! (asserted from the client's side) and is served, so no test passes vacuously.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use mcp_tls::{ClientAuth, ReloadOutcome, TlsAcceptor};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::HandshakeKind;
use rustls::client::{Resumption, Tls12Resumption};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Seconds a short-lived certificate is valid for after it is made: room for the
/// positive controls on a loaded machine.
const LIFETIME: i64 = 12;

/// A moment `secs` from now, to the second (X.509 times have no fractions).
fn in_secs(secs: i64) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    time::OffsetDateTime::from_unix_timestamp(now + secs).unwrap()
}

/// Sleeps until `t` is two seconds in the past.
async fn wait_past(t: time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let end = t + time::Duration::seconds(2);
    if end > now {
        tokio::time::sleep((end - now).try_into().unwrap()).await;
    }
    assert!(time::OffsetDateTime::now_utc() > t + time::Duration::seconds(1));
}

/// A client certificate (PEM, key PEM) signed by `issuer`, valid until `not_after`.
fn client_cert(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    serial: u64,
    not_after: time::OffsetDateTime,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![format!("{cn}.svc.cluster.local")]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(serial.to_be_bytes().to_vec().into());
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = in_secs(-3600);
    p.not_after = not_after;
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Setup {
    ca: Ca,
    files: Files,
    acceptor: TlsAcceptor,
    server: Running,
}

/// A server requiring client certificates of one CA (with `crl` as its CRL file when
/// given), serving the echo handler.
async fn setup(crl: Option<&dyn Fn(&Ca) -> String>) -> Setup {
    let ca = Ca::new("Resumption CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca.pem());
    let mut cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    if let Some(crl) = crl {
        files.write("ca.crl", &crl(&ca));
        cfg.crl_files = vec![files.path("ca.crl")];
    }
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let server = start(Some(acceptor.clone())).await;
    Setup {
        ca,
        files,
        acceptor,
        server,
    }
}

/// A resuming client: `versions`, TLS 1.2 by session id only or by id or ticket, ALPN
/// `alpn`.
fn resuming_client(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    cert: &(String, String),
    tls12: Tls12Resumption,
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let base = client_config(&ca.der(), versions, Some((&cert.0, &cert.1)));
    let mut c = (*base).clone();
    c.resumption = Resumption::in_memory_sessions(64).tls12_resumption(tls12);
    c.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(c)
}

/// What one connection saw: how the handshake went (None when it failed) and the
/// client CN the echo handler reported, when it answered 200.
#[derive(Debug)]
struct Outcome {
    kind: Option<HandshakeKind>,
    served_as: Result<Option<String>, String>,
}

impl Outcome {
    /// Served as `cn` (the identity reached the handler).
    fn served_as(&self, cn: &str) -> bool {
        matches!(&self.served_as, Ok(Some(c)) if c == cn)
    }
}

/// One connection, one GET /echo over HTTP/1.1.
async fn get(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Outcome {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => {
            return Outcome {
                kind: None,
                served_as: Err(format!("handshake: {e}")),
            };
        }
    };
    let kind = tls.get_ref().1.handshake_kind();
    let served_as = async {
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut buf)).await;
        match read {
            Err(_) => return Err("no answer in 30 s".to_owned()),
            Ok(Err(e)) if buf.is_empty() => return Err(format!("read: {e}")),
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Err(format!("no HTTP response: {text:?}"));
        };
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("status: {head}"));
        }
        let json: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
        Ok(json["client"]["cn"].as_str().map(str::to_owned))
    }
    .await;
    Outcome { kind, served_as }
}

/// The attack for one way of resuming: the certificate is served and resumed while
/// valid; once it has expired neither a full handshake nor a resumption is served, while
/// a client with a valid certificate still resumes.
async fn expired_certificate_does_not_resume(
    versions: &[&'static rustls::SupportedProtocolVersion],
    tls12: Tls12Resumption,
) {
    let Setup {
        ca, server, files, ..
    } = setup(None).await;
    let not_after = in_secs(LIFETIME);
    let short = client_cert(&ca.issuer, "short-lived", 1, not_after);
    let long = client_cert(&ca.issuer, "long-lived", 2, in_secs(3600));
    let attacker = resuming_client(&ca, versions, &short, tls12, b"http/1.1");
    let control = resuming_client(&ca, versions, &long, tls12, b"http/1.1");

    let first = get(server.addr, attacker.clone()).await;
    assert_eq!(first.kind, Some(HandshakeKind::Full), "{first:?}");
    assert!(first.served_as("short-lived"), "{first:?}");
    // Positive control: while valid, the session resumes and is served.
    let resumed = get(server.addr, attacker.clone()).await;
    assert_eq!(resumed.kind, Some(HandshakeKind::Resumed), "{resumed:?}");
    assert!(resumed.served_as("short-lived"), "{resumed:?}");
    let c = get(server.addr, control.clone()).await;
    assert!(c.served_as("long-lived"), "{c:?}");

    wait_past(not_after).await;

    // The attack: resume the session saved while the certificate was valid (several
    // times: each resumption would hand out new tickets).
    for _ in 0..3 {
        let late = get(server.addr, attacker.clone()).await;
        assert!(
            late.served_as.is_err(),
            "an expired certificate was served through resumption: {late:?}"
        );
    }
    // Baseline: a full handshake with it is refused.
    let full = get(server.addr, full_handshakes(&attacker)).await;
    assert!(full.served_as.is_err(), "{full:?}");
    // Resumption still works for a valid certificate.
    let c = get(server.addr, control).await;
    assert_eq!(c.kind, Some(HandshakeKind::Resumed), "{c:?}");
    assert!(c.served_as("long-lived"), "{c:?}");
    drop(files);
    server.shutdown().await;
}

#[tokio::test]
async fn tls13_ticket_of_an_expired_certificate_is_not_resumed() {
    expired_certificate_does_not_resume(
        &[&rustls::version::TLS13],
        Tls12Resumption::SessionIdOrTickets,
    )
    .await;
}

#[tokio::test]
async fn tls12_session_id_of_an_expired_certificate_is_not_resumed() {
    expired_certificate_does_not_resume(&[&rustls::version::TLS12], Tls12Resumption::SessionIdOnly)
        .await;
}

#[tokio::test]
async fn tls12_ticket_of_an_expired_certificate_is_not_resumed() {
    expired_certificate_does_not_resume(
        &[&rustls::version::TLS12],
        Tls12Resumption::SessionIdOrTickets,
    )
    .await;
}

/// An intermediate CA under `root`, valid until `not_after`.
fn short_intermediate(
    root: &Ca,
    not_after: time::OffsetDateTime,
) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "Short-lived intermediate");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = in_secs(-3600);
    p.not_after = not_after;
    CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), &root.issuer).unwrap()
}

#[tokio::test]
async fn an_expired_intermediate_does_not_resume_either() {
    let Setup { ca, server, .. } = setup(None).await;
    let not_after = in_secs(LIFETIME);
    let inter = short_intermediate(&ca, not_after);
    // The leaf outlives its intermediate; the client sends leaf + intermediate.
    let (leaf, key) = client_cert(&inter, "behind-intermediate", 3, in_secs(3600));
    let chain = (format!("{leaf}{}", inter.pem()), key);
    let versions = [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ];
    let mut attackers = Vec::new();
    for v in versions {
        let attacker = resuming_client(
            &ca,
            v,
            &chain,
            Tls12Resumption::SessionIdOrTickets,
            b"http/1.1",
        );
        let first = get(server.addr, attacker.clone()).await;
        assert!(first.served_as("behind-intermediate"), "{first:?}");
        let resumed = get(server.addr, attacker.clone()).await;
        assert_eq!(resumed.kind, Some(HandshakeKind::Resumed), "{resumed:?}");
        assert!(resumed.served_as("behind-intermediate"), "{resumed:?}");
        attackers.push(attacker);
    }
    wait_past(not_after).await;
    for (v, attacker) in versions.iter().zip(attackers) {
        let late = get(server.addr, attacker).await;
        assert!(late.served_as.is_err(), "{v:?}: {late:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_session_of_a_certificate_revoked_later_is_not_resumed() {
    let Setup {
        ca,
        server,
        files,
        acceptor,
    } = setup(Some(&|ca: &Ca| ca.crl(&[]))).await;
    let valid = in_secs(3600);
    let victim = client_cert(&ca.issuer, "to-be-revoked", 7, valid);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        files.write("ca.crl", &ca.crl(&[]));
        let _ = acceptor.reload().await.unwrap();
        let attacker = resuming_client(
            &ca,
            versions,
            &victim,
            Tls12Resumption::SessionIdOnly,
            b"http/1.1",
        );
        let first = get(server.addr, attacker.clone()).await;
        assert!(first.served_as("to-be-revoked"), "{first:?}");
        let resumed = get(server.addr, attacker.clone()).await;
        assert_eq!(resumed.kind, Some(HandshakeKind::Resumed), "{resumed:?}");
        assert!(resumed.served_as("to-be-revoked"), "{resumed:?}");

        files.write("ca.crl", &ca.crl(&[7]));
        assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);
        let late = get(server.addr, attacker.clone()).await;
        assert!(late.served_as.is_err(), "{versions:?}: {late:?}");
    }
    server.shutdown().await;
}

fn echo_request() -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get("https://localhost/echo")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap()
}

/// The client CN a response reports, or why there is none.
async fn response_cn(
    r: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<Option<String>, String> {
    let r = r.map_err(|e| format!("request: {e}"))?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let body = r
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(json["client"]["cn"].as_str().map(str::to_owned))
}

async fn connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    hyper_util::rt::TokioIo::new(tls)
}

#[tokio::test]
async fn a_kept_alive_http1_connection_serves_nothing_past_not_after() {
    let Setup { ca, server, .. } = setup(None).await;
    let not_after = in_secs(LIFETIME);
    let short = client_cert(&ca.issuer, "short-lived", 1, not_after);
    let cfg = resuming_client(
        &ca,
        BOTH,
        &short,
        Tls12Resumption::SessionIdOnly,
        b"http/1.1",
    );
    let (mut send, conn) = hyper::client::conn::http1::handshake(connect(server.addr, cfg).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = send.send_request(echo_request()).await;
    assert_eq!(response_cn(r).await, Ok(Some("short-lived".to_owned())));
    wait_past(not_after).await;
    let late = match send.ready().await {
        Ok(()) => response_cn(send.send_request(echo_request()).await).await,
        Err(e) => Err(format!("closed: {e}")),
    };
    assert!(
        !matches!(&late, Ok(Some(_))),
        "a request past notAfter ran as the certificate's identity: {late:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_http2_connection_serves_nothing_past_not_after() {
    let Setup { ca, server, .. } = setup(None).await;
    let not_after = in_secs(LIFETIME);
    let short = client_cert(&ca.issuer, "short-lived", 1, not_after);
    let cfg = resuming_client(&ca, BOTH, &short, Tls12Resumption::SessionIdOnly, b"h2");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        connect(server.addr, cfg).await,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = send.send_request(echo_request()).await;
    assert_eq!(response_cn(r).await, Ok(Some("short-lived".to_owned())));
    // Streams opened one after another, the last past notAfter.
    wait_past(not_after).await;
    let late = match send.ready().await {
        Ok(()) => response_cn(send.send_request(echo_request()).await).await,
        Err(e) => Err(format!("closed: {e}")),
    };
    assert!(
        !matches!(&late, Ok(Some(_))),
        "a stream past notAfter ran as the certificate's identity: {late:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_response_in_progress_does_not_outlive_the_certificate() {
    // An endless response (an SSE stream) started while the certificate was valid: the
    // connection is closed at most the write timeout after notAfter.
    let ca = Ca::new("Resumption CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca.pem());
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let endless = axum::routing::get(|| async {
        let ticks = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"data: tick\n\n")),
                (),
            ))
        });
        axum::body::Body::from_stream(ticks)
    });
    let router = echo_router().route("/events", endless);
    let server = start_with(
        Some(acceptor),
        |s| s.write_timeout(Duration::from_secs(2)),
        router,
    )
    .await;
    let not_after = in_secs(LIFETIME);
    let short = client_cert(&ca.issuer, "short-lived", 1, not_after);
    let mut bodies = Vec::new();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let cfg = resuming_client(&ca, BOTH, &short, Tls12Resumption::SessionIdOnly, alpn);
        let io = connect(server.addr, cfg).await;
        let req = http::Request::get("https://localhost/events")
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = if alpn == b"h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        };
        assert_eq!(response.status(), 200);
        bodies.push((String::from_utf8_lossy(alpn), response.into_body()));
    }
    for (alpn, mut body) in bodies {
        // Read until the body ends (or fails): it must, some time after notAfter.
        let mut ticks = 0usize;
        let ended = tokio::time::timeout(Duration::from_secs(LIFETIME as u64 + 60), async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
                ticks += 1;
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "{alpn:?}: the response outlived the certificate"
        );
        assert!(ticks > 0, "{alpn:?}: nothing was streamed before the end");
        assert!(
            time::OffsetDateTime::now_utc() > not_after,
            "{alpn:?}: the response ended before notAfter"
        );
    }
    server.shutdown().await;
}
