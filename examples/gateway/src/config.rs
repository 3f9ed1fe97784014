//! The gateway's YAML configuration.
//!
//! The keys of the cloud-native-mcp-server security guide are accepted with the meanings
//! given there (`server.*`, `auth.*`, `ratelimit.*`, `sanitization.*`, `audit.*`,
//! `security.*`, `secrets.*`, `monitoring.*`); the gateway's own keys (`upstreams`,
//! `server.trustedProxies`, `auth.keys`, `auth.jwt`, `policy`, `layers`, ...) are added
//! beside them. `${VAR}` in any string value is replaced by the environment variable
//! (an unset variable is an error naming it); `MCP_AUTH_ENABLED`, `MCP_AUTH_MODE` and
//! `MCP_AUTH_API_KEY` override the file, after ContextForge's `MCPGATEWAY_*` variables
//! (`apply_env_overrides`).
//!
//! Errors name the file, the line and the key, and say what is wrong; they never print a
//! secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// A secret string from the configuration: never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

impl Secret {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    /// `auth.*`: the seed keys (and ours: `apiKeys`, `users`, `jwt.issuers`, `mtls`, ...),
    /// as mcp-auth reads them. Unlike mcp-auth's own default, authentication is on
    /// (`enabled: true`, `mode: apikey`) unless the file says otherwise.
    pub auth: mcp_auth::AuthConfig,
    /// `ratelimit.*`: the seed keys, as mcp-ratelimit reads them (applied after
    /// authentication, keyed by principal unless `key` says otherwise).
    pub ratelimit: mcp_ratelimit::RateLimitConfig,
    /// Ours: the per-IP limit applied before authentication (brute-force shield). Default:
    /// twice `ratelimit`'s rate and burst, keyed by client IP, with its lists.
    pub ip_ratelimit: Option<mcp_ratelimit::RateLimitConfig>,
    /// `sanitization.*`: the seed keys (`enabled`, `max_length`, `allowed_protocols`,
    /// `blocked_patterns`) and mcp-sanitize's own (rules, SSRF, limits, overrides).
    pub sanitization: mcp_sanitize::SanitizeConfig,
    /// Ours: redaction of secrets (and optionally PII) in upstream results, JSON and SSE,
    /// event by event. On by default; `result_redaction: {enabled: false}` turns it off.
    pub result_redaction: ResultRedaction,
    /// `audit.*`: the seed keys, as mcp-audit reads them.
    pub audit: mcp_audit::AuditConfig,
    pub security: SecurityConfig,
    pub secrets: SecretsConfig,
    pub monitoring: MonitoringConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// `policy.*`: allow / deny rules (scopes -> methods, tools, resources, prompts).
    /// Without it, any authenticated principal may call anything.
    pub policy: Option<mcp_auth::PolicyConfig>,
    /// Ours, `sessions.*`: MCP sessions bound to the principal that created them (on
    /// whenever authentication is; Redis from `ratelimit.redis` unless `sessions.redis`).
    pub sessions: mcp_auth::SessionConfig,
    pub layers: LayersConfig,
    /// `logging` (a seed section the gateway does not use: it logs through `tracing`,
    /// `MCP_GATEWAY_LOG`): accepted and reported at start (see
    /// [`Loaded::inert_settings`]).
    #[serde(rename = "logging")]
    pub logging: Option<Value>,
}

/// `server.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Listen address (seed key).
    pub addr: String,
    /// Seed key (`sse`, `http`, `streamable-http`): accepted; the gateway always serves
    /// Streamable HTTP. Any other value (a typo, `stdio`) is refused.
    pub mode: Option<ServerMode>,
    /// TLS (seed keys).
    pub tls: Option<mcp_tls::TlsConfig>,
    /// Allow authentication off on a non-loopback address.
    pub allow_insecure_no_auth: bool,
    /// Proxies whose forwarding headers are believed (CIDRs). Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which forwarding header the trusted proxies set.
    pub forwarded_header: mcp_core::ForwardedHeader,
    /// `Host` values accepted (DNS rebinding guard). Default: loopback names on a
    /// loopback address, anything otherwise.
    pub allowed_hosts: Option<Vec<String>>,
    /// `Origin` values accepted. Default: loopback origins on a loopback address, none
    /// otherwise (requests without `Origin` always pass this check).
    pub allowed_origins: Option<Vec<String>>,
    /// Maximum request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds a `POST` body has to arrive whole once the gateway starts reading it; past
    /// them, 408 and the connection is closed (a client trickling its body holds a
    /// connection and a task no longer than this).
    pub body_timeout_seconds: u64,
    /// Seconds given to in-flight requests on SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Most connections open at once (for the whole process, every worker together).
    pub max_connections: usize,
    /// Seconds a connection may stay open with no request in progress: before its first
    /// request head is complete (after the TLS handshake) and after its last response.
    pub idle_timeout_seconds: u64,
    /// Seconds a response may wait with no write progress (the client takes none of
    /// its bytes) before its connection is closed; SSE streams included.
    pub write_timeout_seconds: u64,
    /// Seconds an HTTP/2 stream's response may wait with no write progress (the client
    /// keeps its stream or connection window shut) before that stream alone is reset
    /// (`RST_STREAM` `CANCEL`), its memory freed; the connection's other streams go on.
    /// 1 to 86400; default: `writeTimeoutSeconds`.
    pub stream_write_timeout_seconds: Option<u64>,
    /// Most request bodies one authenticated principal may have in progress (not yet
    /// read whole) at once, over all its connections and client addresses (1 to
    /// 1000000, default 16): beyond it, 429 with `Retry-After: 1`. So a principal holds
    /// at most this many times `maxBodyBytes` of bodies being read.
    pub bodies_in_progress_per_principal: u32,
    /// Most connections open at once from one client address (IPv6: per /64); peers
    /// in `trustedProxies` are not counted. Default: 64.
    pub max_connections_per_client: usize,
    /// Most requests served on one connection, then `Connection: close` / GOAWAY.
    pub max_requests_per_connection: u64,
    /// Most requests in progress at once on one HTTP/2 connection (1 to 10000, default
    /// 16), each of which may hold an upstream connection; more are refused
    /// (`REFUSED_STREAM`, retried by clients).
    pub max_concurrent_streams: u32,
    /// Memory budget of one connection in bytes (65536 to 2^40, default 8 MiB, at least
    /// `maxBodyBytes`): request body bytes read and response bytes held for its requests
    /// in progress. While it is used up, new HTTP/2 streams are refused (`REFUSED_STREAM`)
    /// and a body read that would go over it fails (400).
    pub connection_memory_bytes: u64,
    /// Memory budget of one client address over all its connections, in bytes (65536 to
    /// 2^40, default 64 MiB; IPv6 per `clientIpv6Prefix`; `trustedProxies` exempt): the
    /// same bytes and refusals as `connectionMemoryBytes`.
    pub client_memory_bytes: u64,
    /// Most bytes of a request body left unread by a refusal (401, 403, 429, 503, ...)
    /// read and discarded before the refusal is sent, so that an HTTP/1.x client can send
    /// its next request on the same connection (0 to 16 MiB, default 65536; 0: none). A
    /// larger body, or one not whole within `refusalDrainTimeoutMs`, gets
    /// `Connection: close` on the refusal instead.
    pub refusal_drain_bytes: u64,
    /// Milliseconds the drain of `refusalDrainBytes` may hold a refusal back (1 to 60000,
    /// default 1000); past them, `Connection: close`.
    pub refusal_drain_timeout_ms: u64,
    /// Threads that serve connections, each with a runtime of its own and a socket of its
    /// own on `addr` (one `SO_REUSEPORT` group; like nginx's worker processes). 0: one
    /// per CPU.
    pub workers: usize,
    /// The IPv6 prefix length that identifies one client in per-address state (the rate
    /// limits' `ip` key, the authentication failure monitor): 0 to 128, default 64.
    /// IPv4 clients are counted per address.
    pub client_ipv6_prefix: u8,
    /// A second, plain HTTP listener for the operator's endpoints (`/metrics`, `/healthz`,
    /// `/readyz`); when set, the public listener does not serve `/metrics`. Default: none.
    pub admin_addr: Option<String>,
    /// Seconds an upstream probe of `/readyz` is reused (1 to 3600, default 5): however
    /// many callers ask, each upstream is probed at most once per interval.
    pub readiness_cache_seconds: u64,
    /// Per-client-address limit of `/healthz`, `/readyz` and `/metrics` (default 5 a
    /// second, burst 20: ample for kubelets and Prometheus).
    pub ops_rate_limit: mcp_ratelimit::Limit,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            mode: None,
            tls: None,
            allow_insecure_no_auth: false,
            trusted_proxies: Vec::new(),
            forwarded_header: mcp_core::ForwardedHeader::default(),
            allowed_hosts: None,
            allowed_origins: None,
            max_body_bytes: 1024 * 1024,
            body_timeout_seconds: 60,
            shutdown_grace_seconds: 30,
            max_connections: 10_000,
            idle_timeout_seconds: 30,
            write_timeout_seconds: 30,
            stream_write_timeout_seconds: None,
            bodies_in_progress_per_principal: mcp_ratelimit::DEFAULT_HELD_BODIES_PER_PRINCIPAL,
            max_connections_per_client: 64,
            max_requests_per_connection: 1000,
            max_concurrent_streams: 16,
            connection_memory_bytes: mcp_tls::DEFAULT_CONNECTION_MEMORY_BYTES,
            client_memory_bytes: mcp_tls::DEFAULT_CLIENT_MEMORY_BYTES,
            refusal_drain_bytes: mcp_core::DEFAULT_DRAIN_BYTES,
            refusal_drain_timeout_ms: 1000,
            workers: 0,
            client_ipv6_prefix: mcp_core::DEFAULT_IPV6_PREFIX,
            admin_addr: None,
            readiness_cache_seconds: 5,
            ops_rate_limit: mcp_ratelimit::Limit {
                requests_per_second: 5.0,
                burst: Some(20),
            },
        }
    }
}

