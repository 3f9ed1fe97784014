//! The query API: `GET /api/audit/query`, a tower service mountable in axum.
//!
//! Parameters (all optional, each at most once; unknown ones are refused with 400):
//!
//! | name     | meaning                                                                 |
//! |----------|-------------------------------------------------------------------------|
//! | `user`   | the principal's qualified id (`apikey:ops`, `jwt:<issuer>#<sub>`, ...); a bare id is refused |
//! | `tool`   | the tool (or resource URI, or prompt) name                              |
//! | `method` | the JSON-RPC method (`tools/call`, ...); each message of a batch is a row |
//! | `jsonrpc_id` | the JSON-RPC id as JSON (`7`, `"abc"`): a request, the client response answering it, the `notifications/cancelled` naming it |
//! | `status` | `success`, `denied`, `error`, `failed` (= denied or error), `cancelled` |
//! | `since`  | RFC 3339 instant, inclusive                                             |
//! | `until`  | RFC 3339 instant, exclusive                                             |
//! | `limit`  | 1.., default 100, capped at `query.maxLimit` (default 1000)             |
//! | `cursor` | the `next_cursor` of the previous page (opaque, keyset pagination)      |
//!
//! Records come newest first as
//! `{"events":[{"seq":..,"hash":"..","event":{..}}],"count":n,"truncated":false,"next_cursor":".."|null}`.
//!
//! **Bounded in bytes, streamed.** A page holds at most `limit` records *and* at most
//! `query.maxPageBytes` bytes of JSON (default [`DEFAULT_MAX_PAGE_BYTES`], 8 MiB): the
//! service first reads the matching rows' sequence numbers, hashes and event sizes (never
//! their events), plans the page within the budget, then writes it as a chunked body,
//! fetching the events of about [`CHUNK_BYTES`] at a time only when the client has taken
//! the previous chunk. The memory a query holds is one or two chunks (a single larger
//! record, at most the page budget), however large the page or the rows, and however
//! slowly the client reads. Each chunk is a short read of its own: no read transaction
//! is held while the client reads (a WAL checkpoint is never held back by a reader).
//!
//! - When the budget stops a page before `limit`, `truncated` is `true` and `next_cursor`
//!   continues after the last record sent; no record is ever cut.
//! - A record whose event alone exceeds the page budget is sent as
//!   `{"seq":..,"hash":"..","event":null,"elided_bytes":n}` (read it from the database
//!   directly), so that paging always moves on.
//! - If the store fails once the page has started, the page is closed as valid JSON with
//!   `"truncated":true`, `"error":"store unavailable"` and a `next_cursor` after the last
//!   record sent. A client that takes nothing for `query.stallTimeoutMs` (default 30 s)
//!   has its response aborted (the connection is reset: never a clean end that would
//!   look like a complete page).
//! - At most `query.maxConcurrent` queries (default [`DEFAULT_MAX_CONCURRENT`]) are
//!   served at once, a slot being held until the response ends; beyond that the answer
//!   is 503 with `Retry-After: 1` (reason `unavailable`), before any store access.
//!
//! **Access.** Unlike the seeds' query endpoints, which answer anyone, this one requires a
//! [`Principal`] in the request extensions (put there by the authentication layer) that
//! holds the audit scope (default `audit:read`, which reads every row) or the own-rows
//! scope (default `audit:read:own`): without a principal it answers 401, with a principal
//! holding neither 403. A principal holding only the own-rows scope reads the rows
//! recorded under its own qualified id: without `user` the filter is its id, with
//! another `user` (or `anonymous`) the answer is 403.
//!
//! Client text in the trail (tool names, user ids) is stored with display controls
//! spelled as JSON escapes ([`crate::mask::escape_display_controls`]); the `user` and
//! `tool` filters are matched the same way, so a filter naming what the client sent
//! finds its rows.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")] {
//! use std::sync::Arc;
//! use axum::Router;
//! use mcp_audit::{AuditQueryService, sink::sqlite::SqliteStore};
//!
//! let store = SqliteStore::open("/var/lib/mcp/audit.db").unwrap();
//! let app: Router = Router::new()
//!     .route_service("/api/audit/query", AuditQueryService::new(Arc::new(store)));
//! // ... .layer(auth layer that inserts the Principal)
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response};
use http_body::Frame;
use mcp_core::{Body, Principal, Rejection, RejectionReason};
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tower_service::Service;

