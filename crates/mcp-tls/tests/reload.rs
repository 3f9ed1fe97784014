//! Hot reload under a steady stream of connections: zero failed handshakes, the new
//! certificate served, broken replacements refused, open connections unaffected unless
//! the new client trust refuses their certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use mcp_tls::{ClientAuth, ReloadOutcome, TlsAcceptor};

/// Sequential TLS connections from several tasks until stopped; records the CN served.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, configs: Vec<Arc<rustls::ClientConfig>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = configs
            .into_iter()
            .map(|cfg| {
                let (stop, ok, cfg) = (stop.clone(), ok.clone(), cfg.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut failures = Vec::new();
                    // Bounded: at most 20000 connections per worker.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match get_echo(addr, cfg.clone()).await {
                            Ok(s) => {
                                seen.push(cn(&s.server_cert));
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    (seen, failures)
                })
            })
            .collect();
        Self { stop, ok, tasks }
    }

    async fn wait_for_more(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "load made no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> (Vec<Vec<String>>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        let mut failures = Vec::new();
        for t in self.tasks {
            let (s, f) = t.await.unwrap();
            seen.push(s);
            failures.extend(f);
        }
        (seen, failures)
    }
}

async fn wait_until_served(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>, want: &str) {
    let cfg = full_handshakes(&cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = get_echo(addr, cfg.clone()).await.unwrap();
        if cn(&s.server_cert) == want {
            return;
        }
        assert!(Instant::now() < deadline, "{want} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_under_load_zero_failures_new_cert_served_broken_ones_refused() {
    let ca = Ca::new("Reload CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    // A long period: the change must be picked up by the watcher.
    let cfg = files.config().rotation_interval(Duration::from_secs(3600));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let _reloader = acceptor.spawn_reloader().unwrap();
    let server = start(Some(acceptor.clone())).await;
    let client = client_config(&ca.der(), BOTH, None);
    let dir = files.dir.path();

    // Three workers make full handshakes (they see which certificate is served now), one
    // resumes sessions (resumption across a certificate reload must keep working).
    let full = full_handshakes(&client);
    let load = Load::start(
        server.addr,
        vec![full.clone(), full.clone(), full, client.clone()],
    );
    load.wait_for_more(100).await;

    // cert-manager style: both files replaced by rename.
    let (cert2, key2) = ca.server("server-2");
    replace_file(dir, "server.key", &key2);
    replace_file(dir, "server.pem", &cert2);
    wait_until_served(server.addr, client.clone(), "server-2").await;
    load.wait_for_more(100).await;

    // A broken certificate file: refused, the current one stays.
    replace_file(dir, "server.pem", "-----BEGIN CERTIFICATE-----\ngarbage\n");
    assert!(acceptor.reload().await.is_err());
    load.wait_for_more(100).await;
    // A valid certificate with a key that does not match it: refused too.
    let (cert3, _) = ca.server("server-3");
    let (_, wrong_key) = ca.server("server-x");
    replace_file(dir, "server.key", &wrong_key);
    replace_file(dir, "server.pem", &cert3);
    assert!(matches!(
        acceptor.reload().await,
        Err(mcp_tls::TlsError::KeyMismatch { .. })
    ));
    load.wait_for_more(100).await;
    let still = get_echo(server.addr, full_handshakes(&client))
        .await
        .unwrap();
    assert_eq!(cn(&still.server_cert), "server-2");

    let (seen, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed handshakes: {failures:?}");
    let all: Vec<&String> = seen.iter().flatten().collect();
    eprintln!(
        "{} connections during the reloads, {} failed",
        all.len(),
        failures.len()
    );
    assert!(all.iter().any(|c| *c == "server-2"));
    assert!(!all.iter().any(|c| *c == "server-3" || *c == "server-x"));
    // Per full-handshake worker, once the new certificate was served the old one never
    // came back.
    for s in &seen[..3] {
        if let Some(first_new) = s.iter().position(|c| c == "server-2") {
            assert!(s[first_new..].iter().all(|c| c == "server-2"), "{s:?}");
        }
    }

    // Repaired files are picked up.
    let (key4_cert, key4) = ca.server("server-4");
    replace_file(dir, "server.key", &key4);
    replace_file(dir, "server.pem", &key4_cert);
    wait_until_served(server.addr, client.clone(), "server-4").await;
    server.shutdown().await;
}

#[tokio::test]
async fn periodic_check_reloads_without_watching() {
    let ca = Ca::new("Reload CA");
    let (cert, key) = ca.server("server-1");
    let files = Files::new(&cert, &key);
    let cfg = files
        .config()
        .watch(false)
        .rotation_interval(Duration::from_secs(1));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let _reloader = acceptor.spawn_reloader().unwrap();
    let server = start(Some(acceptor.clone())).await;
    let client = client_config(&ca.der(), BOTH, None);
    // Unchanged files: nothing swapped.
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Unchanged);
    let (cert2, key2) = ca.server("server-2");
    replace_file(files.dir.path(), "server.key", &key2);
    replace_file(files.dir.path(), "server.pem", &cert2);
    wait_until_served(server.addr, client, "server-2").await;
    server.shutdown().await;
}

#[tokio::test]
async fn reload_keeps_open_connections_the_new_trust_admits_and_rotates_the_client_ca() {
    let ca1 = Ca::new("CA one");
    let (cert, key) = ca1.server("server-1");
    let files = Files::new(&cert, &key);
    files.write("ca.pem", &ca1.pem());
    let cfg = files
        .config()
        .client_auth(ClientAuth::Required, files.path("ca.pem"));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let server = start(Some(acceptor.clone())).await;
    let (c1, k1) = ca1.client("svc-old-ca", 1);
    let old_client = client_config(&ca1.der(), BOTH, Some((&c1, &k1)));

    // An open HTTP/1.1 keep-alive connection made under the first configuration.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(old_client.clone())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let get = || {
        http::Request::get("/echo")
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let served_as = async |send: &mut hyper::client::conn::http1::SendRequest<_>| {
        send.ready().await.map_err(|e| e.to_string())?;
        let r = send.send_request(get()).await.map_err(|e| e.to_string())?;
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        Ok::<_, String>(json["client"]["cn"].as_str().map(str::to_owned))
    };
    let old = Ok(Some("svc-old-ca".to_owned()));
    assert_eq!(served_as(&mut send).await, old);

    // Reloads the connection's certificate survives keep it open: a new server
    // certificate (the client trust unchanged), then a second CA added to the bundle.
    let ca2 = Ca::new("CA two");
    let (cert2, key2) = ca1.server("server-2");
    replace_file(files.dir.path(), "server.key", &key2);
    replace_file(files.dir.path(), "server.pem", &cert2);
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);
    assert_eq!(served_as(&mut send).await, old);
    replace_file(
        files.dir.path(),
        "ca.pem",
        &format!("{}{}", ca1.pem(), ca2.pem()),
    );
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);
    assert_eq!(served_as(&mut send).await, old);
    assert!(!conn.is_finished());

    // Rotate: the first CA dropped. The open connection of its client serves no request
    // as it any more, and is closed.
    replace_file(files.dir.path(), "ca.pem", &ca2.pem());
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Reloaded);
    let late = served_as(&mut send).await;
    assert!(!matches!(late, Ok(Some(_))), "{late:?}");
    assert!(
        tokio::time::timeout(Duration::from_secs(60), conn)
            .await
            .is_ok(),
        "the connection of the dropped CA's client stayed open"
    );

    // New connections: the old CA's client is refused (no resumption of its session
    // either), the new CA's is admitted.
    let r = get_echo(server.addr, old_client.clone()).await;
    assert!(r.is_err(), "client of the removed CA got through: {r:?}");
    let (c2, k2) = ca2.client("svc-new-ca", 2);
    let seen = get_echo(
        server.addr,
        client_config(&ca1.der(), BOTH, Some((&c2, &k2))),
    )
    .await
    .unwrap();
    assert_eq!(seen.json["client"]["cn"], "svc-new-ca");
    assert_eq!(cn(&seen.server_cert), "server-2");
    drop(send);
    server.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn kubernetes_secret_volume_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    // The layout kubelet writes: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/,
    // updated by creating a new timestamped directory and renaming a new ..data link
    // over the old one.
    let ca = Ca::new("K8s CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write_version = |name: &str, cn: &str| {
        let (cert, key) = ca.server(cn);
        std::fs::create_dir(d.join(name)).unwrap();
        std::fs::write(d.join(name).join("tls.crt"), cert).unwrap();
        std::fs::write(d.join(name).join("tls.key"), key).unwrap();
    };
    write_version("..2026_01_01_v1", "server-1");
    symlink("..2026_01_01_v1", d.join("..data")).unwrap();
    symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
    symlink("..data/tls.key", d.join("tls.key")).unwrap();
    let cfg = mcp_tls::TlsConfig::new(d.join("tls.crt"), d.join("tls.key"))
        .rotation_interval(Duration::from_secs(3600));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let _reloader = acceptor.spawn_reloader().unwrap();
    let server = start(Some(acceptor)).await;
    let client = client_config(&ca.der(), BOTH, None);
    wait_until_served(server.addr, client.clone(), "server-1").await;

    write_version("..2026_02_01_v2", "server-2");
    symlink("..2026_02_01_v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_01_01_v1")).unwrap();
    wait_until_served(server.addr, client, "server-2").await;
    server.shutdown().await;
}
