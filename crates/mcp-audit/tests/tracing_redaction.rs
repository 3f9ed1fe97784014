//! Sensitive headers never reach tracing output: tower-http's TraceLayer placed inside
//! the redaction layer prints them as `Sensitive`, and the tracing sink writes them as the
//! mask. A control run without the redaction layer shows the secret would leak.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::post;
use common::*;
use mcp_audit::{AuditConfig, Auditor, Storage, StorageList};
use tower_http::trace::{DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Buf {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

async fn handler() -> impl IntoResponse {
    (
        [("set-cookie", format!("sid={SECRET_HEADER}; HttpOnly"))],
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
    )
}

fn trace()
-> TraceLayer<tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>>
{
    TraceLayer::new_for_http()
        .make_span_with(
            DefaultMakeSpan::new()
                .level(Level::INFO)
                .include_headers(true),
        )
        .on_request(DefaultOnRequest::new().level(Level::INFO))
        .on_response(
            DefaultOnResponse::new()
                .level(Level::INFO)
                .include_headers(true),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_headers_never_in_tracing_output() {
    let buf = Buf::default();
    tracing_subscriber::fmt()
        .with_max_level(Level::DEBUG)
        .with_writer(buf.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::default();
    cfg.storage = StorageList::Many(vec![Storage::Tracing, Storage::Database]);
    cfg.database.sqlite_path = dir.path().join("audit.db");
    cfg.masking.headers = vec!["x-tenant-secret".into()];
    let auditor = Auditor::from_config(cfg).await.unwrap();

    let app = Router::new()
        .route("/mcp", post(handler))
        .layer(auditor.sensitive_response_headers_layer())
        .layer(trace())
        .layer(auditor.layer())
        .layer(auditor.sensitive_headers_layer());
    let addr = serve(app).await;
    let mut req = call(addr, "alice", 1, None);
    req.headers_mut()
        .insert("x-tenant-secret", "tenant-Vb81-secret".parse().unwrap());
    req.headers_mut().insert(
        "proxy-authorization",
        format!("Basic {SECRET_APIKEY}").parse().unwrap(),
    );
    let r = send(&client(), req).await;
    assert_eq!(r.status, 200);
    auditor.flush().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    auditor.shutdown().await;

    let out = buf.take();
    assert!(out.contains("content-type"), "headers were traced:\n{out}");
    assert!(out.contains("Sensitive"), "sensitive values marked:\n{out}");
    assert!(
        out.contains("mcp_audit"),
        "the tracing sink wrote the event:\n{out}"
    );
    assert!(
        out.contains(r#"\"cookie\":\"***REDACTED***\""#)
            || out.contains(r#""cookie":"***REDACTED***""#),
        "the event renders the header redacted:\n{out}"
    );
    for s in [
        SECRET_HEADER,
        SECRET_APIKEY,
        SECRET_PASSWORD,
        "tenant-Vb81-secret",
    ] {
        assert!(!out.contains(s), "{s} leaked into tracing output:\n{out}");
    }
    let db = std::fs::read(dir.path().join("audit.db")).unwrap();
    let wal = std::fs::read(dir.path().join("audit.db-wal")).unwrap_or_default();
    for s in [SECRET_HEADER, SECRET_APIKEY, "tenant-Vb81-secret"] {
        assert!(!db.windows(s.len()).any(|w| w == s.as_bytes()));
        assert!(!wal.windows(s.len()).any(|w| w == s.as_bytes()));
    }

    // Control: the same trace layer without the redaction layer prints the secret, so the
    // assertions above can fail.
    let app = Router::new().route("/mcp", post(handler)).layer(trace());
    let addr = serve(app).await;
    let r = send(&client(), call(addr, "alice", 2, None)).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = buf.take();
    assert!(out.contains(SECRET_HEADER), "control run leaks:\n{out}");
}
