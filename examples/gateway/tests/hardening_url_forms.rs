//! URL forms real clients connect to that are not `scheme://host`, end to end through the
//! gateway process: network-path references (`//host/`, `/\host/`, `\\host/`), curl
//! globs (`http://{a,host}/`, `[1-9]` ranges), URLs in the decoded views (percent, HTML
//! references, fullwidth, `\u` escapes of JSON in a string), leading-zero IPv4 octets
//! read as decimal, and slash-less schemes outside the allow-list. Every variant is
//! refused with the JSON-RPC invalid-params error, its id echoed, and never reaches the
//! upstream; ordinary values close to them pass unchanged.
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

/// Network-path references: Node's `new URL(p, base)`, Python's `urljoin` and urllib3
/// (given `//host/x` alone) connect to the host.
const NETWORK_PATHS: &[&str] = &[
    "//169.254.169.254/latest/meta-data/",
    // After a Unicode space, a form-encoded space or punctuation.
    "\u{a0}//169.254.169.254/latest/",
    "\u{2028}//169.254.169.254/latest/",
    "\u{3000}//169.254.169.254/latest/",
    "https://example.com/?to=+//169.254.169.254/",
    "https://example.com/?to=%E2%80%A8%2F%2F169.254.169.254%2F",
    "{//169.254.169.254/}",
    // Platform-internal names and Azure's WireServer.
    "http://168.63.129.16/machine?comp=goalstate",
    "https://kubernetes.default.svc/api/v1/secrets",
    "http://host.docker.internal:2375/containers/json",
    "/\\169.254.169.254/latest/",
    "/\\169.254.169.254/latest/meta-data/",
    "\\\\169.254.169.254/latest/",
    "\\/169.254.169.254/",
    "\\/169.254.169.254/latest/",
    "///169.254.169.254/",
    "/\t/169.254.169.254/",
    "//[::1]/",
    "//0x7f000001/",
    "//metadata.google.internal/computeMetadata/v1/",
    "//localhost:9101/",
    "see //127.0.0.1/ here",
    "//127.0.0.1/",
    "\\\\127.0.0.1\\share",
    "//user:pw@10.0.0.1/",
    "//example.com@192.168.1.1/",
    "////127.0.0.1/",
    "//2130706433/",
    "//[::ffff:169.254.169.254]/",
    "<img src=\"//169.254.169.254/x\">",
];

/// curl's URL globbing (on unless `-g`): each expansion is a URL curl fetches.
const GLOBS: &[&str] = &[
    "http://{169.254.169.254}/latest/meta-data/",
    "http://{example.com,169.254.169.254}/latest/",
    "http://{127.0.0.1}:9101/",
    "http://127.0.0.{1,2}/",
    "http://{localhost,x}/",
    "http://{metadata.google.internal,x}/",
    "http://169.254.169.[250-254]/",
    "http://127.0.0.[1-2]/",
    "http://[127-127].0.0.1/",
    "http://127.0.0.[1-1]/",
    "http://{127.0.0.1,example.com}/",
    "https://{a,b}.example.com@{x,10.0.0.1}/",
];

/// URLs in the decoded views.
const ENCODED: &[&str] = &[
    "https://example.com/redirect?to=http%3A%2F%2F169.254.169.254%2Flatest%2F",
    "https://example.com/?u=http%3A%2F%2F169.254.169.254%2F",
    "https://example.com/?u=http:%2F%2F127.0.0.1",
    "https://example.com/?u=http%3A//127.0.0.1/",
    "https://example.com/?u=http%253A%252F%252F127.0.0.1",
    "https://example.com/?u=%2F%2F127.0.0.1%2F",
    "http%3A%2F%2F169.254.169.254%2F",
    "http%3a//127.0.0.1/",
    "http:%2F%2F127.0.0.1/",
    "http%253A%252F%252F127.0.0.1%252F",
    "http&#58;//127.0.0.1/",
    "http&colon;//127.0.0.1/",
    "http:&#47;&#47;127.0.0.1/",
    "http://127&#46;0.0.1/",
    "http&#x3a;&#x2f;&#x2f;169.254.169.254/",
    "\u{ff48}\u{ff54}\u{ff54}\u{ff50}://127.0.0.1/",
    "http\u{ff1a}//127.0.0.1/",
    "http:\u{ff0f}\u{ff0f}127.0.0.1/",
    "{\"url\":\"http:\\u002f\\u002f169.254.169.254\\u002flatest\"}",
    "http\\u003a\\u002f\\u002f127.0.0.1/",
    "file%3A%2F%2F%2Fetc%2Fpasswd",
];

