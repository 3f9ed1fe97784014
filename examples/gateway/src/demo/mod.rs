//! The built-in demo MCP server: Streamable HTTP written directly on axum.
//!
//! It speaks both protocol revisions on one endpoint:
//!
//! - **2025-11-25** (and the earlier handshake revisions): `initialize` creates a session
//!   (`Mcp-Session-Id`), `GET` opens the standalone SSE stream or resumes a request stream
//!   from `Last-Event-ID`, `DELETE` ends the session. Tools may send requests back to the
//!   client (sampling, elicitation) on their SSE stream; the client answers by POST.
//! - **2026-07-28**: stateless. Every request carries its protocol version and client
//!   capabilities in `params._meta` and the `MCP-Protocol-Version`, `Mcp-Method` and
//!   `Mcp-Name` headers, which must agree with the body. `server/discover` replaces the
//!   handshake; `GET` and `DELETE` get 405; there is no back channel.
//!
//! Which revision a POST uses is decided by the `MCP-Protocol-Version` header (or, without
//! it, by the presence of the per-request `_meta` envelope).

pub mod catalog;

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::any;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

/// Handshake-era revisions, newest first.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Stateless revisions.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPS_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const LOG_LEVEL_KEY: &str = "io.modelcontextprotocol/logLevel";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";

const HEADER_MISMATCH: i64 = -32020;
const UNSUPPORTED_VERSION: i64 = -32022;

const MAX_SESSIONS: usize = 10_000;
const SESSION_IDLE: Duration = Duration::from_secs(3600);
const MAX_STREAMS_PER_SESSION: usize = 32;
const MAX_SUBSCRIPTIONS: usize = 1000;
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const LOG_LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

fn level_index(level: &str) -> Option<u8> {
    LOG_LEVELS.iter().position(|l| *l == level).map(|i| i as u8)
}

/// Options of the demo server.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Refuse requests whose `Host` or `Origin` is not a loopback name (DNS rebinding
    /// protection for a server listening on loopback).
    pub loopback_only: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            loopback_only: true,
        }
    }
}

/// The demo server (cheap to clone).
#[derive(Clone)]
pub struct DemoServer {
    state: Arc<ServerState>,
}

struct ServerState {
    options: DemoOptions,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    next_id: AtomicU64,
}

struct Session {
    version: String,
    client_caps: Value,
    log_level: AtomicU8,
    subscriptions: Mutex<HashSet<String>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>,
    streams: Mutex<VecDeque<(String, Arc<StreamLog>)>>,
    standalone: Mutex<Option<mpsc::Sender<Bytes>>>,
    last_used: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a running request sends towards its response.
enum Out {
    /// A message (notification or server-to-client request) for the SSE stream.
    Event(Value),
    /// Close the POST's SSE stream now; the rest is delivered on a `GET` resumption.
    Close,
    /// The JSON-RPC response; the stream ends after it.
    Done(Value),
}

/// What a tool sees of its request: a way to send notifications and requests to the
/// client.
pub struct Ctx {
    tx: Option<mpsc::Sender<Out>>,
    progress_token: Option<Value>,
    log_level: Option<u8>,
    session: Option<Arc<Session>>,
    state: Arc<ServerState>,
}

impl Ctx {
    async fn send(&self, out: Out) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(out).await;
        }
    }

    /// Sends `notifications/progress` if the client asked for progress.
    pub async fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        let Some(token) = &self.progress_token else {
            return;
        };
        let mut params = json!({"progressToken": token, "progress": progress});
        if let Some(t) = total {
            params["total"] = json!(t);
        }
        if let Some(m) = message {
            params["message"] = json!(m);
        }
        self.send(Out::Event(
            json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params}),
        ))
        .await;
    }

    /// Sends `notifications/message` if the level is at or above the client's.
    pub async fn log(&self, level: &str, data: Value) {
        let (Some(min), Some(lvl)) = (self.log_level, level_index(level)) else {
            return;
        };
        if lvl < min {
            return;
        }
        self.send(Out::Event(
            json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": level, "logger": "demo", "data": data}}),
        ))
        .await;
    }

    /// Closes the POST's SSE stream (the client resumes with `GET` + `Last-Event-ID`).
    pub async fn close_stream(&self) {
        self.send(Out::Close).await;
    }

    /// Sends a request to the client and waits for its answer (2025-11-25 sessions with
    /// an SSE response only).
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, String> {
        let (Some(session), Some(_)) = (&self.session, &self.tx) else {
            return Err(format!(
                "{method} needs a session and an SSE response (not available on this request)"
            ));
        };
        let cap = match method {
            "sampling/createMessage" => "sampling",
            "elicitation/create" => "elicitation",
            _ => "",
        };
        if !cap.is_empty() && session.client_caps.get(cap).is_none() {
            return Err(format!("the client did not declare the {cap} capability"));
        }
        let id = format!("srv-{}", self.state.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&session.pending).insert(id.clone(), tx);
        self.send(Out::Event(
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        ))
        .await;
        let result = tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, rx).await;
        lock(&session.pending).remove(&id);
        match result {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(format!("client answered with an error: {e}")),
            Ok(Err(_)) => Err("session closed".into()),
            Err(_) => Err("the client did not answer in time".into()),
        }
    }
}

