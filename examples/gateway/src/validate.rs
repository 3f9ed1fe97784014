//! Checks of a loaded configuration that go beyond its types: secure defaults, upstreams,
//! TLS. (Credentials are checked when the authentication layer is built.)

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::app::RESERVED_PATHS;
use crate::config::{ConfigError, Loaded};

/// Most worker threads `server.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// The listen address.
pub fn listen_addr(loaded: &Loaded) -> Result<SocketAddr, ConfigError> {
    loaded.config.server.addr.parse().map_err(|_| {
        loaded.error(
            "server.addr",
            "must be an IP address and port, e.g. 127.0.0.1:8080",
        )
    })
}

/// `upstreams[i]`'s timeouts: the ones that cannot be off are at least 1 ms, and the
/// deadline of a JSON answer leaves room for its headers. An SSE idle timeout of 0 (none)
/// is logged.
fn upstream_timeouts(loaded: &Loaded, i: usize) -> Result<(), ConfigError> {
    use crate::config::{
        DEFAULT_BODY_IDLE_TIMEOUT_MS, DEFAULT_RESPONSE_DEADLINE_MS, DEFAULT_RESPONSE_TIMEOUT_MS,
    };
    let up = &loaded.config.upstreams[i];
    let key = |k: &str| format!("upstreams[{i}].{k}");
    for (k, v) in [
        ("connectTimeoutMs", up.connect_timeout_ms),
        ("responseTimeoutMs", up.response_timeout_ms),
        ("bodyIdleTimeoutMs", up.body_idle_timeout_ms),
        ("responseDeadlineMs", up.response_deadline_ms),
    ] {
        if v == Some(0) {
            return Err(loaded.error(&key(k), "must be at least 1 (milliseconds)"));
        }
    }
    let response = up
        .response_timeout_ms
        .unwrap_or(DEFAULT_RESPONSE_TIMEOUT_MS);
    let deadline = up
        .response_deadline_ms
        .unwrap_or(DEFAULT_RESPONSE_DEADLINE_MS);
    if deadline < response {
        let k = if up.response_deadline_ms.is_some() {
            "responseDeadlineMs"
        } else {
            "responseTimeoutMs"
        };
        return Err(loaded.error(
            &key(k),
            format!(
                "responseDeadlineMs ({deadline}) must be at least responseTimeoutMs ({response}): \
                 a JSON answer's deadline counts from the request, headers included"
            ),
        ));
    }
    let idle = up
        .body_idle_timeout_ms
        .unwrap_or(DEFAULT_BODY_IDLE_TIMEOUT_MS);
    if idle > deadline {
        tracing::debug!(
            upstream = %up.name,
            "upstreams[{i}].bodyIdleTimeoutMs ({idle}) is above responseDeadlineMs ({deadline}): the deadline comes first"
        );
    }
    if up.sse_idle_timeout_ms == Some(0) {
        tracing::warn!(
            upstream = %up.name,
            "upstreams[{i}].sseIdleTimeoutMs is 0: an SSE answer whose upstream stalls is held open as long as the upstream keeps its connection"
        );
    }
    Ok(())
}

