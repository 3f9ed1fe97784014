//! Differential tests of the URL rule against real clients' parsers: Node's WHATWG `URL`
//! (as `fetch` and browsers read a URL) and Python's `urllib3.util.parse_url` (as
//! `requests` does) and `urllib.parse.urlsplit` (as `urllib.request` does). Generated
//! URL-ish strings go to one long-lived Node process and one Python process (JSON lines);
//! the host each client would connect to is resolved numerically by the client's own
//! platform (`getaddrinfo` with `AI_NUMERICHOST` in Python), and every string for which a
//! client reaches a loopback, private, link-local, metadata or other forbidden host while
//! the rule allows it is a failure.
//!
//! Node: `$MCP_TEST_NODE`, else `.tools/node_modules/node/bin/node` (installed by
//! scripts/test.sh), else `node` on the PATH. Python: `$MCP_TEST_PYTHON`, else
//! `.venv/bin/python` (scripts/test.sh installs urllib3 there). The tests fail, never
//! skip, when either is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{LazyLock, Mutex};

use mcp_sanitize::ssrf::{
    DEFAULT_MAX_URL_LENGTH, SsrfConfig, UrlPolicy, classify_host_name, classify_ip,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const NODE_SCRIPT: &str = r#"
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const s = JSON.parse(line);
  let out;
  try {
    const u = new URL(s);
    out = { ok: true, protocol: u.protocol, hostname: u.hostname };
  } catch (e) {
    out = { ok: false };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
});
"#;

const PYTHON_SCRIPT: &str = r#"
import json, socket, sys, urllib.parse
import urllib3.util

def numeric(host):
    if host is None:
        return None
    h = host
    if h.startswith('[') and h.endswith(']'):
        h = h[1:-1]
    try:
        infos = socket.getaddrinfo(h, None, flags=socket.AI_NUMERICHOST)
        return [i[4][0] for i in infos][:1]
    except Exception:
        return None

for line in sys.stdin:
    s = json.loads(line)
    out = {}
    try:
        u = urllib3.util.parse_url(s)
        out['urllib3'] = {'scheme': u.scheme, 'host': u.host, 'addr': numeric(u.host)}
    except Exception:
        out['urllib3'] = None
    try:
        u = urllib.parse.urlsplit(s)
        h = u.hostname
        out['urlsplit'] = {'scheme': u.scheme, 'host': h, 'addr': numeric(h)}
    except Exception:
        out['urlsplit'] = None
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One long-lived helper process answering one JSON line per JSON line.
struct Oracle {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    fn start(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            _child: child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, s: &str) -> Value {
        writeln!(self.stdin, "{}", json!(s)).unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("helper answered {line:?}: {e}"))
    }
}

fn node_path() -> String {
    if let Ok(p) = std::env::var("MCP_TEST_NODE") {
        return p;
    }
    let local = root().join(".tools/node_modules/node/bin/node");
    if local.exists() {
        return local.to_string_lossy().into_owned();
    }
    let on_path = Command::new("node").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return "node".into();
    }
    panic!(
        "no Node.js found: set MCP_TEST_NODE, or run scripts/test.sh (installs Node 22 under .tools), or install node"
    );
}

fn python_path() -> String {
    let p = std::env::var("MCP_TEST_PYTHON").unwrap_or_else(|_| {
        root()
            .join(".venv/bin/python")
            .to_string_lossy()
            .into_owned()
    });
    let ok = Command::new(&p)
        .args(["-c", "import urllib3"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{p} cannot import urllib3: run scripts/test.sh (installs tests/python/requirements.txt into .venv) or set MCP_TEST_PYTHON"
    );
    p
}

struct Oracles {
    node: Oracle,
    python: Oracle,
}

static ORACLES: LazyLock<Mutex<Oracles>> = LazyLock::new(|| {
    Mutex::new(Oracles {
        node: Oracle::start(&node_path(), &["-e", NODE_SCRIPT]),
        python: Oracle::start(&python_path(), &["-u", "-c", PYTHON_SCRIPT]),
    })
});

/// Whether a host as a client connects to it is forbidden (with the default rules).
fn forbidden_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<Ipv4Addr>() {
        return classify_ip(IpAddr::V4(ip)).is_some();
    }
    // An IPv6 address, with or without a zone.
    if let Ok(ip) = h.split('%').next().unwrap_or_default().parse::<Ipv6Addr>() {
        return classify_ip(IpAddr::V6(ip)).is_some();
    }
    // A name: loopback and metadata names (other names need DNS, out of scope here).
    !h.is_empty() && classify_host_name(&h.to_ascii_lowercase()).is_some()
}

