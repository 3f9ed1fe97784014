//! [`TlsAcceptor`]: the current rustls configuration behind an atomic swap, the TLS
//! handshake with its [`TlsInfo`], and hot reload of the files.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mcp_core::TlsInfo;
use rustls::server::danger::ClientCertVerifier;
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::build::{
    Built, ExpiresSoon, Resumption, Snapshot, build_server_config, check_expiry, warn_expires_soon,
};
use crate::config::TlsConfig;
use crate::error::TlsError;
use crate::identity::{client_cert_expires_at, tls_info};

/// The ALPN protocol of ACME tls-alpn-01 validation connections (RFC 8737). A connection
/// that negotiated it is closed right after the handshake and never reaches a service.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files changed and the new configuration is in use for new connections.
    Reloaded,
    /// The files are as they were; nothing was swapped.
    Unchanged,
}

struct Source {
    cfg: TlsConfig,
    state: Mutex<SourceState>,
}

struct SourceState {
    identity: [u8; 32],
    trust: [u8; 32],
    resumption: Resumption,
    /// Digest of the last set of files that failed to load, to log a failure once.
    last_failed: Option<[u8; 32]>,
    /// The certificate (digest of the certificate and key files) whose near-expiry
    /// warning was logged last, and when: logged once per certificate, then daily.
    expiry_warned: Option<([u8; 32], Instant)>,
}

/// How often the near-expiry warning of one certificate is repeated.
const EXPIRY_WARNING_REPEAT: Duration = Duration::from_secs(24 * 3600);

impl SourceState {
    /// Whether the expiry of the certificate `identity` is to be logged now: not when it
    /// was logged for the same certificate less than a day ago. Notes it as logged.
    fn expiry_log_due(&mut self, identity: [u8; 32]) -> bool {
        let due = match self.expiry_warned {
            Some((seen, at)) => seen != identity || at.elapsed() >= EXPIRY_WARNING_REPEAT,
            None => true,
        };
        if due {
            self.expiry_warned = Some((identity, Instant::now()));
        }
        due
    }

    /// Logs the near-expiry warning for the certificate `identity` when due.
    fn warn_expiry(&mut self, identity: [u8; 32], path: &Path, soon: &ExpiresSoon) {
        if self.expiry_log_due(identity) {
            warn_expires_soon(path, soon);
        }
    }
}

/// What the reloader and the handshakes of a [`TlsAcceptor`] did, for metrics.
#[derive(Default)]
struct Counts {
    reload_checks: AtomicU64,
    reloaded: AtomicU64,
    reload_failed: AtomicU64,
    watch_events_ignored: AtomicU64,
}

/// What a [`TlsAcceptor`]'s reloads have done since it was made ([`TlsAcceptor::stats`]).
/// Counters only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsStats {
    /// Times the files were read to look for a change (a file change seen by the
    /// watcher, the periodic check, or a call of [`TlsAcceptor::reload`]).
    pub reload_checks: u64,
    /// Reloads that swapped in a new configuration (the files' bytes had changed).
    pub reloaded: u64,
    /// Reloads refused (unreadable or invalid files; the configuration in use stays).
    pub reload_failed: u64,
    /// Changes in the watched directories to files other than the configured ones (and
    /// the symlinks leading to them), which caused no reload.
    pub watch_events_ignored: u64,
}

struct Inner {
    current: ArcSwap<Current>,
    source: Option<Source>,
    /// The trust generation of the current configuration, sent on every change of it.
    trust_changes: watch::Sender<u64>,
    counts: Counts,
}

/// A rustls configuration and the client certificate verifier inside it.
struct Current {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Counts the reloads that changed the client trust (CA bundle or CRLs): a chain
    /// verified under an earlier generation is verified again before it is trusted.
    generation: u64,
}

