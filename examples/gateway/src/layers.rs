//! The suite's layers, built from the configuration.

use axum::body::Body;
use http::{HeaderName, Response};
use mcp_audit::{AuditBody, AuditLayer, Auditor};
use mcp_auth::{AuthLayer, AuthorizeLayer, SessionBindingLayer};
use mcp_core::ParseLayer;
use mcp_core::headers::{UntrustedHeaders, UpstreamResponseHeaders};
use mcp_ratelimit::{KeySpec, MissingKey, RateLimitLayer};
use mcp_sanitize::{
    OriginConfig, OriginGuardLayer, ParseSanitizeLayer, ResultScanLayer, SecurityHeadersConfig,
    SecurityHeadersLayer,
};
use tower::util::{Either, MapResponseLayer};

use std::time::Duration;

use crate::config::{ConfigError, Loaded};
use crate::monitor::{AuthFailureMonitorLayer, MonitorSettings};

fn plain_body(r: Response<Body>) -> Response<AuditBody<Body>> {
    r.map(AuditBody::plain)
}

/// The audit slot: the audit layer, or a body wrapper so that both arms have the same
/// response type.
pub type AuditSlot =
    Either<AuditLayer, MapResponseLayer<fn(Response<Body>) -> Response<AuditBody<Body>>>>;

/// Every layer of the request path, `None` when off.
#[derive(Clone, Default)]
pub struct Layers {
    pub auditor: Option<Auditor>,
    pub security_headers: Option<SecurityHeadersLayer>,
    pub origin: Option<OriginGuardLayer>,
    pub ip_limit: Option<RateLimitLayer>,
    pub auth: Option<AuthLayer>,
    /// `monitoring.auth_failure_*`: just outside authentication.
    pub auth_monitor: Option<AuthFailureMonitorLayer>,
    pub principal_limit: Option<RateLimitLayer>,
    /// `server.bodiesInProgressPerPrincipal`: request bodies not yet read whole, per
    /// principal (with authentication).
    pub held_bodies: Option<mcp_ratelimit::HeldBodiesLayer>,
    /// Transport checks + body limit + parse once, and sanitize unless
    /// `sanitization.enabled` is false.
    pub parse: Option<Either<ParseSanitizeLayer, ParseLayer>>,
    /// The transport checks (method, body only on `POST`, MCP headers, protocol version,
    /// `Content-Type`, `Accept`) before authentication and the rate limits, so that a
    /// request the MCP endpoint can never serve costs no credential check or quota; the
    /// parse layer applies them again (reading headers only).
    pub transport: Option<mcp_core::TransportLayer>,
    pub result_scan: Option<ResultScanLayer>,
    pub authorize: Option<AuthorizeLayer>,
    /// Every request header carrying a credential (mcp-auth's one list, plus
    /// `security.header_filtering`): stripped before the upstream, masked in the audit
    /// trail, marked sensitive for every log. Set even with the layers off.
    pub credential_headers: Vec<HeaderName>,
    /// Client headers never forwarded (`security.upstreamHeaders`).
    pub untrusted: UntrustedHeaders,
    /// Upstream response headers never passed to clients
    /// (`security.upstreamResponseHeaders`).
    pub response_headers: std::sync::Arc<UpstreamResponseHeaders>,
    /// The header set to the verified principal (`security.upstreamHeaders.principalHeader`).
    pub principal_header: Option<HeaderName>,
    /// The header set to the verified client certificate
    /// (`security.upstreamHeaders.clientCertHeader`).
    pub client_cert_header: Option<HeaderName>,
    /// The operational endpoints' shared state (readiness cache, their rate limit).
    pub ops: Option<crate::ops::Ops>,
    /// `sessions`: each `Mcp-Session-Id` bound to its principal (with authentication).
    pub sessions: Option<SessionBindingLayer>,
    /// `server.clientIpv6Prefix`, for the audit trail's aggregation of refusals.
    pub client_ipv6_prefix: Option<u8>,
    /// `sanitization.sessions`: per session, `MCP-Protocol-Version` pinned to the
    /// negotiated version and `resources/subscribe` entries capped (after the binding).
    pub session_guard: Option<mcp_sanitize::SessionGuardLayer>,
    /// `upstreams[].maxConnections` / `maxConnectionsPerPrincipal`, in the order of
    /// `upstreams`: shared by every worker's router.
    pub upstream_caps: Vec<mcp_ratelimit::ConcurrencyCap>,
}

