//! The certificate watcher reacts to the configured files only: other writers in the
//! certificate's directory (a log file, an audit trail, an ACME cache) cause no reload,
//! files rewritten with the same bytes cause no rebuild, a real change and the Kubernetes
//! `..data` symlink swap are picked up, and the near-expiry warning is logged once per
//! certificate (then daily), not once per reload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mcp_tls::{ReloadOutcome, TlsAcceptor, TlsConfig, TlsStats};

/// Waits (generous deadline, only against a hang) until `f` holds for the stats.
async fn wait_for(acceptor: &TlsAcceptor, what: &str, f: impl Fn(&TlsStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = acceptor.stats();
        if f(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends to `dir/name` `n` times, as a log writer does, pausing between writes so that
/// each lands after the debounce of the one before.
async fn append_many(dir: &Path, name: &str, n: usize) {
    for i in 0..n {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .unwrap();
        writeln!(f, "line {i}").unwrap();
        drop(f);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_files_in_the_cert_directory_cause_no_reload() {
    let _ = logs();
    let ca = Ca::new("Watch CA");
    let (cert, key) = ca.server("one");
    let files = Files::new(&cert, &key);
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    let _reloader = acceptor
        .spawn_reloader_with(Duration::from_millis(10))
        .unwrap();
    // A log file, an audit trail and an ACME cache written beside the certificate.
    append_many(files.dir.path(), "gateway.log", 20).await;
    append_many(files.dir.path(), "audit.sqlite-wal", 10).await;
    std::fs::create_dir(files.path("acme-cache")).unwrap();
    replace_file(files.dir.path(), "account.json", "{}");
    // The watcher saw them (so the test is not vacuous), and read no file for them.
    wait_for(&acceptor, "the watcher saw the other files", |s| {
        s.watch_events_ignored >= 30
    })
    .await;
    let s = acceptor.stats();
    assert_eq!(s.reload_checks, 0, "{s:?}");
    assert_eq!(s.reloaded, 0, "{s:?}");
    // The configured file still is watched.
    let (cert2, key2) = ca.server("two");
    replace_file(files.dir.path(), "server.key", &key2);
    replace_file(files.dir.path(), "server.pem", &cert2);
    wait_for(&acceptor, "the new certificate", |s| s.reloaded == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_rewritten_cause_no_rebuild() {
    let _ = logs();
    let ca = Ca::new("Watch CA");
    let (cert, key) = ca.server("same");
    let files = Files::new(&cert, &key);
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    let before = acceptor.server_config();
    let _reloader = acceptor
        .spawn_reloader_with(Duration::from_millis(10))
        .unwrap();
    for _ in 0..3 {
        // In place (touch with the same bytes), then by rename.
        std::fs::write(files.path("server.pem"), &cert).unwrap();
        replace_file(files.dir.path(), "server.key", &key);
        let checks = acceptor.stats().reload_checks;
        wait_for(&acceptor, "a reload check", |s| s.reload_checks > checks).await;
    }
    // An in-place write is not atomic: a check may read the file half written and fail
    // (the certificate in use is kept). What must not happen is a rebuild.
    let s = acceptor.stats();
    assert_eq!(s.reloaded, 0, "{s:?}");
    assert!(Arc::ptr_eq(&before, &acceptor.server_config()));
    assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Unchanged);
    assert!(Arc::ptr_eq(&before, &acceptor.server_config()));
}

/// A Secret volume as the kubelet writes it: the files in a timestamped directory,
/// `..data` pointing at it, and each key a symlink through `..data`.
fn kubernetes_volume(dir: &Path, version: &str, cert: &str, key: &str) {
    let v = dir.join(version);
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("tls.crt"), cert).unwrap();
    std::fs::write(v.join("tls.key"), key).unwrap();
    std::os::unix::fs::symlink(version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(f)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_data_symlink_swap_is_picked_up() {
    let _ = logs();
    let ca = Ca::new("Watch CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert1, key1) = ca.server("k8s-one");
    kubernetes_volume(dir.path(), "..2026_12_07_00_00_00.1", &cert1, &key1);
    let cfg = TlsConfig::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let acceptor = TlsAcceptor::from_config(&cfg).unwrap();
    let _reloader = acceptor
        .spawn_reloader_with(Duration::from_millis(10))
        .unwrap();
    // Two swaps: the second checks that the watch follows the new `..data`.
    for (n, version) in ["..2026_12_07_00_05_00.2", "..2026_12_07_00_10_00.3"]
        .into_iter()
        .enumerate()
    {
        let old = std::fs::read_link(dir.path().join("..data")).unwrap();
        let (cert, key) = ca.server(&format!("k8s-{version}"));
        kubernetes_volume(dir.path(), version, &cert, &key);
        std::fs::remove_dir_all(dir.path().join(old)).unwrap();
        wait_for(&acceptor, "the swapped Secret", |s| {
            s.reloaded == n as u64 + 1
        })
        .await;
    }
    assert_eq!(acceptor.stats().reload_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_warning_is_logged_once_per_certificate() {
    let _ = logs();
    let ca = Ca::new("Watch CA");
    let soon = |cn: &str| {
        ca.server_with(cn, |p| {
            p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
        })
    };
    let (cert, key) = soon("expiring");
    let files = Files::new(&cert, &key);
    let dir = files.dir.path().display().to_string();
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    assert_eq!(lines_with(&dir, "expires soon"), 1);
    let _reloader = acceptor
        .spawn_reloader_with(Duration::from_millis(10))
        .unwrap();
    // Reloads of the same files, by hand and by the watcher (same bytes rewritten).
    for _ in 0..5 {
        assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Unchanged);
    }
    for _ in 0..3 {
        let checks = acceptor.stats().reload_checks;
        std::fs::write(files.path("server.pem"), &cert).unwrap();
        wait_for(&acceptor, "a reload check", |s| s.reload_checks > checks).await;
    }
    assert_eq!(lines_with(&dir, "expires soon"), 1);
    // A new certificate, also near expiry: its own warning, once.
    let (cert2, key2) = soon("expiring-two");
    replace_file(files.dir.path(), "server.key", &key2);
    replace_file(files.dir.path(), "server.pem", &cert2);
    wait_for(&acceptor, "the new certificate", |s| s.reloaded == 1).await;
    for _ in 0..3 {
        assert_eq!(acceptor.reload().await.unwrap(), ReloadOutcome::Unchanged);
    }
    assert_eq!(lines_with(&dir, "expires soon"), 2);
}