/// Accepts TLS connections with the current configuration.
///
/// Cheap to clone; clones share the configuration, so a reload is seen by all of them.
/// Each handshake uses the configuration current when it starts. A reload that changes
/// the client trust (the CA bundle or a CRL) reaches the connections already open
/// through their [`ClientCertCheck`]: [`Server`](crate::Server) verifies each open
/// connection's client chain again with the new verifier (once per connection and
/// reload), and a connection whose chain no longer verifies gives no identity to its
/// requests and is closed. A reload of the server certificate alone touches no
/// connection.
///
/// A client certificate is checked on every connection, resumed or not: rustls verifies
/// it on a full handshake, but a resumed session (TLS 1.3 ticket, TLS 1.2 session id or
/// ticket) carries the chain verified when the session began, so [`accept`](Self::accept)
/// verifies that chain again, with the same verifier (CA bundle, CRLs, validity dates of
/// every certificate of the path) at the time of the resumption, and refuses the
/// connection when it no longer passes. Resumption keeps its worth (no key exchange
/// signature, no round trip), at the cost of one chain verification; refusing to resume
/// sessions with client certificates instead would cost every mTLS client a full
/// handshake. A certificate that expires while its connection is open is the accept
/// loop's part: see [`client_cert_expires_at`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use mcp_tls::{TlsAcceptor, TlsConfig};
///
/// let acceptor = TlsAcceptor::from_config(&TlsConfig::new("server.pem", "server.key"))?;
/// let _reloader = acceptor.spawn_reloader()?; // keep it: dropping it stops reloading
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: Arc<Inner>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("reloadable", &self.inner.source.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Validates the configuration, reads the files and builds the rustls configuration.
    ///
    /// Fails with a precise error for a missing file (naming it), unparsable PEM, a key
    /// that does not match the certificate, an expired certificate, or a rule broken.
    /// Warns (tracing) when the certificate expires within `expiryWarning`.
    /// Blocking file I/O: call it at startup, or from `spawn_blocking`.
    pub fn from_config(cfg: &TlsConfig) -> Result<Self, TlsError> {
        cfg.validate()?;
        if cfg.uses_acme() {
            return Err(crate::ConfigError::new(
                "server.tls.autoCert.enabled",
                "use mcp_tls::acme::AcmeAcceptor for ACME certificates",
            )
            .into());
        }
        let snap = Snapshot::read(cfg)?;
        let resumption = Resumption::new()?;
        let Built {
            config,
            verifier,
            expires_soon,
        } = build_server_config(cfg, &snap, &resumption)?;
        tracing::info!(
            cert = %snap.cert.0.display(),
            client_auth = cfg.client_auth.as_str(),
            min = %cfg.min_version,
            max = %cfg.max_version,
            "TLS configuration loaded"
        );
        let mut state = SourceState {
            identity: snap.identity_digest(),
            trust: snap.trust_digest(),
            resumption,
            last_failed: None,
            expiry_warned: None,
        };
        if let Some(soon) = &expires_soon {
            state.warn_expiry(state.identity, &snap.cert.0, soon);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(Current {
                    config,
                    verifier,
                    generation: 0,
                }),
                trust_changes: watch::Sender::new(0),
                counts: Counts::default(),
                source: Some(Source {
                    cfg: cfg.clone(),
                    state: Mutex::new(state),
                }),
            }),
        })
    }

    /// An acceptor for a fixed rustls configuration (no reload).
    ///
    /// rustls does not hand back the client certificate verifier of a configuration, so
    /// the client chain of a resumed session is checked for the validity dates of its
    /// end-entity certificate only (no CA, no CRL): for client certificates, use
    /// [`from_server_config_with_verifier`](Self::from_server_config_with_verifier), or
    /// disable resumption in `config`.
    pub fn from_server_config(config: Arc<ServerConfig>) -> Self {
        Self::from_current(Current {
            config,
            verifier: None,
            generation: 0,
        })
    }

    /// An acceptor for a fixed rustls configuration (no reload) that verifies client
    /// certificates with `verifier`, which must be the verifier `config` was built with:
    /// the client chain of a resumed session is verified again with it. Used by the ACME
    /// acceptor, whose certificate resolver swaps certificates itself.
    pub fn from_server_config_with_verifier(
        config: Arc<ServerConfig>,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Self {
        Self::from_current(Current {
            config,
            verifier: Some(verifier),
            generation: 0,
        })
    }

    fn from_current(current: Current) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(current),
                source: None,
                trust_changes: watch::Sender::new(0),
                counts: Counts::default(),
            }),
        }
    }

    /// Counts of reload checks, reloads and ignored file changes since this acceptor (or
    /// the one it was cloned from) was made.
    ///
    /// ```
    /// # fn f(acceptor: &mcp_tls::TlsAcceptor) {
    /// let stats = acceptor.stats();
    /// assert!(stats.reloaded <= stats.reload_checks);
    /// # }
    /// ```
    pub fn stats(&self) -> TlsStats {
        let c = &self.inner.counts;
        TlsStats {
            reload_checks: c.reload_checks.load(Ordering::Relaxed),
            reloaded: c.reloaded.load(Ordering::Relaxed),
            reload_failed: c.reload_failed.load(Ordering::Relaxed),
            watch_events_ignored: c.watch_events_ignored.load(Ordering::Relaxed),
        }
    }

    /// The configuration new connections use now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.current.load().config.clone()
    }

    /// Performs the TLS handshake with the current configuration and returns the stream
    /// with the connection's [`TlsInfo`] (protocol, ALPN, SNI, verified client identity).
    ///
    /// A connection that negotiated the ACME validation protocol is refused with
    /// [`io::ErrorKind::ConnectionAborted`] once its handshake is done. A resumed session
    /// whose client certificate chain no longer verifies (expired, not yet valid, revoked,
    /// or its CA no longer trusted) is refused with [`io::ErrorKind::PermissionDenied`].
    /// The chain's end of validity is [`client_cert_expires_at`]
    /// of the stream's connection: a loop of your own must stop serving the connection then.
    ///
    /// A connection accepted here is not told of a later change of the client trust: use
    /// [`accept_checked`](Self::accept_checked) for that.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> io::Result<(tokio_rustls::server::TlsStream<IO>, TlsInfo)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_checked(io)
            .await
            .map(|(stream, info, _)| (stream, info))
    }

    /// [`accept`](Self::accept), with the [`ClientCertCheck`] of the connection when the
    /// client presented a certificate: it tells whether the chain still verifies with
    /// the client trust current now (after a CRL or CA reload). [`Server`](crate::Server)
    /// checks it on every request (see [`ConnectionInfo::client_cert_check`]) and closes
    /// the connection when it fails; an accept loop of your own should do the same.
    ///
    /// [`ConnectionInfo::client_cert_check`]: crate::ConnectionInfo::client_cert_check
    pub async fn accept_checked<IO>(
        &self,
        io: IO,
    ) -> io::Result<(
        tokio_rustls::server::TlsStream<IO>,
        TlsInfo,
        Option<ClientCertCheck>,
    )>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let current = self.inner.current.load_full();
        let stream = tokio_rustls::TlsAcceptor::from(current.config.clone())
            .accept(io)
            .await?;
        let (_, conn) = stream.get_ref();
        if conn.alpn_protocol() == Some(ACME_TLS_ALPN) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "ACME tls-alpn-01 validation connection",
            ));
        }
        if let Err(reason) = recheck_resumed(conn, current.verifier.as_deref()) {
            tracing::debug!(%reason, "resumed TLS session refused: its client certificate no longer verifies");
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "resumed session refused: its client certificate no longer verifies ({reason})"
                ),
            ));
        }
        let info = tls_info(conn);
        let check = conn
            .peer_certificates()
            .filter(|chain| !chain.is_empty())
            .map(|chain| ClientCertCheck {
                inner: Arc::new(CheckInner {
                    acceptor: self.inner.clone(),
                    chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
                    verified: Mutex::new(Verified::Under(current.generation)),
                }),
            });
        Ok((stream, info, check))
    }

    /// Re-reads the files and, when they changed and are valid, swaps in the new
    /// configuration for new connections. When they are invalid the current
    /// configuration stays and the error is returned (and logged once per distinct set
    /// of files). File I/O runs on the blocking pool.
    pub async fn reload(&self) -> Result<ReloadOutcome, TlsError> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.reload_blocking()).await {
            Ok(r) => r,
            Err(e) => Err(TlsError::Io {
                key: "server.tls",
                path: PathBuf::new(),
                source: io::Error::other(e.to_string()),
            }),
        }
    }

    /// [`reload`](Self::reload) without the blocking pool (blocking file I/O).
    ///
    /// Files whose bytes are those in use change nothing: no rebuild, no log line. The
    /// near-expiry warning is logged once per certificate, then at most daily.
    pub fn reload_blocking(&self) -> Result<ReloadOutcome, TlsError> {
        let Some(source) = &self.inner.source else {
            return Ok(ReloadOutcome::Unchanged);
        };
        let counts = &self.inner.counts;
        counts.reload_checks.fetch_add(1, Ordering::Relaxed);
        let mut state = match source.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let snap = match Snapshot::read(&source.cfg) {
            Ok(s) => s,
            Err(e) => {
                counts.reload_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "TLS reload refused; the current certificate stays");
                return Err(e);
            }
        };
        let identity = snap.identity_digest();
        let trust = snap.trust_digest();
        if identity == state.identity && trust == state.trust {
            // Unchanged files: nothing is rebuilt. The certificate in use still draws its
            // daily near-expiry warning, and an error once it has expired.
            if let Ok(chain) =
                crate::build::parse_cert_chain("server.tls.certFile", &snap.cert.0, &snap.cert.1)
                && let Some(leaf) = chain.first()
            {
                match check_expiry(&snap.cert.0, leaf, source.cfg.expiry_warning) {
                    Ok(Some(soon)) => state.warn_expiry(identity, &snap.cert.0, &soon),
                    Ok(None) => {}
                    Err(e) => {
                        if state.expiry_log_due(identity) {
                            tracing::error!(
                                error = %e,
                                "the TLS certificate in use has expired (logged daily)"
                            );
                        }
                    }
                }
            }
            return Ok(ReloadOutcome::Unchanged);
        }
        let combined = {
            let mut v = identity.to_vec();
            v.extend_from_slice(&trust);
            let d: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&v).into();
            d
        };
        // New trust (CA or CRLs): fresh resumption state, so no session verified under
        // the old trust is resumed.
        let resumption = if trust != state.trust {
            Resumption::new()?
        } else {
            state.resumption.clone()
        };
        match build_server_config(&source.cfg, &snap, &resumption) {
            Ok(Built {
                config,
                verifier,
                expires_soon,
            }) => {
                // Only a change of the client trust sends the open connections to verify
                // their chains again.
                let generation = self
                    .inner
                    .current
                    .load()
                    .generation
                    .wrapping_add(u64::from(trust != state.trust));
                self.inner.current.store(Arc::new(Current {
                    config,
                    verifier,
                    generation,
                }));
                self.inner.trust_changes.send_replace(generation);
                state.identity = identity;
                state.trust = trust;
                state.resumption = resumption;
                state.last_failed = None;
                counts.reloaded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %snap.cert.0.display(), "TLS configuration reloaded");
                if let Some(soon) = &expires_soon {
                    state.warn_expiry(identity, &snap.cert.0, soon);
                }
                Ok(ReloadOutcome::Reloaded)
            }
            Err(e) => {
                counts.reload_failed.fetch_add(1, Ordering::Relaxed);
                if state.last_failed != Some(combined) {
                    tracing::error!(
                        error = %e,
                        "TLS reload refused; the current certificate stays"
                    );
                    state.last_failed = Some(combined);
                }
                Err(e)
            }
        }
    }

    /// Starts reloading on file changes and on a periodic check every
    /// `rotationInterval`. Must be called within a tokio runtime. Reloading stops when
    /// the returned handle is dropped.
    ///
    /// The directories of the files are watched, so that replacement by rename (editors,
    /// cert-manager) is seen, but only changes to the configured files themselves, and
    /// to the symlinks that lead to them, start a reload: a log file, an audit trail or
    /// an ACME cache in the same directory does not. For a Kubernetes Secret volume
    /// (`tls.crt -> ..data/tls.crt`, `..data -> ..2026_12_07_...`), the swap of `..data`
    /// is seen. A reload whose files hold the bytes in use changes nothing.
    pub fn spawn_reloader(&self) -> Result<ReloadHandle, TlsError> {
        self.spawn_reloader_with(Duration::from_millis(200))
    }

    /// [`spawn_reloader`](Self::spawn_reloader) with a chosen debounce: after a change,
    /// wait until the files have been quiet this long before reloading.
    pub fn spawn_reloader_with(&self, debounce: Duration) -> Result<ReloadHandle, TlsError> {
        let Some(source) = &self.inner.source else {
            return Ok(ReloadHandle { task: None });
        };
        let cfg = &source.cfg;
        let period = cfg.effective_rotation_interval();
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let files: Vec<PathBuf> = cfg
            .cert_file
            .iter()
            .chain(cfg.key_file.iter())
            .chain(cfg.ca_file.iter())
            .chain(cfg.crl_files.iter())
            .cloned()
            .collect();
        let watched = if cfg.watch {
            let interest = Interest::of(&files);
            let paths = Arc::new(Mutex::new(interest.paths.clone()));
            let watcher = start_watcher(
                &interest.dirs,
                paths.clone(),
                Arc::downgrade(&self.inner),
                tx,
            )?;
            Some((watcher, paths, interest.dirs))
        } else {
            None
        };
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut watched = watched;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    got = rx.recv() => {
                        if got.is_none() {
                            // The watcher is gone; keep the periodic check.
                            tick.tick().await;
                        } else {
                            // Debounce: wait for quiet files.
                            loop {
                                tokio::time::sleep(debounce).await;
                                if rx.try_recv().is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
                let Some(inner) = weak.upgrade() else { break };
                let acceptor = TlsAcceptor { inner };
                let _ = acceptor.reload().await;
                // The symlinks may lead elsewhere now: follow them again.
                if let Some((watcher, paths, dirs)) = &mut watched {
                    let files = files.clone();
                    if let Ok(interest) =
                        tokio::task::spawn_blocking(move || Interest::of(&files)).await
                    {
                        watch_new_dirs(watcher, dirs, &interest.dirs);
                        *paths
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = interest.paths;
                    }
                }
            }
        });
        Ok(ReloadHandle { task: Some(task) })
    }
}