use crate::sink::BoxFuture;

/// The default page size.
pub const DEFAULT_LIMIT: u32 = 100;

/// The default byte budget of one page of the query API (8 MiB).
pub const DEFAULT_MAX_PAGE_BYTES: u64 = 8 * 1024 * 1024;

/// The smallest page budget accepted (64 KiB).
pub const MIN_PAGE_BYTES: u64 = 64 * 1024;

/// The default number of queries served at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 4;

/// The default time a response may wait for its client to take a chunk (30 s).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The events of a page are fetched and written about this many bytes at a time.
pub const CHUNK_BYTES: u64 = 256 * 1024;

/// The bytes a record's item may take on top of its event
/// (`{"seq":<i64>,"hash":"<64 hex>","event":},`).
const ITEM_OVERHEAD: u64 = 128;

/// The bytes reserved in a page for its head and tail.
const FRAME_RESERVE: u64 = 512;

/// The outcome filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// `success`.
    Success,
    /// `denied`.
    Denied,
    /// `error`.
    Error,
    /// `failed`: denied or error (the seeds' `status=failed`).
    Failed,
    /// `cancelled`: abandoned before its response (not counted in `failed`: the gateway
    /// neither refused nor failed it).
    Cancelled,
}

/// A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// The principal's id.
    pub user: Option<String>,
    /// The tool, resource or prompt name.
    pub tool: Option<String>,
    /// The JSON-RPC method.
    pub method: Option<String>,
    /// The JSON-RPC id, as JSON text (the `jsonrpc_id` column).
    pub jsonrpc_id: Option<String>,
    /// The outcome.
    pub status: Option<StatusFilter>,
    /// Inclusive lower bound, microseconds since the epoch.
    pub since_us: Option<i64>,
    /// Exclusive upper bound, microseconds since the epoch.
    pub until_us: Option<i64>,
    /// Page size.
    pub limit: u32,
    /// Only records with a smaller `seq` (from the cursor).
    pub before_seq: Option<i64>,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            user: None,
            tool: None,
            method: None,
            jsonrpc_id: None,
            status: None,
            since_us: None,
            until_us: None,
            limit: DEFAULT_LIMIT,
            before_seq: None,
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Sequence number.
    pub seq: i64,
    /// The record's chain hash.
    pub hash: String,
    /// The event JSON.
    pub event: String,
}

/// A matching row as the query API plans a page: everything but the event, whose size
/// is given instead (read without reading the event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedRow {
    /// Sequence number.
    pub seq: i64,
    /// The record's chain hash.
    pub hash: String,
    /// The size of the event JSON, in bytes.
    pub event_bytes: u64,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPage {
    /// Records, newest first.
    pub records: Vec<StoredRecord>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

impl QueryPage {
    /// Builds a page from up to `limit + 1` rows `(seq, hash, event)` in descending order.
    pub fn from_rows(mut rows: Vec<(i64, String, String)>, limit: u32) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|(seq, _, _)| encode_cursor(*seq))
        } else {
            None
        };
        Self {
            records: rows
                .into_iter()
                .map(|(seq, hash, event)| StoredRecord { seq, hash, event })
                .collect(),
            next_cursor,
        }
    }
}

/// A store failed; the message is logged, never sent to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit store: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    /// A new error.
    pub fn new(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

/// A queryable trail (SQLite, PostgreSQL).
pub trait AuditStore: Send + Sync + 'static {
    /// Runs a query: records matching every filter, newest first, at most `limit`, built
    /// whole in memory (for programs reading their own trail; the query service uses
    /// [`AuditStore::index`] and [`AuditStore::events`], which bound memory).
    fn query(&self, q: AuditQuery) -> BoxFuture<'_, Result<QueryPage, StoreError>>;

    /// The rows matching every filter, newest first, at most `limit + 1`, without their
    /// events (see [`IndexedRow`]): the events are not read.
    fn index(&self, q: AuditQuery) -> BoxFuture<'_, Result<Vec<IndexedRow>, StoreError>>;

    /// The events of the records with these sequence numbers, as `(seq, event)` in any
    /// order; a record gone since (pruned) is left out.
    fn events(&self, seqs: Vec<i64>) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>>;
}

/// A SQL parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlParam {
    /// Text.
    Text(String),
    /// Integer.
    Int(i64),
}