/// An SSE stream's events, kept so that a client can resume with `Last-Event-ID`.
struct StreamLog {
    inner: Mutex<LogInner>,
    notify: Notify,
}

#[derive(Default)]
struct LogInner {
    entries: Vec<Option<Bytes>>, // None marks "close the POST stream here"
    done: bool,
}

impl StreamLog {
    fn push(&self, entry: Option<Bytes>, done: bool) {
        {
            let mut g = lock(&self.inner);
            if let Some(e) = entry {
                g.entries.push(Some(e));
            } else if !done {
                g.entries.push(None);
            }
            g.done |= done;
        }
        self.notify.notify_waiters();
    }

    /// A body reading from entry `from`; when `stop_at_close`, it ends at a close marker.
    fn reader(self: Arc<Self>, from: usize, stop_at_close: bool) -> Body {
        let stream = futures_util::stream::unfold((self, from), move |(log, mut pos)| async move {
            loop {
                let waker = log.clone();
                let notified = waker.notify.notified();
                {
                    let g = lock(&log.inner);
                    if pos < g.entries.len() {
                        let entry = g.entries[pos].clone();
                        pos += 1;
                        match entry {
                            Some(b) => {
                                drop(g);
                                return Some((Ok::<_, Infallible>(b), (log, pos)));
                            }
                            None if stop_at_close => return None,
                            None => continue,
                        }
                    }
                    if g.done {
                        return None;
                    }
                }
                notified.await;
            }
        });
        Body::from_stream(stream)
    }
}

