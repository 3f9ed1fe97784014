//! The suite's layers, built from the configuration.

use axum::body::Body;
use http::Response;
use mcp_audit::{AuditBody, AuditLayer, Auditor};
use mcp_auth::{AuthLayer, AuthorizeLayer};
use mcp_core::ParseLayer;
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
    /// Transport checks + body limit + parse once, and sanitize unless
    /// `sanitization.enabled` is false.
    pub parse: Option<Either<ParseSanitizeLayer, ParseLayer>>,
    pub result_scan: Option<ResultScanLayer>,
    pub authorize: Option<AuthorizeLayer>,
}

impl Layers {
    /// Builds the layers from the configuration.
    pub async fn build(loaded: &Loaded) -> Result<Self, ConfigError> {
        let cfg = &loaded.config;
        let mut layers = Self::default();
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
        if cfg.audit.enabled {
            let mut audit_cfg = cfg.audit.clone();
            if cfg.security.header_filtering.enabled {
                for h in &cfg.security.header_filtering.filtered_headers {
                    if !audit_cfg
                        .masking
                        .headers
                        .iter()
                        .any(|x| x.eq_ignore_ascii_case(h))
                    {
                        audit_cfg.masking.headers.push(h.clone());
                    }
                }
            }
            let auditor = Auditor::from_config(audit_cfg)
                .await
                .map_err(|e| loaded.error("audit", e.to_string()))?;
            layers.auditor = Some(auditor);
        }
        if cfg.auth.enabled {
            let layer = cfg.auth.build().map_err(|e| auth_error(loaded, &e))?;
            layers.auth = Some(layer);
            layers.auth_monitor = monitor_settings(loaded)?.map(|s| {
                AuthFailureMonitorLayer::new(s, layers.auditor.as_ref().map(|a| a.handle().clone()))
            });
        }
        if let Some(p) = &cfg.policy {
            let policy = p.build().map_err(|e| auth_error(loaded, &e))?;
            layers.authorize = Some(AuthorizeLayer::new(policy));
        }
        // The per-IP shield: `ip_ratelimit` when written (it has its own `enabled`, so it
        // also stands alone with `ratelimit.enabled: false`), else derived from
        // `ratelimit`.
        let rl = &cfg.ratelimit;
        let ip_cfg = match &cfg.ip_ratelimit {
            Some(c) => Some(c.clone()),
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
                c
            }),
            None => None,
        };
        if let Some(ip_cfg) = ip_cfg.filter(|c| c.enabled) {
            let ip_cfg = mcp_ratelimit::RateLimitConfig {
                name: if ip_cfg.name == "default" {
                    "ip".into()
                } else {
                    ip_cfg.name
                },
                key: KeySpec::ip(),
                ..ip_cfg
            };
            layers.ip_limit = Some(
                RateLimitLayer::new(ip_cfg)
                    .map_err(|e| loaded.error("ip_ratelimit", e.to_string()))?,
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
            layers.principal_limit =
                Some(RateLimitLayer::new(p).map_err(|e| loaded.error("ratelimit", e.to_string()))?);
        }
        Ok(layers)
    }

    /// The audit slot for a stack.
    pub fn audit_slot(&self, trusted: &mcp_core::TrustedProxies) -> AuditSlot {
        match &self.auditor {
            Some(a) => Either::Left(a.layer().trusted_proxies(trusted.clone())),
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
                "{}: hash chain intact ({} records, head seq {})",
                db.display(),
                report.records,
                report.head.seq
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
