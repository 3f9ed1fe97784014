//! What the request path pays per audited request: the inner service alone, the same
//! behind `AuditLayer` (request id, event collection, body wrapping, one `try_send`), and
//! what a user would otherwise do: mask and serialize the record inline before answering.
//!
//! The writer (masking, serialization, a sink that discards) runs on the runtime's other
//! worker; each measured run of up to 1000 requests is followed by an untimed flush, so
//! the queue never fills and the figure is the request path's own cost.
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
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mcp_audit::sink::{AuditSink, BoxFuture, SinkError};
use mcp_audit::{AuditConfig, Auditor, Masker, MaskingConfig};
use mcp_core::{AuthMethod, McpHeaders, McpRequest, PeerAddr, Principal};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Discards batches; while `paused` is true it waits, so that the writer does no work
/// during a measurement.
struct Discard(tokio::sync::watch::Receiver<bool>);
impl AuditSink for Discard {
    fn name(&self) -> &str {
        "discard"
    }
    fn write_batch(
        &mut self,
        _b: Arc<[mcp_audit::event::SinkEvent]>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let _ = self.0.wait_for(|paused| !paused).await;
            Ok(())
        })
    }
}

const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"rust tower","limit":10,"apiKey":"k-123456"}}}"#;

fn request() -> Request<Full<Bytes>> {
    let mut r = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer abc.def.ghi")
        .header("mcp-protocol-version", "2025-11-25")
        .header("user-agent", "bench/1.0")
        .header("content-length", BODY.len())
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
    let principal = Principal::new("alice", AuthMethod::ApiKey).with_scopes(["tools:call"]);
    let mcp = McpRequest::parse(Bytes::from_static(BODY), McpHeaders::default()).unwrap();
    service_fn(move |_req: Request<Full<Bytes>>| {
        let (p, m) = (principal.clone(), mcp.clone());
        async move {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
            )));
            resp.extensions_mut().insert(p);
            resp.extensions_mut().insert(m);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// Times `iters` requests through `svc` (each response body read to its end, which is
/// when the event is queued) in rounds of at most 1,000, flushing the trail between
/// rounds outside the timing. With `pause`, the writer is held while a round is timed.
async fn timed_rounds<S, RB>(
    svc: S,
    auditor: Auditor,
    pause: Option<Arc<tokio::sync::watch::Sender<bool>>>,
    iters: u64,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>, Error = Infallible> + Clone,
    RB: http_body::Body,
    RB::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let k = (iters - done).min(1000);
        if let Some(p) = &pause {
            p.send_replace(true);
            // Let the writer reach the paused sink with at most one event.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        for _ in 0..k {
            let resp = svc.clone().oneshot(request()).await.unwrap();
            std::hint::black_box(resp.into_body().collect().await.unwrap());
        }
        total += start.elapsed();
        if let Some(p) = &pause {
            p.send_replace(false);
        }
        auditor.flush().await;
        done += k;
    }
    total
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_pause_tx, pause_rx) = tokio::sync::watch::channel(false);
    let auditor = rt.block_on(async {
        Auditor::builder(AuditConfig::default())
            .sink(Discard(pause_rx))
            .start()
            .unwrap()
    });
    // A second pipeline whose writer takes one event per batch and can be paused.
    let (pause_tx, pause_rx) = tokio::sync::watch::channel(false);
    let paused_auditor = rt.block_on(async {
        let mut cfg = AuditConfig::default();
        cfg.queue.batch_size = 1;
        Auditor::builder(cfg)
            .sink(Discard(pause_rx))
            .start()
            .unwrap()
    });
    let mut g = c.benchmark_group("request_path");

    let svc = inner();
    g.bench_function("inner_service_alone", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move {
                let resp = svc.oneshot(request()).await.unwrap();
                resp.into_body().collect().await.unwrap()
            }
        })
    });

    let audited = auditor.layer().layer(inner());
    let a = auditor.clone();
    g.bench_function("with_audit_layer", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_rounds(audited.clone(), a.clone(), None, iters))
    });

    let audited = paused_auditor.layer().layer(inner());
    let a = paused_auditor.clone();
    let pause = Arc::new(pause_tx);
    g.bench_function("with_audit_layer_writer_paused", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            timed_rounds(audited.clone(), a.clone(), Some(Arc::clone(&pause)), iters)
        })
    });

    let audited = auditor.layer().record_headers(false).layer(inner());
    let a = auditor.clone();
    g.bench_function("with_audit_layer_no_headers", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_rounds(audited.clone(), a.clone(), None, iters))
    });

    g.bench_function("component_request_id", |b| {
        b.iter(mcp_audit::RequestId::generate)
    });
    let req = request();
    g.bench_function("component_header_map_clone", |b| {
        b.iter(|| req.headers().clone())
    });

    // The alternative: build, mask and serialize the record on the request path.
    let masker = Masker::new(&MaskingConfig::default()).unwrap();
    let svc = inner();
    g.bench_function("inline_mask_and_serialize", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            let masker = masker.clone();
            async move {
                let start = Instant::now();
                let req = request();
                let headers = req.headers().clone();
                let resp = svc.oneshot(req).await.unwrap();
                let mcp = resp.extensions().get::<McpRequest>().cloned().unwrap();
                let user = resp
                    .extensions()
                    .get::<Principal>()
                    .unwrap()
                    .id()
                    .to_owned();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let mut params = mcp.params_at(0).cloned().unwrap();
                masker.mask_value(&mut params);
                let sensitive = mcp_audit::headers::default_sensitive_headers();
                let record = serde_json::json!({
                    "timestamp": format!("{:?}", std::time::SystemTime::now()),
                    "request_id": uuid::Uuid::now_v7().to_string(),
                    "user": user, "tool": mcp.tool_name(), "params": params,
                    "status": status, "bytes_out": body.len(),
                    "headers": masker.render_headers(&headers, &sensitive),
                    "duration_ms": start.elapsed().as_secs_f64() * 1000.0,
                });
                std::hint::black_box(serde_json::to_vec(&record).unwrap())
            }
        })
    });
    g.finish();
    rt.block_on(auditor.shutdown());
    rt.block_on(paused_auditor.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
