//! Property test of the whole request path: the gateway's router with every layer on, in
//! front of the demo MCP server on a loopback socket, fed arbitrary requests (methods,
//! paths, MCP and credential headers with junk values, arbitrary bytes or JSON-RPC shaped
//! bodies with arbitrary parameters). Whatever comes in, the gateway does not panic and
//! does not answer 500; every refusal on the MCP endpoint is a JSON-RPC error; the
//! body can be read to its end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{app, config, demo, layers};

const KEY: &str = "Abc123!@#Xyz789!@#Props";
const TOKEN: &str = "tok_0123456789abcdefghijklmnopqrstuvwxyzAB";

struct Harness {
    rt: tokio::runtime::Runtime,
    router: Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let router = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let up = listener.local_addr().unwrap();
            let server = demo::DemoServer::new(demo::DemoOptions::default());
            tokio::spawn(server.serve(listener, "/mcp", std::future::pending::<()>()));
            let text = format!(
                r#"server:
  addr: "127.0.0.1:8080"
auth:
  enabled: true
  mode: [apikey, bearer]
  apiKeys:
    - id: props
      key: "{KEY}"
      scopes: ["mcp:tools", "audit:read"]
  bearerToken: "{TOKEN}"
ratelimit:
  enabled: true
  requests_per_second: 100000
  burst: 100000
sanitization:
  enabled: true
  blocked_patterns: ["DROP TABLE", "rm -rf"]
audit:
  enabled: true
  storage: database
  database:
    type: sqlite
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "http://{up}/mcp"
    responseTimeoutMs: 5000
"#,
                dir.path().join("audit.db").display()
            );
            let loaded = config::parse(&text, "props.yaml", &|_| None).unwrap();
            let layers = layers::Layers::build(&loaded).await.unwrap();
            app::router(&loaded, &layers, None).unwrap()
        });
        Harness {
            rt,
            router,
            _dir: dir,
        }
    })
}