impl Layers {
    /// Builds the layers from the configuration.
    pub async fn build(loaded: &Loaded) -> Result<Self, ConfigError> {
        Self::build_with(loaded, true).await
    }

    /// Builds the layers for `check`: validated as for a start, but the audit trail's
    /// storages are neither opened nor written (a check runs beside the live gateway).
    pub async fn build_for_check(loaded: &Loaded) -> Result<Self, ConfigError> {
        Self::build_with(loaded, false).await
    }

    async fn build_with(loaded: &Loaded, open_audit: bool) -> Result<Self, ConfigError> {
        let cfg = &loaded.config;
        let mut layers = Self::default();
        upstream_boundary(loaded, &mut layers)?;
        layers.upstream_caps = crate::caps::upstream_caps(loaded)?;
        layers.ops = Some(crate::ops::Ops::build(loaded, &layers)?);
        if !cfg.layers.enabled {
            return Ok(layers);
        }
        let addr_loopback = cfg
            .server
            .addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false);
        // Origin / Host guard (DNS rebinding): always on with the layers.
        let origin = OriginConfig {
            allowed_origins: cfg.server.allowed_origins.clone().unwrap_or_default(),
            allow_loopback_origins: true,
            allowed_hosts: match &cfg.server.allowed_hosts {
                Some(h) => h.clone(),
                None if addr_loopback => {
                    vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()]
                }
                None => Vec::new(),
            },
        };
        layers.origin = Some(
            OriginGuardLayer::new(&origin)
                .map_err(|e| loaded.error("server.allowedHosts", e.to_string()))?,
        );
        // Security response headers: defaults, plus the seed's `security.headers` map.
        let mut sh = SecurityHeadersConfig::default();
        for (k, v) in &cfg.security.headers {
            if k.eq_ignore_ascii_case("strict-transport-security") {
                sh.hsts = Some(v.clone());
            } else {
                sh.headers.insert(k.clone(), v.clone());
            }
        }
        layers.security_headers = Some(
            SecurityHeadersLayer::new(&sh)
                .map_err(|e| loaded.error("security.headers", e.to_string()))?,
        );
        // Body limit, parse once, sanitize.
        let max_body = cfg.server.max_body_bytes;
        let body_timeout = Duration::from_secs(cfg.server.body_timeout_seconds);
        layers.transport = Some(mcp_core::TransportLayer::new(
            cfg.sanitization.transport_checks(),
        ));
        layers.parse = Some(if cfg.sanitization.enabled {
            let mut sc = cfg.sanitization.clone();
            sc.max_body_bytes = max_body;
            sc.origin = origin.clone();
            let layer = mcp_sanitize::SanitizeLayer::new(sc).map_err(|e| {
                loaded.error(
                    &format!("sanitization.{}", e.key.trim_start_matches("sanitization.")),
                    e.rule.to_string(),
                )
            })?;
            Either::Left(layer.with_parse().body_timeout(body_timeout))
        } else {
            // The transport checks (method, body on GET/DELETE, MCP headers, protocol
            // version, Content-Type, Accept) are protocol correctness: on either way.
            Either::Right(
                ParseLayer::new()
                    .max_body_bytes(max_body)
                    .body_timeout(body_timeout)
                    .transport(cfg.sanitization.transport_checks()),
            )
        });
        let sg = &cfg.sanitization.sessions;
        if sg.enabled {
            layers.session_guard = Some(mcp_sanitize::SessionGuardLayer::new(sg).map_err(|e| {
                loaded.error(
                    &format!("sanitization.sessions.{}", e.key),
                    e.rule.to_string(),
                )
            })?);
            match sg.pin_protocol_version {
                mcp_sanitize::VersionPin::Exact | mcp_sanitize::VersionPin::AtMost => {}
                mcp_sanitize::VersionPin::Off => tracing::warn!(
                    "sanitization.sessions.pin_protocol_version is off: a client may switch MCP-Protocol-Version inside a session, or drop it"
                ),
            }
        } else {
            tracing::warn!(
                "sanitization.sessions.enabled is false: MCP-Protocol-Version is not compared with the version negotiated for the session, and resources/subscribe entries per session are not capped"
            );
        }
        if cfg.result_redaction.enabled {
            let scan = cfg
                .result_redaction
                .scan_config()
                .map_err(|e| loaded.error("result_redaction", e))?;
            layers.result_scan = Some(
                ResultScanLayer::new(&scan)
                    .map_err(|e| loaded.error("result_redaction", e.to_string()))?,
            );
        }
        if cfg.auth.enabled {
            let layer = cfg.auth.build().map_err(|e| auth_error(loaded, &e))?;
            // The layer's list is the configuration's (checked above); joined all the
            // same, so that nothing it reads escapes masking or stripping.
            for h in layer.credential_headers() {
                if !layers.credential_headers.contains(h) {
                    layers.credential_headers.push(h.clone());
                }
            }
            layers.auth = Some(layer);
            // After authentication, before the body is read: the bodies each principal
            // has in progress, over all its connections and addresses.
            layers.held_bodies = Some(
                mcp_ratelimit::HeldBodiesLayer::new(cfg.server.bodies_in_progress_per_principal)
                    .map_err(|_| {
                        loaded.error(
                            "server.bodiesInProgressPerPrincipal",
                            "must be 1 to 1000000",
                        )
                    })?,
            );
        }
        if cfg.audit.enabled {
            // Every credential header is masked, the configured API key header included.
            let audit_cfg = cfg
                .audit
                .clone()
                .with_sensitive_headers(layers.credential_headers.clone());
            let auditor = if open_audit {
                Auditor::from_config(audit_cfg).await
            } else {
                Auditor::without_storage(audit_cfg)
            }
            .map_err(|e| loaded.error("audit", e.to_string()))?;
            if !cfg.audit.aggregate_refusals.enabled {
                tracing::warn!(
                    "audit.aggregateRefusals.enabled is false: every refused request is one audit row, \
                     so a client flooding refused requests grows the trail at its request rate"
                );
            }
            layers.client_ipv6_prefix = Some(cfg.server.client_ipv6_prefix);
            let db = &cfg.audit.database;
            if open_audit
                && db.kind == mcp_audit::DatabaseType::Sqlite
                && cfg
                    .audit
                    .storage
                    .to_vec()
                    .contains(&mcp_audit::Storage::Database)
                && db.max_bytes == 0
            {
                tracing::warn!(
                    "audit.database.maxBytes is 0: the SQLite audit trail's disk use is bounded only by maxRecords"
                );
            }
            layers.auditor = Some(auditor);
        }
        if cfg.auth.enabled {
            layers.auth_monitor = monitor_settings(loaded)?.map(|s| {
                AuthFailureMonitorLayer::new(s, layers.auditor.as_ref().map(|a| a.handle().clone()))
            });
        }
        if cfg.auth.enabled && cfg.sessions.enabled {
            layers.sessions = Some(sessions_layer(loaded)?);
        } else if cfg.auth.enabled {
            tracing::warn!(
                "sessions.enabled is false: any authenticated principal holding a session id can use, read or end that session"
            );
        }
        // Bare principal entries (`ops`) are resolved against what `auth` can produce:
        // accepted only when exactly one method can produce them.
        let sources = cfg.auth.principal_sources(false);
        if let Some(p) = &cfg.policy {
            let policy = p.build_for(&sources).map_err(|e| {
                let key = e.key().replacen("authorization.", "policy.", 1);
                let msg = e.to_string();
                let msg = msg.strip_prefix(&format!("{}: ", e.key())).unwrap_or(&msg);
                loaded.error(&key, msg)
            })?;
            if p.sessions.is_open_to_anyone() {
                tracing::warn!(
                    "policy.sessions.require is anyone: a principal the policy lets call nothing may still open sessions at the upstream, stream and end them"
                );
            }
            layers.authorize = Some(AuthorizeLayer::new(policy));
        }
        let resolve = |section: &str, c: &mut mcp_ratelimit::RateLimitConfig| {
            c.client_limits
                .resolve_principals(&sources)
                .map_err(|e| match e {
                    mcp_ratelimit::ConfigError::InvalidPrincipal { key, rule } => {
                        loaded.error(&format!("{section}.{key}"), rule)
                    }
                    e => loaded.error(section, e.to_string()),
                })
        };
        // The per-IP shield: `ip_ratelimit` when written (it has its own `enabled`, so it
        // also stands alone with `ratelimit.enabled: false`), else derived from
        // `ratelimit`.
        let rl = &cfg.ratelimit;
        let ip_cfg = match &cfg.ip_ratelimit {
            Some(c) => Some(ip_shield_checked(loaded, c)?.clone()),
            None if rl.enabled => Some({
                let mut c = mcp_ratelimit::RateLimitConfig::per_second(
                    (rl.requests_per_second * 2.0).min(1_000_000.0),
                    rl.burst
                        .unwrap_or(rl.requests_per_second.ceil() as u32)
                        .saturating_mul(2)
                        .clamp(1, 1_000_000),
                );
                c.whitelist = rl.whitelist.clone();
                c.blacklist = rl.blacklist.clone();
                c.cleanup_interval = rl.cleanup_interval;
                c.max_keys = rl.max_keys;
                // Streams are capped per principal by `ratelimit.streams`.
                c.streams = mcp_ratelimit::StreamLimits::off();
                c
            }),
            None => None,
        };
        if let Some(mut ip_cfg) = ip_cfg.filter(|c| c.enabled) {
            resolve("ip_ratelimit", &mut ip_cfg)?;
            let ip_cfg = mcp_ratelimit::RateLimitConfig {
                name: if ip_cfg.name == "default" {
                    "ip".into()
                } else {
                    ip_cfg.name
                },
                key: KeySpec::ip(),
                ipv6_prefix: cfg.server.client_ipv6_prefix,
                ..ip_cfg
            };
            layers.ip_limit = Some(
                RateLimitLayer::new(ip_cfg)
                    .map_err(|e| crate::caps::ratelimit_error(loaded, "ip_ratelimit", e))?,
            );
        }
        if rl.enabled {
            let mut p = rl.clone();
            if p.key == KeySpec::ip() {
                p.key = KeySpec::principal();
                p.missing_key = MissingKey::Ip;
            }
            if p.name == "default" {
                p.name = "principal".into();
            }
            p.ipv6_prefix = cfg.server.client_ipv6_prefix;
            resolve("ratelimit", &mut p)?;
            layers.principal_limit = Some(
                RateLimitLayer::new(p)
                    .map_err(|e| crate::caps::ratelimit_error(loaded, "ratelimit", e))?,
            );
        }
        Ok(layers)
    }

    /// The audit slot for a stack.
    pub fn audit_slot(&self, trusted: &mcp_core::TrustedProxies) -> AuditSlot {
        match &self.auditor {
            Some(a) => Either::Left(
                a.layer()
                    .trusted_proxies(trusted.clone())
                    .client_ipv6_prefix(
                        self.client_ipv6_prefix
                            .unwrap_or(mcp_core::client_addr::DEFAULT_IPV6_PREFIX),
                    ),
            ),
            None => Either::Right(MapResponseLayer::new(
                plain_body as fn(Response<Body>) -> Response<AuditBody<Body>>,
            )),
        }
    }

    /// Flushes and stops the audit trail (on shutdown).
    pub async fn flush(&self) {
        if let Some(a) = &self.auditor {
            a.shutdown().await;
        }
    }
}

