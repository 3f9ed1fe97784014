//! Test support for the suite: real servers started on free loopback ports.
//!
//! Tests that need a server start their own, in a temporary directory, and the server is
//! stopped when the handle is dropped. A missing binary is a test failure with a message
//! that says how to install it (the README's test command, `scripts/test.sh`, does), never
//! a silent skip.
//!
//! - [`RedisServer`]: `redis-server` (override the binary with `MCP_TEST_REDIS_SERVER`).
//! - [`PostgresServer`]: `initdb` + `postgres` from `/usr/lib/postgresql/*/bin` or `PATH`
//!   (override the directory with `MCP_TEST_PG_BIN`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released; the caller binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

/// The body of the first fenced code block in language `lang` (```` ```yaml ````) after
/// `marker` in `text`: for tests that hold a README's example to what the code does.
/// Panics, failing the test, when the marker or the block is missing.
///
/// ```
/// let readme = "Every key:\n\n```yaml\na: 1\n```\n";
/// assert_eq!(mcp_testkit::fenced_block(readme, "Every key:", "yaml"), "a: 1\n");
/// ```
pub fn fenced_block<'a>(text: &'a str, marker: &str, lang: &str) -> &'a str {
    let from = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} is no longer in the text"));
    let open = format!("```{lang}\n");
    let rest = &text[from..];
    let start = rest
        .find(&open)
        .unwrap_or_else(|| panic!("no ```{lang} block after {marker:?}"))
        + open.len();
    let body = &rest[start..];
    &body[..body.find("```").expect("an unterminated code block")]
}

/// How a server's start ended, when it did not time out.
enum Start {
    /// Its log has the line it writes once it serves on its port.
    Ready,
    /// It exited first (why, with its log).
    Exited(String),
}

impl Start {
    /// Whether the server exited because its port was taken: a process of a test running
    /// in parallel bound it between [`free_port`] and the server's own bind.
    fn port_taken(&self) -> bool {
        matches!(self, Start::Exited(log) if log.contains("Address already in use"))
    }

    fn expect_ready(self) {
        if let Start::Exited(why) = self {
            panic!("{why}");
        }
    }
}

/// Waits up to 30 s for `ready` in the log the server writes at `log` (a fresh file for
/// this start). A line the server writes only once it listens proves the port is its
/// own; a connection to the port would not, as another process may have taken it.
fn wait_ready(child: &mut Child, what: &str, log: &Path, ready: &str) -> Start {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(ready) {
            return Start::Ready;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Start::Exited(format!(
                "{what} exited with {status} before it was ready:\n{text}"
            ));
        }
        if Instant::now() > deadline {
            panic!("{what} was not ready within 30 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server on a fresh [`free_port`] with `spawn`, again on another port (up to
/// five in all) when the port was taken before the server bound it.
fn start_on_free_port(mut spawn: impl FnMut(u16) -> Start) {
    for _ in 0..4 {
        let start = spawn(free_port());
        if !start.port_taken() {
            return start.expect_ready();
        }
    }
    spawn(free_port()).expect_ready();
}

fn find_binary(env: &str, name: &str, install_hint: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "`{name}` was not found on PATH (nor set in {env}). This test needs a real {name}: \
         run the README test command (scripts/test.sh installs it), or install it with \
         `{install_hint}`."
    );
}

/// A `redis-server` on a free loopback port, without persistence, stopped on drop.
///
/// ```no_run
/// let redis = mcp_testkit::RedisServer::start();
/// let url = redis.url(); // redis://127.0.0.1:PORT/
/// # drop(url);
/// ```
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port. Panics with an installation hint when
    /// `redis-server` is missing.
    pub fn start() -> Self {
        let binary = find_binary(
            "MCP_TEST_REDIS_SERVER",
            "redis-server",
            "apt-get install -y redis-server",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Self {
            binary,
            port: 0,
            dir,
            child: None,
        };
        start_on_free_port(|p| {
            s.port = p;
            s.spawn()
        });
        s
    }

    fn spawn(&mut self) -> Start {
        let log = self.dir.path().join("redis.log");
        // redis-server appends to its log: a fresh one for this start's ready line.
        let _ = std::fs::remove_file(&log);
        let child = Command::new(&self.binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let child = self.child.as_mut().expect("just set");
        wait_ready(child, "redis-server", &log, "Ready to accept connections")
    }

    /// The connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: as abrupt as a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server without ending it (SIGSTOP): connections and connection attempts
    /// hang, as with a server that stopped answering or a network that drops packets.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {sig} failed");
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]); its data
    /// is gone, as after a crash without persistence.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect_ready();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server in a fresh cluster on a free loopback port, trust authentication
/// for the `postgres` user, stopped on drop.
///
/// ```no_run
/// let pg = mcp_testkit::PostgresServer::start();
/// let url = pg.url(); // postgres://postgres@127.0.0.1:PORT/postgres
/// # drop(url);
/// ```
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(p) = std::env::var("MCP_TEST_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").is_file() && p.join("postgres").is_file());
    versions.sort();
    if let Some(p) = versions.pop() {
        return p;
    }
    let initdb = find_binary("MCP_TEST_PG_BIN", "initdb", "apt-get install -y postgresql");
    initdb.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Whether the effective uid is 0 (read from /proc/self/status: Uid real effective ...).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

impl PostgresServer {
    /// Creates a cluster in a temporary directory and starts it on a free port. Panics
    /// with an installation hint when PostgreSQL is missing. PostgreSQL refuses to run as
    /// root, so as root the cluster is run as the `postgres` system user (created by the
    /// Debian package).
    pub fn start() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mcp-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let root = is_root();
        if root {
            // The postgres user must own the directory.
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the cluster directory to the postgres user");
        }
        let mut initdb = as_pg_user(root, &bin.join("initdb"));
        let out = initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}. Install PostgreSQL with `apt-get install -y \
                     postgresql` or run scripts/test.sh",
                    bin.join("initdb").display()
                )
            });
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = Self {
            bin,
            port: 0,
            dir,
            child: None,
        };
        start_on_free_port(|p| {
            s.port = p;
            s.spawn()
        });
        s
    }

    fn spawn(&mut self) -> Start {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let mut cmd = as_pg_user(is_root(), &self.bin.join("postgres"));
        let child = cmd
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let child = self.child.as_mut().expect("just set");
        wait_ready(child, "postgres", &log, "ready to accept connections")
    }

    /// The connection URL, `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A `tokio-postgres` / libpq key-value connection string.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server abruptly (SIGKILL, the postmaster and every process it started)
    /// and waits until they are all gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The postmaster's processes (backends, checkpointer, WAL writer, ...) outlive
            // it for a moment after a SIGKILL and still hold its shared memory and
            // possibly the listening socket: a restart in that moment fails ("pre-existing
            // shared memory block is still in use"). They are killed with it, and waited
            // for; a backend forked just before the kill is caught by the port check.
            let family = children_of(c.id());
            let _ = c.kill();
            let _ = c.wait();
            if !family.is_empty() {
                let _ = Command::new("kill").arg("-KILL").args(&family).status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline
                && (family.iter().any(|pid| running(pid))
                    || TcpStream::connect(("127.0.0.1", self.port)).is_ok())
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            // A killed postmaster leaves its pid file; postgres removes a stale one itself.
        }
    }

    /// Stops the server cleanly (SIGINT, PostgreSQL's fast shutdown), waiting up to 10 s
    /// before killing it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect_ready();
    }
}