/// What each client reaches: `(client, host)` for every reading with a forbidden host.
fn forbidden_readings(s: &str) -> Vec<String> {
    let mut o = ORACLES.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    let n = o.node.ask(s);
    if n["ok"] == true
        && let Some(h) = n["hostname"].as_str()
        && forbidden_host(h)
    {
        out.push(format!("node URL: {} {h}", n["protocol"]));
    }
    let p = o.python.ask(s);
    for client in ["urllib3", "urlsplit"] {
        let r = &p[client];
        // Without a scheme, urllib3 reads the whole string as an authority (and its pool
        // manager defaults to http): a bare host is no URL for the rule (documented).
        if r.is_null() || r["scheme"].as_str().is_none_or(str::is_empty) {
            continue;
        }
        let addr = r["addr"].get(0).and_then(Value::as_str);
        let host = r["host"].as_str();
        let hit = match (addr, host) {
            (Some(a), _) => forbidden_host(a),
            (None, Some(h)) => forbidden_host(h),
            _ => false,
        };
        if hit {
            out.push(format!("{client}: {r}"));
        }
    }
    out
}

fn policy() -> UrlPolicy {
    UrlPolicy::new(
        &["http".into(), "https".into()],
        DEFAULT_MAX_URL_LENGTH,
        &SsrfConfig::default(),
    )
    .unwrap()
}

/// The rule refuses `s` whenever a client reaches a forbidden host with it.
fn agree(p: &UrlPolicy, s: &str) -> Result<(), String> {
    let reached = forbidden_readings(s);
    if !reached.is_empty() && p.check_value(s).is_ok() {
        return Err(format!("allowed {s:?}, but {}", reached.join("; ")));
    }
    Ok(())
}

/// The bypasses of the issue and more variants: each is read by at least one client as
/// a forbidden host (so this test would fail if the rule allowed it), and refused.
#[test]
fn known_bypasses_reach_a_forbidden_host_and_are_refused() {
    let p = policy();
    for s in [
        "http:/127.0.0.1:8080/mcp",
        "http:\\\\169.254.169.254\\latest",
        "http:169.254.169.254/x",
        "https:/\\/169.254.169.254/",
        "http://example.com'@127.0.0.1/",
        "http://example.com @127.0.0.1/",
        "http://example.com\t@169.254.169.254/",
        "HTTP:/127.0.0.1/",
        "hTtP:/\\127.0.0.1",
        " \u{1}http:/10.0.0.1/",
        "ht\ttp:/127.0.0.1/",
        "http://a@b@127.0.0.1/",
        "http://evil.com\\@127.0.0.1/",
        "http://[::ffff:7f00:1]",
        "http://[fe80::1%25eth0]/",
        "http://0/",
        "http://0x7f.1/",
        "http://①②⑦.0.0.1",
        "http://127。0。0。1/",
        "http://%31%32%37.0.0.1/",
    ] {
        assert!(
            !forbidden_readings(s).is_empty(),
            "no client reads {s:?} as a forbidden host: the oracle is wrong"
        );
        assert!(p.check_value(s).is_err(), "{s:?} allowed");
    }
    // And an ordinary URL reaches no forbidden host in any client.
    assert!(forbidden_readings("https://example.com/x").is_empty());
}