/// The upstream boundary: the credential headers (`auth.*` and
/// `security.header_filtering`), the client headers never forwarded and the principal
/// header (`security.upstreamHeaders`).
fn upstream_boundary(loaded: &Loaded, layers: &mut Layers) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let mut creds = cfg
        .auth
        .credential_header_names()
        .map_err(|e| auth_error(loaded, &e))?;
    let hf = &cfg.security.header_filtering;
    if hf.enabled {
        for h in &hf.filtered_headers {
            let n = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                loaded.error(
                    "security.header_filtering.filtered_headers",
                    format!("`{h}` is not a header name (written as is, not trimmed)"),
                )
            })?;
            if !creds.contains(&n) {
                creds.push(n);
            }
        }
    }
    // `credentialHeaders` entries are exact names: a `*` would be a literal name no
    // client sends, while `upstreamHeaders.strip` reads it as a prefix.
    for (i, h) in cfg.auth.credential_headers.iter().enumerate() {
        if h.contains('*') {
            return Err(loaded.error(
                &format!("auth.credentialHeaders[{i}]"),
                format!("`{h}`: a credential header is an exact name; `*` is not a wildcard here"),
            ));
        }
    }
    let uh = &cfg.security.upstream_headers;
    let key = |k: &str| format!("security.upstreamHeaders.{k}");
    // The headers the gateway sets itself: a header name that the gateway can vouch for,
    // never a credential header, a framing, hop-by-hop or routing header, an MCP header
    // or one the gateway sets otherwise; a client's copy never passes.
    let own_name = |value: &str, k: &str| -> Result<Option<HeaderName>, ConfigError> {
        if value.is_empty() {
            return Ok(None);
        }
        let n = HeaderName::from_bytes(value.as_bytes()).map_err(|_| {
            loaded.error(
                &key(k),
                "must be a header name (an RFC 9110 token, written as is), or \"\" for none",
            )
        })?;
        if mcp_core::headers::header_name_in(n.as_str(), &creds) {
            return Err(loaded.error(&key(k), "must not be a credential header"));
        }
        let c = mcp_core::headers::canonical_header_name(n.as_str()).into_owned();
        if RESERVED_OWN_HEADERS.contains(&c.as_str())
            || c.starts_with("proxy-")
            || c.starts_with("mcp-")
            || c.starts_with("content-")
        {
            return Err(loaded.error(
                &key(k),
                format!("`{value}` is a header HTTP or MCP gives its own meaning (framing, hop-by-hop, routing, MCP, or set by the gateway): choose another name"),
            ));
        }
        Ok(Some(n))
    };
    let principal_header = own_name(&uh.principal_header, "principalHeader")?;
    let client_cert_header = own_name(&uh.client_cert_header, "clientCertHeader")?;
    if let (Some(p), Some(c)) = (&principal_header, &client_cert_header)
        && mcp_core::headers::same_header_name(p.as_str(), c.as_str())
    {
        return Err(loaded.error(&key("clientCertHeader"), "must differ from principalHeader"));
    }
    let mut untrusted = UntrustedHeaders::default();
    for p in &uh.strip {
        untrusted = untrusted
            .strip(p)
            .map_err(|e| loaded.error(&key("strip"), e.to_string()))?;
    }
    for a in &uh.allow {
        if HeaderName::from_bytes(a.as_bytes())
            .is_ok_and(|n| mcp_core::headers::header_name_in(n.as_str(), &creds))
        {
            return Err(loaded.error(
                &key("allow"),
                format!("`{a}` carries a credential: it is never forwarded"),
            ));
        }
        // The gateway's own headers: the client's copy is always replaced or removed.
        if HeaderName::from_bytes(a.as_bytes()).is_ok_and(|n| {
            n == "x-forwarded-for"
                || [&principal_header, &client_cert_header]
                    .into_iter()
                    .flatten()
                    .any(|o| mcp_core::headers::same_header_name(o.as_str(), n.as_str()))
        }) {
            return Err(loaded.error(
                &key("allow"),
                format!(
                    "`{a}` is a header the gateway sets itself: a client's copy is never forwarded"
                ),
            ));
        }
        if a.contains('_') {
            return Err(loaded.error(
                &key("allow"),
                format!("`{a}`: client headers whose name holds `_` are always dropped (an upstream may read `_` as `-`)"),
            ));
        }
        untrusted = untrusted
            .allow(a)
            .map_err(|e| loaded.error(&key("allow"), e.to_string()))?;
        tracing::warn!(
            header = %a,
            "security.upstreamHeaders.allow: the client's {a} header is forwarded to the upstream, which must not trust it"
        );
    }
    for n in principal_header.iter().chain(&client_cert_header) {
        untrusted = untrusted
            .strip(n.as_str())
            .map_err(|e| loaded.error(&key("strip"), e.to_string()))?;
    }
    layers.principal_header = principal_header;
    layers.client_cert_header = client_cert_header;
    layers.credential_headers = creds;
    layers.untrusted = untrusted;
    layers.response_headers = std::sync::Arc::new(response_headers(loaded)?);
    Ok(())
}

