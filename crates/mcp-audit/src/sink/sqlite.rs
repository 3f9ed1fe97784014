//! The embedded SQLite trail: sink, query store and verifier.
//!
//! One file (WAL mode, `synchronous=NORMAL`, 16 KiB pages when created), table `audit_events` (one row per record:
//! `seq`, the indexed columns, the event JSON, `prev_hash`, `hash`) and table
//! `audit_anchor` (the last pruned record, see [`crate::chain`]). Each batch is inserted in
//! one transaction with a cached prepared statement; `maxRecords` retention runs in the
//! same transaction, in bulk: once `maxRecords` plus [`prune_slack`] records are kept, the
//! oldest are deleted down to `maxRecords` (see [`prune_slack`] for the bound).
//!
//! **Byte budget** ([`SqliteSink::max_bytes`], `database.maxBytes`, default 1 GiB in
//! [`crate::DatabaseConfig`]). After each batch, in the same transaction, the pages in use
//! (`page_count - freelist_count`, times the page size) are compared with the budget;
//! above it, the oldest records (never the newest) are deleted until about an eighth of
//! the budget is free, and the last pruned record becomes the chain's anchor, as with
//! `maxRecords`: `verify_sqlite` reports the remaining records intact from the anchor.
//! Freed pages are reused by later inserts, so the file stops growing (it is not
//! shrunk: no `VACUUM`). The WAL is checkpointed automatically before it reaches
//! [`wal_limit`] (an eighth of the budget, 4 to 64 MiB), truncated to it after each
//! checkpoint (`journal_size_limit`), and checkpointed with `TRUNCATE` after a batch
//! that left it larger (without waiting for readers: a reader holding an old snapshot
//! delays the truncation to a later batch, never the writer). Bound: database file at most `maxBytes` plus one batch (and the
//! sparse index pages the deletion leaves), WAL at most [`wal_limit`] plus one batch
//! (while a reader holds an old snapshot, until the next batch). The query API reads in
//! short transactions and never holds a snapshot while a client reads.
//!
//! **One writer per trail.** [`SqliteSink::open`] takes an exclusive advisory lock
//! (`flock`) on `<file>.lock` beside the database, held as long as the sink: a second
//! sink on the same file, in this process or another (a second gateway started in the
//! same directory), fails at once with an error naming the file. Readers take no lock:
//! the query store and `verify_sqlite` read the WAL database while the writer runs. The
//! lock file is left in place (a stale one is harmless: the lock goes with the process).
//! The lock is advisory: a process that writes the database without taking it (the
//! `sqlite3` shell, an older version) is not stopped; the sink then finds the chain head
//! moved at its next write, logs an error naming the foreign rows, and chains on from the
//! new head (the verifier reports the foreign rows unless they were chained correctly).
//! On platforms other than Unix there is no lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::chain::{ChainHead, ChainRow, Verifier, VerifyReport, record_hash_hex};
use crate::event::{IndexColumns, SinkEvent};
use crate::query::{
    AuditQuery, AuditStore, IndexedRow, QueryPage, SqlParam, StoreError, build_index_query,
    build_query,
};
use crate::sink::{AuditSink, BoxFuture, SinkError, prune_slack};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    user_id TEXT,
    tool TEXT,
    mcp_method TEXT,
    outcome TEXT,
    http_status INTEGER,
    reason TEXT,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    jsonrpc_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_user ON audit_events(user_id, seq);
CREATE INDEX IF NOT EXISTS audit_events_tool ON audit_events(tool, seq);
CREATE INDEX IF NOT EXISTS audit_events_ts ON audit_events(ts_us);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
";

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The page size of new trail files.
const PAGE_SIZE: i64 = 16_384;

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Takes effect only when the file is created (before WAL mode is set); an existing
    // trail keeps its page size. With ~1.5 KiB rows, 16 KiB pages split a third as often
    // as 4 KiB ones, and the WAL and checkpoint make a third of the write and read calls:
    // about 10% less CPU per event (BENCHMARKS.md, round 2).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Whether `audit_events` has the `jsonrpc_id` column (trails created before it was
/// added do not, until a writer or store opens them).
fn has_jsonrpc_id(conn: &Connection) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('audit_events')")?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names.iter().any(|n| n == "jsonrpc_id"))
}

