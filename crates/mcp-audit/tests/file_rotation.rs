//! JSON lines files: rotation by size, retention of N files, an anchor for what was
//! pruned, verification across files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use mcp_audit::chain::Tampering;
use mcp_audit::{AuditConfig, AuditEvent, Auditor, Storage, StorageList, verify_jsonl};

#[tokio::test]
async fn rotation_retention_and_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs").join("audit.jsonl");
    let mut cfg = AuditConfig::default();
    cfg.storage = StorageList::One(Storage::File);
    cfg.file.path = path.clone();
    cfg.file.max_bytes = 4096;
    cfg.file.keep_files = 2;
    cfg.queue.batch_size = 7;
    let auditor = Auditor::from_config(cfg.clone()).await.unwrap();
    for i in 0..200 {
        auditor
            .handle()
            .record(AuditEvent::config_reload().with_message(format!("reload number {i}")))
            .await;
    }
    auditor.shutdown().await;
    let p = |s: &str| dir.path().join("logs").join(s);
    assert!(p("audit.jsonl").exists());
    assert!(p("audit.jsonl.1").exists());
    assert!(p("audit.jsonl.2").exists());
    assert!(
        !p("audit.jsonl.3").exists(),
        "only keepFiles rotated files kept"
    );
    assert!(p("audit.jsonl.anchor").exists());
    for f in ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"] {
        assert!(
            std::fs::metadata(p(f)).unwrap().len() <= 4096,
            "{f} over maxBytes"
        );
    }
    let report = verify_jsonl(&path).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.head.seq, 201);
    let anchor = report.anchor.clone().unwrap();
    assert_eq!(anchor.seq + report.records as i64, 201);

    // A restarted writer continues the chain in the same files.
    let auditor = Auditor::from_config(cfg).await.unwrap();
    auditor.handle().record(AuditEvent::startup()).await;
    auditor.shutdown().await;
    let report = verify_jsonl(&path).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.head.seq, 203);

    // Removing the first record kept (just after the anchor) is found.
    let oldest = p("audit.jsonl.2");
    let text = std::fs::read_to_string(&oldest).unwrap();
    let rest: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&oldest, rest.join("\n") + "\n").unwrap();
    assert!(matches!(
        verify_jsonl(&path).unwrap().problem,
        Some(Tampering::Deleted { .. })
    ));
    // A line that is not JSON is reported with its place.
    std::fs::write(&oldest, "garbage\n").unwrap();
    assert!(matches!(
        verify_jsonl(&path).unwrap().problem,
        Some(Tampering::Malformed { .. })
    ));
}
