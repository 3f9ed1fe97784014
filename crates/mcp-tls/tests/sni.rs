//! A client that sends an IP address as its server name (SNI) cannot flood the log:
//! every such handshake is counted, and logged at most once a minute, not at `warn`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use mcp_tls::{ConnectionLimit, TlsAcceptor};

/// `openssl s_client` with this SNI (none when `None`), one HTTP request; the output.
fn s_client_sni(addr: SocketAddr, sni: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = Command::new(openssl());
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-ign_eof");
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    if let Some(mut stdin) = child.stdin.take() {
        let _ =
            stdin.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    }
    let out = child.wait_with_output().expect("openssl output");
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_address_sni_is_counted_and_logged_once() {
    let _ = logs();
    let ca = Ca::new("SNI CA");
    let (cert, key) = ca.server("sni");
    let files = Files::new(&cert, &key);
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    let limit = ConnectionLimit::new(1000);
    let l = limit.clone();
    let running = start_with(
        Some(acceptor),
        move |s| s.connection_limit(l),
        echo_router(),
    )
    .await;
    let addr = running.addr;
    const N: u64 = 15;
    for _ in 0..N {
        let out = tokio::task::spawn_blocking(move || s_client_sni(addr, Some("127.0.0.1")))
            .await
            .unwrap();
        assert!(out.contains("HTTP/1.1 200"), "{out}");
    }
    // A DNS name, and no SNI at all, are not counted.
    for sni in [Some("localhost"), None] {
        let out = tokio::task::spawn_blocking(move || s_client_sni(addr, sni))
            .await
            .unwrap();
        assert!(out.contains("HTTP/1.1 200"), "{out}");
    }
    let stats = limit.stats();
    assert_eq!(stats.tls_sni_ip_address, N, "{stats:?}");
    assert_eq!(stats.tls_sni_invalid, 0, "{stats:?}");
    assert_eq!(stats.accepted, N + 2, "{stats:?}");
    // One line for all of them (at info: not a problem of the server's configuration),
    // and nothing from rustls itself.
    assert_eq!(
        lines_with("SNI", ""),
        1,
        "{}",
        String::from_utf8_lossy(&logs().lock().unwrap())
    );
    assert_eq!(lines_with("SNI", " INFO "), 1);
    assert_eq!(lines_with(" WARN ", ""), 0);
    running.shutdown().await;
}
