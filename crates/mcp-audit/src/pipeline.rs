//! Delivery: a bounded queue between the request path and one background writer that
//! masks, serializes and batches events into every sink.
//!
//! - The request path only moves a boxed [`crate::event::AuditEvent`] into the queue
//!   (`try_send`). Masking, serialization and hashing happen on the writer.
//! - When the queue is full, the [`OverflowPolicy`] applies: `drop` counts and logs the
//!   loss at once; `wait` holds the end of the response for up to `maxWaitMs` until there
//!   is room, then drops and counts.
//! - A sink that fails is retried with exponential backoff (50 ms doubling up to 5 s)
//!   and reported (`mcp_audit_sink_errors_total`, a warning log); meanwhile events wait
//!   in the queue, so nothing is lost within the queue's capacity. The request path never
//!   waits on a sink.
//! - [`Auditor::shutdown`] records a shutdown event, writes every queued event and
//!   returns; the writer gives up on a sink that still fails after
//!   `queue.shutdownTimeoutMs` and counts what it could not write as dropped.
//!
//! Metrics (the `metrics` facade): `mcp_audit_events_queued_total`,
//! `mcp_audit_events_written_total{sink}`, `mcp_audit_events_dropped_total{reason}`,
//! `mcp_audit_sink_errors_total{sink}`, `mcp_audit_queue_depth`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderName;
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditConfig, AuditLevel, DatabaseType, OverflowPolicy, Storage};
use crate::event::{AuditEvent, EventData, EventKind, Outcome, Renderer, SinkEvent};
use crate::layer::AuditLayer;
use crate::mask::Masker;
use crate::query::AuditStore;
use crate::sink::{AuditSink, StdoutSink, TracingSink};

pub(crate) enum Msg {
    Event(Box<EventData>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the pipeline (also exported as metrics).
#[derive(Debug, Default)]
pub struct AuditStats {
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    sink_errors: AtomicU64,
}

impl AuditStats {
    /// Events taken from the queue by the writer.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
    /// Events written (to every sink).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Events lost (queue full, writer gone, shutdown gave up).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Failed sink writes (each retried).
    pub fn sink_errors(&self) -> u64 {
        self.sink_errors.load(Ordering::Relaxed)
    }
}

struct HandleInner {
    tx: mpsc::Sender<Msg>,
    overflow: OverflowPolicy,
    max_wait: Duration,
    level: AuditLevel,
    stats: Arc<AuditStats>,
    last_drop_log: AtomicU64,
    epoch: Instant,
}

/// Sends events to the writer. Cheap to clone; used by the [`AuditLayer`] and for
/// lifecycle events.
#[derive(Clone)]
pub struct AuditHandle(Arc<HandleInner>);

impl fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditHandle")
            .field("overflow", &self.0.overflow)
            .field("level", &self.0.level)
            .finish_non_exhaustive()
    }
}

/// What happened to an event handed to [`AuditHandle::try_send`].
pub(crate) enum TrySend {
    Sent,
    Skipped,
    /// Queue full under the `wait` policy: the event is handed back.
    Full(Box<EventData>),
}

impl AuditHandle {
    pub(crate) fn stats(&self) -> &AuditStats {
        &self.0.stats
    }

    pub(crate) fn max_wait(&self) -> Duration {
        self.0.max_wait
    }

    pub(crate) fn sender(&self) -> &mpsc::Sender<Msg> {
        &self.0.tx
    }

    fn wanted(&self, e: &EventData) -> bool {
        match self.0.level {
            AuditLevel::Debug | AuditLevel::Info => true,
            AuditLevel::Warn => {
                e.outcome != Some(Outcome::Success) || e.kind != Some(EventKind::Request)
            }
        }
    }

