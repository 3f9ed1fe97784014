//! Certificates obtained and renewed automatically from an ACME directory (RFC 8555),
//! such as Let's Encrypt: the seeds' `autoCert`. Cargo feature `acme`.
//!
//! Validation is tls-alpn-01 (RFC 8737) on the serving port itself: while an order is
//! pending, a ClientHello that offers ALPN `acme-tls/1` for one of the configured hosts
//! gets the challenge certificate, and the connection is closed after the handshake; no
//! port 80 is needed. The ACME account key, the certificate and its key are kept in
//! `cacheDir` (keys with mode 0600), so a restart reuses them instead of ordering again.
//! A background task renews the certificate when less than `renewBefore` (30 days by
//! default) is left, retrying with backoff on failure; the new certificate is swapped in
//! atomically for new connections.
//!
//! Client certificate settings (`clientAuth`, `caFile`, `crlFiles`) apply as with files,
//! read once at start.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mcp_tls::{AutoCertConfig, Server, TlsConfig, acme::AcmeManager};
//!
//! let cfg: TlsConfig = serde_yaml_ng::from_str(
//!     "autoCert:\n  enabled: true\n  host: mcp.example.com\n  email: ops@example.com\n  cacheDir: /var/lib/mcp/acme\n",
//! )?;
//! // Bind first: the ACME server validates by connecting to this port.
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! let (acceptor, manager) = AcmeManager::start(&cfg)?;
//! Server::new(listener).tls(acceptor).serve(axum::Router::new()).await?;
//! # drop(manager);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acceptor::{ACME_TLS_ALPN, TlsAcceptor};
use crate::build::{
    ALPN_PROTOCOLS, ExpiryStatus, certified_key, expiry_status, now_unix, provider, read_file,
    server_builder,
};
use crate::config::{AutoCertConfig, TlsConfig};
use crate::error::TlsError;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

fn acme_err(what: &str, e: impl fmt::Display) -> TlsError {
    TlsError::Acme(format!("{what}: {e}"))
}

/// Serves the current ACME certificate, or a tls-alpn-01 challenge certificate to the
/// ACME server's validation connections.
pub struct AcmeResolver {
    current: ArcSwapOption<CertifiedKey>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    challenge_hellos: AtomicU64,
}

impl fmt::Debug for AcmeResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeResolver")
            .field("has_certificate", &self.current.load().is_some())
            .finish_non_exhaustive()
    }
}

impl AcmeResolver {
    fn new() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            challenges: Mutex::new(HashMap::new()),
            challenge_hellos: AtomicU64::new(0),
        }
    }

    fn set_challenge(&self, host: &str, key: Option<Arc<CertifiedKey>>) {
        let mut map = match self.challenges.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        match key {
            Some(k) => {
                map.insert(host.to_ascii_lowercase(), k);
            }
            None => {
                map.remove(&host.to_ascii_lowercase());
            }
        }
    }
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let is_acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if is_acme {
            // RFC 8737: only the challenge certificate, and only for a pending host.
            let name = hello.server_name()?.to_ascii_lowercase();
            let map = match self.challenges.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let found = map.get(&name).cloned();
            if found.is_some() {
                self.challenge_hellos.fetch_add(1, Ordering::Relaxed);
            }
            return found;
        }
        self.current.load_full()
    }
}

struct State {
    auto: AutoCertConfig,
    hosts: Vec<String>,
    resolver: Arc<AcmeResolver>,
    ready: watch::Sender<bool>,
    not_after: Mutex<Option<i64>>,
    order_lock: tokio::sync::Mutex<()>,
}

