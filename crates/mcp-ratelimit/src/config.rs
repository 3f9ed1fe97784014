//! Configuration: plain serde structs matching the gateway's `ratelimit:` keys, validated
//! by [`RateLimitLayer::new`](crate::RateLimitLayer::new).
//!
//! The keys of the seeds (`enabled`, `requests_per_second`, `burst`, `cleanup_interval`,
//! `client_limits.default` / `client_limits.authenticated`, `whitelist`, `blacklist`) keep
//! their meaning; the others are additions of this crate.
//!
//! ```
//! use mcp_ratelimit::RateLimitConfig;
//!
//! let yaml = r#"
//! enabled: true
//! requests_per_second: 100
//! burst: 200
//! cleanup_interval: 60
//! client_limits:
//!   default:
//!     requests_per_second: 100
//!   authenticated:
//!     requests_per_second: 200
//! whitelist:
//!   - "10.0.0.0/8"
//!   - "192.168.0.0/16"
//! blacklist:
//!   - "203.0.113.0/24"
//! key: [principal, ip]
//! per_tool:
//!   expensive_search:
//!     requests_per_second: 1
//!     burst: 1
//!     cost: 5
//! "#;
//! let config: RateLimitConfig = serde_yaml_ng::from_str(yaml).unwrap();
//! assert!(mcp_ratelimit::RateLimitLayer::new(config).is_ok());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use http::HeaderName;
pub use mcp_core::breaker::BreakerConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `ratelimit:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Whether the layer limits at all. When `false` the layer passes every request on
    /// untouched (no lists, no limits, no headers).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The name of this limiter: the `limiter` label of its metrics, and the policy name
    /// of the client quota in the `RateLimit` / `RateLimit-Policy` headers. The gateway
    /// runs two instances, e.g. `ip` and `principal`.
    #[serde(default = "default_name")]
    pub name: String,
    /// The default tier's sustained rate, when `client_limits.default` does not set one.
    #[serde(default = "default_rps")]
    pub requests_per_second: f64,
    /// The default burst (bucket size). Tiers that do not set `burst` inherit it; when it
    /// is not set either, a tier's burst is its rate rounded up (at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Seconds between two sweeps that evict idle keys from memory (the in-memory
    /// backend; Redis keys expire by themselves).
    #[serde(default = "default_cleanup")]
    pub cleanup_interval: u64,
    /// Tiers: `default`, `authenticated`, per-principal overrides.
    #[serde(default)]
    pub client_limits: ClientLimits,
    /// IP addresses and CIDR networks that bypass every limit of this layer.
    #[serde(default)]
    pub whitelist: Vec<String>,
    /// IP addresses and CIDR networks refused with 403 before any other work. Host names
    /// are refused at configuration time: names are never resolved on the request path.
    #[serde(default)]
    pub blacklist: Vec<String>,
    /// What identifies a client (default `ip`).
    #[serde(default)]
    pub key: KeySpec,
    /// What happens to a request for which the key cannot be built.
    #[serde(default)]
    pub missing_key: MissingKey,
    /// The IPv6 prefix length by which the `ip` key groups IPv6 clients (0 to 128,
    /// default 64): every address of one /64 shares one bucket, so that its holder cannot
    /// get a fresh one by changing address. IPv4 clients (and IPv4-mapped IPv6) are keyed
    /// per address; the lists match the address itself. See `mcp_core::ip_key`.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Quotas and costs per MCP method (`tools/call`, `resources/read`, ...). Needs the
    /// layer to sit inside `mcp_core::ParseLayer`.
    #[serde(default)]
    pub per_method: BTreeMap<String, RuleLimit>,
    /// Quotas and costs per tool name of `tools/call`. Needs `mcp_core::ParseLayer`
    /// outside this layer.
    #[serde(default)]
    pub per_tool: BTreeMap<String, RuleLimit>,
    /// Hard cap on the number of keys held in memory, all quotas of the layer together.
    /// New keys beyond it share one overflow bucket per quota (see the crate docs).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Cap on concurrent in-flight requests per client key (none by default). A request
    /// is in flight until its response body ends: a streamed (SSE) answer holds its slot
    /// as long as it streams. A stream request (see [`StreamLimits`]) counts against
    /// `streams` instead when a stream cap is set.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Caps on open streams (`GET` requests that accept `text/event-stream`: MCP's
    /// standalone and resumed SSE streams) per client key and per session.
    #[serde(default)]
    pub streams: StreamLimits,
    /// Which rate limit headers are sent.
    #[serde(default)]
    pub headers: HeadersConfig,
    /// Share the budget between replicas through Redis (cargo feature `redis`).
    #[serde(default)]
    pub redis: Option<RedisConfig>,
}

fn default_true() -> bool {
    true
}
fn default_name() -> String {
    "default".to_owned()
}
fn default_rps() -> f64 {
    100.0
}
fn default_cleanup() -> u64 {
    60
}
fn default_ipv6_prefix() -> u8 {
    mcp_core::DEFAULT_IPV6_PREFIX
}
fn default_max_keys() -> usize {
    100_000
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: default_name(),
            requests_per_second: default_rps(),
            burst: None,
            cleanup_interval: default_cleanup(),
            client_limits: ClientLimits::default(),
            whitelist: Vec::new(),
            blacklist: Vec::new(),
            key: KeySpec::default(),
            missing_key: MissingKey::default(),
            ipv6_prefix: default_ipv6_prefix(),
            per_method: BTreeMap::new(),
            per_tool: BTreeMap::new(),
            max_keys: default_max_keys(),
            concurrency: None,
            streams: StreamLimits::default(),
            headers: HeadersConfig::default(),
            redis: None,
        }
    }
}

impl RateLimitConfig {
    /// A configuration with this rate and burst for every client, keyed by client IP.
    pub fn per_second(requests_per_second: f64, burst: u32) -> Self {
        Self {
            requests_per_second,
            burst: Some(burst),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: KeySpec) -> Self {
        self.key = key;
        self
    }

    /// Sets the name (metrics label and header policy name).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// Caps on open streams: `GET` requests whose `Accept` lists `text/event-stream` (MCP's
/// standalone SSE stream, and the resumption of a request's stream with
/// `Last-Event-ID`). A stream holds its slots until its response body ends (the client
/// disconnects, the upstream ends it, a write timeout cuts the connection). Over a cap:
/// 429 (`RejectionReason::ConcurrencyLimited`, detail `streams_per_session:<name>` or
/// `streams_per_client:<name>`) with `Retry-After`.
///
/// The counts are per process (per replica), like the in-flight cap: an open stream is
/// a local resource (a connection, a task, an upstream connection), as with nginx's
/// `limit_conn` or Envoy's circuit breakers.
///
/// ```
/// use mcp_ratelimit::StreamLimits;
/// let s: StreamLimits = serde_yaml_ng::from_str("{ per_session: 2, per_principal: 10 }").unwrap();
/// assert_eq!((s.per_session, s.per_client), (Some(2), Some(10)));
/// assert_eq!(StreamLimits::default(), StreamLimits { per_session: Some(4), per_client: Some(32) });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamLimits {
    /// Open streams per client key and `Mcp-Session-Id` (default 4; `null` for no cap).
    #[serde(default = "default_streams_per_session", alias = "perSession")]
    pub per_session: Option<u32>,
    /// Open streams per client key, all sessions together (default 32; `null` for no
    /// cap). Also written `per_principal`: the gateway keys its limiter by principal.
    #[serde(
        default = "default_streams_per_client",
        alias = "per_principal",
        alias = "perPrincipal",
        alias = "perClient"
    )]
    pub per_client: Option<u32>,
}

