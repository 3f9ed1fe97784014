//! Delivery: a bounded queue between the request path and one background writer that
//! masks, serializes and batches events into every sink.
//!
//! - The request path only moves a boxed [`crate::event::AuditEvent`] into the queue
//!   (`try_send`). Masking, serialization and hashing happen on the writer.
//! - The queue is bounded in events (`queue.capacity`) and in bytes (`queue.maxBytes`,
//!   default 64 MiB, by an estimate of each event's heap: its fixed size, the copied path
//!   and header text, three times the request body it keeps alive, its message and data).
//!   When it is full in either, the [`OverflowPolicy`] applies: `drop` counts and logs the
//!   loss at once; `wait` holds the end of the response for up to `maxWaitMs` until there
//!   is room, then drops and counts (`mcp_audit_events_dropped_total{reason="queue_full"}`).
//!   One event larger than the whole budget is still taken when the queue is empty.
//! - Each sink has its own task and backlog: a sink that fails or hangs never holds up
//!   the others. A failing sink is retried with exponential backoff (50 ms doubling up to
//!   5 s) and reported (`mcp_audit_sink_errors_total`, a warning log); its backlog holds
//!   up to `queue.capacity` events and `queue.maxBytes` bytes of rendered records, so
//!   nothing is lost within that; beyond it, that sink
//!   loses the newest batches (`mcp_audit_sink_backlog_dropped_total{sink}`, an error log
//!   at most once a second) while the others go on; a write in progress for 10 s counts
//!   as failing. A sink that is healthy but behind by
//!   `queue.capacity` events holds the writer up instead (backpressure through the
//!   queue and its overflow policy). The request path never waits on a sink.
//! - [`Auditor::shutdown`] records a shutdown event, writes every queued event and
//!   returns by `queue.shutdownTimeoutMs` (plus one second) whatever the sinks do: the
//!   deadline holds for the batches queued before the shutdown as for the last ones; a
//!   sink still failing or hanging is given up on, and what it did not write is counted
//!   as dropped and logged per sink (`audit events lost`).
//!
//! Metrics (the `metrics` facade; their handles are registered when the auditor starts,
//! so install the recorder first). Each is updated where what it counts happens, never
//! at a step that waits on a sink, so that they stay true while a sink is down:
//!
//! - `mcp_audit_events_queued_total`: events put into the queue, counted as they are
//!   queued (not when the writer takes them).
//! - `mcp_audit_queue_depth`: events queued and not yet through the pipeline: in the
//!   queue, being rendered, or in the backlog of a sink that has not written them yet,
//!   until every sink has written them or they are counted as dropped. It grows while a
//!   sink is down and goes back to 0 once everything queued is written.
//! - `mcp_audit_queue_bytes`: the queue's byte budget in use (`queue.maxBytes`): events
//!   not yet taken by the writer.
//! - `mcp_audit_events_written_total{sink}`: records written by that sink (one per
//!   event, one per message of a JSON-RPC batch), counted when its write succeeds.
//! - `mcp_audit_sink_backlog{sink}`, `mcp_audit_sink_backlog_bytes{sink}`: records
//!   handed to that sink and not yet written or given up on, and their bytes (bounded by
//!   `queue.maxBytes`).
//! - `mcp_audit_sink_up{sink}`: 1 while the sink writes, 0 from its first failed write
//!   (or a write in progress for 10 s) until a write succeeds again.
//! - `mcp_audit_sink_errors_total{sink}`: failed writes of that sink (each retried).
//! - `mcp_audit_sink_backlog_dropped_total{sink}`: records that sink lost because its
//!   backlog was full while it failed.
//! - `mcp_audit_events_dropped_total{reason}`: `queue_full` and `closed` events never
//!   queued; `sink_failed` records not written by every sink.
//!
//! The same values are in [`AuditStats`] and [`Auditor::sinks`].
//!
//! So the memory the pipeline holds is bounded by about `queue.maxBytes` (queue) plus
//! `queue.maxBytes` per sink (backlogs) plus one batch being rendered, whatever the
//! clients send.

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
use crate::refusals::RefusalAggregator;
#[cfg(feature = "sqlite")]
use crate::sink::SinkError;
use crate::sink::{AuditSink, StdoutSink, TracingSink};

pub(crate) enum Msg {
    /// An event and the bytes charged for it to the queue's byte budget.
    Event(Box<EventData>, u64),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the pipeline (also exported as metrics).
///
/// Each is updated where the thing it counts happens (an event put into the queue, a
/// batch written or given up on by one sink), never at a step that waits on a sink: they
/// stay true while a sink is down.
#[derive(Debug, Default)]
pub struct AuditStats {
    queued: AtomicU64,
    depth: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    sink_errors: AtomicU64,
    meters: Meters,
}

impl AuditStats {
    /// Statistics whose metrics are registered with the current recorder.
    fn registered() -> Self {
        Self {
            meters: Meters::register(),
            ..Self::default()
        }
    }

    /// Events put into the queue (`mcp_audit_events_queued_total`): counted when queued,
    /// whether or not the writer has taken them yet.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
    /// Events queued and not yet through the pipeline (`mcp_audit_queue_depth`): in the
    /// queue, being rendered, or in the backlog of a sink that has not written them yet
    /// (a sink that is down, retrying), until every sink has written them or they are
    /// counted as dropped. It goes back to 0 once everything queued is written.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }
    /// Records written (to every sink): one per event, one per message of a JSON-RPC
    /// batch.
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