/// `security.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Response headers added to every response (seed key). Our defaults are added when
    /// absent.
    pub headers: BTreeMap<String, String>,
    pub header_filtering: HeaderFiltering,
    /// Ours: the client headers never forwarded upstream and the principal header.
    #[serde(rename = "upstreamHeaders")]
    pub upstream_headers: UpstreamHeaders,
    /// Ours: the upstream response headers never passed to clients.
    #[serde(rename = "upstreamResponseHeaders")]
    pub upstream_response_headers: UpstreamResponseHeadersConfig,
}

/// `security.upstreamResponseHeaders.*`: what an upstream cannot say for the gateway.
/// CORS, authentication challenges, redirects, protocol advertisements and the like an
/// upstream sends are removed (mcp-core's `UpstreamResponseHeaders` default list).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamResponseHeadersConfig {
    /// More names to remove; `X-Foo-*` removes a prefix.
    pub strip: Vec<String>,
    /// Names of the default list passed on after all (weakens the default: logged).
    pub allow: Vec<String>,
}

/// `security.upstreamHeaders.*`: what the upstream may believe. Identity,
/// client-certificate, client-address, routing and method-override headers a client sends
/// are removed before forwarding (mcp-core's `UntrustedHeaders` default list); the
/// gateway sets its own principal header instead. Credential headers are always removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamHeaders {
    /// More names to remove; `X-Foo-*` removes a prefix.
    pub strip: Vec<String>,
    /// Names of the default list to forward after all (weakens the default: logged).
    pub allow: Vec<String>,
    /// The header the gateway sets to the verified principal's id (percent-encoded
    /// outside visible ASCII); a client's copy is always removed. Default
    /// `X-MCP-Principal`; `""` sets none.
    pub principal_header: String,
    /// The header the gateway sets, in Envoy's XFCC format, to the client certificate it
    /// verified (mutual TLS only); a client's copy is always removed. Default
    /// `X-Forwarded-Client-Cert`; `""` sets none.
    pub client_cert_header: String,
}

impl Default for UpstreamHeaders {
    fn default() -> Self {
        Self {
            strip: Vec::new(),
            allow: Vec::new(),
            principal_header: "X-MCP-Principal".into(),
            client_cert_header: "X-Forwarded-Client-Cert".into(),
        }
    }
}

/// `security.header_filtering.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderFiltering {
    pub enabled: bool,
    pub filtered_headers: Vec<String>,
}

impl Default for HeaderFiltering {
    fn default() -> Self {
        Self {
            enabled: true,
            filtered_headers: ["authorization", "cookie", "x-api-key", "x-auth-token"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// `secrets.*` (seed keys; accepted; rotation is the secret manager's job).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    pub rotation_interval: Option<u64>,
    pub max_age: Option<u64>,
    pub keep_expired: Option<bool>,
}

/// `monitoring.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Authentication failures of one client address within the window that raise an
    /// alert (seed key; unset or 0: off).
    pub auth_failure_threshold: Option<u32>,
    /// The window in seconds (seed key; default 300).
    pub auth_failure_window: Option<u64>,
    /// Ours: refuse a client that reached the threshold for this many seconds (0, the
    /// default: alert only).
    pub auth_failure_block_seconds: u64,
    pub anomaly_detection: Option<AnomalyDetection>,
    /// Serve `/metrics`.
    pub metrics: bool,
    /// Ours: the scope a principal needs to read `/metrics` on the public listener (and on
    /// a non-loopback admin listener). Default `metrics:read`.
    pub metrics_scope: String,
    /// Ours: serve `/metrics` without a credential (logged as a warning at start).
    pub metrics_public: bool,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            auth_failure_threshold: None,
            auth_failure_window: None,
            auth_failure_block_seconds: 0,
            anomaly_detection: None,
            metrics: true,
            metrics_scope: "metrics:read".into(),
            metrics_public: false,
        }
    }
}

/// `server.mode` (seed key). The gateway serves Streamable HTTP whichever is named; the
/// values are checked so that a typo does not pass unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ServerMode {
    /// `sse`: the seed's HTTP+SSE transport, which Streamable HTTP replaced (noted by
    /// `check` as served differently).
    #[serde(rename = "sse", alias = "SSE")]
    Sse,
    /// `http`.
    #[serde(rename = "http", alias = "HTTP")]
    Http,
    /// `streamable-http`.
    #[serde(
        rename = "streamable-http",
        alias = "streamable_http",
        alias = "streamableHttp"
    )]
    StreamableHttp,
}

/// `monitoring.anomaly_detection` (seed key; accepted, no effect: the guide does not say
/// what it detects).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyDetection {
    pub enabled: bool,
    pub sensitivity: Option<Sensitivity>,
}

/// `monitoring.anomaly_detection.sensitivity` (seed key): checked, no effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
}

/// Default of `upstreams[].responseTimeoutMs`.
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 60_000;
/// Default of `upstreams[].bodyIdleTimeoutMs`.
pub const DEFAULT_BODY_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Default of `upstreams[].responseDeadlineMs`.
pub const DEFAULT_RESPONSE_DEADLINE_MS: u64 = 300_000;
/// Default of `upstreams[].sseIdleTimeoutMs`.
pub const DEFAULT_SSE_IDLE_TIMEOUT_MS: u64 = 300_000;