fn sse_event(id: Option<&str>, msg: &Value) -> Bytes {
    let mut s = String::new();
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(id);
        s.push('\n');
    }
    s.push_str("event: message\ndata: ");
    s.push_str(&msg.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn error_body(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": err})
}

fn error_response(
    status: StatusCode,
    id: Option<&Value>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Response<Body> {
    json_response(status, &error_body(id, code, message, data))
}

fn modern_status(code: i64) -> StatusCode {
    match code {
        -32700 | -32600 | -32602 | HEADER_MISMATCH | -32021 | UNSUPPORTED_VERSION => {
            StatusCode::BAD_REQUEST
        }
        -32601 => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

fn sse_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn accepts(headers: &HeaderMap) -> (bool, bool) {
    let all: Vec<&str> = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .collect();
    if all.is_empty() {
        return (true, false);
    }
    let any = all.contains(&"*/*");
    let json = any
        || all
            .iter()
            .any(|m| *m == "application/json" || *m == "application/*");
    let sse = all
        .iter()
        .any(|m| *m == "text/event-stream" || *m == "text/*");
    (json, sse)
}

fn is_loopback_host(host: &str) -> bool {
    // host may carry a port; IPv6 literals are bracketed.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip == "::1",
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let name = name.to_ascii_lowercase();
    name == "localhost" || name == "127.0.0.1"
}

fn origin_is_loopback(origin: &str) -> bool {
    match url::Url::parse(origin) {
        Ok(u) => match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        Err(_) => false,
    }
}

fn decode_name_header(v: &str) -> Option<String> {
    if let Some(inner) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()?;
        String::from_utf8(bytes).ok()
    } else {
        Some(v.to_owned())
    }
}

enum Era {
    Legacy,
    Modern,
}

impl DemoServer {
    /// A demo server.
    pub fn new(options: DemoOptions) -> Self {
        Self {
            state: Arc::new(ServerState {
                options,
                sessions: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// An axum router serving the MCP endpoint at `path` (and `/healthz`).
    pub fn router(&self, path: &str) -> Router {
        Router::new()
            .route(path, any(handle))
            .route("/healthz", any(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        path: &str,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self.router(path);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let s = lock(&self.state.sessions).get(id).cloned()?;
        *lock(&s.last_used) = Instant::now();
        Some(s)
    }

    fn new_session(&self, version: &str, client_caps: Value) -> Option<String> {
        let mut sessions = lock(&self.state.sessions);
        if sessions.len() >= MAX_SESSIONS {
            let now = Instant::now();
            sessions.retain(|_, s| now.duration_since(*lock(&s.last_used)) < SESSION_IDLE);
            if sessions.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        sessions.insert(
            id.clone(),
            Arc::new(Session {
                version: version.to_owned(),
                client_caps,
                log_level: AtomicU8::new(1),
                subscriptions: Mutex::new(HashSet::new()),
                pending: Mutex::new(HashMap::new()),
                streams: Mutex::new(VecDeque::new()),
                standalone: Mutex::new(None),
                last_used: Mutex::new(Instant::now()),
            }),
        );
        Some(id)
    }
}

async fn handle(
    State(server): State<DemoServer>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    // DNS rebinding protection.
    if server.state.options.loopback_only {
        let host_ok = header_str(&headers, HOST.as_str()).is_some_and(is_loopback_host);
        let origin_ok = header_str(&headers, ORIGIN.as_str()).is_none_or(origin_is_loopback);
        if !host_ok || !origin_ok {
            return error_response(
                StatusCode::FORBIDDEN,
                None,
                -32600,
                "Forbidden: Host or Origin not allowed",
                None,
            );
        }
    }
    let version_header = header_str(&headers, "mcp-protocol-version").map(str::to_owned);
    let modern_header = version_header
        .as_deref()
        .is_some_and(|v| MODERN_VERSIONS.contains(&v));
    match method {
        Method::POST => post(server, headers, body, version_header).await,
        Method::GET if !modern_header => get(server, headers).await,
        Method::DELETE if !modern_header => delete(server, headers),
        _ => {
            let mut r = status_only(StatusCode::METHOD_NOT_ALLOWED);
            let allow = if modern_header {
                "POST"
            } else {
                "GET, POST, DELETE"
            };
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            r
        }
    }
}

async fn post(
    server: DemoServer,
    headers: HeaderMap,
    body: Bytes,
    version_header: Option<String>,
) -> Response<Body> {
    let ct_ok = header_str(&headers, CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !ct_ok {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            -32600,
            "Content-Type must be application/json",
            None,
        );
    }
    let (accept_json, accept_sse) = accepts(&headers);
    if !accept_json && !accept_sse {
        return error_response(
            StatusCode::NOT_ACCEPTABLE,
            None,
            -32600,
            "Not Acceptable: Accept must allow application/json or text/event-stream",
            None,
        );
    }
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return error_response(StatusCode::BAD_REQUEST, None, -32700, "Parse error", None);
        }
    };
    let Value::Object(obj) = &msg else {
        return error_response(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            "Body must be a single JSON-RPC message object (batches are not supported)",
            None,
        );
    };
    let has_envelope = obj
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(PROTOCOL_VERSION_KEY))
        .is_some();
    let era = match version_header.as_deref() {
        Some(v) if MODERN_VERSIONS.contains(&v) => Era::Modern,
        Some(v) if LEGACY_VERSIONS.contains(&v) => Era::Legacy,
        _ if has_envelope && header_str(&headers, "mcp-session-id").is_none() => Era::Modern,
        Some(_) if obj.get("method").and_then(Value::as_str) != Some("initialize") => {
            return error_response(
                StatusCode::BAD_REQUEST,
                obj.get("id"),
                -32600,
                "Unsupported MCP-Protocol-Version",
                Some(
                    json!({"supported": LEGACY_VERSIONS.iter().chain(MODERN_VERSIONS).collect::<Vec<_>>()}),
                ),
            );
        }
        _ => Era::Legacy,
    };
    match era {
        Era::Modern => post_modern(server, headers, obj.clone(), accept_sse).await,
        Era::Legacy => post_legacy(server, headers, obj.clone(), accept_sse).await,
    }
}

fn is_response(obj: &Map<String, Value>) -> bool {
    obj.get("method").is_none()
        && obj.contains_key("id")
        && (obj.contains_key("result") || obj.contains_key("error"))
}

async fn post_legacy(
    server: DemoServer,
    headers: HeaderMap,
    obj: Map<String, Value>,
    accept_sse: bool,
) -> Response<Body> {
    let id = obj.get("id").cloned();
    let method = obj.get("method").and_then(Value::as_str).map(str::to_owned);
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    if method.as_deref() == Some("initialize") {
        if id.is_none() {
            return error_response(
                StatusCode::BAD_REQUEST,
                None,
                -32600,
                "initialize must be a request",
                None,
            );
        }
        let requested = params.get("protocolVersion").and_then(Value::as_str);
        let version = requested
            .filter(|v| LEGACY_VERSIONS.contains(v))
            .unwrap_or(LEGACY_VERSIONS[0]);
        let caps = params.get("capabilities").cloned().unwrap_or(json!({}));
        let Some(session_id) = server.new_session(version, caps) else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                id.as_ref(),
                -32603,
                "Too many sessions",
                None,
            );
        };
        let result = json!({
            "protocolVersion": version,
            "capabilities": capabilities(false),
            "serverInfo": server_info(),
            "instructions": "Demo MCP server built into mcp-gateway."
        });
        let mut r = json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        );
        if let Ok(v) = HeaderValue::from_str(&session_id) {
            r.headers_mut().insert("mcp-session-id", v);
        }
        return r;
    }
    let Some(session_id) = header_str(&headers, "mcp-session-id") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            -32600,
            "Bad Request: Mcp-Session-Id header is required",
            None,
        );
    };
    let Some(session) = server.session(session_id) else {
        return error_response(
            StatusCode::NOT_FOUND,
            id.as_ref(),
            -32001,
            "Session not found",
            None,
        );
    };
    if is_response(&obj) {
        if let Some(key) = id.as_ref().map(id_key) {
            let tx = lock(&session.pending).remove(&key);
            if let Some(tx) = tx {
                let outcome = match obj.get("result") {
                    Some(r) => Ok(r.clone()),
                    None => Err(obj.get("error").cloned().unwrap_or(Value::Null)),
                };
                let _ = tx.send(outcome);
            }
        }
        return status_only(StatusCode::ACCEPTED);
    }
    let Some(method) = method else {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            -32600,
            "Invalid Request",
            None,
        );
    };
    let Some(id) = id else {
        // A notification.
        return status_only(StatusCode::ACCEPTED);
    };
    let progress_token = params.pointer("/_meta/progressToken").cloned();
    let (tx, rx) = mpsc::channel::<Out>(64);
    let ctx = Ctx {
        tx: accept_sse.then_some(tx.clone()),
        progress_token,
        log_level: Some(session.log_level.load(Ordering::Relaxed)),
        session: Some(session.clone()),
        state: server.state.clone(),
    };
    let req_id = id.clone();
    let sess = session.clone();
    tokio::spawn(async move {
        let response = match dispatch(&method, &params, &ctx, Some(&sess)).await {
            Ok(result) => json!({"jsonrpc": "2.0", "id": req_id, "result": result}),
            Err((code, message)) => error_body(Some(&req_id), code, &message, None),
        };
        let _ = tx.send(Out::Done(response)).await;
    });
    respond(rx, Some(session), false).await
}

fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn respond(
    mut rx: mpsc::Receiver<Out>,
    session: Option<Arc<Session>>,
    modern: bool,
) -> Response<Body> {
    let first = match rx.recv().await {
        Some(Out::Done(v)) => {
            let status = if modern {
                v.pointer("/error/code")
                    .and_then(Value::as_i64)
                    .map_or(StatusCode::OK, modern_status)
            } else {
                StatusCode::OK
            };
            return json_response(status, &v);
        }
        Some(other) => other,
        None => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                -32603,
                "Internal error",
                None,
            );
        }
    };
    let mut response = match session {
        Some(session) if !modern => {
            // Keep the stream's events for resumption with Last-Event-ID.
            let stream_id = uuid::Uuid::new_v4().simple().to_string();
            let log = Arc::new(StreamLog {
                inner: Mutex::new(LogInner::default()),
                notify: Notify::new(),
            });
            {
                let mut streams = lock(&session.streams);
                if streams.len() >= MAX_STREAMS_PER_SESSION {
                    streams.pop_front();
                }
                streams.push_back((stream_id.clone(), log.clone()));
            }
            let priming = Bytes::from(format!("id: {stream_id}_0\nretry: 500\ndata: \n\n"));
            log.push(Some(priming), false);
            let pump_log = log.clone();
            tokio::spawn(async move {
                let mut seq = 1u64;
                let mut next = Some(first);
                loop {
                    let out = match next.take() {
                        Some(o) => o,
                        None => match rx.recv().await {
                            Some(o) => o,
                            None => {
                                pump_log.push(None, true);
                                break;
                            }
                        },
                    };
                    match out {
                        Out::Event(v) => {
                            let ev = sse_event(Some(&format!("{stream_id}_{seq}")), &v);
                            seq += 1;
                            pump_log.push(Some(ev), false);
                        }
                        Out::Close => pump_log.push(None, false),
                        Out::Done(v) => {
                            let ev = sse_event(Some(&format!("{stream_id}_{seq}")), &v);
                            pump_log.push(Some(ev), true);
                            break;
                        }
                    }
                }
            });
            Response::new(log.reader(0, true))
        }
        _ => {
            let stream = futures_util::stream::unfold(
                (rx, Some(first), false),
                |(mut rx, mut pending, finished)| async move {
                    if finished {
                        return None;
                    }
                    loop {
                        let out = match pending.take() {
                            Some(o) => o,
                            None => rx.recv().await?,
                        };
                        match out {
                            Out::Event(v) => {
                                return Some((
                                    Ok::<_, Infallible>(sse_event(None, &v)),
                                    (rx, None, false),
                                ));
                            }
                            Out::Close => continue,
                            Out::Done(v) => {
                                return Some((Ok(sse_event(None, &v)), (rx, None, true)));
                            }
                        }
                    }
                },
            );
            Response::new(Body::from_stream(stream))
        }
    };
    sse_headers(&mut response);
    response
}

