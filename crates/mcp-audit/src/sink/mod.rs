//! Sinks: where rendered events go. Several can be active at once; each keeps its own
//! hash chain (PostgreSQL keeps one chain shared by every writer, see
//! `postgres::PostgresSink` with the `postgres` feature).
//!
//! A sink receives batches from the background writer only. A batch either is written
//! completely or fails and leaves nothing behind (files are truncated back, database
//! transactions roll back), so the writer can retry it as is.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use crate::chain::ChainHead;
use crate::event::SinkEvent;

pub mod file;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A sink failed to write a batch. The message never holds event data or secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit sink {sink}: {message}")]
pub struct SinkError {
    /// The sink's name.
    pub sink: String,
    /// What failed.
    pub message: String,
}

impl SinkError {
    /// A new error.
    pub fn new(sink: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            sink: sink.into(),
            message: message.into(),
        }
    }
}

/// A destination for audit events.
///
/// `write_batch` must be all-or-nothing: after an error, the writer retries the same
/// batch (with backoff) until it succeeds or shutdown gives up.
pub trait AuditSink: Send + 'static {
    /// A short name for metrics labels and logs (`sqlite`, `file`, ...).
    fn name(&self) -> &str;

    /// Writes a batch, in order.
    fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// How far a database trail may grow beyond `maxRecords` before it is pruned: 1% of
/// `max_records`, at least 1,000 rows, but never more than a tenth of `max_records`
/// for small limits. Pruning runs when `max_records + slack` records are kept and cuts
/// back to `max_records`, so the DELETE runs once per `slack` events, in bulk, instead of
/// once per batch; the table holds at most `max_records + slack - 1` rows between two
/// prunes (100,999 with the default 100,000), and exactly `max_records` right after one.
///
/// ```
/// use mcp_audit::sink::prune_slack;
/// assert_eq!(prune_slack(100_000), 1_000);
/// assert_eq!(prune_slack(1_000_000), 10_000);
/// assert_eq!(prune_slack(5_000), 500);
/// assert_eq!(prune_slack(10), 1);
/// ```
pub fn prune_slack(max_records: u64) -> u64 {
    (max_records / 100).max(1_000.min(max_records / 10)).max(1)
}

/// Formats one JSON line: `{"seq":..,"prev_hash":"..","hash":"..","event":{..}}\n`.
pub(crate) fn format_line(out: &mut Vec<u8>, seq: i64, prev: &str, hash: &str, json: &str) {
    // seq is a number and the hashes are hex: nothing to escape.
    let _ = writeln!(
        out,
        "{{\"seq\":{seq},\"prev_hash\":\"{prev}\",\"hash\":\"{hash}\",\"event\":{json}}}"
    );
}

/// One line of a JSON lines trail, as read back.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Line<'a> {
    pub(crate) seq: i64,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
    #[serde(borrow)]
    pub(crate) event: &'a serde_json::value::RawValue,
}

/// JSON lines on standard output, chained (the hashes let a log shipper keep an
/// independent copy of the chain).
#[derive(Debug, Default)]
pub struct StdoutSink {
    head: ChainHead,
}

impl StdoutSink {
    /// A new sink starting a fresh chain.
    pub fn new() -> Self {
        Self::default()
    }
}

impl AuditSink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
        let mut head = self.head.clone();
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for e in batch.iter() {
            let (seq, prev, hash) = head.append(&e.json);
            format_line(&mut buf, seq, &prev, &hash, &e.json);
        }
        Box::pin(async move {
            let res = tokio::task::spawn_blocking(move || {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf).and_then(|()| out.flush())
            })
            .await;
            match res {
                Ok(Ok(())) => {
                    self.head = head;
                    Ok(())
                }
                Ok(Err(e)) => Err(SinkError::new("stdout", e.kind().to_string())),
                Err(_) => Err(SinkError::new("stdout", "writer task failed")),
            }
        })
    }
}

/// JSON lines as `tracing` events at INFO, target `mcp_audit`, field `record`.
#[derive(Debug, Default)]
pub struct TracingSink {
    head: ChainHead,
}

impl TracingSink {
    /// A new sink starting a fresh chain.
    pub fn new() -> Self {
        Self::default()
    }
}

impl AuditSink for TracingSink {
    fn name(&self) -> &str {
        "tracing"
    }

    fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
        let mut buf = Vec::with_capacity(1024);
        for e in batch.iter() {
            let (seq, prev, hash) = self.head.append(&e.json);
            buf.clear();
            format_line(&mut buf, seq, &prev, &hash, &e.json);
            let line = String::from_utf8_lossy(&buf);
            tracing::info!(target: "mcp_audit", record = %line.trim_end());
        }
        Box::pin(async { Ok(()) })
    }
}
