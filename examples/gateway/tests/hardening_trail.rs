//! Attack tests for the audit trail's integrity under a configuration check, a second
//! writer and failing sinks, and for the configuration loader's bounds, through the real
//! gateway process:
//!
//! - `mcp-gateway check` writes nothing to any sink (it used to write a `shutdown` row into
//!   the running gateway's SQLite trail, which then failed every write after it);
//! - one writer per SQLite trail: a second gateway on the same file stops at start with
//!   an error naming the file;
//! - a row written by someone else neither stalls the other sinks nor the shutdown; the
//!   shutdown drain ends by its deadline even while the trail cannot be written;
//! - hostile configuration files and environment values (alias bombs, deep nesting, huge
//!   files, YAML in `${VAR}`) are refused with bounded memory (the child's `VmHWM`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

async fn echo_ok(base: &str, message: &str) {
    let r = call_tool(
        &client(),
        &format!("{base}/mcp"),
        "echo",
        json!({"message": message}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

fn kinds(db: &Path) -> Vec<String> {
    audit_rows(db).into_iter().map(|r| r.kind).collect()
}

fn verify(dir: &Path, db: &Path) -> (i32, String, String) {
    run(&["audit", "verify", "--db", db.to_str().unwrap()], dir, &[])
}

fn check(dir: &Path, config: &Path, envs: &[(&str, &str)]) -> (i32, String, String) {
    run(&["check", "--config", config.to_str().unwrap()], dir, envs)
}

// ---------------------------------------------------------------------------------------
// `check` never writes.
// ---------------------------------------------------------------------------------------

/// The example: `check` against the running gateway's configuration wrote a
/// `shutdown` row into its trail; the gateway's next write then failed on `seq` for ever.
#[tokio::test]
async fn check_never_writes_into_the_live_sqlite_trail() {
    let dir = tempdir();
    let (_up, mut gw, base) = start_default(dir.path());
    let db = dir.path().join("a.db");
    echo_ok(&base, "before").await;
    assert!(eventually(|| request_rows(&db).len() == 1).await);
    let before = kinds(&db);
    for _ in 0..2 {
        let (code, out, err) = check(dir.path(), &dir.path().join("gateway.yaml"), &[]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // Nothing appended by the checks, no `shutdown` row while the gateway serves.
    assert_eq!(kinds(&db), before);
    assert!(!before.iter().any(|k| k == "shutdown"), "{before:?}");
    // The gateway keeps writing its trail, on one intact chain.
    echo_ok(&base, "after").await;
    assert!(
        eventually(|| request_rows(&db).len() == 2).await,
        "the gateway stopped writing its trail after a check: {:?}\n{}",
        kinds(&db),
        gw.stderr_text()
    );
    let (code, out, err) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{out}{err}");
    gw.terminate();
    assert!(gw.wait_exit(60).is_some(), "{}", gw.stderr_text());
    assert_eq!(kinds(&db).last().map(String::as_str), Some("shutdown"));
}

/// `check` of a configuration whose trail is stdout and a JSON lines file: nothing on
/// stdout but the verdict, no file created.
#[tokio::test]
async fn check_writes_nothing_to_stdout_or_file_sinks() {
    let dir = tempdir();
    let jsonl = dir.path().join("trail.jsonl");
    let db = dir.path().join("never.db");
    let yaml = base_config("http://127.0.0.1:9/mcp", &db, "").replacen(
        "  storage: database\n",
        &format!(
            "  storage: [stdout, file, database]\n  file:\n    path: \"{}\"\n",
            jsonl.display()
        ),
        1,
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (code, out, err) = check(dir.path(), &path, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("\"seq\""),
        "check wrote audit records:\n{out}"
    );
    assert_eq!(
        out.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{out}"
    );
    assert!(!jsonl.exists(), "check created the trail file");
    assert!(!db.exists(), "check created the trail database");
}

// ---------------------------------------------------------------------------------------
// One writer per trail.
// ---------------------------------------------------------------------------------------

fn wait_failed_start(p: &mut Proc) -> String {
    let status = p.wait_exit(60);
    let err = p.stderr_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second writer started on the same trail ({status:?}):\n{err}"
    );
    err
}

/// Two gateways on one SQLite file (absolute path): the second stops at start, naming
/// the file; the first keeps an intact trail; once the first is gone the second starts.
#[tokio::test]
async fn a_second_gateway_on_the_same_trail_fails_fast_naming_the_path() {
    let dir = tempdir();
    let (_up, mut gw, base) = start_default(dir.path());
    let db = dir.path().join("a.db");
    echo_ok(&base, "one").await;
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let yaml = std::fs::read_to_string(dir.path().join("gateway.yaml")).unwrap();
    std::fs::write(other.join("gateway.yaml"), &yaml).unwrap();
    let mut second = spawn_args(
        &["--config", other.join("gateway.yaml").to_str().unwrap()],
        &other,
    );
    let err = wait_failed_start(&mut second);
    assert!(err.contains(db.to_str().unwrap()), "{err}");
    assert!(err.contains("audit"), "{err}");
    // The first is unharmed.
    echo_ok(&base, "two").await;
    assert!(eventually(|| request_rows(&db).len() == 2).await);
    let (code, out, e) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{out}{e}");
    gw.terminate();
    assert!(gw.wait_exit(60).is_some());
    // The lock went with the process.
    let (_gw2, base2) = start_gateway(&other, &yaml);
    echo_ok(&base2, "three").await;
    assert!(eventually(|| request_rows(&db).len() == 3).await);
}

/// The other example: two gateways started in one directory with the default
/// relative `audit.db`.
#[tokio::test]
async fn two_gateways_with_the_default_relative_trail_in_one_directory() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = base_config(&upstream, Path::new("x"), "")
        .replacen("    sqlitePath: \"x\"\n", "", 1)
        .replacen("  database:\n    type: sqlite\n", "", 1);
    assert!(!yaml.contains("sqlitePath"), "{yaml}");
    let (mut first, base) = start_gateway(dir.path(), &yaml);
    // The trail's location is in the start-up output.
    let db = dir.path().join("audit.db");
    echo_ok(&base, "one").await;
    assert!(eventually(|| db.exists() && request_rows(&db).len() == 1).await);
    let path = dir.path().join("second.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut second = spawn_args(&["--config", path.to_str().unwrap()], dir.path());
    let err = wait_failed_start(&mut second);
    assert!(err.contains("audit.db"), "{err}");
    echo_ok(&base, "two").await;
    assert!(eventually(|| request_rows(&db).len() == 2).await);
    first.terminate();
    assert!(first.wait_exit(60).is_some());
    let (code, out, e) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{out}{e}");
}

/// The start-up output names the trail with its absolute path.
#[tokio::test]
async fn the_trail_path_is_in_the_start_up_output() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = base_config(&upstream, Path::new("rel/trail.db"), "");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut gw = spawn_args(&["--config", path.to_str().unwrap()], dir.path());
    let line = wait_line(&mut gw, "audit trail");
    let abs = dir.path().join("rel/trail.db");
    assert!(line.contains(abs.to_str().unwrap()), "{line}");
    wait_line(&mut gw, "mcp-gateway listening on");
}

// ---------------------------------------------------------------------------------------
// A failing sink stalls neither the others nor the shutdown.
// ---------------------------------------------------------------------------------------

/// Appends a row the gateway did not write (as a stray writer or an older version
/// would), right after the current head.
fn foreign_row(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let (seq, hash): (i64, String) = conn
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute(
        "INSERT INTO audit_events (seq, event_id, ts_us, kind, event, prev_hash, hash) \
         VALUES (?1, 'foreign', 0, 'shutdown', '{}', ?2, 'ffff')",
        rusqlite::params![seq + 1, hash],
    )
    .unwrap();
}

/// A row appended behind the gateway's back: the SQLite sink's next write conflicts on
/// `seq`. The stdout sink keeps writing, the SQLite sink carries on from the new head
/// (loudly), and SIGTERM ends the process.
#[tokio::test]
async fn a_foreign_row_stalls_neither_the_other_sinks_nor_the_shutdown() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let yaml = base_config(&upstream, &db, "").replacen(
        "  storage: database\n",
        "  storage: [database, stdout]\n",
        1,
    );
    let (mut gw, base) = start_gateway(dir.path(), &yaml);
    echo_ok(&base, "first").await;
    assert!(eventually(|| request_rows(&db).len() == 1).await);
    foreign_row(&db);
    for i in 0..3 {
        echo_ok(&base, &format!("marker-{i}")).await;
    }
    // Stdout has the three requests.
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen < 3 && std::time::Instant::now() < deadline {
        if let Ok(line) = gw.lines.recv_timeout(Duration::from_millis(200))
            && line.contains("marker-")
        {
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "the stdout sink stalled:\n{}", gw.stderr_text());
    // The SQLite trail carries on after the foreign row.
    assert!(
        eventually(|| request_rows(&db).len() == 4).await,
        "the SQLite sink stalled: {:?}\n{}",
        kinds(&db),
        gw.stderr_text()
    );
    gw.terminate();
    assert!(
        gw.wait_exit(60).is_some(),
        "SIGTERM did not end the gateway:\n{}",
        gw.stderr_text()
    );
    let err = gw.stderr_text();
    assert!(
        err.contains("another writer") || err.contains("chain head"),
        "{err}"
    );
}

/// The trail is locked by someone else (a long exclusive transaction) while requests are
/// recorded, then SIGTERM: the drain gives up at `queue.shutdownTimeoutMs`, even for the
/// batches queued before the signal, and says how many events were lost.
#[tokio::test]
async fn the_shutdown_drain_ends_by_its_deadline_while_the_trail_is_locked() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let yaml = base_config(&upstream, &db, "").replacen(
        "  storage: database\n",
        "  storage: database\n  queue:\n    shutdownTimeoutMs: 2000\n",
        1,
    );
    let (mut gw, base) = start_gateway(dir.path(), &yaml);
    echo_ok(&base, "first").await;
    assert!(eventually(|| request_rows(&db).len() == 1).await);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for i in 0..5 {
        echo_ok(&base, &format!("m{i}")).await;
    }
    // Let the writer fail at least once on the locked file.
    tokio::time::sleep(Duration::from_secs(7)).await;
    gw.terminate();
    let status = gw.wait_exit(90);
    let err = gw.stderr_text();
    conn.execute_batch("ROLLBACK").unwrap();
    assert!(status.is_some(), "the drain never ended:\n{err}");
    assert!(err.contains("lost"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The configuration loader is bounded.
// ---------------------------------------------------------------------------------------

/// Peak memory allowed to `check` or a start on any hostile file (a normal check uses
/// a few tens of MiB).
const MAX_PEAK_KIB: u64 = 300 * 1024;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the binary with `args`, watching its peak memory: killed once it passes
/// `MAX_PEAK_KIB` or 120 s. Returns (exit code or None when killed, stderr, peak KiB).
fn run_watched(args: &[&str], dir: &Path, envs: &[(&str, &str)]) -> (Option<i32>, String, u64) {
    let err_path = dir.join("watched.err");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut peak = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let code = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if peak > MAX_PEAK_KIB || std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        code,
        std::fs::read_to_string(&err_path).unwrap_or_default(),
        peak,
    )
}

/// Asserts that `check` (and a start) refuse `yaml` with an error containing `expect`,
/// within the memory bound.
fn assert_refused_bounded(dir: &Path, yaml: &str, envs: &[(&str, &str)], expect: &str) {
    let path = dir.join("hostile.yaml");
    std::fs::write(&path, yaml).unwrap();
    for args in [
        vec!["check", "--config", path.to_str().unwrap()],
        vec!["--config", path.to_str().unwrap()],
    ] {
        let (code, err, peak) = run_watched(&args, dir, envs);
        assert!(
            peak <= MAX_PEAK_KIB,
            "{args:?}: peak memory {peak} KiB; stderr: {}",
            err.chars().take(500).collect::<String>()
        );
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("hostile.yaml"), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
        assert!(err.len() < 4096, "{args:?}: error of {} bytes", err.len());
    }
}

/// A valid configuration prefix (no upstream reachable needed for `check`).
fn valid_prefix(dir: &Path) -> String {
    base_config("http://127.0.0.1:9/mcp", &dir.join("a.db"), "")
}

/// Billion laughs: nine levels of ten aliases each (a few hundred bytes).
fn alias_bomb(leaf: &str) -> String {
    let mut y = format!("a0: &a0 [\"{leaf}\"]\n");
    for i in 1..10 {
        let p = i - 1;
        y.push_str(&format!(
            "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    y
}

/// The example: nested aliases, each expanded many times.
#[test]
fn an_alias_bomb_is_refused_with_bounded_memory() {
    let dir = tempdir();
    // Top-level keys the gateway does not know, and the same under a known section.
    let yaml = format!("{}{}", valid_prefix(dir.path()), alias_bomb("lol"));
    assert_refused_bounded(dir.path(), &yaml, &[], "alias");
    let yaml = format!(
        "{}{}security:\n  headers: *a9\n",
        alias_bomb("lol"),
        valid_prefix(dir.path())
    );
    assert_refused_bounded(dir.path(), &yaml, &[], "alias");
}

/// Few aliases of a long string: the count of expansions stays low, the replayed size
/// does not (100 KiB times 10,000).
#[test]
fn aliases_of_a_long_string_are_refused_with_bounded_memory() {
    let dir = tempdir();
    let long = "x".repeat(100 * 1024);
    let mut yaml = format!("{}big: &big \"{long}\"\n", valid_prefix(dir.path()));
    yaml.push_str("l1: &l1 [*big,*big,*big,*big,*big,*big,*big,*big,*big,*big]\n");
    yaml.push_str("l2: &l2 [*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1]\n");
    yaml.push_str("l3: &l3 [*l2,*l2,*l2,*l2,*l2,*l2,*l2,*l2,*l2,*l2]\n");
    yaml.push_str("l4: &l4 [*l3,*l3,*l3,*l3,*l3,*l3,*l3,*l3,*l3,*l3]\n");
    assert_refused_bounded(dir.path(), &yaml, &[], "alias");
}

/// A 200 KB file nested 100,000 levels deep, in flow and in block style.
#[test]
fn deep_nesting_is_refused_with_bounded_memory() {
    let dir = tempdir();
    let n = 100_000;
    let flow = format!(
        "{}deep: {}{}\n",
        valid_prefix(dir.path()),
        "[".repeat(n),
        "]".repeat(n)
    );
    assert_refused_bounded(dir.path(), &flow, &[], "nest");
    let flow_maps = format!(
        "{}deep: {}\n",
        valid_prefix(dir.path()),
        "{a: ".repeat(n / 2)
    );
    assert_refused_bounded(dir.path(), &flow_maps, &[], "nest");
    let block = format!("{}deep:\n  {}x\n", valid_prefix(dir.path()), "- ".repeat(n));
    assert_refused_bounded(dir.path(), &block, &[], "nest");
}

/// A file larger than the cap is refused before it is parsed.
#[test]
fn an_oversized_file_is_refused_before_parsing() {
    let dir = tempdir();
    let mut yaml = valid_prefix(dir.path());
    yaml.push_str("padding:\n");
    while yaml.len() < 5 * 1024 * 1024 {
        yaml.push_str("  - \"a value of padding that makes the file large\"\n");
    }
    assert_refused_bounded(dir.path(), &yaml, &[], "larger than");
}

/// The example: a 60 KB environment variable under a non-secret key was parsed
/// as YAML. `${VAR}` values are scalars.
#[test]
fn an_environment_value_is_a_scalar_never_yaml() {
    let dir = tempdir();
    // The bomb as one flow mapping, padded to 60 KB.
    let mut bomb = format!(
        "{{{}}}",
        alias_bomb("lol").lines().collect::<Vec<_>>().join(", ")
    );
    while bomb.len() < 60 * 1024 {
        bomb.push(' ');
    }
    let yaml =
        valid_prefix(dir.path()).replacen("  addr: \"127.0.0.1:0\"\n", "  addr: ${ADDR}\n", 1);
    assert_refused_bounded(dir.path(), &yaml, &[("ADDR", &bomb)], "server.addr");
    // A number or a boolean alone in `${VAR}` still works, and a value that would be
    // YAML stays the string it is.
    let yaml = valid_prefix(dir.path())
        .replacen(
            "requests_per_second: 1000",
            "requests_per_second: ${RPS}",
            1,
        )
        .replacen(
            "  enabled: true\n  mode: apikey",
            "  enabled: ${AUTH_ON}\n  mode: apikey",
            1,
        );
    let path = dir.path().join("ok.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (code, out, err) = check(dir.path(), &path, &[("RPS", "250"), ("AUTH_ON", "true")]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = check(dir.path(), &path, &[("RPS", "[1, 2]"), ("AUTH_ON", "true")]);
    assert_ne!(code, 0);
    assert!(err.contains("ratelimit.requests_per_second"), "{err}");
}

/// An expanded value beyond the cap (one huge variable, or one variable repeated by
/// aliases) is refused.
#[test]
fn expanded_values_are_capped() {
    let dir = tempdir();
    // One value over the cap (64 KiB; an environment string holds 128 KiB at most).
    let huge = "h".repeat(100 * 1024);
    let yaml = format!("{}note: \"${{HUGE}}\"\n", valid_prefix(dir.path()));
    assert_refused_bounded(dir.path(), &yaml, &[("HUGE", &huge)], "HUGE");
    // Values under the cap, repeated by aliases: 60 KiB times 100.
    let big = "b".repeat(60 * 1024);
    let mut yaml = format!("{}v: &v \"${{BIG}}\"\n", valid_prefix(dir.path()));
    yaml.push_str("l1: &l1 [*v,*v,*v,*v,*v,*v,*v,*v,*v,*v]\n");
    yaml.push_str("l2: &l2 [*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1]\n");
    assert_refused_bounded(dir.path(), &yaml, &[("BIG", &big)], "expanded");
}
