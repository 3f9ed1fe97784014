//! `mcp-gateway`: a secure MCP reverse proxy assembled from the suite's layers.
//!
//! - no arguments: demo mode (built-in demo MCP server behind the gateway on
//!   127.0.0.1:8080, a fresh API key printed once, audit trail in
//!   ./mcp-gateway-demo-audit.db)
//! - `--config FILE`: run a configuration
//! - `check --config FILE`: validate a configuration and exit
//! - `keygen`: print a compliant API key
//! - `audit verify [--db FILE | --config FILE]`: check the audit trail's hash chain
//! - `demo-upstream --addr ADDR`: run the demo MCP server alone
#![forbid(unsafe_code)]

mod app;
mod caps;
mod config;
mod demo;
mod keys;
mod layers;
mod monitor;
mod observe;
mod ops;
mod proxy;
mod validate;
mod yaml_bounds;

#[cfg(test)]
mod request_path_props;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::oneshot;

/// The demo mode's SQLite trail (in the current directory): a name of its own, that no
/// configuration shares by accident (a configuration's default is `audit.db`).
const DEMO_TRAIL: &str = "mcp-gateway-demo-audit.db";

/// mimalloc instead of the system allocator: every request allocates (headers, parsed
/// JSON-RPC, audit record), and under load glibc's malloc and free cost about a tenth of
/// the gateway's CPU time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A secure MCP reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "mcp-gateway", version, about)]
struct Cli {
    /// Run the gateway from this configuration file (YAML).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Demo mode only: the gateway's listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and exit (0 when valid).
    Check {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Print a freshly generated API key that meets the key policy.
    Keygen,
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the built-in demo MCP server alone.
    DemoUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        addr: SocketAddr,
        /// Path of the MCP endpoint.
        #[arg(long, default_value = "/mcp")]
        path: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit trail.
    Verify {
        /// The SQLite audit database (demo mode's file by default).
        #[arg(
            long,
            default_value = DEMO_TRAIL,
            conflicts_with = "config"
        )]
        db: PathBuf,
        /// Verify every stored trail of this gateway configuration instead (SQLite,
        /// PostgreSQL, JSON lines files), as its `audit:` section names them.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // One process-wide rustls provider, named: the gateway's own TLS configurations name
    // theirs, but a library that asks rustls for the process default (a `reqwest` or
    // `hyper-rustls` client without a provider) would panic when several are compiled in
    // and none was chosen.
    let _ = rustls::crypto::CryptoProvider::install_default(std::sync::Arc::unwrap_or_clone(
        mcp_tls::provider(),
    ));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = rt.block_on(async move {
        match (cli.command, cli.config) {
            (Some(Command::DemoUpstream { addr, path }), _) => run_demo_upstream(addr, &path).await,
            (Some(Command::Check { config }), _) => check(&config).await,
            (Some(Command::Keygen), _) => {
                println!("{}", keys::generate_api_key());
                Ok(())
            }
            (
                Some(Command::Audit {
                    command:
                        AuditCommand::Verify {
                            config: Some(config),
                            ..
                        },
                }),
                _,
            ) => verify_configured(&config).await,
            (
                Some(Command::Audit {
                    command: AuditCommand::Verify { db, config: None },
                }),
                _,
            ) => layers::verify_audit(&db).await,
            (None, Some(config)) => run_config(&config).await,
            (None, None) => run_demo(cli.addr).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, at the level of `MCP_GATEWAY_LOG` (a `tracing` filter), else of
/// ContextForge's `MCPGATEWAY_LOG_LEVEL` (`DEBUG`, `INFO`, `WARNING`, `ERROR`,
/// `CRITICAL`), else `info`; colored only on a terminal, so that a log file, journald or
/// a container's log holds plain text.
fn init_tracing() {
    use std::io::IsTerminal;
    let contextforge = std::env::var("MCPGATEWAY_LOG_LEVEL").ok();
    let fallback = contextforge.as_deref().and_then(log_level_filter);
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback.unwrap_or("info")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    if contextforge.is_some() && fallback.is_none() {
        tracing::warn!(
            "MCPGATEWAY_LOG_LEVEL: not one of DEBUG, INFO, WARNING, ERROR, CRITICAL; logging at info"
        );
    }
}

/// The `tracing` level of a ContextForge (Python logging) level name.
fn log_level_filter(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_uppercase().as_str() {
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARNING" | "WARN" => Some("warn"),
        "ERROR" | "CRITICAL" => Some("error"),
        _ => None,
    }
}

async fn check(path: &Path) -> Result<(), String> {
    let loaded = config::load(path).map_err(|e| e.to_string())?;
    let addr = validate::validate(&loaded).map_err(|e| e.to_string())?;
    // Building the layers checks the credentials and the rules; building the router
    // checks the upstreams.
    // The audit storages are not opened: a check never writes to any sink (it runs
    // beside the live gateway, whose trail it must not touch).
    let layers = layers::Layers::build_for_check(&loaded)
        .await
        .map_err(|e| e.to_string())?;
    let _router = app::router(&loaded, &layers, None).map_err(|e| e.to_string())?;
    // The listener's certificate and key are read and matched as at start (a missing
    // file, unparsable PEM, a key that does not belong to the certificate or an expired
    // certificate fail here); an ACME configuration is checked without contacting the CA.
    if let Some(t) = loaded.config.server.tls.as_ref().filter(|t| t.enabled) {
        let checked = if t.uses_acme() {
            t.validate().map_err(mcp_tls::TlsError::from)
        } else {
            mcp_tls::TlsAcceptor::from_config(t).map(drop)
        };
        checked.map_err(|e| tls_error(&loaded.file, &e))?;
    }
    for note in loaded.inert_settings() {
        eprintln!("note: {note}");
    }
    println!(
        "{}: OK ({} upstream(s), listening on {addr}, authentication {})",
        loaded.file,
        loaded.config.upstreams.len(),
        if loaded.config.auth.enabled {
            format!("{:?}", loaded.config.auth.mode.0)
        } else {
            "off".to_owned()
        }
    );
    Ok(())
}

/// A TLS error with the configuration file in front, and the `server.tls` key unless
/// the message already names one.
fn tls_error(file: &str, e: &mcp_tls::TlsError) -> String {
    let message = e.to_string();
    if message.starts_with("server.tls") {
        format!("{file}: {message}")
    } else {
        format!("{file}: server.tls: {message}")
    }
}

/// `audit verify --config FILE`: every trail the configuration stores, each reported.
async fn verify_configured(path: &Path) -> Result<(), String> {
    let loaded = config::load(path).map_err(|e| e.to_string())?;
    let reports = mcp_audit::chain::verify_configured(&loaded.config.audit)
        .await
        .map_err(|e| format!("{}: {e}", loaded.file))?;
    if reports.is_empty() {
        return Err(format!(
            "{}: the audit section stores no verifiable trail (database or file)",
            loaded.file
        ));
    }
    let mut broken = Vec::new();
    for (storage, report) in &reports {
        match &report.problem {
            None => println!(
                "{storage}: hash chain intact ({} records, head seq {}{})",
                report.records,
                report.head.seq,
                layers::pruned_note(report)
            ),
            Some(problem) => broken.push(format!(
                "{storage}: hash chain BROKEN after {} records: {problem}",
                report.records
            )),
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(broken.join("\n"))
    }
}

async fn run_config(path: &Path) -> Result<(), String> {
    let loaded = config::load(path).map_err(|e| e.to_string())?;
    serve(loaded, |_| {}).await
}

/// Runs the gateway for `loaded` until SIGINT or SIGTERM. `banner` is called with the
/// address it listens on (port 0 resolved) once every worker accepts connections, just
/// before the `mcp-gateway listening on` line.
async fn serve(loaded: config::Loaded, banner: impl FnOnce(SocketAddr)) -> Result<(), String> {
    let addr = validate::validate(&loaded).map_err(|e| e.to_string())?;
    for note in loaded.inert_settings() {
        tracing::warn!("{note}");
    }
    let cfg = &loaded.config;
    let metrics = if cfg.monitoring.metrics {
        observe::install_recorder()
    } else {
        None
    };
    if let Some(h) = &metrics {
        observe::spawn_upkeep(h.clone());
    }
    // The layers' state is built once and shared; each worker gets a router over it,
    // with upstream pools of its own. All are built before anything listens, so that a
    // configuration error stops the start.
    let layers = layers::Layers::build(&loaded)
        .await
        .map_err(|e| e.to_string())?;
    let workers = match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Peers in server.trustedProxies carry many clients on one address: they are left
    // to the global cap (a proxy limits its own clients).
    let mut limit = mcp_tls::ConnectionLimit::new(cfg.server.max_connections)
        .per_client(cfg.server.max_connections_per_client)
        .client_ipv6_prefix(cfg.server.client_ipv6_prefix)
        .per_client_memory(cfg.server.client_memory_bytes)
        .exempt(mcp_core::TrustedProxies::new(
            cfg.server.trusted_proxies.iter().copied(),
        ));
    // Refusals over the per-client cap go to the audit trail, aggregated per address.
    let connection_audit = layers
        .auditor
        .as_ref()
        .map(|a| std::sync::Arc::new(mcp_audit::ConnectionAudit::new(a.handle().clone())));
    if let Some(observer) = &connection_audit {
        limit = limit.observer(observer.clone());
    }
    if !cfg.server.trusted_proxies.is_empty() {
        tracing::info!(
            per_client = cfg.server.max_connections_per_client,
            "peers in server.trustedProxies are not held to server.maxConnectionsPerClient \
             (only to server.maxConnections): limit connections per client at the proxy"
        );
    }
    let started_tls = std::sync::Arc::new(std::sync::OnceLock::new());
    let exported = metrics.map(|handle| app::Exported {
        handle,
        connections: limit.clone(),
        tls: started_tls.clone(),
    });
    let routers = (0..workers)
        .map(|_| app::router(&loaded, &layers, exported.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Sessions the binding evicts or expires are ended at their upstream (a DELETE).
    if let Some(sessions) = &layers.sessions {
        let proxies = app::build_proxies(&loaded, &layers).map_err(|e| e.to_string())?;
        if proxy::spawn_session_ender(sessions.clone(), proxies).is_some() {
            tracing::info!(
                idle_timeout_seconds = cfg.sessions.idle_timeout_seconds,
                max_sessions_per_principal = cfg.sessions.max_sessions_per_principal,
                "sessions the gateway evicts or expires are ended at their upstream (DELETE)"
            );
        }
    }
    // Bind first: ACME's tls-alpn-01 challenge is answered on the serving port.
    let listeners =
        bind_listeners(addr, workers).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // Certificate files (watched and reloaded) or ACME (`autoCert`, renewed); the
    // background handle keeps them current and must live as long as the server.
    let (acceptor, _tls_background) = match &cfg.server.tls {
        Some(t) if t.enabled => {
            let (acceptor, background) =
                mcp_tls::start(t).map_err(|e| tls_error(&loaded.file, &e))?;
            let _ = started_tls.set(acceptor.clone());
            (Some(acceptor), Some(background))
        }
        _ => (None, None),
    };
    let ops = match &layers.ops {
        Some(ops) => ops.clone(),
        None => ops::Ops::build(&loaded, &layers).map_err(|e| e.to_string())?,
    };
    for warning in ops.warnings() {
        tracing::warn!("{}: {warning}", loaded.file);
    }
    // The admin listener (`server.adminAddr`): plain HTTP, the operational endpoints only.
    let admin = match ops.admin_addr() {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a} (server.adminAddr): {e}"))?,
        ),
        None => None,
    };
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    for up in &cfg.upstreams {
        // Without user info and query values: either may hold a secret.
        let url = proxy::display_url_str(&up.url);
        tracing::info!(upstream = %up.name, path = %up.path, url = %url, "upstream");
    }
    if let Some(auditor) = &layers.auditor {
        auditor
            .handle()
            .record(
                mcp_audit::AuditEvent::startup().with_data(serde_json::json!({
                    "config": loaded.file,
                    "listen": format!("{scheme}://{local}"),
                    "upstreams": cfg.upstreams.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
                    "authentication": cfg.auth.enabled,
                })),
            )
            .await;
    }
    let drain = Duration::from_secs(cfg.server.shutdown_grace_seconds);
    let idle = Duration::from_secs(cfg.server.idle_timeout_seconds);
    let write = Duration::from_secs(cfg.server.write_timeout_seconds);
    let stream_write = cfg
        .server
        .stream_write_timeout_seconds
        .map_or(write, Duration::from_secs);
    let max_requests = cfg.server.max_requests_per_connection;
    let max_streams = cfg.server.max_concurrent_streams;
    let connection_memory = cfg.server.connection_memory_bytes;
    let refusal_drain = (
        cfg.server.refusal_drain_bytes,
        Duration::from_millis(cfg.server.refusal_drain_timeout_ms),
    );
    if refusal_drain.0 > mcp_core::DEFAULT_DRAIN_BYTES
        || refusal_drain.1 > mcp_core::DEFAULT_DRAIN_TIMEOUT
    {
        tracing::warn!(
            bytes = refusal_drain.0,
            timeout_ms = cfg.server.refusal_drain_timeout_ms,
            "server.refusalDrainBytes / refusalDrainTimeoutMs above the defaults: refused \
             requests may hold their connection longer to have their bodies read"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut running = Vec::with_capacity(workers);
    for (i, (router, listener)) in routers.into_iter().zip(listeners).enumerate() {
        let server = Worker {
            listener,
            router,
            acceptor: acceptor.clone(),
            limit: limit.clone(),
            drain,
            idle,
            write,
            stream_write,
            max_requests,
            max_streams,
            connection_memory,
            refusal_drain,
            stop: stop_rx.clone(),
        };
        let (ready, done) = server.start(i)?;
        ready
            .await
            .map_err(|_| format!("worker {i} did not start"))??;
        running.push(done);
    }
    let admin_done = match admin {
        Some(listener) => {
            let admin_local = listener.local_addr().map_err(|e| e.to_string())?;
            let router = ops::admin_router(&loaded, &layers, &ops, exported.clone());
            let mut stop = stop_rx.clone();
            let server = mcp_tls::Server::new(listener)
                .connection_limit(mcp_tls::ConnectionLimit::new(64))
                .drain_timeout(drain)
                .idle_timeout(idle)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
            println!("mcp-gateway admin listener on http://{admin_local}");
            Some(tokio::spawn(server.serve(router)))
        }
        None => None,
    };
    tracing::info!(workers, "serving");
    banner(local);
    if let Some(a) = &layers.auditor {
        for place in a.config().trail_locations() {
            println!("mcp-gateway audit trail: {place}");
        }
    }
    println!("mcp-gateway listening on {scheme}://{local}");
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    if let Some(done) = admin_done {
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(format!("admin listener: {e}")),
            Err(_) => result = Err("the admin listener ended abnormally".to_owned()),
        }
    }
    for done in running {
        let r = done
            .await
            .unwrap_or_else(|_| Err("a worker thread ended abnormally".to_owned()));
        if result.is_ok() {
            result = r;
        }
    }
    tracing::info!("draining done; flushing the audit trail");
    if let Some(observer) = &connection_audit {
        observer.flush();
    }
    layers.flush().await;
    result
}

/// The serving sockets, one per worker, all bound to `addr`, in non-blocking mode (as
/// [`tokio::net::TcpListener::from_std`] needs). Called on a tokio runtime.
///
/// With more than one worker, each socket joins one `SO_REUSEPORT` group, and the kernel
/// spreads new connections over the workers by a hash of each connection's addresses.
/// On one socket shared by every worker, whichever thread woke first accepted a whole
/// burst of connections: in load runs, all 32 of wrk's connections often landed on one
/// worker. (On the 2-core load machine, where wrk and the upstream keep the other core
/// busy, throughput was the same either way; where the gateway has cores to itself, the
/// idle workers' cores would go unused.)
///
/// `SO_REUSEPORT` also lets another process join the group, if it runs as the same user
/// and sets the option itself (such a process could equally read the gateway's memory).
/// So that a second gateway, or anything else, never silently shares the port, the
/// address is first bound once without the option: that bind fails with "address in
/// use" if anything listens there already, including another gateway's group. It also
/// resolves port 0 to the port the group then uses.
fn bind_listeners(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    fn listen(addr: SocketAddr, reuseport: bool) -> std::io::Result<std::net::TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restart binds although connections of the
        // previous process are still in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        if reuseport {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(1024)?.into_std()
    }
    let first = listen(addr, false)?;
    if workers <= 1 {
        return Ok(vec![first]);
    }
    let addr = first.local_addr()?;
    drop(first);
    (0..workers).map(|_| listen(addr, true)).collect()
}

/// What a worker thread answers: whether it started, then how it ended.
type Outcome = oneshot::Receiver<Result<(), String>>;

/// One serving thread: a current-thread runtime running the accept loop on its own
/// socket (see [`bind_listeners`]), with a router (and upstream connection pools) of its
/// own. A request, its layers and its upstream exchange stay on one thread: no work
/// stealing, no cross-thread wake-ups on the request path.
struct Worker {
    listener: std::net::TcpListener,
    router: axum::Router,
    acceptor: Option<mcp_tls::TlsAcceptor>,
    limit: mcp_tls::ConnectionLimit,
    drain: Duration,
    idle: Duration,
    write: Duration,
    stream_write: Duration,
    max_requests: u64,
    max_streams: u32,
    connection_memory: u64,
    /// `server.refusalDrainBytes` and `server.refusalDrainTimeoutMs`.
    refusal_drain: (u64, Duration),
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    /// Starts the thread. The first receiver answers once it accepts connections, the
    /// second once it has stopped and drained.
    fn start(self, index: usize) -> Result<(Outcome, Outcome), String> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("mcp-gw-worker-{index}"))
            .spawn(move || {
                let _ = done_tx.send(self.run(ready_tx));
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        Ok((ready_rx, done_rx))
    }

    fn run(self, ready: oneshot::Sender<Result<(), String>>) -> Result<(), String> {
        let Worker {
            listener,
            router,
            acceptor,
            limit,
            drain,
            idle,
            write,
            stream_write,
            max_requests,
            max_streams,
            connection_memory,
            refusal_drain,
            mut stop,
        } = self;
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a worker runtime: {e}"))
            .and_then(|rt| {
                // Registered with this thread's runtime.
                let listener = {
                    let _in_rt = rt.enter();
                    tokio::net::TcpListener::from_std(listener)
                        .map_err(|e| format!("cannot serve the listening socket: {e}"))?
                };
                Ok((rt, listener))
            });
        let _ = ready.send(started.as_ref().map(|_| ()).map_err(Clone::clone));
        let (rt, listener) = started?;
        rt.block_on(
            mcp_tls::Server::new(listener)
                .maybe_tls(acceptor)
                .connection_limit(limit)
                .drain_timeout(drain)
                .idle_timeout(idle)
                .write_timeout(write)
                .stream_write_timeout(stream_write)
                .max_requests_per_connection(max_requests)
                .max_concurrent_streams(max_streams)
                .connection_memory_bytes(connection_memory)
                .refusal_drain(refusal_drain.0, refusal_drain.1)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .serve(router),
        )
        .map_err(|e| e.to_string())
    }
}

async fn run_demo(addr: SocketAddr) -> Result<(), String> {
    // The demo upstream, in process, on a free loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the demo upstream: {e}"))?;
    let up_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = demo::DemoServer::new(demo::DemoOptions {
        loopback_only: true,
    });
    tokio::spawn(async move {
        let _ = server
            .serve(listener, "/mcp", std::future::pending::<()>())
            .await;
    });
    let key = keys::generate_api_key();
    let text = demo_config(addr, up_addr, &key);
    let loaded = config::parse(&text, "(demo mode)", &|_| None).map_err(|e| e.to_string())?;
    // Printed once the gateway listens, with the port it got (`--addr 127.0.0.1:0`).
    let banner = move |addr: SocketAddr| {
        println!("mcp-gateway demo mode");
        println!("  demo MCP server (upstream): http://{up_addr}/mcp");
        println!("  gateway MCP endpoint:       http://{addr}/mcp");
        println!("  audit trail:                ./{DEMO_TRAIL}");
        println!("  API key (shown once):       {key}");
        println!();
        println!("  try: curl -s http://{addr}/mcp -H 'X-API-Key: {key}' \\");
        println!(
            "         -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\"
        );
        println!("         -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/list' \\");
        println!(
            "         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}'"
        );
    };
    serve(loaded, banner).await
}

fn demo_config(addr: SocketAddr, upstream: SocketAddr, key: &str) -> String {
    format!(
        r#"server:
  addr: "{addr}"
auth:
  enabled: true
  mode: apikey
  apiKeys:
    - id: demo
      key: "{key}"
      scopes: ["mcp:tools", "audit:read", "metrics:read"]
ratelimit:
  enabled: true
  requests_per_second: 50
  burst: 100
sanitization:
  enabled: true
  max_length: 10000
  blocked_patterns: ["DROP TABLE", "rm -rf", "<script>"]
audit:
  enabled: true
  storage: database
  database:
    type: sqlite
    sqlitePath: "{DEMO_TRAIL}"
upstreams:
  - name: demo
    path: /mcp
    url: "http://{upstream}/mcp"
"#
    )
}

async fn run_demo_upstream(addr: SocketAddr, path: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let server = demo::DemoServer::new(demo::DemoOptions {
        loopback_only: local.ip().is_loopback(),
    });
    println!("demo MCP server listening on http://{local}{path}");
    let _ = std::io::stdout().flush();
    server
        .serve(listener, path, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}