/// Validates everything that does not need the layer crates.
pub fn validate(loaded: &Loaded) -> Result<SocketAddr, ConfigError> {
    let cfg = &loaded.config;
    let addr = listen_addr(loaded)?;
    let loopback = addr.ip().is_loopback();
    if !cfg.auth.enabled && !loopback && !cfg.server.allow_insecure_no_auth {
        return Err(loaded.error(
            "auth.enabled",
            format!(
                "authentication is off on the non-loopback address {addr}; refusing to start \
                 (set server.allowInsecureNoAuth: true to force it)"
            ),
        ));
    }
    if !cfg.layers.enabled && !loopback {
        return Err(loaded.error(
            "layers.enabled",
            "every layer may be turned off only on a loopback address",
        ));
    }
    if cfg.upstreams.is_empty() {
        return Err(loaded.error("upstreams", "at least one upstream is required"));
    }
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, up) in cfg.upstreams.iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        if up.name.is_empty() {
            return Err(loaded.error(&key("name"), "is required"));
        }
        if !names.insert(up.name.as_str()) {
            return Err(loaded.error(&key("name"), format!("`{}` is used twice", up.name)));
        }
        if !up.path.starts_with('/') || up.path.contains(['?', '#', '*', '{']) {
            return Err(loaded.error(&key("path"), "must be a plain absolute path such as /mcp"));
        }
        if RESERVED_PATHS.contains(&up.path.as_str()) {
            return Err(loaded.error(
                &key("path"),
                format!("{} is served by the gateway itself", up.path),
            ));
        }
        if !paths.insert(up.path.as_str()) {
            return Err(loaded.error(&key("path"), format!("`{}` is used twice", up.path)));
        }
        if up.url.is_empty() {
            return Err(loaded.error(&key("url"), "is required"));
        }
        upstream_timeouts(loaded, i)?;
    }
    // `server.tls.enabled: false` (the fetchfy seed's switch) serves plain HTTP: the rest
    // of the section is kept for later and not checked.
    if let Some(tls) = cfg.server.tls.as_ref().filter(|t| t.enabled) {
        tls.validate().map_err(|e| {
            // mcp-tls names the key first ("server.tls.x: rule").
            let msg = e.to_string();
            match msg.split_once(": ") {
                Some((key, rule)) if key.starts_with("server.tls") => loaded.error(key, rule),
                _ => loaded.error("server.tls", msg),
            }
        })?;
    }
    if cfg.server.workers > MAX_WORKERS {
        return Err(loaded.error(
            "server.workers",
            format!("must be at most {MAX_WORKERS} (0: one per CPU)"),
        ));
    }
    if let Some(admin) = &cfg.server.admin_addr {
        let a: SocketAddr = admin.parse().map_err(|_| {
            loaded.error(
                "server.adminAddr",
                "must be an IP address and port, e.g. 127.0.0.1:9090",
            )
        })?;
        if !a.ip().is_loopback() && !cfg.auth.enabled && !cfg.monitoring.metrics_public {
            return Err(loaded.error(
                "server.adminAddr",
                format!(
                    "the admin listener {a} is not on a loopback address and authentication is \
                     off, so /metrics would be open to the network; refusing to start (turn \
                     authentication on, or set monitoring.metrics_public: true to force it)"
                ),
            ));
        }
    }
    if !(1..=3600).contains(&cfg.server.readiness_cache_seconds) {
        return Err(loaded.error("server.readinessCacheSeconds", "must be 1 to 3600 seconds"));
    }
    if cfg.monitoring.metrics_scope.trim().is_empty() {
        return Err(loaded.error("monitoring.metrics_scope", "must not be empty"));
    }
    if cfg.server.client_ipv6_prefix > 128 {
        return Err(loaded.error("server.clientIpv6Prefix", "must be 0 to 128 (bits)"));
    }
    if cfg.server.max_body_bytes == 0 {
        return Err(loaded.error("server.maxBodyBytes", "must be greater than zero"));
    }
    if !(1..=86_400).contains(&cfg.server.idle_timeout_seconds) {
        return Err(loaded.error("server.idleTimeoutSeconds", "must be 1 to 86400 seconds"));
    }
    if !(1..=86_400).contains(&cfg.server.write_timeout_seconds) {
        return Err(loaded.error("server.writeTimeoutSeconds", "must be 1 to 86400 seconds"));
    }
    if cfg
        .server
        .stream_write_timeout_seconds
        .is_some_and(|s| !(1..=86_400).contains(&s))
    {
        return Err(loaded.error(
            "server.streamWriteTimeoutSeconds",
            "must be 1 to 86400 seconds",
        ));
    }
    if !(1..=1_000_000).contains(&cfg.server.bodies_in_progress_per_principal) {
        return Err(loaded.error(
            "server.bodiesInProgressPerPrincipal",
            "must be 1 to 1000000",
        ));
    }
    if !(1..=1_000_000).contains(&cfg.server.max_connections_per_client) {
        return Err(loaded.error("server.maxConnectionsPerClient", "must be 1 to 1000000"));
    }
    if cfg.server.max_requests_per_connection == 0 {
        return Err(loaded.error(
            "server.maxRequestsPerConnection",
            "must be greater than zero",
        ));
    }
    if cfg.server.refusal_drain_bytes > mcp_tls::MAX_REFUSAL_DRAIN_BYTES {
        return Err(loaded.error("server.refusalDrainBytes", "must be 0 to 16777216 (16 MiB)"));
    }
    if !(1..=60_000).contains(&cfg.server.refusal_drain_timeout_ms) {
        return Err(loaded.error(
            "server.refusalDrainTimeoutMs",
            "must be 1 to 60000 milliseconds",
        ));
    }
    if !(1..=10_000).contains(&cfg.server.max_concurrent_streams) {
        return Err(loaded.error("server.maxConcurrentStreams", "must be 1 to 10000"));
    }
    if !(mcp_tls::MIN_CONNECTION_MEMORY_BYTES..=mcp_tls::MAX_CONNECTION_MEMORY_BYTES)
        .contains(&cfg.server.connection_memory_bytes)
    {
        return Err(loaded.error(
            "server.connectionMemoryBytes",
            "must be 65536 (64 KiB) to 1099511627776 (1 TiB)",
        ));
    }
    if cfg.server.connection_memory_bytes < cfg.server.max_body_bytes as u64 {
        return Err(loaded.error(
            "server.connectionMemoryBytes",
            "must be at least server.maxBodyBytes (a body that size must fit in one connection's budget)",
        ));
    }
    if !(mcp_tls::MIN_CONNECTION_MEMORY_BYTES..=mcp_tls::MAX_CONNECTION_MEMORY_BYTES)
        .contains(&cfg.server.client_memory_bytes)
    {
        return Err(loaded.error(
            "server.clientMemoryBytes",
            "must be 65536 (64 KiB) to 1099511627776 (1 TiB)",
        ));
    }
    if cfg.server.client_memory_bytes < cfg.server.max_body_bytes as u64 {
        return Err(loaded.error(
            "server.clientMemoryBytes",
            "must be at least server.maxBodyBytes (a body that size must fit in one address's budget)",
        ));
    }
    if !(1..=86_400).contains(&cfg.server.body_timeout_seconds) {
        return Err(loaded.error("server.bodyTimeoutSeconds", "must be 1 to 86400 seconds"));
    }
    Ok(addr)
}
