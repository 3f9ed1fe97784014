//! The boundary to the upstream, end to end over real sockets (HTTP/1.1, h2c, and HTTP/2
//! over TLS with ALPN `h2`):
//!
//! - the upstream URL is the operator's: a client's query never reaches the upstream by
//!   default, and where `upstreams[].forwardQuery` lets named parameters through, none
//!   can repeat or override a parameter of the configured URL, whatever its spelling;
//! - CORS, authentication challenges, protocol advertisements, redirects and the other
//!   headers an upstream sends for its own origin never reach the client as the
//!   gateway's word (the gateway's own headers survive);
//! - a request whose HTTP/2 `:authority` (or HTTP/1.1 absolute-form target) and `Host`
//!   disagree, or with two `Host` headers, is refused (400) and audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------
// Clients: raw HTTP/2 (h2c and TLS with ALPN h2) and raw HTTP/1.1.

/// A tools/call `echo` body.
fn echo_body() -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "hi"}, "_meta": modern_meta()}})
    .to_string()
}

/// A POST of [`echo_body`] to `uri` (its authority becomes `:authority`), with `hosts`
/// as `Host` headers.
fn h2_request(uri: &str, hosts: &[&str], extra: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::post(uri)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo");
    for h in hosts {
        b = b.header("host", *h);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

type H2 = h2::client::SendRequest<Bytes>;

async fn h2_over<T>(io: T) -> H2
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// HTTP/2 with prior knowledge over plain TCP.
async fn h2c(addr: &str) -> H2 {
    h2_over(TcpStream::connect(addr).await.unwrap()).await
}

/// HTTP/2 over TLS, negotiated with ALPN.
async fn h2_tls(addr: &str, ca_pem: &str) -> H2 {
    let mut cfg = rustls_client(ca_pem);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_over(tls).await
}

struct H2Response {
    status: u16,
    headers: http::HeaderMap,
    body: String,
    trailers: Option<http::HeaderMap>,
}

/// Sends `req` with `body` on `send`; the whole response.
async fn h2_send(send: &H2, req: http::Request<()>, body: &str) -> H2Response {
    let mut s = send.clone().ready().await.unwrap();
    let (fut, mut stream) = s.send_request(req, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream
            .send_data(Bytes::from(body.to_owned()), true)
            .unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("a response within 60 s")
        .unwrap();
    let (parts, mut recv) = resp.into_parts();
    let mut buf = Vec::new();
    while let Some(chunk) = recv.data().await {
        let c = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(c.len());
        buf.extend_from_slice(&c);
    }
    let trailers = recv.trailers().await.unwrap();
    H2Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&buf).into_owned(),
        trailers,
    }
}

/// Sends one raw HTTP/1.1 request (`head` without its final empty line, then
/// [`echo_body`]) on a new connection; the status code.
async fn h1_raw(addr: &str, head: &str) -> u16 {
    let body = echo_body();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: echo\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

// ---------------------------------------------------------------------------------------
// TLS material.

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "boundary CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    /// (certificate PEM, key PEM) for localhost and 127.0.0.1.
    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn rustls_client(ca_pem: &str) -> rustls::ClientConfig {
    ring();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// A TLS gateway in front of `upstream` (extra top-level YAML in `extra`): (process,
/// "host:port", CA PEM).
fn start_tls_gateway(dir: &std::path::Path, upstream: &str, extra: &str) -> (Proc, String, String) {
    let ca = Ca::new();
    let (cert, key) = ca.server();
    let cert_f = dir.join("server.pem");
    let key_f = dir.join("server.key");
    std::fs::write(&cert_f, cert).unwrap();
    std::fs::write(&key_f, key).unwrap();
    let yaml = with_server_keys(
        &base_config(upstream, &dir.join("a.db"), extra),
        &format!(
            "  tls:\n    certFile: \"{}\"\n    keyFile: \"{}\"\n",
            cert_f.display(),
            key_f.display()
        ),
    );
    let (gw, base) = start_gateway(dir, &yaml);
    let addr = base.trim_start_matches("https://").to_owned();
    (gw, addr, ca.0.pem())
}

// ---------------------------------------------------------------------------------------
// Item 4: the upstream URL is the operator's.

/// The query of every URI the recording upstream saw.
fn seen_queries(seen: &std::sync::Mutex<Vec<(String, http::HeaderMap)>>) -> Vec<Option<String>> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(u, _)| u.split_once('?').map(|(_, q)| q.to_owned()))
        .collect()
}

/// Client queries that try to repeat or override `tenant` and `role` (the operator's),
/// in the spellings that frameworks read as those names.
const OVERRIDES: &[&str] = &[
    "tenant=evil&role=admin",
    "TENANT=evil",
    "Role=admin",
    "%74enant=evil",
    "%54ENANT=evil",
    "ten%61nt=evil",
    "%2574enant=evil",
    "%u0074enant=evil",
    "%2Btenant=evil",
    "tenant[]=evil",
    "tenant%5B%5D=evil",
    "tenant[0]=evil",
    "role[x]=admin",
    "a=1;tenant=evil",
    "+tenant=evil",
    "%20tenant=evil",
    "tenant=evil&tenant=evil2",
    "tenant",
    "role_id=1&role.x=2&tenant%00=evil",
];

#[tokio::test]
async fn a_client_query_never_reaches_the_upstream_by_default() {
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let yaml = base_config(
        &format!("{upstream}?tenant=acme&role=reader"),
        &dir.path().join("a.db"),
        "",
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    let queries: Vec<&str> = OVERRIDES
        .iter()
        .copied()
        .chain([
            "page=2",
            "cursor=abc&page=3",
            "x=%26tenant%3Devil",
            "a=1%3Btenant=evil",
        ])
        .collect();
    for q in &queries {
        let r = call_tool(
            &c,
            &format!("{base}/mcp?{q}"),
            "echo",
            json!({"message": "hi"}),
        )
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{q}: {}", r.text().await.unwrap());
    }
    let got = seen_queries(&seen);
    assert_eq!(got.len(), queries.len());
    for (q, got) in queries.iter().zip(got) {
        assert_eq!(
            got.as_deref(),
            Some("tenant=acme&role=reader"),
            "client query {q:?} reached the upstream"
        );
    }
    // An upstream URL without a query gets none either.
    let (upstream2, seen2) = recording_upstream().await;
    let dir2 = tempdir();
    let (_gw2, base2) = start_gateway(
        dir2.path(),
        &base_config(&upstream2, &dir2.path().join("a.db"), ""),
    );
    let r = call_tool(
        &c,
        &format!("{base2}/mcp?tenant=evil"),
        "echo",
        json!({"message": "hi"}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(seen_queries(&seen2), vec![None]);
}

/// `forwardQuery: [...]` added to the upstream entry of [`base_config`].
fn with_forward_query(yaml: &str, list: &str) -> String {
    yaml.replacen(
        "    path: /mcp\n",
        &format!("    path: /mcp\n    forwardQuery: {list}\n"),
        1,
    )
}

async fn forwarded_queries_never_override_the_operator(list: &str) {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let yaml = with_forward_query(
        &base_config(&format!("{upstream}?tenant=acme&role_id=reader"), &db, ""),
        list,
    );
    let (gw, base) = start_gateway(dir.path(), &yaml);
    // Turning it on is logged at start.
    assert!(
        eventually(|| gw.stderr_text().contains("forwardQuery")).await,
        "{}",
        gw.stderr_text()
    );
    let c = client();
    let send = |q: String| {
        call_tool(
            &c,
            &format!("{base}/mcp?{q}"),
            "echo",
            json!({"message": "hi"}),
        )
        .header("x-api-key", KEY)
        .send()
    };
    // Allowed names pass, after the operator's parameters, as the client wrote them.
    let r = send("page=2&cursor=a%2Fb".into()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        seen_queries(&seen).pop().flatten().as_deref(),
        Some("tenant=acme&role_id=reader&page=2&cursor=a%2Fb")
    );
    let before = seen.lock().unwrap().len();
    let mut overrides: Vec<String> = OVERRIDES
        .iter()
        .map(|q| q.replace("role", "role_id").replace("Role", "Role_Id"))
        .collect();
    overrides.extend(
        [
            "page=2&tenant=evil",
            "page=2;role.id=admin",
            "role%2Eid=admin",
            "ROLE_ID=admin",
            "role%5fid=admin",
            "role%255Fid=admin",
            "page=2&%74%65%6e%61%6e%74=evil",
            // PHP reads a `[` with no `]` after it as `_`.
            "role[id=admin",
            "role%5Bid=admin",
            "role%255bid=admin",
            "page=2&ROLE[ID=admin",
        ]
        .map(String::from),
    );
    for q in overrides {
        let r = send(q.clone()).await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains("-32600"), "{q}: {body}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "an override reached the upstream: {:?}",
        seen_queries(&seen)
    );
    // The refusal is audited with its rule.
    assert!(
        eventually(|| request_rows(&db)
            .iter()
            .any(|r| r.status == Some(400) && r.event.to_string().contains("rule=upstream_query")))
        .await,
        "{:#?}",
        request_rows(&db)
            .iter()
            .map(|r| &r.event)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_query_allow_list_never_overrides_the_operators_parameters() {
    forwarded_queries_never_override_the_operator("[page, cursor]").await;
}

#[tokio::test]
async fn forwarding_every_parameter_never_overrides_the_operators_parameters() {
    forwarded_queries_never_override_the_operator("[\"*\"]").await;
}

#[tokio::test]
async fn an_allow_list_forwards_only_its_names() {
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let yaml = with_forward_query(
        &base_config(&upstream, &dir.path().join("a.db"), ""),
        "[page]",
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    for (q, want) in [
        ("page=2&debug=1", Some("page=2")),
        ("debug=1", None),
        ("debug=1;page=4", Some("page=4")),
        ("x=%26page%3D9", None),
    ] {
        let r = call_tool(
            &c,
            &format!("{base}/mcp?{q}"),
            "echo",
            json!({"message": "hi"}),
        )
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{q}");
        assert_eq!(seen_queries(&seen).pop().flatten().as_deref(), want, "{q}");
    }
}

#[test]
fn check_refuses_a_forwarded_parameter_the_operator_sets() {
    let dir = tempdir();
    let cfg = base_config(
        "http://127.0.0.1:9/mcp?tenant=acme",
        &dir.path().join("a.db"),
        "",
    );
    for list in ["[page, Tenant]", "[\"tenant[]\"]", "[\"\"]"] {
        let bad = with_forward_query(&cfg, list);
        assert_check_refuses(
            dir.path(),
            &bad,
            &format!("forwardQuery: {list}"),
            "upstreams[0].forwardQuery",
        );
    }
    for list in ["[page, tenant_id]", "[\"*\"]"] {
        let path = dir.path().join("good.yaml");
        std::fs::write(&path, with_forward_query(&cfg, list)).unwrap();
        let (code, _, err) = run(
            &["check", "--config", path.to_str().unwrap()],
            dir.path(),
            &[],
        );
        assert_eq!(code, 0, "{list}: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// Item 6: upstream response headers are filtered.

/// What a hostile upstream sends besides its content (raw, so names keep their case, and
/// some come twice).
const HOSTILE_HEADERS: &[(&str, &str)] = &[
    ("Access-Control-Allow-Origin", "*"),
    ("ACCESS-CONTROL-ALLOW-ORIGIN", "https://evil.example"),
    ("Access-Control-Allow-Credentials", "true"),
    ("access-control-allow-methods", "POST, GET, DELETE, PUT"),
    ("Access-Control-Allow-Headers", "*"),
    ("Access-Control-Expose-Headers", "Mcp-Session-Id, X-Secret"),
    ("Access-Control-Max-Age", "86400"),
    ("Access-Control-Allow-Private-Network", "true"),
    ("Access_Control_Allow_Origin", "*"),
    ("Timing-Allow-Origin", "*"),
    ("Refresh", "0; url=https://evil.example/"),
    ("Alt-Svc", "h3=\":4433\"; ma=86400"),
    ("WWW-Authenticate", "Basic realm=\"upstream\""),
    ("www-authenticate", "Bearer realm=\"evil\""),
    ("Proxy-Authenticate", "Basic realm=\"upstream\""),
    ("Authentication-Info", "nextnonce=\"x\""),
    ("Clear-Site-Data", "\"*\""),
    ("Strict-Transport-Security", "max-age=0"),
    ("Location", "https://evil.example/phish"),
    ("Content-Location", "http://10.0.0.7:9000/internal"),
    (
        "Link",
        "<https://evil.example/x.js>; rel=preload; as=script",
    ),
    ("Set-Cookie", "upstream=1; Path=/"),
    ("NEL", "{\"report_to\":\"x\",\"max_age\":86400}"),
    (
        "Report-To",
        "{\"group\":\"x\",\"endpoints\":[{\"url\":\"https://evil.example/r\"}]}",
    ),
    ("Reporting-Endpoints", "default=\"https://evil.example/r\""),
    ("X-Accel-Redirect", "/internal/secret"),
    ("X-Sendfile", "/etc/passwd"),
    ("Service-Worker-Allowed", "/"),
    ("X-Upstream-Kept", "yes"),
    ("Cache-Control", "no-store"),
];

/// Headers of [`HOSTILE_HEADERS`] the client must never see (lower case).
const NEVER_SEEN: &[&str] = &[
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-allow-private-network",
    "access_control_allow_origin",
    "timing-allow-origin",
    "refresh",
    "alt-svc",
    "www-authenticate",
    "proxy-authenticate",
    "authentication-info",
    "clear-site-data",
    "location",
    "content-location",
    "link",
    "set-cookie",
    "nel",
    "report-to",
    "reporting-endpoints",
    "x-accel-redirect",
    "x-sendfile",
    "service-worker-allowed",
];

/// A raw HTTP/1.1 upstream answering every request with [`HOSTILE_HEADERS`]: SSE when the
/// request carries `x-test-sse`, the status of `x-test-status` (default 200).
async fn hostile_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_hostile(s));
        }
    });
    format!("http://{addr}/mcp")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn serve_hostile(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let value = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_owned())
        };
        let len: usize = value("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..end + len).skip(end).collect();
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or(Value::Null);
        let status = value("x-test-status").unwrap_or_else(|| "200".into());
        let msg = json!({"jsonrpc": "2.0", "id": id,
            "result": {"content": [{"type": "text", "text": "hostile"}]}})
        .to_string();
        let (ct, payload) = if value("x-test-sse").is_some() {
            (
                "text/event-stream",
                format!("event: message\ndata: {msg}\n\n"),
            )
        } else {
            ("application/json", msg)
        };
        let trailers = value("x-test-trailers").is_some();
        let mut out = format!("HTTP/1.1 {status} Whatever\r\nContent-Type: {ct}\r\n");
        if trailers {
            out.push_str("Transfer-Encoding: chunked\r\nTrailer: X-Upstream-Kept, Set-Cookie, WWW-Authenticate, Access-Control-Allow-Origin, Location\r\n");
        } else {
            out.push_str(&format!("Content-Length: {}\r\n", payload.len()));
        }
        for (k, v) in HOSTILE_HEADERS {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if trailers {
            out.push_str(&format!("{:x}\r\n{payload}\r\n0\r\n", payload.len()));
            for (k, v) in HOSTILE_HEADERS {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
        } else {
            out.push_str(&payload);
        }
        if s.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn assert_filtered(what: &str, h: &http::HeaderMap) {
    assert_filtered_names(what, h);
    assert_eq!(
        h.get("x-upstream-kept").map(|v| v.as_bytes()),
        Some(&b"yes"[..]),
        "{what}"
    );
    assert!(h.contains_key("content-type"), "{what}");
}

fn assert_filtered_names(what: &str, h: &http::HeaderMap) {
    for name in NEVER_SEEN {
        assert!(
            !h.contains_key(*name),
            "{what}: the upstream's {name} reached the client:\n{}",
            dump_headers(h)
        );
    }
}

/// The variants of one response: (label, extra request headers).
const VARIANTS: &[(&str, &[(&str, &str)])] = &[
    ("json", &[]),
    ("sse", &[("x-test-sse", "1")]),
    ("401", &[("x-test-status", "401")]),
    ("302", &[("x-test-status", "302")]),
    ("307 sse", &[("x-test-status", "307"), ("x-test-sse", "1")]),
];

#[tokio::test]
async fn upstream_cors_challenges_and_advertisements_never_reach_the_client() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.path().join("a.db"), ""),
    );
    // HTTP/1.1.
    let c = client();
    for (what, extra) in VARIANTS {
        let mut req = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}))
            .header("x-api-key", KEY);
        for (k, v) in *extra {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_filtered(&format!("HTTP/1.1 {what}"), r.headers());
        if *what == "json" {
            assert_eq!(r.status(), 200);
            assert!(r.text().await.unwrap().contains("hostile"));
        }
    }
    // HTTP/2 (h2c).
    let addr = base.trim_start_matches("http://");
    let h2 = h2c(addr).await;
    for (what, extra) in VARIANTS {
        let r = h2_send(
            &h2,
            h2_request(&format!("http://{addr}/mcp"), &[], extra),
            &echo_body(),
        )
        .await;
        assert_filtered(&format!("h2c {what}"), &r.headers);
        if *what == "sse" {
            assert_eq!(r.status, 200);
            assert!(r.body.contains("hostile"), "{}", r.body);
        }
    }
    // Trailers (relayed over HTTP/2) are filtered the same way.
    for sse in [false, true] {
        let mut extra = vec![("x-test-trailers", "1")];
        if sse {
            extra.push(("x-test-sse", "1"));
        }
        let r = h2_send(
            &h2,
            h2_request(&format!("http://{addr}/mcp"), &[], &extra),
            &echo_body(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_filtered("h2c headers with trailers", &r.headers);
        let trailers = r.trailers.expect("the upstream's trailers are relayed");
        assert_filtered_names("h2c trailers", &trailers);
        assert!(
            trailers.contains_key("x-upstream-kept"),
            "{}",
            dump_headers(&trailers)
        );
    }
}

#[tokio::test]
async fn over_tls_the_client_sees_the_gateways_hsts_only() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let (_gw, addr, ca) = start_tls_gateway(dir.path(), &upstream, "");
    let h2 = h2_tls(&addr, &ca).await;
    for (what, extra) in VARIANTS {
        let r = h2_send(
            &h2,
            h2_request(&format!("https://{addr}/mcp"), &[], extra),
            &echo_body(),
        )
        .await;
        assert_filtered(&format!("h2 over TLS {what}"), &r.headers);
        let hsts: Vec<_> = r
            .headers
            .get_all("strict-transport-security")
            .iter()
            .collect();
        assert_eq!(hsts, ["max-age=31536000; includeSubDomains"], "{what}");
    }
}

#[tokio::test]
async fn the_gateways_own_cors_headers_survive_and_the_list_is_configurable() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let extra = "security:\n  headers:\n    Access-Control-Allow-Origin: \"https://app.example\"\n  upstreamResponseHeaders:\n    allow: [Link]\n    strip: [X-Upstream-Kept, \"X-Accel-*\"]\n";
    let (gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.path().join("a.db"), extra),
    );
    assert!(
        eventually(|| gw.stderr_text().contains("upstreamResponseHeaders.allow")).await,
        "allowing a header back is logged: {}",
        gw.stderr_text()
    );
    let c = client();
    for (what, extra) in VARIANTS {
        let mut req = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}))
            .header("x-api-key", KEY);
        for (k, v) in *extra {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let h = r.headers();
        let acao: Vec<_> = h.get_all("access-control-allow-origin").iter().collect();
        assert_eq!(
            acao,
            ["https://app.example"],
            "{what}:\n{}",
            dump_headers(h)
        );
        assert!(
            !h.contains_key("access-control-allow-credentials"),
            "{what}"
        );
        assert!(!h.contains_key("x-upstream-kept"), "{what}");
        assert!(h.contains_key("link"), "{what}");
        assert!(!h.contains_key("www-authenticate"), "{what}");
    }
}

