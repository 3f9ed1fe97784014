//! Attacks on the transport found by a security review: the gateway process in front of a recording
//! upstream (raw loopback HTTP/1.1 server that keeps every request head and body), with a
//! policy that denies `denied_tool`, sanitization on and off. Every request below is sent
//! as raw bytes, so that the exact framing (pipelining, `Transfer-Encoding` spellings,
//! `Content-Length: 0` with bytes after it, paths, HTTP/2 frames) is what the gateway
//! sees. Each test asserts that the denied call never reaches the upstream, and the
//! re-tests of two earlier fixes: header names with `_` never reach the upstream, and an
//! HTTP/2 client that sends PINGs / 1-byte WINDOW_UPDATEs while never reading has its
//! stalled stream reset after the write timeout (`server.streamWriteTimeoutSeconds`,
//! which follows `server.writeTimeoutSeconds`) and its connection, then without a request
//! in progress, closed after `server.idleTimeoutSeconds` (PINGs and window updates do not
//! keep it open).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One request as the upstream read it: the head (request line and headers, raw) and
/// the body.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

const OK_BODY: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ran"}]}}"#;

fn serve_conn(s: TcpStream, log: Log) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let low = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if low.contains("transfer-encoding: chunked") {
            loop {
                let mut sz = String::new();
                r.read_line(&mut sz).unwrap();
                let n = usize::from_str_radix(sz.trim().split(';').next().unwrap(), 16).unwrap();
                if n == 0 {
                    let mut end = String::new();
                    r.read_line(&mut end).unwrap();
                    break;
                }
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(cl) = low
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            body = vec![0; cl];
            r.read_exact(&mut body).unwrap();
        }
        let get = head.starts_with("GET ");
        log.lock().unwrap().push(Seen { head, body });
        let (ct, out): (&str, Vec<u8>) = if get {
            // An SSE stream far larger than any socket buffer, in 1 KB events (one 8 MiB
            // event is dropped by the gateway's event size limit: nothing to write).
            let mut event = b"data: ".to_vec();
            event.extend(std::iter::repeat_n(b'x', 1000));
            event.extend_from_slice(b"\n\n");
            let v = event.repeat(8000);
            ("text/event-stream", v)
        } else {
            ("application/json", OK_BODY.to_vec())
        };
        let h = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            out.len()
        );
        if w.write_all(h.as_bytes()).is_err() || w.write_all(&out).is_err() {
            return;
        }
    }
}

fn recording_upstream() -> (String, Log) {
    let log: Log = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lg = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let lg = lg.clone();
            std::thread::spawn(move || serve_conn(s, lg));
        }
    });
    (format!("http://{addr}/mcp"), log)
}

fn gateway(dir: &std::path::Path, sanitize: bool) -> (Proc, String, Log) {
    let (upstream, log) = recording_upstream();
    let extra = format!(
        r#"policy:
  allow:
    - {{name: everything, methods: ["*"]}}
  deny:
    - {{name: no-denied, tools: ["denied_tool"]}}
sanitization:
  enabled: {sanitize}
  allow_batch: true
"#
    );
    let mut yaml = base_config(&upstream, &dir.join("a.db"), &extra);
    yaml = yaml.replace(
        "server:\n  addr: \"127.0.0.1:0\"\n",
        "server:\n  addr: \"127.0.0.1:0\"\n  writeTimeoutSeconds: 2\n  idleTimeoutSeconds: 3\n",
    );
    let (gw, base) = start_gateway(dir, &yaml);
    let hostport = base.trim_start_matches("http://").to_owned();
    (gw, hostport, log)
}

const DENIED: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool","arguments":{}}}"#;
const ALLOWED: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

fn common_headers(hostport: &str) -> String {
    format!(
        "Host: {hostport}\r\nX-API-Key: {KEY}\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2025-11-25\r\n"
    )
}

fn post(hostport: &str, path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\n{}{extra}Content-Length: {}\r\n\r\n",
        common_headers(hostport),
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn chunked(method: &str, hostport: &str, te: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} /mcp HTTP/1.1\r\n{}Transfer-Encoding: {te}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        common_headers(hostport),
        body.len()
    )
    .into_bytes()
}