/// The uid and gid of the `postgres` system user, from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL refuses to run as root and there is no `postgres` user: install \
                 the `postgresql` Debian package (scripts/test.sh does)"
            )
        })
}

/// The state and parent of a process, from `/proc/PID/stat`
/// ("PID (COMM) STATE PPID ...", where COMM may hold spaces and parentheses).
fn state_and_parent(stat: &str) -> Option<(&str, &str)> {
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    Some((rest.next()?, rest.next()?))
}

/// Whether process `pid` still runs: it exists and is not a zombie (a zombie has let go
/// of its memory and sockets; whether it is reaped depends on the machine's init).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
        .ok()
        .and_then(|stat| state_and_parent(&stat).map(|(state, _)| state != "Z" && state != "X"))
        .unwrap_or(false)
}

/// The ids of the processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent = pid.to_string();
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (_, ppid) = state_and_parent(&stat)?;
            (ppid == parent).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// A command for a PostgreSQL program, run as the `postgres` user when we are root (the
/// process is the program itself, so killing it kills the server).
fn as_pg_user(root: bool, program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    if root {
        let (uid, gid) = postgres_ids();
        c.uid(uid).gid(gid);
    }
    c
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn children_are_found_and_seen_to_stop_running() {
        assert_eq!(state_and_parent("42 (a (b) c) S 7 42 0"), Some(("S", "7")));
        assert_eq!(state_and_parent("42 (x"), None);
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let kids = loop {
            let kids = children_of(sh.id());
            if !kids.is_empty() || Instant::now() > deadline {
                break kids;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(kids.len(), 1, "{kids:?}");
        assert!(running(&kids[0]));
        assert!(running(&sh.id().to_string()));
        Command::new("kill")
            .args(["-KILL", &kids[0]])
            .status()
            .unwrap();
        sh.wait().unwrap(); // the shell reaps its child, then exits
        assert!(!running(&kids[0]));
        assert!(!running(&sh.id().to_string()));
    }

    #[test]
    fn a_server_whose_port_was_taken_is_seen_as_such_and_moved() {
        // What a parallel test's listener does to a port between free_port and the bind.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let mut r = RedisServer {
            binary: find_binary(
                "MCP_TEST_REDIS_SERVER",
                "redis-server",
                "apt-get install -y redis-server",
            ),
            port: taken,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        assert!(r.spawn().port_taken());
        // Another port on the next try: the first spawn lands on the held port.
        let mut tries = Vec::new();
        start_on_free_port(|p| {
            let port = if tries.is_empty() { taken } else { p };
            tries.push(port);
            r.port = port;
            r.spawn()
        });
        assert_eq!(tries.len(), 2, "{tries:?}");
        assert_ne!(r.port, taken);
        let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+PONG\r\n");
    }

    #[test]
    fn redis_starts_answers_and_restarts() {
        let mut r = RedisServer::start();
        let ping = |port: u16| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"PING\r\n").unwrap();
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).unwrap();
            buf
        };
        assert_eq!(&ping(r.port()), b"+PONG\r\n");
        r.kill();
        assert!(TcpStream::connect(("127.0.0.1", r.port())).is_err());
        r.restart();
        assert_eq!(&ping(r.port()), b"+PONG\r\n");
    }

    #[test]
    fn postgres_starts_stops_and_restarts() {
        let mut pg = PostgresServer::start();
        assert!(TcpStream::connect(("127.0.0.1", pg.port())).is_ok());
        pg.kill();
        assert!(TcpStream::connect(("127.0.0.1", pg.port())).is_err());
        pg.restart();
        assert!(TcpStream::connect(("127.0.0.1", pg.port())).is_ok());
    }
}