async fn post_modern(
    server: DemoServer,
    headers: HeaderMap,
    obj: Map<String, Value>,
    accept_sse: bool,
) -> Response<Body> {
    let id = obj.get("id").cloned();
    if is_response(&obj) || obj.get("method").and_then(Value::as_str).is_none() {
        return error_response(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            "Body must be a single JSON-RPC request or notification object",
            None,
        );
    }
    let method = obj
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let version_header = header_str(&headers, "mcp-protocol-version");
    if id.is_none() {
        // Notifications are acknowledged and dropped.
        if version_header.is_some_and(|v| !MODERN_VERSIONS.contains(&v)) {
            return error_response(
                StatusCode::BAD_REQUEST,
                None,
                UNSUPPORTED_VERSION,
                "Unsupported protocol version",
                Some(json!({"supported": MODERN_VERSIONS, "requested": version_header})),
            );
        }
        return status_only(StatusCode::ACCEPTED);
    }
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    // Rung 1: the per-request envelope.
    let Some(meta) = params.get("_meta").and_then(Value::as_object) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            -32602,
            "params._meta must be an object carrying the protocol version and client capabilities",
            None,
        );
    };
    let missing: Vec<&str> = [PROTOCOL_VERSION_KEY, CLIENT_CAPS_KEY]
        .into_iter()
        .filter(|k| !meta.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            -32602,
            &format!("params._meta is missing {}", missing.join(", ")),
            None,
        );
    }
    let body_version = meta
        .get(PROTOCOL_VERSION_KEY)
        .cloned()
        .unwrap_or(Value::Null);
    // Rung 2: the headers agree with the body.
    for name in ["mcp-protocol-version", "mcp-method", "mcp-name"] {
        if headers.get_all(name).iter().count() > 1 {
            return error_response(
                StatusCode::BAD_REQUEST,
                id.as_ref(),
                HEADER_MISMATCH,
                &format!("{name} header appears more than once"),
                None,
            );
        }
    }
    if version_header.is_none() || body_version.as_str() != version_header {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            HEADER_MISMATCH,
            "MCP-Protocol-Version header does not match the request envelope's protocol version",
            None,
        );
    }
    if header_str(&headers, "mcp-method") != Some(method.as_str()) {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            HEADER_MISMATCH,
            "Mcp-Method header does not match the request body's method",
            None,
        );
    }
    let name_key = match method.as_str() {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    if let Some(key) = name_key
        && let Some(body_value) = params.get(key).and_then(Value::as_str)
    {
        let header = header_str(&headers, "mcp-name").and_then(decode_name_header);
        if header.as_deref() != Some(body_value) {
            return error_response(
                StatusCode::BAD_REQUEST,
                id.as_ref(),
                HEADER_MISMATCH,
                &format!("Mcp-Name header does not match the request body's '{key}' parameter"),
                None,
            );
        }
    }
    // Rung 3: a version this server speaks.
    let Some(version) = body_version.as_str() else {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            -32602,
            "the protocol version must be a string",
            None,
        );
    };
    if !MODERN_VERSIONS.contains(&version) {
        return error_response(
            StatusCode::BAD_REQUEST,
            id.as_ref(),
            UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            Some(json!({"supported": MODERN_VERSIONS, "requested": version})),
        );
    }
    let log_level = meta
        .get(LOG_LEVEL_KEY)
        .and_then(Value::as_str)
        .and_then(level_index);
    let (tx, rx) = mpsc::channel::<Out>(64);
    let ctx = Ctx {
        tx: accept_sse.then_some(tx.clone()),
        progress_token: params.pointer("/_meta/progressToken").cloned(),
        log_level,
        session: None,
        state: server.state.clone(),
    };
    let req_id = id.unwrap_or(Value::Null);
    tokio::spawn(async move {
        let response = match dispatch_modern(&method, &params, &ctx).await {
            Ok(mut result) => {
                if let Some(o) = result.as_object_mut() {
                    o.entry("resultType").or_insert(json!("complete"));
                }
                json!({"jsonrpc": "2.0", "id": req_id, "result": result})
            }
            Err((code, message)) => error_body(Some(&req_id), code, &message, None),
        };
        let _ = tx.send(Out::Done(response)).await;
    });
    respond(rx, None, true).await
}

