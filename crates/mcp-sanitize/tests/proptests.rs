//! Property tests: no input makes a function or a layer panic, and SSE redaction does not
//! depend on how the stream is cut into chunks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use mcp_core::Body;
use mcp_sanitize::ssrf::{classify_host_name, find_urls, parse_ipv4_lenient};
use mcp_sanitize::text::*;
use mcp_sanitize::{
    ControlCharPolicy, Redactor, ResultScanConfig, ResultScanLayer, SanitizeConfig, SanitizeLayer,
    SsrfConfig, UrlPolicy,
};
use proptest::prelude::*;
use serde_json::Value;
use tower::{Layer, ServiceExt, service_fn};

/// `bytes` cut into frames at `cuts` (each taken modulo the length + 1); with `empty`,
/// repeated cuts leave empty frames between them.
fn cut(bytes: &[u8], cuts: Vec<usize>, empty: bool) -> VecDeque<Bytes> {
    let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    if !empty {
        points.dedup();
    }
    let mut chunks = VecDeque::new();
    let mut last = 0;
    for p in points {
        chunks.push_back(Bytes::copy_from_slice(&bytes[last..p]));
        last = p;
    }
    chunks.push_back(Bytes::copy_from_slice(&bytes[last..]));
    chunks
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "' OR '1'='1",
            "; rm -rf /",
            "<script>",
            "../../etc/passwd",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
            "a\u{0}b",
            "javascript:x",
            "%2e%2e/",
            "gopher://0x7f.1/",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

static LAYERS: std::sync::LazyLock<Vec<SanitizeLayer>> = std::sync::LazyLock::new(build_layers);
static SCAN: std::sync::LazyLock<ResultScanLayer> =
    std::sync::LazyLock::new(|| ResultScanLayer::new(&ResultScanConfig::default()).unwrap());
static REDACTOR: std::sync::LazyLock<Redactor> =
    std::sync::LazyLock::new(|| Redactor::new(&ResultScanConfig::default()).unwrap());

fn layers() -> &'static [SanitizeLayer] {
    &LAYERS
}

fn build_layers() -> Vec<SanitizeLayer> {
    let mut strip = SanitizeConfig::default();
    for c in mcp_sanitize::Category::ALL {
        strip.rules.get_mut(c).action = mcp_sanitize::RuleAction::Strip;
    }
    strip.control_chars = ControlCharPolicy::Strip;
    strip.allow_batch = true;
    vec![
        SanitizeLayer::new(SanitizeConfig::default()).unwrap(),
        SanitizeLayer::new(strip).unwrap(),
    ]
}