fn urlish() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec!["", " ", "\u{1}", "\t", "see ", "x", "\"", "'", "a:"]);
    let scheme = prop::sample::select(vec![
        "http", "HTTP", "hTtP", "https", "HTTPS", "ws", "wss", "ftp", "file", "gopher", "x",
        "ht\ttp", "h\nttps", "xhttp",
    ]);
    let sep = prop::sample::select(vec![
        ":", ":/", "://", ":\\\\", ":/\\", ":\\/", ":\t//", ":\n/", ":///", "://\t", ":\\",
    ]);
    let userinfo = prop::sample::select(vec![
        "",
        "user@",
        "u:p@",
        "example.com@",
        "example.com'@",
        "example.com @",
        "example.com\t@",
        "example.com\"@",
        "example.com`@",
        "a@b@",
        "evil.com\\@",
        "evil.com/@",
        "x:y@z@",
        "example.com#@",
        "example.com?@",
        "example.com:80@",
    ]);
    let host = prop::sample::select(vec![
        "127.0.0.1",
        "127.1",
        "0x7f.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "0",
        "0.0.0.0",
        "localhost",
        "LOCALHOST.",
        "foo.localhost",
        "[::1]",
        "[::ffff:7f00:1]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:a9fe:a9fe]",
        "[fe80::1%25eth0]",
        "[fe80::1%eth0]",
        "[fe80::1]",
        "[::]",
        "169.254.169.254",
        "0xa9fea9fe",
        "10.0.0.1",
        "192.168.0.1",
        "172.16.0.1",
        "100.64.0.1",
        "%31%32%37.0.0.1",
        "①②⑦.0.0.1",
        "127。0。0。1",
        "１２７.０.０.１",
        "metadata.google.internal",
        "example.com",
        "8.8.8.8",
        "[2606:4700::1111]",
        "example.com.",
        "",
        "127.0.0.1 foo",
        "127.0.0.1\t",
    ]);
    let port = prop::sample::select(vec!["", ":80", ":8080", ":", ":x"]);
    let tail = prop::sample::select(vec![
        "",
        "/",
        "/x",
        "\\x",
        "?q",
        "#f",
        " more words",
        "'",
        "\tx",
        "/a b",
        "@127.0.0.1",
        " @10.0.0.1/",
    ]);
    let mutation = prop::option::of((
        any::<prop::sample::Index>(),
        prop::sample::select(vec![
            ' ', '\t', '\n', '@', '/', '\\', ':', '.', '%', '[', ']', '#', '?', '\'', '"', '\0',
            'a', '0', '\u{3002}', '\u{ff0e}',
        ]),
    ));
    (prefix, scheme, sep, userinfo, host, port, tail, mutation).prop_map(
        |(pre, sc, sep, ui, h, port, tail, m)| {
            let mut s = format!("{pre}{sc}{sep}{ui}{h}{port}{tail}");
            if let Some((at, c)) = m {
                let bounds: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
                s.insert(bounds[at.index(bounds.len())], c);
            }
            s
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    /// No generated string lets a client reach a forbidden host while the rule allows it.
    #[test]
    fn no_client_reaches_a_forbidden_host_that_the_rule_allows(s in urlish()) {
        let p = policy();
        if let Err(e) = agree(&p, &s) {
            return Err(TestCaseError::fail(e));
        }
    }
}

const NODE_JOIN_SCRIPT: &str = r#"
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const s = JSON.parse(line);
  let out;
  try {
    const u = new URL(s, 'https://api.example.com/v1/');
    out = { ok: true, protocol: u.protocol, hostname: u.hostname };
  } catch (e) {
    out = { ok: false };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
});
"#;

const PYTHON_JOIN_SCRIPT: &str = r#"
import json, socket, sys, urllib.parse
import urllib3.util

def numeric(host):
    if host is None:
        return None
    h = host
    if h.startswith('[') and h.endswith(']'):
        h = h[1:-1]
    try:
        infos = socket.getaddrinfo(h, None, flags=socket.AI_NUMERICHOST)
        return [i[4][0] for i in infos][:1]
    except Exception:
        return None

for line in sys.stdin:
    s = json.loads(line)
    out = {}
    try:
        u = urllib.parse.urlsplit(urllib.parse.urljoin('https://api.example.com/v1/', s))
        out['urljoin'] = {'host': u.hostname, 'addr': numeric(u.hostname)}
    except Exception:
        out['urljoin'] = None
    try:
        # urllib3's pool manager connects to `//host/x` given alone.
        u = urllib3.util.parse_url(s) if s.startswith('//') else None
        out['urllib3'] = None if u is None else {'host': u.host, 'addr': numeric(u.host)}
    except Exception:
        out['urllib3'] = None
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()
"#;