fn server_info() -> Value {
    json!({"name": "mcp-gateway-demo", "title": "mcp-gateway demo server",
        "version": env!("CARGO_PKG_VERSION")})
}

fn capabilities(modern: bool) -> Value {
    let mut caps = json!({
        "tools": {"listChanged": false},
        "resources": {"subscribe": !modern, "listChanged": false},
        "prompts": {"listChanged": false},
        "completions": {},
    });
    if !modern {
        caps["logging"] = json!({});
    }
    caps
}

fn cacheable(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("ttlMs".into(), json!(0));
        o.insert("cacheScope".into(), json!("private"));
    }
    v
}

async fn dispatch_modern(method: &str, params: &Value, ctx: &Ctx) -> Result<Value, (i64, String)> {
    match method {
        "server/discover" => {
            let supported: Vec<&str> = MODERN_VERSIONS
                .iter()
                .chain(LEGACY_VERSIONS)
                .copied()
                .collect();
            Ok(cacheable(json!({
                "supportedVersions": supported,
                "capabilities": capabilities(true),
                "instructions": "Demo MCP server built into mcp-gateway.",
                "_meta": {SERVER_INFO_KEY: server_info()}
            })))
        }
        "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list" => {
            dispatch(method, params, ctx, None).await.map(cacheable)
        }
        // Removed in 2026-07-28.
        "ping"
        | "logging/setLevel"
        | "initialize"
        | "resources/subscribe"
        | "resources/unsubscribe" => Err((-32601, format!("Method not found: {method}"))),
        _ => dispatch(method, params, ctx, None).await,
    }
}

