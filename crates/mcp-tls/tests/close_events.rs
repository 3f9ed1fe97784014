//! What the accept loop tells the layers (`mcp_core::ConnectionEvents` in every request,
//! `ConnectionLimit::observer`): a response read in full is reported written while its
//! connection stays open; a response cut by the write timeout, in the middle of its body
//! or after its end while it waited in the write buffer, is reported cut; a connection
//! refused over the per-client cap is reported with its client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::{Router, routing::get};
use bytes::Bytes;
use common::*;
use mcp_core::{
    CloseReason, ConnectionEvents, ConnectionObserver, ConnectionRefusal, RefusalReason,
};
use mcp_tls::ConnectionLimit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// What a response body learnt of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// It ended, then the connection wrote it (`None`) or closed first.
    Written(Option<CloseReason>),
    /// It was dropped before its end, the connection closed for this reason (or none).
    Dropped(Option<CloseReason>),
}

/// A response body that reports, at its end, when its connection has written it.
struct Watched {
    inner: Body,
    events: Option<ConnectionEvents>,
    tx: mpsc::UnboundedSender<Seen>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let r = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if r.is_none()
            && let Some(events) = self.events.take()
        {
            let tx = self.tx.clone();
            let then: mcp_core::OnWritten = Box::new(move |r| {
                let _ = tx.send(Seen::Written(r));
            });
            if let Err(then) = events.when_written(then) {
                then(events.closed());
            }
        }
        Poll::Ready(r)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            let _ = self.tx.send(Seen::Dropped(events.closed()));
        }
    }
}

/// `/mid`: 256 KiB, `/big`: 1 MiB, `/huge`: 16 MiB, each in one piece; `/echo`.
fn router(tx: mpsc::UnboundedSender<Seen>) -> Router {
    let big = Bytes::from(vec![b'a'; 1024 * 1024]);
    let mid = Bytes::from(vec![b'm'; 256 * 1024]);
    let huge = Bytes::from(vec![b'h'; 16 * 1024 * 1024]);
    Router::new()
        .route("/big", get(move || async move { big.clone() }))
        .route("/mid", get(move || async move { mid.clone() }))
        .route("/huge", get(move || async move { huge.clone() }))
        .merge(echo_router())
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let tx = tx.clone();
                async move {
                    let events = req.extensions().get::<ConnectionEvents>().cloned();
                    assert!(events.is_some(), "no ConnectionEvents in the request");
                    next.run(req)
                        .await
                        .map(|inner| Body::new(Watched { inner, events, tx }))
                }
            },
        ))
}

async fn connect_from(addr: std::net::SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("nothing reported")
        .expect("channel closed")
}

#[tokio::test]
async fn responses_are_reported_written_or_cut() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let limit = ConnectionLimit::new(100);
    let server = start_with(
        None,
        |s| {
            s.connection_limit(limit)
                .write_timeout(Duration::from_millis(500))
                .idle_timeout(Duration::from_secs(300))
        },
        router(tx),
    )
    .await;

    // Read in full: written, while the connection stays open.
    let mut s = connect_from(server.addr, "127.0.0.2").await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1024 * 1024 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got += n;
    }
    assert_eq!(next(&mut rx).await, Seen::Written(None));

    // Never read, 16 MiB: cut in the middle of the body.
    let mut cut = connect_from(server.addr, "127.0.0.3").await;
    cut.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Seen::Dropped(Some(CloseReason::WriteTimeout))
    );

    // Pipelined 256 KiB responses, never read: those the socket took are written; the
    // one that ended in the write buffer (about 400 KiB) when the connection stalled is
    // cut, as is the one in progress, if any.
    let mut piped = connect_from(server.addr, "127.0.0.4").await;
    let reqs = "GET /mid HTTP/1.1\r\nHost: x\r\n\r\n".repeat(40);
    let _ = tokio::time::timeout(Duration::from_secs(5), piped.write_all(reqs.as_bytes())).await;
    let mut seen = Vec::new();
    // Until a cut is reported, then whatever follows within a second.
    loop {
        let cut = seen
            .iter()
            .any(|s| matches!(s, Seen::Written(Some(_)) | Seen::Dropped(Some(_))));
        let wait = Duration::from_secs(if cut { 1 } else { 30 });
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(s)) => seen.push(s),
            _ => break,
        }
    }
    assert!(
        seen.contains(&Seen::Written(Some(CloseReason::WriteTimeout))),
        "no response reported cut after its end: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| matches!(
            s,
            Seen::Written(None)
                | Seen::Written(Some(CloseReason::WriteTimeout))
                | Seen::Dropped(Some(CloseReason::WriteTimeout))
        )),
        "{seen:?}"
    );
    drop((s, cut, piped));
    server.shutdown().await;
}

#[derive(Default)]
struct Refusals(Mutex<Vec<ConnectionRefusal>>);

impl ConnectionObserver for Refusals {
    fn refused(&self, refusal: ConnectionRefusal) {
        self.0.lock().unwrap().push(refusal);
    }
}

#[tokio::test]
async fn refusals_over_the_per_client_cap_reach_the_observer() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let refusals = Arc::new(Refusals::default());
    let limit = ConnectionLimit::new(100)
        .per_client(1)
        .observer(refusals.clone());
    let server = start_with(None, |s| s.connection_limit(limit), router(tx)).await;
    let mut held = connect_from(server.addr, "127.0.0.5").await;
    held.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(held.read(&mut buf).await.unwrap() > 0);
    for _ in 0..3 {
        let mut s = connect_from(server.addr, "127.0.0.5").await;
        let _ = s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("neither served nor closed");
        assert!(matches!(n, Ok(0) | Err(_)), "served over the cap");
    }
    let seen = refusals.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for r in seen {
        assert_eq!(r.client, "127.0.0.5".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(r.reason, RefusalReason::TooManyConnections);
        assert_eq!(r.limit, 1);
    }
    drop(held);
    server.shutdown().await;
}
