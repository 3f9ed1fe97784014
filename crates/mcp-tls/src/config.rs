//! The serde configuration: [`TlsConfig`] (the seeds' `server.tls` section) and
//! [`ServerOptions`] (the accept loop's limits).
//!
//! ```
//! use mcp_tls::{ClientAuth, TlsConfig, TlsVersion};
//!
//! let yaml = r#"
//! certFile: /etc/mcp/tls/server.pem
//! keyFile: /etc/mcp/tls/server.key
//! minVersion: TLS1.2
//! maxVersion: TLS1.3
//! clientAuth: RequireAndVerifyClientCert
//! caFile: /etc/mcp/tls/ca.pem
//! rotationInterval: 48
//! "#;
//! let cfg: TlsConfig = serde_yaml_ng::from_str(yaml).unwrap();
//! assert_eq!(cfg.client_auth, ClientAuth::Required);
//! assert_eq!(cfg.min_version, TlsVersion::Tls12);
//! assert_eq!(cfg.rotation_interval, Some(std::time::Duration::from_secs(48 * 3600)));
//! cfg.validate().unwrap();
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;

/// Default window before expiry in which a certificate draws a warning: 30 days.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default period of the reload check that backs up file watching: 5 minutes.
pub const DEFAULT_ROTATION_INTERVAL: Duration = Duration::from_secs(300);

/// A TLS protocol version as written in configuration (`"TLS1.2"`, `"TLS1.3"`).
///
/// `TLS1.0` and `TLS1.1` parse, so that a configuration asking for them is refused by
/// [`TlsConfig::validate`] with an error naming the key, rather than by a parse error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// TLS 1.0: always refused.
    Tls10,
    /// TLS 1.1: always refused.
    Tls11,
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// The configuration spelling (`"TLS1.2"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls10 => "TLS1.0",
            Self::Tls11 => "TLS1.1",
            Self::Tls12 => "TLS1.2",
            Self::Tls13 => "TLS1.3",
        }
    }

    /// Whether this version is allowed at all (1.2 and 1.3).
    pub fn is_supported(self) -> bool {
        self >= Self::Tls12
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown TLS version string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TLS version (expected TLS1.2 or TLS1.3)")]
pub struct ParseVersionError;

impl FromStr for TlsVersion {
    type Err = ParseVersionError;

    /// Accepts `TLS1.2`, `TLSv1.2`, `TLS12`, `1.2`, `VersionTLS12` (Go), case-insensitively;
    /// the same for 1.0, 1.1 and 1.3.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let t = t
            .strip_prefix("versiontls")
            .or_else(|| t.strip_prefix("tlsv"))
            .or_else(|| t.strip_prefix("tls"))
            .unwrap_or(&t)
            .trim_start_matches([' ', '_', '-']);
        match t {
            "1.0" | "10" | "1_0" => Ok(Self::Tls10),
            "1.1" | "11" | "1_1" => Ok(Self::Tls11),
            "1.2" | "12" | "1_2" => Ok(Self::Tls12),
            "1.3" | "13" | "1_3" => Ok(Self::Tls13),
            _ => Err(ParseVersionError),
        }
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether and how clients must present a certificate.
///
/// Parses the Go `tls.ClientAuthType` names the seeds use as well as the short names:
///
/// | configuration | meaning |
/// | --- | --- |
/// | `none`, `NoClientCert` | no client certificate is asked for |
/// | `optional`, `VerifyClientCertIfGiven` | asked for; if one is sent it must verify |
/// | `required`, `RequireAndVerifyClientCert` | a certificate that verifies is required |
/// | `RequestClientCert`, `RequireAnyClientCert` | **refused**: Go accepts the certificate without verifying it, which would let anyone claim any identity |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientAuth {
    /// No client certificate.
    #[default]
    None,
    /// A client certificate is requested and verified when sent.
    Optional,
    /// A verified client certificate is required.
    Required,
    /// Go's `RequestClientCert` / `RequireAnyClientCert`: kept only to be refused with a
    /// precise error by [`TlsConfig::validate`].
    Unverified(UnverifiedClientAuth),
}

/// The Go client-auth modes that do not verify the certificate (always refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnverifiedClientAuth {
    /// Go's `RequestClientCert`.
    RequestClientCert,
    /// Go's `RequireAnyClientCert`.
    RequireAnyClientCert,
}

impl ClientAuth {
    /// The short configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Optional => "optional",
            Self::Required => "required",
            Self::Unverified(UnverifiedClientAuth::RequestClientCert) => "RequestClientCert",
            Self::Unverified(UnverifiedClientAuth::RequireAnyClientCert) => "RequireAnyClientCert",
        }
    }
}

/// An unknown client-auth mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown clientAuth (expected none, optional, required, NoClientCert, \
     VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
)]
pub struct ParseClientAuthError;