/// Brings a trail created by an older version to the current schema: adds the
/// `jsonrpc_id` column (NULL in the older rows, whose records hold no id, so they still
/// verify). Another process migrating at the same time is not an error.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    if has_jsonrpc_id(conn)? {
        return Ok(());
    }
    match conn.execute_batch("ALTER TABLE audit_events ADD COLUMN jsonrpc_id TEXT") {
        Ok(()) => {
            tracing::info!("audit trail: added column audit_events.jsonrpc_id (schema migration)");
            Ok(())
        }
        Err(e) if e.to_string().contains("duplicate column") => Ok(()),
        // Say what was being done: a trail this version cannot bring up to date.
        Err(rusqlite::Error::SqliteFailure(code, msg)) => Err(rusqlite::Error::SqliteFailure(
            code,
            Some(format!(
                "schema migration failed (adding column audit_events.jsonrpc_id to a trail \
                 written by an older version): {}",
                msg.unwrap_or_else(|| code.to_string())
            )),
        )),
        Err(e) => Err(e),
    }
}

fn read_anchor(conn: &Connection) -> rusqlite::Result<Option<ChainHead>> {
    conn.query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
        Ok(ChainHead {
            seq: r.get(0)?,
            hash: r.get(1)?,
        })
    })
    .optional()
}

/// The chain head (the last record, or the anchor) and the anchor's `seq`.
fn read_head(conn: &Connection) -> rusqlite::Result<(ChainHead, i64)> {
    let anchor = read_anchor(conn)?;
    let last: Option<ChainHead> = conn
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(ChainHead {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                })
            },
        )
        .optional()?;
    let anchor_seq = anchor.as_ref().map_or(0, |a| a.seq);
    Ok((last.or(anchor).unwrap_or_default(), anchor_seq))
}

struct State {
    conn: Connection,
    head: ChainHead,
    anchor_seq: i64,
    max_records: u64,
    /// `database.maxBytes` (0: unlimited).
    max_bytes: u64,
    /// The WAL file, checkpointed and truncated once it exceeds `wal_limit`.
    wal_path: PathBuf,
    wal_limit: u64,
}

impl State {
    /// After a failed write: re-reads the chain head, and says so loudly when someone
    /// else moved it (a write conflict), so that the retry chains on from the stored head
    /// instead of failing on `seq` for ever.
    fn resync(&mut self) {
        match read_head(&self.conn) {
            Ok((head, anchor_seq)) => {
                if head != self.head {
                    tracing::error!(
                        expected_seq = self.head.seq,
                        found_seq = head.seq,
                        "audit trail written by another writer: the chain head moved behind \
                         this sink's back; continuing from the stored head (run `audit verify`)"
                    );
                    self.head = head;
                }
                self.anchor_seq = anchor_seq;
            }
            Err(e) => tracing::warn!(error = %e, "audit trail: cannot re-read the chain head"),
        }
    }