#[test]
fn check_refuses_allowing_a_hop_by_hop_or_cookie_header_back() {
    let dir = tempdir();
    let cfg = base_config("http://127.0.0.1:9/mcp", &dir.path().join("a.db"), "");
    for (section, bad_line) in [
        ("  upstreamResponseHeaders:\n", "allow: [Set-Cookie]"),
        ("  upstreamResponseHeaders:\n", "allow: [Transfer-Encoding]"),
        (
            "  upstreamResponseHeaders:\n",
            "allow: [\"Access-Control-*\"]",
        ),
        ("  upstreamResponseHeaders:\n", "strip: [\"Bad Name\"]"),
    ] {
        let bad = format!("{cfg}security:\n{section}    {bad_line}\n");
        let key = if bad_line.starts_with("allow") {
            "security.upstreamResponseHeaders.allow"
        } else {
            "security.upstreamResponseHeaders.strip"
        };
        assert_check_refuses(dir.path(), &bad, bad_line, key);
    }
}

// ---------------------------------------------------------------------------------------
// Item 7: `:authority` and `Host` agree.

/// (refused with 400?, uri, Host headers) for a gateway on `port` at 127.0.0.1.
fn authority_cases(scheme: &str, port: u16) -> Vec<(bool, String, Vec<String>)> {
    let default = if scheme == "https" { 443 } else { 80 };
    vec![
        // The review's case.
        (
            true,
            format!("{scheme}://evil.example/mcp"),
            vec!["localhost".into()],
        ),
        (
            true,
            format!("{scheme}://evil.example:{port}/mcp"),
            vec![format!("127.0.0.1:{port}")],
        ),
        (
            true,
            format!("{scheme}://localhost:{port}/mcp"),
            vec![format!("127.0.0.1:{port}")],
        ),
        (
            true,
            format!("{scheme}://localhost:{port}/mcp"),
            vec![format!("localhost:{}", port + 1)],
        ),
        (
            true,
            format!("{scheme}://localhost:{port}/mcp"),
            vec!["localhost".into()],
        ),
        (
            true,
            format!("{scheme}://localhost:{port}/mcp"),
            vec![format!("localhost:{port}"), format!("localhost:{port}")],
        ),
        (
            true,
            format!("{scheme}://localhost:{port}/mcp"),
            vec![format!("localhost:{port}"), "evil.example".into()],
        ),
        (
            true,
            format!("{scheme}://localhost:{port}/mcp"),
            vec![format!("localhost.:{port}")],
        ),
        // Agreeing spellings are served.
        (
            false,
            format!("{scheme}://localhost:{port}/mcp"),
            vec![format!("localhost:{port}")],
        ),
        (
            false,
            format!("{scheme}://LocalHost:{port}/mcp"),
            vec![format!("localhost:{port}")],
        ),
        (
            false,
            format!("{scheme}://localhost/mcp"),
            vec![format!("localhost:{default}")],
        ),
        (
            false,
            format!("{scheme}://127.0.0.1:{default}/mcp"),
            vec!["127.0.0.1".into()],
        ),
        (false, format!("{scheme}://localhost:{port}/mcp"), vec![]),
    ]
}