impl FromStr for ClientAuth {
    type Err = ParseClientAuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '_' | '-' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        match t.as_str() {
            "none" | "noclientcert" | "off" | "disabled" => Ok(Self::None),
            "optional" | "verifyclientcertifgiven" | "request" => Ok(Self::Optional),
            "required" | "requireandverifyclientcert" | "require" | "mtls" => Ok(Self::Required),
            "requestclientcert" => Ok(Self::Unverified(UnverifiedClientAuth::RequestClientCert)),
            "requireanyclientcert" => {
                Ok(Self::Unverified(UnverifiedClientAuth::RequireAnyClientCert))
            }
            _ => Err(ParseClientAuthError),
        }
    }
}

impl Serialize for ClientAuth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ClientAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Automatic certificates from an ACME directory (the seeds' `autoCert`, Let's Encrypt).
/// Needs the `acme` cargo feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoCertConfig {
    /// Whether certificates are obtained automatically.
    #[serde(default)]
    pub enabled: bool,
    /// The host name(s) to obtain a certificate for (`host` in the seeds; several
    /// separated by commas).
    #[serde(default)]
    pub host: String,
    /// Contact e-mail for the ACME account (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Where the account key, certificate and key are kept between restarts.
    #[serde(default)]
    pub cache_dir: PathBuf,
    /// The ACME directory URL; Let's Encrypt production when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_url: Option<String>,
    /// A PEM file with the root CA that the ACME directory's HTTPS certificate chains to,
    /// for private or test ACME servers; the system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca_file: Option<PathBuf>,
    /// Renew when the certificate has less than this left (default 30 days).
    #[serde(
        default = "default_renew_before",
        deserialize_with = "de_days_or_duration",
        serialize_with = "ser_duration"
    )]
    pub renew_before: Duration,
}

fn default_renew_before() -> Duration {
    DEFAULT_EXPIRY_WARNING
}

impl AutoCertConfig {
    /// The host names from `host`, trimmed, empty entries dropped.
    pub fn hosts(&self) -> Vec<String> {
        self.host
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
            .collect()
    }
}

/// The TLS section of the gateway's configuration (`server.tls`), with the seeds' key
/// names. Validate with [`TlsConfig::validate`]; build an acceptor with
/// [`TlsAcceptor::from_config`](crate::TlsAcceptor::from_config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Whether TLS is on (the fetchfy seed's `tls.enabled`); default true. Read by the
    /// caller to choose between TLS and plain TCP (see
    /// [`Server::maybe_tls`](crate::Server::maybe_tls)); building an acceptor ignores it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// PEM certificate chain, end-entity first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Lowest protocol version (`TLS1.2` default; never below).
    #[serde(default = "default_min")]
    pub min_version: TlsVersion,
    /// Highest protocol version (`TLS1.3` default).
    #[serde(default = "default_max")]
    pub max_version: TlsVersion,
    /// Client certificates: none / optional / required (Go names accepted).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate revocation lists checked for client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_files: Vec<PathBuf>,
    /// Automatic certificates (ACME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_cert: Option<AutoCertConfig>,
    /// Period of the reload check that backs up file watching. A bare number is hours
    /// (as in the fetchfy seed's `rotationInterval: 48`); strings take a unit
    /// (`"90s"`, `"5m"`, `"48h"`, `"2d"`). Default 5 minutes.
    #[serde(
        default,
        deserialize_with = "de_opt_hours_or_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub rotation_interval: Option<Duration>,
    /// Warn when the certificate expires within this window. A bare number is days;
    /// default 30 days.
    #[serde(
        default = "default_expiry_warning",
        deserialize_with = "de_days_or_duration",
        serialize_with = "ser_duration"
    )]
    pub expiry_warning: Duration,
    /// Whether to watch the files for changes (default true); the periodic check runs
    /// either way.
    #[serde(default = "default_true")]
    pub watch: bool,
}

fn default_true() -> bool {
    true
}
fn default_min() -> TlsVersion {
    TlsVersion::Tls12
}
fn default_max() -> TlsVersion {
    TlsVersion::Tls13
}
fn default_expiry_warning() -> Duration {
    DEFAULT_EXPIRY_WARNING
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_file: None,
            key_file: None,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            client_auth: ClientAuth::None,
            ca_file: None,
            crl_files: Vec::new(),
            auto_cert: None,
            rotation_interval: None,
            expiry_warning: DEFAULT_EXPIRY_WARNING,
            watch: true,
        }
    }
}