    /// Counts one more event in the pipeline, before it is sent (so that the writer
    /// never settles an event not yet counted).
    fn enter(&self) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.meters.depth.increment(1.0);
    }

    /// The event counted by [`AuditStats::enter`] was not queued after all.
    fn leave(&self) {
        self.settle(1);
    }

    /// The event counted by [`AuditStats::enter`] is in the queue.
    fn note_queued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.meters.queued.increment(1);
    }

    /// `events` queued events are through the pipeline (written or dropped).
    fn settle(&self, events: u64) {
        if events > 0 {
            self.depth.fetch_sub(events, Ordering::Relaxed);
            self.meters.depth.decrement(events as f64);
        }
    }
}

/// The pipeline-wide metric handles, registered when the auditor starts (no registry
/// lookup on the request path).
struct Meters {
    queued: metrics::Counter,
    depth: metrics::Gauge,
}

impl Meters {
    fn register() -> Self {
        Self {
            queued: metrics::counter!("mcp_audit_events_queued_total"),
            depth: metrics::gauge!("mcp_audit_queue_depth"),
        }
    }
}

impl Default for Meters {
    fn default() -> Self {
        Self {
            queued: metrics::Counter::noop(),
            depth: metrics::Gauge::noop(),
        }
    }
}

impl fmt::Debug for Meters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meters").finish_non_exhaustive()
    }
}

/// The queue's byte budget: an estimate of the heap held by the events queued.
pub(crate) struct QueueBytes {
    used: AtomicU64,
    max: u64,
    /// Woken when bytes are given back.
    freed: tokio::sync::Notify,
    /// `mcp_audit_queue_bytes`, moved with `used`.
    gauge: metrics::Gauge,
}

impl QueueBytes {
    fn new(max: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            max,
            freed: tokio::sync::Notify::new(),
            gauge: metrics::gauge!("mcp_audit_queue_bytes"),
        }
    }

    /// Charges `n` bytes if they fit (or the queue holds nothing: one event larger than
    /// the budget is still taken).
    fn try_charge(&self, n: u64) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used > 0 && used.saturating_add(n) > self.max {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used.saturating_add(n),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.gauge.increment(n as f64);
                    return true;
                }
                Err(u) => used = u,
            }
        }
    }

    fn release(&self, n: u64) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
            self.gauge.decrement(n as f64);
            self.freed.notify_waiters();
        }
    }

    /// Bytes charged now.
    fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes charged to the queue, given back when dropped unless sent with the event.
pub(crate) struct Charge {
    bytes: Arc<QueueBytes>,
    n: u64,
}

impl Charge {
    /// The bytes, now carried by the event's message.
    fn into_sent(mut self) -> u64 {
        std::mem::take(&mut self.n)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.bytes.release(self.n);
    }
}

/// A permit for one event in the queue and the bytes charged for it.
pub(crate) struct Reserved {
    permit: mpsc::OwnedPermit<Msg>,
    charge: Charge,
    stats: Arc<AuditStats>,
}

impl Reserved {
    /// Queues the event.
    pub(crate) fn send(self, e: Box<EventData>) {
        let n = self.charge.into_sent();
        self.stats.enter();
        self.permit.send(Msg::Event(e, n));
        self.stats.note_queued();
    }
}

/// An estimate of the heap an event holds while queued: its fixed size, the copied path
/// and header text, three times the request body it keeps alive (the bytes and their
/// parsed form), its message, and its structured data.
pub(crate) fn estimate(e: &EventData) -> u64 {
    let mut n = std::mem::size_of::<EventData>();
    if let Some(r) = &e.request {
        n += r.heap_size();
    }
    if let Some(m) = &e.mcp {
        n += 3 * m.raw().len();
    }
    if let Some(m) = &e.message {
        n += m.len();
    }
    if e.data.is_some() {
        n += 512;
    }
    n as u64
}

struct HandleInner {
    tx: mpsc::Sender<Msg>,
    bytes: Arc<QueueBytes>,
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
    /// Queue full (in events or bytes) under the `wait` policy: the event is handed back
    /// with its estimated size.
    Full(Box<EventData>, u64),
}

impl AuditHandle {
    pub(crate) fn stats(&self) -> &AuditStats {
        &self.0.stats
    }

    pub(crate) fn max_wait(&self) -> Duration {
        self.0.max_wait
    }