async fn dispatch(
    method: &str,
    params: &Value,
    ctx: &Ctx,
    session: Option<&Arc<Session>>,
) -> Result<Value, (i64, String)> {
    let str_param = |k: &str| params.get(k).and_then(Value::as_str);
    match method {
        "ping" => Ok(json!({})),
        "logging/setLevel" => {
            let level = str_param("level")
                .and_then(level_index)
                .ok_or((-32602, "invalid log level".to_owned()))?;
            if let Some(s) = session {
                s.log_level.store(level, Ordering::Relaxed);
            }
            Ok(json!({}))
        }
        "tools/list" => Ok(json!({"tools": catalog::tools()})),
        "tools/call" => {
            let name = str_param("name").ok_or((-32602, "missing tool name".to_owned()))?;
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            catalog::call_tool(name, &args, ctx)
                .await
                .map_err(|e| (e.code, e.message))
        }
        "resources/list" => Ok(json!({"resources": catalog::resources()})),
        "resources/templates/list" => {
            Ok(json!({"resourceTemplates": catalog::resource_templates()}))
        }
        "resources/read" => {
            let uri = str_param("uri").ok_or((-32602, "missing uri".to_owned()))?;
            catalog::read_resource(uri).ok_or((-32002, "Resource not found".to_owned()))
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            let uri = str_param("uri").ok_or((-32602, "missing uri".to_owned()))?;
            if let Some(s) = session {
                let mut subs = lock(&s.subscriptions);
                if method == "resources/subscribe" {
                    if subs.len() >= MAX_SUBSCRIPTIONS {
                        return Err((-32603, "too many subscriptions".to_owned()));
                    }
                    subs.insert(uri.to_owned());
                } else {
                    subs.remove(uri);
                }
            }
            Ok(json!({}))
        }
        "prompts/list" => Ok(json!({"prompts": catalog::prompts()})),
        "prompts/get" => {
            let name = str_param("name").ok_or((-32602, "missing prompt name".to_owned()))?;
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            catalog::get_prompt(name, &args).map_err(|m| (-32602, m))
        }
        "completion/complete" => Ok(catalog::complete(params)),
        _ => Err((-32601, "Method not found".to_owned())),
    }
}

