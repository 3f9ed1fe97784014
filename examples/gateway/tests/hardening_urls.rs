//! URLs in tool arguments as real clients read them, end to end through the gateway
//! process: every variant is refused with the JSON-RPC invalid-params error and never
//! reaches the upstream; ordinary values pass unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

async fn status_and_body(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        s,
        if text.is_empty() {
            Value::Null
        } else {
            last(&text)
        },
    )
}

/// Values a WHATWG parser (Node's `fetch`, browsers, the `url` crate), urllib3
/// (`requests`) or `urlsplit` reads as a URL to a loopback, private, link-local or
/// metadata address, or with a scheme outside the allow-list.
const ATTACKS: &[&str] = &[
    // Quoted in the issue.
    "http:/127.0.0.1:8080/mcp",
    "http:\\\\169.254.169.254\\latest",
    "http:169.254.169.254/x",
    "https:/\\/169.254.169.254/",
    "http://example.com'@127.0.0.1/",
    "http://example.com @127.0.0.1/",
    "http://example.com\t@169.254.169.254/",
    "file:/var/lib/app/secrets.db",
    // More of each class.
    "HTTP:/127.0.0.1/",
    "hTtP:/\\127.0.0.1",
    " \u{1}http:/10.0.0.1/",
    "ht\ttp:/127.0.0.1/",
    "http:\n//127.0.0.1/",
    "http://a@b@127.0.0.1/",
    "http://evil.com\\@127.0.0.1/",
    "https://example.com\"@192.168.1.1/",
    "http://[::ffff:7f00:1]",
    "http://[fe80::1%25eth0]/",
    "http://0/",
    "http://0x7f.1/",
    "http://%31%32%37.0.0.1/",
    "http://①②⑦.0.0.1",
    "http://127。0。0。1/",
    "file:/etc/passwd",
    "FILE:\\\\server\\share",
    "gopher:127.0.0.1:6379/_FLUSHALL",
    "dict:127.0.0.1:11211/stat",
    "jar:https://example.com/a.jar!/x",
    "view-source:http://169.254.169.254/",
    "see http:/169.254.169.254/latest for the keys",
];

#[tokio::test]
async fn urls_as_clients_read_them_are_refused_before_the_upstream() {
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let extra = "sanitization:\n  enabled: true\n  control_chars: allow\n  allowed_protocols: [http, https]\n";
    let db = dir.path().join("a.db");
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, extra));
    let url = format!("{base}/mcp");
    let c = client();
    let fetch =
        |u: &str| call_tool(&c, &url, "fetch_url", json!({"url": u})).header("x-api-key", KEY);
    let mut passed = Vec::new();
    for attack in ATTACKS {
        let before = seen.lock().unwrap().len();
        let (s, v) = status_and_body(fetch(attack)).await;
        if s != 400 || v["error"]["code"] != -32602 || seen.lock().unwrap().len() != before {
            passed.push(format!("{attack:?}: {s} {v}"));
        }
    }
    assert!(passed.is_empty(), "passed:\n{}", passed.join("\n"));
    // The same attacks inside a nested argument and as a prompt argument.
    let (s, _) = status_and_body(
        call_tool(
            &c,
            &url,
            "fetch_url",
            json!({"opts": {"list": ["ok", "http:/127.0.0.1:8080/mcp"]}}),
        )
        .header("x-api-key", KEY),
    )
    .await;
    assert_eq!(s, 400);
    // Ordinary values pass unchanged.
    for ok in [
        "https://example.com/page",
        "see https://example.com for details",
        "note: the protocols http: and https: differ",
        "time 12:30, ratio 3:1, std::vec::Vec",
        "mailto:bob@example.org",
        "https://example.com/a?next=https://example.org/b",
    ] {
        let before = seen.lock().unwrap().len();
        let (s, v) = status_and_body(fetch(ok)).await;
        assert_eq!(s, 200, "{ok:?}: {v}");
        assert_eq!(seen.lock().unwrap().len(), before + 1, "{ok:?}");
    }
}

/// `sanitization.ssrf.resolve` (off by default): a name that resolves to a loopback
/// address (this machine's host name, mapped to 127.0.0.1 or 127.0.1.1 in /etc/hosts)
/// passes by default and is refused with resolution on; a bad value is refused by
/// `check`, naming the file, line and key.
#[tokio::test]
async fn opt_in_resolution_refuses_names_of_internal_addresses() {
    use std::net::ToSocketAddrs;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let loopback = (host.as_str(), 0u16)
        .to_socket_addrs()
        .unwrap()
        .any(|a| a.ip().is_loopback());
    assert!(
        loopback,
        "this test needs the host name {host:?} to resolve to a loopback address"
    );
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let db = dir.path().join("a.db");
    let target = format!("http://{host}:8080/admin");
    let c = client();
    for (resolve, want) in [
        ("", 200),
        ("    resolve: {enabled: true, timeout_ms: 20000}\n", 400),
    ] {
        let extra =
            format!("sanitization:\n  enabled: true\n  ssrf:\n    enabled: true\n{resolve}");
        let (mut gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, &extra));
        let url = format!("{base}/mcp");
        let before = seen.lock().unwrap().len();
        let (s, v) = status_and_body(
            call_tool(&c, &url, "fetch_url", json!({"url": target})).header("x-api-key", KEY),
        )
        .await;
        assert_eq!(s, want, "{resolve:?}: {v}");
        assert_eq!(
            seen.lock().unwrap().len(),
            before + usize::from(want == 200)
        );
        gw.terminate();
        gw.wait_exit(30);
    }
    let bad = base_config(
        "http://127.0.0.1:9/mcp",
        &db,
        "sanitization:\n  ssrf:\n    resolve:\n      enabled: true\n      timeout_ms: 0\n",
    );
    assert_check_refuses(
        dir.path(),
        &bad,
        "timeout_ms: 0",
        "sanitization.ssrf.resolve.timeout_ms",
    );
}