/// Most symlinks followed from a configured file to its contents.
const MAX_SYMLINK_HOPS: usize = 8;

/// What the watcher reacts to: the configured files, and the symlinks on the way from
/// each to its contents, as paths in the watched directories.
#[derive(Debug, Default, PartialEq, Eq)]
struct Interest {
    /// Paths whose change starts a reload.
    paths: HashSet<PathBuf>,
    /// Directories to watch (each holds some of `paths`).
    dirs: Vec<PathBuf>,
}

impl Interest {
    /// Follows each file's symlinks (blocking file I/O): `tls.crt -> ..data/tls.crt`
    /// with `..data -> ..2026_12_07_...` makes `tls.crt` and `..data` (whose swap is how
    /// Kubernetes updates a Secret volume) of interest, in the file's directory. A link
    /// to another directory makes that directory watched too.
    fn of(files: &[PathBuf]) -> Self {
        let cwd = std::env::current_dir().unwrap_or_default();
        let mut out = Self::default();
        for f in files {
            let mut cur = cwd.join(f);
            let mut watch_dir = true;
            for _ in 0..MAX_SYMLINK_HOPS {
                let Some(dir) = parent_dir(&cur) else { break };
                out.paths.insert(cur.clone());
                if watch_dir && !out.dirs.contains(&dir) {
                    out.dirs.push(dir.clone());
                }
                let is_link =
                    std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink());
                if !is_link {
                    break;
                }
                let Ok(target) = std::fs::read_link(&cur) else {
                    break;
                };
                let next = dir.join(target);
                // Symlinked directories on the way, inside this directory (`..data`):
                // their swap is seen here, and what is behind them is not watched (a
                // watch on it would stay on the directory swapped out).
                watch_dir = true;
                for a in next.ancestors().skip(1) {
                    if a == dir || !a.starts_with(&dir) {
                        break;
                    }
                    if std::fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink()) {
                        out.paths.insert(a.to_path_buf());
                        watch_dir = false;
                    }
                }
                cur = next;
            }
        }
        out
    }
}