async fn authority_and_host_must_agree(h2: &H2, scheme: &str, port: u16) -> usize {
    let mut served = 0;
    for (refused, uri, hosts) in authority_cases(scheme, port) {
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let r = h2_send(h2, h2_request(&uri, &hosts, &[]), &echo_body()).await;
        if refused {
            assert_eq!(r.status, 400, "{scheme} {uri} host {hosts:?}: {}", r.body);
            assert!(r.body.contains("-32600"), "{}", r.body);
        } else {
            assert_eq!(r.status, 200, "{scheme} {uri} host {hosts:?}: {}", r.body);
            served += 1;
        }
    }
    served
}

/// Whether the audit trail holds a 400 refusal for the authority rule.
async fn authority_refusal_audited(db: &std::path::Path) {
    assert!(
        eventually(|| request_rows(db)
            .iter()
            .any(|r| r.status == Some(400) && r.event.to_string().contains("rule=authority")))
        .await,
        "{:#?}",
        request_rows(db)
            .iter()
            .map(|r| &r.event)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn h2c_authority_and_host_must_agree() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let addr = base.trim_start_matches("http://").to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let h2 = h2c(&addr).await;
    let served = authority_and_host_must_agree(&h2, "http", port).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        served,
        "a refused request reached the upstream"
    );
    authority_refusal_audited(&db).await;
}