impl TlsConfig {
    /// A configuration serving the certificate chain and key in these PEM files.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: Some(cert_file.into()),
            key_file: Some(key_file.into()),
            ..Self::default()
        }
    }

    /// Sets the lowest and highest protocol versions.
    pub fn versions(mut self, min: TlsVersion, max: TlsVersion) -> Self {
        self.min_version = min;
        self.max_version = max;
        self
    }

    /// Requires (or requests) client certificates issued by the CAs in `ca_file`.
    pub fn client_auth(mut self, mode: ClientAuth, ca_file: impl Into<PathBuf>) -> Self {
        self.client_auth = mode;
        self.ca_file = Some(ca_file.into());
        self
    }

    /// Adds a PEM CRL file checked for client certificates.
    pub fn crl_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.crl_files.push(path.into());
        self
    }

    /// Sets the period of the reload check.
    pub fn rotation_interval(mut self, every: Duration) -> Self {
        self.rotation_interval = Some(every);
        self
    }

    /// Sets the near-expiry warning window.
    pub fn expiry_warning(mut self, window: Duration) -> Self {
        self.expiry_warning = window;
        self
    }

    /// Turns file watching on or off (the periodic check runs either way).
    pub fn watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    /// The period of the reload check (configured or default).
    pub fn effective_rotation_interval(&self) -> Duration {
        self.rotation_interval.unwrap_or(DEFAULT_ROTATION_INTERVAL)
    }

    /// Whether certificates come from ACME rather than files.
    pub fn uses_acme(&self) -> bool {
        self.auto_cert.as_ref().is_some_and(|a| a.enabled)
    }

    /// Checks every rule that does not need the files. Building an acceptor runs this
    /// first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("server.tls.minVersion", self.min_version),
            ("server.tls.maxVersion", self.max_version),
        ] {
            if !v.is_supported() {
                return Err(ConfigError::new(
                    key,
                    format!("{v} is refused: only TLS1.2 and TLS1.3 are allowed"),
                ));
            }
        }
        if self.min_version > self.max_version {
            return Err(ConfigError::new(
                "server.tls.minVersion",
                format!(
                    "{} is above maxVersion {}",
                    self.min_version, self.max_version
                ),
            ));
        }
        match self.client_auth {
            ClientAuth::Unverified(m) => {
                return Err(ConfigError::new(
                    "server.tls.clientAuth",
                    format!(
                        "{} accepts client certificates without verifying them; use \
                         RequireAndVerifyClientCert (required) or VerifyClientCertIfGiven \
                         (optional) with caFile",
                        ClientAuth::Unverified(m).as_str()
                    ),
                ));
            }
            ClientAuth::Optional | ClientAuth::Required if self.ca_file.is_none() => {
                return Err(ConfigError::new(
                    "server.tls.caFile",
                    format!("required when clientAuth is {}", self.client_auth.as_str()),
                ));
            }
            ClientAuth::None if self.ca_file.is_some() => {
                return Err(ConfigError::new(
                    "server.tls.caFile",
                    "set while clientAuth is none: client certificates would not be \
                     checked; set clientAuth to RequireAndVerifyClientCert or \
                     VerifyClientCertIfGiven, or remove caFile",
                ));
            }
            _ => {}
        }
        if !self.crl_files.is_empty() && self.ca_file.is_none() {
            return Err(ConfigError::new(
                "server.tls.crlFiles",
                "needs caFile and client authentication",
            ));
        }
        if let Some(every) = self.rotation_interval
            && every < Duration::from_secs(1)
        {
            return Err(ConfigError::new(
                "server.tls.rotationInterval",
                "must be at least 1 second",
            ));
        }
        if self.uses_acme() {
            let Some(auto) = &self.auto_cert else {
                return Err(ConfigError::new("server.tls.autoCert", "missing"));
            };
            if !cfg!(feature = "acme") {
                return Err(ConfigError::new(
                    "server.tls.autoCert.enabled",
                    "this build has no ACME support (cargo feature `acme` of mcp-tls)",
                ));
            }
            if self.cert_file.is_some() || self.key_file.is_some() {
                return Err(ConfigError::new(
                    "server.tls.autoCert.enabled",
                    "cannot be combined with certFile/keyFile: choose one source",
                ));
            }
            let hosts = auto.hosts();
            if hosts.is_empty() {
                return Err(ConfigError::new(
                    "server.tls.autoCert.host",
                    "required when autoCert is enabled",
                ));
            }
            for h in &hosts {
                if rustls_pki_types::DnsName::try_from(h.as_str()).is_err()
                    || h.parse::<std::net::IpAddr>().is_ok()
                {
                    return Err(ConfigError::new(
                        "server.tls.autoCert.host",
                        "must be DNS names separated by commas",
                    ));
                }
            }
            if auto.cache_dir.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    "server.tls.autoCert.cacheDir",
                    "required when autoCert is enabled",
                ));
            }
            if let Some(url) = &auto.directory_url
                && !url.starts_with("https://")
            {
                return Err(ConfigError::new(
                    "server.tls.autoCert.directoryUrl",
                    "must be an https:// URL",
                ));
            }
        } else {
            match (&self.cert_file, &self.key_file) {
                (Some(_), Some(_)) => {}
                (None, _) => {
                    return Err(ConfigError::new(
                        "server.tls.certFile",
                        "required (or enable autoCert)",
                    ));
                }
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        "server.tls.keyFile",
                        "required with certFile",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Limits of the accept loop, as configuration (`server.*` keys the gateway may embed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerOptions {
    /// Time allowed for the TLS handshake (default `"10s"`; a bare number is seconds).
    #[serde(
        default = "default_handshake_timeout",
        deserialize_with = "de_secs_or_duration",
        serialize_with = "ser_duration"
    )]
    pub handshake_timeout: Duration,
    /// Most connections open at once; beyond it, one accepted connection waits for a
    /// place and the rest wait in the listen backlog (default 10000).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long graceful shutdown waits for open connections to finish (default `"30s"`).
    #[serde(
        default = "default_drain_timeout",
        deserialize_with = "de_secs_or_duration",
        serialize_with = "ser_duration"
    )]
    pub drain_timeout: Duration,
    /// How long a connection may stay open with no request in progress (default
    /// `"30s"`): a new connection that has not sent a complete request head (counted after
    /// the TLS handshake), or a kept-alive one after its last response. HTTP/1.1 closes;
    /// HTTP/2 gets a GOAWAY. A request whose head is in, whose response is still being
    /// produced or streamed (an SSE stream, say), is in progress however long it takes,
    /// unless its response waits for the [`write_timeout`](Self::write_timeout).
    /// An HTTP/1.1 request head must also be complete within this time of its first byte.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "de_secs_or_duration",
        serialize_with = "ser_duration"
    )]
    pub idle_timeout: Duration,
    /// How long a response may wait to be written with no write progress (default
    /// `"30s"`): the peer takes none of the bytes queued for it (it stopped reading, or
    /// keeps its HTTP/2 window shut). Past it, the connection is closed, whatever its
    /// requests in progress; any progress restarts the clock. A response that has nothing
    /// to send (a quiet SSE stream) is not waiting. A connection asked to close (idle,
    /// request cap, shutdown) with no request in progress gets this long to finish.
    #[serde(
        default = "default_write_timeout",
        deserialize_with = "de_secs_or_duration",
        serialize_with = "ser_duration"
    )]
    pub write_timeout: Duration,
    /// How long an HTTP/2 stream's response may wait to be written with no write
    /// progress before that stream alone is reset (`RST_STREAM` `CANCEL`; default: the
    /// [`write_timeout`](Self::write_timeout)). The peer keeps its stream window (or its
    /// connection window) shut: the stream is cut, what it holds (the response, its
    /// share of [`connection_memory_bytes`](Self::connection_memory_bytes), its place
    /// among [`max_concurrent_streams`](Self::max_concurrent_streams)) is freed, and the
    /// connection with its other streams goes on. Progress is the peer taking a piece
    /// of the body (at most 16 KiB): a stream read slowly but steadily is not cut.
    /// HTTP/1.1 responses and a socket the peer stops reading altogether still close the
    /// connection after the write timeout.
    #[serde(
        default,
        deserialize_with = "de_opt_secs_or_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stream_write_timeout: Option<Duration>,
    /// Most connections open at once from one client address (default 64), counted on
    /// the peer address: IPv4 per address, IPv6 per [`client_ipv6_prefix`] network. A
    /// connection over it is closed at accept. Peers exempted on the
    /// [`ConnectionLimit`](crate::ConnectionLimit) (trusted proxies) are not counted.
    ///
    /// [`client_ipv6_prefix`]: Self::client_ipv6_prefix
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Prefix length by which IPv6 peers are counted for
    /// [`max_connections_per_client`](Self::max_connections_per_client) (default 64: one
    /// site's network, which one host can fill with addresses). 0 to 128 (`mcp_core::ip_key`).
    #[serde(default = "default_client_ipv6_prefix")]
    pub client_ipv6_prefix: u8,
    /// Most requests served on one connection (default 1000, as nginx's
    /// `keepalive_requests`); the last is answered with `Connection: close` (HTTP/1.1) or
    /// a GOAWAY (HTTP/2), and the client opens a new connection.
    #[serde(default = "default_max_requests_per_connection")]
    pub max_requests_per_connection: u64,
    /// Most requests in progress at once on one HTTP/2 connection (default 16, 1 to
    /// 10000), advertised as `SETTINGS_MAX_CONCURRENT_STREAMS`; streams beyond it are
    /// refused (`REFUSED_STREAM`, which clients retry). Each request in progress may hold
    /// an upstream connection and its buffers, and each stream whose window a peer keeps
    /// shut holds its response for up to the
    /// [`stream_write_timeout`](Self::stream_write_timeout), so this bounds what one
    /// connection holds, and with
    /// [`max_connections_per_client`](Self::max_connections_per_client) what one client
    /// address holds. hyper's default is 200, nginx's 128, Envoy's 100, and RFC 9113
    /// suggests at least 100 for web pages fetching many resources at once; an MCP client
    /// runs a few tool calls and one event stream per session (the MCP SDKs and the
    /// conformance suite use one to a handful at once): 16 leaves it room to fan out
    /// while keeping what a client that opens streams only to hold them can take small.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Memory budget of one connection, in bytes (default 8 MiB, 64 KiB to 1 TiB): the
    /// request body bytes its requests in progress have read (held until their response
    /// ends) plus the response bytes the loop holds for them (the rest of a body frame not
    /// yet handed on, and the piece waiting to be taken), across its HTTP/2 streams.
    /// A response body of known length counts whole until it is first asked for a frame
    /// (a window of zero keeps it unasked). While the budget is used up (full, or since a
    /// request body read did not fit, until half of it is free again), a new HTTP/2
    /// stream is refused (`RST_STREAM` with `REFUSED_STREAM`, which clients retry; the
    /// service never sees it), and a request body read that would go over it fails (the
    /// service sees a body error: a layer reading the body answers as for a broken body).
    /// Streams already admitted are not cut for it: a stalled one is cut by the
    /// [`write_timeout`](Self::write_timeout). So streams admitted together, before any
    /// of their responses arrived, can hold more: at most
    /// [`max_concurrent_streams`](Self::max_concurrent_streams) times the largest
    /// response a layer buffers, for at most the write timeout.
    /// Keep it above the largest request body a layer accepts (HTTP/1.1 has one
    /// request at a time, so this only matters for a body larger than the budget).
    #[serde(default = "default_connection_memory_bytes")]
    pub connection_memory_bytes: u64,
    /// Memory budget of one client address in bytes, over all its connections (default
    /// 64 MiB, 64 KiB to 1 TiB; IPv6 per [`client_ipv6_prefix`](Self::client_ipv6_prefix)):
    /// the same bytes as [`connection_memory_bytes`](Self::connection_memory_bytes), with
    /// the same refusals once used up, so that one address does not hold
    /// [`max_connections_per_client`](Self::max_connections_per_client) times the
    /// connection budget. Peers exempted on the [`ConnectionLimit`](crate::ConnectionLimit)
    /// (trusted proxies) have none. Set on the shared limit when there is one
    /// ([`ConnectionLimit::per_client_memory`](crate::ConnectionLimit::per_client_memory)).
    #[serde(default = "default_client_memory_bytes")]
    pub client_memory_bytes: u64,
    /// Most bytes of an unread request body read and discarded after its response
    /// (default 64 KiB, at most 16 MiB; 0: none), so that an HTTP/1.x connection stays
    /// usable after a refusal that came before the body was read (401, 403, 429, ...).
    /// A body larger than this, or not whole within
    /// [`refusal_drain_timeout`](Self::refusal_drain_timeout), is not read on: its
    /// response says `Connection: close` and the connection closes after it
    /// (`mcp_core::DrainLayer`). The drain holds one frame at a time and is not counted
    /// in the memory budgets. HTTP/2 needs none (the stream alone is reset).
    #[serde(default = "default_refusal_drain_bytes")]
    pub refusal_drain_bytes: u64,
    /// How long the drain of [`refusal_drain_bytes`](Self::refusal_drain_bytes) may hold
    /// a response back (default `"1s"`, 1 ms to 60 s); past it, `Connection: close`. A
    /// client trickling the rest of a refused body holds its connection no longer.
    #[serde(
        default = "default_refusal_drain_timeout",
        deserialize_with = "de_secs_or_duration",
        serialize_with = "ser_duration"
    )]
    pub refusal_drain_timeout: Duration,
}