    pub(crate) fn count_drop(&self, reason: &'static str) {
        self.0.stats.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mcp_audit_events_dropped_total", "reason" => reason).increment(1);
        // At most one warning per second.
        let now = self.0.epoch.elapsed().as_secs() + 1;
        let last = self.0.last_drop_log.load(Ordering::Relaxed);
        if now > last
            && self
                .0
                .last_drop_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                reason,
                dropped_total = self.0.stats.dropped(),
                "audit events dropped"
            );
        }
    }

    /// Non-blocking send: the request path's only interaction with the pipeline.
    pub(crate) fn try_send(&self, e: Box<EventData>) -> TrySend {
        if !self.wanted(&e) {
            return TrySend::Skipped;
        }
        match self.0.tx.try_send(Msg::Event(e)) {
            Ok(()) => TrySend::Sent,
            Err(mpsc::error::TrySendError::Full(Msg::Event(e))) => match self.0.overflow {
                OverflowPolicy::Wait if !self.0.max_wait.is_zero() => TrySend::Full(e),
                _ => {
                    self.count_drop("queue_full");
                    TrySend::Skipped
                }
            },
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.count_drop("closed");
                TrySend::Skipped
            }
            Err(mpsc::error::TrySendError::Full(_)) => TrySend::Skipped,
        }
    }

    /// Sends from a context that cannot wait (a dropped response body): under the `wait`
    /// policy a task waits for room, bounded by `maxWaitMs`.
    pub(crate) fn send_detached(&self, e: Box<EventData>) {
        if let TrySend::Full(e) = self.try_send(e) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let h = self.clone();
                    rt.spawn(async move {
                        let wait = h.0.max_wait;
                        if h.0.tx.send_timeout(Msg::Event(e), wait).await.is_err() {
                            h.count_drop("queue_full");
                        }
                    });
                }
                Err(_) => self.count_drop("queue_full"),
            }
        }
    }

    /// Records an event (lifecycle, authentication failure). Under the `wait` policy it
    /// waits up to `maxWaitMs` for room.
    pub async fn record(&self, event: AuditEvent) {
        match self.try_send(event.0) {
            TrySend::Sent | TrySend::Skipped => {}
            TrySend::Full(e) => {
                if self
                    .0
                    .tx
                    .send_timeout(Msg::Event(e), self.0.max_wait)
                    .await
                    .is_err()
                {
                    self.count_drop("queue_full");
                }
            }
        }
    }

    /// Records an event without waiting (dropped and counted when the queue is full).
    pub fn try_record(&self, event: AuditEvent) {
        if let TrySend::Full(_) = self.try_send(event.0) {
            self.count_drop("queue_full");
        }
    }

    /// Waits until every event queued before this call is written (or given up on).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Builds an [`Auditor`]: from a configuration ([`Auditor::from_config`]) or by hand.
pub struct AuditorBuilder {
    config: AuditConfig,
    sinks: Vec<Box<dyn AuditSink>>,
    store: Option<Arc<dyn AuditStore>>,
}

impl fmt::Debug for AuditorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditorBuilder")
            .field("config", &self.config)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Opening a configured sink failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A sink could not be opened.
    #[error("cannot open audit storage `{storage}`: {message}")]
    Open {
        /// Which storage.
        storage: &'static str,
        /// Why (never a secret).
        message: String,
    },
}