/// The directory holding `path` (`.` for a bare name), or `None` for a root.
fn parent_dir(path: &Path) -> Option<PathBuf> {
    path.file_name()?;
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Some(p.to_path_buf()),
        _ => Some(PathBuf::from(".")),
    }
}

/// Adds watches for the directories of `wanted` not watched yet.
fn watch_new_dirs(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut Vec<PathBuf>,
    wanted: &[PathBuf],
) {
    use notify::{RecursiveMode, Watcher};
    for d in wanted {
        if !watched.contains(d) {
            match watcher.watch(d, RecursiveMode::NonRecursive) {
                Ok(()) => watched.push(d.clone()),
                Err(e) => {
                    tracing::debug!(dir = %d.display(), error = %e, "cannot watch a TLS file's directory; the periodic check remains")
                }
            }
        }
    }
}

/// Whether an open connection's client certificate chain still verifies with the client
/// trust (CA bundle, CRLs) of its [`TlsAcceptor`] now, from
/// [`TlsAcceptor::accept_checked`].
///
/// Cheap per request: the chain was verified at the handshake, and is verified again
/// (with the current verifier: CA, CRLs, validity dates) only after a reload that
/// changed the client trust, once per connection and reload. Once it has failed it
/// fails for good: the connection is to be closed. Cheap to clone; clones share the
/// result.
#[derive(Clone)]
pub struct ClientCertCheck {
    inner: Arc<CheckInner>,
}

