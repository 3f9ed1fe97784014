//! The shared PostgreSQL trail (feature `postgres`): sink, query store and verifier.
//!
//! Several gateway replicas write one table. **One chain for all writers, serialized by
//! the database:** each batch runs in one transaction that first takes a transaction-level
//! advisory lock (`pg_advisory_xact_lock`), then reads the chain head (the last row, or
//! the anchor), appends its records with the following `seq` numbers and hashes, prunes
//! in bulk beyond `maxRecords` ([`prune_slack`](crate::sink::prune_slack); storing the
//! anchor), and commits, which releases the lock. The
//! trail therefore verifies as one chain whatever the number of replicas, and `seq` is a
//! total order of the records as committed. The cost is that batches from different
//! replicas are written one after the other; a batch holds the lock for one multi-row
//! `INSERT ... SELECT FROM UNNEST(...)`.
//!
//! Each record carries its `event_id` (unique): when a commit's acknowledgement is lost
//! (the server died after committing), the retried batch skips the events already
//! stored, so a retry never duplicates a record.
//!
//! Rows also carry the `writer` (the replica's id).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use crate::chain::{ChainHead, ChainRow, Verifier, VerifyReport};
use crate::event::{IndexColumns, SinkEvent};
use crate::query::{
    AuditQuery, AuditStore, IndexedRow, QueryPage, SqlParam, StoreError, build_index_query,
    build_query,
};
use crate::sink::{AuditSink, BoxFuture, SinkError};

/// The advisory lock key serializing writers ("mcpaudit").
pub const LOCK_KEY: i64 = 0x6d63_7061_7564_6974;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts_us BIGINT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    user_id TEXT,
    tool TEXT,
    mcp_method TEXT,
    outcome TEXT,
    http_status INTEGER,
    reason TEXT,
    writer TEXT NOT NULL,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS jsonrpc_id TEXT;
CREATE INDEX IF NOT EXISTS audit_events_user ON audit_events(user_id, seq);
CREATE INDEX IF NOT EXISTS audit_events_tool ON audit_events(tool, seq);
CREATE INDEX IF NOT EXISTS audit_events_ts ON audit_events(ts_us);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
";

fn err(e: impl std::fmt::Display) -> SinkError {
    SinkError::new("postgres", e.to_string())
}

/// Connects, with a 5 s connect timeout, and creates the schema (under the lock, so that
/// replicas starting together do not race).
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.connect_timeout(Duration::from_secs(5));
    let (mut client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "audit postgres connection closed");
        }
    });
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    tx.commit().await?;
    Ok(client)
}

async fn head(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(ChainHead, i64), tokio_postgres::Error> {
    let anchor = tx
        .query_opt("SELECT seq, hash FROM audit_anchor WHERE id = 1", &[])
        .await?
        .map(|r| ChainHead {
            seq: r.get(0),
            hash: r.get(1),
        });
    let last = tx
        .query_opt(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|r| ChainHead {
            seq: r.get(0),
            hash: r.get(1),
        });
    let anchor_seq = anchor.as_ref().map_or(0, |a| a.seq);
    Ok((last.or(anchor).unwrap_or_default(), anchor_seq))
}

/// The PostgreSQL sink.
pub struct PostgresSink {
    url: String,
    writer: String,
    max_records: u64,
    client: Option<Client>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresSink")
            .field("writer", &self.writer)
            .field("max_records", &self.max_records)
            .finish_non_exhaustive()
    }
}

impl PostgresSink {
    /// Connects and creates the schema. `writer` names this replica in each row.
    pub async fn connect(
        url: &str,
        writer: impl Into<String>,
        max_records: u64,
    ) -> Result<Self, SinkError> {
        let client = connect(url).await.map_err(err)?;
        Ok(Self {
            url: url.to_owned(),
            writer: writer.into(),
            max_records,
            client: Some(client),
        })
    }

    async fn write(&mut self, batch: &[SinkEvent]) -> Result<(), tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.url).await?);
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        let ids: Vec<&str> = batch.iter().map(|e| e.columns.event_id.as_str()).collect();
        let present: std::collections::HashSet<String> = tx
            .query(
                "SELECT event_id FROM audit_events WHERE event_id = ANY($1)",
                &[&ids],
            )
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let (mut head, anchor_seq) = head(&tx).await?;
        let n = batch.len();
        let mut seq = Vec::with_capacity(n);
        let mut event_id = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut kind = Vec::with_capacity(n);
        let mut request_id = Vec::with_capacity(n);
        let mut user = Vec::with_capacity(n);
        let mut tool = Vec::with_capacity(n);
        let mut method = Vec::with_capacity(n);
        let mut outcome = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut reason = Vec::with_capacity(n);
        let mut writer = Vec::with_capacity(n);
        let mut event = Vec::with_capacity(n);
        let mut prev = Vec::with_capacity(n);
        let mut hash = Vec::with_capacity(n);
        let mut rpc_id = Vec::with_capacity(n);
        for e in batch {
            let c = &e.columns;
            if present.contains(&c.event_id) {
                continue;
            }
            let (s, p, h) = head.append(&e.json);
            seq.push(s);
            event_id.push(c.event_id.as_str());
            ts.push(c.ts_us);
            kind.push(c.kind.as_str());
            request_id.push(c.request_id.as_deref());
            user.push(c.user.as_deref());
            tool.push(c.tool.as_deref());
            method.push(c.mcp_method.as_deref());
            outcome.push(c.outcome.as_deref());
            status.push(c.http_status);
            reason.push(c.reason.as_deref());
            writer.push(self.writer.as_str());
            event.push(&*e.json);
            prev.push(p);
            hash.push(h);
            rpc_id.push(c.jsonrpc_id.as_deref());
        }
        if !seq.is_empty() {
            let params: [&(dyn ToSql + Sync); 16] = [
                &seq,
                &event_id,
                &ts,
                &kind,
                &request_id,
                &user,
                &tool,
                &method,
                &outcome,
                &status,
                &reason,
                &writer,
                &event,
                &prev,
                &hash,
                &rpc_id,
            ];
            tx.execute(
                "INSERT INTO audit_events (seq, event_id, ts_us, kind, request_id, user_id, \
                 tool, mcp_method, outcome, http_status, reason, writer, event, prev_hash, hash, \
                 jsonrpc_id) \
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int4[], \
                 $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[])",
                &params,
            )
            .await?;
        }
        let max = i64::try_from(self.max_records).unwrap_or(i64::MAX);
        let slack = i64::try_from(crate::sink::prune_slack(self.max_records)).unwrap_or(i64::MAX);
        if self.max_records > 0 && head.seq.saturating_sub(anchor_seq) >= max.saturating_add(slack)
        {
            let cut = head.seq - max;
            if let Some(row) = tx
                .query_opt("SELECT hash FROM audit_events WHERE seq = $1", &[&cut])
                .await?
            {
                let h: String = row.get(0);
                tx.execute(
                    "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    &[&cut, &h],
                )
                .await?;
                tx.execute("DELETE FROM audit_events WHERE seq <= $1", &[&cut])
                    .await?;
            }
        }
        tx.commit().await
    }
}