/// Builds the SQL of a query over `audit_events`, with placeholders made by `ph(n)`
/// (`?n` for SQLite, `$n` for PostgreSQL). Fetches `limit + 1` rows of
/// `seq, hash, event`.
pub fn build_query(q: &AuditQuery, ph: impl Fn(usize) -> String) -> (String, Vec<SqlParam>) {
    build_select(q, "seq, hash, event", ph)
}

/// Like [`build_query`], for the rows of [`AuditStore::index`]:
/// `seq, hash, octet_length(event)` (SQLite 3.43 and PostgreSQL read the size without
/// reading the event).
pub fn build_index_query(q: &AuditQuery, ph: impl Fn(usize) -> String) -> (String, Vec<SqlParam>) {
    build_select(q, "seq, hash, octet_length(event)", ph)
}

fn build_select(
    q: &AuditQuery,
    columns: &str,
    ph: impl Fn(usize) -> String,
) -> (String, Vec<SqlParam>) {
    let mut sql = format!("SELECT {columns} FROM audit_events WHERE TRUE");
    let mut params = Vec::new();
    let mut add = |sql: &mut String, clause: &str, p: SqlParam| {
        params.push(p);
        sql.push_str(&clause.replace("{}", &ph(params.len())));
    };
    let text = |s: &str| SqlParam::Text(crate::mask::escape_display_controls(s).into_owned());
    if let Some(u) = &q.user {
        add(&mut sql, " AND user_id = {}", text(u));
    }
    if let Some(t) = &q.tool {
        add(&mut sql, " AND tool = {}", text(t));
    }
    if let Some(m) = &q.method {
        add(&mut sql, " AND mcp_method = {}", text(m));
    }
    if let Some(i) = &q.jsonrpc_id {
        add(&mut sql, " AND jsonrpc_id = {}", text(i));
    }
    match q.status {
        Some(StatusFilter::Success) => sql.push_str(" AND outcome = 'success'"),
        Some(StatusFilter::Denied) => sql.push_str(" AND outcome = 'denied'"),
        Some(StatusFilter::Error) => sql.push_str(" AND outcome = 'error'"),
        Some(StatusFilter::Failed) => sql.push_str(" AND outcome IN ('denied', 'error')"),
        Some(StatusFilter::Cancelled) => sql.push_str(" AND outcome = 'cancelled'"),
        None => {}
    }
    if let Some(s) = q.since_us {
        add(&mut sql, " AND ts_us >= {}", SqlParam::Int(s));
    }
    if let Some(u) = q.until_us {
        add(&mut sql, " AND ts_us < {}", SqlParam::Int(u));
    }
    if let Some(c) = q.before_seq {
        add(&mut sql, " AND seq < {}", SqlParam::Int(c));
    }
    add(
        &mut sql,
        " ORDER BY seq DESC LIMIT {}",
        SqlParam::Int(i64::from(q.limit) + 1),
    );
    (sql, params)
}

/// Encodes a cursor (opaque to clients).
pub fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{seq}"))
}