/// A header: a credential in a credential header, or another header with a value that
/// is often well-formed (so that requests get past the outer layers) and sometimes junk.
fn header() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let credential = prop::sample::select(vec![
        ("x-api-key", KEY.to_owned()),
        ("x-api-key", format!("{KEY}x")),
        ("authorization", format!("Bearer {TOKEN}")),
        ("authorization", format!("bearer {TOKEN}")),
        ("authorization", "Basic YWRtaW46cGFzc3dvcmQ=".to_owned()),
        ("cookie", format!("session={KEY}")),
    ])
    .prop_map(|(n, v)| (n, v.into_bytes()));
    let name = prop::sample::select(vec![
        "origin",
        "host",
        "content-type",
        "accept",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "mcp-session-id",
        "last-event-id",
        "x-forwarded-for",
        "forwarded",
        "x-request-id",
        "content-length",
        "x-api-key",
        "authorization",
    ]);
    let value = prop_oneof![
        Just(b"application/json".to_vec()),
        Just(b"application/json, text/event-stream".to_vec()),
        Just(b"2026-07-28".to_vec()),
        Just(b"2025-11-25".to_vec()),
        Just(b"tools/call".to_vec()),
        Just(b"http://localhost".to_vec()),
        Just(b"127.0.0.1".to_vec()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop_oneof![1 => credential, 3 => (name, value)]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,24}".prop_map(Value::String),
        ".{0,24}".prop_map(Value::String),
        prop::sample::select(vec![
            "<script>alert(1)</script>",
            "' OR 1=1 --",
            "; rm -rf /",
            "../../etc/passwd",
            "http://169.254.169.254/latest/meta-data/",
            "DROP TABLE users",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body, and the MCP headers a 2026-07-28 client would send with it (none for a
/// 2025-11-25 message or for junk).
fn body() -> impl Strategy<Value = (Vec<u8>, Vec<(&'static str, String)>)> {
    let method = prop::sample::select(vec![
        "tools/call",
        "tools/call",
        "tools/call",
        "tools/list",
        "initialize",
        "resources/read",
        "resources/list",
        "prompts/get",
        "prompts/list",
        "ping",
        "server/discover",
        "notifications/initialized",
        "completion/complete",
        "no/such/method",
    ]);
    // Tools that answer at once (not slow_count, which waits, or fetch_url, which
    // fetches).
    let tool = prop::sample::select(vec![
        "echo",
        "add",
        "get_demo_credentials",
        "test_simple_text",
        "test_error_handling",
        "no_such_tool",
    ]);
    let arguments = prop_oneof![
        4 => prop::collection::btree_map("[a-z_]{1,8}", arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => arb_json(),
    ];
    let rpc = (
        method,
        tool,
        arguments,
        prop::option::weighted(0.9, any::<i32>()),
        prop::bool::weighted(0.75),
    )
        .prop_map(|(method, tool, args, id, modern)| {
            let mut params = json!({"name": tool, "arguments": args});
            let mut headers = Vec::new();
            if modern {
                params["_meta"] = json!({
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                });
                headers.push(("mcp-protocol-version", "2026-07-28".to_owned()));
                headers.push(("mcp-method", method.to_owned()));
                if method == "tools/call" || method == "prompts/get" {
                    headers.push(("mcp-name", tool.to_owned()));
                }
            }
            let mut msg = json!({"jsonrpc": "2.0", "method": method, "params": params});
            if let Some(id) = id {
                msg["id"] = json!(id);
            }
            (serde_json::to_vec(&msg).unwrap(), headers)
        });
    prop_oneof![
        4 => rpc,
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (b, Vec::new())),
        1 => arb_json().prop_map(|v| (serde_json::to_vec(&v).unwrap(), Vec::new())),
    ]
}

fn request_strategy() -> impl Strategy<Value = Request<Body>> {
    let method = prop::sample::select(vec![
        Method::POST,
        Method::POST,
        Method::POST,
        Method::POST,
        Method::POST,
        Method::POST,
        Method::GET,
        Method::DELETE,
        Method::PUT,
        Method::OPTIONS,
        Method::HEAD,
    ]);
    let path = prop_oneof![
        8 => Just("/mcp".to_owned()),
        1 => prop::sample::select(vec![
            "/mcp/",
            "/mcp?x=1",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/audit/query",
            "/api/audit/query?limit=abc&user=%ff&since=-1",
            "/",
            "/MCP",
        ])
        .prop_map(str::to_owned),
        1 => "/[!-~]{0,20}",
    ];
    (
        method,
        path,
        prop::collection::vec(header(), 0..3),
        prop::bool::weighted(0.8),
        body(),
    )
        .prop_filter_map(
            "an invalid URI or header",
            |(method, path, headers, usual, (body, mcp_headers))| {
                let mut req = Request::builder()
                    .method(method)
                    .uri(path.parse::<http::Uri>().ok()?);
                if usual {
                    // What a well-behaved client sends, before the arbitrary headers.
                    req = req
                        .header("host", "127.0.0.1:8080")
                        .header("x-api-key", KEY)
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream");
                    for (name, value) in mcp_headers {
                        req = req.header(name, value);
                    }
                }
                for (name, value) in headers {
                    req = req.header(
                        HeaderName::from_static(name),
                        HeaderValue::from_bytes(&value).ok()?,
                    );
                }
                let mut req = req.body(Body::from(body)).ok()?;
                req.extensions_mut()
                    .insert(mcp_core::PeerAddr(SocketAddr::from((
                        [127, 0, 0, 1],
                        40000,
                    ))));
                Some(req)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn no_request_panics_or_gets_a_500(req in request_strategy()) {
        let h = harness();
        let shown = format!("{} {} {:?}", req.method(), req.uri(), req.headers());
        // A response to HEAD may have its body dropped (axum's method routes do; hyper never
        // sends it): an empty one is checked by status and content type only.
        let head = req.method() == Method::HEAD;
        let (status, denied, json_type, sse, body) = h.rt.block_on(async {
            let res = h.router.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let denied = res.extensions().get::<mcp_core::Denial>().is_some();
            let content_type = |prefix: &[u8]| {
                res.headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(prefix))
            };
            let (json_type, sse) = (content_type(b"application/json"), content_type(b"text/event-stream"));
            // A standalone SSE stream (GET) stays open: read what comes for a moment.
            let wait = if sse { Duration::from_millis(300) } else { Duration::from_secs(10) };
            let body = tokio::time::timeout(wait, res.into_body().collect())
                .await
                .ok()
                .map(|b| b.unwrap().to_bytes());
            (status, denied, json_type, sse, body)
        });
        prop_assert_ne!(status.as_u16(), 500, "{}", shown);
        let Some(body) = body else {
            prop_assert!(sse, "a {} response that is not a stream did not end: {}", status, shown);
            return Ok(());
        };
        // No credential sent in a credential header comes back, whatever was asked
        // (audit query results included).
        let text = String::from_utf8_lossy(&body);
        prop_assert!(!text.contains(KEY) && !text.contains(TOKEN), "{}: {}", shown, text);
        // Every refusal of the gateway's own is a JSON-RPC error; what the upstream
        // answers (its 405 for a stateless GET, say) is passed on as it is.
        if denied {
            prop_assert!(status.is_client_error() || status.is_server_error(), "{}", shown);
            prop_assert!(json_type, "{} without a JSON body: {}", status, shown);
            if head && body.is_empty() {
                return Ok(());
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!("{status}: not JSON ({e}): {text}")
            });
            prop_assert_eq!(&v["jsonrpc"], "2.0", "{}", v);
            prop_assert!(v["error"]["code"].is_i64(), "{}", v);
            prop_assert!(v["error"]["message"].is_string(), "{}", v);
        }
    }
}
