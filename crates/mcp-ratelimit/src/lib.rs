//! Per-client rate limiting for MCP servers and gateways, as a Tower layer: GCRA quotas in
//! memory (governor's keyed limiter) or shared between replicas through Redis.
//!
//! # What it does, in order
//!
//! 1. **Deny list** (`blacklist`): a client IP in a listed network gets 403
//!    (`RejectionReason::DeniedByList`) before any other work.
//! 2. **Allow list** (`whitelist`): a client IP in a listed network bypasses every limit
//!    of this layer.
//! 3. **Key**: the client IP (`mcp_core::ClientAddr`, so that only trusted proxies can
//!    change it; without it, the connection's peer from axum's `ConnectInfo` or
//!    `mcp_core::PeerAddr`), the principal id, the API key id, a header, a global key, or
//!    a combination ([`KeySpec`]). An IPv6 client is keyed by its prefix (`ipv6_prefix`,
//!    default /64, with `mcp_core::ip_key`): the holder of a /64 has one bucket, not
//!    2^64; IPv4 is keyed per address. A request without a key follows [`MissingKey`]: a
//!    shared `unknown` bucket (default), its IP, or 403 - never a 500. The deny and allow
//!    lists use the same IP.
//! 4. **In-flight caps** (`concurrency`, `streams`): at most N requests of a key in
//!    flight, else 429 (`RejectionReason::ConcurrencyLimited`, `Retry-After: 1`). A
//!    request is in flight until its response body ends: the layer's response body is an
//!    [`InFlightBody`] that holds the slot until its last frame is read, it fails, or it
//!    is dropped (client gone); a streamed answer (SSE) holds it as long as it streams.
//!    A stream request (`GET` accepting `text/event-stream`) counts against the stream
//!    caps instead ([`StreamLimits`]: open streams per key, default 32, and per key and
//!    `Mcp-Session-Id`, default 4; `Retry-After: 5`). These counts are per replica.
//!    [`HeldBodiesLayer`], a layer of its own, caps the request bodies one principal has
//!    in progress (not yet read whole) over all its connections and addresses.
//! 5. **Quotas**: the client quota of the request's tier (`client_limits.default`,
//!    `client_limits.authenticated` when an authenticated `Principal` is present, or a
//!    per-principal override; an authenticated tier equal to the default one is the
//!    same bucket), charged the request's cost; plus per-method and per-tool
//!    quotas (`per_method`, `per_tool`) read from the `McpRequest`. A JSON-RPC batch is
//!    charged per message. Over quota: 429 (`RejectionReason::RateLimited`) with
//!    `Retry-After` (whole seconds, rounded up, at least 1), the configured RateLimit
//!    headers, and a JSON-RPC error body echoing the request id.
//!
//! # GCRA
//!
//! A quota of rate `r` and burst `b` lets `b` requests through at once, then one every
//! `1/r` seconds: exactly the token bucket of the seeds' `requests_per_second` / `burst`,
//! without a refill task. A cost above the burst never fits: it is refused (413, a
//! JSON-RPC error with the quota's `policy`, the `cost` and the `limit` in `error.data`, no
//! `Retry-After`), checked for every quota before any is charged, never clamped. In memory,
//! the quotas of one request are checked rule quotas first, client quota last, and the
//! units taken from a quota that passed stay taken when a later one refuses; in Redis the
//! script charges all of them or none.
//!
//! # Memory is bounded
//!
//! - Idle keys (whose bucket is full again) are evicted every `cleanup_interval` seconds
//!   by a background task that holds only a `Weak` reference: it ends with the layer.
//! - `max_keys` is a hard cap on the keys held, all quotas of the layer together. When it
//!   is reached, a **new** key is not stored: it is charged to one overflow bucket per
//!   quota, shared by every such key. Clients already known keep their own bucket, and an
//!   attacker rotating millions of source addresses gets, all addresses together, one
//!   client's quota; the counter `mcp_ratelimit_overflow_total` and a warning at each
//!   sweep tell the operator. Once idle keys are swept, new keys get their own bucket
//!   again. A key is at most 64 bytes per text part (longer values are replaced by their
//!   SHA-256).
//! - The in-flight and stream caps hold an entry only while a key has requests or streams
//!   open, and at most `max_keys` entries each (beyond, one shared overflow counter with
//!   the same limit). [`ConcurrencyCap`] holds at most its total in entries.
//!
//! # Redis (cargo feature `redis`)
//!
//! N gateway replicas share one budget: the GCRA runs in one Lua script on the Redis
//! server's clock (`TIME`), called by hash (`EVALSHA`, reloaded on `NOSCRIPT`); keys are
//! `{prefix:client}` (hash-tagged: every key of a client is in one slot, so Redis Cluster
//! works) and expire when idle. One multiplexed connection that reconnects by itself, a
//! timeout on every call, and a configured [`FailureMode`] while Redis is unreachable:
//! open (let requests through) or closed (503, `RejectionReason::Unavailable`). An outage
//! is logged once when it starts and once when it ends, and the gauge
//! `mcp_ratelimit_backend_up` shows it. A circuit breaker ([`BreakerConfig`],
//! `redis.breaker`) makes an outage cost a few timeouts rather than one per request:
//! after 3 consecutive failed calls, requests follow the failure mode at once without
//! calling Redis; one request probes it after 100 ms, then every 200, 400, 500 ms until it
//! answers (gauge `mcp_ratelimit_breaker_state`, counter
//! `mcp_ratelimit_breaker_transitions_total`). The in-flight and stream caps stay per replica:
//! they bound local resources (tasks, connections, upstream connections), as nginx's
//! `limit_conn` and Envoy's circuit breakers do.
//!
//! # Lists
//!
//! Entries are IP addresses or CIDR networks, IPv4 and IPv6. Host names (the seeds'
//! `malicious.example.com`) are refused when the layer is built, with an error naming the
//! entry: resolving names on the request path would be slow and spoofable, and a name's
//! addresses change. List the addresses instead.
//!
//! # Headers
//!
//! [`HeaderStyle::Split`]: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`;
//! [`HeaderStyle::Combined`]: `RateLimit-Policy: "ip";q=200;w=2` and
//! `RateLimit: "ip";r=57;t=1` (draft-ietf-httpapi-ratelimit-headers, current revision);
//! `legacy: true` adds `X-RateLimit-Limit`, `-Remaining`, `-Reset` (seconds from now).
//! Limit is the burst, remaining the units left, reset the seconds until the bucket is
//! full. With `on_allowed: true` they are also put on allowed responses (a second limiter
//! appends its policy to the combined form and leaves the single-valued headers of the
//! inner limiter alone).
//!
//! # Metrics
//!
//! Through the `metrics` facade, label `limiter` = the configured `name` (see
//! [`metric_names`]). The handles are registered when the layer is built: install the
//! recorder first.
//!
//! # Compared with the seeds
//!
//! The seeds key by the `X-Forwarded-For` header as sent; here the IP is the one
//! `mcp_core::ClientAddrLayer` resolved through configured trusted proxies only, so a
//! client cannot pick its own bucket. Their blacklist takes host names; here names are
//! refused at configuration time. Their limiter is per process; here Redis makes it
//! shared.
//!
//! ```
//! use mcp_ratelimit::{KeySpec, RateLimitConfig, RateLimitLayer};
//!
//! // Before authentication: a brute-force shield by IP.
//! let by_ip = RateLimitLayer::new(RateLimitConfig::per_second(20.0, 40).with_name("ip")).unwrap();
//! // After authentication: quotas per principal.
//! let by_principal = RateLimitLayer::new(
//!     RateLimitConfig::per_second(10.0, 20)
//!         .with_name("principal")
//!         .with_key(KeySpec::principal()),
//! )
//! .unwrap();
//! # drop((by_ip, by_principal));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod body;
pub mod config;
mod held_bodies;
mod inflight;
mod key;
mod lists;
mod memory;
mod metrics;
mod quota;
#[cfg(feature = "redis")]
mod redis_backend;
mod service;

pub use body::InFlightBody;
pub use config::{
    BreakerConfig, ClientLimits, ConfigError, FailureMode, HeaderStyle, HeadersConfig, KeyPart,
    KeyPartError, KeySpec, Limit, MissingKey, RateLimitConfig, RedisConfig, RuleLimit,
    StreamLimits,
};
pub use held_bodies::{
    DEFAULT_HELD_BODIES_PER_PRINCIPAL, HeldBodies, HeldBodiesFuture, HeldBodiesLayer, HeldBody,
};
pub use inflight::{CapExceeded, ConcurrencyCap, ConcurrencyPermit};
pub use key::MAX_KEY_PART_LEN;
pub use memory::MockClock;
pub use metrics::names as metric_names;
pub use service::{RateLimit, RateLimitLayer, ResponseFuture, client_ip_of};
