//! A reload that changes the client trust (a CRL, the client CA bundle) reaches the
//! connections already open: a connection whose client chain the new trust refuses gives
//! no identity to its next request and is closed; one whose chain still verifies keeps
//! serving, untouched. Over real TLS sockets, HTTP/1.1 kept alive and HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use mcp_tls::{ClientAuth, ReloadOutcome, TlsAcceptor};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

fn echo_request() -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get("https://localhost/echo")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap()
}

/// An open connection: HTTP/1.1 kept alive or HTTP/2, and the task driving it (it ends
/// when the connection closes).
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>),
}

struct Open {
    send: Sender,
    conn: JoinHandle<()>,
}

impl Open {
    async fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, h2: bool) -> Self {
        let mut c = (*cfg).clone();
        c.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(c))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let io = hyper_util::rt::TokioIo::new(tls);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            Self {
                send: Sender::H2(send),
                conn,
            }
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            Self {
                send: Sender::H1(send),
                conn,
            }
        }
    }

    /// One GET /echo on the open connection: the client CN the handler saw, or why there
    /// is no answer.
    async fn cn(&mut self) -> Result<Option<String>, String> {
        let r = match &mut self.send {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("closed: {e}"))?;
                s.send_request(echo_request()).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("closed: {e}"))?;
                s.send_request(echo_request()).await
            }
        };
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

    /// Waits (wide margin) for the server to close the connection.
    async fn closed_by_server(self) -> bool {
        let Self { send, conn } = self;
        // Dropping the sender would let the client close by itself: keep it.
        let closed = tokio::time::timeout(Duration::from_secs(60), conn).await;
        drop(send);
        closed.is_ok()
    }

    fn is_open(&self) -> bool {
        !self.conn.is_finished()
    }
}

async fn served_as(open: &mut Open, cn: &str) {
    assert_eq!(open.cn().await, Ok(Some(cn.to_owned())), "{cn}");
}

