//! TLS and mutual TLS for MCP servers and gateways, rotated without a restart.
//!
//! - [`TlsConfig`]: the seeds' `server.tls` section (`certFile`, `keyFile`,
//!   `minVersion`, `maxVersion`, `clientAuth`, `caFile`, `crlFiles`, `autoCert`,
//!   `rotationInterval`, `expiryWarning`) as a serde struct, validated when built: TLS 1.0
//!   and 1.1 are refused, Go's unverified client-auth modes are refused.
//! - [`TlsAcceptor`]: a rustls server configuration built from PEM files (PKCS#8,
//!   PKCS#1 and SEC1 keys; the key is checked against the certificate), TLS 1.2 and 1.3
//!   only, rustls's safe cipher suites with the `ring` provider (see [`build`]), ALPN
//!   `h2` and `http/1.1`; client certificates none / optional / required against a CA
//!   bundle with optional CRLs, verified again on session resumption (an expired or
//!   revoked certificate cannot come back through a ticket or session id); hot reload on
//!   file change and on a periodic check, swapped atomically, invalid files refused with
//!   a log line while the current configuration stays.
//! - [`Server`]: an accept loop for any tower or hyper service (axum's `Router`
//!   included) over TLS or plain TCP, HTTP/1.1 and HTTP/2, with a handshake timeout, a
//!   cap on concurrent connections and a graceful shutdown that drains. Every request
//!   gets the connection's [`mcp_core::PeerAddr`] and, over TLS, its
//!   [`mcp_core::TlsInfo`] (with the verified [`mcp_core::ClientCertIdentity`]: CN,
//!   subject, issuer, SAN DNS names and URIs including SPIFFE IDs, serial, SHA-256
//!   fingerprint) in its extensions. A connection ends when its client certificate
//!   chain expires ([`client_cert_expires_at`]), or when a reload of the client trust
//!   (CA bundle, CRLs) no longer admits it ([`ClientCertCheck`]).
//! - `acme` (cargo feature): certificates obtained and renewed from an ACME directory
//!   (Let's Encrypt) with tls-alpn-01 on the serving port, cached on disk.
//! - [`start`]: one call from a [`TlsConfig`] to an acceptor plus what keeps it current
//!   (the file reloader, or the ACME manager).
//!
//! testssl.sh finds no protocol or cipher weakness: run `crates/mcp-tls/scripts/testssl.sh`
//! (not part of `cargo test`; about a minute).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mcp_tls::{ClientAuth, Server, TlsAcceptor, TlsConfig};
//!
//! let cfg = TlsConfig::new("/etc/mcp/tls/tls.crt", "/etc/mcp/tls/tls.key")
//!     .client_auth(ClientAuth::Required, "/etc/mcp/tls/ca.crt");
//! let acceptor = TlsAcceptor::from_config(&cfg)?;
//! let _reloader = acceptor.spawn_reloader()?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! Server::new(listener).tls(acceptor).serve(axum::Router::new()).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod acceptor;
#[cfg(feature = "acme")]
pub mod acme;
pub mod build;
pub mod config;
pub mod error;
mod hello;
pub mod identity;
pub mod serve;

pub use acceptor::{
    ACME_TLS_ALPN, Background, ClientCertCheck, ReloadHandle, ReloadOutcome, TlsAcceptor, TlsStats,
    start,
};
pub use build::{ALPN_PROTOCOLS, ExpiryStatus, expiry_status, provider};
pub use config::{
    AutoCertConfig, ClientAuth, DEFAULT_CLIENT_MEMORY_BYTES, DEFAULT_CONNECTION_MEMORY_BYTES,
    MAX_CONNECTION_MEMORY_BYTES, MAX_REFUSAL_DRAIN_BYTES, MAX_REFUSAL_DRAIN_TIMEOUT,
    MIN_CONNECTION_MEMORY_BYTES, ServerOptions, TlsConfig, TlsVersion, UnverifiedClientAuth,
};
pub use error::{ConfigError, TlsError};
pub use identity::{client_cert_expires_at, identity_from_der, tls_info};
pub use serve::{
    ConnectionInfo, ConnectionLimit, ConnectionStats, MemoryBudgetExceeded, RequestBody, Server,
    serve, serve_plain,
};