#[tokio::test]
async fn h2_over_tls_authority_and_host_must_agree() {
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let (_gw, addr, ca) = start_tls_gateway(dir.path(), &upstream, "");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let h2 = h2_tls(&addr, &ca).await;
    let served = authority_and_host_must_agree(&h2, "https", port).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        served,
        "a refused request reached the upstream"
    );
    authority_refusal_audited(&dir.path().join("a.db")).await;
}

#[tokio::test]
async fn http1_absolute_form_target_and_host_must_agree() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let addr = base.trim_start_matches("http://").to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let cases = [
        (
            400,
            format!("POST http://evil.example/mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}"),
        ),
        (
            400,
            format!("POST http://localhost:{port}/mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}"),
        ),
        (
            400,
            format!("POST http://127.0.0.1/mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}"),
        ),
        (
            400,
            format!("POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nhost: evil.example"),
        ),
        (
            400,
            format!("POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nhost: 127.0.0.1:{port}"),
        ),
        (
            200,
            format!("POST http://127.0.0.1:{port}/mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}"),
        ),
        (
            200,
            format!("POST http://LOCALHOST:{port}/mcp HTTP/1.1\r\nhost: localhost:{port}"),
        ),
        (200, format!("POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}")),
    ];
    let mut served = 0;
    for (want, head) in &cases {
        let status = h1_raw(&addr, head).await;
        assert_eq!(status, *want, "{head:?}");
        if *want == 200 {
            served += 1;
        }
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        served,
        "a refused request reached the upstream"
    );
    authority_refusal_audited(&db).await;
}