/// Decodes a cursor.
pub fn decode_cursor(s: &str) -> Option<i64> {
    if s.len() > 64 {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    let n: i64 = text.strip_prefix("v1:")?.parse().ok()?;
    (n > 0).then_some(n)
}

fn parse_time(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// Why a query string was refused: names the parameter, never echoes its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter `{0}`")]
pub struct QueryParamError(pub &'static str);

const MAX_QUERY_LEN: usize = 4096;
const MAX_VALUE_LEN: usize = 512;

/// Parses a query string (`user=..&limit=..`), capping `limit` at `max_limit`.
pub fn parse_query(qs: Option<&str>, max_limit: u32) -> Result<AuditQuery, QueryParamError> {
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT.min(max_limit),
        ..AuditQuery::default()
    };
    let Some(qs) = qs else { return Ok(q) };
    if qs.len() > MAX_QUERY_LEN {
        return Err(QueryParamError("query"));
    }
    let mut seen: Vec<&'static str> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(qs.as_bytes()) {
        let key: &'static str = match &*k {
            "user" => "user",
            "tool" => "tool",
            "method" => "method",
            "jsonrpc_id" => "jsonrpc_id",
            "status" => "status",
            "since" => "since",
            "until" => "until",
            "limit" => "limit",
            "cursor" => "cursor",
            _ => return Err(QueryParamError("unknown")),
        };
        if seen.contains(&key) {
            return Err(QueryParamError(key));
        }
        seen.push(key);
        if v.len() > MAX_VALUE_LEN || v.is_empty() {
            return Err(QueryParamError(key));
        }
        match key {
            // The trail records qualified ids: a bare id would match nothing, silently.
            "user" if mcp_core::principal::split_qualified(&v).is_none() => {
                return Err(QueryParamError(
                    "user (a qualified id: apikey:<id>, bearer:<id>, jwt:<issuer>#<sub>, basic:<user>, mtls:<identity>, anonymous)",
                ));
            }
            "user" => q.user = Some(v.into_owned()),
            "tool" => q.tool = Some(v.into_owned()),
            "method" => q.method = Some(v.into_owned()),
            "jsonrpc_id" => q.jsonrpc_id = Some(v.into_owned()),
            "status" => {
                q.status = Some(match &*v {
                    "success" => StatusFilter::Success,
                    "denied" => StatusFilter::Denied,
                    "error" => StatusFilter::Error,
                    "failed" | "failure" => StatusFilter::Failed,
                    "cancelled" => StatusFilter::Cancelled,
                    _ => return Err(QueryParamError("status")),
                });
            }
            "since" => q.since_us = Some(parse_time(&v).ok_or(QueryParamError("since"))?),
            "until" => q.until_us = Some(parse_time(&v).ok_or(QueryParamError("until"))?),
            "limit" => {
                let n: u64 = v.parse().map_err(|_| QueryParamError("limit"))?;
                if n == 0 {
                    return Err(QueryParamError("limit"));
                }
                q.limit = u32::try_from(n).unwrap_or(u32::MAX).min(max_limit);
            }
            _ => q.before_seq = Some(decode_cursor(&v).ok_or(QueryParamError("cursor"))?),
        }
    }
    Ok(q)
}

/// The query service (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct AuditQueryService {
    store: Arc<dyn AuditStore>,
    scope: Arc<str>,
    own_scope: Option<Arc<str>>,
    max_limit: u32,
    max_page_bytes: u64,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    stall_timeout: Duration,
}

impl fmt::Debug for AuditQueryService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditQueryService")
            .field("scope", &self.scope)
            .field("own_scope", &self.own_scope)
            .field("max_limit", &self.max_limit)
            .field("max_page_bytes", &self.max_page_bytes)
            .field("max_concurrent", &self.max_concurrent)
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl AuditQueryService {
    /// A service over `store`: `audit:read` reads every row, `audit:read:own` the
    /// holder's own rows; limit capped at 1000, pages at [`DEFAULT_MAX_PAGE_BYTES`],
    /// [`DEFAULT_MAX_CONCURRENT`] queries at once.
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self {
            store,
            scope: Arc::from("audit:read"),
            own_scope: Some(Arc::from("audit:read:own")),
            max_limit: 1000,
            max_page_bytes: DEFAULT_MAX_PAGE_BYTES,
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT)),
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }

    /// Sets the scope that reads every row.
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        self.scope = Arc::from(scope.as_ref());
        self
    }

    /// Sets the scope that reads only the holder's own rows (empty: no such scope).
    pub fn own_scope(mut self, scope: impl AsRef<str>) -> Self {
        let s = scope.as_ref();
        self.own_scope = (!s.is_empty()).then(|| Arc::from(s));
        self
    }

    /// Sets the largest `limit` honoured.
    pub fn max_limit(mut self, max: u32) -> Self {
        self.max_limit = max.max(1);
        self
    }

    /// Sets the byte budget of one page (at least [`MIN_PAGE_BYTES`]).
    pub fn max_page_bytes(mut self, max: u64) -> Self {
        self.max_page_bytes = max.max(MIN_PAGE_BYTES);
        self
    }

    /// Sets how many queries are served at once (at least 1); more are refused with 503
    /// and `Retry-After`. Clones made before this call keep their own slots.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        let n = n.clamp(1, Semaphore::MAX_PERMITS);
        self.max_concurrent = n;
        self.slots = Arc::new(Semaphore::new(n));
        self
    }

    /// Sets how long a response waits for its client to take the next chunk before it
    /// is aborted (at least one second).
    pub fn stall_timeout(mut self, t: Duration) -> Self {
        self.stall_timeout = t.max(Duration::from_secs(1));
        self
    }
}

