//! HTTP/2 clients that hold memory without draining it, against the gateway process (the
//! `h2` crate as the client, an upstream in the test answering every call with a large
//! result), with the gateway's RSS read from /proc/<pid>/status:
//! - request bodies held open across many streams (DATA without END_STREAM) stay within
//!   `server.connectionMemoryBytes` per connection;
//! - streams opened once a connection holds its budget of unread results are refused
//!   (REFUSED_STREAM);
//! - streams whose window stays shut (or opens a byte at a time) are reset after the
//!   stream write timeout (by default `server.writeTimeoutSeconds`), and their
//!   connections, idle then, closed; a normal client is answered meanwhile;
//! - request bodies held open by one principal across connections and client addresses
//!   are bounded by `server.bodiesInProgressPerPrincipal` (429 beyond it), while another
//!   principal is served;
//! - `check` refuses a bad `server.connectionMemoryBytes`, `server.clientMemoryBytes`,
//!   `server.streamWriteTimeoutSeconds` or `server.bodiesInProgressPerPrincipal`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use h2::Reason;
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

/// An upstream that answers every call with a result of `size` bytes of text.
async fn big_upstream(size: usize) -> String {
    let text = "r".repeat(size);
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::any(move |body: Bytes| {
            let text = text.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let resp = json!({"jsonrpc": "2.0", "id": v.get("id").cloned().unwrap_or(Value::Null),
                    "result": {"content": [{"type": "text", "text": text}]}});
                ([("content-type", "application/json")], resp.to_string())
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/mcp")
}

/// (VmRSS, VmHWM) of `pid`, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A gateway in front of `upstream` with one worker and `keys` in `server:`.
fn gateway(dir: &std::path::Path, upstream: &str, keys: &str) -> (Proc, SocketAddr) {
    let cfg = with_server_keys(
        &base_config(upstream, &dir.join("a.db"), ""),
        &format!("  workers: 1\n{keys}"),
    );
    let (gw, base) = start_gateway(dir, &cfg);
    (gw, base.trim_start_matches("http://").parse().unwrap())
}

/// An HTTP/2 connection with `window` as its initial stream window; the task ends when
/// the gateway closes the connection.
async fn h2_conn(
    addr: SocketAddr,
    window: u32,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send.ready().await.unwrap(), task)
}

fn call_head(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/mcp"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "big")
        .body(())
        .unwrap()
}

fn call_body() -> Bytes {
    Bytes::from(
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "big", "arguments": {}, "_meta": modern_meta()}})
        .to_string(),
    )
}

/// Opens a tools/call stream with its whole body; `Err` when the stream is refused.
async fn open_call(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
) -> Result<h2::client::ResponseFuture, h2::Error> {
    *send = send.clone().ready().await?;
    let (resp, mut body) = send.send_request(call_head(addr), false)?;
    body.send_data(call_body(), true)?;
    Ok(resp)
}