    fn write(&mut self, batch: &[SinkEvent]) -> rusqlite::Result<ChainHead> {
        let mut head = self.head.clone();
        let tx = self.conn.transaction()?;
        let mut new_anchor = None;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit_events (seq, event_id, ts_us, kind, request_id, user_id, \
                 tool, mcp_method, outcome, http_status, reason, event, prev_hash, hash, \
                 jsonrpc_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for e in batch {
                let seq = head.seq + 1;
                let hash = record_hash_hex(&head.hash, seq, &e.json);
                let c = &e.columns;
                stmt.execute(params![
                    seq,
                    c.event_id,
                    c.ts_us,
                    c.kind,
                    c.request_id,
                    c.user,
                    c.tool,
                    c.mcp_method,
                    c.outcome,
                    c.http_status,
                    c.reason,
                    &*e.json,
                    head.hash.as_str(),
                    hash.as_str(),
                    c.jsonrpc_id
                ])?;
                head.advance(seq, &hash);
            }
            let mut cut = prune_cut(head.seq, self.anchor_seq, self.max_records);
            if let Some(c) = byte_cut(&tx, self.anchor_seq, head.seq, self.max_bytes)? {
                cut = Some(cut.map_or(c, |x| x.max(c)));
            }
            if let Some(cut) = cut {
                let hash: Option<String> = tx
                    .prepare_cached("SELECT hash FROM audit_events WHERE seq = ?1")?
                    .query_row([cut], |r| r.get(0))
                    .optional()?;
                if let Some(hash) = hash {
                    tx.prepare_cached(
                        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2) \
                         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    )?
                    .execute(params![cut, hash])?;
                    tx.prepare_cached("DELETE FROM audit_events WHERE seq <= ?1")?
                        .execute([cut])?;
                    new_anchor = Some(cut);
                }
            }
        }
        tx.commit()?;
        if let Some(a) = new_anchor {
            self.anchor_seq = a;
        }
        self.bound_wal();
        Ok(head)
    }

    /// With a byte budget: once the WAL file exceeds its limit (a large batch, or
    /// checkpoints held back by readers), checkpoints it and truncates it. A reader still
    /// in the WAL makes the checkpoint partial (after the busy timeout); the next batch
    /// tries again.
    fn bound_wal(&self) {
        if self.max_bytes == 0 {
            return;
        }
        let size = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        if size <= self.wal_limit {
            return;
        }
        // Without waiting for readers (a reader holding a snapshot would otherwise stall
        // every batch by the busy timeout): a partial checkpoint is retried next batch.
        let _ = self.conn.busy_timeout(Duration::ZERO);
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::debug!(error = %e, "audit trail: WAL checkpoint deferred");
        }
        let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
    }
}

/// Bytes counted for a record besides its event (columns, hashes, index entries).
const ROW_OVERHEAD: u64 = 512;

/// The WAL limit of a trail with a byte budget: an eighth of it, 4 to 64 MiB.
pub fn wal_limit(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(4 << 20, 64 << 20)
}

/// With a byte budget (`max_bytes` > 0) whose pages in use it exceeds: the last `seq` to
/// prune so that about `used - 7/8 max_bytes` bytes are freed, oldest first, never the
/// newest record (`head_seq`).
fn byte_cut(
    tx: &rusqlite::Transaction<'_>,
    anchor_seq: i64,
    head_seq: i64,
    max_bytes: u64,
) -> rusqlite::Result<Option<i64>> {
    if max_bytes == 0 {
        return Ok(None);
    }
    let pragma = |name: &str| -> rusqlite::Result<u64> {
        let v: i64 = tx.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    let page = pragma("page_size")?.max(512);
    let used = pragma("page_count")?.saturating_sub(pragma("freelist_count")?) * page;
    if used <= max_bytes {
        return Ok(None);
    }
    let excess = used - max_bytes / 8 * 7;
    let mut stmt = tx.prepare_cached(
        "SELECT seq, octet_length(event) FROM audit_events WHERE seq > ?1 AND seq < ?2 \
         ORDER BY seq",
    )?;
    let mut rows = stmt.query([anchor_seq, head_seq])?;
    let (mut freed, mut cut) = (0u64, None);
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let n = u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0) + ROW_OVERHEAD;
        // A large event fills overflow pages of its own: whole pages come back.
        freed += if n > page / 4 {
            n.div_ceil(page - 4) * page
        } else {
            n
        };
        cut = Some(seq);
        if freed >= excess {
            break;
        }
    }
    Ok(cut)
}

/// Where to cut the trail after a batch that left `head_seq` as the last record, with
/// `anchor_seq` the last record pruned so far: `Some(cut)` (delete `seq <= cut`, keeping
/// exactly `max_records`) once `max_records + prune_slack(max_records)` records are kept.
fn prune_cut(head_seq: i64, anchor_seq: i64, max_records: u64) -> Option<i64> {
    if max_records == 0 {
        return None;
    }
    let max = i64::try_from(max_records).unwrap_or(i64::MAX);
    let slack = i64::try_from(prune_slack(max_records)).unwrap_or(i64::MAX);
    let kept = head_seq.saturating_sub(anchor_seq);
    (kept >= max.saturating_add(slack)).then(|| head_seq - max)
}

/// The SQLite sink.
pub struct SqliteSink {
    state: Arc<Mutex<State>>,
    _lock: WriterLock,
}