/// `security.upstreamResponseHeaders`: the upstream response headers never passed on.
fn response_headers(loaded: &Loaded) -> Result<UpstreamResponseHeaders, ConfigError> {
    let rh = &loaded.config.security.upstream_response_headers;
    let key = |k: &str| format!("security.upstreamResponseHeaders.{k}");
    let mut filter = UpstreamResponseHeaders::default();
    for p in &rh.strip {
        filter = filter
            .strip(p)
            .map_err(|e| loaded.error(&key("strip"), e.to_string()))?;
    }
    for a in &rh.allow {
        filter = filter.allow(a).map_err(|_| {
            loaded.error(
                &key("allow"),
                format!("`{a}`: a header name of the default list; never a prefix, a hop-by-hop header or Set-Cookie"),
            )
        })?;
        tracing::warn!(
            header = %a,
            "security.upstreamResponseHeaders.allow: the upstream's {a} header is passed on to clients as the gateway's"
        );
    }
    Ok(filter)
}

/// Names `principalHeader` / `clientCertHeader` cannot take (canonical form), besides
/// `proxy-*`, `mcp-*` and `content-*`: framing, hop-by-hop, routing, and headers the
/// gateway checks or sets itself.
const RESERVED_OWN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "accept",
    "accept-encoding",
    "origin",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-request-id",
    "last-event-id",
    "authorization",
    "cookie",
];