fn default_streams_per_session() -> Option<u32> {
    Some(4)
}
fn default_streams_per_client() -> Option<u32> {
    Some(32)
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_session: default_streams_per_session(),
            per_client: default_streams_per_client(),
        }
    }
}

impl StreamLimits {
    /// No stream caps: streams count against `concurrency` like any request.
    pub fn off() -> Self {
        Self {
            per_session: None,
            per_client: None,
        }
    }

    /// Whether any stream cap is set.
    pub fn is_on(&self) -> bool {
        self.per_session.is_some() || self.per_client.is_some()
    }
}

/// A rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Sustained rate, requests per second (may be fractional: `0.5` is one every 2 s).
    pub requests_per_second: f64,
    /// Bucket size: how many requests may arrive at once.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// The tiers of `client_limits`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimits {
    /// Every client without a more specific tier (default: the top-level rate and burst).
    #[serde(default)]
    pub default: Option<Limit>,
    /// Requests carrying an authenticated `mcp_core::Principal` (default: the default tier).
    #[serde(default)]
    pub authenticated: Option<Limit>,
    /// Overrides by principal: keys are [qualified ids](mcp_core::Principal::qualified_id)
    /// (`apikey:ops`, `jwt:https://idp.example#alice`, `mtls:spiffe://td/x`), or
    /// `*:<id>` for the bare id proven by any method. A bare key (`ops`) is refused by
    /// [`RateLimitLayer::new`](crate::RateLimitLayer::new) unless
    /// [`resolve_principals`](Self::resolve_principals) resolved it first.
    #[serde(default)]
    pub principals: BTreeMap<String, Limit>,
}