/// One entry of `upstreams` (`Debug` shows the URL without user info or query values).
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    pub name: String,
    /// Path on the gateway.
    pub path: String,
    /// The upstream MCP endpoint.
    pub url: String,
    /// Headers injected into every forwarded request (values may use `${VAR}`).
    pub headers: BTreeMap<String, Secret>,
    pub connect_timeout_ms: Option<u64>,
    /// Until the response headers, and for an answer that is not an SSE stream its first
    /// body data too (default 60000).
    pub response_timeout_ms: Option<u64>,
    /// Ours: the longest pause in the body of an answer that is not an SSE stream
    /// (default 30000).
    pub body_idle_timeout_ms: Option<u64>,
    /// Ours: an answer that is not an SSE stream must have ended this long after the
    /// request was sent (default 300000, at least `responseTimeoutMs`).
    pub response_deadline_ms: Option<u64>,
    /// Ours: the longest pause in an SSE stream answering a `POST` (default 300000; 0:
    /// none, logged). `GET` streams are not bounded.
    pub sse_idle_timeout_ms: Option<u64>,
    pub tls: Option<UpstreamTlsConfig>,
    /// Client query parameters forwarded (names, or `"*"`); none by default.
    pub forward_query: Vec<String>,
    /// Requests (streams included) open towards this upstream at once, hence its
    /// connections (default 256; beyond: 503 with `Retry-After`).
    pub max_connections: Option<u32>,
    /// Of those, at most this many for one principal (default 64, at most
    /// `maxConnections`; beyond: 429 with `Retry-After`).
    pub max_connections_per_principal: Option<u32>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("url", &crate::proxy::display_url_str(&self.url))
            .field("headers", &self.headers)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("body_idle_timeout_ms", &self.body_idle_timeout_ms)
            .field("response_deadline_ms", &self.response_deadline_ms)
            .field("sse_idle_timeout_ms", &self.sse_idle_timeout_ms)
            .field("tls", &self.tls)
            .field("forward_query", &self.forward_query)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_principal",
                &self.max_connections_per_principal,
            )
            .finish()
    }
}

/// `upstreams[].tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `result_redaction`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ResultRedaction {
    pub enabled: bool,
    /// mcp-sanitize's result scanner settings (`secrets`, `pii_patterns`, limits),
    /// checked by mcp-sanitize when the layer is built.
    #[serde(flatten)]
    pub scan: BTreeMap<String, Value>,
}

impl Default for ResultRedaction {
    fn default() -> Self {
        Self {
            enabled: true,
            scan: BTreeMap::new(),
        }
    }
}

impl ResultRedaction {
    /// The scanner configuration.
    pub fn scan_config(&self) -> Result<mcp_sanitize::ResultScanConfig, String> {
        let map: serde_yaml_ng::Mapping = self
            .scan
            .iter()
            .map(|(k, v)| (Value::String(k.clone()), v.clone()))
            .collect();
        serde_yaml_ng::from_value(Value::Mapping(map)).map_err(|e| e.to_string())
    }
}

/// `layers.*`: master switch for the load test's "every layer off" run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayersConfig {
    /// When false, every security layer is off and the gateway is a plain proxy (only
    /// allowed on a loopback address).
    pub enabled: bool,
}

impl Default for LayersConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A configuration error: where and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax or type error.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    /// Invalid value found when validating.
    #[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Rule {
        file: String,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

const SECRET_KEYS: &[&str] = &[
    "apiKey",
    "bearerToken",
    "password",
    "jwtSecret",
    "jwtSecretBase64",
    "secret",
    "secretBase64",
    "key",
    "headers",
];

/// A loaded configuration plus where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: String,
    text: String,
    /// Notes on environment variables accepted without effect (`MCPGATEWAY_UI_ENABLED=true`, ...).
    env_notes: Vec<String>,
}

impl Loaded {
    /// Settings of the seeds that the file sets and the gateway accepts without acting on
    /// them, each as `file:line: key: why`, for a warning at start and a note from
    /// `check` (so that nobody believes they are in force).
    pub fn inert_settings(&self) -> Vec<String> {
        let c = &self.config;
        let mut keys: Vec<(&str, &str)> = Vec::new();
        if c.logging.is_some() {
            keys.push((
                "logging",
                "not used: the gateway logs through tracing to stderr (MCP_GATEWAY_LOG sets the filter)",
            ));
        }
        if c.server.mode == Some(ServerMode::Sse) {
            keys.push((
                "server.mode",
                "the gateway serves Streamable HTTP (which replaced HTTP+SSE); SSE responses are streamed within it",
            ));
        }
        let s = &c.secrets;
        if s.rotation_interval.is_some() || s.max_age.is_some() || s.keep_expired.is_some() {
            keys.push((
                "secrets",
                "no effect: the gateway's keys come from this file (rotate them there, or give apiKeys an expiresAt)",
            ));
        }
        if c.monitoring
            .anomaly_detection
            .as_ref()
            .is_some_and(|a| a.enabled)
        {
            keys.push((
                "monitoring.anomaly_detection",
                "no effect: the guide does not define it (auth_failure_threshold and the metrics are what the gateway monitors)",
            ));
        }
        keys.into_iter()
            .map(|(key, why)| match find_line(&self.text, key) {
                Some(line) => format!("{}:{line}: {key}: {why}", self.file),
                None => format!("{}: {key}: {why}", self.file),
            })
            .chain(self.env_notes.iter().cloned())
            .collect()
    }

    /// A rule error at `key` (dotted path), with the line found in the file if any.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Rule {
            file: self.file.clone(),
            line: find_line(&self.text, key),
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Reads and parses a file, expanding `${VAR}` and applying the environment overrides.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    // Read at most one byte past the cap: a larger file is refused by `parse`.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            use std::io::Read;
            f.take(crate::yaml_bounds::MAX_FILE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::Read {
        file: file.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })?;
    parse(&text, &file, &|k| std::env::var(k).ok())
}

/// Parses configuration text (`file` names it in errors; `env` reads variables).
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut value: Value = if text.trim().is_empty() {
        Value::Mapping(Default::default())
    } else {
        // Bounded: file size, nesting depth, alias replays (see `yaml_bounds`).
        crate::yaml_bounds::parse(text).map_err(|e| ConfigError::Invalid {
            file: file.to_owned(),
            line: e.line,
            key: "(syntax)".into(),
            message: e.message,
        })?
    };
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    let mut expansion = crate::yaml_bounds::MAX_EXPANSION_BYTES;
    expand(&mut value, &mut Vec::new(), text, file, env, &mut expansion)?;
    let env_notes = apply_env_overrides(&mut value, env, file)?;
    refuse_keys_set_by_the_gateway(&value, text, file)?;
    let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let last = key.rsplit('.').next().unwrap_or("");
        let last = last.split('[').next().unwrap_or(last);
        let inner = e.into_inner().to_string();
        let message = if SECRET_KEYS.contains(&last) || key.contains(".headers.") {
            "invalid value (not shown: it may be a secret); expected a string".to_owned()
        } else {
            // serde's message: the expected type and what was found (not a secret key).
            inner
        };
        ConfigError::Invalid {
            file: file.to_owned(),
            line: find_line(text, &key).unwrap_or(0),
            key,
            message,
        }
    })?;
    Ok(Loaded {
        config,
        file: file.to_owned(),
        text: text.to_owned(),
        env_notes,
    })
}