    /// Waits up to `wait` for room for an event of `n` bytes (bytes first, then a slot).
    pub(crate) async fn reserve(&self, n: u64, wait: Duration) -> Option<Reserved> {
        let deadline = tokio::time::Instant::now() + wait;
        let bytes = &self.0.bytes;
        loop {
            let freed = bytes.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if bytes.try_charge(n) {
                break;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
        let charge = Charge {
            bytes: Arc::clone(bytes),
            n,
        };
        let permit = tokio::time::timeout_at(deadline, self.0.tx.clone().reserve_owned())
            .await
            .ok()?
            .ok()?;
        Some(Reserved {
            permit,
            charge,
            stats: Arc::clone(&self.0.stats),
        })
    }

    /// Waits (under the `wait` policy, up to `maxWaitMs`) for room and queues `e`, or
    /// counts it as dropped.
    async fn send_waiting(&self, e: Box<EventData>, n: u64) {
        match self.reserve(n, self.0.max_wait).await {
            Some(r) => r.send(e),
            None => self.count_drop("queue_full"),
        }
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
        let n = estimate(&e);
        let full = |e| match self.0.overflow {
            OverflowPolicy::Wait if !self.0.max_wait.is_zero() => TrySend::Full(e, n),
            _ => {
                self.count_drop("queue_full");
                TrySend::Skipped
            }
        };
        if !self.0.bytes.try_charge(n) {
            return full(e);
        }
        let stats = &self.0.stats;
        stats.enter();
        match self.0.tx.try_send(Msg::Event(e, n)) {
            Ok(()) => {
                stats.note_queued();
                TrySend::Sent
            }
            Err(mpsc::error::TrySendError::Full(Msg::Event(e, _))) => {
                stats.leave();
                self.0.bytes.release(n);
                full(e)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                stats.leave();
                self.0.bytes.release(n);
                self.count_drop("closed");
                TrySend::Skipped
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.leave();
                self.0.bytes.release(n);
                TrySend::Skipped
            }
        }
    }

    /// Sends from a context that cannot wait (a dropped response body): under the `wait`
    /// policy a task waits for room, bounded by `maxWaitMs`.
    pub(crate) fn send_detached(&self, e: Box<EventData>) {
        if let TrySend::Full(e, n) = self.try_send(e) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let h = self.clone();
                    rt.spawn(async move { h.send_waiting(e, n).await });
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
            TrySend::Full(e, n) => self.send_waiting(e, n).await,
        }
    }

    /// Records an event without waiting (dropped and counted when the queue is full).
    pub fn try_record(&self, event: AuditEvent) {
        if let TrySend::Full(..) = self.try_send(event.0) {
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
        let renderer = Renderer::new(masker, Arc::clone(&sensitive), cfg.effective_limits());
        let (tx, rx) = mpsc::channel(cfg.queue.capacity);
        let stats = Arc::new(AuditStats::registered());
        let bytes = Arc::new(QueueBytes::new(cfg.queue.max_bytes));
        let handle = AuditHandle(Arc::new(HandleInner {
            tx,
            bytes: Arc::clone(&bytes),
            overflow: cfg.queue.overflow,
            max_wait: cfg.max_wait(),
            level: cfg.level,
            stats: Arc::clone(&stats),
            last_drop_log: AtomicU64::new(0),
            epoch: Instant::now(),
        }));
        let shared = Arc::new(Shared::new());
        // Each sink's state and metrics, registered now (with the current recorder).
        let sinks: Vec<_> = self
            .sinks
            .into_iter()
            .map(|sink| {
                let state = Arc::new(SinkState::new(sink.name()));
                if let Ok(mut s) = shared.sinks.lock() {
                    s.push(Arc::clone(&state));
                }
                (sink, state)
            })
            .collect();
        let writer = Writer {
            rx,
            sinks,
            renderer,
            batch_size: cfg.queue.batch_size,
            linger: Duration::from_millis(cfg.queue.linger_ms),
            capacity: cfg.queue.capacity,
            max_bytes: cfg.queue.max_bytes,
            bytes,
            stats: Arc::clone(&stats),
            shutdown_timeout: Duration::from_millis(cfg.queue.shutdown_timeout_ms),
            deadline: tokio::sync::watch::Sender::new(None),
            shared: Arc::clone(&shared),
        };
        let task = tokio::spawn(writer.run());
        let refusals = cfg
            .aggregate_refusals
            .enabled
            .then(|| RefusalAggregator::new(handle.clone(), &cfg.aggregate_refusals));
        // One service, cloned for every router that mounts it: its query slots are
        // shared by every clone (every worker of a multi-runtime server).
        let query = self.store.as_ref().map(|s| {
            crate::AuditQueryService::new(Arc::clone(s))
                .scope(&cfg.query.scope)
                .own_scope(&cfg.query.own_scope)
                .max_limit(cfg.query.max_limit)
                .max_page_bytes(cfg.query.max_page_bytes)
                .max_concurrent(cfg.query.max_concurrent)
                .stall_timeout(Duration::from_millis(cfg.query.stall_timeout_ms))
        });
        Ok(Auditor {
            handle,
            refusals,
            shared,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
            config: Arc::new(cfg),
            sensitive,
            query,
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
    refusals: Option<RefusalAggregator>,
    shared: Arc<Shared>,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    config: Arc<AuditConfig>,
    sensitive: Arc<[HeaderName]>,
    query: Option<crate::AuditQueryService>,
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

    /// Validates `config` exactly as [`Auditor::from_config`] does and starts a writer
    /// with **no sink**: no storage is opened, created or written, and events are
    /// discarded. For a configuration check (`nginx -t` style) beside a running
    /// instance, which must not touch its trail; [`Auditor::query_service`] is `None`.
    pub fn without_storage(config: AuditConfig) -> Result<Self, AuditError> {
        config.validate()?;
        Self::builder(config).start()
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
                            let max_bytes = config.database.max_bytes;
                            let (sink, store) = tokio::task::spawn_blocking(move || {
                                let sink = SqliteSink::open(&path, max)?.max_bytes(max_bytes);
                                let store = SqliteStore::open(path)
                                    .map_err(|e| SinkError::new("sqlite", e.to_string()))?;
                                Ok::<_, SinkError>((sink, store))
                            })
                            .await
                            .map_err(|_| open_err("sqlite", "open task failed"))?
                            .map_err(|e| open_err("sqlite", e.message))?;
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

    /// The layer to place outermost (only the connection-level setup outside it). It
    /// counts refusals through [`Auditor::refusal_aggregator`] (`aggregateRefusals`).
    pub fn layer(&self) -> AuditLayer {
        let layer = AuditLayer::new(self.handle.clone())
            .trust_request_id(self.config.trust_request_id)
            .record_headers(self.config.record_headers);
        match &self.refusals {
            Some(r) => layer.aggregate_refusals(r.clone()),
            None => layer,
        }
    }

    /// The aggregator of refusals (`aggregateRefusals`), `None` when it is off.
    pub fn refusal_aggregator(&self) -> Option<&RefusalAggregator> {
        self.refusals.as_ref()
    }

    /// Bytes held in the queue now, by the estimate `queue.maxBytes` bounds.
    pub fn queued_bytes(&self) -> u64 {
        self.handle.0.bytes.used()
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
    ///
    /// Every call returns a clone of one service: `query.maxConcurrent` bounds the
    /// queries of all of them together.
    pub fn query_service(&self) -> Option<crate::AuditQueryService> {
        self.query.clone()
    }

    /// Waits until every event queued so far is written.
    pub async fn flush(&self) {
        self.handle.flush().await;
    }

    /// Records a shutdown event, writes every queued event, and stops the writer. Call it
    /// after the server has stopped accepting and finished in-flight requests (graceful
    /// shutdown). Events sent afterwards are dropped and counted.
    ///
    /// It returns by `queue.shutdownTimeoutMs` (plus a second): a sink still failing or
    /// hanging then is given up on, for the batches it held before the shutdown as for
    /// the last ones, and what it did not write is counted as dropped and logged
    /// (`audit events lost at shutdown`).
    pub async fn shutdown(&self) {
        let mut task = self.task.lock().await;
        let Some(mut join) = task.take() else { return };
        let limit = Duration::from_millis(self.config.queue.shutdown_timeout_ms);
        let hard = Instant::now() + limit + Duration::from_secs(1);
        // The counts of refusals not yet written, before the shutdown event.
        if let Some(r) = &self.refusals {
            let _ = tokio::time::timeout_at(hard.into(), r.flush()).await;
        }
        let _ =
            tokio::time::timeout_at(hard.into(), self.handle.record(AuditEvent::shutdown())).await;
        let (tx, rx) = oneshot::channel();
        let sent = tokio::time::timeout_at(hard.into(), self.handle.0.tx.send(Msg::Shutdown(tx)));
        if let Ok(Ok(())) = sent.await {
            let _ = tokio::time::timeout_at(hard.into(), rx).await;
        }
        if tokio::time::timeout_at(hard.into(), &mut join)
            .await
            .is_err()
        {
            // A sink hangs past the deadline: stop it.
            join.abort();
            if let Ok(tasks) = self.shared.tasks.lock() {
                for t in tasks.iter() {
                    t.abort();
                }
            }
        }
        // Batches still held by an aborted sink task are counted as dropped when they
        // are released (see `BatchDone`).
        for s in self.shared.sink_states() {
            let lost = s.lost.load(Ordering::Relaxed) + s.pending.load(Ordering::Relaxed);
            if lost > 0 {
                tracing::error!(
                    sink = %s.name,
                    lost,
                    "audit events lost: not written to this sink before it stopped"
                );
            }
        }
    }

    /// Each sink's state now: up or failing, its backlog, what it lost.
    pub fn sinks(&self) -> Vec<SinkStatus> {
        self.shared
            .sink_states()
            .iter()
            .map(|s| s.status())
            .collect()
    }

    /// Events not written to each sink so far (the sink's name and the count): a sink
    /// whose backlog was full while it failed, or that was given up on at shutdown.
    pub fn lost_by_sink(&self) -> Vec<(String, u64)> {
        self.shared
            .sink_states()
            .iter()
            .map(|s| (s.name.clone(), s.lost.load(Ordering::Relaxed)))
            .collect()
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

/// One sink's side of the pipeline: its own task and backlog, so that a sink that fails
/// or hangs never holds up the others.
struct SinkState {
    name: String,
    /// Events handed to the sink's task and not yet written or given up on.
    pending: AtomicU64,
    /// Their bytes (see [`rendered_size`]).
    pending_bytes: AtomicU64,
    /// The sink's last write failed (it is retrying).
    failing: std::sync::atomic::AtomicBool,
    /// When the write in progress started (milliseconds since the Unix epoch), 0 when
    /// idle: a write that takes longer than [`HUNG_AFTER`] counts as failing.
    writing_since: AtomicU64,
    /// Events this sink did not write (backlog full while failing, or shutdown deadline).
    lost: AtomicU64,
    last_backlog_log: AtomicU64,
    meters: SinkMeters,
}

/// One sink's metric handles (label `sink`), registered when the auditor starts.
struct SinkMeters {
    backlog: metrics::Gauge,
    backlog_bytes: metrics::Gauge,
    up: metrics::Gauge,
    written: metrics::Counter,
    errors: metrics::Counter,
    backlog_dropped: metrics::Counter,
}

impl SinkState {
    fn new(name: &str) -> Self {
        let label = || [("sink", name.to_owned())];
        let meters = SinkMeters {
            backlog: metrics::gauge!("mcp_audit_sink_backlog", &label()),
            backlog_bytes: metrics::gauge!("mcp_audit_sink_backlog_bytes", &label()),
            up: metrics::gauge!("mcp_audit_sink_up", &label()),
            written: metrics::counter!("mcp_audit_events_written_total", &label()),
            errors: metrics::counter!("mcp_audit_sink_errors_total", &label()),
            backlog_dropped: metrics::counter!("mcp_audit_sink_backlog_dropped_total", &label()),
        };
        // A sink starts up: it was opened.
        meters.up.set(1.0);
        Self {
            name: name.to_owned(),
            pending: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            writing_since: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            last_backlog_log: AtomicU64::new(0),
            meters,
        }
    }

    /// `n` records of `size` bytes join the sink's backlog.
    fn hand(&self, n: u64, size: u64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
        self.pending_bytes.fetch_add(size, Ordering::Relaxed);
        self.meters.backlog.increment(n as f64);
        self.meters.backlog_bytes.increment(size as f64);
    }

    /// `n` records of `size` bytes leave it (written or given up on).
    fn release(&self, n: u64, size: u64) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
        self.pending_bytes.fetch_sub(size, Ordering::Relaxed);
        self.meters.backlog.decrement(n as f64);
        self.meters.backlog_bytes.decrement(size as f64);
    }

    fn status(&self) -> SinkStatus {
        SinkStatus {
            name: self.name.clone(),
            up: !self.stalled(),
            backlog: self.pending.load(Ordering::Relaxed),
            backlog_bytes: self.pending_bytes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

/// One sink's state now, as [`Auditor::sinks`] reports it (the same values as the
/// `mcp_audit_sink_*` metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkStatus {
    /// The sink's name (the metrics' `sink` label).
    pub name: String,
    /// Whether the sink is writing: false while its last write failed (it is retrying)
    /// or a write has been in progress for 10 s (`mcp_audit_sink_up`).
    pub up: bool,
    /// Records handed to this sink and not yet written or given up on
    /// (`mcp_audit_sink_backlog`).
    pub backlog: u64,
    /// Their bytes, bounded by `queue.maxBytes` (`mcp_audit_sink_backlog_bytes`).
    pub backlog_bytes: u64,
    /// Records this sink did not write: its backlog was full while it failed, or
    /// shutdown gave up on it.
    pub lost: u64,
}

/// A batch completes when every sink's task has released it: then the flush and
/// shutdown waiters are answered, and the batch is counted as written (by every sink) or
/// dropped (some sink did not write it).
/// A sink whose write has been in progress this long is treated as failing: it loses
/// batches beyond its backlog instead of holding the writer up.
const HUNG_AFTER: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SinkState {
    fn stalled(&self) -> bool {
        if self.failing.load(Ordering::Relaxed) {
            return true;
        }
        let since = self.writing_since.load(Ordering::Relaxed);
        since != 0 && now_ms().saturating_sub(since) > HUNG_AFTER.as_millis() as u64
    }
}

struct BatchDone {
    /// Records in the batch.
    n: u64,
    /// Queued events whose records the batch holds (see [`AuditStats::depth`]).
    queued: u64,
    sinks: usize,
    ok: std::sync::atomic::AtomicUsize,
    waiters: Vec<oneshot::Sender<()>>,
    stats: Arc<AuditStats>,
}

impl Drop for BatchDone {
    fn drop(&mut self) {
        if self.n > 0 {
            if self.ok.load(Ordering::Relaxed) >= self.sinks {
                self.stats.written.fetch_add(self.n, Ordering::Relaxed);
            } else {
                self.stats.dropped.fetch_add(self.n, Ordering::Relaxed);
                metrics::counter!("mcp_audit_events_dropped_total", "reason" => "sink_failed")
                    .increment(self.n);
            }
        }
        self.stats.settle(self.queued);
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// A batch on its way to one sink.
struct Delivery {
    events: Arc<[SinkEvent]>,
    /// The batch's bytes (see [`rendered_size`]).
    size: u64,
    done: Arc<BatchDone>,
}

/// Takes events from the queue, renders them (masking, serialization) and hands each
/// batch to every sink's task.
struct Writer {
    rx: mpsc::Receiver<Msg>,
    sinks: Vec<(Box<dyn AuditSink>, Arc<SinkState>)>,
    renderer: Renderer,
    batch_size: usize,
    linger: Duration,
    capacity: usize,
    /// Each sink's backlog, in bytes of rendered records.
    max_bytes: u64,
    /// The queue's byte budget, given back as events are taken.
    bytes: Arc<QueueBytes>,
    stats: Arc<AuditStats>,
    shutdown_timeout: Duration,
    /// Set once, at shutdown: every sink task gives up retrying at this instant, for the
    /// batches it already holds as for the last ones.
    deadline: tokio::sync::watch::Sender<Option<Instant>>,
    shared: Arc<Shared>,
}

/// What [`Auditor::shutdown`] needs to enforce its deadline and count what was lost.
struct Shared {
    sinks: std::sync::Mutex<Vec<Arc<SinkState>>>,
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    deadline: std::sync::Mutex<Option<Instant>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            sinks: std::sync::Mutex::new(Vec::new()),
            tasks: std::sync::Mutex::new(Vec::new()),
            deadline: std::sync::Mutex::new(None),
        }
    }

    fn sink_states(&self) -> Vec<Arc<SinkState>> {
        self.sinks.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

struct Route {
    tx: mpsc::UnboundedSender<Delivery>,
    state: Arc<SinkState>,
}

impl Writer {
    async fn run(mut self) {
        let deadline_rx = self.deadline.subscribe();
        let mut routes = Vec::with_capacity(self.sinks.len());
        let mut joins = Vec::with_capacity(self.sinks.len());
        for (sink, state) in std::mem::take(&mut self.sinks) {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = SinkTask {
                sink,
                state: Arc::clone(&state),
                stats: Arc::clone(&self.stats),
                deadline: deadline_rx.clone(),
            };
            let join = tokio::spawn(task.run(rx));
            if let Ok(mut t) = self.shared.tasks.lock() {
                t.push(join.abort_handle());
            }
            joins.push(join);
            routes.push(Route { tx, state });
        }
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
            let mut taken = 0;
            let mut freed = 0;
            for m in msgs.drain(..) {
                match m {
                    Msg::Event(mut e, n) => {
                        taken += 1;
                        self.renderer.render_into(&mut e, &mut batch);
                        freed += n;
                    }
                    Msg::Flush(t) => waiters.push(t),
                    Msg::Shutdown(t) => shutdown = Some(t),
                }
            }
            // The events are dropped (their heap freed) once rendered: their bytes are
            // given back once per batch.
            self.bytes.release(freed);
            if let Some(done) = shutdown {
                // The deadline holds from now on for every batch, queued or not.
                let deadline = Instant::now() + self.shutdown_timeout;
                if let Ok(mut d) = self.shared.deadline.lock() {
                    *d = Some(deadline);
                }
                let _ = self.deadline.send(Some(deadline));
                // Take everything already queued, refuse what comes later, take the rest.
                self.rx.close();
                while let Some(m) = self.rx.recv().await {
                    match m {
                        Msg::Event(mut e, n) => {
                            taken += 1;
                            self.renderer.render_into(&mut e, &mut batch);
                            drop(e);
                            self.bytes.release(n);
                        }
                        Msg::Flush(t) => waiters.push(t),
                        Msg::Shutdown(t) => waiters.push(t),
                    }
                }
                waiters.push(done);
                let mut chunks: Vec<Vec<SinkEvent>> =
                    batch.chunks(self.batch_size).map(<[_]>::to_vec).collect();
                let last = chunks.pop().unwrap_or_default();
                // The queued events of the whole drain are settled with its last chunk.
                for events in chunks {
                    dispatch(
                        Arc::clone(&self.stats),
                        (self.capacity, self.max_bytes),
                        &routes,
                        (events, 0),
                        Vec::new(),
                        true,
                    )
                    .await;
                }
                dispatch(
                    Arc::clone(&self.stats),
                    (self.capacity, self.max_bytes),
                    &routes,
                    (last, taken),
                    waiters,
                    true,
                )
                .await;
                break;
            }
            dispatch(
                Arc::clone(&self.stats),
                (self.capacity, self.max_bytes),
                &routes,
                (batch, taken),
                waiters,
                false,
            )
            .await;
            if !full_batch && !self.linger.is_zero() {
                // Let events accumulate instead of being woken for each one.
                tokio::time::sleep(self.linger).await;
            }
        }
        drop(routes);
        for j in joins {
            let _ = j.await;
        }
    }
}

/// Hands a batch to every sink. A sink that is writing well but is behind by
/// `capacity` events holds the writer up (backpressure, as the queue does); a sink
/// whose writes fail, or whose write has hung for [`HUNG_AFTER`], loses the batch once
/// its backlog is full, so that the others go on. At shutdown nothing waits.
///
/// `queued` is the number of queued events whose records `events` holds: they leave
/// the depth when every sink has written or given up on the batch.
async fn dispatch(
    stats: Arc<AuditStats>,
    (capacity, max_bytes): (usize, u64),
    routes: &[Route],
    (events, queued): (Vec<SinkEvent>, u64),
    waiters: Vec<oneshot::Sender<()>>,
    shutting_down: bool,
) {
    let n = events.len() as u64;
    let size: u64 = events.iter().map(|e| rendered_size(e) as u64).sum();
    let done = Arc::new(BatchDone {
        n,
        queued,
        sinks: routes.len(),
        ok: std::sync::atomic::AtomicUsize::new(0),
        waiters,
        stats,
    });
    let events: Arc<[SinkEvent]> = events.into();
    let budget = capacity as u64;
    for r in routes {
        let mut room = true;
        if n > 0 {
            loop {
                let pending = r.state.pending.load(Ordering::Relaxed);
                let pending_bytes = r.state.pending_bytes.load(Ordering::Relaxed);
                if pending == 0
                    || (pending + n <= budget && pending_bytes.saturating_add(size) <= max_bytes)
                {
                    break;
                }
                if shutting_down || r.state.stalled() {
                    room = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if !room {
            r.state.lost.fetch_add(n, Ordering::Relaxed);
            r.state.meters.backlog_dropped.increment(n);
            let now = epoch_secs();
            let last = r.state.last_backlog_log.swap(now, Ordering::Relaxed);
            if now > last {
                tracing::error!(
                    sink = %r.state.name,
                    events = n,
                    lost_total = r.state.lost.load(Ordering::Relaxed),
                    "audit sink failing with a full backlog: events lost for this sink"
                );
            }
            continue;
        }
        r.state.hand(n, size);
        let d = Delivery {
            events: Arc::clone(&events),
            size,
            done: Arc::clone(&done),
        };
        if r.tx.send(d).is_err() {
            // The sink's task is gone (aborted at the shutdown deadline).
            r.state.release(n, size);
            r.state.lost.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The heap a rendered record holds in a sink's backlog: its JSON and its index columns.
fn rendered_size(e: &SinkEvent) -> usize {
    let c = &e.columns;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    std::mem::size_of::<SinkEvent>()
        + e.json.len()
        + c.kind.len()
        + c.event_id.len()
        + opt(&c.request_id)
        + opt(&c.user)
        + opt(&c.tool)
        + opt(&c.mcp_method)
        + opt(&c.outcome)
        + opt(&c.reason)
}

/// Whole seconds since the Unix epoch, plus one (for once-a-second logs).
fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 1
}

/// Writes the batches of one sink, retrying with backoff until the batch is written or
/// the shutdown deadline passes.
struct SinkTask {
    sink: Box<dyn AuditSink>,
    state: Arc<SinkState>,
    stats: Arc<AuditStats>,
    deadline: tokio::sync::watch::Receiver<Option<Instant>>,
}

impl SinkTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Delivery>) {
        while let Some(d) = rx.recv().await {
            let n = d.events.len() as u64;
            self.state
                .writing_since
                .store(now_ms().max(1), Ordering::Relaxed);
            let written = n == 0 || self.deliver(&d.events).await;
            self.state.writing_since.store(0, Ordering::Relaxed);
            self.state.release(n, d.size);
            if written {
                d.done.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                self.state.lost.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    async fn deliver(&mut self, batch: &Arc<[SinkEvent]>) -> bool {
        let n = batch.len() as u64;
        let mut backoff = Duration::from_millis(50);
        loop {
            let deadline = *self.deadline.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return give_up(&self.state, n);
            }
            let write = watch_hung(&self.state, self.sink.write_batch(Arc::clone(batch)));
            let res = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), write).await {
                    Ok(r) => r,
                    Err(_) => return give_up(&self.state, n),
                },
                None => {
                    tokio::pin!(write);
                    tokio::select! {
                        r = &mut write => r,
                        // Shutdown began during this write: it too is held to the deadline.
                        c = self.deadline.changed() => {
                            let d = if c.is_ok() { *self.deadline.borrow() } else { None };
                            match d {
                                Some(d) => match tokio::time::timeout_at(d.into(), &mut write).await {
                                    Ok(r) => r,
                                    Err(_) => return give_up(&self.state, n),
                                },
                                None => write.await,
                            }
                        }
                    }
                }
            };
            match res {
                Ok(()) => {
                    if self.state.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(sink = %self.state.name, "audit sink writing again");
                    }
                    self.state.meters.up.set(1.0);
                    self.state.meters.written.increment(n);
                    return true;
                }
                Err(e) => {
                    self.state.failing.store(true, Ordering::Relaxed);
                    self.state.meters.up.set(0.0);
                    self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                    self.state.meters.errors.increment(1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "audit sink failed; retrying");
                    // Never past the shutdown deadline, if there is one.
                    let mut wake = Instant::now() + backoff;
                    if let Some(d) = *self.deadline.borrow() {
                        wake = wake.min(d);
                    }
                    let sleep = tokio::time::sleep_until(wake.into());
                    tokio::pin!(sleep);
                    tokio::select! {
                        _ = &mut sleep => {}
                        // Shutdown began: re-check against its deadline at once.
                        r = self.deadline.changed() => {
                            if r.is_err() {
                                sleep.await;
                            }
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Awaits a sink's write; one in progress for [`HUNG_AFTER`] is reported as failing (the
/// `mcp_audit_sink_up` gauge, a warning) at that moment, not when it ends.
async fn watch_hung<T>(state: &SinkState, write: impl Future<Output = T>) -> T {
    tokio::pin!(write);
    tokio::select! {
        r = &mut write => return r,
        () = tokio::time::sleep(HUNG_AFTER) => {}
    }
    state.failing.store(true, Ordering::Relaxed);
    state.meters.up.set(0.0);
    tracing::warn!(
        sink = %state.name,
        after_ms = HUNG_AFTER.as_millis() as u64,
        "audit sink write still in progress; the sink counts as failing"
    );
    write.await
}

/// Gives up on a batch at the shutdown deadline (logged).
fn give_up(state: &SinkState, n: u64) -> bool {
    tracing::error!(
        sink = %state.name,
        events = n,
        "audit sink not written by the shutdown deadline; events lost for it"
    );
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::StorageList;
    use crate::sink::{BoxFuture, SinkError};

    /// A sink that holds every write until it is opened, and counts what it wrote.
    struct Gate {
        open: Arc<tokio::sync::Semaphore>,
        written: Arc<AtomicU64>,
    }

    impl AuditSink for Gate {
        fn name(&self) -> &str {
            "gate"
        }

        fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
            let (open, written) = (self.open.clone(), self.written.clone());
            Box::pin(async move {
                let _p = open.acquire().await.unwrap();
                written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            })
        }
    }

    fn big_event(i: usize) -> AuditEvent {
        AuditEvent::config_reload().with_message(format!("{i:06}{}", "m".repeat(100_000)))
    }

    /// Events of 100 KB into a queue of 65,536 events but 1 MiB: the queue, the sink's
    /// backlog and the batch in hand hold a few MiB, not the 20 MB sent; what did not fit
    /// is dropped and counted, and nothing is counted twice.
    #[tokio::test(flavor = "current_thread")]
    async fn the_queue_is_bounded_in_bytes() {
        let mut cfg = AuditConfig {
            storage: StorageList::One(Storage::Tracing),
            ..AuditConfig::default()
        };
        cfg.queue.max_bytes = 1024 * 1024;
        cfg.queue.overflow = OverflowPolicy::Drop;
        cfg.queue.batch_size = 4;
        cfg.queue.linger_ms = 0;
        // Records as large as the events (the message is not cut to the default 1 KiB
        // field cap), so that the sink's backlog is bounded by its bytes here too.
        cfg.limits.field_bytes = 16 * 1024 * 1024;
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let auditor = Auditor::builder(cfg)
            .sink(Gate {
                open: open.clone(),
                written: written.clone(),
            })
            .start()
            .unwrap();
        let h = auditor.handle().clone();
        let mut peak = 0;
        for i in 0..200 {
            h.try_record(big_event(i));
            peak = peak.max(auditor.queued_bytes());
            tokio::task::yield_now().await;
        }
        assert!(peak <= 1024 * 1024, "{peak}");
        let dropped = auditor.stats().dropped();
        // 1 MiB in the queue, 1 MiB in the sink's backlog, one batch in hand: about 25
        // events of 100 KB are held, the rest dropped.
        assert!(dropped >= 150, "dropped {dropped}");
        open.add_permits(1_000_000);
        auditor.flush().await;
        assert_eq!(auditor.queued_bytes(), 0);
        assert_eq!(written.load(Ordering::Relaxed) + dropped, 200);
        assert_eq!(auditor.stats().written() + dropped, 200);
    }

    fn series(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A sink whose write hangs: every event is counted as queued and in the depth when
    /// it is queued, whatever the writer is waiting for; the sink is reported down while
    /// its write hangs (not when it ends), with its backlog; all of it settles once the
    /// sink writes again.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_metrics_follow_a_hung_sink_while_it_hangs() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let prom = recorder.handle();
        let mut cfg = AuditConfig {
            storage: StorageList::One(Storage::Tracing),
            ..AuditConfig::default()
        };
        cfg.queue.batch_size = 4;
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let written = Arc::new(AtomicU64::new(0));
        // The handles are registered when the auditor starts.
        let auditor = metrics::with_local_recorder(&recorder, || {
            Auditor::builder(cfg)
                .sink(Gate {
                    open: open.clone(),
                    written: written.clone(),
                })
                .start()
                .unwrap()
        });
        let h = auditor.handle().clone();
        for i in 0..20 {
            h.try_record(AuditEvent::config_reload().with_message(format!("m{i}")));
        }
        // Counted when queued, before the writer took any.
        assert_eq!(auditor.stats().queued(), 20);
        assert_eq!(auditor.stats().depth(), 20);
        let text = prom.render();
        assert_eq!(series(&text, "mcp_audit_events_queued_total"), Some(20.0));
        assert_eq!(series(&text, "mcp_audit_queue_depth"), Some(20.0));
        assert_eq!(series(&text, "mcp_audit_sink_up{sink=\"gate\"}"), Some(1.0));
        assert!(series(&text, "mcp_audit_queue_bytes").unwrap() > 0.0);

        // The writer hands the batches on; the first write hangs (time is paused and
        // advances while every task waits).
        tokio::time::sleep(HUNG_AFTER + Duration::from_secs(1)).await;
        let s = &auditor.sinks()[0];
        assert!(!s.up, "{s:?}");
        assert_eq!(s.backlog, 20);
        assert_eq!(auditor.stats().depth(), 20);
        let text = prom.render();
        assert_eq!(series(&text, "mcp_audit_sink_up{sink=\"gate\"}"), Some(0.0));
        assert_eq!(
            series(&text, "mcp_audit_sink_backlog{sink=\"gate\"}"),
            Some(20.0)
        );
        assert!(series(&text, "mcp_audit_sink_backlog_bytes{sink=\"gate\"}").unwrap() > 0.0);
        assert_eq!(series(&text, "mcp_audit_queue_depth"), Some(20.0));
        assert_eq!(series(&text, "mcp_audit_queue_bytes"), Some(0.0));

        open.add_permits(1_000);
        auditor.flush().await;
        assert_eq!(written.load(Ordering::Relaxed), 20);
        let s = &auditor.sinks()[0];
        assert!(s.up && s.backlog == 0 && s.backlog_bytes == 0, "{s:?}");
        assert_eq!(auditor.stats().depth(), 0);
        let text = prom.render();
        assert_eq!(series(&text, "mcp_audit_sink_up{sink=\"gate\"}"), Some(1.0));
        assert_eq!(
            series(&text, "mcp_audit_sink_backlog{sink=\"gate\"}"),
            Some(0.0)
        );
        assert_eq!(
            series(&text, "mcp_audit_sink_backlog_bytes{sink=\"gate\"}"),
            Some(0.0)
        );
        assert_eq!(series(&text, "mcp_audit_queue_depth"), Some(0.0));
        assert_eq!(
            series(&text, "mcp_audit_events_written_total{sink=\"gate\"}"),
            Some(20.0)
        );
        assert_eq!(series(&text, "mcp_audit_events_queued_total"), Some(20.0));
    }

    /// Under the `wait` policy, a sender waits for bytes to be given back instead of
    /// dropping: with the sink open, nothing is lost.
    #[tokio::test(flavor = "current_thread")]
    async fn the_wait_policy_waits_for_bytes() {
        let mut cfg = AuditConfig {
            storage: StorageList::One(Storage::Tracing),
            ..AuditConfig::default()
        };
        cfg.queue.max_bytes = 256 * 1024;
        cfg.queue.max_wait_ms = 10_000;
        cfg.queue.batch_size = 2;
        let open = Arc::new(tokio::sync::Semaphore::new(1_000_000));
        let written = Arc::new(AtomicU64::new(0));
        let auditor = Auditor::builder(cfg)
            .sink(Gate {
                open,
                written: written.clone(),
            })
            .start()
            .unwrap();
        for i in 0..50 {
            auditor.handle().record(big_event(i)).await;
            assert!(auditor.queued_bytes() <= 256 * 1024);
        }
        auditor.flush().await;
        assert_eq!(auditor.stats().dropped(), 0);
        assert_eq!(written.load(Ordering::Relaxed), 50);
    }
}