/// The per-IP shield runs before authentication and parsing, keyed by client address:
/// quotas that need a principal, a tool or a method, or another key, would never act
/// there, so they are refused rather than accepted without effect.
fn ip_shield_checked<'a>(
    loaded: &Loaded,
    c: &'a mcp_ratelimit::RateLimitConfig,
) -> Result<&'a mcp_ratelimit::RateLimitConfig, ConfigError> {
    let why = "the per-IP shield runs before authentication and parsing: write it under ratelimit";
    if !c.per_tool.is_empty() {
        return Err(loaded.error("ip_ratelimit.per_tool", why));
    }
    if !c.per_method.is_empty() {
        return Err(loaded.error("ip_ratelimit.per_method", why));
    }
    if c.client_limits.authenticated.is_some() {
        return Err(loaded.error("ip_ratelimit.client_limits.authenticated", why));
    }
    if !c.client_limits.principals.is_empty() {
        return Err(loaded.error("ip_ratelimit.client_limits.principals", why));
    }
    if c.key != KeySpec::ip() {
        return Err(loaded.error(
            "ip_ratelimit.key",
            "the per-IP shield is keyed by client address (ip): write other keys under ratelimit",
        ));
    }
    Ok(c)
}

/// `sessions`, sharing `ratelimit.redis` (its URL, timeout and circuit breaker) unless
/// `sessions.redis` is written, so that replicas agree on who owns a session.
fn sessions_layer(loaded: &Loaded) -> Result<SessionBindingLayer, ConfigError> {
    let cfg = &loaded.config;
    let mut s = cfg.sessions.clone();
    if s.redis.is_none()
        && let Some(r) = &cfg.ratelimit.redis
    {
        // Checked here too, so that an invalid breaker is reported where it is written.
        if let Err((key, rule)) = r.breaker.validate() {
            return Err(loaded.error(&format!("ratelimit.redis.breaker.{key}"), rule));
        }
        s.redis = Some(
            mcp_auth::SessionRedisConfig::new(r.url.clone())
                .timeout_ms(r.timeout_ms)
                .breaker(r.breaker),
        );
    }
    SessionBindingLayer::new(&s).map_err(|e| auth_error(loaded, &e))
}