/// Leading-zero octets: octal for WHATWG, glibc and curl; decimal for Go before 1.17 and
/// older Java.
const ZEROS: &[&str] = &[
    "http://010.0.0.1/",
    "http://0127.0.0.1/",
    "http://0172.016.0.1/",
    "http://010.1/",
    "http://192.0168.1.1/",
    "http://0192.0168.0.1/",
    "http://example.com@0127.0.0.1/",
];

/// Slash-less schemes outside `allowed_protocols: [http, https]`.
const SCHEMES: &[&str] = &[
    "data:text/plain,hi",
    "data:text/html,<b>x</b>",
    "unix:/var/run/docker.sock",
    "unix:/tmp/x",
    "ftps:127.0.0.1",
    "git:127.0.0.1",
    "svn:127.0.0.1",
    "news:127.0.0.1",
    "ms-msdt:/id",
    "ms-msdt:/id PCWDiagnostic /skip force",
    "ms-officecmd:x",
    "search-ms:query=x",
    "npipe:////./pipe/docker_engine",
    "hcp:x",
];

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, http::HeaderMap)>>>;

/// The values of `values` that were not refused as they should be (400, invalid params,
/// the id echoed, nothing forwarded).
async fn refused_all(c: &reqwest::Client, url: &str, seen: &Seen, values: &[&str]) -> Vec<String> {
    let mut passed = Vec::new();
    for v in values {
        let before = seen.lock().unwrap().len();
        let (s, b) = status_and_body(
            call_tool(c, url, "fetch_url", json!({"url": v})).header("x-api-key", KEY),
        )
        .await;
        if s != 400
            || b["error"]["code"] != -32602
            || b["id"] != 1
            || seen.lock().unwrap().len() != before
        {
            passed.push(format!("{v:?}: {s} {b}"));
        }
    }
    passed
}

#[tokio::test]
async fn url_forms_clients_connect_to_are_refused_before_the_upstream() {
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let extra = "sanitization:\n  enabled: true\n  control_chars: allow\n  allowed_protocols: [http, https]\n";
    let db = dir.path().join("a.db");
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, extra));
    let url = format!("{base}/mcp");
    let c = client();
    let mut passed = Vec::new();
    for class in [NETWORK_PATHS, GLOBS, ENCODED, ZEROS, SCHEMES] {
        passed.extend(refused_all(&c, &url, &seen, class).await);
    }
    assert!(passed.is_empty(), "passed:\n{}", passed.join("\n"));
    // In a nested argument, an object key and a prompt argument too.
    for args in [
        json!({"opts": {"list": ["ok", "//169.254.169.254/latest/"]}}),
        json!({"//127.0.0.1/": 1}),
        json!({"cfg": "{\"url\":\"http:\\u002f\\u002f169.254.169.254\\u002flatest\"}"}),
    ] {
        let before = seen.lock().unwrap().len();
        let (s, v) = status_and_body(
            call_tool(&c, &url, "fetch_url", args.clone()).header("x-api-key", KEY),
        )
        .await;
        assert_eq!(s, 400, "{args}: {v}");
        assert_eq!(seen.lock().unwrap().len(), before, "{args}");
    }
    // Ordinary values close to these forms pass unchanged. (A UNC path such as
    // `\\\\fileserver\\share` is not a URL to a forbidden host, but the path rule refuses
    // UNC paths: a Windows tool would open an SMB connection to that host.)
    for ok in [
        "//example.com/x",
        "// a comment in code: see below",
        "C:\\Users\\ann\\file.txt",
        "src//lib.rs",
        "https://example.com/?to=https%3A%2F%2Fexample.org%2F",
        "https://api.example.com/users/{id}",
        "https://example.com/search?q=[1-5]",
        "Tom &amp; Jerry: 100% fun",
        "\u{ff48}\u{ff54}\u{ff54}\u{ff50}://example.com/",
        "http://01.1.1.1/",
        "note: hello",
        "data: 5 rows",
        "mailto:ann@example.com",
        "tel:+15550100199",
        "urn:isbn:1",
        "about:blank",
    ] {
        let before = seen.lock().unwrap().len();
        let (s, v) = status_and_body(
            call_tool(&c, &url, "fetch_url", json!({"url": ok})).header("x-api-key", KEY),
        )
        .await;
        assert_eq!(s, 200, "{ok:?}: {v}");
        assert_eq!(seen.lock().unwrap().len(), before + 1, "{ok:?}");
    }
}