impl ClientLimits {
    /// Rewrites the keys of `principals` to their resolved form: a bare key becomes the
    /// qualified id of the only configured method that can produce it, qualified and
    /// `*:<id>` keys stay (the latter logged as a warning). A key no configured method or
    /// several could produce is an error naming `client_limits.principals.<key>`.
    ///
    /// ```
    /// use mcp_core::{AuthMethod, PrincipalSources};
    /// use mcp_ratelimit::config::{ClientLimits, Limit};
    /// let mut l = ClientLimits::default();
    /// l.principals.insert("ops".into(), Limit { requests_per_second: 1.0, burst: None });
    /// let keys_only = PrincipalSources::new().with_ids(AuthMethod::ApiKey, ["ops"]);
    /// l.clone().resolve_principals(&keys_only).unwrap();
    /// let with_certs = keys_only.with_any_id(AuthMethod::ClientCertificate);
    /// assert!(l.resolve_principals(&with_certs).is_err());
    /// ```
    pub fn resolve_principals(
        &mut self,
        sources: &mcp_core::PrincipalSources,
    ) -> Result<(), ConfigError> {
        let mut out = BTreeMap::new();
        for (entry, limit) in std::mem::take(&mut self.principals) {
            let key = format!("client_limits.principals.{entry}");
            let resolved =
                sources
                    .resolve(&entry)
                    .map_err(|rule| ConfigError::InvalidPrincipal {
                        key: key.clone(),
                        rule,
                    })?;
            if let mcp_core::PrincipalEntry::AnySource(id) = &resolved {
                tracing::warn!(
                    key = %key,
                    "per-principal limit *:{id} applies to the id {id:?} proven by any \
                     authentication method"
                );
            }
            out.insert(resolved.as_written(), limit);
        }
        self.principals = out;
        Ok(())
    }
}

/// A per-method or per-tool rule: an optional quota of its own, and the cost charged to
/// the client quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLimit {
    /// A quota for this method or tool, per client key, on top of the client quota.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// The burst of that quota (default: the rate rounded up, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// How many units of the client quota one call costs (default 1).
    #[serde(default)]
    pub cost: Option<u32>,
}

/// One part of the rate limit key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The client IP: `mcp_core::ClientAddr` (resolved through trusted proxies), else the
    /// connection's peer address.
    Ip,
    /// The qualified id of the `mcp_core::Principal` in the request extensions
    /// (`apikey:ops`, `mtls:spiffe://td/x`): one bucket per principal and method.
    Principal,
    /// The id of the credential that authenticated the principal (API key id).
    Credential,
    /// The value of a request header (values over 64 bytes are replaced by their SHA-256).
    Header(HeaderName),
    /// One key for every request: a global limit.
    Global,
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip => f.write_str("ip"),
            Self::Principal => f.write_str("principal"),
            Self::Credential => f.write_str("credential"),
            Self::Header(h) => write!(f, "header:{h}"),
            Self::Global => f.write_str("global"),
        }
    }
}

/// Why a key part does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPartError {
    /// Not one of the known parts.
    #[error("unknown key part {0:?}: expected ip, principal, credential, global or header:<name>")]
    Unknown(String),
    /// `header:` with an invalid header name.
    #[error("invalid header name in {0:?}")]
    InvalidHeader(String),
}

impl FromStr for KeyPart {
    type Err = KeyPartError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some((kind, name)) = t.split_once(':') {
            if kind.trim().eq_ignore_ascii_case("header") {
                let name = name.trim();
                return HeaderName::from_bytes(name.as_bytes())
                    .map(Self::Header)
                    .map_err(|_| KeyPartError::InvalidHeader(s.to_owned()));
            }
            return Err(KeyPartError::Unknown(s.to_owned()));
        }
        match t.to_ascii_lowercase().as_str() {
            "ip" | "client_ip" => Ok(Self::Ip),
            "principal" => Ok(Self::Principal),
            "credential" | "api_key" | "credential_id" => Ok(Self::Credential),
            "global" => Ok(Self::Global),
            _ => Err(KeyPartError::Unknown(s.to_owned())),
        }
    }
}

