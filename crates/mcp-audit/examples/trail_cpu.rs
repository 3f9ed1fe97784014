//! CPU per event of the whole audit trail, as the gateway pays it: requests through
//! `AuditLayer` (over an in-memory inner service that leaves a principal, the parsed
//! `tools/call` and the upstream in the response extensions, like the gateway's layers),
//! the writer (masking, serialization, hashing) and the sink.
//!
//! ```text
//! cargo run --release -p mcp-audit --example trail_cpu -- <mode> [n] [rate] [batch] [max_records]
//! ```
//!
//! - `mode`: `none` (the inner service alone, the baseline), `discard` (audit layer and
//!   writer, a sink that discards: request path plus rendering), `sqlite` (the SQLite
//!   sink, WAL, `synchronous=NORMAL`, `maxRecords` retention), `sink` (the SQLite sink
//!   alone: `n` events rendered ahead, then written in batches of `batch`, measured;
//!   `rate` is ignored).
//! - `n` events (default 60,000) at `rate` requests per second (default 12,000, sent in
//!   1 ms ticks, so that the writer batches as it does under the gateway's load: about 60
//!   events per transaction with the default 5 ms linger); `rate` 0 sends as fast as
//!   possible.
//! - `batch`: the writer's `queue.batchSize` (default 1024; use 60 under callgrind,
//!   where pacing is meaningless).
//! - `max_records`: retention (default 100,000). In `sqlite` mode the database is first
//!   filled with `max_records` events (not measured), so that retention runs during the
//!   whole measurement, as in a long-running gateway.
//!
//! It prints the process CPU time (user + system, from `getrusage` through
//! `/proc/self/stat`) per event of the measured part. Subtract `none` from the others.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::field_reassign_with_default,
    missing_docs
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mcp_audit::event::SinkEvent;
use mcp_audit::sink::{AuditSink, BoxFuture, SinkError};
use mcp_audit::{AuditUpstream, Auditor, Storage, StorageList};
use mcp_core::{AuthMethod, McpHeaders, McpRequest, PeerAddr, Principal};
use tower::{Layer, Service, ServiceExt, service_fn};

#[path = "../benches/support/common.rs"]
mod common;
use common::{cpu_seconds, sqlite_setup};

const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_documents","arguments":{"query":"quarterly revenue by region","filters":{"year":2026,"regions":["emea","apac"]},"limit":25,"auth":{"apiKey":"k-9f8e7d6c5b4a","password":"hunter2"}},"_meta":{"progressToken":"p-17"}}}"#;

fn request() -> Request<Full<Bytes>> {
    let mut r = Request::post("/mcp")
        .header("host", "gateway.internal:8443")
        .header("user-agent", "mcp-client/1.4 (python-httpx 0.28)")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("content-length", BODY.len())
        .header("authorization", "Bearer abc.def.ghi")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", "7c1f3c2e-5b7a-4d0e-9a51-3f2b8d6e4c10")
        .header("accept-encoding", "gzip, deflate")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap();
    r.extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 40000))));
    r
}

fn inner() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let principal =
        Principal::new("alice@example.com", AuthMethod::Jwt).with_scopes(["tools:call"]);
    let upstream: Arc<str> = Arc::from("http://127.0.0.1:9000/mcp");
    service_fn(move |req: Request<Full<Bytes>>| {
        let (p, u) = (principal.clone(), Arc::clone(&upstream));
        async move {
            // Parsed per request, as ParseLayer does.
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let m = McpRequest::parse(body, McpHeaders::default()).unwrap();
            let mut resp = Response::new(Full::new(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"3 documents"}]}}"#,
            )));
            resp.extensions_mut().insert(p);
            resp.extensions_mut().insert(m);
            resp.extensions_mut().insert(AuditUpstream(u));
            Ok::<_, Infallible>(resp)
        }
    })
}

struct Discard;
impl AuditSink for Discard {
    fn name(&self) -> &str {
        "discard"
    }
    fn write_batch(&mut self, b: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
        std::hint::black_box(&b);
        Box::pin(async { Ok(()) })
    }
}

/// With `TRAIL_PERF_CTL=<fifo>`, tells `perf stat --control fifo:<fifo> -D -1` to count
/// only the measured part.
fn perf_ctl(cmd: &str) {
    if let Some(path) = std::env::var_os("TRAIL_PERF_CTL") {
        let _ = std::fs::write(path, format!("{cmd}\n"));
    }
}