/// mcp-sanitize's own body limit and Origin/Host guard are set by the gateway from
/// `server.*` (one limit and one guard for every layer): written under `sanitization`
/// they would be overwritten without a word, so they are refused.
fn refuse_keys_set_by_the_gateway(v: &Value, text: &str, file: &str) -> Result<(), ConfigError> {
    for (section, key, instead) in [
        ("sanitization", "max_body_bytes", "server.maxBodyBytes"),
        (
            "sanitization",
            "origin",
            "server.allowedOrigins and server.allowedHosts",
        ),
        // One prefix for every per-address count (limits and failure monitor).
        ("ratelimit", "ipv6_prefix", "server.clientIpv6Prefix"),
        ("ip_ratelimit", "ipv6_prefix", "server.clientIpv6Prefix"),
    ] {
        if v.get(section).and_then(|s| s.get(key)).is_some() {
            let key = format!("{section}.{key}");
            return Err(ConfigError::Rule {
                file: file.to_owned(),
                line: find_line(text, &key),
                key,
                message: format!("set by the gateway from {instead}: write it there"),
            });
        }
    }
    Ok(())
}

fn path_string(path: &[String]) -> String {
    path.join(".")
}

fn expand(
    v: &mut Value,
    path: &mut Vec<String>,
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    budget: &mut usize,
) -> Result<(), ConfigError> {
    match v {
        Value::String(s) if s.contains("${") => {
            let whole = s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
            let rule = |path: &[String], message: String| {
                let key = path_string(path);
                ConfigError::Rule {
                    file: file.to_owned(),
                    line: find_line(text, &key),
                    key,
                    message,
                }
            };
            let expanded = expand_str(s, env).map_err(|e| match e {
                Expand::Unset(var) => rule(path, format!("environment variable {var} is not set")),
                Expand::TooLarge(var) => rule(
                    path,
                    format!(
                        "environment variable {var} is longer than {} bytes",
                        crate::yaml_bounds::MAX_ENV_VALUE_BYTES
                    ),
                ),
            })?;
            // Aliases may repeat one `${VAR}` many times: the growth is capped in total.
            let grown = expanded.len().saturating_sub(s.len());
            if grown > *budget {
                return Err(rule(
                    path,
                    format!(
                        "the expanded environment variables add more than {} bytes to the \
                         configuration",
                        crate::yaml_bounds::MAX_EXPANSION_BYTES
                    ),
                ));
            }
            *budget -= grown;
            // `${RPS}` alone may stand for a number or a boolean; anything else stays a
            // string (never parsed as YAML).
            let last = path.last().map(String::as_str).unwrap_or("");
            if whole
                && !SECRET_KEYS.contains(&last)
                && let Some(parsed) = crate::yaml_bounds::env_scalar(&expanded)
            {
                *v = parsed;
                return Ok(());
            }
            *s = expanded;
        }
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                path.push(name);
                expand(val, path, text, file, env, budget)?;
                path.pop();
            }
        }
        Value::Sequence(seq) => {
            for (i, val) in seq.iter_mut().enumerate() {
                let last = path.pop().unwrap_or_default();
                path.push(format!("{last}[{i}]"));
                expand(val, path, text, file, env, budget)?;
                path.pop();
                path.push(last);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why `${VAR}` could not be expanded (the variable's name).
#[derive(Debug, PartialEq, Eq)]
enum Expand {
    Unset(String),
    TooLarge(String),
}

/// Expands `${VAR}`; `$${` is a literal `${`. Each value is at most
/// `yaml_bounds::MAX_ENV_VALUE_BYTES`.
fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Expand> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let name = &after[..end];
        match env(name) {
            Some(val) if val.len() > crate::yaml_bounds::MAX_ENV_VALUE_BYTES => {
                return Err(Expand::TooLarge(name.to_owned()));
            }
            Some(val) => out.push_str(&val),
            None => return Err(Expand::Unset(name.to_owned())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A boolean environment variable (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
fn env_bool(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<bool>, ConfigError> {
    let Some(v) = env(name) else {
        return Ok(None);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        _ => Err(env_error(name, "must be true or false")),
    }
}

fn env_error(name: &str, message: &str) -> ConfigError {
    ConfigError::Rule {
        file: "environment".into(),
        line: None,
        key: name.into(),
        message: message.into(),
    }
}

/// The mapping at `key` of `root`, created when absent or null. `None` when the file
/// holds something else there (deserialization then names the key).
fn section<'a>(
    root: &'a mut serde_yaml_ng::Mapping,
    key: &str,
) -> Option<&'a mut serde_yaml_ng::Mapping> {
    let v = root
        .entry(Value::String(key.into()))
        .or_insert_with(|| Value::Mapping(Default::default()));
    if v.is_null() {
        *v = Value::Mapping(Default::default());
    }
    match v {
        Value::Mapping(m) => Some(m),
        _ => None,
    }
}

fn set(map: Option<&mut serde_yaml_ng::Mapping>, key: &str, value: Value) {
    if let Some(m) = map {
        m.insert(Value::String(key.into()), value);
    }
}

/// The environment variables of the seeds, applied over the file: first ContextForge's
/// (`MCPGATEWAY_*`, contextforge-securing.md), then the cloud-native guide's
/// `MCP_AUTH_ENABLED`, `MCP_AUTH_MODE` and `MCP_AUTH_API_KEY`, which win. Returns notes on
/// the variables that name a feature the gateway does not have.
fn apply_env_overrides(
    v: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    file: &str,
) -> Result<Vec<String>, ConfigError> {
    let Value::Mapping(root) = v else {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            line: 1,
            key: "(root)".into(),
            message: "the configuration must be a mapping".into(),
        });
    };
    let mut notes = Vec::new();
    {
        let auth = section(root, "auth");
        let Some(auth) = auth else {
            return Ok(notes);
        };
        // Secure defaults: authentication on, API keys.
        auth.entry(Value::String("enabled".into()))
            .or_insert(Value::Bool(true));
        auth.entry(Value::String("mode".into()))
            .or_insert(Value::String("apikey".into()));
    }

    // ContextForge.
    if let Some(b) = env_bool(env, "MCPGATEWAY_AUTH_ENABLED")? {
        set(section(root, "auth"), "enabled", Value::Bool(b));
    }
    for (var, key) in [
        ("MCPGATEWAY_AUTH_USERNAME", "username"),
        ("MCPGATEWAY_AUTH_PASSWORD", "password"),
    ] {
        if let Some(val) = env(var) {
            set(section(root, "auth"), key, Value::String(val));
        }
    }
    if let Some(origins) = env("MCPGATEWAY_CORS_ALLOWED_ORIGINS") {
        let list: Vec<Value> = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| Value::String(o.to_owned()))
            .collect();
        set(
            section(root, "server"),
            "allowedOrigins",
            Value::Sequence(list),
        );
    }
    if let Some(b) = env_bool(env, "MCPGATEWAY_RATE_LIMIT_ENABLED")? {
        set(section(root, "ratelimit"), "enabled", Value::Bool(b));
    }
    if let Some(n) = env("MCPGATEWAY_RATE_LIMIT_PER_MINUTE") {
        let n: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=60_000_000).contains(n))
            .ok_or_else(|| {
                env_error(
                    "MCPGATEWAY_RATE_LIMIT_PER_MINUTE",
                    "must be a whole number of requests from 1 to 60000000",
                )
            })?;
        // n a minute, of which all n may come at once (GCRA: a minute's worth of burst).
        let rl = section(root, "ratelimit");
        if let Some(rl) = rl {
            rl.insert(
                Value::String("requests_per_second".into()),
                Value::Number((f64::from(n) / 60.0).into()),
            );
            rl.insert(Value::String("burst".into()), Value::Number(n.into()));
        }
    }
    // Features of the proxied servers: turned off by deny rules of the policy (one that
    // allows every method is added when the file has none, so nothing else changes).
    let mut deny = Vec::new();
    for (var, methods) in [
        ("MCPGATEWAY_ENABLE_PROMPTS", "prompts/*"),
        ("MCPGATEWAY_ENABLE_RESOURCES", "resources/*"),
    ] {
        if env_bool(env, var)? == Some(false) {
            let mut rule = serde_yaml_ng::Mapping::new();
            rule.insert("name".into(), Value::String(var.into()));
            rule.insert(
                "methods".into(),
                Value::Sequence(vec![Value::String(methods.into())]),
            );
            deny.push(Value::Mapping(rule));
        }
    }
    if !deny.is_empty() {
        let had_policy = root.get("policy").is_some_and(|p| !p.is_null());
        if let Some(policy) = section(root, "policy") {
            if !had_policy {
                let mut all = serde_yaml_ng::Mapping::new();
                all.insert("name".into(), Value::String("everything".into()));
                all.insert(
                    "methods".into(),
                    Value::Sequence(vec![Value::String("*".into())]),
                );
                policy.insert("allow".into(), Value::Sequence(vec![Value::Mapping(all)]));
            }
            let list = policy
                .entry(Value::String("deny".into()))
                .or_insert_with(|| Value::Sequence(Vec::new()));
            if list.is_null() {
                *list = Value::Sequence(Vec::new());
            }
            if let Value::Sequence(list) = list {
                list.extend(deny);
            }
        }
    }
    for (var, on, why) in [
        (
            "MCPGATEWAY_ENABLE_ROOTS",
            false,
            "no effect: the gateway keeps no roots of its own (roots pass between the MCP client and the upstream)",
        ),
        (
            "MCPGATEWAY_UI_ENABLED",
            true,
            "no effect: the gateway has no admin UI",
        ),
        (
            "MCPGATEWAY_ADMIN_API_ENABLED",
            true,
            "no effect: the gateway has no admin API",
        ),
        (
            "MCPGATEWAY_LOG_SENSITIVE_DATA",
            true,
            "no effect: the gateway never logs credentials or secrets",
        ),
    ] {
        if env_bool(env, var)? == Some(on) {
            notes.push(format!("environment: {var}: {why}"));
        }
    }

    // The cloud-native guide's variables.
    if let Some(b) = env_bool(env, "MCP_AUTH_ENABLED")? {
        set(section(root, "auth"), "enabled", Value::Bool(b));
    }
    if let Some(mode) = env("MCP_AUTH_MODE") {
        set(section(root, "auth"), "mode", Value::String(mode));
    }
    if let Some(key) = env("MCP_AUTH_API_KEY") {
        set(section(root, "auth"), "apiKey", Value::String(key));
    }
    Ok(notes)
}

