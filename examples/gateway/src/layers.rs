//! The suite's layers, built from the configuration.

use axum::body::Body;
use http::Response;
use mcp_audit::{AuditBody, AuditLayer, Auditor};
use mcp_auth::{AuthLayer, AuthorizeLayer};
use mcp_ratelimit::{KeySpec, MissingKey, RateLimitLayer};
use tower::layer::util::Identity;
use tower::util::{Either, MapResponseLayer};

use crate::config::{ConfigError, Loaded};

/// Placeholder type of a layer slot not wired yet.
pub type Pending = Identity;

fn plain_body(r: Response<Body>) -> Response<AuditBody<Body>> {
    r.map(AuditBody::plain)
}

/// The audit slot: the audit layer, or a body wrapper so that both arms have the same
/// response type.
pub type AuditSlot = Either<AuditLayer, MapResponseLayer<fn(Response<Body>) -> Response<AuditBody<Body>>>>;

/// Every layer of the request path, `None` when off.
#[derive(Clone, Default)]
pub struct Layers {
    pub auditor: Option<Auditor>,
    pub security_headers: Option<Pending>,
    pub origin: Option<Pending>,
    pub ip_limit: Option<RateLimitLayer>,
    pub auth: Option<AuthLayer>,
    pub principal_limit: Option<RateLimitLayer>,
    pub sanitize: Option<Pending>,
    pub authorize: Option<AuthorizeLayer>,
}

impl Layers {
    /// Builds the layers from the configuration.
    pub async fn build(loaded: &Loaded) -> Result<Self, ConfigError> {
        let cfg = &loaded.config;
        let mut layers = Self::default();
        if cfg.layers.enabled && cfg.audit.enabled {
            let auditor = Auditor::from_config(cfg.audit.clone())
                .await
                .map_err(|e| loaded.error("audit", e.to_string()))?;
            layers.auditor = Some(auditor);
        }
        if cfg.layers.enabled && cfg.auth.enabled {
            let layer = cfg
                .auth
                .build()
                .map_err(|e| auth_error(loaded, &e))?;
            layers.auth = Some(layer);
        }
        if cfg.layers.enabled {
            if let Some(p) = &cfg.policy {
                let policy = p.build().map_err(|e| auth_error(loaded, &e))?;
                layers.authorize = Some(AuthorizeLayer::new(policy));
            }
        }
        if cfg.layers.enabled && cfg.ratelimit.enabled {
            let rl = &cfg.ratelimit;
            let ip_cfg = match &cfg.ip_ratelimit {
                Some(c) => c.clone(),
                None => {
                    let mut c = mcp_ratelimit::RateLimitConfig::per_second(
                        rl.requests_per_second * 2.0,
                        rl.burst.unwrap_or(rl.requests_per_second.ceil() as u32).saturating_mul(2).max(1),
                    );
                    c.whitelist = rl.whitelist.clone();
                    c.blacklist = rl.blacklist.clone();
                    c.cleanup_interval = rl.cleanup_interval;
                    c.max_keys = rl.max_keys;
                    c
                }
            };
            let ip_cfg = mcp_ratelimit::RateLimitConfig {
                name: if ip_cfg.name == "default" { "ip".into() } else { ip_cfg.name },
                key: KeySpec::ip(),
                ..ip_cfg
            };
            if ip_cfg.enabled {
                layers.ip_limit = Some(
                    RateLimitLayer::new(ip_cfg)
                        .map_err(|e| loaded.error("ip_ratelimit", e.to_string()))?,
                );
            }
            let mut p = rl.clone();
            if p.key == KeySpec::ip() {
                p.key = KeySpec::principal();
                p.missing_key = MissingKey::Ip;
            }
            if p.name == "default" {
                p.name = "principal".into();
            }
            layers.principal_limit = Some(
                RateLimitLayer::new(p).map_err(|e| loaded.error("ratelimit", e.to_string()))?,
            );
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