impl AuditorBuilder {
    /// Adds a sink (in addition to the configured storages).
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Adds a boxed sink.
    pub fn boxed_sink(mut self, sink: Box<dyn AuditSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Sets the store the query service reads.
    pub fn store(mut self, store: Arc<dyn AuditStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Starts the writer (needs a tokio runtime).
    pub fn start(self) -> Result<Auditor, AuditError> {
        let cfg = self.config;
        cfg.validate()?;
        let masker = Masker::new(&cfg.masking)?;
        let sensitive: Arc<[HeaderName]> = cfg.sensitive_headers().into();
        let renderer = Renderer::new(masker, Arc::clone(&sensitive), cfg.max_params_bytes);
        let (tx, rx) = mpsc::channel(cfg.queue.capacity);
        let stats = Arc::new(AuditStats::default());
        let handle = AuditHandle(Arc::new(HandleInner {
            tx,
            overflow: cfg.queue.overflow,
            max_wait: cfg.max_wait(),
            level: cfg.level,
            stats: Arc::clone(&stats),
            last_drop_log: AtomicU64::new(0),
            epoch: Instant::now(),
        }));
        let writer = Writer {
            rx,
            sinks: self
                .sinks
                .into_iter()
                .map(|s| SinkSlot { sink: s })
                .collect(),
            renderer,
            batch_size: cfg.queue.batch_size,
            linger: Duration::from_millis(cfg.queue.linger_ms),
            capacity: cfg.queue.capacity,
            stats: Arc::clone(&stats),
            shutdown_timeout: Duration::from_millis(cfg.queue.shutdown_timeout_ms),
        };
        let task = tokio::spawn(writer.run());
        Ok(Auditor {
            handle,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
            config: Arc::new(cfg),
            sensitive,
            store: self.store,
        })
    }
}

/// The audit pipeline: the writer task, its handle, and what the gateway mounts.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use mcp_audit::{AuditConfig, AuditEvent, Auditor, Storage, StorageList};
///
/// let config = AuditConfig { storage: StorageList::One(Storage::Tracing), ..Default::default() };
/// let auditor = Auditor::from_config(config).await.unwrap();
/// let layer = auditor.layer();                    // outermost, after the request id
/// auditor.handle().record(AuditEvent::startup()).await;
/// // ... serve ...
/// auditor.shutdown().await;                       // on SIGTERM: writes every queued event
/// # drop(layer); }
/// ```
#[derive(Clone)]
pub struct Auditor {
    handle: AuditHandle,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    config: Arc<AuditConfig>,
    sensitive: Arc<[HeaderName]>,
    store: Option<Arc<dyn AuditStore>>,
}

impl fmt::Debug for Auditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auditor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// A builder with no sink configured from `config.storage` (add sinks by hand).
    pub fn builder(config: AuditConfig) -> AuditorBuilder {
        AuditorBuilder {
            config,
            sinks: Vec::new(),
            store: None,
        }
    }

    /// Opens the configured storages and starts the writer. With the `database` storage,
    /// the query store is opened too ([`Auditor::query_service`]).
    pub async fn from_config(config: AuditConfig) -> Result<Self, AuditError> {
        Self::configured_builder(config).await?.start()
    }

    /// Like [`Auditor::from_config`] but returns the builder, to add sinks.
    pub async fn configured_builder(config: AuditConfig) -> Result<AuditorBuilder, AuditError> {
        config.validate()?;
        let mut b = Self::builder(config.clone());
        for s in config.storage.to_vec() {
            match s {
                Storage::Stdout => b = b.sink(StdoutSink::new()),
                Storage::Tracing => b = b.sink(TracingSink::new()),
                Storage::File => {
                    let f = &config.file;
                    let (path, max, keep, fsync) =
                        (f.path.clone(), f.max_bytes, f.keep_files, f.fsync);
                    let sink = tokio::task::spawn_blocking(move || {
                        crate::sink::file::JsonlFileSink::open(path, max, keep, fsync)
                    })
                    .await
                    .map_err(|_| open_err("file", "open task failed"))?
                    .map_err(|e| open_err("file", e.kind().to_string()))?;
                    b = b.sink(sink);
                }
                Storage::Database => match config.database.kind {
                    DatabaseType::Sqlite => {
                        #[cfg(feature = "sqlite")]
                        {
                            use crate::sink::sqlite::{SqliteSink, SqliteStore};
                            let path = config.database.sqlite_path.clone();
                            let max = config.database.max_records;
                            let (sink, store) = tokio::task::spawn_blocking(move || {
                                let sink = SqliteSink::open(&path, max)?;
                                let store = SqliteStore::open(path)?;
                                Ok::<_, rusqlite::Error>((sink, store))
                            })
                            .await
                            .map_err(|_| open_err("sqlite", "open task failed"))?
                            .map_err(|e| open_err("sqlite", e.to_string()))?;
                            b = b.sink(sink).store(Arc::new(store));
                        }
                    }
                    DatabaseType::Postgres => {
                        #[cfg(feature = "postgres")]
                        {
                            use crate::sink::postgres::{PostgresSink, PostgresStore};
                            let url = config
                                .database
                                .postgres_url
                                .as_ref()
                                .map(|u| u.0.clone())
                                .unwrap_or_default();
                            let writer = config
                                .database
                                .writer_id
                                .clone()
                                .unwrap_or_else(default_writer_id);
                            let sink =
                                PostgresSink::connect(&url, writer, config.database.max_records)
                                    .await
                                    .map_err(|e| open_err("postgres", e.message))?;
                            let store = PostgresStore::new(&url);
                            b = b.sink(sink).store(Arc::new(store));
                        }
                    }
                },
            }
        }
        Ok(b)
    }

    /// The handle, for lifecycle and authentication-failure events.
    pub fn handle(&self) -> &AuditHandle {
        &self.handle
    }

    /// The counters.
    pub fn stats(&self) -> &AuditStats {
        self.handle.stats()
    }

    /// The configuration.
    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// The layer to place outermost (only the connection-level setup outside it).
    pub fn layer(&self) -> AuditLayer {
        AuditLayer::new(self.handle.clone())
            .trust_request_id(self.config.trust_request_id)
            .record_headers(self.config.record_headers)
    }

    /// The layer that marks sensitive header values (the defaults plus
    /// `masking.headers`) so that no trace layer inside it prints the request's. Place it
    /// outside every `TraceLayer` (see [`crate::headers`]).
    pub fn sensitive_headers_layer(
        &self,
    ) -> tower_http::sensitive_headers::SetSensitiveHeadersLayer {
        crate::headers::sensitive_headers_layer(self.sensitive.iter().cloned())
    }

    /// The layer that marks sensitive response header values (`set-cookie`, ...): place
    /// it inside every `TraceLayer`, next to the handler or the proxy.
    pub fn sensitive_response_headers_layer(
        &self,
    ) -> tower_http::sensitive_headers::SetSensitiveResponseHeadersLayer {
        crate::headers::sensitive_response_headers_layer(self.sensitive.iter().cloned())
    }

    /// The query service over the configured database, or `None` when no database
    /// storage is configured.
    pub fn query_service(&self) -> Option<crate::AuditQueryService> {
        self.store.as_ref().map(|s| {
            crate::AuditQueryService::new(Arc::clone(s))
                .scope(&self.config.query.scope)
                .own_scope(&self.config.query.own_scope)
                .max_limit(self.config.query.max_limit)
        })
    }

    /// Waits until every event queued so far is written.
    pub async fn flush(&self) {
        self.handle.flush().await;
    }

    /// Records a shutdown event, writes every queued event, and stops the writer. Call it
    /// after the server has stopped accepting and finished in-flight requests (graceful
    /// shutdown). Events sent afterwards are dropped and counted.
    pub async fn shutdown(&self) {
        let mut task = self.task.lock().await;
        let Some(join) = task.take() else { return };
        self.handle.record(AuditEvent::shutdown()).await;
        let (tx, rx) = oneshot::channel();
        if self.handle.0.tx.send(Msg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = join.await;
    }
}

#[cfg(feature = "postgres")]
fn default_writer_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

fn open_err(storage: &'static str, message: impl Into<String>) -> AuditError {
    AuditError::Open {
        storage,
        message: message.into(),
    }
}

struct SinkSlot {
    sink: Box<dyn AuditSink>,
}

/// Rendered events on their way to the sinks, with the flush / shutdown waiters to answer
/// once they are written.
struct Batch {
    events: Arc<[SinkEvent]>,
    waiters: Vec<oneshot::Sender<()>>,
    deadline: Option<Instant>,
}

/// Stage one: takes events from the queue and renders them (masking, serialization), so
/// that rendering the next batch overlaps with the sinks writing the previous one.
struct Writer {
    rx: mpsc::Receiver<Msg>,
    sinks: Vec<SinkSlot>,
    renderer: Renderer,
    batch_size: usize,
    linger: Duration,
    capacity: usize,
    stats: Arc<AuditStats>,
    shutdown_timeout: Duration,
}

/// Stage two: writes batches to every sink, retrying.
struct Deliverer {
    sinks: Vec<SinkSlot>,
    stats: Arc<AuditStats>,
}

impl Writer {
    async fn run(mut self) {
        // At most two rendered batches wait for the sinks.
        let (btx, brx) = mpsc::channel::<Batch>(2);
        let deliverer = tokio::spawn(
            Deliverer {
                sinks: std::mem::take(&mut self.sinks),
                stats: Arc::clone(&self.stats),
            }
            .run(brx),
        );
        let mut msgs: Vec<Msg> = Vec::with_capacity(self.batch_size);
        loop {
            let n = self.rx.recv_many(&mut msgs, self.batch_size).await;
            if n == 0 {
                // Every handle is gone.
                break;
            }
            let full_batch = n >= self.batch_size;
            let mut batch = Vec::with_capacity(msgs.len());
            let mut waiters = Vec::new();
            let mut shutdown = None;
            for m in msgs.drain(..) {
                match m {
                    Msg::Event(mut e) => batch.push(self.renderer.render(&mut e)),
                    Msg::Flush(t) => waiters.push(t),
                    Msg::Shutdown(t) => shutdown = Some(t),
                }
            }
            self.note_queued(batch.len());
            if let Some(done) = shutdown {
                // Take everything already queued, refuse what comes later, take the rest.
                let deadline = Instant::now() + self.shutdown_timeout;
                self.rx.close();
                while let Some(m) = self.rx.recv().await {
                    match m {
                        Msg::Event(mut e) => {
                            self.note_queued(1);
                            batch.push(self.renderer.render(&mut e));
                        }
                        Msg::Flush(t) => waiters.push(t),
                        Msg::Shutdown(t) => waiters.push(t),
                    }
                }
                waiters.push(done);
                let mut chunks: Vec<Arc<[SinkEvent]>> = batch
                    .chunks(self.batch_size)
                    .map(|c| Arc::from(c.to_vec()))
                    .collect();
                let last = chunks.pop().unwrap_or_else(|| Arc::from(Vec::new()));
                for events in chunks {
                    let _ = btx
                        .send(Batch {
                            events,
                            waiters: Vec::new(),
                            deadline: Some(deadline),
                        })
                        .await;
                }
                let _ = btx
                    .send(Batch {
                        events: last,
                        waiters,
                        deadline: Some(deadline),
                    })
                    .await;
                break;
            }
            let len = batch.len();
            let sent = btx
                .send(Batch {
                    events: batch.into(),
                    waiters,
                    deadline: None,
                })
                .await;
            if sent.is_err() {
                // The delivery task is gone (it cannot fail; defensive).
                self.stats.dropped.fetch_add(len as u64, Ordering::Relaxed);
            }
            metrics::gauge!("mcp_audit_queue_depth")
                .set((self.capacity - self.rx.capacity().min(self.capacity)) as f64);
            if !full_batch && !self.linger.is_zero() {
                // Let events accumulate instead of being woken for each one.
                tokio::time::sleep(self.linger).await;
            }
        }
        drop(btx);
        let _ = deliverer.await;
    }

    fn note_queued(&self, n: usize) {
        if n > 0 {
            self.stats.queued.fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!("mcp_audit_events_queued_total").increment(n as u64);
        }
    }
}

impl Deliverer {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) {
        while let Some(b) = rx.recv().await {
            if !b.events.is_empty() {
                self.deliver(b.events, b.deadline).await;
            }
            for w in b.waiters {
                let _ = w.send(());
            }
        }
    }

    /// Writes a batch to every sink, retrying each failing sink with backoff. Sinks that
    /// succeeded are not written twice.
    async fn deliver(&mut self, batch: Arc<[SinkEvent]>, deadline: Option<Instant>) {
        let n = batch.len() as u64;
        let mut all_ok = true;
        for slot in &mut self.sinks {
            let mut backoff = Duration::from_millis(50);
            loop {
                match slot.sink.write_batch(Arc::clone(&batch)).await {
                    Ok(()) => {
                        metrics::counter!("mcp_audit_events_written_total",
                            "sink" => slot.sink.name().to_owned())
                        .increment(n);
                        break;
                    }
                    Err(e) => {
                        self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("mcp_audit_sink_errors_total",
                            "sink" => slot.sink.name().to_owned())
                        .increment(1);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                            "audit sink failed; retrying");
                        if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                            tracing::error!(
                                sink = slot.sink.name(),
                                events = n,
                                "audit sink still failing at shutdown; events lost for it"
                            );
                            all_ok = false;
                            break;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        if all_ok {
            self.stats.written.fetch_add(n, Ordering::Relaxed);
        } else {
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("mcp_audit_events_dropped_total", "reason" => "sink_failed")
                .increment(n);
        }
    }
}