async fn get(server: DemoServer, headers: HeaderMap) -> Response<Body> {
    let (_, accept_sse) = accepts(&headers);
    if !accept_sse {
        return error_response(
            StatusCode::NOT_ACCEPTABLE,
            None,
            -32600,
            "Not Acceptable: GET requires Accept: text/event-stream",
            None,
        );
    }
    let Some(session_id) = header_str(&headers, "mcp-session-id") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            "Bad Request: Mcp-Session-Id header is required",
            None,
        );
    };
    let Some(session) = server.session(session_id) else {
        return error_response(
            StatusCode::NOT_FOUND,
            None,
            -32001,
            "Session not found",
            None,
        );
    };
    let _ = &session.version;
    if let Some(last) = header_str(&headers, "last-event-id") {
        // Resume a request stream after the given event.
        let parsed = last
            .rsplit_once('_')
            .and_then(|(s, n)| n.parse::<usize>().ok().map(|n| (s.to_owned(), n)));
        let Some((stream_id, seq)) = parsed else {
            return error_response(
                StatusCode::BAD_REQUEST,
                None,
                -32600,
                "Unknown Last-Event-ID",
                None,
            );
        };
        let log = lock(&session.streams)
            .iter()
            .find(|(id, _)| *id == stream_id)
            .map(|(_, l)| l.clone());
        let Some(log) = log else {
            return error_response(
                StatusCode::NOT_FOUND,
                None,
                -32600,
                "Unknown Last-Event-ID",
                None,
            );
        };
        // Entry index = count of entries up to and including event `seq`, close markers
        // included: find the position of event `seq`.
        let from = {
            let g = lock(&log.inner);
            let mut events = 0usize;
            let mut pos = g.entries.len();
            for (i, e) in g.entries.iter().enumerate() {
                if e.is_some() {
                    if events == seq {
                        pos = i + 1;
                        break;
                    }
                    events += 1;
                }
            }
            pos
        };
        let mut r = Response::new(log.reader(from, false));
        sse_headers(&mut r);
        return r;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    {
        let mut standalone = lock(&session.standalone);
        if standalone.as_ref().is_some_and(|s| !s.is_closed()) {
            return error_response(
                StatusCode::CONFLICT,
                None,
                -32600,
                "Conflict: only one standalone SSE stream is allowed per session",
                None,
            );
        }
        *standalone = Some(tx.clone());
    }
    // Keep-alive comments so idle-read timeouts of proxies do not close the stream.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            if tx
                .send(Bytes::from_static(b": keep-alive\n\n"))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    sse_headers(&mut r);
    r
}

