//! [`TlsAcceptor`]: the current rustls configuration behind an atomic swap, the TLS
//! handshake with its [`TlsInfo`], and hot reload of the files.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mcp_core::TlsInfo;
use rustls::server::danger::ClientCertVerifier;
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::build::{Built, Resumption, Snapshot, build_server_config, check_expiry};
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
}

struct Inner {
    current: ArcSwap<Current>,
    source: Option<Source>,
    /// The trust generation of the current configuration, sent on every change of it.
    trust_changes: watch::Sender<u64>,
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
        let Built { config, verifier } = build_server_config(cfg, &snap, &resumption)?;
        tracing::info!(
            cert = %snap.cert.0.display(),
            client_auth = cfg.client_auth.as_str(),
            min = %cfg.min_version,
            max = %cfg.max_version,
            "TLS configuration loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(Current {
                    config,
                    verifier,
                    generation: 0,
                }),
                trust_changes: watch::Sender::new(0),
                source: Some(Source {
                    cfg: cfg.clone(),
                    state: Mutex::new(SourceState {
                        identity: snap.identity_digest(),
                        trust: snap.trust_digest(),
                        resumption,
                        last_failed: None,
                    }),
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
            }),
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
    pub fn reload_blocking(&self) -> Result<ReloadOutcome, TlsError> {
        let Some(source) = &self.inner.source else {
            return Ok(ReloadOutcome::Unchanged);
        };
        let mut state = match source.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let snap = match Snapshot::read(&source.cfg) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "TLS reload refused; the current certificate stays");
                return Err(e);
            }
        };
        let identity = snap.identity_digest();
        let trust = snap.trust_digest();
        if identity == state.identity && trust == state.trust {
            // Unchanged files: still warn when the certificate nears expiry.
            if let Ok(chain) =
                crate::build::parse_cert_chain("server.tls.certFile", &snap.cert.0, &snap.cert.1)
                && let Some(leaf) = chain.first()
                && let Err(e) = check_expiry(&snap.cert.0, leaf, source.cfg.expiry_warning)
            {
                tracing::error!(error = %e, "the TLS certificate in use has expired");
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
            Ok(Built { config, verifier }) => {
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
                tracing::info!(cert = %snap.cert.0.display(), "TLS configuration reloaded");
                Ok(ReloadOutcome::Reloaded)
            }
            Err(e) => {
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

    /// Starts reloading on file changes (the directories of the files are watched, so
    /// replacement by rename - editors, cert-manager, Kubernetes secret volumes - is
    /// seen) and on a periodic check every `rotationInterval`. Must be called within a
    /// tokio runtime. Reloading stops when the returned handle is dropped.
    pub fn spawn_reloader(&self) -> Result<ReloadHandle, TlsError> {
        self.spawn_reloader_with(Duration::from_millis(200))
    }

    /// [`spawn_reloader`](Self::spawn_reloader) with a chosen debounce: after a change,
    /// wait until the directory has been quiet this long before reloading.
    pub fn spawn_reloader_with(&self, debounce: Duration) -> Result<ReloadHandle, TlsError> {
        let Some(source) = &self.inner.source else {
            return Ok(ReloadHandle { task: None });
        };
        let cfg = &source.cfg;
        let period = cfg.effective_rotation_interval();
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let watcher = if cfg.watch {
            let mut dirs: Vec<PathBuf> = Vec::new();
            let files = cfg
                .cert_file
                .iter()
                .chain(cfg.key_file.iter())
                .chain(cfg.ca_file.iter())
                .chain(cfg.crl_files.iter());
            for f in files {
                let dir = match f.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            Some(start_watcher(&dirs, tx)?)
        } else {
            None
        };
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let _watcher = watcher;
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
                            // Debounce: wait for a quiet directory.
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
            }
        });
        Ok(ReloadHandle { task: Some(task) })
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
    tx: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, TlsError> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, EventKind::Access(_))
        {
            // A full channel already holds a pending signal.
            let _ = tx.try_send(());
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