/// What identifies a client: one part, or several combined into one key (for example
/// `[principal, ip]`: one bucket per principal and address). In YAML, a string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec(Vec<KeyPart>);

impl KeySpec {
    /// A key made of these parts (an empty list means `global`).
    pub fn new(parts: impl IntoIterator<Item = KeyPart>) -> Self {
        let mut v: Vec<KeyPart> = parts.into_iter().collect();
        if v.is_empty() {
            v.push(KeyPart::Global);
        }
        Self(v)
    }

    /// Keyed by client IP.
    pub fn ip() -> Self {
        Self(vec![KeyPart::Ip])
    }

    /// Keyed by principal id.
    pub fn principal() -> Self {
        Self(vec![KeyPart::Principal])
    }

    /// The parts.
    pub fn parts(&self) -> &[KeyPart] {
        &self.0
    }
}

impl Default for KeySpec {
    fn default() -> Self {
        Self::ip()
    }
}

impl FromStr for KeySpec {
    type Err = KeyPartError;

    /// Parses `ip`, or a `+`-separated combination such as `principal+ip`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts = s
            .split('+')
            .map(KeyPart::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(parts))
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Serialize for KeySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.len() == 1 {
            s.serialize_str(&self.0[0].to_string())
        } else {
            s.collect_seq(self.0.iter().map(|p| p.to_string()))
        }
    }
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::One(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Many(v) => v
                .iter()
                .map(|s| s.parse::<KeyPart>())
                .collect::<Result<Vec<_>, _>>()
                .map(Self::new)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// What happens to a request whose key cannot be built (no principal, no header, no
/// address). Never a 500.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    /// All such requests share one `unknown` bucket with the default quota.
    #[default]
    Shared,
    /// Use the client IP instead (and the shared bucket when there is no IP either).
    Ip,
    /// Refuse them: 403 with `RejectionReason::Forbidden`, detail `ratelimit_no_key`.
    Reject,
}

/// The form of the rate limit headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (earlier drafts,
    /// widely understood).
    #[default]
    Split,
    /// `RateLimit` and `RateLimit-Policy` as structured field lists, the form of the
    /// current draft-ietf-httpapi-ratelimit-headers:
    /// `RateLimit-Policy: "default";q=200;w=2` and `RateLimit: "default";r=57;t=1`.
    Combined,
    /// No RateLimit headers (`Retry-After` is still sent on 429 and 503).
    None,
}

/// Which headers are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// The RateLimit header form.
    #[serde(default)]
    pub style: HeaderStyle,
    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
    /// (reset in seconds from now).
    #[serde(default)]
    pub legacy: bool,
    /// Also put the headers on allowed responses (not only on 429).
    #[serde(default)]
    pub on_allowed: bool,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            style: HeaderStyle::Split,
            legacy: false,
            on_allowed: false,
        }
    }
}

/// What the Redis backend does when Redis cannot be reached in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let requests through unlimited (availability first).
    Open,
    /// Refuse requests with 503 `RejectionReason::Unavailable` (protection first, the
    /// default).
    #[default]
    Closed,
}

/// The Redis backend (cargo feature `redis`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db` or `rediss://...`. The password never appears in
    /// Debug output or errors.
    pub url: String,
    /// Key prefix: keys are `{prefix:client-key}` (hash-tagged for Redis Cluster).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Timeout of every Redis call, connection included, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What to do while Redis is unreachable.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// The circuit breaker in front of Redis: after `failure_threshold` consecutive
    /// failures or timeouts (default 3), requests follow `failure_mode` without calling
    /// Redis for a back-off (`backoff_initial_ms`, default 100, doubling after each failed
    /// probe up to `backoff_max_ms`, default 500), then one request probes it.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

fn default_prefix() -> String {
    "mcp-rl".to_owned()
}
fn default_timeout_ms() -> u64 {
    100
}