static JOIN_ORACLES: LazyLock<Mutex<Oracles>> = LazyLock::new(|| {
    Mutex::new(Oracles {
        node: Oracle::start(&node_path(), &["-e", NODE_JOIN_SCRIPT]),
        python: Oracle::start(&python_path(), &["-u", "-c", PYTHON_JOIN_SCRIPT]),
    })
});

/// The forbidden hosts clients reach with `s` joined to a base URL, as a tool joining a
/// user-supplied path does (Node's `new URL(s,
/// base)`, Python's `urljoin`) or, for `//host`, given to urllib3 alone.
fn forbidden_joined(s: &str) -> Vec<String> {
    let mut o = JOIN_ORACLES.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    let n = o.node.ask(s);
    if n["ok"] == true
        && let Some(h) = n["hostname"].as_str()
        && h != "api.example.com"
        && forbidden_host(h)
    {
        out.push(format!("node new URL(s, base): {h}"));
    }
    let p = o.python.ask(s);
    for client in ["urljoin", "urllib3"] {
        let r = &p[client];
        let hit = match (r["addr"].get(0).and_then(Value::as_str), r["host"].as_str()) {
            (Some(a), _) => forbidden_host(a),
            (None, Some(h)) => forbidden_host(h),
            _ => false,
        };
        if hit {
            out.push(format!("{client}: {r}"));
        }
    }
    out
}

/// The network-path references of the review: each reaches a forbidden host once joined
/// to a base URL, and each is refused.
#[test]
fn network_path_references_reach_a_forbidden_host_and_are_refused() {
    let p = policy();
    for s in [
        "//169.254.169.254/latest/meta-data/",
        "/\\169.254.169.254/latest/",
        "\\\\169.254.169.254/latest/",
        "\\/169.254.169.254/",
        "///169.254.169.254/",
        "/\t/169.254.169.254/",
        "//[::1]/",
        "//0x7f000001/",
        "//metadata.google.internal/computeMetadata/v1/",
        "//localhost:9101/",
    ] {
        assert!(
            !forbidden_joined(s).is_empty(),
            "no client reads {s:?} as a forbidden host: the oracle is wrong"
        );
        assert!(p.check_value(s).is_err(), "{s:?} allowed");
    }
    assert!(forbidden_joined("//example.com/x").is_empty());
    assert!(p.check_value("//example.com/x").is_ok());
}

fn network_pathish() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec!["", " ", "\t", "\u{1}"]);
    let slashes = prop::sample::select(vec![
        "//", "/\\", "\\\\", "\\/", "///", "/\t/", "\\\t\\", "////", "\\\\\\", "/\n/",
    ]);
    let userinfo = prop::sample::select(vec![
        "",
        "user@",
        "u:p@",
        "example.com@",
        "a@b@",
        "evil.com\\@",
        "example.com#@",
    ]);
    let host = prop::sample::select(vec![
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "localhost",
        "foo.localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.1",
        "%31%32%37.0.0.1",
        "127。0。0。1",
        "metadata.google.internal",
        "example.com",
        "8.8.8.8",
    ]);
    let port = prop::sample::select(vec!["", ":80", ":9101"]);
    let tail = prop::sample::select(vec!["", "/", "/x", "\\x", "?q", "#f", "/a b"]);
    (prefix, slashes, userinfo, host, port, tail)
        .prop_map(|(pre, sl, ui, h, port, tail)| format!("{pre}{sl}{ui}{h}{port}{tail}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    /// No generated network-path reference lets a client that joins it to a base URL (or
    /// urllib3 given it alone) reach a forbidden host while the rule allows it.
    #[test]
    fn no_joined_reference_reaches_a_forbidden_host_that_the_rule_allows(s in network_pathish()) {
        let p = policy();
        let reached = forbidden_joined(&s);
        if !reached.is_empty() && p.check_value(&s).is_ok() {
            return Err(TestCaseError::fail(format!("allowed {s:?}, but {}", reached.join("; "))));
        }
    }
}