async fn drive<S>(svc: &S, n: u64, rate: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<mcp_audit::AuditBody<Full<Bytes>>>>
        + Clone,
    S::Error: std::fmt::Debug,
{
    let one = || async {
        let resp = svc.clone().oneshot(request()).await.unwrap();
        std::hint::black_box(resp.into_body().collect().await.ok());
    };
    if rate == 0 {
        for _ in 0..n {
            one().await;
        }
        return;
    }
    let per_tick = (rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut done = 0;
    while done < n {
        tick.tick().await;
        let k = per_tick.min(n - done);
        for _ in 0..k {
            one().await;
        }
        done += k;
    }
}

/// Keeps the rendered events.
struct Capture(Arc<std::sync::Mutex<Vec<SinkEvent>>>);
impl AuditSink for Capture {
    fn name(&self) -> &str {
        "capture"
    }
    fn write_batch(&mut self, b: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
        self.0.lock().unwrap().extend(b.iter().cloned());
        Box::pin(async { Ok(()) })
    }
}

/// The SQLite sink alone: `max_records` events through the whole pipeline first (not
/// measured), then `n` events rendered ahead (not measured) and written in batches of
/// `batch` straight to a `SqliteSink` on the same file (measured).
fn sink_only(n: u64, batch: usize, max_records: u64) {
    let (rt, _dir, db, mut cfg) = sqlite_setup("trail.db", max_records);
    cfg.storage = StorageList::One(Storage::Database);
    let events = rt.block_on(async {
        let a = Auditor::from_config(cfg.clone()).await.unwrap();
        drive(&a.layer().layer(inner()), max_records, 0).await;
        a.shutdown().await;
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        cfg.storage = StorageList::One(Storage::Tracing);
        let b = Auditor::builder(cfg)
            .sink(Capture(Arc::clone(&got)))
            .start()
            .unwrap();
        drive(&b.layer().layer(inner()), n, 0).await;
        b.flush().await;
        let events: Vec<SinkEvent> = std::mem::take(&mut *got.lock().unwrap());
        events
    });
    let mut sink = mcp_audit::sink::sqlite::SqliteSink::open(&db, max_records).unwrap();
    let batches: Vec<Arc<[SinkEvent]>> = events.chunks(batch).map(Arc::from).collect();
    eprintln!("measuring");
    perf_ctl("enable");
    let (c0, w0) = (cpu_seconds(), Instant::now());
    rt.block_on(async {
        for b in batches {
            sink.write_batch(b).await.unwrap();
        }
    });
    let (cpu, wall) = (cpu_seconds() - c0, w0.elapsed());
    perf_ctl("disable");
    drop(sink);
    if std::env::var_os("TRAIL_NO_VERIFY").is_some() {
        println!(
            "sink: CPU {:.2} us per event",
            cpu * 1e6 / events.len() as f64
        );
        return;
    }
    let report = mcp_audit::verify_sqlite(&db).unwrap();
    assert!(report.is_intact(), "{report:?}");
    println!(
        "sink: {} events in batches of {batch} in {:.2} s wall; CPU {:.2} s = {:.2} us per event; {} rows kept, verify intact",
        events.len(),
        wall.as_secs_f64(),
        cpu,
        cpu * 1e6 / events.len() as f64,
        report.records
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("sqlite", String::as_str).to_owned();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let n = arg(2, 60_000);
    let rate = arg(3, 12_000);
    let batch = arg(4, 1024) as usize;
    let max_records = arg(5, 100_000);
    if mode == "sink" {
        sink_only(n, batch, max_records);
        return;
    }
    let (rt, _dir, db, mut cfg) = sqlite_setup("trail.db", max_records);
    cfg.queue.batch_size = batch;
    cfg.queue.capacity = cfg.queue.capacity.max(2 * batch);
    let auditor = rt.block_on(async {
        match mode.as_str() {
            "sqlite" => {
                cfg.storage = StorageList::One(Storage::Database);
                Auditor::from_config(cfg).await.unwrap()
            }
            _ => {
                // Validation wants a storage; the builder opens none of them.
                cfg.storage = StorageList::One(Storage::Tracing);
                Auditor::builder(cfg).sink(Discard).start().unwrap()
            }
        }
    });
    let (cpu, wall) = rt.block_on(async {
        if mode == "none" {
            let svc = service_fn({
                let s = inner();
                move |r| {
                    let s = s.clone();
                    async move {
                        s.oneshot(r)
                            .await
                            .map(|resp| resp.map(mcp_audit::AuditBody::plain))
                    }
                }
            });
            drive(&svc, 1000, 0).await;
            perf_ctl("enable");
            let (c0, w0) = (cpu_seconds(), Instant::now());
            drive(&svc, n, rate).await;
            let r = (cpu_seconds() - c0, w0.elapsed());
            perf_ctl("disable");
            return r;
        }
        let svc = auditor.layer().layer(inner());
        if mode == "sqlite" && max_records > 0 {
            drive(&svc, max_records, 0).await;
        } else {
            drive(&svc, 1000, 0).await;
        }
        auditor.flush().await;
        eprintln!("measuring");
        perf_ctl("enable");
        let (c0, w0) = (cpu_seconds(), Instant::now());
        drive(&svc, n, rate).await;
        auditor.flush().await;
        let r = (cpu_seconds() - c0, w0.elapsed());
        perf_ctl("disable");
        r
    });
    rt.block_on(auditor.shutdown());
    assert_eq!(auditor.stats().dropped(), 0, "events were dropped");
    let mut extra = String::new();
    // TRAIL_NO_VERIFY=1 skips the checks after the run (for profilers).
    if mode == "sqlite" && std::env::var_os("TRAIL_NO_VERIFY").is_none() {
        let c = rusqlite::Connection::open(&db).unwrap();
        let (rows, avg): (i64, f64) = c
            .query_row(
                "SELECT count(*), avg(length(event)) FROM audit_events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        if std::env::var_os("TRAIL_SAMPLE").is_some() {
            let ev: String = c
                .query_row("SELECT event FROM audit_events WHERE kind = 'request' ORDER BY seq DESC LIMIT 1", [], |r| {
                    r.get(0)
                })
                .unwrap();
            eprintln!("{ev}");
        }
        let report = mcp_audit::verify_sqlite(&db).unwrap();
        assert!(report.is_intact(), "{report:?}");
        extra = format!(
            "; {rows} rows kept (maxRecords {max_records}), {avg:.0} bytes of JSON per event, verify intact"
        );
    }
    println!(
        "{mode}: {n} events at {} in {:.2} s wall; CPU {:.2} s = {:.1} us per event{extra}",
        if rate == 0 {
            "full speed".to_owned()
        } else {
            format!("{rate}/s")
        },
        wall.as_secs_f64(),
        cpu,
        cpu * 1e6 / n as f64
    );
}