struct CheckInner {
    acceptor: Arc<Inner>,
    chain: Vec<CertificateDer<'static>>,
    verified: Mutex<Verified>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verified {
    /// Verified with the verifier of this trust generation.
    Under(u64),
    /// Refused by a later verifier.
    Failed,
}

impl fmt::Debug for ClientCertCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertCheck")
            .field("failed", &self.has_failed())
            .finish_non_exhaustive()
    }
}

impl ClientCertCheck {
    /// `true` while the chain verifies with the current client trust. After a trust
    /// reload the first call verifies the chain again (one chain verification); later
    /// calls under the same trust read the result.
    pub fn passes(&self) -> bool {
        let current = self.inner.acceptor.current.load();
        let mut verified = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *verified {
            Verified::Failed => return false,
            Verified::Under(g) if g == current.generation => return true,
            Verified::Under(_) => {}
        }
        let result = match (&current.verifier, self.inner.chain.split_first()) {
            (Some(v), Some((leaf, rest))) => v
                .verify_client_cert(leaf, rest, UnixTime::now())
                .map(drop)
                .map_err(|e| e.to_string()),
            // No verifier to ask (a fixed configuration without one): the validity dates
            // are the accept loop's part.
            _ => Ok(()),
        };
        match result {
            Ok(()) => {
                *verified = Verified::Under(current.generation);
                true
            }
            Err(reason) => {
                tracing::debug!(
                    %reason,
                    "an open connection's client certificate no longer verifies after a trust reload"
                );
                *verified = Verified::Failed;
                false
            }
        }
    }

