//! The default configuration works under every feature set of the crate: run these with
//! the default features and with `--no-default-features` (no SQLite).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcp_audit::{AuditConfig, AuditEvent, Auditor, Storage, StorageList};

/// `Auditor::builder(AuditConfig::default()).start()` starts whatever the features.
#[tokio::test]
async fn default_config_starts_a_builder_under_every_feature_set() {
    let auditor = Auditor::builder(AuditConfig::default())
        .start()
        .expect("the default configuration starts");
    auditor.handle().record(AuditEvent::startup()).await;
    auditor.shutdown().await;
    assert_eq!(auditor.stats().dropped(), 0);
}

/// The default storage is one this build can open: the SQLite database with the `sqlite`
/// feature, JSON lines on stdout without it.
#[tokio::test]
async fn default_storage_is_one_this_build_has() {
    let cfg = AuditConfig::default();
    cfg.validate().expect("the default configuration is valid");
    let expected = if cfg!(feature = "sqlite") {
        Storage::Database
    } else {
        Storage::Stdout
    };
    assert_eq!(cfg.storage.to_vec(), vec![expected]);
    if !cfg!(feature = "sqlite") {
        // Opens the configured storages (stdout only: nothing on disk).
        let auditor = Auditor::from_config(cfg).await.expect("opens");
        auditor.shutdown().await;
    }
}

/// An empty storage list is refused with the key and a message saying what to write.
#[test]
fn empty_storage_list_is_refused_with_a_clear_message() {
    let cfg = AuditConfig {
        storage: StorageList::Many(Vec::new()),
        ..Default::default()
    };
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.key, "audit.storage");
    assert!(e.rule.contains("stdout"), "{e}");
    assert!(e.rule.contains("enabled: false"), "{e}");
}