/// The exclusive lock on a trail, released when dropped (or when the process ends).
struct WriterLock {
    #[cfg(unix)]
    _file: std::fs::File,
}

/// The lock file of the trail at `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The path as written, made absolute (for messages).
fn shown(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

#[cfg(unix)]
fn take_writer_lock(path: &Path) -> Result<WriterLock, SinkError> {
    use rustix::fs::{FlockOperation, flock};
    let lock = lock_path(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| {
            SinkError::new(
                "sqlite",
                format!("cannot open the lock file {}: {}", shown(&lock), e.kind()),
            )
        })?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(WriterLock { _file: file }),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(SinkError::new(
            "sqlite",
            format!(
                "the audit trail {} is in use by another writer (its lock {} is held by \
                 another process or sink): one writer per trail; give each instance its \
                 own sqlitePath, or share one PostgreSQL trail",
                shown(path),
                shown(&lock)
            ),
        )),
        Err(e) => Err(SinkError::new(
            "sqlite",
            format!("cannot lock {}: {e}", shown(&lock)),
        )),
    }
}

#[cfg(not(unix))]
fn take_writer_lock(_path: &Path) -> Result<WriterLock, SinkError> {
    Ok(WriterLock {})
}

impl std::fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSink").finish_non_exhaustive()
    }
}

impl SqliteSink {
    /// Takes the trail's writer lock (see the module documentation), opens (or
    /// creates) the database and resumes its chain. `max_records` 0 keeps everything.
    ///
    /// Fails at once, naming the file, when another sink holds the trail.
    pub fn open(path: impl AsRef<Path>, max_records: u64) -> Result<Self, SinkError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let lock = take_writer_lock(path)?;
        let fail = |e: rusqlite::Error| SinkError::new("sqlite", format!("{}: {e}", shown(path)));
        let conn = open_conn(path).map_err(fail)?;
        let (head, anchor_seq) = read_head(&conn).map_err(fail)?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                conn,
                head,
                anchor_seq,
                max_records,
                max_bytes: 0,
                wal_path: PathBuf::from(wal_path),
                wal_limit: 0,
            })),
            _lock: lock,
        })
    }

    /// Sets the byte budget (`database.maxBytes`; 0, the default of `open`, is
    /// unlimited). See [`DatabaseConfig::max_bytes`](crate::DatabaseConfig::max_bytes)
    /// and the module documentation for what happens at the budget.
    pub fn max_bytes(self, max_bytes: u64) -> Self {
        if let Ok(mut s) = self.state.lock() {
            s.max_bytes = max_bytes;
            if max_bytes > 0 {
                let limit = wal_limit(max_bytes);
                s.wal_limit = limit;
                let page: i64 = s
                    .conn
                    .query_row("PRAGMA page_size", [], |r| r.get(0))
                    .unwrap_or(PAGE_SIZE);
                let pages = (i64::try_from(limit).unwrap_or(i64::MAX) / page.max(512)).min(1000);
                // Truncated to the limit after each checkpoint that resets it, and
                // checkpointed before it reaches the limit.
                let _ = s.conn.pragma_update(None, "journal_size_limit", limit);
                let _ = s
                    .conn
                    .pragma_update(None, "wal_autocheckpoint", pages.max(16));
            }
        }
        self
    }
}

impl AuditSink for SqliteSink {
    fn name(&self) -> &str {
        "sqlite"
    }

    fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let res = tokio::task::spawn_blocking(move || match state.lock() {
                Ok(mut s) => match s.write(&batch) {
                    Ok(head) => {
                        s.head = head;
                        Ok(())
                    }
                    Err(e) => {
                        s.resync();
                        Err(e.to_string())
                    }
                },
                Err(_) => Err("state poisoned".to_owned()),
            })
            .await;
            match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::new("sqlite", e)),
                Err(_) => Err(SinkError::new("sqlite", "writer task failed")),
            }
        })
    }
}

