//! An audit trail for MCP servers and gateways that loses nothing and leaks nothing.
//!
//! - [`AuditLayer`] (placed outermost) writes one event per request, served or refused:
//!   timestamp, request id, user (the [`mcp_core::Principal`]'s id, never a client
//!   header), auth method, client IP, MCP method, tool / resource / prompt, params
//!   (masked), HTTP status, JSON-RPC error code, outcome, the typed denial reason, duration,
//!   upstream, bytes in and out. Lifecycle events (startup, shutdown, configuration
//!   reload) and authentication failures are recorded through [`AuditHandle::record`].
//! - [`Masker`] masks sensitive fields at any depth and credential patterns wherever they
//!   appear; [`sensitive_headers_layer`] keeps sensitive header values out of tracing
//!   output, and events render them as the mask.
//! - A bounded queue and one background writer ([`Auditor`]) feed several sinks at once
//!   ([`sink`]): JSON lines on stdout or tracing, rotated JSON lines files, SQLite
//!   (default) and PostgreSQL (feature `postgres`). The request path never waits on a sink.
//! - Refusals of a client already refused are counted, not written one row each
//!   ([`refusals`]): a flood of refused requests adds a few rows per client and interval.
//! - Every stored record is chained with SHA-256 ([`chain`]); `verify_*` functions report
//!   the first deleted, inserted or altered record.
//! - [`AuditQueryService`] answers `GET /api/audit/query`, for principals holding the
//!   audit scope only.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use axum::{Router, routing::post};
//! use mcp_audit::{AuditConfig, AuditEvent, Auditor};
//!
//! let auditor = Auditor::from_config(AuditConfig::default()).await.unwrap();
//! auditor.handle().record(AuditEvent::startup()).await;
//! let app: Router = Router::new()
//!     .route("/mcp", post(|| async { "ok" }))
//!     // ... auth, rate limit, parse, sanitize layers ...
//!     .layer(auditor.layer())
//!     .layer(auditor.sensitive_headers_layer());
//! # let _ = app;
//! // On SIGTERM, after the server drained its connections:
//! auditor.shutdown().await;
//! # }
//! ```
//!
//! # Placement
//!
//! Outermost: `sensitive_headers_layer` (before any trace layer), then the
//! [`AuditLayer`], then security headers, Origin guard, rate limits, authentication,
//! parse and sanitize, authorization, the proxy; [`sensitive_response_headers_layer`]
//! goes inside every trace layer, next to the proxy. The audit layer sees every outcome,
//! rejections by inner layers included, through the typed values they leave in the
//! response extensions ([`mcp_core::Denial`], [`mcp_core::Principal`],
//! [`mcp_core::McpRequest`], [`AuditUpstream`]).
//!
//! # What is recorded, and when
//!
//! The event is handed over when the response body ends (or is dropped, e.g. when the
//! client goes away), so `bytes_out` counts what a streamed (SSE) response actually sent
//! and `duration_ms` covers the whole stream. `bytes_in` is the request's
//! `Content-Length`, or the length of the body read by [`mcp_core::ParseLayer`]. The
//! query string is never recorded (it may carry secrets); the path is. A request refused
//! with `auth_failed` is recorded with the kind `auth_failure`.
//!
//! Each JSON-RPC message is one record: a batch body gives one record per message (same
//! `request_id`, with `batch_size` and `batch_index`; the headers on the first only).
//! A record names its `message_type` and `jsonrpc_id` (a client's response: the id it
//! answers and its content, masked, as `response`; `notifications/cancelled`: the
//! `requestId` as `related_id`). Every field is masked, then capped
//! ([`LimitsConfig`]); the fields cut are listed in the record's `truncated`.
//!
//! # Guarantees
//!
//! - The request path never waits on a sink: it moves one boxed event into a queue
//!   bounded in events and in bytes ([`pipeline`]). Within the queue's capacity nothing is lost, even while a sink fails (it is
//!   retried with backoff); beyond it the overflow policy decides (wait up to a bound, or
//!   drop), and every loss is counted (`mcp_audit_events_dropped_total`) and logged.
//! - [`Auditor::shutdown`] writes every queued event before returning.
//! - No secret reaches a sink: parameters are masked by field name and by value pattern,
//!   sensitive headers are rendered as the mask, the query string is left out.
//!
//! # Differences from the seeds
//!
//! The seeds' `/api/audit/query` answers anyone who can reach it and filters on whatever
//! user name the client claims; [`AuditQueryService`] requires an authenticated
//! principal holding the audit scope (401 / 403 otherwise), and the `user` of a record is
//! always the authenticated principal's id, never a header such as `X-User-ID`. The
//! seeds' records can be edited silently; ours are hash-chained and verifiable.
//!
//! # Tests
//!
//! `cargo test -p mcp-audit --all-features` runs everything, including the PostgreSQL
//! tests, which start their own server (PostgreSQL must be installed; `scripts/test.sh`
//! installs it) and fail when it is missing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod capture;
pub mod chain;
pub mod config;
pub mod connection;
pub mod event;
pub mod headers;
pub mod layer;
pub mod mask;
pub mod pipeline;
pub mod query;
pub mod refusals;
pub mod sink;

pub use chain::{ChainHead, Tampering, VerifyReport};
pub use config::{
    AggregateRefusalsConfig, AuditConfig, AuditLevel, ConfigError, DatabaseConfig, DatabaseType,
    FileConfig, LimitsConfig, MaskingConfig, OverflowPolicy, QueryConfig, QueueConfig, SecretUrl,
    Storage, StorageList,
};
pub use connection::ConnectionAudit;
pub use event::{AuditEvent, AuditRecord, EventKind, Outcome};
pub use headers::{sensitive_headers_layer, sensitive_response_headers_layer};
pub use layer::{Audit, AuditBody, AuditLayer, AuditUpstream, RequestId, X_REQUEST_ID};
pub use mask::Masker;
pub use pipeline::{AuditError, AuditHandle, AuditStats, Auditor, AuditorBuilder, SinkStatus};
pub use query::{AuditQuery, AuditQueryService, AuditStore, QueryPage, StoreError};
pub use refusals::RefusalAggregator;
pub use sink::file::verify_jsonl;
#[cfg(feature = "postgres")]
pub use sink::postgres::verify_postgres;
#[cfg(feature = "sqlite")]
pub use sink::sqlite::verify_sqlite;
