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
//! `{"count":n,"events":[{"seq":..,"hash":"..","event":{..}}],"next_cursor":".."|null}`.
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
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response};
use mcp_core::{Body, Principal, Rejection, RejectionReason};
use serde_json::value::RawValue;
use tower_service::Service;

use crate::sink::BoxFuture;

/// The default page size.
pub const DEFAULT_LIMIT: u32 = 100;

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

    fn to_json(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Item<'a> {
            seq: i64,
            hash: &'a str,
            event: Box<RawValue>,
        }
        #[derive(serde::Serialize)]
        struct Out<'a> {
            count: usize,
            events: Vec<Item<'a>>,
            next_cursor: Option<&'a str>,
        }
        let events: Vec<Item<'_>> = self
            .records
            .iter()
            .map(|r| Item {
                seq: r.seq,
                hash: &r.hash,
                event: RawValue::from_string(r.event.clone()).unwrap_or_else(|_| {
                    // A row that is not JSON (tampered): say so rather than fail.
                    RawValue::from_string("{\"unreadable\":true}".to_owned())
                        .unwrap_or_else(|_| RawValue::NULL.to_owned())
                }),
            })
            .collect();
        let out = Out {
            count: events.len(),
            events,
            next_cursor: self.next_cursor.as_deref(),
        };
        Bytes::from(serde_json::to_vec(&out).unwrap_or_else(|_| b"{}".to_vec()))
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
    /// Runs a query: records matching every filter, newest first, at most `limit`.
    fn query(&self, q: AuditQuery) -> BoxFuture<'_, Result<QueryPage, StoreError>>;
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
/// (`?n` for SQLite, `$n` for PostgreSQL). Fetches `limit + 1` rows.
pub fn build_query(q: &AuditQuery, ph: impl Fn(usize) -> String) -> (String, Vec<SqlParam>) {
    let mut sql = String::from("SELECT seq, hash, event FROM audit_events WHERE TRUE");
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
}

impl fmt::Debug for AuditQueryService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditQueryService")
            .field("scope", &self.scope)
            .field("own_scope", &self.own_scope)
            .field("max_limit", &self.max_limit)
            .finish_non_exhaustive()
    }
}

impl AuditQueryService {
    /// A service over `store`: `audit:read` reads every row, `audit:read:own` the
    /// holder's own rows; limit capped at 1000.
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self {
            store,
            scope: Arc::from("audit:read"),
            own_scope: Some(Arc::from("audit:read:own")),
            max_limit: 1000,
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
        match self.store.query(q).await {
            Ok(page) => {
                let mut resp = Response::new(Body::from(page.to_json()));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                resp
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit query failed");
                Rejection::new(RejectionReason::Unavailable).into_response()
            }
        }
    }
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

    proptest! {
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
