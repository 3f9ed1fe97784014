//! Shared by the benches and the `trail_cpu` example: process CPU time, and a runtime
//! with an SQLite trail configuration in a temp dir.

use mcp_audit::AuditConfig;

/// Process CPU time (user + system) in seconds, from /proc/self/stat (Linux).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// A 2-worker runtime, a temp dir (kept alive by the caller) with the database `file` in
/// it, and the configuration pointing there with `max_records` (storage left for the
/// caller to choose).
pub fn sqlite_setup(
    file: &str,
    max_records: u64,
) -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    std::path::PathBuf,
    AuditConfig,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(file);
    let mut cfg = AuditConfig::default();
    cfg.database.sqlite_path = db.clone();
    cfg.database.max_records = max_records;
    (rt, dir, db, cfg)
}