async fn through_layer(layer: &SanitizeLayer, body: Vec<u8>, origin: Option<String>) -> u16 {
    let svc = layer
        .clone()
        .with_parse()
        .layer(service_fn(|req: Request<Body>| async move {
            // The inner service sees a body that parses as JSON whenever it is reached.
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            assert!(serde_json::from_slice::<Value>(&bytes).is_ok());
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        }));
    let mut req = Request::post("/mcp")
        .header("host", "localhost")
        .header("content-type", "application/json");
    if let Some(o) = origin
        && let Ok(v) = http::HeaderValue::from_str(&o)
    {
        req = req.header("origin", v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    resp.status().as_u16()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn text_functions_never_panic_and_keep_their_promises(s in any::<String>()) {
        let f = sanitize_filter_value(&s);
        prop_assert!(f.chars().count() <= MAX_LENGTH);
        prop_assert!(!f.contains([';', '\'', '"', '|', '&', '$', '(', ')', '<', '>', '`', '\\']));
        prop_assert!(!f.contains("--") && !f.contains("/*") && !f.contains("*/"));
        prop_assert!(!has_forbidden_control(&f));
        let p = sanitize_json_path(&s);
        prop_assert!(!p.contains([';', '|', '&', '`', '/', '\\']));
        let id = sanitize_identifier(&s);
        prop_assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)));
        let q = sanitize_query(&s);
        prop_assert!(!has_forbidden_control(&q) && q.chars().count() <= MAX_LENGTH);
        let _ = validate_string(&s);
        let _ = validate_identifier(&s);
        let _ = truncate_chars(&s, 3);
        // Idempotent.
        prop_assert_eq!(sanitize_filter_value(&f), f);
    }

    #[test]
    fn url_functions_never_panic(s in any::<String>()) {
        let p = UrlPolicy::new(&["http".into(), "https".into(), "gopher".into()], 2048, &SsrfConfig::default()).unwrap();
        let _ = parse_ipv4_lenient(&s);
        let _ = classify_host_name(&s);
        let _ = p.check(&s);
        let _ = p.check_host_only(&s);
        let _ = p.check_name(&s);
        for u in find_urls(&s) {
            let _ = p.check(u);
        }
        let with_scheme = format!("http://{s}/");
        let _ = p.check(&with_scheme);
    }

    #[test]
    fn the_layer_never_panics_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512), origin in proptest::option::of(".{0,30}")) {
        let rt = rt();
        for layer in layers() {
            let status = rt.block_on(through_layer(layer, body.clone(), origin.clone()));
            prop_assert!([200, 400, 403, 413, 415].contains(&status), "status {}", status);
        }
    }

    #[test]
    fn the_layer_never_panics_on_any_json(args in arb_json(), method in prop::sample::select(vec!["tools/call", "prompts/get", "resources/read", "ping"])) {
        let rt = rt();
        let bodies = [
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "t", "uri": "http://x/", "arguments": args.clone()}}),
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": args.clone()}),
            serde_json::json!([{"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "t", "arguments": args.clone()}}, args.clone()]),
            args.clone(),
        ];
        for layer in layers() {
            for b in &bodies {
                let status = rt.block_on(through_layer(layer, serde_json::to_vec(b).unwrap(), None));
                prop_assert!([200, 400].contains(&status), "status {}", status);
            }
        }
    }

    #[test]
    fn redactor_never_panics(b in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = REDACTOR.redact(&b);
    }

    #[test]
    fn sse_redaction_does_not_depend_on_chunking(
        cuts in prop::collection::vec(0usize..400, 0..12),
        filler in "[a-z ]{0,30}",
    ) {
        let stream = format!(
            "data: one {filler}\n\ndata: AKIAIOSFODNN7EXAMPLE {filler}\r\n\r\nevent: x\ndata: Bearer abcdefghijklmnopqrstuvwx\n\ndata: -----BEGIN PRIVATE KEY-----\\nMIIBVgIBADAN\\n-----END PRIVATE KEY-----\n\ndata: tail {filler} xoxb-1234567890-abcdefghij"
        );
        let bytes = stream.as_bytes();
        let out = rt().block_on(scan_sse(cut(bytes, cuts, false)));
        let whole = rt().block_on(scan_sse(VecDeque::from([Bytes::copy_from_slice(bytes)])));
        prop_assert_eq!(&out, &whole);
        let text = String::from_utf8(out).unwrap();
        prop_assert!(!text.contains("AKIA") && !text.contains("MIIBVgIBADAN") && !text.contains("xoxb-") && !text.contains("abcdefghijklmnopqrstuvwx"), "{}", text);
        prop_assert_eq!(text.matches("[REDACTED:").count(), 4);
    }

    /// A result is the same after the layer whether it came in one frame or in many, with
    /// empty frames or not: exactly what the redactor makes of the whole body, whatever
    /// its content type (every non-SSE body is scanned as it streams).
    #[test]
    fn json_redaction_does_not_depend_on_chunking(
        cuts in prop::collection::vec(0usize..300, 0..10),
        filler in "[a-z \"]{0,40}",
        secret in prop::sample::select(vec!["", "AKIAIOSFODNN7EXAMPLE", "xoxb-1234567890-abcdefghij", "Bearer abcdefghijklmnopqrstuvwx"]),
        content_type in prop::sample::select(vec![
            "application/json", "Application/JSON; charset=utf-8", " application/vnd.api+JSON ;x=y",
            "text/plain", "application/jsonx", "json",
        ]),
    ) {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"text":"{filler} {secret} {filler}"}}}}"#);
        let bytes = body.as_bytes();
        let chunks = cut(bytes, cuts, true);
        let (status, _hint, out) = rt().block_on(scan_json(&SCAN, content_type, chunks));
        prop_assert_eq!(status, 200);
        prop_assert_eq!(&out[..], &REDACTOR.redact(bytes)[..]);
        if !secret.is_empty() {
            prop_assert!(!String::from_utf8_lossy(&out).contains(secret));
        }
    }
}

async fn scan_json(
    layer: &ResultScanLayer,
    content_type: &'static str,
    chunks: VecDeque<Bytes>,
) -> (u16, Option<u64>, Bytes) {
    let svc = layer.layer(service_fn(move |_req: Request<()>| {
        let body = Chunks(chunks.clone());
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", content_type)
                    .body(body)
                    .unwrap(),
            )
        }
    }));
    let resp = svc.oneshot(Request::new(())).await.unwrap();
    let status = resp.status().as_u16();
    let hint = http_body::Body::size_hint(resp.body()).exact();
    let out = resp.into_body().collect().await.unwrap().to_bytes();
    (status, hint, out)
}

struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

async fn scan_sse(chunks: VecDeque<Bytes>) -> Vec<u8> {
    let svc = SCAN.layer(service_fn(move |_req: Request<()>| {
        let body = Chunks(chunks.clone());
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            )
        }
    }));
    let resp = svc.oneshot(Request::new(())).await.unwrap();
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}