/// The request after the trust change carries no identity (or finds the connection
/// closed), and the connection is closed by the server.
async fn refused_and_closed(mut open: Open, what: &str) {
    let late = open.cn().await;
    assert!(
        !matches!(&late, Ok(Some(_))),
        "{what}: a request on an open connection ran as a certificate the new trust refuses: {late:?}"
    );
    assert!(
        open.closed_by_server().await,
        "{what}: the connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_reload_reaches_open_connections_of_the_revoked_client_only() {
    let ca = Ca::new("Open CRL CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca.pem());
    files.write("ca.crl", &ca.crl(&[]));
    let mut cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    cfg.crl_files = vec![files.path("ca.crl")];
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let server = start(Some(acceptor.clone())).await;
    let (vc, vk) = ca.client("victim", 7);
    let (bc, bk) = ca.client("bystander", 8);
    let victim = client_config(&ca.der(), BOTH, Some((&vc, &vk)));
    let bystander = client_config(&ca.der(), BOTH, Some((&bc, &bk)));

    let mut victims = Vec::new();
    let mut bystanders = Vec::new();
    for h2 in [false, true] {
        let mut v = Open::connect(server.addr, victim.clone(), h2).await;
        served_as(&mut v, "victim").await;
        victims.push((h2, v));
        let mut b = Open::connect(server.addr, bystander.clone(), h2).await;
        served_as(&mut b, "bystander").await;
        bystanders.push(b);
    }

    // A reload that changes nothing relevant touches nobody.
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Unchanged);
    for (_, v) in &mut victims {
        served_as(v, "victim").await;
    }

    files.write("ca.crl", &ca.crl(&[7]));
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);

    for (h2, v) in victims {
        refused_and_closed(v, if h2 { "HTTP/2" } else { "HTTP/1.1" }).await;
    }
    // The bystander's open connections keep serving as it, request after request.
    for b in &mut bystanders {
        for _ in 0..3 {
            served_as(b, "bystander").await;
        }
        assert!(b.is_open());
    }
    // A new connection of the revoked client is refused; the bystander's is served.
    assert!(
        get_echo(server.addr, full_handshakes(&victim))
            .await
            .is_err()
    );
    let seen = get_echo(server.addr, bystander.clone()).await.unwrap();
    assert_eq!(seen.json["client"]["cn"], "bystander");
    drop(bystanders);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_rotation_reaches_open_connections_of_the_dropped_ca_only() {
    let ca1 = Ca::new("Dropped CA");
    let ca2 = Ca::new("Kept CA");
    let (cert, key) = ca1.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &format!("{}{}", ca1.pem(), ca2.pem()));
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let server = start(Some(acceptor.clone())).await;
    let (c1, k1) = ca1.client("of-dropped-ca", 1);
    let (c2, k2) = ca2.client("of-kept-ca", 2);
    let dropped = client_config(&ca1.der(), BOTH, Some((&c1, &k1)));
    let kept = client_config(&ca1.der(), BOTH, Some((&c2, &k2)));

    let mut refused = Vec::new();
    let mut keeping = Vec::new();
    for h2 in [false, true] {
        let mut d = Open::connect(server.addr, dropped.clone(), h2).await;
        served_as(&mut d, "of-dropped-ca").await;
        refused.push((h2, d));
        let mut k = Open::connect(server.addr, kept.clone(), h2).await;
        served_as(&mut k, "of-kept-ca").await;
        keeping.push(k);
    }

    replace_file(files.dir.path(), "ca.pem", &ca2.pem());
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);

    for (h2, d) in refused {
        refused_and_closed(d, if h2 { "HTTP/2" } else { "HTTP/1.1" }).await;
    }
    for k in &mut keeping {
        for _ in 0..3 {
            served_as(k, "of-kept-ca").await;
        }
        assert!(k.is_open());
    }
    drop(keeping);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_reload_leaves_open_client_connections_alone() {
    let ca = Ca::new("Open CRL CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca.pem());
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let server = start(Some(acceptor.clone())).await;
    let (c, k) = ca.client("steady", 3);
    let client = client_config(&ca.der(), BOTH, Some((&c, &k)));
    let mut open = Vec::new();
    for h2 in [false, true] {
        let mut o = Open::connect(server.addr, client.clone(), h2).await;
        served_as(&mut o, "steady").await;
        open.push(o);
    }
    let (cert2, key2) = ca.server("server-2");
    replace_file(files.dir.path(), "server.key", &key2);
    replace_file(files.dir.path(), "server.pem", &cert2);
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);
    for o in &mut open {
        served_as(o, "steady").await;
        assert!(o.is_open());
    }
    drop(open);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_loop_of_your_own_gets_the_check_per_request() {
    // A loop that never closes a connection: the identity is still withdrawn per request,
    // by ConnectionInfo with the check from accept_checked.
    let ca = Ca::new("Own loop CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca.pem());
    files.write("ca.crl", &ca.crl(&[]));
    let mut cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    cfg.crl_files = vec![files.path("ca.crl")];
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let loop_acceptor = acceptor.clone();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let acceptor = loop_acceptor.clone();
            tokio::spawn(async move {
                let Ok((stream, info, check)) = acceptor.accept_checked(tcp).await else {
                    return;
                };
                assert!(check.is_some());
                let svc = mcp_tls::ConnectionInfo::new(echo_router(), peer, Some(info))
                    .client_cert_check(check);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(svc),
                )
                .await;
            });
        }
    });
    let (vc, vk) = ca.client("victim", 7);
    let (bc, bk) = ca.client("bystander", 8);
    let victim = client_config(&ca.der(), BOTH, Some((&vc, &vk)));
    let bystander = client_config(&ca.der(), BOTH, Some((&bc, &bk)));
    let mut opened = Vec::new();
    for h2 in [false, true] {
        let mut v = Open::connect(addr, victim.clone(), h2).await;
        served_as(&mut v, "victim").await;
        let mut b = Open::connect(addr, bystander.clone(), h2).await;
        served_as(&mut b, "bystander").await;
        opened.push((v, b));
    }
    files.write("ca.crl", &ca.crl(&[7]));
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);
    for (v, b) in &mut opened {
        for _ in 0..2 {
            // The loop keeps the connection open: the request is served, as nobody.
            assert_eq!(v.cn().await, Ok(None));
            served_as(b, "bystander").await;
        }
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_in_progress_does_not_outlive_the_revocation() {
    // An endless response (an SSE stream) started before the CRL reload: its connection is
    // closed at most the write timeout after the reload, over HTTP/1.1 and HTTP/2.
    let ca = Ca::new("Open CRL CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca.pem());
    files.write("ca.crl", &ca.crl(&[]));
    let mut cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    cfg.crl_files = vec![files.path("ca.crl")];
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
    let server = start_with(
        Some(acceptor.clone()),
        |s| s.write_timeout(Duration::from_secs(2)),
        echo_router().route("/events", endless),
    )
    .await;
    let (vc, vk) = ca.client("victim", 7);
    let victim = client_config(&ca.der(), BOTH, Some((&vc, &vk)));
    let mut bodies = Vec::new();
    for h2 in [false, true] {
        let mut open = Open::connect(server.addr, victim.clone(), h2).await;
        let req = http::Request::get("https://localhost/events")
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = match &mut open.send {
            Sender::H1(s) => s.send_request(req).await.unwrap(),
            Sender::H2(s) => s.send_request(req).await.unwrap(),
        };
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        // Streaming before the reload (positive control).
        assert!(body.frame().await.unwrap().is_ok());
        bodies.push((h2, open, body));
    }
    files.write("ca.crl", &ca.crl(&[7]));
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);
    for (h2, open, mut body) in bodies {
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "h2={h2}: the response outlived the revocation"
        );
        assert!(open.closed_by_server().await, "h2={h2}: still open");
    }
    server.shutdown().await;
}