/// `monitoring.auth_failure_threshold` / `auth_failure_window` /
/// `auth_failure_block_seconds`; `None` when the threshold is unset or 0.
fn monitor_settings(loaded: &Loaded) -> Result<Option<MonitorSettings>, ConfigError> {
    const DAY: u64 = 86_400;
    let m = &loaded.config.monitoring;
    let Some(threshold) = m.auth_failure_threshold.filter(|&t| t > 0) else {
        return Ok(None);
    };
    let window = m.auth_failure_window.unwrap_or(300);
    if !(1..=DAY).contains(&window) {
        return Err(loaded.error(
            "monitoring.auth_failure_window",
            "must be 1 to 86400 seconds",
        ));
    }
    if m.auth_failure_block_seconds > DAY {
        return Err(loaded.error(
            "monitoring.auth_failure_block_seconds",
            "must be 0 (alert only) to 86400 seconds",
        ));
    }
    Ok(Some(MonitorSettings {
        threshold,
        window: Duration::from_secs(window),
        block: Duration::from_secs(m.auth_failure_block_seconds),
        ipv6_prefix: loaded.config.server.client_ipv6_prefix,
    }))
}

fn auth_error(loaded: &Loaded, e: &mcp_auth::ConfigError) -> ConfigError {
    // mcp-auth's errors name the key and the rule, never the secret.
    let msg = e.to_string();
    let msg = msg
        .strip_prefix(&format!("{}: ", e.key()))
        .map(str::to_owned)
        .unwrap_or(msg);
    loaded.error(e.key(), msg)
}

