//! The stdout sink, observed from outside: this test runs its own binary again as a child
//! that records events to stdout, and checks what the child printed: chained JSON lines
//! that verify, with secrets masked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use mcp_audit::{AuditConfig, AuditEvent, Auditor, Storage, StorageList, verify_jsonl};

const CHILD: &str = "MCP_AUDIT_STDOUT_CHILD";

#[tokio::test]
async fn stdout_sink_writes_chained_masked_lines() {
    if std::env::var_os(CHILD).is_some() {
        // Child: write three events to stdout and exit.
        let mut cfg = AuditConfig::default();
        cfg.storage = StorageList::One(Storage::Stdout);
        let auditor = Auditor::from_config(cfg).await.unwrap();
        auditor.handle().record(AuditEvent::startup()).await;
        auditor
            .handle()
            .record(AuditEvent::config_reload().with_data(
                serde_json::json!({"db": {"password": "Stdout-Secret-1"}, "note": "Bearer abcdefgh12345"}),
            ))
            .await;
        auditor.shutdown().await;
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "stdout_sink_writes_chained_masked_lines",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text
        .lines()
        // libtest's own output may share a line with the first record.
        .filter_map(|l| l.find("{\"seq\":").map(|i| &l[i..]))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(!text.contains("Stdout-Secret-1") && !text.contains("abcdefgh12345"));
    assert!(lines[1].contains("***REDACTED***"));
    // The lines form a chain that the JSON lines verifier accepts.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdout.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let report = verify_jsonl(&path).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, 3);
}