fn default_refusal_drain_bytes() -> u64 {
    mcp_core::DEFAULT_DRAIN_BYTES
}

fn default_refusal_drain_timeout() -> Duration {
    mcp_core::DEFAULT_DRAIN_TIMEOUT
}

/// The largest [`ServerOptions::refusal_drain_bytes`] accepted: 16 MiB.
pub const MAX_REFUSAL_DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// The longest [`ServerOptions::refusal_drain_timeout`] accepted: 60 s.
pub const MAX_REFUSAL_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

fn default_client_memory_bytes() -> u64 {
    DEFAULT_CLIENT_MEMORY_BYTES
}

/// The default [`ServerOptions::client_memory_bytes`]: 64 MiB.
pub const DEFAULT_CLIENT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

fn default_connection_memory_bytes() -> u64 {
    DEFAULT_CONNECTION_MEMORY_BYTES
}

/// The default [`ServerOptions::connection_memory_bytes`]: 8 MiB.
pub const DEFAULT_CONNECTION_MEMORY_BYTES: u64 = 8 * 1024 * 1024;

/// The smallest [`ServerOptions::connection_memory_bytes`] accepted: 64 KiB.
pub const MIN_CONNECTION_MEMORY_BYTES: u64 = 64 * 1024;

/// The largest [`ServerOptions::connection_memory_bytes`] accepted: 1 TiB.
pub const MAX_CONNECTION_MEMORY_BYTES: u64 = 1 << 40;

fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections_per_client() -> usize {
    64
}
fn default_client_ipv6_prefix() -> u8 {
    64
}
fn default_max_requests_per_connection() -> u64 {
    1000
}
fn default_max_concurrent_streams() -> u32 {
    16
}

/// The largest [`ServerOptions::max_concurrent_streams`] accepted.
const MAX_CONCURRENT_STREAMS_LIMIT: u32 = 10_000;

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: default_handshake_timeout(),
            max_connections: default_max_connections(),
            drain_timeout: default_drain_timeout(),
            idle_timeout: default_idle_timeout(),
            write_timeout: default_write_timeout(),
            stream_write_timeout: None,
            max_connections_per_client: default_max_connections_per_client(),
            client_ipv6_prefix: default_client_ipv6_prefix(),
            max_requests_per_connection: default_max_requests_per_connection(),
            max_concurrent_streams: default_max_concurrent_streams(),
            connection_memory_bytes: default_connection_memory_bytes(),
            client_memory_bytes: default_client_memory_bytes(),
            refusal_drain_bytes: default_refusal_drain_bytes(),
            refusal_drain_timeout: default_refusal_drain_timeout(),
        }
    }
}

impl ServerOptions {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::new(
                "server.handshakeTimeout",
                "must be greater than zero",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "server.idleTimeout",
                "must be greater than zero",
            ));
        }
        if self.max_connections == 0 || self.max_connections > (u32::MAX >> 3) as usize {
            return Err(ConfigError::new(
                "server.maxConnections",
                "must be between 1 and 536870911",
            ));
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::new(
                "server.writeTimeout",
                "must be greater than zero",
            ));
        }
        if self.stream_write_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "server.streamWriteTimeout",
                "must be greater than zero",
            ));
        }
        if self.max_connections_per_client == 0
            || self.max_connections_per_client > (u32::MAX >> 3) as usize
        {
            return Err(ConfigError::new(
                "server.maxConnectionsPerClient",
                "must be between 1 and 536870911",
            ));
        }
        if self.client_ipv6_prefix > 128 {
            return Err(ConfigError::new(
                "server.clientIpv6Prefix",
                "must be between 0 and 128",
            ));
        }
        if self.max_requests_per_connection == 0 {
            return Err(ConfigError::new(
                "server.maxRequestsPerConnection",
                "must be greater than zero",
            ));
        }
        if !(1..=MAX_CONCURRENT_STREAMS_LIMIT).contains(&self.max_concurrent_streams) {
            return Err(ConfigError::new(
                "server.maxConcurrentStreams",
                "must be between 1 and 10000",
            ));
        }
        if !(MIN_CONNECTION_MEMORY_BYTES..=MAX_CONNECTION_MEMORY_BYTES)
            .contains(&self.connection_memory_bytes)
        {
            return Err(ConfigError::new(
                "server.connectionMemoryBytes",
                "must be between 65536 (64 KiB) and 1099511627776 (1 TiB)",
            ));
        }
        if !(MIN_CONNECTION_MEMORY_BYTES..=MAX_CONNECTION_MEMORY_BYTES)
            .contains(&self.client_memory_bytes)
        {
            return Err(ConfigError::new(
                "server.clientMemoryBytes",
                "must be between 65536 (64 KiB) and 1099511627776 (1 TiB)",
            ));
        }
        if self.refusal_drain_bytes > MAX_REFUSAL_DRAIN_BYTES {
            return Err(ConfigError::new(
                "server.refusalDrainBytes",
                "must be between 0 and 16777216 (16 MiB)",
            ));
        }
        if self.refusal_drain_timeout < Duration::from_millis(1)
            || self.refusal_drain_timeout > MAX_REFUSAL_DRAIN_TIMEOUT
        {
            return Err(ConfigError::new(
                "server.refusalDrainTimeout",
                "must be between 1ms and 60s",
            ));
        }
        Ok(())
    }
}

