//! [`RateLimitLayer`] and the [`RateLimit`] service.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header::RETRY_AFTER};
use mcp_core::{JsonRpcId, McpRequest, Principal, Rejection, RejectionReason};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::InFlightBody;
use crate::config::{ConfigError, KeyPart, Limit, MissingKey, RateLimitConfig, RuleLimit};
use crate::inflight::{InFlight, InFlightGuard};
use crate::key::{self, Key};
use crate::lists::NetList;
use crate::memory::{LayerClock, MemoryBackend, MockClock};
use crate::metrics::Metrics;
use crate::quota::{self, QuotaSpec, Verdict};

const MAX_RATE: f64 = 1_000_000.0;
const MIN_RATE: f64 = 0.000_001;

#[derive(Debug, Clone, Copy)]
struct Rule {
    quota: Option<usize>,
    cost: u32,
}

pub(crate) enum Backend {
    Memory(MemoryBackend),
    #[cfg(feature = "redis")]
    Redis(Arc<crate::redis_backend::RedisBackend>),
}

/// Everything a layer and its services share: the validated configuration and the state.
pub(crate) struct Shared {
    enabled: bool,
    name: Arc<str>,
    key: Vec<KeyPart>,
    missing: MissingKey,
    /// IPv6 clients are keyed by this prefix (`mcp_core::ip_key`).
    ipv6_prefix: u8,
    allow: NetList,
    deny: NetList,
    pub(crate) quotas: Vec<QuotaSpec>,
    default_q: usize,
    auth_q: usize,
    /// Per-principal tiers by qualified id.
    principal_q: HashMap<String, usize>,
    /// Per-principal tiers written `*:<id>`, by bare id.
    any_source_q: HashMap<String, usize>,
    per_method: HashMap<String, Rule>,
    per_tool: HashMap<String, Rule>,
    headers: crate::config::HeadersConfig,
    inflight: Option<Arc<InFlight>>,
    /// Open streams per client key, and per client key and session.
    streams_client: Option<Arc<InFlight>>,
    streams_session: Option<Arc<InFlight>>,
    pub(crate) backend: Backend,
    pub(crate) metrics: Metrics,
    cleanup_interval: Duration,
    cleanup_started: AtomicBool,
    /// Keyed by IP alone, one tier, no lists, rules, in-flight cap or headers on allowed
    /// responses: the request path can take a straight line.
    fast: bool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("key", &self.key)
            .field(
                "quotas",
                &self.quotas.iter().map(|q| &q.policy).collect::<Vec<_>>(),
            )
            .field(
                "backend",
                &match &self.backend {
                    Backend::Memory(_) => "memory",
                    #[cfg(feature = "redis")]
                    Backend::Redis(_) => "redis",
                },
            )
            .finish_non_exhaustive()
    }
}

fn check_rate(key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && (MIN_RATE..=MAX_RATE).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::InvalidRate {
            key: key.to_owned(),
            value: v,
        })
    }
}

fn check_burst(key: &str, b: Option<u32>) -> Result<Option<u32>, ConfigError> {
    match b {
        Some(0) => Err(ConfigError::InvalidBurst {
            key: key.to_owned(),
        }),
        other => Ok(other),
    }
}

fn default_burst(rps: f64) -> u32 {
    (rps.ceil() as u32).max(1)
}