/// Sends raw bytes, reads until the gateway closes or 1.5 s of silence; returns the
/// status lines seen.
fn send_raw(hostport: &str, data: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s.write_all(data).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out)
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_owned)
        .collect()
}

fn reached_denied(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| {
            String::from_utf8_lossy(&s.body).contains("denied_tool")
                || s.head.contains("denied_tool")
        })
        .map(|s| format!("{}{}", s.head, String::from_utf8_lossy(&s.body)))
        .collect()
}

/// Every framing and shape of a denied call that another HTTP or JSON reader might take
/// differently. None of them may reach the upstream.
fn framing_attacks(hp: &str) -> Vec<(String, Vec<u8>)> {
    let d = DENIED;
    let h = common_headers(hp);
    let mut v: Vec<(String, Vec<u8>)> = vec![
        (
            "GET then the call's bytes on the same connection".into(),
            [format!("GET /mcp HTTP/1.1\r\n{h}\r\n").into_bytes(), d.as_bytes().to_vec()]
                .concat(),
        ),
        (
            "POST Content-Length: 0, then the call".into(),
            [
                format!("POST /mcp HTTP/1.1\r\n{h}Content-Length: 0\r\n\r\n").into_bytes(),
                d.as_bytes().to_vec(),
            ]
            .concat(),
        ),
        (
            "TE chunked and Content-Length".into(),
            format!(
                "POST /mcp HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{d}\r\n0\r\n\r\n",
                d.len()
            )
            .into_bytes(),
        ),
        ("TE Chunked".into(), chunked("POST", hp, "Chunked", d)),
        ("TE gzip, chunked".into(), chunked("POST", hp, "gzip, chunked", d)),
        ("TE chunked, identity".into(), chunked("POST", hp, "chunked, identity", d)),
        ("DELETE chunked".into(), chunked("DELETE", hp, "chunked", d)),
        ("GET chunked".into(), chunked("GET", hp, "chunked", d)),
        (
            "Expect: 100-continue".into(),
            post(hp, "/mcp", d.as_bytes(), "Expect: 100-continue\r\n"),
        ),
        (
            "HEAD with body".into(),
            [
                format!("HEAD /mcp HTTP/1.1\r\n{h}Content-Length: {}\r\n\r\n", d.len()).into_bytes(),
                d.as_bytes().to_vec(),
            ]
            .concat(),
        ),
    ];
    // Paths.
    for p in [
        "/mcp/",
        "/MCP",
        "//mcp",
        "/mcp;x",
        "/%6dcp",
        "/mcp%2f",
        "/mcp?x=1",
        "/./mcp",
        "/x/../mcp",
    ] {
        v.push((format!("path {p}"), post(hp, p, d.as_bytes(), "")));
    }
    v.push((
        "absolute-form URI".into(),
        post(hp, &format!("http://{hp}/mcp"), d.as_bytes(), ""),
    ));
    // Content types.
    for ct in [
        "application/json;charset=utf-16",
        "application/json-seq",
        "text/json",
    ] {
        let req = post(hp, "/mcp", d.as_bytes(), "");
        let s = String::from_utf8(req).unwrap().replace(
            "Content-Type: application/json",
            &format!("Content-Type: {ct}"),
        );
        v.push((format!("Content-Type {ct}"), s.into_bytes()));
    }
    // JSON other readers may read differently.
    let bodies: Vec<(&str, String)> = vec![
        ("escaped duplicate", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","n\u0061me":"denied_tool"}}"#.into()),
        ("NAME variant", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"denied_tool"}}"#.into()),
        ("NAMe variant", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"NAMe\":\"denied_tool\"}}".into()),
        ("long-s variant argumentſ", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{},\"argumentſ\":{\"x\":\"denied_tool\"}}}".into()),
        ("batch element", format!("[{{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"tools/list\"}},{d}]")),
        ("nested batch", format!("[[{d}]]")),
        ("notification", r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"denied_tool"}}"#.into()),
        ("BOM", format!("\u{feff}{d}")),
        ("trailing comma", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool"},}"#.into()),
        ("comment", r#"{"jsonrpc":"2.0","id":1,/**/"method":"tools/call","params":{"name":"denied_tool"}}"#.into()),
        ("NaN id", r#"{"jsonrpc":"2.0","id":NaN,"method":"tools/call","params":{"name":"denied_tool"}}"#.into()),
        ("huge id", r#"{"jsonrpc":"2.0","id":1e400,"method":"tools/call","params":{"name":"denied_tool"}}"#.into()),
        ("two documents", format!("{d}{d}")),
        ("lone surrogate", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool","x":"\ud800"}}"#.into()),
        ("result and method", r#"{"jsonrpc":"2.0","id":1,"result":{},"method":"tools/call","params":{"name":"denied_tool"}}"#.into()),
    ];
    for (n, b) in bodies {
        v.push((format!("json {n}"), post(hp, "/mcp", b.as_bytes(), "")));
    }
    // MCP headers against the body.
    for hv in [
        "Mcp-Name: echo\r\n",
        "Mcp-Name: =?BASE64?ZGVuaWVkX3Rvb2w=?=\r\n",
        "Mcp-Name: denied_tool, echo\r\n",
        "Mcp-Method: tools/call, tools/list\r\n",
        "Mcp-Name: denied_tool\r\nMcp-Name: echo\r\n",
        "Mcp_Name: echo\r\n",
    ] {
        v.push((
            format!("header {}", hv.trim()),
            post(hp, "/mcp", d.as_bytes(), hv),
        ));
    }
    v
}

fn framing(sanitize: bool) {
    let dir = tempdir();
    let (_gw, hp, log) = gateway(dir.path(), sanitize);
    // Control: an allowed call reaches the upstream; the denied one is 403.
    let st = send_raw(&hp, &post(&hp, "/mcp", ALLOWED.as_bytes(), ""));
    assert!(st[0].contains(" 200 "), "{st:?}");
    assert_eq!(log.lock().unwrap().len(), 1);
    let st = send_raw(&hp, &post(&hp, "/mcp", DENIED.as_bytes(), ""));
    assert!(st[0].contains(" 403 "), "{st:?}");
    let mut through = Vec::new();
    for (name, data) in framing_attacks(&hp) {
        let before = reached_denied(&log).len();
        let st = send_raw(&hp, &data);
        if reached_denied(&log).len() > before {
            through.push(format!("{name}: {st:?}"));
        }
    }
    assert!(
        through.is_empty(),
        "sanitize {sanitize}: denied call reached the upstream: {through:#?}\n{:#?}",
        reached_denied(&log)
    );
}

#[test]
fn framing_and_json_variants_never_carry_a_denied_call_sanitize_on() {
    framing(true);
}

#[test]
fn framing_and_json_variants_never_carry_a_denied_call_sanitize_off() {
    framing(false);
}

/// Re-test (a): client header names with `_` never reach the upstream, whatever they
/// spell (session id, principal, forwarding).
fn underscores(sanitize: bool) {
    let dir = tempdir();
    let (_gw, hp, log) = gateway(dir.path(), sanitize);
    let extra = "Mcp_Session_Id: abc\r\nX_MCP_Principal: apikey:admin\r\nx_mcp_principal: apikey:root\r\n\
                 X_Forwarded_For: 10.0.0.1\r\nX_Forwarded_User: admin\r\nMCP_PROTOCOL_VERSION: 2026-07-28\r\n\
                 Mcp_Method: tools/list\r\nMcp_Name: other\r\n";
    let st = send_raw(&hp, &post(&hp, "/mcp", ALLOWED.as_bytes(), extra));
    assert!(st[0].contains(" 200 "), "{st:?}");
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let head = &seen[0].head;
    for line in head.lines().skip(1) {
        let name = line.split(':').next().unwrap();
        assert!(
            !name.contains('_'),
            "sanitize {sanitize}: {name} forwarded:\n{head}"
        );
    }
    // The gateway's own principal header says alice, once.
    let principals: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-mcp-principal:"))
        .collect();
    assert_eq!(principals.len(), 1, "{head}");
    assert!(principals[0].contains("apikey:alice"), "{head}");
}

#[test]
fn underscore_header_names_never_reach_the_upstream_sanitize_on() {
    underscores(true);
}

#[test]
fn underscore_header_names_never_reach_the_upstream_sanitize_off() {
    underscores(false);
}

// ---- HTTP/2 by hand: a client that never reads but keeps the connection "busy". ----

fn frame(t: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(t);
    v.push(flags);
    v.extend_from_slice(&sid.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// HPACK literal header field without indexing, new name, no Huffman.
fn lit(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut v = vec![0, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.push(value.len() as u8);
    v.extend_from_slice(value.as_bytes());
    v
}

/// Opens an HTTP/2 connection, asks for the (8 MiB) SSE stream, then never reads and
/// keeps sending `keepalive` frames every 200 ms. Returns how long the gateway kept the
/// connection: the time until a write to it failed, or until it was found closed
/// afterwards.
fn h2_stall(hp: &str, keepalive: &dyn Fn() -> Vec<u8>) -> Duration {
    let mut s = TcpStream::connect(hp).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let hb = [
        lit(":method", "GET"),
        lit(":scheme", "http"),
        lit(":path", "/mcp"),
        lit(":authority", hp),
        lit("accept", "text/event-stream"),
        lit("x-api-key", KEY),
        lit("mcp-protocol-version", "2025-11-25"),
    ]
    .concat();
    out.extend(frame(1, 0x5, 1, &hb));
    s.write_all(&out).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if s.write_all(&keepalive()).is_err() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Still accepted after 10 s: see whether the server closed (EOF or reset after the
    // buffered bytes), or is still sending the stream.
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Duration::from_secs(10),
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                return Duration::from_secs(10);
            }
            Ok(n) => total += n,
            Err(_) => break,
        }
    }
    panic!("connection still open after 10 s (write timeout 2 s, idle 3 s), {total} bytes drained");
}

fn h2_never_reading(sanitize: bool) {
    let dir = tempdir();
    let (_gw, hp, _log) = gateway(dir.path(), sanitize);
    let ping = || frame(6, 0, 0, b"12345678");
    let window = || {
        [
            frame(8, 0, 0, &1u32.to_be_bytes()),
            frame(8, 0, 1, &1u32.to_be_bytes()),
        ]
        .concat()
    };
    for (what, f) in [
        ("PING", &ping as &dyn Fn() -> Vec<u8>),
        ("WINDOW_UPDATE", &window),
    ] {
        let held = h2_stall(&hp, f);
        assert!(
            held <= Duration::from_secs(10),
            "{what}: held {held:?} (sanitize {sanitize})"
        );
    }
}

#[test]
fn h2_client_that_pings_but_never_reads_is_closed_sanitize_on() {
    h2_never_reading(true);
}

#[test]
fn h2_client_that_pings_but_never_reads_is_closed_sanitize_off() {
    h2_never_reading(false);
}

/// FINDING (atk3-1): with `sanitization.enabled: false`, a `tools/call` whose
/// `params.name` is not a string, or whose `params` is positional, has no target for the
/// policy; a deny rule that names tools never matches a call without a target, so the
/// call is forwarded under any allow rule. Upstreams that read such a call as the denied
/// tool: a JavaScript server that looks the tool up with `tools[params.name]`
/// (`["denied_tool"]` coerces to `"denied_tool"`), a JSON-RPC framework that maps
/// positional params onto `(name, arguments)`, a C reader that stops at NUL. With
/// sanitization on, the sanitize layer refuses them (400, "params.name must be a
/// non-empty string" / "params must be an object" / control_chars).
/// Expected: a `tools/call` without a string `params.name` is refused whatever
/// `sanitization.enabled` says (the policy cannot judge it), as the transport checks are.
fn targetless(sanitize: bool) {
    let dir = tempdir();
    let (_gw, hp, log) = gateway(dir.path(), sanitize);
    let bodies = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["denied_tool"],"arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["denied_tool",{}]}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["denied_tool"]}}]"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool\u0000x"}}"#,
    ];
    let mut through = Vec::new();
    for b in bodies {
        let before = reached_denied(&log).len();
        let st = send_raw(&hp, &post(&hp, "/mcp", b.as_bytes(), ""));
        if reached_denied(&log).len() > before {
            through.push(format!("{b} -> {st:?}"));
        }
    }
    assert!(
        through.is_empty(),
        "sanitize {sanitize}: forwarded without a policy decision: {through:#?}"
    );
}

#[test]
fn tools_call_without_a_string_name_is_refused_sanitize_on() {
    targetless(true);
}

#[test]
fn tools_call_without_a_string_name_is_refused_sanitize_off() {
    targetless(false);
}