/// Reads the SQLite trail for the query service.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database (creating the schema if needed).
    pub fn open(path: impl Into<PathBuf>) -> rusqlite::Result<Self> {
        let conn = open_conn(&path.into())?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

fn to_sql(p: &SqlParam) -> &dyn rusqlite::ToSql {
    match p {
        SqlParam::Text(s) => s,
        SqlParam::Int(i) => i,
    }
}

impl AuditStore for SqliteStore {
    fn query(&self, q: AuditQuery) -> BoxFuture<'_, Result<QueryPage, StoreError>> {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let (sql, params) = build_query(&q, |n| format!("?{n}"));
            let rows = tokio::task::spawn_blocking(move || {
                let conn = conn.lock().map_err(|_| StoreError::new("store poisoned"))?;
                let mut stmt = conn
                    .prepare_cached(&sql)
                    .map_err(|e| StoreError::new(e.to_string()))?;
                let refs: Vec<&dyn rusqlite::ToSql> = params.iter().map(to_sql).collect();
                let rows = stmt
                    .query_map(refs.as_slice(), |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })
                    .map_err(|e| StoreError::new(e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::new(e.to_string()))?;
                Ok::<_, StoreError>(rows)
            })
            .await
            .map_err(|_| StoreError::new("query task failed"))??;
            Ok(QueryPage::from_rows(rows, q.limit))
        })
    }

    fn index(&self, q: AuditQuery) -> BoxFuture<'_, Result<Vec<IndexedRow>, StoreError>> {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let (sql, params) = build_index_query(&q, |n| format!("?{n}"));
            tokio::task::spawn_blocking(move || {
                let conn = conn.lock().map_err(|_| StoreError::new("store poisoned"))?;
                let mut stmt = conn
                    .prepare_cached(&sql)
                    .map_err(|e| StoreError::new(e.to_string()))?;
                let refs: Vec<&dyn rusqlite::ToSql> = params.iter().map(to_sql).collect();
                stmt.query_map(refs.as_slice(), |r| {
                    Ok(IndexedRow {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                        event_bytes: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    })
                })
                .map_err(|e| StoreError::new(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::new(e.to_string()))
            })
            .await
            .map_err(|_| StoreError::new("query task failed"))?
        })
    }

    fn events(&self, seqs: Vec<i64>) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>> {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().map_err(|_| StoreError::new("store poisoned"))?;
                // One short read transaction per chunk: the same snapshot for its rows,
                // released before the chunk is sent.
                let tx = conn
                    .transaction()
                    .map_err(|e| StoreError::new(e.to_string()))?;
                let mut out = Vec::with_capacity(seqs.len());
                {
                    let mut stmt = tx
                        .prepare_cached("SELECT event FROM audit_events WHERE seq = ?1")
                        .map_err(|e| StoreError::new(e.to_string()))?;
                    for seq in seqs {
                        let ev: Option<String> = stmt
                            .query_row([seq], |r| r.get(0))
                            .optional()
                            .map_err(|e| StoreError::new(e.to_string()))?;
                        if let Some(ev) = ev {
                            out.push((seq, ev));
                        }
                    }
                }
                tx.commit().map_err(|e| StoreError::new(e.to_string()))?;
                Ok(out)
            })
            .await
            .map_err(|_| StoreError::new("query task failed"))?
        })
    }
}