impl Shared {
    fn build(config: RateLimitConfig, clock: LayerClock) -> Result<Self, ConfigError> {
        let c = config;
        if c.name.is_empty()
            || c.name.len() > 64
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(ConfigError::InvalidName {
                key: "name".into(),
                rule: "must be 1 to 64 characters among A-Z a-z 0-9 _ - .",
            });
        }
        let base_rps = check_rate("requests_per_second", c.requests_per_second)?;
        let base_burst = check_burst("burst", c.burst)?;
        if c.cleanup_interval == 0 || c.cleanup_interval > 86_400 {
            return Err(ConfigError::OutOfRange {
                key: "cleanup_interval".into(),
                rule: "must be between 1 and 86400 seconds",
            });
        }
        if c.max_keys == 0 || c.max_keys > 100_000_000 {
            return Err(ConfigError::OutOfRange {
                key: "max_keys".into(),
                rule: "must be between 1 and 100000000",
            });
        }
        if c.ipv6_prefix > 128 {
            return Err(ConfigError::OutOfRange {
                key: "ipv6_prefix".into(),
                rule: "must be 0 to 128 (bits of an IPv6 address that identify a client)",
            });
        }
        if c.concurrency == Some(0) {
            return Err(ConfigError::OutOfRange {
                key: "concurrency".into(),
                rule: "must be at least 1 (leave it out for no cap)",
            });
        }
        for (key, v) in [
            ("streams.per_session", c.streams.per_session),
            ("streams.per_client", c.streams.per_client),
        ] {
            if v == Some(0) {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    rule: "must be at least 1 (null for no cap)",
                });
            }
        }
        let tier = |key: &str, l: Option<Limit>, fallback: (f64, Option<u32>)| {
            let (rps, burst) = match l {
                Some(l) => (
                    check_rate(&format!("{key}.requests_per_second"), l.requests_per_second)?,
                    check_burst(&format!("{key}.burst"), l.burst)?.or(base_burst),
                ),
                None => fallback,
            };
            Ok::<_, ConfigError>((rps, burst.unwrap_or_else(|| default_burst(rps))))
        };
        let name = c.name.clone();
        let (d_rps, d_burst) = tier(
            "client_limits.default",
            c.client_limits.default,
            (base_rps, base_burst),
        )?;
        let (a_rps, a_burst) = tier(
            "client_limits.authenticated",
            c.client_limits.authenticated,
            (d_rps, Some(d_burst)),
        )?;
        let mut quotas = vec![QuotaSpec::new(name.clone(), d_rps, d_burst)];
        // An authenticated tier equal to the default one is the default one (one bucket
        // per key, and no Principal lookup on the request path).
        let auth_q = if (a_rps, a_burst) == (d_rps, d_burst) {
            0
        } else {
            quotas.push(QuotaSpec::new(
                format!("{name}.authenticated"),
                a_rps,
                a_burst,
            ));
            1
        };
        let (mut principal_q, mut any_source_q) = (HashMap::new(), HashMap::new());
        for (id, l) in &c.client_limits.principals {
            let key = format!("client_limits.principals.{id}");
            let (rps, burst) = tier(&key, Some(*l), (d_rps, Some(d_burst)))?;
            // Qualified ids only (`apikey:ops`), or `*:ops` written on purpose: a bare id
            // would give a certificate CN=ops the API key ops' limit.
            match id.strip_prefix("*:") {
                Some(bare) if !bare.is_empty() => {
                    any_source_q.insert(bare.to_owned(), quotas.len())
                }
                _ if mcp_core::principal::split_qualified(id).is_some() => {
                    principal_q.insert(id.clone(), quotas.len())
                }
                _ => {
                    return Err(ConfigError::InvalidPrincipal {
                        key,
                        rule: format!(
                            "does not say how the principal is proven: write apikey:{id}, \
                             bearer:{id}, jwt:<issuer>#{id}, basic:{id}, mtls:{id}, or \
                             *:{id} for any method"
                        ),
                    });
                }
            };
            quotas.push(QuotaSpec::new(format!("{name}.principal"), rps, burst));
        }
        let mut rules =
            |section: &str, tag: &str, map: &std::collections::BTreeMap<String, RuleLimit>| {
                let mut out = HashMap::new();
                for (item, r) in map {
                    let key = format!("{section}.{item}");
                    if item.is_empty() {
                        return Err(ConfigError::InvalidName {
                            key: section.to_owned(),
                            rule: "names must not be empty",
                        });
                    }
                    if r.cost == Some(0) {
                        return Err(ConfigError::InvalidCost {
                            key: format!("{key}.cost"),
                        });
                    }
                    let burst = check_burst(&format!("{key}.burst"), r.burst)?;
                    let quota = match r.requests_per_second {
                        Some(rps) => {
                            let rps = check_rate(&format!("{key}.requests_per_second"), rps)?;
                            let burst = burst.unwrap_or_else(|| default_burst(rps));
                            let token = quota::sanitize_token(item);
                            quotas.push(
                                QuotaSpec::new(format!("{name}.{tag}.{token}"), rps, burst)
                                    .with_redis_suffix(format!(":{}:{token}", &tag[..1])),
                            );
                            Some(quotas.len() - 1)
                        }
                        None if burst.is_some() => {
                            return Err(ConfigError::OutOfRange {
                                key: format!("{key}.burst"),
                                rule: "needs requests_per_second beside it",
                            });
                        }
                        None => None,
                    };
                    out.insert(
                        item.clone(),
                        Rule {
                            quota,
                            cost: r.cost.unwrap_or(1),
                        },
                    );
                }
                Ok(out)
            };
        let per_method = rules("per_method", "method", &c.per_method)?;
        let per_tool = rules("per_tool", "tool", &c.per_tool)?;
        // A cost above a client tier's burst is refused for that tier every time (413).
        let max_cost = per_method
            .values()
            .chain(per_tool.values())
            .map(|r| r.cost)
            .max()
            .unwrap_or(1);
        for q in quotas
            .iter()
            .filter(|q| q.redis_suffix.is_empty() && q.burst < max_cost)
        {
            tracing::warn!(
                limiter = %name,
                policy = %q.policy,
                burst = q.burst,
                cost = max_cost,
                "a per_method or per_tool cost exceeds this client tier's burst: such calls are always refused (413) for it"
            );
        }
        let allow = NetList::parse("whitelist", &c.whitelist)?;
        let deny = NetList::parse("blacklist", &c.blacklist)?;
        let metrics = Metrics::new(&name);
        let backend = match &c.redis {
            None => Backend::Memory(MemoryBackend::new(&quotas, c.max_keys, clock)),
            #[cfg(feature = "redis")]
            Some(r) => Backend::Redis(Arc::new(crate::redis_backend::RedisBackend::new(
                r,
                Arc::from(name.as_str()),
                metrics.clone(),
            )?)),
            #[cfg(not(feature = "redis"))]
            Some(_) => return Err(ConfigError::RedisFeatureDisabled),
        };
        let fast = c.enabled
            && c.key.parts() == [KeyPart::Ip]
            && auth_q == 0
            && principal_q.is_empty()
            && any_source_q.is_empty()
            && per_method.is_empty()
            && per_tool.is_empty()
            && allow.is_empty()
            && deny.is_empty()
            && c.concurrency.is_none()
            && !c.headers.on_allowed;
        Ok(Self {
            fast,
            enabled: c.enabled,
            name: Arc::from(name.as_str()),
            key: c.key.parts().to_vec(),
            missing: c.missing_key,
            ipv6_prefix: c.ipv6_prefix,
            allow,
            deny,
            quotas,
            default_q: 0,
            auth_q,
            principal_q,
            any_source_q,
            per_method,
            per_tool,
            headers: c.headers,
            inflight: c
                .concurrency
                .map(|n| Arc::new(InFlight::new(n, c.max_keys))),
            streams_client: c
                .streams
                .per_client
                .map(|n| Arc::new(InFlight::new(n, c.max_keys))),
            streams_session: c
                .streams
                .per_session
                .map(|n| Arc::new(InFlight::new(n, c.max_keys))),
            backend,
            metrics,
            cleanup_interval: Duration::from_secs(c.cleanup_interval),
            cleanup_started: AtomicBool::new(false),
        })
    }

    fn tier(&self, principal: Option<&Principal>) -> usize {
        if let Some(p) = principal {
            if !self.principal_q.is_empty()
                && let Some(&q) = self.principal_q.get(p.qualified_id())
            {
                return q;
            }
            if !self.any_source_q.is_empty()
                && let Some(&q) = self.any_source_q.get(p.id())
            {
                return q;
            }
            if p.is_authenticated() {
                return self.auth_q;
            }
        }
        self.default_q
    }

    /// The quotas a request is charged to: rule quotas first, the client quota last.
    #[inline]
    fn charges(&self, tier: usize, mcp: Option<&McpRequest>) -> Charges {
        let Some(mcp) = mcp else {
            return Charges::One([(tier, 1)]);
        };
        let no_rules = self.per_method.is_empty() && self.per_tool.is_empty();
        let mut cost: u32 = 0;
        let mut list: Vec<(usize, u32)> = Vec::new();
        for m in mcp.messages() {
            let Some(method) = m.method() else { continue };
            if no_rules {
                cost = cost.saturating_add(1);
                continue;
            }
            let by_method = self.per_method.get(method);
            let by_tool = m.tool_name().and_then(|t| self.per_tool.get(t));
            cost = cost.saturating_add(by_tool.or(by_method).map_or(1, |r| r.cost));
            for rule in [by_method, by_tool].into_iter().flatten() {
                if let Some(q) = rule.quota {
                    match list.iter_mut().find(|(i, _)| *i == q) {
                        Some((_, n)) => *n = n.saturating_add(1),
                        None => list.push((q, 1)),
                    }
                }
            }
        }
        let cost = cost.max(1);
        if list.is_empty() {
            Charges::One([(tier, cost)])
        } else {
            list.push((tier, cost));
            Charges::Many(list)
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(irrefutable_let_patterns))]
    fn run_cleanup(&self) {
        if let Backend::Memory(m) = &self.backend {
            m.cleanup();
            self.metrics.keys.set(m.key_count() as f64);
            let over = m.budget.take_overflowed();
            if over > 0 {
                self.metrics.overflow.increment(over);
                tracing::warn!(limiter = %self.name, requests = over, "rate limit key cap reached: new keys shared the overflow bucket");
            }
        }
    }

    /// Starts the sweeper once, when a tokio runtime is there. It holds a `Weak`, so it
    /// stops at the first tick after the last layer and service are dropped.
    fn start_cleanup(self: &Arc<Self>) {
        if !matches!(self.backend, Backend::Memory(_))
            || self.cleanup_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.cleanup_started.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        let every = self.cleanup_interval;
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                // A sweep walks every key: keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || shared.run_cleanup()).await;
            }
        });
    }

    /// What to do before consulting the backend.
    fn pre<B>(&self, req: &Request<B>) -> Pre {
        let ip = key::client_ip(req);
        if let Some(ip) = ip {
            if !self.deny.is_empty() && self.deny.contains(ip) {
                self.metrics.denied_by_list.increment(1);
                return Pre::Reject(Box::new(
                    Rejection::new(RejectionReason::DeniedByList)
                        .with_id(request_id(req))
                        .with_detail("ratelimit_blacklist"),
                ));
            }
            if !self.allow.is_empty() && self.allow.contains(ip) {
                self.metrics.allow_listed.increment(1);
                return Pre::Pass;
            }
        }
        // The lists match the address; the key is its client key (IPv6 by prefix).
        let key_ip = ip.map(|ip| mcp_core::ip_key(ip, self.ipv6_prefix));
        let key = match key::extract(&self.key, req, key_ip) {
            Some(k) => k,
            None => match self.missing {
                MissingKey::Shared => Key::Unknown,
                MissingKey::Ip => key_ip.map_or(Key::Unknown, Key::Ip),
                MissingKey::Reject => {
                    self.metrics.no_key.increment(1);
                    return Pre::Reject(Box::new(
                        Rejection::new(RejectionReason::Forbidden)
                            .with_id(request_id(req))
                            .with_detail("ratelimit_no_key"),
                    ));
                }
            },
        };
        let mut held = Vec::new();
        if self.has_stream_caps() && is_stream(req) {
            if let Err(r) = self.acquire_streams(req, &key, &mut held) {
                return Pre::Reject(r);
            }
        } else if let Some(f) = &self.inflight {
            match f.acquire(&key) {
                Some(g) => held.push(g),
                None => {
                    self.metrics.concurrency_limited.increment(1);
                    return Pre::Reject(Box::new(
                        Rejection::new(RejectionReason::ConcurrencyLimited)
                            .with_id(request_id(req))
                            .with_detail(self.name.to_string())
                            .with_header(RETRY_AFTER, "1"),
                    ));
                }
            }
        }
        let mcp = req.extensions().get::<McpRequest>();
        let tier = if self.auth_q == self.default_q
            && self.principal_q.is_empty()
            && self.any_source_q.is_empty()
        {
            self.default_q
        } else {
            self.tier(req.extensions().get::<Principal>())
        };
        let charges = self.charges(tier, mcp);
        // A request costing more than a quota's burst never fits (checked before any
        // quota is charged, so that nothing is taken from the others).
        if let Some(&(qi, cost)) = charges
            .as_slice()
            .iter()
            .find(|&&(qi, cost)| self.quotas.get(qi).is_some_and(|q| cost > q.burst))
        {
            return Pre::Reject(self.exceeds_burst(qi, cost, request_id(req)));
        }
        Pre::Check { charges, key, held }
    }

    #[inline]
    fn has_stream_caps(&self) -> bool {
        self.streams_client.is_some() || self.streams_session.is_some()
    }

    /// Takes the stream slots of a stream request: per client key, then per client key
    /// and `Mcp-Session-Id` (when the request names a session).
    fn acquire_streams<B>(
        &self,
        req: &Request<B>,
        key: &Key,
        held: &mut Vec<InFlightGuard>,
    ) -> Result<(), Box<Rejection>> {
        let refuse = |scope: &'static str, message: &'static str| {
            let counter = if scope == "session" {
                &self.metrics.streams_limited_session
            } else {
                &self.metrics.streams_limited_client
            };
            counter.increment(1);
            Box::new(
                Rejection::new(RejectionReason::ConcurrencyLimited)
                    .with_message(message)
                    .with_detail(format!("streams_per_{scope}:{}", self.name))
                    .with_header(RETRY_AFTER, STREAM_RETRY_AFTER),
            )
        };
        if let Some(f) = &self.streams_client {
            held.push(f.acquire(key).ok_or_else(|| {
                refuse(
                    "client",
                    "Too many open streams for this client: close one first",
                )
            })?);
        }
        if let Some(f) = &self.streams_session
            && let Some(sid) = req.headers().get(SESSION_HEADER)
        {
            let mut text = key.redis_text();
            key::encode_part(&mut text, 's', &String::from_utf8_lossy(sid.as_bytes()));
            held.push(f.acquire(&Key::Text(text.into())).ok_or_else(|| {
                refuse(
                    "session",
                    "Too many open streams for this session: close one first",
                )
            })?);
        }
        Ok(())
    }

    /// The refusal of a request whose cost exceeds a quota's burst: 413, no `Retry-After`
    /// (no wait lets it through), a JSON-RPC error saying so, with the quota's name, the
    /// request's cost and the burst in `error.data`.
    fn exceeds_burst(&self, qi: usize, cost: u32, id: Option<JsonRpcId>) -> Box<Rejection> {
        self.metrics.limited.increment(1);
        let (policy, burst) = self
            .quotas
            .get(qi)
            .map_or((self.name.clone(), 0), |q| (q.policy.clone(), q.burst));
        Box::new(
            Rejection::new(RejectionReason::RateLimited)
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
                .with_id(id)
                .with_message(
                    "Request larger than the rate limit quota allows: a batch is charged per \
                     message, and this one costs more than the quota ever grants at once; \
                     split it into batches of at most error.data.limit",
                )
                .with_detail(format!("exceeds_burst:{policy}"))
                .with_data(serde_json::json!({
                    "policy": &*policy,
                    "cost": cost,
                    "limit": burst,
                })),
        )
    }

    /// Turns a verdict into "go on (with these headers)" or a 429.
    pub(crate) fn finish(&self, v: &Verdict, id: Option<JsonRpcId>) -> Outcome {
        let Some(spec) = self.quotas.get(v.quota) else {
            self.metrics.allowed.increment(1);
            return Outcome::Proceed(None);
        };
        if v.allowed {
            self.metrics.allowed.increment(1);
            let extra = self
                .headers
                .on_allowed
                .then(|| quota::rate_headers(&self.headers, spec, v))
                .filter(|h| !h.is_empty())
                .map(Box::new);
            return Outcome::Proceed(extra);
        }
        if v.exceeds > 0 {
            return Outcome::Reject(self.exceeds_burst(v.quota, v.exceeds, id));
        }
        self.metrics.limited.increment(1);
        let mut r = Rejection::new(RejectionReason::RateLimited)
            .with_id(id)
            .with_detail(spec.policy.to_string())
            .with_header(RETRY_AFTER, quota::retry_after_secs(v.retry_after));
        for (name, value) in &quota::rate_headers(&self.headers, spec, v) {
            r = r.with_header(name.clone(), value.clone());
        }
        Outcome::Reject(Box::new(r))
    }
}