fn delete(server: DemoServer, headers: HeaderMap) -> Response<Body> {
    let Some(session_id) = header_str(&headers, "mcp-session-id") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            "Bad Request: Mcp-Session-Id header is required",
            None,
        );
    };
    match lock(&server.state.sessions).remove(session_id) {
        Some(_) => status_only(StatusCode::OK),
        None => error_response(
            StatusCode::NOT_FOUND,
            None,
            -32001,
            "Session not found",
            None,
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:8080",
            "127.0.0.1",
            "127.0.0.1:9",
            "[::1]",
            "[::1]:80",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example.com",
            "evil.example.com:80",
            "127.0.0.1.evil.com",
            "[::2]:1",
            "localhost.evil:1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert!(origin_is_loopback("http://localhost:3000"));
        assert!(origin_is_loopback("http://[::1]:3000"));
        assert!(!origin_is_loopback("http://evil.example.com"));
        assert!(!origin_is_loopback("null"));
    }

    #[test]
    fn name_header_decoding() {
        assert_eq!(decode_name_header("echo").as_deref(), Some("echo"));
        assert_eq!(decode_name_header("=?base64?w6k=?=").as_deref(), Some("é"));
        assert_eq!(decode_name_header("=?base64?***?="), None);
    }

    #[test]
    fn accept_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        assert_eq!(accepts(&h), (true, true));
        h.insert(ACCEPT, HeaderValue::from_static("text/html"));
        assert_eq!(accepts(&h), (false, false));
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(accepts(&h), (true, false));
    }
}