/// Verifies the chain of a SQLite trail (blocking; run it off the executor).
pub fn verify_sqlite(path: impl AsRef<Path>) -> rusqlite::Result<VerifyReport> {
    let conn = Connection::open(path.as_ref())?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let anchor = read_anchor(&conn)?;
    let mut v = Verifier::new(anchor);
    // A trail no writer of this version opened yet has no jsonrpc_id column: its rows
    // hold no id.
    let id_col = if has_jsonrpc_id(&conn)? {
        "jsonrpc_id"
    } else {
        "NULL"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT seq, prev_hash, hash, event, event_id, ts_us, kind, request_id, user_id, tool, \
         mcp_method, outcome, http_status, reason, {id_col} FROM audit_events ORDER BY seq"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let row = ChainRow {
            seq: r.get(0)?,
            prev_hash: r.get(1)?,
            hash: r.get(2)?,
            json: r.get(3)?,
            columns: Some(IndexColumns {
                event_id: r.get(4)?,
                ts_us: r.get(5)?,
                kind: r.get(6)?,
                request_id: r.get(7)?,
                user: r.get(8)?,
                tool: r.get(9)?,
                mcp_method: r.get(10)?,
                outcome: r.get(11)?,
                http_status: r.get(12)?,
                reason: r.get(13)?,
                jsonrpc_id: r.get(14)?,
            }),
        };
        v.push(&row);
        if v.failed() {
            break;
        }
    }
    Ok(v.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_size(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    }

    fn events(prefix: &str, n: usize) -> Vec<SinkEvent> {
        (0..n)
            .map(|i| {
                let rec = crate::AuditRecord {
                    event_id: format!("{prefix}-{i}"),
                    timestamp: "2026-11-21T08:00:00.000000Z".into(),
                    kind: Some(crate::EventKind::Request),
                    user: (i % 3 == 0).then(|| format!("u{i}")),
                    tool: (i % 2 == 0).then(|| "t".to_owned()),
                    http_status: Some(200),
                    ..Default::default()
                };
                SinkEvent {
                    json: serde_json::to_string(&rec).unwrap().into(),
                    columns: crate::event::IndexColumns::of(&rec),
                }
            })
            .collect()
    }

    /// seq, event, prev_hash, hash, event_id, user_id, tool.
    type StoredRow = (
        i64,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );

    #[test]
    fn batches_of_every_size_are_stored_row_by_row_on_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let sink = SqliteSink::open(&path, 0).unwrap();
        // Batches of several sizes, one after the other.
        let mut all = Vec::new();
        for (b, n) in [1, 63, 64, 100, 2, 31].into_iter().enumerate() {
            let batch = events(&format!("b{b}"), n);
            let mut st = sink.state.lock().unwrap();
            let head = st.write(&batch).unwrap();
            st.head = head;
            all.extend(batch);
        }
        drop(sink);
        let report = verify_sqlite(&path).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.records, all.len() as u64);
        // The chain, recomputed one record at a time, and the columns.
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT seq, event, prev_hash, hash, event_id, user_id, tool FROM audit_events ORDER BY seq")
            .unwrap();
        let rows: Vec<StoredRow> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut head = ChainHead::default();
        for (row, e) in rows.iter().zip(&all) {
            let (seq, prev, hash) = head.append(&e.json);
            assert_eq!(
                (row.0, &row.1, &row.2, &row.3),
                (seq, &e.json.to_string(), &prev, &hash)
            );
            assert_eq!(
                (&row.4, &row.5, &row.6),
                (&e.columns.event_id, &e.columns.user, &e.columns.tool)
            );
        }
        assert_eq!(rows.len(), all.len());
    }

    #[test]
    fn new_trails_get_16k_pages_and_existing_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.db");
        drop(SqliteSink::open(&fresh, 0).unwrap());
        assert_eq!(page_size(&fresh), PAGE_SIZE);
        assert_eq!(
            Connection::open(&fresh)
                .unwrap()
                .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .unwrap(),
            "wal"
        );
        // A trail created with 4 KiB pages (by an earlier version) stays as it is.
        let old = dir.path().join("old.db");
        {
            let c = Connection::open(&old).unwrap();
            c.pragma_update(None, "page_size", 4096).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch(SCHEMA).unwrap();
        }
        let sink = SqliteSink::open(&old, 4).unwrap();
        assert_eq!(page_size(&old), 4096);
        // It is written to, pruned and verified as before.
        for b in 0..3 {
            let batch: Vec<SinkEvent> = (0..5)
                .map(|i| {
                    let rec = crate::AuditRecord {
                        event_id: format!("e{b}-{i}"),
                        timestamp: "2026-11-21T08:00:00.000000Z".into(),
                        kind: Some(crate::EventKind::Startup),
                        ..Default::default()
                    };
                    SinkEvent {
                        json: serde_json::to_string(&rec).unwrap().into(),
                        columns: crate::event::IndexColumns::of(&rec),
                    }
                })
                .collect();
            let state = Arc::clone(&sink.state);
            let mut st = state.lock().unwrap();
            let head = st.write(&batch).unwrap();
            st.head = head;
        }
        drop(sink);
        let report = verify_sqlite(&old).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.head.seq, 15);
        assert!(report.anchor.is_some());
        assert!(report.records >= 4 && report.records < 4 + 1, "{report:?}");
        drop(SqliteStore::open(old.clone()).unwrap());
        assert_eq!(page_size(&old), 4096);
    }
}