impl<B: Send + 'static> Service<Request<B>> for AuditQueryService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let principal = req.extensions().get::<Principal>().cloned();
        let method = req.method().clone();
        let qs = req.uri().query().map(str::to_owned);
        Box::pin(async move { Ok(this.handle(principal, method, qs).await) })
    }
}

impl AuditQueryService {
    async fn handle(
        &self,
        principal: Option<Principal>,
        method: Method,
        qs: Option<String>,
    ) -> Response<Body> {
        if method != Method::GET {
            return Rejection::new(RejectionReason::MethodNotAllowed)
                .with_header(ALLOW, "GET")
                .into_response();
        }
        let Some(p) = principal.filter(Principal::is_authenticated) else {
            return Rejection::new(RejectionReason::AuthFailed)
                .with_header(WWW_AUTHENTICATE, "Bearer realm=\"mcp-audit\"")
                .into_response();
        };
        let all = p.has_scope(&self.scope);
        let own_only = !all && self.own_scope.as_deref().is_some_and(|s| p.has_scope(s));
        if !all && !own_only {
            let challenge = format!(
                "Bearer realm=\"mcp-audit\", error=\"insufficient_scope\", scope=\"{}\"",
                self.scope
            );
            return Rejection::new(RejectionReason::InsufficientScope)
                .with_detail(self.scope.to_string())
                .with_header(WWW_AUTHENTICATE, challenge)
                .into_response();
        }
        let mut q = match parse_query(qs.as_deref(), self.max_limit) {
            Ok(q) => q,
            Err(e) => {
                return Rejection::new(RejectionReason::InvalidParams)
                    .with_message(e.to_string())
                    .with_detail(e.0)
                    .into_response();
            }
        };
        if own_only {
            let me = p.qualified_id();
            if q.user.as_deref().is_some_and(|u| u != me) {
                let challenge = format!(
                    "Bearer realm=\"mcp-audit\", error=\"insufficient_scope\", scope=\"{}\"",
                    self.scope
                );
                return Rejection::new(RejectionReason::InsufficientScope)
                    .with_message("Only your own audit records are readable with your scope")
                    .with_detail(self.scope.to_string())
                    .with_header(WWW_AUTHENTICATE, challenge)
                    .into_response();
            }
            q.user = Some(me.to_owned());
        }
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            metrics::counter!("mcp_audit_queries_refused_total").increment(1);
            return Rejection::new(RejectionReason::Unavailable)
                .with_message("Too many audit queries at once; retry shortly")
                .with_detail("audit_query_capacity")
                .with_header(RETRY_AFTER, "1")
                .into_response();
        };
        let before_seq = q.before_seq;
        let limit = q.limit;
        let rows = match self.store.index(q).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "audit query failed");
                return Rejection::new(RejectionReason::Unavailable).into_response();
            }
        };
        let plan = PagePlan::new(rows, limit, self.max_page_bytes, before_seq);
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(write_page(
            Arc::clone(&self.store),
            plan,
            tx,
            permit,
            self.stall_timeout,
        ));
        let mut resp = Response::new(Body::new(PageBody { rx, ended: false }));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        resp
    }
}

/// One record of a planned page.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedItem {
    seq: i64,
    hash: String,
    /// The event's size.
    event_bytes: u64,
    /// The event is left out (larger than a page).
    elided: bool,
}

/// A page planned within its byte budget, before any event is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PagePlan {
    items: Vec<PlannedItem>,
    /// Stopped by the byte budget before `limit`.
    truncated: bool,
    /// More rows match after the last item.
    more: bool,
    /// The request's own cursor (the page continues from there when nothing was sent).
    before_seq: Option<i64>,
    /// The largest size a fetched event may have (the budget left for one item).
    max_event: u64,
}

impl PagePlan {
    fn new(
        mut rows: Vec<IndexedRow>,
        limit: u32,
        max_page_bytes: u64,
        before_seq: Option<i64>,
    ) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let budget = max_page_bytes.saturating_sub(FRAME_RESERVE);
        let max_event = budget.saturating_sub(ITEM_OVERHEAD);
        let mut used = 0u64;
        let mut items = Vec::with_capacity(rows.len().min(4096));
        let mut truncated = false;
        for r in rows {
            let elided = r.event_bytes > max_event;
            let hash = r.hash.len() as u64;
            let cost = if elided {
                // `"event":null,"elided_bytes":<20 digits>`
                ITEM_OVERHEAD + hash + 40
            } else {
                ITEM_OVERHEAD + hash + r.event_bytes
            };
            if used + cost > budget {
                truncated = true;
                break;
            }
            used += cost;
            items.push(PlannedItem {
                seq: r.seq,
                hash: r.hash,
                event_bytes: r.event_bytes,
                elided,
            });
        }
        Self {
            items,
            truncated,
            more,
            before_seq,
            max_event,
        }
    }
}