/// A normal client (HTTP/1.1, its own connection) gets its tools/call answered.
async fn normal_client_is_answered(addr: SocketAddr) {
    let c = client();
    let r = call_tool(&c, &format!("http://{addr}/mcp"), "big", json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
}

/// Growth of the gateway's peak RSS over `base` after `settle`.
async fn growth(pid: u32, base: u64, settle: Duration) -> u64 {
    tokio::time::sleep(settle).await;
    rss(pid).1.saturating_sub(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_open_on_many_streams_stay_within_the_connection_budget() {
    const CONNS: u64 = 8;
    const STREAMS: usize = 32;
    const BUDGET: u64 = 2 * MIB;
    let dir = tempdir();
    let upstream = big_upstream(1024).await;
    let (gw, addr) = gateway(
        dir.path(),
        &upstream,
        // 32 streams per connection (the default is 16) and no cap per principal that
        // matters here: the budget, not the stream or principal caps, is what this bounds.
        &format!(
            "  bodyTimeoutSeconds: 120\n  connectionMemoryBytes: {BUDGET}\n  \
             maxConcurrentStreams: 32\n  bodiesInProgressPerPrincipal: 1000\n"
        ),
    );
    normal_client_is_answered(addr).await;
    let base = rss(gw.pid()).1;
    // Each stream sends 1000 KiB of a body (under maxBodyBytes' 1 MiB) and never ends it.
    let chunk = Bytes::from(vec![b' '; 1000 * 1024]);
    let mut held = Vec::new();
    let mut conns = Vec::new();
    let mut refused = 0usize;
    for _ in 0..CONNS {
        let (mut send, task) = h2_conn(addr, 65_535).await;
        for _ in 0..STREAMS {
            let opened = async {
                send = send.clone().ready().await?;
                let (resp, mut body) = send.send_request(call_head(addr), false)?;
                body.send_data(chunk.clone(), false)?;
                Ok::<_, h2::Error>((resp, body))
            };
            match opened.await {
                Ok(s) => held.push(s),
                Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        conns.push((send, task));
    }
    let grown = growth(gw.pid(), base, Duration::from_secs(4)).await;
    // Bodies refused (400: their read went over the budget) or streams refused.
    let mut answered = 0usize;
    let mut open = 0usize;
    for (resp, _) in &mut held {
        match tokio::time::timeout(Duration::from_millis(20), &mut *resp).await {
            Ok(Ok(r)) => {
                assert_eq!(r.status(), 400);
                answered += 1;
            }
            Ok(Err(e)) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => open += 1,
        }
    }
    normal_client_is_answered(addr).await;
    eprintln!(
        "held request bodies: {CONNS} connections x {STREAMS} streams x 1000 KiB, budget {BUDGET}: \
         peak RSS grew {} KiB ({open} held, {answered} bodies refused, {refused} streams refused)",
        grown / 1024
    );
    // The budget per connection, three times over for allocator slack and copies, plus
    // 64 MiB for everything else (tasks, hyper and h2 state of 256 streams).
    let bound = CONNS * BUDGET * 3 + 64 * MIB;
    assert!(
        grown <= bound,
        "peak RSS grew {grown} bytes with request bodies held open (bound {bound})"
    );
    assert!(answered + refused > 0, "nothing refused over the budget");
}

/// Waits (up to `secs`) for the gateway to close the connection of `task`.
async fn closed_within(task: &mut tokio::task::JoinHandle<()>, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), task)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_held_unread_stay_within_the_budget_and_are_cut_after_the_write_timeout() {
    const RESULT: usize = 2 * 1024 * 1024;
    let dir = tempdir();
    let upstream = big_upstream(RESULT).await;
    // The default budget (8 MiB): about four unread results of 2 MiB.
    // 32 streams per connection (the default is 16): the budget, not the stream cap, is
    // what this bounds.
    let (gw, addr) = gateway(
        dir.path(),
        &upstream,
        "  writeTimeoutSeconds: 10\n  idleTimeoutSeconds: 5\n  maxConcurrentStreams: 32\n",
    );
    normal_client_is_answered(addr).await;

    // Waves: a window of zero; each call waits for its response head (its result is then
    // held, unread) before the next is opened. Result redaction streams, so a result the
    // client does not read stays mostly upstream (TCP back-pressure): what the gateway
    // holds per stream is its send buffer and a segment, well within the budget; a
    // layer that buffered results whole would have its streams refused by the budget.
    // Either way the connection's memory stays bounded.
    let wave_base = rss(gw.pid()).1;
    let (mut send, mut task) = h2_conn(addr, 0).await;
    let mut heads = Vec::new();
    let mut refused = 0;
    for _ in 0..32 {
        match open_call(&mut send, addr).await {
            Ok(resp) => match resp.await {
                Ok(r) => {
                    assert_eq!(r.status(), 200);
                    heads.push(r);
                }
                Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
                Err(e) => panic!("waiting for a response head: {e}"),
            },
            Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => refused += 1,
            Err(e) => panic!("opening a stream: {e}"),
        }
    }
    let admitted = heads.len();
    let wave_grown = growth(gw.pid(), wave_base, Duration::from_millis(500)).await;
    eprintln!(
        "waves: {admitted} results of 2 MiB unread on one connection, {refused} streams \
         refused, peak RSS grew {} KiB",
        wave_grown / 1024
    );
    assert_eq!(admitted + refused, 32);
    // The default budget (8 MiB) three times over, plus 32 MiB: 32 results held whole
    // (64 MiB, and their copies) would not fit.
    let wave_bound = 3 * 8 * MIB + 32 * MIB;
    assert!(
        wave_grown <= wave_bound,
        "peak RSS grew {wave_grown} bytes with results held unread (bound {wave_bound})"
    );
    normal_client_is_answered(addr).await;
    assert!(
        closed_within(&mut task, 60).await,
        "streams that never drain kept their connection open"
    );
    drop(heads);

    // A slow drip: one stream given back a byte every 100 ms.
    let (mut send, mut task) = h2_conn(addr, 1).await;
    let resp = open_call(&mut send, addr).await.unwrap().await.unwrap();
    let mut body = resp.into_body();
    let drip = tokio::spawn(async move {
        while let Some(Ok(data)) = body.data().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if body.flow_control().release_capacity(data.len()).is_err() {
                break;
            }
        }
    });
    normal_client_is_answered(addr).await;
    assert!(
        closed_within(&mut task, 60).await,
        "a stream drained a byte at a time kept its connection open"
    );
    drip.abort();

    // A burst: streams opened at once, all admitted before any result arrives, on
    // several connections; all cut after the write timeout.
    const CONNS: u64 = 4;
    let base = rss(gw.pid()).1;
    let mut tasks = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..CONNS {
        let (mut send, task) = h2_conn(addr, 0).await;
        for _ in 0..32 {
            match open_call(&mut send, addr).await {
                Ok(r) => pending.push(r),
                Err(_) => break,
            }
        }
        tasks.push((send, task));
    }
    // Every result is in (its head arrived), held unread.
    let mut heads = 0;
    for r in pending {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(30), r).await {
            heads += 1;
        }
    }
    let grown = growth(gw.pid(), base, Duration::from_millis(200)).await;
    normal_client_is_answered(addr).await;
    for (_, task) in &mut tasks {
        assert!(
            closed_within(task, 60).await,
            "a burst of streams that never drain kept its connection open"
        );
    }
    eprintln!(
        "burst: {CONNS} connections x 32 streams (window 0) x 2 MiB results ({heads} heads): \
         peak RSS grew {} KiB",
        grown / 1024
    );
    // Admitted together, each stream holds what the layers hold of a result in flight:
    // with result redaction streaming, a send buffer and a segment, not the result. The
    // budget per connection three times over, plus 64 MiB (4 x 32 results of 2 MiB held
    // whole would be 256 MiB before any copy).
    let bound = CONNS * 3 * 8 * MIB + 64 * MIB;
    assert!(
        grown <= bound,
        "peak RSS grew {grown} bytes (bound {bound})"
    );
}

/// An HTTP/2 connection from the loopback address `from`.
async fn h2_conn_from(from: &str, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// Opens a tools/call stream as the holder of `key` and sends the start of its body,
/// never the end.
async fn open_held_call(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    key: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    *send = send.clone().ready().await.unwrap();
    let mut head = call_head(addr);
    head.headers_mut()
        .insert("x-api-key", http::HeaderValue::from_str(key).unwrap());
    let (resp, mut body) = send.send_request(head, false).unwrap();
    body.send_data(Bytes::from_static(b"{\"jsonrpc\": \"2.0\", "), false)
        .unwrap();
    (resp, body)
}

/// A tools/call of the holder of `key` over HTTP/1.1 from 127.0.0.1: its status.
async fn call_status(addr: SocketAddr, key: &str) -> u16 {
    let c = client();
    let r = call_tool(&c, &format!("http://{addr}/mcp"), "big", json!({}))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_open_are_bounded_per_principal_across_connections_and_addresses() {
    const CAP: usize = 4;
    let dir = tempdir();
    let upstream = big_upstream(16).await;
    let (_gw, addr) = gateway(
        dir.path(),
        &upstream,
        &format!("  bodyTimeoutSeconds: 120\n  bodiesInProgressPerPrincipal: {CAP}\n"),
    );
    // Attack: alice opens 3 connections from 3 addresses (so that neither the budget of
    // a connection nor that of an address is what stops her), 3 streams on each, each
    // stream sending the start of its body and never the end.
    let mut conns = Vec::new();
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut send = h2_conn_from(from, addr).await;
        for _ in 0..3 {
            held.push(open_held_call(&mut send, addr, KEY).await);
        }
        conns.push(send);
    }
    // All but CAP of them are answered at once: 429, with Retry-After.
    let mut answered = vec![false; held.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while answered.iter().filter(|a| **a).count() < held.len() - CAP {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} streams answered: alice's held bodies are not bounded",
            answered.iter().filter(|a| **a).count(),
            held.len() - CAP
        );
        for (i, (resp, _)) in held.iter_mut().enumerate() {
            if answered[i] {
                continue;
            }
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(10), &mut *resp).await {
                let r = r.unwrap();
                assert_eq!(r.status(), 429);
                assert_eq!(r.headers()["retry-after"], "1");
                answered[i] = true;
            }
        }
    }
    // Another principal is served meanwhile; alice, from yet another address, is not.
    assert_eq!(call_status(addr, KEY2).await, 200);
    assert_eq!(call_status(addr, KEY).await, 429);
    // The CAP streams admitted still wait for their bodies: nothing answered them.
    for (i, (resp, _)) in held.iter_mut().enumerate() {
        if !answered[i] {
            assert!(
                tokio::time::timeout(Duration::from_millis(10), &mut *resp)
                    .await
                    .is_err(),
                "a held stream was answered"
            );
        }
    }
    // Alice gives up her streams (RST_STREAM CANCEL): her places are free again.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = call_status(addr, KEY).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's places were not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conns);
}

#[test]
fn check_refuses_a_bad_connection_or_client_memory_budget() {
    let dir = tempdir();
    let cfg = base_config("http://127.0.0.1:9/mcp", &dir.path().join("a.db"), "");
    for bad_line in [
        "connectionMemoryBytes: 1000",
        "connectionMemoryBytes: 1099511627777",
    ] {
        let bad = with_server_keys(&cfg, &format!("  {bad_line}\n"));
        assert_check_refuses(dir.path(), &bad, bad_line, "server.connectionMemoryBytes");
    }
    // Smaller than the largest body accepted.
    let bad = with_server_keys(
        &cfg,
        "  maxBodyBytes: 4194304\n  connectionMemoryBytes: 2097152\n",
    );
    assert_check_refuses(
        dir.path(),
        &bad,
        "connectionMemoryBytes: 2097152",
        "server.connectionMemoryBytes",
    );
    for bad_line in ["clientMemoryBytes: 0", "clientMemoryBytes: 1099511627777"] {
        let bad = with_server_keys(&cfg, &format!("  {bad_line}\n"));
        assert_check_refuses(dir.path(), &bad, bad_line, "server.clientMemoryBytes");
    }
    for bad_line in [
        "streamWriteTimeoutSeconds: 0",
        "streamWriteTimeoutSeconds: 86401",
    ] {
        let bad = with_server_keys(&cfg, &format!("  {bad_line}\n"));
        assert_check_refuses(
            dir.path(),
            &bad,
            bad_line,
            "server.streamWriteTimeoutSeconds",
        );
    }
    for bad_line in [
        "bodiesInProgressPerPrincipal: 0",
        "bodiesInProgressPerPrincipal: 1000001",
    ] {
        let bad = with_server_keys(&cfg, &format!("  {bad_line}\n"));
        assert_check_refuses(
            dir.path(),
            &bad,
            bad_line,
            "server.bodiesInProgressPerPrincipal",
        );
    }
    let bad = with_server_keys(
        &cfg,
        "  maxBodyBytes: 4194304\n  connectionMemoryBytes: 8388608\n  clientMemoryBytes: 2097152\n",
    );
    assert_check_refuses(
        dir.path(),
        &bad,
        "clientMemoryBytes: 2097152",
        "server.clientMemoryBytes",
    );
    let good = with_server_keys(
        &cfg,
        "  connectionMemoryBytes: 16777216\n  clientMemoryBytes: 134217728\n  \
         streamWriteTimeoutSeconds: 20\n  bodiesInProgressPerPrincipal: 32\n",
    );
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, good).unwrap();
    let (code, _, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
}