/// The `Retry-After` of a refused stream: a stream slot frees only when a stream ends.
const STREAM_RETRY_AFTER: &str = "5";

/// The MCP session header (Streamable HTTP).
const SESSION_HEADER: &str = "mcp-session-id";

/// Whether a request opens a stream: a `GET` whose `Accept` lists `text/event-stream`.
#[inline]
fn is_stream<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && req
            .headers()
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|v| contains_ignore_case(v.as_bytes(), b"text/event-stream"))
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The units a request costs when no rule applies: one per JSON-RPC message with a
/// method (a batch costs its length), at least 1.
#[inline]
fn request_cost<B>(req: &Request<B>) -> u32 {
    match req.extensions().get::<McpRequest>() {
        None => 1,
        Some(m) if !m.is_batch() => 1,
        Some(m) => (m.messages().iter().filter(|x| x.method().is_some()).count() as u32).max(1),
    }
}

fn request_id<B>(req: &Request<B>) -> Option<JsonRpcId> {
    req.extensions()
        .get::<McpRequest>()
        .and_then(|m| m.id().cloned())
}

pub(crate) enum Charges {
    One([(usize, u32); 1]),
    Many(Vec<(usize, u32)>),
}

impl Charges {
    pub(crate) fn as_slice(&self) -> &[(usize, u32)] {
        match self {
            Self::One(a) => a,
            Self::Many(v) => v,
        }
    }
}