/// What the page writer hands to the body.
enum Chunk {
    Data(Bytes),
    /// The page is complete.
    End,
}

/// The streamed page: ends cleanly only after the writer's [`Chunk::End`]; a writer
/// that stopped before (stalled client, task failure) makes the body fail, so the
/// connection is reset rather than ended as if the page were whole.
struct PageBody {
    rx: mpsc::Receiver<Chunk>,
    ended: bool,
}

/// The error of a page aborted before its end.
#[derive(Debug, thiserror::Error)]
#[error("audit query page aborted")]
struct PageAborted;

impl http_body::Body for PageBody {
    type Data = Bytes;
    type Error = PageAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PageAborted>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Chunk::Data(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Chunk::End)) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(Some(Err(PageAborted)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// Writes a planned page chunk by chunk, fetching each chunk's events only once the
/// previous chunk was taken. Holds the query slot until it returns.
async fn write_page(
    store: Arc<dyn AuditStore>,
    plan: PagePlan,
    tx: mpsc::Sender<Chunk>,
    _permit: OwnedSemaphorePermit,
    stall: Duration,
) {
    let send = |b: Vec<u8>| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(stall, tx.send(Chunk::Data(Bytes::from(b)))).await,
                Ok(Ok(()))
            )
        }
    };
    if !send(b"{\"events\":[".to_vec()).await {
        return;
    }
    let mut count = 0usize;
    let mut last_seq: Option<i64> = None;
    let mut failed = false;
    let mut rest = plan.items.as_slice();
    while !rest.is_empty() {
        // A chunk: items up to CHUNK_BYTES of events, at least one.
        let mut n = 0;
        let mut bytes = 0u64;
        for it in rest {
            let b = if it.elided { 0 } else { it.event_bytes } + ITEM_OVERHEAD;
            if n > 0 && bytes + b > CHUNK_BYTES {
                break;
            }
            n += 1;
            bytes += b;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        // Room for the chunk first: nothing is read while the client has not taken the
        // previous chunk (one chunk in the channel, one in the connection's buffer).
        let slot = match tokio::time::timeout(stall, tx.reserve()).await {
            Ok(Ok(slot)) => slot,
            _ => return,
        };
        let wanted: Vec<i64> = chunk
            .iter()
            .filter(|it| !it.elided)
            .map(|it| it.seq)
            .collect();
        let mut events = if wanted.is_empty() {
            Vec::new()
        } else {
            match store.events(wanted).await {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "audit query failed while writing a page");
                    failed = true;
                    break;
                }
            }
        };
        let mut buf = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0).min(1 << 20));
        for it in chunk {
            let event = if it.elided {
                None
            } else {
                match events.iter().position(|(s, _)| *s == it.seq) {
                    Some(i) => Some(events.swap_remove(i).1),
                    // Pruned since the page was planned.
                    None => continue,
                }
            };
            if count > 0 {
                buf.push(b',');
            }
            write_item(&mut buf, it, event.as_deref(), plan.max_event);
            count += 1;
            last_seq = Some(it.seq);
        }
        drop(events);
        if !buf.is_empty() {
            slot.send(Chunk::Data(Bytes::from(buf)));
        }
    }
    let truncated = plan.truncated || failed;
    let next = if failed || plan.truncated || plan.more {
        last_seq.or(plan.before_seq).map(encode_cursor)
    } else {
        None
    };
    let mut tail = format!("],\"count\":{count},\"truncated\":{truncated},\"next_cursor\":");
    match next {
        Some(c) => {
            tail.push('"');
            tail.push_str(&c);
            tail.push('"');
        }
        None => tail.push_str("null"),
    }
    if failed {
        tail.push_str(",\"error\":\"store unavailable\"");
    }
    tail.push('}');
    if !send(tail.into_bytes()).await {
        return;
    }
    let _ = tokio::time::timeout(stall, tx.send(Chunk::End)).await;
}