/// `; records up to seq N pruned, chain anchored there` when the trail was pruned.
pub fn pruned_note(report: &mcp_audit::VerifyReport) -> String {
    report
        .anchor
        .as_ref()
        .map(|a| format!("; records up to seq {} pruned, chain anchored there", a.seq))
        .unwrap_or_default()
}

/// `mcp-gateway audit verify`.
pub async fn verify_audit(db: &std::path::Path) -> Result<(), String> {
    if !db.exists() {
        return Err(format!("{}: no such audit database", db.display()));
    }
    let path = db.to_owned();
    let report = tokio::task::spawn_blocking(move || mcp_audit::verify_sqlite(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", db.display()))?;
    match &report.problem {
        None => {
            println!(
                "{}: hash chain intact ({} records, head seq {}{})",
                db.display(),
                report.records,
                report.head.seq,
                pruned_note(&report)
            );
            Ok(())
        }
        Some(problem) => Err(format!(
            "{}: hash chain BROKEN after {} records: {problem}",
            db.display(),
            report.records
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Every credential header, default or configured, in any case: read by
    /// authentication, never forwarded, masked by the audit trail (the tracing
    /// redaction takes the same list: `app::router`).
    #[tokio::test]
    async fn every_credential_header_is_stripped_and_masked() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            r#"auth:
  enabled: true
  mode: apikey
  apiKeyHeader: X-MCP-Key
  credentialHeaders: [X-Upstream-Token]
  apiKeys: [{{id: a, key: "Abc123!@#Xyz789!@#Test"}}]
audit:
  enabled: true
  database: {{sqlitePath: "{}"}}
security:
  header_filtering:
    enabled: true
    filtered_headers: [X-Legacy-Secret]
upstreams: [{{name: u, path: /mcp, url: "http://127.0.0.1:9/mcp"}}]
"#,
            dir.path().join("a.db").display()
        );
        let loaded = crate::config::parse(&yaml, "t.yaml", &|_| None).unwrap();
        let layers = Layers::build(&loaded).await.unwrap();
        let expected = [
            "authorization",
            "proxy-authorization",
            "cookie",
            "x-api-key",
            "x-auth-token",
            "x-mcp-key",
            "x-upstream-token",
            "x-legacy-secret",
        ];
        let names: Vec<&str> = layers
            .credential_headers
            .iter()
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(names, expected);
        // Whatever authentication reads is in the list.
        for h in layers.auth.as_ref().unwrap().credential_headers() {
            assert!(layers.credential_headers.contains(h), "{h}");
        }
        let masked = layers
            .auditor
            .as_ref()
            .unwrap()
            .config()
            .sensitive_headers();
        for name in expected {
            for spelling in [name.to_owned(), name.to_ascii_uppercase(), odd_case(name)] {
                let mut from = http::HeaderMap::new();
                from.insert(
                    HeaderName::from_bytes(spelling.as_bytes()).unwrap(),
                    http::HeaderValue::from_static("secret"),
                );
                let mut to = http::HeaderMap::new();
                crate::proxy::copy_request_headers(
                    &from,
                    &mut to,
                    &layers.credential_headers,
                    &layers.untrusted,
                );
                assert!(to.is_empty(), "{spelling} is forwarded");
            }
            assert!(masked.iter().any(|m| m == name), "{name} is not masked");
        }
        layers.flush().await;
    }

    fn odd_case(s: &str) -> String {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }
}