/// Finds the line of a dotted key (`ratelimit.client_limits.default`, `upstreams[1].url`)
/// in the block structure of the file: each segment is looked up among the keys of its
/// parent's block only, at that block's own indentation (a key of the same name deeper
/// down, or in a sibling, is not taken for it). Keys inside a flow collection
/// (`basic: {maxConcurrent: 4}`, `- {id: ci, key: ..}`) are given the line of the
/// collection. `None` when a segment is not in the file (a value from the environment or
/// a default).
pub fn find_line(text: &str, key: &str) -> Option<usize> {
    let segments: Vec<(&str, Option<usize>)> = key
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('[') {
            Some((name, idx)) => (name, idx.trim_end_matches(']').parse::<usize>().ok()),
            None => (s, None),
        })
        .collect();
    if segments.is_empty() {
        return None;
    }
    let lines = yaml_lines(text);
    // The lines of the current block, and the line of the deepest segment found.
    let (mut from, mut to) = (0, lines.len());
    let mut found = None;
    for (name, index) in segments {
        let level = lines.get(from).filter(|_| from < to)?.col;
        let (hit, value) = (from..to)
            .filter(|&i| lines[i].col == level)
            .find_map(|i| Some((i, key_value(lines[i].content, name)?)))?;
        let line = &lines[hit];
        found = Some(line.no);
        if value.starts_with(['{', '[']) {
            return found;
        }
        // The value's block: deeper lines, and a sequence written at the key's own
        // indentation (`key:` then `- item` below it).
        from = hit + 1;
        to = (from..to)
            .find(|&i| {
                !(lines[i].indent > line.col || (lines[i].indent == line.col && lines[i].item))
            })
            .unwrap_or(to);
        if let Some(n) = index {
            let marker = lines.get(from).filter(|_| from < to)?.indent;
            let at = (from..to)
                .filter(|&i| lines[i].item && lines[i].indent == marker)
                .nth(n)?;
            found = Some(lines[at].no);
            if lines[at].content.starts_with(['{', '[']) {
                return found;
            }
            // The item's block starts on its own line: its first key follows the `- `.
            from = at;
            to = (at + 1..to)
                .find(|&i| lines[i].indent <= marker)
                .unwrap_or(to);
        }
    }
    found
}

/// A line of YAML as [`find_line`] reads it: blank and comment lines are left out.
struct YamlLine<'a> {
    /// 1-based line number.
    no: usize,
    /// Spaces before the first character (a `- ` included).
    indent: usize,
    /// Column of the content after any `- ` markers.
    col: usize,
    /// Whether the line starts a sequence item.
    item: bool,
    content: &'a str,
}