/// Writes one item: the event as stored when it is JSON of the planned size, a marker
/// otherwise (a tampered row).
fn write_item(buf: &mut Vec<u8>, it: &PlannedItem, event: Option<&str>, max_event: u64) {
    use std::io::Write;
    // seq is a number and the hash is hex as written by the sinks; a tampered hash is
    // written as a JSON string all the same.
    let hash = serde_json::to_string(&it.hash).unwrap_or_else(|_| "\"\"".to_owned());
    let _ = write!(buf, "{{\"seq\":{},\"hash\":{hash},\"event\":", it.seq);
    match event {
        // At most the planned size (a row rewritten since may have grown).
        Some(ev) if ev.len() as u64 <= it.event_bytes.min(max_event) => {
            if serde_json::from_str::<&RawValue>(ev).is_ok() {
                buf.extend_from_slice(ev.as_bytes());
            } else {
                buf.extend_from_slice(b"{\"unreadable\":true}");
            }
        }
        Some(ev) => {
            let _ = write!(buf, "null,\"elided_bytes\":{}", ev.len());
        }
        None => {
            let _ = write!(buf, "null,\"elided_bytes\":{}", it.event_bytes);
        }
    }
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_seed_parameters() {
        let q = parse_query(Some("status=cancelled"), 1000).unwrap();
        assert_eq!(q.status, Some(StatusFilter::Cancelled));
        let q = parse_query(
            Some("user=apikey:admin&limit=50&tool=t&status=failed"),
            1000,
        )
        .unwrap();
        assert_eq!(q.user.as_deref(), Some("apikey:admin"));
        assert!(parse_query(Some("user=admin"), 1000).is_err());
        assert_eq!(q.limit, 50);
        assert_eq!(q.status, Some(StatusFilter::Failed));
        let q = parse_query(Some("limit=100000"), 1000).unwrap();
        assert_eq!(q.limit, 1000);
        let q = parse_query(
            Some("since=2024-01-01T00:00:00Z&until=2024-01-01T00:00:01%2B00:00"),
            10,
        )
        .unwrap();
        assert_eq!(q.since_us, Some(1_704_067_200_000_000));
        assert_eq!(q.until_us, Some(1_704_067_201_000_000));
        assert_eq!(parse_query(None, 10).unwrap().limit, 10);
    }

    #[test]
    fn refuses_bad_parameters() {
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=x",
            "status=weird",
            "since=yesterday",
            "cursor=abc",
            "evil=1",
            "user=apikey:a&user=apikey:b",
            "user=",
        ] {
            assert!(parse_query(Some(bad), 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursor_round_trip_and_sql() {
        let c = encode_cursor(42);
        assert_eq!(decode_cursor(&c), Some(42));
        let q = AuditQuery {
            user: Some("u".into()),
            before_seq: Some(42),
            limit: 10,
            status: Some(StatusFilter::Denied),
            ..AuditQuery::default()
        };
        let (sql, params) = build_query(&q, |n| format!("${n}"));
        assert!(sql.contains("user_id = $1") && sql.contains("seq < $2"));
        assert!(sql.ends_with("LIMIT $3"));
        assert_eq!(params.last(), Some(&SqlParam::Int(11)));
    }

    #[test]
    fn page_cursor_only_when_more() {
        let rows = |n: i64| {
            (0..n)
                .map(|i| (100 - i, "h".to_owned(), "{}".to_owned()))
                .collect::<Vec<_>>()
        };
        let p = QueryPage::from_rows(rows(3), 2);
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.next_cursor.as_deref().and_then(decode_cursor), Some(99));
        assert_eq!(QueryPage::from_rows(rows(2), 2).next_cursor, None);
    }

    fn indexed(sizes: &[u64]) -> Vec<IndexedRow> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| IndexedRow {
                seq: 1000 - i as i64,
                hash: "a".repeat(64),
                event_bytes: n,
            })
            .collect()
    }

    #[test]
    fn plan_stops_at_the_byte_budget_and_elides_what_never_fits() {
        let budget = 1024 * 1024;
        // Ten rows of 300 KiB: three fit a 1 MiB page.
        let p = PagePlan::new(indexed(&[300 * 1024; 10]), 1000, budget, None);
        assert_eq!(p.items.len(), 3);
        assert!(p.truncated && !p.more);
        // Under the limit, with more rows: not truncated, more.
        let p = PagePlan::new(indexed(&[10; 5]), 4, budget, None);
        assert_eq!(p.items.len(), 4);
        assert!(!p.truncated && p.more);
        // A row larger than a page is elided, and paging moves on past it.
        let p = PagePlan::new(indexed(&[5 * 1024 * 1024, 10]), 10, budget, None);
        assert_eq!(p.items.len(), 2);
        assert!(p.items[0].elided && !p.items[1].elided);
        assert!(!p.truncated);
    }

    #[test]
    fn items_are_json_and_within_their_planned_size() {
        let it = PlannedItem {
            seq: 7,
            hash: "ab".repeat(32),
            event_bytes: 9,
            elided: false,
        };
        let mut buf = Vec::new();
        write_item(&mut buf, &it, Some("{\"a\":[1]}"), 1 << 20);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["event"]["a"][0], 1);
        assert!(buf.len() as u64 <= ITEM_OVERHEAD + 64 + 9);
        // Not JSON (tampered): a marker; grown since planned: elided.
        buf.clear();
        write_item(&mut buf, &it, Some("{not json"), 1 << 20);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["event"]["unreadable"], true);
        buf.clear();
        write_item(&mut buf, &it, Some("{\"a\":[1, 2, 3]}"), 1 << 20);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert!(v["event"].is_null());
        assert_eq!(v["elided_bytes"], 15);
    }

    /// A store that fails on its second read of events (a database going away while a
    /// page is written).
    struct FailingStore {
        calls: std::sync::atomic::AtomicUsize,
    }

    impl AuditStore for FailingStore {
        fn query(&self, _q: AuditQuery) -> BoxFuture<'_, Result<QueryPage, StoreError>> {
            Box::pin(async { Err(StoreError::new("unused")) })
        }

        fn index(&self, _q: AuditQuery) -> BoxFuture<'_, Result<Vec<IndexedRow>, StoreError>> {
            Box::pin(async { Ok(indexed(&[200_000 + 11; 3])) })
        }

        fn events(&self, seqs: Vec<i64>) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>> {
            let n = self
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                if n > 0 {
                    return Err(StoreError::new("gone"));
                }
                let ev = format!("{{\"x\":\"{}\"}}", "y".repeat(200_000));
                Ok(seqs.into_iter().map(|s| (s, ev.clone())).collect())
            })
        }
    }

    #[tokio::test]
    async fn a_store_failing_mid_page_still_gives_valid_json_and_a_cursor() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let svc = AuditQueryService::new(Arc::new(FailingStore {
            calls: std::sync::atomic::AtomicUsize::new(0),
        }));
        let mut req = Request::get("/api/audit/query?limit=10").body(()).unwrap();
        req.extensions_mut()
            .insert(Principal::new("a", mcp_core::AuthMethod::ApiKey).with_scopes(["audit:read"]));
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["count"], 1);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["error"], "store unavailable");
        assert_eq!(
            v["next_cursor"].as_str().and_then(decode_cursor),
            Some(1000)
        );
    }

    proptest! {
        /// However the sizes fall, the planned page stays within its budget.
        #[test]
        fn planned_pages_stay_within_budget(
            sizes in proptest::collection::vec(0u64..3_000_000, 0..200),
            limit in 1u32..300,
            budget in MIN_PAGE_BYTES..4_000_000,
        ) {
            let p = PagePlan::new(indexed(&sizes), limit, budget, None);
            let total: u64 = p.items.iter().map(|it| {
                ITEM_OVERHEAD + 64 + if it.elided { 40 } else { it.event_bytes }
            }).sum();
            prop_assert!(total + FRAME_RESERVE <= budget);
            prop_assert!(p.items.len() <= limit as usize);
            prop_assert_eq!(sizes.is_empty(), p.items.is_empty());
        }

        #[test]
        fn parse_query_never_panics(s in "\\PC{0,200}") {
            let _ = parse_query(Some(&s), 1000);
        }

        #[test]
        fn decode_cursor_never_panics(s in "\\PC{0,80}") {
            let _ = decode_cursor(&s);
        }

        #[test]
        fn cursor_roundtrip(n in 1i64..i64::MAX) {
            prop_assert_eq!(decode_cursor(&encode_cursor(n)), Some(n));
        }
    }
}