/// Obtains and renews the certificate; keep it alive (dropping it stops renewal).
pub struct AcmeManager {
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeManager")
            .field("hosts", &self.state.hosts)
            .field("ready", &*self.state.ready.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for AcmeManager {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl AcmeManager {
    /// Validates `cfg` (which must have `autoCert.enabled`), builds an acceptor whose
    /// certificate comes from ACME, and starts the background task that loads the cached
    /// certificate or orders one, then renews it. Bind the listener before calling this:
    /// the ACME server validates by connecting to it. Until the first certificate is
    /// there, handshakes (other than validation) fail; see [`ready`](Self::ready).
    /// Must be called within a tokio runtime.
    pub fn start(cfg: &TlsConfig) -> Result<(TlsAcceptor, AcmeManager), TlsError> {
        let (acceptor, mut manager) = Self::new(cfg)?;
        let state = manager.state.clone();
        manager.task = Some(tokio::spawn(async move { run(state).await }));
        Ok((acceptor, manager))
    }

    /// Like [`start`](Self::start) without the background task: call
    /// [`renew_now`](Self::renew_now) (or [`load_cached`](Self::load_cached)) yourself.
    pub fn new(cfg: &TlsConfig) -> Result<(TlsAcceptor, AcmeManager), TlsError> {
        cfg.validate()?;
        let auto = cfg.auto_cert.clone().filter(|a| a.enabled).ok_or_else(|| {
            crate::ConfigError::new("server.tls.autoCert.enabled", "must be true for ACME")
        })?;
        let ca = match &cfg.ca_file {
            Some(p) => Some((p.clone(), read_file("server.tls.caFile", p)?)),
            None => None,
        };
        let mut crls = Vec::new();
        for p in &cfg.crl_files {
            crls.push((p.clone(), read_file("server.tls.crlFiles", p)?));
        }
        let resolver = Arc::new(AcmeResolver::new());
        let (builder, verifier) = server_builder(cfg, ca.as_ref(), &crls)?;
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        config.ignore_client_order = true;
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        let acceptor = match verifier {
            Some(v) => TlsAcceptor::from_server_config_with_verifier(Arc::new(config), v),
            None => TlsAcceptor::from_server_config(Arc::new(config)),
        };
        let (ready, _) = watch::channel(false);
        let state = Arc::new(State {
            hosts: auto.hosts(),
            auto,
            resolver,
            ready,
            not_after: Mutex::new(None),
            order_lock: tokio::sync::Mutex::new(()),
        });
        Ok((acceptor, AcmeManager { state, task: None }))
    }

    /// Waits until a certificate is being served.
    pub async fn ready(&self) {
        let mut rx = self.state.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// When the certificate in use expires (seconds since the Unix epoch).
    pub fn not_after(&self) -> Option<i64> {
        *lock(&self.state.not_after)
    }

    /// How many tls-alpn-01 validation handshakes were answered with a challenge
    /// certificate (the ACME server's validation connections).
    pub fn challenge_handshakes(&self) -> u64 {
        self.state.resolver.challenge_hellos.load(Ordering::Relaxed)
    }

    /// Loads the cached certificate if it is there, valid and not due for renewal.
    /// Returns whether it was installed.
    pub async fn load_cached(&self) -> Result<bool, TlsError> {
        load_cached(&self.state).await
    }

    /// Orders a new certificate now (account from the cache or created), serves it and
    /// caches it.
    pub async fn renew_now(&self) -> Result<(), TlsError> {
        obtain(&self.state).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn run(state: Arc<State>) {
    match load_cached(&state).await {
        Ok(true) => {}
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "ACME cache unusable; ordering a new certificate"),
    }
    let mut backoff = Duration::from_secs(60);
    loop {
        let due_in = renewal_delay(*lock(&state.not_after), state.auto.renew_before, now_unix());
        if !due_in.is_zero() {
            // Re-check at least daily (clock changes, suspended machines).
            tokio::time::sleep(due_in.min(Duration::from_secs(86_400))).await;
            continue;
        }
        match obtain(&state).await {
            Ok(()) => backoff = Duration::from_secs(60),
            Err(e) => {
                tracing::error!(error = %e, retry_in_s = backoff.as_secs(), "ACME order failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

/// How long until the certificate is due for renewal: zero when there is none yet or
/// when less than `renew_before` is left.
fn renewal_delay(not_after: Option<i64>, renew_before: Duration, now: i64) -> Duration {
    match not_after {
        None => Duration::ZERO,
        Some(na) => {
            let renew_at = na.saturating_sub(renew_before.as_secs() as i64);
            Duration::from_secs(renew_at.saturating_sub(now).max(0) as u64)
        }
    }
}

fn cache_paths(state: &State) -> (PathBuf, PathBuf) {
    let name = state.hosts.join("+");
    let dir = &state.auto.cache_dir;
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

fn directory_url(auto: &AutoCertConfig) -> String {
    auto.directory_url
        .clone()
        .unwrap_or_else(|| LETS_ENCRYPT_PRODUCTION.to_string())
}

fn account_path(auto: &AutoCertConfig) -> PathBuf {
    let digest = Sha256::digest(directory_url(auto).as_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    auto.cache_dir.join(format!("account-{tag}.json"))
}

fn install(state: &State, cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<(), TlsError> {
    let (cert_path, key_path) = cache_paths(state);
    let ck = certified_key(&cert_path, cert_pem, &key_path, key_pem, &provider())?;
    let leaf = ck
        .cert
        .first()
        .cloned()
        .ok_or_else(|| acme_err("certificate", "empty chain"))?;
    let (_, parsed) = {
        use x509_parser::prelude::FromDer;
        x509_parser::prelude::X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| acme_err("certificate", e))?
    };
    let not_after = parsed.validity().not_after.timestamp();
    // Every configured host must be covered.
    let names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::prelude::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if let Some(missing) = state.hosts.iter().find(|h| !names.contains(h)) {
        return Err(acme_err("certificate", format!("does not cover {missing}")));
    }
    if let Some(ExpiryStatus::Expired { not_after }) =
        expiry_status(leaf.as_ref(), Duration::ZERO, now_unix())
    {
        return Err(TlsError::Expired {
            path: cert_path,
            not_after,
        });
    }
    state.resolver.current.store(Some(Arc::new(ck)));
    *lock(&state.not_after) = Some(not_after);
    state.ready.send_replace(true);
    tracing::info!(hosts = ?state.hosts, origin, not_after, "ACME certificate installed");
    Ok(())
}

async fn load_cached(state: &State) -> Result<bool, TlsError> {
    let (cert_path, key_path) = cache_paths(state);
    let (cert, key) = match (
        tokio::fs::read(&cert_path).await,
        tokio::fs::read(&key_path).await,
    ) {
        (Ok(c), Ok(k)) => (c, k),
        _ => return Ok(false),
    };
    let chain = crate::build::parse_cert_chain("server.tls.autoCert.cacheDir", &cert_path, &cert)?;
    let leaf = chain
        .first()
        .ok_or_else(|| acme_err("cache", "empty chain"))?;
    match expiry_status(leaf.as_ref(), state.auto.renew_before, now_unix()) {
        Some(ExpiryStatus::Ok { .. }) => {
            install(state, &cert, &key, "cache")?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

async fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let io = |e: std::io::Error| TlsError::Io {
        key: "server.tls.autoCert.cacheDir",
        path: path.to_owned(),
        source: e,
    };
    let tmp = path.with_extension("tmp");
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    {
        use tokio::io::AsyncWriteExt;
        let mut f = opts.open(&tmp).await.map_err(io)?;
        f.write_all(data).await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
    }
    tokio::fs::rename(&tmp, path).await.map_err(io)
}

async fn account(state: &State) -> Result<Account, TlsError> {
    // instant-acme's HTTP client takes rustls's process-wide provider: make it ring
    // unless the application chose one already (then this is a no-op).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let auto = &state.auto;
    let builder = || match &auto.directory_ca_file {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| acme_err("directory CA", e)),
        None => Account::builder().map_err(|e| acme_err("HTTP client", e)),
    };
    let path = account_path(auto);
    if let Ok(bytes) = tokio::fs::read(&path).await {
        match serde_json::from_slice::<AccountCredentials>(&bytes) {
            Ok(creds) => match builder()?.from_credentials(creds).await {
                Ok(acc) => return Ok(acc),
                Err(e) => tracing::warn!(error = %e, "cached ACME account unusable; creating one"),
            },
            Err(_) => {
                tracing::warn!(path = %path.display(), "cached ACME account unreadable; creating one")
            }
        }
    }
    let contact = auto.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (acc, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory_url(auto),
            None,
        )
        .await
        .map_err(|e| acme_err("account creation", e))?;
    tokio::fs::create_dir_all(&auto.cache_dir)
        .await
        .map_err(|e| TlsError::Io {
            key: "server.tls.autoCert.cacheDir",
            path: auto.cache_dir.clone(),
            source: e,
        })?;
    let json = serde_json::to_vec(&creds).map_err(|e| acme_err("account", e))?;
    write_private(&path, &json).await?;
    Ok(acc)
}

/// The self-signed tls-alpn-01 certificate for `host` carrying the key authorization
/// digest (RFC 8737 section 3).
fn challenge_key(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    if digest.len() != 32 {
        return Err(acme_err(
            "challenge",
            "key authorization digest is not SHA-256",
        ));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| acme_err("challenge key", e))?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
        .map_err(|e| acme_err("challenge certificate", e))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params
        .self_signed(&key)
        .map_err(|e| acme_err("challenge certificate", e))?;
    let signing = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| acme_err("challenge key", e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    )))
}

async fn obtain(state: &State) -> Result<(), TlsError> {
    let _one_at_a_time = state.order_lock.lock().await;
    let account = account(state).await?;
    let identifiers: Vec<Identifier> = state.hosts.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| acme_err("new order", e))?;
    let mut pending_hosts = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| acme_err("authorization", e))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(acme_err("authorization", format!("{other:?}"))),
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| acme_err("authorization", "no tls-alpn-01 challenge offered"))?;
            let host = challenge.identifier().to_string();
            let digest = challenge.key_authorization().digest();
            state
                .resolver
                .set_challenge(&host, Some(challenge_key(&host, digest.as_ref())?));
            pending_hosts.push(host);
            challenge
                .set_ready()
                .await
                .map_err(|e| acme_err("challenge", e))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(120));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| acme_err("order", e))?;
        if status != OrderStatus::Ready {
            return Err(acme_err("order", format!("not ready: {status:?}")));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| acme_err("finalize", e))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| acme_err("certificate", e))?;
        Ok((chain_pem, key_pem))
    }
    .await;
    for h in &pending_hosts {
        state.resolver.set_challenge(h, None);
    }
    let (chain_pem, key_pem) = result?;
    install(state, chain_pem.as_bytes(), key_pem.as_bytes(), "order")?;
    let (cert_path, key_path) = cache_paths(state);
    write_private(&key_path, key_pem.as_bytes()).await?;
    write_private(&cert_path, chain_pem.as_bytes()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_when_less_than_renew_before_is_left() {
        let day = 86_400;
        let before = Duration::from_secs(30 * day as u64);
        assert_eq!(renewal_delay(None, before, 0), Duration::ZERO);
        assert_eq!(
            renewal_delay(Some(90 * day), before, 0),
            Duration::from_secs(60 * day as u64)
        );
        assert_eq!(
            renewal_delay(Some(90 * day), before, 61 * day),
            Duration::ZERO
        );
        assert_eq!(renewal_delay(Some(10), before, 100), Duration::ZERO);
    }

    #[test]
    fn resolver_serves_challenges_only_for_pending_hosts() {
        let r = AcmeResolver::new();
        assert!(r.challenges.lock().unwrap().is_empty());
        let k = challenge_key("a.example", &[7u8; 32]).unwrap();
        r.set_challenge("A.example", Some(k));
        assert!(r.challenges.lock().unwrap().contains_key("a.example"));
        r.set_challenge("a.example", None);
        assert!(r.challenges.lock().unwrap().is_empty());
        assert!(challenge_key("a.example", &[7u8; 31]).is_err());
    }

    #[test]
    fn account_file_depends_on_the_directory() {
        let mut a = AutoCertConfig {
            enabled: true,
            host: "a.example".into(),
            email: None,
            cache_dir: "/c".into(),
            directory_url: None,
            directory_ca_file: None,
            renew_before: Duration::from_secs(1),
        };
        let prod = account_path(&a);
        a.directory_url = Some("https://acme-staging.example/dir".into());
        assert_ne!(prod, account_path(&a));
    }
}