/// The lines of `text` as YAML counts them: a line ends at LF, CR LF or a lone CR (YAML
/// 1.2's line breaks), so a line number agrees with the parser's in an error. (`str::lines`
/// does not end a line at a lone CR.)
pub fn yaml_text_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text).filter(|t| !t.is_empty());
    std::iter::from_fn(move || {
        let t = rest?;
        match t.find(['\r', '\n']) {
            Some(i) => {
                let skip = if t[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&t[i + skip..]).filter(|r| !r.is_empty());
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

fn yaml_lines(text: &str) -> Vec<YamlLine<'_>> {
    yaml_text_lines(text)
        .enumerate()
        .filter_map(|(i, line)| {
            let content = line.trim_start_matches(' ');
            if content.trim().is_empty() || content.starts_with('#') {
                return None;
            }
            let indent = line.len() - content.len();
            let (mut content, mut col, mut item) = (content, indent, false);
            while let Some(rest) = content
                .strip_prefix("- ")
                .or_else(|| (content == "-").then_some(""))
            {
                let rest_trimmed = rest.trim_start_matches(' ');
                col += content.len() - rest_trimmed.len();
                content = rest_trimmed;
                item = true;
            }
            Some(YamlLine {
                no: i + 1,
                indent,
                col,
                item,
                content,
            })
        })
        .collect()
}

/// If `content` is the mapping entry `name:` (the name plain or quoted), the text after
/// the colon, trimmed.
fn key_value<'a>(content: &'a str, name: &str) -> Option<&'a str> {
    let (body, quote) = match content.chars().next() {
        Some(q @ ('"' | '\'')) => (&content[1..], Some(q)),
        _ => (content, None),
    };
    let mut after = body.strip_prefix(name)?;
    if let Some(q) = quote {
        after = after.strip_prefix(q)?;
    }
    let after = after.strip_prefix(':')?;
    if after.is_empty() || after.starts_with([' ', '\t']) {
        Some(after.trim_start())
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn seed_example_parses() {
        let text = r#"
server:
  mode: "sse"
  addr: "0.0.0.0:8443"
  tls:
    certFile: "/path/to/cert.pem"
    keyFile: "/path/to/key.pem"
    minVersion: "TLS1.2"
    maxVersion: "TLS1.3"
    clientAuth: "RequireAndVerifyClientCert"
    caFile: "/path/to/ca-cert.pem"
auth:
  enabled: true
  mode: "apikey"
  apiKey: "${MCP_AUTH_API_KEY}"
  bearerToken: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."
  username: "admin"
  password: "secret-password"
  jwtSecret: "your-jwt-secret-key"
  jwtAlgorithm: "HS256"
secrets:
  rotation_interval: 168
  max_age: 30
  keep_expired: true
sanitization:
  enabled: true
  max_length: 1000
  allowed_protocols: [http, https]
  blocked_patterns: ["';", "DROP TABLE", "rm -rf", "<script>"]
audit:
  enabled: true
  level: "info"
  storage: "database"
  format: "json"
  masking:
    enabled: true
    fields: [password, token, apiKey, secret, authorization]
    maskValue: "***REDACTED***"
  database:
    type: "sqlite"
    sqlitePath: "/var/lib/cloud-native-mcp-server/audit.db"
    maxRecords: 100000
monitoring:
  auth_failure_threshold: 5
  auth_failure_window: 300
  anomaly_detection:
    enabled: true
    sensitivity: "medium"
ratelimit:
  enabled: true
  requests_per_second: 100
  burst: 200
  cleanup_interval: 60
  client_limits:
    default:
      requests_per_second: 100
    authenticated:
      requests_per_second: 200
  whitelist: ["10.0.0.0/8", "192.168.0.0/16"]
  blacklist: ["malicious.example.com"]
security:
  headers:
    X-Frame-Options: "DENY"
    Strict-Transport-Security: "max-age=31536000; includeSubDomains"
  header_filtering:
    enabled: true
    filtered_headers: [authorization, cookie, x-api-key, x-auth-token]
"#;
        let l = parse(
            text,
            "seed.yaml",
            &env_of(&[("MCP_AUTH_API_KEY", "Abc123!@#Xyz789!@#")]),
        )
        .unwrap();
        assert_eq!(
            l.config.auth.api_key.as_ref().unwrap().expose(),
            "Abc123!@#Xyz789!@#"
        );
        assert_eq!(l.config.ratelimit.burst, Some(200));
        assert_eq!(
            l.config.audit.database.sqlite_path,
            PathBuf::from("/var/lib/cloud-native-mcp-server/audit.db")
        );
        assert_eq!(l.config.security.headers["X-Frame-Options"], "DENY");
        assert!(!format!("{:?}", l.config).contains("secret-password"));
        assert!(!format!("{:?}", l.config).contains("Xyz789"));
    }

    #[test]
    fn unset_variable_is_named_with_line() {
        let text = "server:\n  addr: 127.0.0.1:1\nauth:\n  apiKey: ${NOPE_NOT_SET}\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("NOPE_NOT_SET"), "{e}");
        assert!(e.contains("f.yaml:4"), "{e}");
        assert!(e.contains("auth.apiKey"), "{e}");
    }

    #[test]
    fn type_error_names_file_line_key() {
        let text = "ratelimit:\n  enabled: true\n  burst: lots\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(e.starts_with("f.yaml:3: ratelimit.burst:"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let text = "auth:\n  enabled: true\n  apikey: x\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("apikey"), "{e}");
        assert!(e.contains("f.yaml:3"), "{e}");
    }

    #[test]
    fn secret_type_error_does_not_show_value() {
        let text = "auth:\n  apiKey: 1234567890123456789\n";
        // A number is accepted as a string by serde_yaml_ng? Either way, never printed.
        if let Err(e) = parse(text, "f.yaml", &env_of(&[])) {
            assert!(!e.to_string().contains("1234567890123456789"), "{e}");
        }
        let text = "auth:\n  apiKey: [1234567890123456789]\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(!e.contains("1234567890123456789"), "{e}");
        // Every form of a shared secret: serde would print a number it refuses.
        for text in [
            "auth:\n  jwtSecret: 98765.4321\n",
            "auth:\n  jwtSecretBase64: 98765.4321\n",
            "auth:\n  jwt:\n    issuers:\n      - secret: 98765.4321\n",
            "auth:\n  jwt:\n    issuers:\n      - secretBase64: 98765.4321\n",
        ] {
            let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
            assert!(!e.contains("98765"), "{e}");
            assert!(e.contains("not shown"), "{e}");
        }
    }

    #[test]
    fn env_overrides() {
        let l = parse(
            "auth:\n  enabled: true\n  mode: basic\n",
            "f",
            &env_of(&[
                ("MCP_AUTH_ENABLED", "false"),
                ("MCP_AUTH_MODE", "apikey"),
                ("MCP_AUTH_API_KEY", "Abc123!@#Xyz789!@#"),
            ]),
        )
        .unwrap();
        assert!(!l.config.auth.enabled);
        assert_eq!(l.config.auth.mode.0, vec![mcp_auth::Mode::ApiKey]);
        assert_eq!(
            l.config.auth.api_key.as_ref().unwrap().expose(),
            "Abc123!@#Xyz789!@#"
        );
    }

    #[test]
    fn contextforge_variables() {
        let l = parse(
            "auth:\n  mode: basic\n",
            "f",
            &env_of(&[
                ("MCPGATEWAY_AUTH_ENABLED", "true"),
                ("MCPGATEWAY_AUTH_USERNAME", "ops"),
                ("MCPGATEWAY_AUTH_PASSWORD", "Long-enough-Passw0rd"),
                (
                    "MCPGATEWAY_CORS_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example,",
                ),
                ("MCPGATEWAY_RATE_LIMIT_ENABLED", "true"),
                ("MCPGATEWAY_RATE_LIMIT_PER_MINUTE", "120"),
                ("MCPGATEWAY_ENABLE_PROMPTS", "false"),
                ("MCPGATEWAY_ENABLE_RESOURCES", "true"),
                ("MCPGATEWAY_ENABLE_ROOTS", "false"),
                ("MCPGATEWAY_UI_ENABLED", "false"),
                ("MCPGATEWAY_ADMIN_API_ENABLED", "true"),
                ("MCPGATEWAY_LOG_SENSITIVE_DATA", "false"),
            ]),
        )
        .unwrap();
        let c = &l.config;
        assert!(c.auth.enabled);
        assert_eq!(c.auth.username.as_deref(), Some("ops"));
        assert_eq!(
            c.auth.password.as_ref().unwrap().expose(),
            "Long-enough-Passw0rd"
        );
        assert_eq!(
            c.server.allowed_origins.as_deref(),
            Some(
                &[
                    "https://a.example".to_owned(),
                    "https://b.example".to_owned()
                ][..]
            )
        );
        assert!(c.ratelimit.enabled);
        assert!((c.ratelimit.requests_per_second - 2.0).abs() < 1e-9);
        assert_eq!(c.ratelimit.burst, Some(120));
        // Prompts off: a policy allowing everything else, denying prompts/*.
        let p = c.policy.as_ref().unwrap();
        assert_eq!(p.allow.len(), 1);
        assert_eq!(p.allow[0].methods, ["*"]);
        assert_eq!(p.deny.len(), 1);
        assert_eq!(p.deny[0].methods, ["prompts/*"]);
        // Variables naming what the gateway has not are noted, not silently taken.
        let notes = l.inert_settings();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("environment: MCPGATEWAY_ENABLE_ROOTS: "));
        assert!(notes[1].starts_with("environment: MCPGATEWAY_ADMIN_API_ENABLED: "));
        // A policy in the file keeps its rules and gains the deny rule.
        let l = parse(
            "policy:\n  allow:\n    - {name: tools, methods: [\"tools/*\"]}\n  deny:\n    - {name: no-shell, tools: [run_shell]}\n",
            "f",
            &env_of(&[("MCPGATEWAY_ENABLE_RESOURCES", "false")]),
        )
        .unwrap();
        let p = l.config.policy.unwrap();
        assert_eq!(p.allow.len(), 1);
        assert_eq!(p.allow[0].name, "tools");
        let names: Vec<_> = p.deny.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["no-shell", "MCPGATEWAY_ENABLE_RESOURCES"]);
        // The cloud-native guide's variable wins over ContextForge's.
        let l = parse(
            "",
            "f",
            &env_of(&[
                ("MCPGATEWAY_AUTH_ENABLED", "true"),
                ("MCP_AUTH_ENABLED", "false"),
            ]),
        )
        .unwrap();
        assert!(!l.config.auth.enabled);
        // Bad values name the variable.
        for (var, val) in [
            ("MCPGATEWAY_RATE_LIMIT_PER_MINUTE", "0"),
            ("MCPGATEWAY_RATE_LIMIT_PER_MINUTE", "lots"),
            ("MCPGATEWAY_AUTH_ENABLED", "maybe"),
            ("MCPGATEWAY_ENABLE_PROMPTS", "nope"),
        ] {
            let env = move |k: &str| (k == var).then(|| val.to_owned());
            let e = parse("", "f", &env).unwrap_err().to_string();
            assert!(e.starts_with(&format!("environment: {var}: ")), "{e}");
        }
    }

    #[test]
    fn numeric_variable() {
        let l = parse("ratelimit:\n  burst: ${B}\n", "f", &env_of(&[("B", "7")])).unwrap();
        assert_eq!(l.config.ratelimit.burst, Some(7));
    }

    #[test]
    fn dollar_escape_and_special_chars_survive() {
        let l = parse(
            "auth:\n  apiKey: \"${K}\"\n  username: \"$${literal}\"\n",
            "f",
            &env_of(&[("K", "a: b # c !d")]),
        )
        .unwrap();
        assert_eq!(
            l.config.auth.api_key.as_ref().unwrap().expose(),
            "a: b # c !d"
        );
        assert_eq!(l.config.auth.username.as_deref(), Some("${literal}"));
    }

    #[test]
    fn yaml_lines_end_at_lf_crlf_and_a_lone_cr() {
        let lines: Vec<&str> = yaml_text_lines("a\rb\r\nc\nd").collect();
        assert_eq!(lines, ["a", "b", "c", "d"]);
        assert_eq!(yaml_text_lines("a\n").count(), 1);
        assert_eq!(yaml_text_lines("\r\r").count(), 2);
        assert_eq!(yaml_text_lines("").count(), 0);
        // The parser's line for an error after lone CRs is the line find_line counts.
        let text = "server:\r  addr: 1\rbad: [\r";
        match parse(text, "t.yaml", &|_| None) {
            Err(ConfigError::Invalid { line, .. }) => {
                assert!(line <= yaml_text_lines(text).count() + 1, "line {line}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(find_line("a: 1\rb:\r  c: 2\r", "b.c"), Some(3));
    }

    #[test]
    fn find_line_walks_nesting_and_lists() {
        let text = "a:\n  b: 1\n  c:\n    d: 2\nups:\n  - name: x\n    url: u1\n  - name: y\n    url: u2\n";
        assert_eq!(find_line(text, "a.c.d"), Some(4));
        assert_eq!(find_line(text, "ups[1].url"), Some(9));
        assert_eq!(find_line(text, "ups[0].url"), Some(7));
        assert_eq!(find_line(text, "zz"), None);
        // A key of the same name deeper down (first) or in a sibling is not the key.
        let text = "a:\n  sub:\n    url: 1\n  url: 2\nb:\n  url: 3\n";
        assert_eq!(find_line(text, "a.url"), Some(4));
        assert_eq!(find_line(text, "b.url"), Some(6));
        assert_eq!(find_line(text, "a.sub.url"), Some(3));
        // Flow collections; a sequence at its key's indentation; quoted keys.
        let text = "auth:\n  basic: {maxConcurrent: x}\n  apiKeys:\n  - {id: a, key: k}\n  - id: b\n    \"key\": k\n";
        assert_eq!(find_line(text, "auth.basic.maxConcurrent"), Some(2));
        assert_eq!(find_line(text, "auth.apiKeys[0].key"), Some(4));
        assert_eq!(find_line(text, "auth.apiKeys[1].key"), Some(6));
        assert_eq!(find_line(text, "auth.apiKeys[2]"), None);
    }

    #[test]
    fn inert_settings_are_named_with_their_line() {
        let text = "server:\n  mode: sse\nsecrets:\n  rotation_interval: 168\nmonitoring:\n  anomaly_detection:\n    enabled: true\nlogging:\n  level: debug\n";
        let l = parse(text, "f.yaml", &env_of(&[])).unwrap();
        let notes = l.inert_settings();
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes[0].starts_with("f.yaml:8: logging: "), "{notes:?}");
        assert!(notes[1].starts_with("f.yaml:2: server.mode: "), "{notes:?}");
        assert!(notes[2].starts_with("f.yaml:3: secrets: "), "{notes:?}");
        assert!(
            notes[3].starts_with("f.yaml:6: monitoring.anomaly_detection: "),
            "{notes:?}"
        );
        // Settings that act, or say nothing, give no note.
        let text = "server:\n  mode: streamable-http\nmonitoring:\n  auth_failure_threshold: 5\n  anomaly_detection: {enabled: false}\n";
        assert!(
            parse(text, "f.yaml", &env_of(&[]))
                .unwrap()
                .inert_settings()
                .is_empty()
        );
    }

    #[test]
    fn seed_values_without_effect_are_still_checked() {
        for (text, line, key) in [
            ("server:\n  mode: stdio\n", 2, "server.mode"),
            (
                "server:\n  addr: \"127.0.0.1:0\"\n  mode: streamble-http\n",
                3,
                "server.mode",
            ),
            (
                "monitoring:\n  anomaly_detection:\n    enabled: true\n    sensitivity: extreme\n",
                4,
                "monitoring.anomaly_detection.sensitivity",
            ),
        ] {
            let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
            assert!(e.starts_with(&format!("f.yaml:{line}: {key}")), "{e}");
        }
        let text = "server:\n  mode: SSE\nmonitoring:\n  anomaly_detection: {enabled: true, sensitivity: medium}\n";
        let l = parse(text, "f.yaml", &env_of(&[])).unwrap();
        assert_eq!(l.config.server.mode, Some(ServerMode::Sse));
        assert_eq!(
            l.config.monitoring.anomaly_detection.unwrap().sensitivity,
            Some(Sensitivity::Medium)
        );
    }

    #[test]
    fn keys_the_gateway_sets_are_refused_under_sanitization() {
        for text in [
            "sanitization:\n  enabled: true\n  max_body_bytes: 10\n",
            "sanitization: {enabled: true, max_body_bytes: 10}\n",
        ] {
            let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
            assert!(e.contains("sanitization.max_body_bytes"), "{e}");
            assert!(e.contains("server.maxBodyBytes"), "{e}");
        }
        let e = parse("sanitization:\n  origin: {}\n", "f.yaml", &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.yaml:2: sanitization.origin"), "{e}");
        // Other sanitization keys, in block or flow style, are not taken for them.
        for text in [
            "sanitization: {enabled: true, max_length: 100}\n",
            "sanitization:\n  enabled: true\n",
        ] {
            parse(text, "f.yaml", &env_of(&[])).unwrap();
        }
    }

    #[test]
    fn errors_in_flow_collections_name_their_line() {
        let text = "server:\n  addr: \"127.0.0.1:0\"\nauth:\n  basic: {maxConcurrent: lots}\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(e.starts_with("f.yaml:4: auth.basic.maxConcurrent"), "{e}");
    }

    /// Property tests for the two small parsers of this module: `${VAR}` expansion and
    /// the key-to-line lookup used by every error message.
    mod props {
        use super::super::{expand_str, find_line};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Segment {
            Text(String),
            Var(String, String),
            Escape,
        }

        fn segment() -> impl Strategy<Value = Segment> {
            prop_oneof![
                "[^$]{0,12}".prop_map(Segment::Text),
                ("[A-Z_][A-Z0-9_]{0,8}", ".{0,12}").prop_map(|(n, v)| Segment::Var(n, v)),
                Just(Segment::Escape),
            ]
        }

        proptest! {
            #[test]
            fn expansion_never_panics(s in ".{0,64}") {
                let _ = expand_str(&s, &|_| Some("v".into()));
                let _ = expand_str(&s, &|_| None);
            }

            #[test]
            fn text_without_a_dollar_is_unchanged(s in "[^$]{0,64}") {
                prop_assert_eq!(expand_str(&s, &|_| None), Ok(s));
            }

            /// Literal text, `${NAME}` and `$${` in any order (and an unterminated `${` at
            /// the end) expand to the text, the value (never expanded again) and `${`.
            #[test]
            fn segments_expand_as_written(
                segments in prop::collection::vec(segment(), 0..8),
                tail in prop::option::of("[^}]{0,8}"),
            ) {
                let mut input = String::new();
                let mut expected = String::new();
                let mut vars = std::collections::HashMap::new();
                for seg in &segments {
                    match seg {
                        Segment::Text(t) => {
                            input.push_str(t);
                            expected.push_str(t);
                        }
                        Segment::Var(n, v) => {
                            input.push_str(&format!("${{{n}}}"));
                            let v = vars.entry(n.clone()).or_insert_with(|| v.clone());
                            expected.push_str(v);
                        }
                        Segment::Escape => {
                            input.push_str("$${");
                            expected.push_str("${");
                        }
                    }
                }
                if let Some(t) = &tail {
                    input.push_str(&format!("${{{t}"));
                    expected.push_str(&format!("${{{t}"));
                }
                let env = |k: &str| vars.get(k).cloned();
                prop_assert_eq!(expand_str(&input, &env), Ok(expected));
                // Every variable unset: the first one is named.
                let first = segments.iter().find_map(|s| match s {
                    Segment::Var(n, _) => Some(n.clone()),
                    _ => None,
                });
                match first {
                    Some(n) => prop_assert_eq!(expand_str(&input, &|_| None), Err(crate::config::Expand::Unset(n))),
                    None => prop_assert!(expand_str(&input, &|_| None).is_ok()),
                }
            }
        }

        #[derive(Debug, Clone)]
        enum Node {
            Scalar,
            Flow,
            Map(Vec<(String, Node)>),
            Seq(Vec<Node>),
        }

        fn key() -> impl Strategy<Value = String> {
            // Names that are prefixes of each other and repeat across levels.
            prop::sample::select(vec!["a", "ab", "b", "url", "name", "key", "apiKey"])
                .prop_map(str::to_owned)
        }

        fn node() -> impl Strategy<Value = Node> {
            let leaf = prop_oneof![4 => Just(Node::Scalar), 1 => Just(Node::Flow)];
            leaf.prop_recursive(4, 40, 5, |inner| {
                prop_oneof![
                    prop::collection::vec((key(), inner.clone()), 1..5).prop_map(|kv| {
                        let mut seen = std::collections::HashSet::new();
                        Node::Map(
                            kv.into_iter()
                                .filter(|(k, _)| seen.insert(k.clone()))
                                .collect(),
                        )
                    }),
                    prop::collection::vec(inner, 1..4).prop_map(Node::Seq),
                ]
            })
        }

        /// Renders YAML, recording the line of every key path.
        struct Render<'a> {
            out: Vec<String>,
            paths: Vec<(String, usize)>,
            noise: &'a [u8],
            step: usize,
        }

        impl Render<'_> {
            fn flag(&mut self) -> u8 {
                self.step += 1;
                self.noise[self.step % self.noise.len()]
            }
            /// Pushes a line, sometimes after a comment or a blank line; returns its number.
            fn push(&mut self, indent: usize, text: String, quiet: bool) -> usize {
                if !quiet {
                    match self.flag() % 6 {
                        0 => self
                            .out
                            .push(format!("{}# url: key: - a:", " ".repeat(indent))),
                        1 => self.out.push(String::new()),
                        _ => {}
                    }
                }
                self.out.push(format!("{}{text}", " ".repeat(indent)));
                self.out.len()
            }
            fn key_text(&mut self, k: &str) -> String {
                match self.flag() % 4 {
                    0 => format!("\"{k}\""),
                    1 => format!("'{k}'"),
                    _ => k.to_owned(),
                }
            }
            /// A mapping's entries at `indent`; the first line is a sequence item's when
            /// `item` (its `- ` replaces the last two spaces of the indentation).
            fn map(&mut self, entries: &[(String, Node)], indent: usize, path: &str, item: bool) {
                for (n, (k, v)) in entries.iter().enumerate() {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let first_of_item = item && n == 0;
                    let kt = self.key_text(k);
                    let text = match v {
                        Node::Scalar => format!("{kt}: v"),
                        Node::Flow => format!("{kt}: {{a: 1, url: [x]}}"),
                        _ => format!("{kt}:"),
                    };
                    let line = self.push(indent, text, first_of_item);
                    if first_of_item {
                        let l = &mut self.out[line - 1];
                        l.replace_range(indent - 2..indent, "- ");
                    }
                    self.paths.push((p.clone(), line));
                    match v {
                        Node::Flow => {
                            self.paths.push((format!("{p}.a"), line));
                            self.paths.push((format!("{p}.url"), line));
                        }
                        Node::Map(children) => self.map(children, indent + 2, &p, false),
                        Node::Seq(items) => {
                            let marker = if self.flag().is_multiple_of(2) {
                                indent
                            } else {
                                indent + 2
                            };
                            self.seq(items, marker, &p);
                        }
                        Node::Scalar => {}
                    }
                }
            }
            fn seq(&mut self, items: &[Node], marker: usize, path: &str) {
                for (i, it) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    match it {
                        Node::Map(entries) => {
                            let before = self.out.len();
                            self.map(entries, marker + 2, &p, true);
                            let first = self
                                .paths
                                .iter()
                                .rev()
                                .find(|(q, _)| q == &format!("{p}.{}", entries[0].0));
                            let line = first.map_or(before + 1, |(_, l)| *l);
                            self.paths.push((p, line));
                        }
                        Node::Seq(_) | Node::Scalar => {
                            // A nested sequence is written as a scalar item here.
                            let line = self.push(marker, "- v".into(), false);
                            self.paths.push((p, line));
                        }
                        Node::Flow => {
                            let line = self.push(marker, "- {a: 1, url: x}".into(), false);
                            self.paths.push((p.clone(), line));
                            self.paths.push((format!("{p}.a"), line));
                        }
                    }
                }
            }
        }

        proptest! {
            #[test]
            fn find_line_never_panics(text in "[ a-z:#\\-\n{}\\[\\]'\"]{0,200}", key in "[a-z.\\[\\]0-9]{0,20}") {
                let _ = find_line(&text, &key);
            }

            /// Every key path of a generated document (nested mappings, sequences of
            /// mappings at either indentation, flow collections, quoted keys, comments
            /// that look like keys, blank lines) is found on its own line.
            #[test]
            fn find_line_finds_every_key_of_a_document(
                top in prop::collection::vec((key(), node()), 1..5),
                noise in prop::collection::vec(any::<u8>(), 1..32),
            ) {
                let mut seen = std::collections::HashSet::new();
                let top: Vec<_> = top.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
                let mut r = Render { out: Vec::new(), paths: Vec::new(), noise: &noise, step: 0 };
                r.map(&top, 0, "", false);
                let text = r.out.join("\n") + "\n";
                prop_assert!(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).is_ok(), "{}", text);
                for (path, line) in &r.paths {
                    prop_assert_eq!(find_line(&text, path), Some(*line), "{}\n{}", path, text);
                }
                prop_assert_eq!(find_line(&text, "nosuchkey"), None);
            }
        }
    }
}