/// An unparsable duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration (expected a number with a unit: ms, s, m, h, d)")]
pub struct ParseDurationError;

/// Parses `"500ms"`, `"90s"`, `"5m"`, `"48h"`, `"2d"` (also `"1h30m"`). A bare number
/// is multiplied by `bare_unit`.
pub fn parse_duration(s: &str, bare_unit: Duration) -> Result<Duration, ParseDurationError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return Err(ParseDurationError);
    }
    if let Ok(n) = s.parse::<u64>() {
        return n
            .checked_mul(bare_unit.as_millis() as u64)
            .map(Duration::from_millis)
            .ok_or(ParseDurationError);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 18 {
            return Err(ParseDurationError);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| ParseDurationError)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(ParseDurationError),
        };
        rest = rest[unit_len..].trim_start();
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or(ParseDurationError)?;
    }
    Ok(Duration::from_millis(total))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn de_with_unit<'de, D: Deserializer<'de>>(d: D, unit: Duration) -> Result<Duration, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => n
            .checked_mul(unit.as_secs())
            .map(Duration::from_secs)
            .ok_or_else(|| serde::de::Error::custom(ParseDurationError)),
        NumOrStr::Str(s) => parse_duration(&s, unit).map_err(serde::de::Error::custom),
    }
}

fn de_opt_hours_or_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_with_unit(d, Duration::from_secs(3600)).map(Some)
}

fn de_days_or_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_with_unit(d, Duration::from_secs(86_400))
}

fn de_secs_or_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_with_unit(d, Duration::from_secs(1))
}

