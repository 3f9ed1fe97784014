//! The reference MCP server `@modelcontextprotocol/server-everything` (from the npm
//! registry, installed into `.tools` by `scripts/test.sh`) as a third-party upstream: its
//! streamable HTTP transport on a free loopback port.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Proc;

/// The repository's `.tools` directory (Node 22 and the npm packages of the tests).
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools")
}

/// The installed server's entry point, or a panic saying how to install it.
pub fn everything_entry() -> PathBuf {
    let entry =
        tools_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !entry.is_file() {
        panic!(
            "the reference MCP server is not installed ({} is missing): run scripts/test.sh, \
             which installs it, or `cd .tools && npm install --no-audit --no-fund \
             @modelcontextprotocol/server-everything` at the repository root",
            entry.display()
        );
    }
    entry
}

/// Node 22 from `.tools` (what `scripts/test.sh` installs), else `node` on the `PATH`.
fn node() -> PathBuf {
    let local = tools_dir().join("node_modules/node/bin/node");
    if local.is_file() {
        local
    } else {
        PathBuf::from("node")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts server-everything's streamable HTTP transport (`dist/index.js streamableHttp`,
/// port from `PORT`) on a free port, waits until it accepts connections, and returns the
/// process and its MCP endpoint, `http://127.0.0.1:port/mcp`. Panics with how to install
/// it when it is missing.
pub fn start_everything(dir: &Path) -> (Proc, String) {
    let entry = everything_entry();
    let mut last_err = String::new();
    // A port found free may be taken before the server binds it: a few attempts.
    for _ in 0..3 {
        let port = free_port();
        let stderr = dir.join(format!("everything-{port}.log"));
        let mut child = Command::new(node())
            .arg(&entry)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start node for server-everything: {e}"));
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
        let proc = Proc {
            child,
            lines: rx,
            stderr,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut proc = proc;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = proc.child.try_wait() {
                last_err = format!("exited with {status}: {}", proc.stderr_text());
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return (proc, format!("http://{addr}/mcp"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if last_err.is_empty() {
            last_err = format!("not listening after 30 s: {}", proc.stderr_text());
        }
    }
    panic!("server-everything did not start: {last_err}");
}
