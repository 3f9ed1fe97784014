//! Helpers for the end-to-end tests: the gateway and the demo upstream run as real
//! processes (the binary cargo built for these tests), started from config files the way
//! an operator would, on free loopback ports.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub mod everything;

pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-gateway");

/// A good API key (meets the policy).
pub const KEY: &str = "Abc123!@#Xyz789!@#Test";
/// Another good key with fewer scopes.
pub const KEY2: &str = "Zyx987!@#Cba321!@#Other";

/// A child process killed on drop, with its stdout lines.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through kill(1): no unsafe code).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit (up to `secs`), returning its status.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..secs * 20 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str], dir: &Path, envs: &[(&str, &str)]) -> Proc {
    let stderr = dir.join(format!("stderr-{}.log", uuid_like()));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .env_remove("MCP_AUTH_ENABLED")
        .env_remove("MCP_AUTH_MODE")
        .env_remove("MCP_AUTH_API_KEY");
    // ContextForge's variables act too: none from the environment of the test run.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MCPGATEWAY_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start mcp-gateway");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Proc {
        child,
        lines: rx,
        stderr,
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts the binary with these arguments in `dir`.
pub fn spawn_args(args: &[&str], dir: &Path) -> Proc {
    spawn(args, dir, &[])
}

/// Waits for a stdout line containing `marker`; returns the line.
pub fn wait_line(p: &mut Proc, marker: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match p.lines.recv_timeout(left) {
            Ok(line) if line.contains(marker) => return line,
            Ok(_) => continue,
            Err(_) => {
                let status = p.child.try_wait();
                panic!(
                    "no `{marker}` line from mcp-gateway (status {status:?}); stderr:\n{}",
                    p.stderr_text()
                );
            }
        }
    }
}

/// The demo upstream on a free port: (process, "http://127.0.0.1:port/mcp").
pub fn start_upstream(dir: &Path) -> (Proc, String) {
    let mut p = spawn(&["demo-upstream", "--addr", "127.0.0.1:0"], dir, &[]);
    let line = wait_line(&mut p, "listening on");
    let url = line.rsplit(' ').next().unwrap().to_owned();
    (p, url)
}

/// A test directory (kept for the test's lifetime).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Writes `yaml` to dir/gateway.yaml and starts the gateway; returns (process, base URL
/// such as "http://127.0.0.1:port").
pub fn start_gateway(dir: &Path, yaml: &str) -> (Proc, String) {
    start_gateway_env(dir, yaml, &[])
}

pub fn start_gateway_env(dir: &Path, yaml: &str, envs: &[(&str, &str)]) -> (Proc, String) {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut p = spawn(&["--config", path.to_str().unwrap()], dir, envs);
    let line = wait_line(&mut p, "mcp-gateway listening on");
    let base = line.rsplit(' ').next().unwrap().to_owned();
    (p, base)
}

/// The demo upstream and a gateway in front of it with [`base_config`] and its audit
/// trail in dir/a.db: (upstream process, gateway process, gateway base URL).
pub fn start_default(dir: &Path) -> (Proc, Proc, String) {
    let (up, upstream) = start_upstream(dir);
    let (gw, base) = start_gateway(dir, &base_config(&upstream, &dir.join("a.db"), ""));
    (up, gw, base)
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str], dir: &Path, envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("MCP_AUTH_ENABLED")
        .env_remove("MCP_AUTH_MODE")
        .env_remove("MCP_AUTH_API_KEY");
    // ContextForge's variables act too: none from the environment of the test run.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MCPGATEWAY_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `yaml` to `bad.yaml` in `dir` and asserts that `check` refuses it, naming the
/// file, the line whose trimmed text is `bad_line`, and `key`.
pub fn assert_check_refuses(dir: &Path, yaml: &str, bad_line: &str, key: &str) {
    let path = dir.join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let line = yaml
        .lines()
        .position(|l| l.trim() == bad_line)
        .expect("the bad line is in the configuration")
        + 1;
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()], dir, &[]);
    assert_ne!(code, 0, "check accepted {bad_line:?}");
    assert!(err.contains(&format!("bad.yaml:{line}: {key}")), "{err}");
}

/// `yaml` with `keys` (indented lines) added to its `server:` section.
pub fn with_server_keys(yaml: &str, keys: &str) -> String {
    yaml.replacen("server:\n", &format!("server:\n{keys}"), 1)
}

/// A config with the demo upstream, API keys (KEY with every scope, KEY2 with tools
/// only), generous limits; `extra` is appended (top-level sections).
pub fn base_config(upstream: &str, audit_db: &Path, extra: &str) -> String {
    format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: apikey
  apiKeys:
    - id: alice
      key: "{KEY}"
      scopes: ["mcp:tools", "audit:read", "metrics:read"]
    - id: bob
      key: "{KEY2}"
      scopes: ["mcp:tools"]
ratelimit:
  enabled: true
  requests_per_second: 1000
  burst: 1000
audit:
  enabled: true
  storage: database
  database:
    type: sqlite
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
{extra}"#,
        audit_db.display()
    )
}