impl RedisConfig {
    /// A Redis configuration with the default prefix, timeout and failure mode.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: default_prefix(),
            timeout_ms: default_timeout_ms(),
            failure_mode: FailureMode::default(),
            breaker: BreakerConfig::default(),
        }
    }

    /// Sets the circuit breaker's thresholds.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Sets the failure mode.
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Sets the prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the timeout in milliseconds.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Replaces the user-info of a URL by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("failure_mode", &self.failure_mode)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// An invalid configuration: names the key and the rule, never a secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A rate is not a finite number in [1e-6, 1e6].
    #[error("`{key}` must be a number from 0.000001 to 1000000 (got {value})")]
    InvalidRate {
        /// The configuration key.
        key: String,
        /// The value found.
        value: f64,
    },
    /// A burst is 0.
    #[error("`{key}` must be at least 1")]
    InvalidBurst {
        /// The configuration key.
        key: String,
    },
    /// A cost is 0.
    #[error("`{key}` must be at least 1")]
    InvalidCost {
        /// The configuration key.
        key: String,
    },
    /// A whitelist or blacklist entry is not an IP address or CIDR network.
    #[error("`{key}`: {value:?} {rule}")]
    InvalidNetwork {
        /// The configuration key, e.g. `blacklist[0]`.
        key: String,
        /// The entry.
        value: String,
        /// Why it is refused.
        rule: &'static str,
    },
    /// A numeric setting is out of range.
    #[error("`{key}` {rule}")]
    OutOfRange {
        /// The configuration key.
        key: String,
        /// The rule.
        rule: &'static str,
    },
    /// A name (limiter name, Redis prefix) has characters that are not allowed.
    #[error("`{key}` {rule}")]
    InvalidName {
        /// The configuration key.
        key: String,
        /// The rule.
        rule: &'static str,
    },
    /// A per-principal key does not say how the principal is proven, or names a method no
    /// configured authentication produces.
    #[error("`{key}`: {rule}")]
    InvalidPrincipal {
        /// The configuration key, `client_limits.principals.<entry>`.
        key: String,
        /// The rule, with the forms to write instead.
        rule: String,
    },
    /// `redis` is configured but the crate was built without the `redis` feature.
    #[error("`redis` is configured but mcp-ratelimit was built without the `redis` cargo feature")]
    RedisFeatureDisabled,
    /// The Redis URL does not parse (the URL itself is not repeated: it may hold a password).
    #[error("`redis.url` is not a valid Redis URL: {reason}")]
    InvalidRedisUrl {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_spec_forms() {
        let k: KeySpec = serde_yaml_ng::from_str("ip").unwrap();
        assert_eq!(k, KeySpec::ip());
        let k: KeySpec = serde_yaml_ng::from_str("[principal, \"header:X-Tenant\"]").unwrap();
        assert_eq!(
            k.parts(),
            &[
                KeyPart::Principal,
                KeyPart::Header(HeaderName::from_static("x-tenant"))
            ]
        );
        assert_eq!(k.to_string(), "principal+header:x-tenant");
        assert_eq!(k.to_string().parse::<KeySpec>().unwrap(), k);
        assert!(serde_yaml_ng::from_str::<KeySpec>("cookie").is_err());
        assert!("header:bad name".parse::<KeyPart>().is_err());
        assert!("header:".parse::<KeyPart>().is_err());
        assert_eq!(KeySpec::new([]), KeySpec::new([KeyPart::Global]));
    }

    #[test]
    fn seeds_config_parses() {
        let yaml = r#"
enabled: true
requests_per_second: 100
burst: 200
cleanup_interval: 60
client_limits:
  default:
    requests_per_second: 100
  authenticated:
    requests_per_second: 200
whitelist:
  - "10.0.0.0/8"
  - "192.168.0.0/16"
blacklist:
  - "malicious.example.com"
"#;
        let c: RateLimitConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(c.burst, Some(200));
        assert_eq!(
            c.client_limits.authenticated.unwrap().requests_per_second,
            200.0
        );
        assert_eq!(c.blacklist, vec!["malicious.example.com".to_owned()]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_yaml_ng::from_str::<RateLimitConfig>("requests_per_minute: 3").is_err());
    }

    proptest::proptest! {
        #[test]
        fn key_spec_parser_never_panics_and_round_trips(s in ".{0,80}") {
            if let Ok(k) = s.parse::<KeySpec>() {
                proptest::prop_assert_eq!(k.to_string().parse::<KeySpec>().unwrap(), k);
            }
        }

        #[test]
        fn header_key_parts_round_trip(name in "[a-z0-9-]{1,40}") {
            let k: KeySpec = format!("principal+header:{name}").parse().unwrap();
            proptest::prop_assert_eq!(k.parts().len(), 2);
            proptest::prop_assert_eq!(k.to_string().parse::<KeySpec>().unwrap(), k);
        }
    }

    #[test]
    fn redis_debug_hides_password() {
        let r = RedisConfig::new("redis://:s3cret@127.0.0.1:6379/0");
        let d = format!("{r:?}");
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains("127.0.0.1:6379"));
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(redact_url("redis://u:p@h/"), "redis://***@h/");
    }
}