fn de_opt_secs_or_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_secs_or_duration(d).map(Some)
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs())
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&fmt_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_parse() {
        for (s, v) in [
            ("TLS1.2", TlsVersion::Tls12),
            ("tlsv1.3", TlsVersion::Tls13),
            ("VersionTLS12", TlsVersion::Tls12),
            ("1.3", TlsVersion::Tls13),
            ("TLS1.0", TlsVersion::Tls10),
            ("TLS1.1", TlsVersion::Tls11),
        ] {
            assert_eq!(s.parse::<TlsVersion>(), Ok(v), "{s}");
        }
        assert!("SSL3".parse::<TlsVersion>().is_err());
        assert!("TLS1.4".parse::<TlsVersion>().is_err());
    }

    #[test]
    fn client_auth_parse() {
        for (s, v) in [
            ("NoClientCert", ClientAuth::None),
            ("VerifyClientCertIfGiven", ClientAuth::Optional),
            ("RequireAndVerifyClientCert", ClientAuth::Required),
            ("required", ClientAuth::Required),
            (
                "RequireAnyClientCert",
                ClientAuth::Unverified(UnverifiedClientAuth::RequireAnyClientCert),
            ),
            (
                "RequestClientCert",
                ClientAuth::Unverified(UnverifiedClientAuth::RequestClientCert),
            ),
        ] {
            assert_eq!(s.parse::<ClientAuth>(), Ok(v), "{s}");
        }
        assert!("yes".parse::<ClientAuth>().is_err());
    }

    fn base() -> TlsConfig {
        TlsConfig::new("c.pem", "k.pem")
    }

    #[test]
    fn old_versions_are_refused_naming_the_key() {
        let e = base()
            .versions(TlsVersion::Tls10, TlsVersion::Tls13)
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "server.tls.minVersion");
        assert!(e.rule.contains("TLS1.0"));
        let e = base()
            .versions(TlsVersion::Tls11, TlsVersion::Tls11)
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "server.tls.minVersion");
        let e = base()
            .versions(TlsVersion::Tls13, TlsVersion::Tls12)
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "server.tls.minVersion");
        assert!(e.rule.contains("above"));
        base()
            .versions(TlsVersion::Tls13, TlsVersion::Tls13)
            .validate()
            .unwrap();
    }

    #[test]
    fn unverified_client_auth_is_refused() {
        for mode in ["RequireAnyClientCert", "RequestClientCert"] {
            let mut c = base();
            c.client_auth = mode.parse().unwrap();
            c.ca_file = Some("ca.pem".into());
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "server.tls.clientAuth");
            assert!(e.rule.contains("without verifying"));
        }
    }

    #[test]
    fn client_auth_needs_ca_and_ca_needs_client_auth() {
        let mut c = base();
        c.client_auth = ClientAuth::Required;
        assert_eq!(c.validate().unwrap_err().key, "server.tls.caFile");
        let mut c = base();
        c.ca_file = Some("ca.pem".into());
        assert_eq!(c.validate().unwrap_err().key, "server.tls.caFile");
        let c = base().crl_file("x.crl");
        assert_eq!(c.validate().unwrap_err().key, "server.tls.crlFiles");
        base()
            .client_auth(ClientAuth::Optional, "ca.pem")
            .crl_file("x.crl")
            .validate()
            .unwrap();
    }

    #[test]
    fn files_required() {
        assert_eq!(
            TlsConfig::default().validate().unwrap_err().key,
            "server.tls.certFile"
        );
        let mut c = base();
        c.key_file = None;
        assert_eq!(c.validate().unwrap_err().key, "server.tls.keyFile");
    }

    #[test]
    fn auto_cert_rules() {
        let yaml = "autoCert:\n  enabled: true\n  host: mcp.example.com\n  email: a@example.com\n  cacheDir: /var/lib/le\n";
        let c: TlsConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let r = c.validate();
        if cfg!(feature = "acme") {
            r.unwrap();
            let mut bad = c.clone();
            bad.cert_file = Some("c.pem".into());
            assert_eq!(
                bad.validate().unwrap_err().key,
                "server.tls.autoCert.enabled"
            );
            let mut bad = c.clone();
            if let Some(a) = bad.auto_cert.as_mut() {
                a.host = "not a host!".into();
            }
            assert_eq!(bad.validate().unwrap_err().key, "server.tls.autoCert.host");
            let mut bad = c;
            if let Some(a) = bad.auto_cert.as_mut() {
                a.directory_url = Some("http://acme".into());
            }
            assert_eq!(
                bad.validate().unwrap_err().key,
                "server.tls.autoCert.directoryUrl"
            );
        } else {
            assert_eq!(r.unwrap_err().key, "server.tls.autoCert.enabled");
        }
    }

    #[test]
    fn seed_yaml_and_unknown_keys() {
        let yaml = "certFile: a\nkeyFile: b\nminVersion: \"TLS1.2\"\nmaxVersion: \"TLS1.3\"\nexpiryWarning: 10\nrotationInterval: \"90s\"\n";
        let c: TlsConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(c.expiry_warning, Duration::from_secs(10 * 86400));
        assert_eq!(c.rotation_interval, Some(Duration::from_secs(90)));
        let back = serde_yaml_ng::to_string(&c).unwrap();
        let again: TlsConfig = serde_yaml_ng::from_str(&back).unwrap();
        assert_eq!(again, c);
        assert!(serde_yaml_ng::from_str::<TlsConfig>("certfile: a\n").is_err());
        assert!(serde_yaml_ng::from_str::<TlsConfig>("minVersion: SSLv3\n").is_err());
    }

    #[test]
    fn durations() {
        let h = Duration::from_secs(3600);
        assert_eq!(parse_duration("48", h), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("90s", h), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m", h), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms", h), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5x", h).is_err());
        assert!(parse_duration("", h).is_err());
        assert!(parse_duration("h", h).is_err());
        assert!(parse_duration("99999999999999999999d", h).is_err());
    }

    #[test]
    fn server_options() {
        let o: ServerOptions =
            serde_yaml_ng::from_str("handshakeTimeout: 5\nmaxConnections: 10\nidleTimeout: 2m\n")
                .unwrap();
        assert_eq!(o.handshake_timeout, Duration::from_secs(5));
        assert_eq!(o.idle_timeout, Duration::from_secs(120));
        o.validate().unwrap();
        assert_eq!(
            ServerOptions::default().idle_timeout,
            Duration::from_secs(30)
        );
        let o = ServerOptions {
            idle_timeout: Duration::ZERO,
            ..ServerOptions::default()
        };
        assert_eq!(o.validate().unwrap_err().key, "server.idleTimeout");
        let o = ServerOptions {
            max_connections: 0,
            ..ServerOptions::default()
        };
        assert_eq!(o.validate().unwrap_err().key, "server.maxConnections");
        let o: ServerOptions = serde_yaml_ng::from_str(
            "writeTimeout: 5\nmaxConnectionsPerClient: 8\nclientIpv6Prefix: 56\nmaxRequestsPerConnection: 10\nmaxConcurrentStreams: 8\n",
        )
        .unwrap();
        assert_eq!(o.write_timeout, Duration::from_secs(5));
        assert_eq!(o.max_concurrent_streams, 8);
        assert_eq!(
            (
                o.max_connections_per_client,
                o.client_ipv6_prefix,
                o.max_requests_per_connection
            ),
            (8, 56, 10)
        );
        o.validate().unwrap();
        let d = ServerOptions::default();
        assert_eq!(d.write_timeout, Duration::from_secs(30));
        assert_eq!(
            (d.max_connections_per_client, d.client_ipv6_prefix),
            (64, 64)
        );
        assert_eq!(d.max_concurrent_streams, 16);
        assert_eq!(d.connection_memory_bytes, 8 * 1024 * 1024);
        let o: ServerOptions = serde_yaml_ng::from_str("connectionMemoryBytes: 65536\n").unwrap();
        assert_eq!(o.connection_memory_bytes, 65_536);
        o.validate().unwrap();
        for (o, key) in [
            (
                ServerOptions {
                    write_timeout: Duration::ZERO,
                    ..d.clone()
                },
                "server.writeTimeout",
            ),
            (
                ServerOptions {
                    max_connections_per_client: 0,
                    ..d.clone()
                },
                "server.maxConnectionsPerClient",
            ),
            (
                ServerOptions {
                    client_ipv6_prefix: 129,
                    ..d.clone()
                },
                "server.clientIpv6Prefix",
            ),
            (
                ServerOptions {
                    max_requests_per_connection: 0,
                    ..d.clone()
                },
                "server.maxRequestsPerConnection",
            ),
            (
                ServerOptions {
                    max_concurrent_streams: 0,
                    ..d.clone()
                },
                "server.maxConcurrentStreams",
            ),
            (
                ServerOptions {
                    max_concurrent_streams: 10_001,
                    ..d.clone()
                },
                "server.maxConcurrentStreams",
            ),
            (
                ServerOptions {
                    connection_memory_bytes: 65_535,
                    ..d.clone()
                },
                "server.connectionMemoryBytes",
            ),
            (
                ServerOptions {
                    connection_memory_bytes: (1 << 40) + 1,
                    ..d.clone()
                },
                "server.connectionMemoryBytes",
            ),
            (
                ServerOptions {
                    client_memory_bytes: 0,
                    ..d.clone()
                },
                "server.clientMemoryBytes",
            ),
        ] {
            assert_eq!(o.validate().unwrap_err().key, key);
        }
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(s in ".{0,80}") {
            let _ = parse_duration(&s, Duration::from_secs(1));
        }

        #[test]
        fn duration_roundtrip(n in 0u64..10_000_000, unit in prop::sample::select(vec!["ms", "s", "m", "h", "d"])) {
            let d = parse_duration(&format!("{n}{unit}"), Duration::from_secs(1)).unwrap();
            let ms = match unit { "ms" => 1, "s" => 1000, "m" => 60_000, "h" => 3_600_000, _ => 86_400_000 };
            prop_assert_eq!(d, Duration::from_millis(n * ms));
        }

        #[test]
        fn version_and_client_auth_parsers_never_panic(s in ".{0,40}") {
            let _ = s.parse::<TlsVersion>();
            let _ = s.parse::<ClientAuth>();
        }

        #[test]
        fn no_parsed_version_below_12_validates(s in "(?i)(tls|tlsv|versiontls)?1[._]?[0-3]") {
            if let Ok(v) = s.parse::<TlsVersion>() {
                let r = TlsConfig::new("c", "k").versions(v, TlsVersion::Tls13).validate();
                prop_assert_eq!(r.is_ok(), v >= TlsVersion::Tls12);
            }
        }
    }
}