/// `yaml` with every refused request recorded in a row of its own
/// (`audit.aggregateRefusals.enabled: false`), for tests that read the row of each
/// refusal; by default the refusals of a client already refused are counted.
pub fn per_request_audit(yaml: &str) -> String {
    let section = "audit:\n  enabled: true\n";
    assert!(yaml.contains(section), "no audit section to change");
    yaml.replacen(
        section,
        "audit:\n  enabled: true\n  aggregateRefusals: {enabled: false}\n",
        1,
    )
}

pub fn ring() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    ring();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `_meta` envelope of a 2026-07-28 request.
pub fn modern_meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
           "io.modelcontextprotocol/clientCapabilities": {}})
}

/// A 2026-07-28 request: body and the headers it needs.
pub fn modern(
    c: &reqwest::Client,
    url: &str,
    method: &str,
    name: Option<&str>,
    mut params: Value,
) -> reqwest::RequestBuilder {
    let mut meta = modern_meta();
    if let Some(extra) = params.get("_meta").and_then(Value::as_object) {
        for (k, v) in extra {
            meta[k] = v.clone();
        }
    }
    params["_meta"] = meta;
    if let Some(n) = name {
        let key = if method == "resources/read" {
            "uri"
        } else {
            "name"
        };
        params[key] = json!(n);
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut b = c
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .body(body.to_string());
    if let Some(n) = name {
        b = b.header("mcp-name", n);
    }
    b
}

/// A 2026-07-28 `tools/call`.
pub fn call_tool(
    c: &reqwest::Client,
    url: &str,
    tool: &str,
    args: Value,
) -> reqwest::RequestBuilder {
    modern(c, url, "tools/call", Some(tool), json!({"arguments": args}))
}

/// Parses a JSON or SSE response body into its JSON-RPC messages.
pub fn messages(body: &str) -> Vec<Value> {
    if body.trim_start().starts_with('{') {
        return vec![serde_json::from_str(body).unwrap()];
    }
    body.split("\n\n")
        .filter_map(|ev| {
            let data: String = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data).unwrap())
        })
        .collect()
}

/// The last JSON-RPC message of a response (the result or error).
pub fn last(body: &str) -> Value {
    messages(body).pop().unwrap()
}

/// Reads the audit rows (kind, user_id, tool, outcome, http_status, reason, event JSON).
pub fn audit_rows(db: &Path) -> Vec<AuditRow> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT kind, user_id, tool, mcp_method, outcome, http_status, reason, event \
             FROM audit_events ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(AuditRow {
            kind: r.get(0)?,
            user: r.get(1)?,
            tool: r.get(2)?,
            method: r.get(3)?,
            outcome: r.get(4)?,
            status: r.get(5)?,
            reason: r.get(6)?,
            event: serde_json::from_str(&r.get::<_, String>(7)?).unwrap(),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub kind: String,
    pub user: Option<String>,
    pub tool: Option<String>,
    pub method: Option<String>,
    pub outcome: Option<String>,
    pub status: Option<i64>,
    pub reason: Option<String>,
    pub event: Value,
}

/// The rows of served or refused requests (lifecycle events such as `startup` left out).
pub fn request_rows(db: &Path) -> Vec<AuditRow> {
    audit_rows(db)
        .into_iter()
        .filter(|r| r.kind == "request" || r.kind == "auth_failure")
        .collect()
}

/// The `Retry-After` of a response, in seconds.
pub fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The gateway's `/metrics` text.
pub async fn metrics_text(base: &str) -> String {
    metrics_text_with(&client(), base).await
}

/// The gateway's `/metrics` text, fetched with `c` (a TLS client, say) as alice, who
/// holds the `metrics:read` scope.
pub async fn metrics_text_with(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (its name and labels exactly as rendered) in `/metrics` text.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Whether a `mcp_gateway_requests_total` line carries every one of `labels`.
pub fn has_requests_line(metrics: &str, labels: &[&str]) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("mcp_gateway_requests_total{") && labels.iter().all(|x| l.contains(x))
    })
}

/// Lists the tools of the upstream behind `url` (an MCP endpoint) as alice: `/metrics`
/// labels a tool by its name once its upstream listed it.
pub async fn list_tools(c: &reqwest::Client, url: &str) {
    let r = modern(c, url, "tools/list", None, json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.text().await;
}

/// `GET /api/audit/query?{query}` as alice (who holds `audit:read`), parsed.
pub async fn audit_query(base: &str, query: &str) -> Value {
    client()
        .get(format!("{base}/api/audit/query?{query}"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls until `f` is true (the audit writer is asynchronous), up to 10 s.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A recording upstream on a free loopback port: answers every request to `/mcp` with a
/// JSON-RPC result and keeps the URI and the request headers it received, to see exactly
/// what the gateway forwards.
pub async fn recording_upstream() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, http::HeaderMap)>>>,
) {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>> = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::any(
            move |uri: http::Uri, headers: http::HeaderMap, body: bytes::Bytes| {
                let s = s2.clone();
                async move {
                    s.lock().unwrap().push((uri.to_string(), headers));
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let resp = json!({"jsonrpc": "2.0", "id": v.get("id").cloned().unwrap_or(Value::Null),
                        "result": {"content": [{"type": "text", "text": "recorded"}]}});
                    ([("content-type", "application/json")], resp.to_string())
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/mcp"), seen)
}

/// The headers, one `name: value` line each, for assertion messages.
pub fn dump_headers(h: &http::HeaderMap) -> String {
    h.iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}
