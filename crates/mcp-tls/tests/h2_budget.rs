//! The memory budget of one connection (`ServerOptions::connection_memory_bytes`), over
//! real sockets with the `h2` crate as the client:
//! - request bodies held open across many streams (DATA without END_STREAM) count against
//!   it: the read that would go over it fails, new streams are refused (REFUSED_STREAM)
//!   while it is used up, and the budget comes back once those streams end;
//! - response bytes the loop holds for streams whose window stays (nearly) shut count
//!   against it too, and the write timeout resets those streams, which gives their
//!   bytes back: the same connection admits new streams again;
//! - another connection is served meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::{
    Router,
    routing::{get, post},
};
use bytes::Bytes;
use common::*;
use h2::Reason;
use mcp_tls::{ConnectionLimit, ConnectionStats};
use tokio::net::TcpStream;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// `/sink`: reads the whole request body (answers 400 when it cannot), `/huge`: 8 MiB in
/// one frame, `/echo`.
fn router() -> Router {
    let huge = Bytes::from(vec![b'h'; 8 * MIB]);
    Router::new()
        .route(
            "/sink",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route("/huge", get(move || async move { huge.clone() }))
        .layer(axum::extract::DefaultBodyLimit::max(64 * MIB))
        .merge(echo_router())
}

async fn start(limit: &ConnectionLimit, budget: u64) -> Running {
    let limit = limit.clone();
    start_with(
        None,
        move |s| {
            s.connection_limit(limit)
                .connection_memory_bytes(budget)
                .write_timeout(Duration::from_millis(800))
        },
        router(),
    )
    .await
}

/// An HTTP/2 client connection with `window` as its initial stream window.
async fn h2_client(addr: SocketAddr, window: u32) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn request(addr: SocketAddr, method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

/// Waits (up to 20 s) until the limit's stats satisfy `f`.
async fn stats_reach(limit: &ConnectionLimit, what: &str, f: impl Fn(ConnectionStats) -> bool) {
    for _ in 0..800 {
        if f(limit.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: {:?}", limit.stats());
}

/// A normal client on its own connection gets its answer.
async fn another_connection_is_served(addr: SocketAddr) {
    let mut send = h2_client(addr, 65_535).await;
    let (resp, _) = send
        .send_request(request(addr, "GET", "/echo"), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("another connection answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Opens a POST /sink stream and sends `n` bytes of body without END_STREAM; returns the
/// response future and the body sender (kept to hold the stream open).
async fn open_held_body(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    n: usize,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
    *send = send.clone().ready().await?;
    let (resp, mut body) = send.send_request(request(addr, "POST", "/sink"), false)?;
    body.reserve_capacity(n);
    body.send_data(Bytes::from(vec![b'b'; n]), false)?;
    Ok((resp, body))
}

#[tokio::test]
async fn request_bodies_held_open_across_streams_are_bounded_per_connection() {
    let limit = ConnectionLimit::new(100);
    // 256 KiB: four bodies of 64 KiB fit, a fifth does not.
    let server = start(&limit, 256 * KIB as u64).await;
    let addr = server.addr;
    for body_len in [64 * KIB, 60 * KIB, 100 * KIB] {
        let before = limit.stats();
        let mut send = h2_client(addr, 65_535).await;
        let mut held = Vec::new();
        let mut refused = 0;
        let mut failed = 0;
        for _ in 0..20 {
            match open_held_body(&mut send, addr, body_len).await {
                Ok(h) => held.push(h),
                Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
                Err(e) => panic!("opening a stream: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The body that went over the budget is answered (400: its read failed); the
        // streams opened once the budget was used up are refused.
        let mut still_open = Vec::new();
        for (resp, body) in held {
            match tokio::time::timeout(Duration::from_millis(300), resp).await {
                Ok(Ok(r)) => {
                    assert_eq!(r.status(), 400, "a body over the budget");
                    failed += 1;
                }
                Ok(Err(e)) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => still_open.push(body),
            }
        }
        let fit = 256 * KIB / body_len;
        assert!(
            still_open.len() <= fit,
            "{} request bodies of {body_len} bytes held open within a budget of 256 KiB",
            still_open.len()
        );
        assert!(refused > 0, "no stream refused ({body_len}-byte bodies)");
        stats_reach(&limit, "refusals counted", |s| {
            s.streams_refused_over_budget > before.streams_refused_over_budget
                && s.request_bodies_over_budget >= before.request_bodies_over_budget + failed
        })
        .await;
        another_connection_is_served(addr).await;
        // The held streams end: their bytes come back, and the same connection serves
        // bodies again.
        for mut body in still_open {
            body.send_reset(Reason::CANCEL);
        }
        let mut ok = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(s) = send.clone().ready().await else {
                break;
            };
            send = s;
            let (resp, mut body) = send
                .send_request(request(addr, "POST", "/sink"), false)
                .unwrap();
            body.send_data(Bytes::from_static(b"done"), true).unwrap();
            match resp.await {
                Ok(r) if r.status() == 200 => {
                    ok = true;
                    break;
                }
                Ok(r) => panic!("after the release: {}", r.status()),
                Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            ok,
            "the budget did not come back once the held streams ended"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn response_bytes_held_for_shut_windows_refuse_new_streams_until_cut() {
    let limit = ConnectionLimit::new(100);
    let server = start(&limit, MIB as u64).await;
    let addr = server.addr;
    // Variants: a one-byte window (hyper asks the body for its 8 MiB frame once), and
    // a one-byte window given back a byte at a time (a slow drip).
    for drip in [false, true] {
        let before = limit.stats();
        let mut send = h2_client(addr, 1).await;
        let (resp, _) = send
            .send_request(request(addr, "GET", "/huge"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let reader = if drip {
            // Takes what arrives and gives it back, a byte or so every 100 ms.
            Some(tokio::spawn(async move {
                while let Some(Ok(data)) = body.data().await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if body.flow_control().release_capacity(data.len()).is_err() {
                        break;
                    }
                }
            }))
        } else {
            tokio::spawn(async move {
                let _held = body;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            None
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The 8 MiB held for the first stream use the 1 MiB budget up: the next streams
        // are refused.
        let mut refused = 0;
        for _ in 0..5 {
            let Ok(s) = send.clone().ready().await else {
                break;
            };
            send = s;
            let (r, _) = send
                .send_request(request(addr, "GET", "/echo"), true)
                .unwrap();
            match r.await {
                Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
                Err(_) => break,
                Ok(r) => panic!("a stream admitted over the budget: {}", r.status()),
            }
        }
        assert!(refused > 0, "no stream refused (drip: {drip})");
        another_connection_is_served(addr).await;
        // The stalled stream is reset after the write timeout; the connection stays.
        stats_reach(&limit, "the stalled stream cut", |s| {
            s.streams_write_timed_out > before.streams_write_timed_out
                && s.streams_refused_over_budget > before.streams_refused_over_budget
        })
        .await;
        assert_eq!(limit.stats().write_timed_out, before.write_timed_out);
        // What it held is free again: the same connection admits a new stream.
        send = send.ready().await.unwrap();
        let (r, _) = send
            .send_request(request(addr, "GET", "/echo"), true)
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("a new stream answered")
            .unwrap();
        assert_eq!(r.status(), 200, "drip: {drip}");
        if let Some(r) = reader {
            r.abort();
        }
    }
    server.shutdown().await;
}

/// An HTTP/2 client connection from `from` (a loopback address).
async fn h2_client_from(from: &str, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

#[tokio::test]
async fn one_address_holds_its_budget_over_all_its_connections() {
    // 256 KiB per address, 1 MiB per connection: the address's budget binds.
    let limit = ConnectionLimit::new(100).per_client_memory(256 * KIB as u64);
    let server = start(&limit, MIB as u64).await;
    let addr = server.addr;
    let before = limit.stats();
    // Four connections from one address, each holding bodies of 64 KiB open.
    let mut held = Vec::new();
    let mut refused = 0;
    let mut sends = Vec::new();
    for _ in 0..4 {
        let mut send = h2_client(addr, 65_535).await;
        for _ in 0..3 {
            match open_held_body(&mut send, addr, 64 * KIB).await {
                Ok(h) => held.push(h),
                Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
                Err(e) => panic!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sends.push(send);
    }
    let mut open = 0;
    for (resp, _) in &mut held {
        match tokio::time::timeout(Duration::from_millis(300), &mut *resp).await {
            Ok(Ok(r)) => assert_eq!(r.status(), 400, "a body over the budget"),
            Ok(Err(e)) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => open += 1,
        }
    }
    assert!(
        open <= 4,
        "{open} bodies of 64 KiB held open from one address within a budget of 256 KiB \
         ({refused} streams refused)"
    );
    stats_reach(&limit, "refusals counted", |s| {
        s.streams_refused_over_budget + s.request_bodies_over_budget
            > before.streams_refused_over_budget + before.request_bodies_over_budget
    })
    .await;
    // Another address is served meanwhile.
    let mut other = h2_client_from("127.0.0.2", addr).await;
    let (resp, mut body) = other
        .send_request(request(addr, "POST", "/sink"), false)
        .unwrap();
    body.send_data(Bytes::from(vec![b'o'; 64 * KIB]), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("another address answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(held);
    drop(sends);
    server.shutdown().await;
}