impl AuditSink for PostgresSink {
    fn name(&self) -> &str {
        "postgres"
    }

    fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            match self.write(&batch).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Reconnect on the next attempt.
                    self.client = None;
                    Err(err(e))
                }
            }
        })
    }
}

/// Reads the PostgreSQL trail for the query service (connects lazily, reconnects after
/// an error).
pub struct PostgresStore {
    url: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store reading the trail at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: tokio::sync::Mutex::new(None),
        }
    }
}

impl PostgresStore {
    /// Runs one statement on the (re)connected client; an error drops the client.
    async fn run(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(
                connect(&self.url)
                    .await
                    .map_err(|e| StoreError::new(e.to_string()))?,
            );
        }
        let Some(client) = guard.as_ref() else {
            return Err(StoreError::new("not connected"));
        };
        match client.query(sql, params).await {
            Ok(r) => Ok(r),
            Err(e) => {
                *guard = None;
                Err(StoreError::new(e.to_string()))
            }
        }
    }
}

fn pg_refs(params: &[SqlParam]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| match p {
            SqlParam::Text(s) => s as &(dyn ToSql + Sync),
            SqlParam::Int(i) => i as &(dyn ToSql + Sync),
        })
        .collect()
}

impl AuditStore for PostgresStore {
    fn index(&self, q: AuditQuery) -> BoxFuture<'_, Result<Vec<IndexedRow>, StoreError>> {
        Box::pin(async move {
            let (sql, params) = build_index_query(&q, |n| format!("${n}"));
            let rows = self.run(&sql, &pg_refs(&params)).await?;
            Ok(rows
                .into_iter()
                .map(|r| IndexedRow {
                    seq: r.get(0),
                    hash: r.get(1),
                    event_bytes: u64::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                })
                .collect())
        })
    }

    fn events(&self, seqs: Vec<i64>) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .run(
                    "SELECT seq, event FROM audit_events WHERE seq = ANY($1)",
                    &[&seqs],
                )
                .await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn query(&self, q: AuditQuery) -> BoxFuture<'_, Result<QueryPage, StoreError>> {
        Box::pin(async move {
            let (sql, params) = build_query(&q, |n| format!("${n}"));
            let rows = self.run(&sql, &pg_refs(&params)).await?;
            let rows = rows
                .into_iter()
                .map(|r| {
                    (
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                    )
                })
                .collect();
            Ok(QueryPage::from_rows(rows, q.limit))
        })
    }
}

/// Verifies the shared chain of a PostgreSQL trail.
pub async fn verify_postgres(client: &Client) -> Result<VerifyReport, tokio_postgres::Error> {
    let anchor = client
        .query_opt("SELECT seq, hash FROM audit_anchor WHERE id = 1", &[])
        .await?
        .map(|r| ChainHead {
            seq: r.get(0),
            hash: r.get(1),
        });
    let mut v = Verifier::new(anchor);
    let mut after = i64::MIN;
    loop {
        let rows = client
            .query(
                "SELECT seq, prev_hash, hash, event, event_id, ts_us, kind, request_id, user_id, \
                 tool, mcp_method, outcome, http_status, reason, jsonrpc_id FROM audit_events \
                 WHERE seq > $1 ORDER BY seq LIMIT 5000",
                &[&after],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let row = ChainRow {
                seq: r.get(0),
                prev_hash: r.get(1),
                hash: r.get(2),
                json: r.get(3),
                columns: Some(IndexColumns {
                    event_id: r.get(4),
                    ts_us: r.get(5),
                    kind: r.get(6),
                    request_id: r.get(7),
                    user: r.get(8),
                    tool: r.get(9),
                    mcp_method: r.get(10),
                    outcome: r.get(11),
                    http_status: r.get(12),
                    reason: r.get(13),
                    jsonrpc_id: r.get(14),
                }),
            };
            after = row.seq;
            v.push(&row);
            if v.failed() {
                return Ok(v.finish());
            }
        }
    }
    Ok(v.finish())
}