    /// `true` once [`passes`](Self::passes) has returned `false` (no verification here).
    pub fn has_failed(&self) -> bool {
        *self
            .inner
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == Verified::Failed
    }

    /// Resolves once the client trust is not the one the chain was last verified with
    /// (at once when it already is not, or when the check has failed); then call
    /// [`passes`](Self::passes).
    pub async fn trust_changed(&self) {
        let seen = match *self
            .inner
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Verified::Failed => return,
            Verified::Under(g) => g,
        };
        let mut rx = self.inner.acceptor.trust_changes.subscribe();
        // The sender lives in the acceptor this check holds: it is never dropped first.
        if rx.wait_for(|g| *g != seen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Verifies again, now, the client chain a resumed session carries from the handshake
/// that began it. A full handshake has just been verified by rustls.
fn recheck_resumed(
    conn: &ServerConnection,
    verifier: Option<&dyn ClientCertVerifier>,
) -> Result<(), String> {
    if conn.handshake_kind() != Some(HandshakeKind::Resumed) {
        return Ok(());
    }
    let Some((leaf, rest)) = conn.peer_certificates().and_then(|c| c.split_first()) else {
        return Ok(());
    };
    match verifier {
        Some(v) => v
            .verify_client_cert(leaf, rest, UnixTime::now())
            .map(drop)
            .map_err(|e| e.to_string()),
        None => match client_cert_expires_at(conn) {
            Some(end) if end > std::time::SystemTime::now() => Ok(()),
            _ => Err("certificate expired or not yet valid".to_owned()),
        },
    }
}

fn start_watcher(
    dirs: &[PathBuf],
    paths: Arc<Mutex<HashSet<PathBuf>>>,
    inner: std::sync::Weak<Inner>,
    tx: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, TlsError> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let ev = match res {
            Ok(ev) if !matches!(ev.kind, EventKind::Access(_)) => ev,
            Ok(_) => return,
            // An overflowed queue may have lost a change of ours: check.
            Err(_) => {
                let _ = tx.try_send(());
                return;
            }
        };
        let ours = ev.need_rescan() || {
            let paths = paths
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ev.paths.iter().any(|p| paths.contains(p))
        };
        if ours {
            // A full channel already holds a pending signal.
            let _ = tx.try_send(());
        } else if let Some(inner) = inner.upgrade() {
            inner
                .counts
                .watch_events_ignored
                .fetch_add(1, Ordering::Relaxed);
        }
    })
    .map_err(|e| TlsError::Watch {
        path: dirs.first().cloned().unwrap_or_default(),
        reason: e.to_string(),
    })?;
    for d in dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|e| TlsError::Watch {
                path: d.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(watcher)
}

/// Keeps the reloader of a [`TlsAcceptor`] running; dropping it stops reloading (the
/// acceptor keeps its current configuration).
#[derive(Debug)]
#[must_use = "dropping the handle stops reloading"]
pub struct ReloadHandle {
    task: Option<JoinHandle<()>>,
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// What keeps a started TLS configuration current: the file reloader, or (feature
/// `acme`) the ACME manager. Keep it alive as long as the server runs.
#[derive(Debug)]
#[must_use = "dropping it stops reloading / renewal"]
pub enum Background {
    /// Certificates from files, reloaded on change.
    Reloader(ReloadHandle),
    /// Certificates from ACME, renewed before expiry.
    #[cfg(feature = "acme")]
    Acme(crate::acme::AcmeManager),
}

impl Background {
    /// The ACME manager, when certificates come from ACME.
    #[cfg(feature = "acme")]
    pub fn acme(&self) -> Option<&crate::acme::AcmeManager> {
        match self {
            Self::Acme(m) => Some(m),
            Self::Reloader(_) => None,
        }
    }
}

/// The one call a server needs: validates `cfg` and returns the acceptor and what keeps
/// it current - a file reloader (watch + `rotationInterval`) for `certFile`/`keyFile`, or
/// the ACME manager for `autoCert` (feature `acme`; bind the listener first). Reads the
/// files (blocking I/O): call it at startup. Must be called within a tokio runtime.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg: mcp_tls::TlsConfig = serde_yaml_ng::from_str("certFile: tls.crt\nkeyFile: tls.key\n")?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// let (acceptor, _background) = mcp_tls::start(&cfg)?;
/// mcp_tls::Server::new(listener).tls(acceptor).serve(axum::Router::new()).await?;
/// # Ok(()) }
/// ```
pub fn start(cfg: &TlsConfig) -> Result<(TlsAcceptor, Background), TlsError> {
    cfg.validate()?;
    #[cfg(feature = "acme")]
    if cfg.uses_acme() {
        let (acceptor, manager) = crate::acme::AcmeManager::start(cfg)?;
        return Ok((acceptor, Background::Acme(manager)));
    }
    let acceptor = TlsAcceptor::from_config(cfg)?;
    let reloader = acceptor.spawn_reloader()?;
    Ok((acceptor, Background::Reloader(reloader)))
}