enum Pre {
    Pass,
    Reject(Box<Rejection>),
    Check {
        key: Key,
        charges: Charges,
        held: Vec<InFlightGuard>,
    },
}

/// What the backend decided.
pub(crate) enum Outcome {
    /// Call the inner service, adding these headers to its response.
    Proceed(Option<Box<HeaderMap>>),
    /// Answer with this rejection.
    Reject(Box<Rejection>),
}

/// A layer that limits the request rate per client with GCRA quotas.
///
/// Build it from a [`RateLimitConfig`]: the configuration is validated and a precise
/// [`ConfigError`] names the key at fault. Every service made by one layer shares one
/// budget (clone the layer to share it further; build another layer for another budget).
///
/// Where it goes: keyed by IP, before authentication (a brute-force shield); keyed by
/// principal, after the authentication layer (which puts the `Principal` in the request
/// extensions). Per-method and per-tool rules read the `McpRequest` that
/// `mcp_core::ParseLayer` puts in the request extensions: place this layer inside
/// `ParseLayer` for them (outside it, every request costs 1 and no rule applies). The
/// client IP comes from `mcp_core::ClientAddrLayer` (outside this layer), else from the
/// connection's peer address.
///
/// ```
/// use axum::{Router, routing::post};
/// use mcp_core::{ClientAddrLayer, ParseLayer, TrustedProxies};
/// use mcp_ratelimit::{RateLimitConfig, RateLimitLayer};
///
/// let limit = RateLimitLayer::new(RateLimitConfig::per_second(100.0, 200)).unwrap();
/// let app: Router = Router::new()
///     .route("/mcp", post(|| async { "ok" }))
///     .layer(limit)
///     .layer(ParseLayer::new())
///     .layer(ClientAddrLayer::new(TrustedProxies::none()));
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl RateLimitLayer {
    /// Validates the configuration and builds the layer. With a tokio runtime running, the
    /// sweeper that evicts idle keys starts now; otherwise it starts with the first request.
    pub fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        Self::build(config, LayerClock::real())
    }

    /// Like [`RateLimitLayer::new`], with a manual clock for the in-memory backend (tests).
    pub fn with_clock(config: RateLimitConfig, clock: MockClock) -> Result<Self, ConfigError> {
        Self::build(config, LayerClock::mock(&clock))
    }

    fn build(config: RateLimitConfig, clock: LayerClock) -> Result<Self, ConfigError> {
        let shared = Arc::new(Shared::build(config, clock)?);
        shared.start_cleanup();
        #[cfg(feature = "redis")]
        if let Backend::Redis(r) = &shared.backend {
            // Connect now when a runtime is there (else with the first request).
            r.spawn_connect();
        }
        Ok(Self { shared })
    }

    /// The number of keys the in-memory backend holds now, all quotas together (0 for the
    /// Redis backend, whose keys expire in Redis).
    pub fn key_count(&self) -> usize {
        match &self.shared.backend {
            Backend::Memory(m) => m.key_count(),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => 0,
        }
    }

    /// Runs a sweep now: evicts idle keys and updates the key count gauge (the sweeper does
    /// it every `cleanup_interval`).
    pub fn cleanup_now(&self) {
        self.shared.run_cleanup();
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the backend answers (always true in memory; for Redis, false from the first
    /// failed call of an outage until the first successful one).
    pub fn backend_up(&self) -> bool {
        match &self.shared.backend {
            Backend::Memory(_) => true,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.is_up(),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with the limits of `layer`.
    pub fn new(inner: S, layer: &RateLimitLayer) -> Self {
        layer.layer(inner)
    }
}

type CheckFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: From<Bytes>,
{
    type Response = Response<InFlightBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        // `fast` implies `enabled`; until the sweeper runs, the general path below starts it.
        if shared.fast
            && shared.cleanup_started.load(Ordering::Relaxed)
            // A stream takes the general path (its stream slots); any other GET does not.
            && !(shared.has_stream_caps() && is_stream(&req))
            && let Backend::Memory(m) = &shared.backend
            && let (Some(ip), sole) = key::client_ip_sole(&req)
            // The address was the only extension: there is no McpRequest, so cost 1.
            && (sole || request_cost(&req) == 1)
            && m.try_one(&Key::Ip(mcp_core::ip_key(ip, shared.ipv6_prefix)), 0)
        {
            shared.metrics.allowed.increment(1);
            return ResponseFuture::plain(self.inner.call(req));
        }
        self.call_general(req)
    }
}

impl<S> RateLimit<S> {
    /// Everything but the straight line: kept out of `call` so that the common path stays
    /// short (no registers to save for code it does not run).
    #[inline(never)]
    fn call_general<ReqB, ResB>(&mut self, req: Request<ReqB>) -> ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
        ResB: From<Bytes>,
    {
        let shared = &self.shared;
        if !shared.enabled {
            return ResponseFuture::plain(self.inner.call(req));
        }
        if !shared.cleanup_started.load(Ordering::Relaxed) {
            shared.start_cleanup();
        }
        let (key, charges, held) = match shared.pre(&req) {
            Pre::Pass => return ResponseFuture::plain(self.inner.call(req)),
            Pre::Reject(r) => return ResponseFuture::ready(r.into_response()),
            Pre::Check { key, charges, held } => (key, charges, held),
        };
        match &shared.backend {
            Backend::Memory(m) => {
                if let [(qi, 1)] = charges.as_slice()
                    && !shared.headers.on_allowed
                    && m.try_one(&key, *qi)
                {
                    shared.metrics.allowed.increment(1);
                    return ResponseFuture::inner(self.inner.call(req), held, None);
                }
                let v = m.check(
                    &shared.quotas,
                    &key,
                    charges.as_slice(),
                    shared.headers.on_allowed,
                );
                if v.allowed && !shared.headers.on_allowed {
                    shared.metrics.allowed.increment(1);
                    return ResponseFuture::inner(self.inner.call(req), held, None);
                }
                match shared.finish(&v, if v.allowed { None } else { request_id(&req) }) {
                    Outcome::Proceed(extra) => {
                        ResponseFuture::inner(self.inner.call(req), held, extra)
                    }
                    Outcome::Reject(r) => {
                        drop(held);
                        ResponseFuture::ready(r.into_response())
                    }
                }
            }
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                // The breaker skips Redis: the failure mode applies now, in line.
                if let Some(outcome) = r.skipped(shared, || request_id(&req)) {
                    return match outcome {
                        Outcome::Proceed(extra) => {
                            ResponseFuture::inner(self.inner.call(req), held, extra)
                        }
                        Outcome::Reject(r) => {
                            drop(held);
                            ResponseFuture::ready(r.into_response())
                        }
                    };
                }
                let id = request_id(&req);
                let fut: CheckFuture = Box::pin(crate::redis_backend::check(
                    shared.clone(),
                    r.clone(),
                    key,
                    charges,
                    id,
                ));
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Checking {
                        pending: Box::new(Pending {
                            check: fut,
                            svc: Some(svc),
                            req: Some(req),
                            held,
                        }),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`RateLimit`]. It holds the client's in-flight and stream
    /// slots (when caps are configured) until the response is ready, then hands them to
    /// the response body ([`InFlightBody`]), which holds them until it ends; dropping the
    /// future releases them.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    #[allow(dead_code)]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        // The common path: the inner call, nothing to do afterwards.
        Inner { #[pin] fut: S::Future },
        // The inner call, then headers to add or in-flight slots to hand to the body.
        InnerPost { #[pin] fut: S::Future, post: Option<Box<Post>> },
        // Boxed: a response is large, and the allowed path's future should stay small
        // (a rejection allocates anyway).
        Ready { resp: Option<Box<S::Response>> },
        Checking { pending: Box<Pending<S, ReqB>> },
    }
}

/// What happens when the response is ready: headers to add, in-flight slots to hand to
/// the body. Boxed, and only in the `InnerPost` state (not on the common path: no
/// concurrency cap, no headers on allowed responses), so that the future stays small and
/// its poll cheap.
struct Post {
    held: Vec<InFlightGuard>,
    extra: Option<Box<HeaderMap>>,
}

impl Post {
    #[inline]
    fn boxed(held: Vec<InFlightGuard>, extra: Option<Box<HeaderMap>>) -> Option<Box<Self>> {
        if held.is_empty() && extra.is_none() {
            None
        } else {
            Some(Box::new(Self { held, extra }))
        }
    }

    fn apply<B>(self, resp: Response<B>) -> Response<InFlightBody<B>> {
        let Post { held, extra } = self;
        let (mut parts, body) = resp.into_parts();
        if let Some(extra) = extra {
            quota::merge_headers(&mut parts.headers, *extra);
        }
        Response::from_parts(parts, InFlightBody::holding(body, held))
    }
}

/// The Redis path: the decision being awaited, then the call, and the in-flight slot held
/// meanwhile. Boxed, so that the in-memory path's future stays small.
#[allow(dead_code)]
struct Pending<S, ReqB> {
    check: CheckFuture,
    svc: Option<S>,
    req: Option<Request<ReqB>>,
    held: Vec<InFlightGuard>,
}

impl<S, ReqB> State<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    #[inline]
    fn call(fut: S::Future, held: Vec<InFlightGuard>, extra: Option<Box<HeaderMap>>) -> Self {
        match Post::boxed(held, extra) {
            None => Self::Inner { fut },
            post => Self::InnerPost { fut, post },
        }
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    /// The inner call's future, nothing to do afterwards (the common path: built in
    /// place, no guard or header box to look at or drop).
    #[inline(always)]
    fn plain(fut: S::Future) -> Self {
        Self {
            state: State::Inner { fut },
        }
    }

    #[inline]
    fn inner(fut: S::Future, held: Vec<InFlightGuard>, extra: Option<Box<HeaderMap>>) -> Self {
        Self {
            state: State::call(fut, held, extra),
        }
    }

    fn ready(resp: S::Response) -> Self {
        Self {
            state: State::Ready {
                resp: Some(Box::new(resp)),
            },
        }
    }
}

impl<S, ReqB> fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<InFlightBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let StateProj::Inner { fut } = self.as_mut().project().state.project() {
            return fut
                .poll(cx)
                .map(|out| out.map(|resp| resp.map(InFlightBody::new)));
        }
        self.poll_general(cx)
    }
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    /// Every state but the plain inner call (see `poll`).
    #[inline(never)]
    fn poll_general(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<InFlightBody<ResB>>, S::Error>> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    return fut
                        .poll(cx)
                        .map(|out| out.map(|resp| resp.map(InFlightBody::new)));
                }
                StateProj::InnerPost { fut, post } => {
                    let out = ready!(fut.poll(cx));
                    return Poll::Ready(match post.take() {
                        None => out.map(|resp| resp.map(InFlightBody::new)),
                        Some(post) => out.map(|resp| (*post).apply(resp)),
                    });
                }
                StateProj::Ready { resp } => {
                    return match resp.take() {
                        Some(r) => Poll::Ready(Ok((*r).map(InFlightBody::new))),
                        None => Poll::Pending,
                    };
                }
                StateProj::Checking { pending } => {
                    let outcome = ready!(pending.check.as_mut().poll(cx));
                    match (outcome, pending.svc.take(), pending.req.take()) {
                        (Outcome::Proceed(extra), Some(mut svc), Some(req)) => {
                            State::call(svc.call(req), std::mem::take(&mut pending.held), extra)
                        }
                        // The in-flight slot is freed with `pending`, when the state is set.
                        (Outcome::Reject(r), _, _) => State::Ready {
                            resp: Some(Box::new(r.into_response())),
                        },
                        _ => State::Ready {
                            resp: Some(Box::new(
                                Rejection::new(RejectionReason::Internal).into_response(),
                            )),
                        },
                    }
                }
            };
            this.state.set(next);
        }
    }
}

/// The client IP the layer would use for a request (exposed for tests and diagnostics).
pub fn client_ip_of<B>(req: &Request<B>) -> Option<IpAddr> {
    key::client_ip(req)
}
