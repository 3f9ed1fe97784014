//! Configuration: plain serde structs with the seeds' `audit` keys (camelCase), plus the
//! suite's own keys, validated by [`AuditConfig::validate`].
//!
//! ```
//! use mcp_audit::AuditConfig;
//!
//! let cfg: AuditConfig = serde_json::from_value(serde_json::json!({
//!     "enabled": true,
//!     "level": "info",
//!     "storage": "database",
//!     "format": "json",
//!     "masking": {
//!         "enabled": true,
//!         "fields": ["password", "token", "apiKey", "secret", "authorization"],
//!         "maskValue": "***REDACTED***"
//!     },
//!     "database": { "type": "sqlite", "sqlitePath": "/tmp/audit.db", "maxRecords": 100000 }
//! })).unwrap();
//! cfg.validate().unwrap();
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// The default mask written in place of a secret.
pub const DEFAULT_MASK: &str = "***REDACTED***";

/// Field names masked by default (matched with case and `_` / `-` folded, see
/// [`crate::Masker`]).
pub const DEFAULT_MASKED_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "token",
    "apiKey",
    "secret",
    "authorization",
    "credential",
    "credentials",
    "privateKey",
    "accessKey",
    "cookie",
    "sessionId",
];

/// Headers written as a hash prefix, never in plaintext: `mcp-session-id` (a session id
/// is a credential for whoever holds it) is shown in audit events as `sha256:` and the
/// first 16 hex digits of the SHA-256 of its value, so that rows of one session can be
/// correlated (also with the session binding's logs and Redis keys) without the id.
/// Listing one in `masking.headers` masks it entirely instead; the tracing layers of
/// [`crate::headers`] mark them sensitive.
pub const HASHED_HEADERS: &[&str] = &["mcp-session-id"];

/// Headers never written in plaintext (audit events and tracing output). Audit events
/// compare names with `_` read as `-`, and also mask every header whose name suggests a
/// secret ([`crate::mask::header_name_suggests_secret`]).
pub const DEFAULT_SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

/// An invalid configuration: names the key and the rule, never a value that may be secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid audit configuration: `{key}` {rule}")]
pub struct ConfigError {
    /// The configuration key, e.g. `audit.queue.capacity`.
    pub key: &'static str,
    /// The rule that was broken.
    pub rule: String,
}

impl ConfigError {
    pub(crate) fn new(key: &'static str, rule: impl Into<String>) -> Self {
        Self {
            key,
            rule: rule.into(),
        }
    }
}

/// Which events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditLevel {
    /// Every request and lifecycle event (same as `info`).
    Debug,
    /// Every request and lifecycle event.
    #[default]
    Info,
    /// Only refused or failed requests, authentication failures and lifecycle events.
    Warn,
}

/// Where events go. Several can be configured at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// The database configured under `database` (SQLite by default, or PostgreSQL).
    Database,
    /// JSON lines files with size-based rotation (`file`).
    File,
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines as `tracing` events (target `mcp_audit`).
    Tracing,
}

/// One storage or a list of them (the seeds write a single string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StorageList {
    /// A single storage.
    One(Storage),
    /// Several storages, all written.
    Many(Vec<Storage>),
}

/// The default storage: the SQLite database with the `sqlite` cargo feature (a default
/// feature), JSON lines on standard output without it, so that the default configuration
/// starts under every feature set.
impl Default for StorageList {
    fn default() -> Self {
        if cfg!(feature = "sqlite") {
            Self::One(Storage::Database)
        } else {
            Self::One(Storage::Stdout)
        }
    }
}

impl StorageList {
    /// The storages, deduplicated, in order.
    pub fn to_vec(&self) -> Vec<Storage> {
        let mut out = Vec::new();
        let items: &[Storage] = match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        };
        for s in items {
            if !out.contains(s) {
                out.push(*s);
            }
        }
        out
    }
}

/// Masking of parameters and header values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct MaskingConfig {
    /// Whether parameters are masked (`masking.enabled`, default true). Sensitive headers
    /// are redacted even when this is false.
    pub enabled: bool,
    /// Field names to mask, added to [`DEFAULT_MASKED_FIELDS`] (`masking.fields`).
    pub fields: Vec<String>,
    /// The replacement (`masking.maskValue`, default `***REDACTED***`).
    pub mask_value: String,
    /// Extra value patterns (regular expressions) masked wherever they appear in strings,
    /// added to the built-in ones (JWTs, bearer / basic credentials, PEM private keys,
    /// cloud access keys, well-known token formats).
    pub patterns: Vec<String>,
    /// Extra header names never written in plaintext, added to
    /// [`DEFAULT_SENSITIVE_HEADERS`].
    pub headers: Vec<String>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fields: Vec::new(),
            mask_value: DEFAULT_MASK.to_owned(),
            patterns: Vec::new(),
            headers: Vec::new(),
        }
    }
}

/// Database engine of the `database` storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    /// An embedded SQLite file (`sqlitePath`).
    #[default]
    Sqlite,
    /// A PostgreSQL server (`postgresUrl`), shared by several gateway replicas. Needs the
    /// `postgres` cargo feature.
    Postgres,
}

/// A connection URL that may hold a password: Debug never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(pub String);

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(***)")
    }
}

/// The default byte budget of the SQLite trail (`database.maxBytes`): 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// The `database` storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite` (default) or `postgres` (`database.type`).
    #[serde(rename = "type")]
    pub kind: DatabaseType,
    /// The SQLite file (`database.sqlitePath`, default `audit.db`).
    pub sqlite_path: PathBuf,
    /// Keep about this many records; older ones are pruned, and the hash of the last
    /// pruned record is kept as the chain's anchor (`database.maxRecords`, 0 = unlimited).
    /// Pruning runs in bulk: the trail may hold up to
    /// [`prune_slack`](crate::sink::prune_slack) records more (1%, at least 1,000, at most
    /// a tenth) before it is cut back to `maxRecords`.
    pub max_records: u64,
    /// The SQLite trail's byte budget (`database.maxBytes`, default 1 GiB, 0 = unlimited,
    /// otherwise at least 1 MiB): once the pages in use exceed it, the oldest records are
    /// pruned (anchor kept, as for `maxRecords`) down to about seven eighths of it, and
    /// the freed pages are reused, so the file stops growing; the WAL is checkpointed and
    /// truncated to an eighth of it (4 to 64 MiB). See
    /// [`SqliteSink`](crate::sink::sqlite) for the bound. Not applied to PostgreSQL
    /// (whose space comes back only by `VACUUM`): bound it with `maxRecords`.
    pub max_bytes: u64,
    /// PostgreSQL connection URL or key-value string (`database.postgresUrl`).
    pub postgres_url: Option<SecretUrl>,
    /// The name recorded as the writer of each row (default: the host name, or `gateway`).
    pub writer_id: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            kind: DatabaseType::Sqlite,
            sqlite_path: PathBuf::from("audit.db"),
            max_records: 100_000,
            max_bytes: DEFAULT_MAX_BYTES,
            postgres_url: None,
            writer_id: None,
        }
    }
}

/// The `file` storage: JSON lines with size-based rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FileConfig {
    /// The active file (`file.path`, default `audit.jsonl`); rotated files are
    /// `<path>.1` (newest) to `<path>.<keepFiles>`.
    pub path: PathBuf,
    /// Rotate when the active file would grow beyond this many bytes (default 100 MiB).
    pub max_bytes: u64,
    /// Rotated files kept (default 10); the oldest is deleted beyond that.
    pub keep_files: u32,
    /// `fsync` the file after each batch (default false: flushed to the OS only).
    pub fsync: bool,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("audit.jsonl"),
            max_bytes: 100 * 1024 * 1024,
            keep_files: 10,
            fsync: false,
        }
    }
}

/// What the request path does when the queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverflowPolicy {
    /// Drop the event, count it in `mcp_audit_events_dropped_total` and log a warning.
    Drop,
    /// Hold the end of the response until the event is queued, at most `maxWaitMs`; then
    /// drop and count it.
    #[default]
    Wait,
}

/// The queue between the request path and the background writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Events held in memory at most (default 65536).
    pub capacity: usize,
    /// Bytes held in the queue at most, by an estimate of each event's heap size (the
    /// copied path and header text, three times the request body it keeps alive with its
    /// parsed form, message and data, plus the event's fixed size); default 64 MiB. Each
    /// sink's backlog is held to the same number of bytes of rendered records. When
    /// either is full, the overflow policy applies as when the queue is full of events.
    /// One event larger than the whole budget is still taken when the queue is empty.
    pub max_bytes: u64,
    /// Events written per batch at most (default 1024).
    pub batch_size: usize,
    /// `drop` or `wait` (default).
    pub overflow: OverflowPolicy,
    /// Longest wait for room under the `wait` policy, in milliseconds (default 100).
    pub max_wait_ms: u64,
    /// After a batch smaller than `batchSize`, the writer waits this long (milliseconds,
    /// default 5) before taking the next one, so that it is not woken for every event:
    /// the request path then rarely pays a thread wake-up. Events reach the sinks at most
    /// this much later.
    pub linger_ms: u64,
    /// How long [`crate::Auditor::shutdown`] keeps retrying a failing sink before it
    /// gives up on the remaining events (counted as dropped), in milliseconds (default
    /// 30000).
    pub shutdown_timeout_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            batch_size: 1024,
            overflow: OverflowPolicy::Wait,
            max_wait_ms: 100,
            linger_ms: 5,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// The default of `queue.maxBytes`: 64 MiB.
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Refusals recorded in aggregate (`aggregateRefusals`): per client and reason, the first
/// refusal of each interval is recorded in full and the following ones are counted in one
/// row of kind `refusals` at the end of the interval (and at shutdown).
///
/// Which refusals: every refusal (a [`mcp_core::Denial`] with the outcome `denied`) of a
/// request with no authenticated principal, whatever its reason (401, 429 of the per-IP
/// limit, 403 of a deny list, 405, 413, ...), keyed by the client address resolved
/// through the trusted proxies only (an IPv6 client by its network, /64 by default); and
/// every refusal of an authenticated principal except the decisions on what it asked
/// (`forbidden`, `insufficient_scope`, `blocked_by_rule`, which come after its quota and
/// are recorded in full), keyed by the principal. See [`crate::refusals`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AggregateRefusalsConfig {
    /// Whether refusals are aggregated (default true).
    pub enabled: bool,
    /// The interval, in seconds (default 10, 1 to 3600).
    pub interval_secs: u64,
    /// Clients (addresses or principals) counted apart per interval (default 1024, 1 to
    /// 1048576); refusals of further clients are counted per reason in rows without a
    /// client.
    pub max_keys: usize,
}

impl Default for AggregateRefusalsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 10,
            max_keys: 1024,
        }
    }
}

/// The query endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct QueryConfig {
    /// The scope that reads every row (default `audit:read`).
    pub scope: String,
    /// The scope that reads only the rows of the principal holding it (default
    /// `audit:read:own`): its `user` filter is forced to its own qualified id.
    pub own_scope: String,
    /// The largest `limit` honoured (default 1000).
    pub max_limit: u32,
    /// The byte budget of one page (default 8 MiB, at least 64 KiB, at most 256 MiB):
    /// a page stops before it with `"truncated":true` and a `next_cursor` (see
    /// [`crate::query`]).
    pub max_page_bytes: u64,
    /// Queries served at once (default 4, 1 to 1024); more are refused with 503 and
    /// `Retry-After: 1`.
    pub max_concurrent: usize,
    /// Milliseconds a response waits for its client to take the next chunk before it is
    /// aborted (default 30000, 1000 to 600000).
    pub stall_timeout_ms: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            scope: "audit:read".to_owned(),
            own_scope: "audit:read:own".to_owned(),
            max_limit: 1000,
            max_page_bytes: crate::query::DEFAULT_MAX_PAGE_BYTES,
            max_concurrent: crate::query::DEFAULT_MAX_CONCURRENT,
            stall_timeout_ms: 30_000,
        }
    }
}

/// The `audit` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether auditing is on (`audit.enabled`, default true). Read by the caller that
    /// assembles the layers (the gateway builds no auditor when it is false);
    /// [`Auditor::from_config`](crate::Auditor::from_config) itself does not look at it.
    pub enabled: bool,
    /// `debug`, `info` (default) or `warn`.
    pub level: AuditLevel,
    /// `database`, `file`, `stdout`, `tracing`, or a list of them (at least one). The
    /// default is `database` (SQLite) with the `sqlite` cargo feature, `stdout` without it.
    pub storage: StorageList,
    /// Only `json` is supported (default).
    pub format: String,
    /// Masking of parameters and headers.
    pub masking: MaskingConfig,
    /// The `database` storage.
    pub database: DatabaseConfig,
    /// The `file` storage.
    pub file: FileConfig,
    /// The queue.
    pub queue: QueueConfig,
    /// The query endpoint.
    pub query: QueryConfig,
    /// Refusals of clients already being refused, recorded in aggregate.
    pub aggregate_refusals: AggregateRefusalsConfig,
    /// Believe the `x-request-id` of requests from trusted proxies (default false: a fresh
    /// UUIDv7 is generated and replaces the client's header). Even when on, the header of a
    /// peer that is not a trusted proxy (per the request's `ClientAddr`, or the audit
    /// layer's trusted proxies) is replaced; with neither, it is never believed.
    pub trust_request_id: bool,
    /// Record request headers (sensitive ones redacted) in each event (default true).
    pub record_headers: bool,
    /// The older name of `limits.paramsBytes`: when set, it takes precedence (default
    /// unset).
    pub max_params_bytes: Option<usize>,
    /// Size caps of every recorded field (`audit.limits`).
    pub limits: LimitsConfig,
}

/// Size caps of the recorded fields (`audit.limits`, bytes of UTF-8 text). Each field is
/// masked first, then cut to its cap at a character boundary, so a secret is never cut
/// in half before the masker sees it whole. A record whose field was cut names that field
/// in its `truncated` list (see [`crate::AuditRecord::truncated`]), which is part of the
/// hashed record.
///
/// ```
/// use mcp_audit::{AuditConfig, LimitsConfig};
///
/// let cfg = AuditConfig::default().with_limits(
///     LimitsConfig::default().header_value_bytes(1024).headers_bytes(8192),
/// );
/// cfg.validate().unwrap();
/// assert_eq!(cfg.limits.path_bytes, 2048);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// One header value, repeated values joined (`headerValueBytes`, default 4096): a
    /// longer value is cut, and `headers.<name>` is listed as truncated.
    pub header_value_bytes: usize,
    /// All headers together, names and values as rendered (`headersBytes`, default
    /// 16384): headers (in name order) that would pass the cap are left out, and
    /// `headers` is listed as truncated.
    pub headers_bytes: usize,
    /// The request path (`pathBytes`, default 2048).
    pub path_bytes: usize,
    /// The params of a message (tool arguments included), and the content of a client's
    /// response, serialized (`paramsBytes`, default 16384): larger ones are replaced by
    /// `{"truncated":true,"bytes":N}` (`N`: their masked size).
    pub params_bytes: usize,
    /// Every other text field: JSON-RPC method and ids, tool, resource and prompt names,
    /// request id, user, credential id, reason detail, upstream, message (`fieldBytes`,
    /// default 1024).
    pub field_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_value_bytes: 4096,
            headers_bytes: 16 * 1024,
            path_bytes: 2048,
            params_bytes: 16 * 1024,
            field_bytes: 1024,
        }
    }
}

impl LimitsConfig {
    /// Sets `headerValueBytes`.
    pub fn header_value_bytes(mut self, n: usize) -> Self {
        self.header_value_bytes = n;
        self
    }

    /// Sets `headersBytes`.
    pub fn headers_bytes(mut self, n: usize) -> Self {
        self.headers_bytes = n;
        self
    }

    /// Sets `pathBytes`.
    pub fn path_bytes(mut self, n: usize) -> Self {
        self.path_bytes = n;
        self
    }

    /// Sets `paramsBytes`.
    pub fn params_bytes(mut self, n: usize) -> Self {
        self.params_bytes = n;
        self
    }

    /// Sets `fieldBytes`.
    pub fn field_bytes(mut self, n: usize) -> Self {
        self.field_bytes = n;
        self
    }

    /// Checks the rules: every cap between 64 bytes and 16 MiB, `headersBytes` at least
    /// `headerValueBytes`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const MAX: usize = 16 * 1024 * 1024;
        for (key, v) in [
            ("audit.limits.headerValueBytes", self.header_value_bytes),
            ("audit.limits.headersBytes", self.headers_bytes),
            ("audit.limits.pathBytes", self.path_bytes),
            ("audit.limits.paramsBytes", self.params_bytes),
            ("audit.limits.fieldBytes", self.field_bytes),
        ] {
            if !(64..=MAX).contains(&v) {
                return Err(ConfigError::new(key, "must be between 64 and 16777216"));
            }
        }
        if self.headers_bytes < self.header_value_bytes {
            return Err(ConfigError::new(
                "audit.limits.headersBytes",
                "must be at least audit.limits.headerValueBytes",
            ));
        }
        Ok(())
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            level: AuditLevel::Info,
            storage: StorageList::default(),
            format: "json".to_owned(),
            masking: MaskingConfig::default(),
            database: DatabaseConfig::default(),
            file: FileConfig::default(),
            queue: QueueConfig::default(),
            query: QueryConfig::default(),
            aggregate_refusals: AggregateRefusalsConfig::default(),
            trust_request_id: false,
            record_headers: true,
            max_params_bytes: None,
            limits: LimitsConfig::default(),
        }
    }
}

impl AuditConfig {
    /// Where the configured storages write, one line each, for a start-up banner:
    /// `sqlite /abs/path/audit.db (lock /abs/path/audit.db.lock)`, `file /abs/audit.jsonl`,
    /// `postgres (writer NAME)`, `stdout`, `tracing`. Relative paths are shown resolved
    /// against the current directory; the PostgreSQL URL is never shown (it may hold a
    /// password).
    pub fn trail_locations(&self) -> Vec<String> {
        let abs = |p: &std::path::Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_owned())
                .display()
                .to_string()
        };
        self.storage
            .to_vec()
            .into_iter()
            .map(|s| match s {
                Storage::Database => match self.database.kind {
                    DatabaseType::Sqlite => {
                        let db = abs(&self.database.sqlite_path);
                        format!("sqlite {db} (writer lock {db}.lock)")
                    }
                    DatabaseType::Postgres => format!(
                        "postgres (writer {})",
                        self.database
                            .writer_id
                            .as_deref()
                            .unwrap_or("the host name")
                    ),
                },
                Storage::File => format!("file {}", abs(&self.file.path)),
                Storage::Stdout => "stdout".to_owned(),
                Storage::Tracing => "tracing (target mcp_audit)".to_owned(),
            })
            .collect()
    }

    /// Checks every rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.format != "json" {
            return Err(ConfigError::new("audit.format", "must be \"json\""));
        }
        if self.masking.mask_value.is_empty() {
            return Err(ConfigError::new(
                "audit.masking.maskValue",
                "must not be empty",
            ));
        }
        for f in &self.masking.fields {
            if crate::mask::fold(f).is_empty() {
                return Err(ConfigError::new(
                    "audit.masking.fields",
                    "entries must contain a letter or digit",
                ));
            }
        }
        for p in &self.masking.patterns {
            if regex::Regex::new(p).is_err() {
                return Err(ConfigError::new(
                    "audit.masking.patterns",
                    "entries must be valid regular expressions",
                ));
            }
        }
        for h in &self.masking.headers {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    "audit.masking.headers",
                    "entries must be valid header names",
                ));
            }
        }
        let storages = self.storage.to_vec();
        if storages.is_empty() {
            return Err(ConfigError::new(
                "audit.storage",
                "must name at least one storage (database, file, stdout or tracing); \
                 to record nothing, set enabled: false",
            ));
        }
        if storages.contains(&Storage::Database) {
            match self.database.kind {
                DatabaseType::Sqlite => {
                    if self.database.sqlite_path.as_os_str().is_empty() {
                        return Err(ConfigError::new(
                            "audit.database.sqlitePath",
                            "must not be empty",
                        ));
                    }
                    if !cfg!(feature = "sqlite") {
                        return Err(ConfigError::new(
                            "audit.database.type",
                            "sqlite needs the `sqlite` cargo feature of mcp-audit",
                        ));
                    }
                }
                DatabaseType::Postgres => {
                    if self
                        .database
                        .postgres_url
                        .as_ref()
                        .is_none_or(|u| u.0.trim().is_empty())
                    {
                        return Err(ConfigError::new(
                            "audit.database.postgresUrl",
                            "is required when database.type is postgres",
                        ));
                    }
                    if !cfg!(feature = "postgres") {
                        return Err(ConfigError::new(
                            "audit.database.type",
                            "postgres needs the `postgres` cargo feature of mcp-audit",
                        ));
                    }
                }
            }
        }
        if storages.contains(&Storage::File) {
            if self.file.path.as_os_str().is_empty() {
                return Err(ConfigError::new("audit.file.path", "must not be empty"));
            }
            if self.file.max_bytes < 4096 {
                return Err(ConfigError::new(
                    "audit.file.maxBytes",
                    "must be at least 4096",
                ));
            }
        }
        if self.queue.capacity == 0 || self.queue.capacity > 16 * 1024 * 1024 {
            return Err(ConfigError::new(
                "audit.queue.capacity",
                "must be between 1 and 16777216",
            ));
        }
        if self.queue.max_bytes < 65_536 {
            return Err(ConfigError::new(
                "audit.queue.maxBytes",
                "must be at least 65536",
            ));
        }
        let agg = &self.aggregate_refusals;
        if !(1..=3600).contains(&agg.interval_secs) {
            return Err(ConfigError::new(
                "audit.aggregateRefusals.intervalSecs",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=1_048_576).contains(&agg.max_keys) {
            return Err(ConfigError::new(
                "audit.aggregateRefusals.maxKeys",
                "must be between 1 and 1048576",
            ));
        }
        if self.queue.batch_size == 0 || self.queue.batch_size > 65_536 {
            return Err(ConfigError::new(
                "audit.queue.batchSize",
                "must be between 1 and 65536",
            ));
        }
        if self.queue.max_wait_ms > 60_000 {
            return Err(ConfigError::new(
                "audit.queue.maxWaitMs",
                "must be at most 60000",
            ));
        }
        if self.queue.linger_ms > 1000 {
            return Err(ConfigError::new(
                "audit.queue.lingerMs",
                "must be at most 1000",
            ));
        }
        if self.query.scope.trim().is_empty() {
            return Err(ConfigError::new("audit.query.scope", "must not be empty"));
        }
        if self.query.own_scope.trim().is_empty() {
            return Err(ConfigError::new(
                "audit.query.ownScope",
                "must not be empty",
            ));
        }
        if self.query.own_scope == self.query.scope {
            return Err(ConfigError::new(
                "audit.query.ownScope",
                "must differ from audit.query.scope (which reads every row)",
            ));
        }
        if self.query.max_limit == 0 || self.query.max_limit > 10_000 {
            return Err(ConfigError::new(
                "audit.query.maxLimit",
                "must be between 1 and 10000",
            ));
        }
        if !(crate::query::MIN_PAGE_BYTES..=256 * 1024 * 1024).contains(&self.query.max_page_bytes)
        {
            return Err(ConfigError::new(
                "audit.query.maxPageBytes",
                "must be between 65536 and 268435456",
            ));
        }
        if !(1..=1024).contains(&self.query.max_concurrent) {
            return Err(ConfigError::new(
                "audit.query.maxConcurrent",
                "must be between 1 and 1024",
            ));
        }
        if !(1000..=600_000).contains(&self.query.stall_timeout_ms) {
            return Err(ConfigError::new(
                "audit.query.stallTimeoutMs",
                "must be between 1000 and 600000",
            ));
        }
        if self.database.max_bytes != 0 && self.database.max_bytes < 1024 * 1024 {
            return Err(ConfigError::new(
                "audit.database.maxBytes",
                "must be 0 (unlimited) or at least 1048576",
            ));
        }
        if self.max_params_bytes.is_some_and(|n| n < 64) {
            return Err(ConfigError::new(
                "audit.maxParamsBytes",
                "must be at least 64",
            ));
        }
        self.limits.validate()
    }

    /// Sets the size caps (`limits`).
    pub fn with_limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// The caps in effect: `limits`, with `paramsBytes` taken from `maxParamsBytes`
    /// when that older key is set.
    pub fn effective_limits(&self) -> LimitsConfig {
        let mut l = self.limits.clone();
        if let Some(n) = self.max_params_bytes {
            l.params_bytes = n;
        }
        l
    }

    /// Adds header names to `masking.headers` (each once): give it every credential
    /// header of the authentication layer (`mcp_auth::AuthLayer::credential_headers`),
    /// so that a configured API key header is masked like the defaults.
    pub fn with_sensitive_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        for n in names {
            if !self
                .masking
                .headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(n.as_str()))
            {
                self.masking.headers.push(n.as_str().to_owned());
            }
        }
        self
    }

    /// The sensitive header names: the defaults plus `masking.headers`.
    pub fn sensitive_headers(&self) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = DEFAULT_SENSITIVE_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        for h in &self.masking.headers {
            if let Ok(name) = HeaderName::from_bytes(h.as_bytes())
                && !out.contains(&name)
            {
                out.push(name);
            }
        }
        out
    }

    pub(crate) fn max_wait(&self) -> Duration {
        Duration::from_millis(self.queue.max_wait_ms)
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_headers_cover_every_default_credential_header() {
        let c =
            AuditConfig::default().with_sensitive_headers([HeaderName::from_static("x-mcp-key")]);
        let names = c.sensitive_headers();
        for h in mcp_core::headers::DEFAULT_CREDENTIAL_HEADERS
            .iter()
            .chain(&["x-mcp-key", "set-cookie"])
        {
            assert!(names.iter().any(|n| n == h), "{h}");
        }
    }

    #[test]
    fn seeds_keys_parse() {
        let yaml = serde_json::json!({
            "enabled": true, "level": "info", "storage": "database", "format": "json",
            "masking": {"enabled": true, "fields": ["password"], "maskValue": "XX"},
            "database": {"type": "sqlite", "sqlitePath": "/x/a.db", "maxRecords": 5}
        });
        let c: AuditConfig = serde_json::from_value(yaml).unwrap();
        c.validate().unwrap();
        assert_eq!(c.masking.mask_value, "XX");
        assert_eq!(c.database.max_records, 5);
        assert_eq!(c.storage.to_vec(), vec![Storage::Database]);
    }

    #[test]
    fn storage_list_and_errors_name_keys() {
        let c: AuditConfig =
            serde_json::from_value(serde_json::json!({"storage": ["stdout", "file", "stdout"]}))
                .unwrap();
        assert_eq!(c.storage.to_vec(), vec![Storage::Stdout, Storage::File]);
        let mut bad = AuditConfig::default();
        bad.format = "text".into();
        assert_eq!(bad.validate().unwrap_err().key, "audit.format");
        let mut bad = AuditConfig::default();
        bad.queue.capacity = 0;
        assert_eq!(bad.validate().unwrap_err().key, "audit.queue.capacity");
        let mut bad = AuditConfig::default();
        bad.queue.max_bytes = 1000;
        assert_eq!(bad.validate().unwrap_err().key, "audit.queue.maxBytes");
        let mut bad = AuditConfig::default();
        bad.aggregate_refusals.interval_secs = 0;
        assert_eq!(
            bad.validate().unwrap_err().key,
            "audit.aggregateRefusals.intervalSecs"
        );
        let mut bad = AuditConfig::default();
        bad.aggregate_refusals.max_keys = 0;
        assert_eq!(
            bad.validate().unwrap_err().key,
            "audit.aggregateRefusals.maxKeys"
        );
        let mut bad = AuditConfig::default();
        bad.masking.patterns = vec!["(".into()];
        assert_eq!(bad.validate().unwrap_err().key, "audit.masking.patterns");
        let mut bad = AuditConfig::default();
        bad.database.kind = DatabaseType::Postgres;
        assert_eq!(
            bad.validate().unwrap_err().key,
            "audit.database.postgresUrl"
        );
        assert!(
            serde_json::from_value::<AuditConfig>(serde_json::json!({"nope": 1})).is_err(),
            "unknown keys are refused"
        );
    }

    /// The README lists every key with its default: parsed, it is the default.
    #[test]
    fn readme_lists_the_defaults() {
        let readme = include_str!("../README.md");
        let block = mcp_testkit::fenced_block(readme, "Every key with its default:", "yaml");
        let mut doc: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(block).unwrap();
        let section = doc.remove("audit").unwrap();
        let parsed: AuditConfig = serde_yaml_ng::from_value(section).unwrap();
        assert_eq!(parsed, AuditConfig::default());
    }

    #[test]
    fn limits_parse_and_validate_naming_the_key() {
        let cfg: AuditConfig = serde_json::from_value(serde_json::json!({
            "limits": {"headerValueBytes": 1024, "pathBytes": 512}
        }))
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.limits.header_value_bytes, 1024);
        assert_eq!(cfg.limits.headers_bytes, 16 * 1024);
        assert!(
            serde_json::from_value::<AuditConfig>(serde_json::json!({"limits": {"x": 1}})).is_err()
        );
        for (limits, key) in [
            (
                LimitsConfig::default().path_bytes(10),
                "audit.limits.pathBytes",
            ),
            (
                LimitsConfig::default().field_bytes(0),
                "audit.limits.fieldBytes",
            ),
            (
                LimitsConfig::default().params_bytes(usize::MAX),
                "audit.limits.paramsBytes",
            ),
            (
                LimitsConfig::default()
                    .header_value_bytes(8192)
                    .headers_bytes(4096),
                "audit.limits.headersBytes",
            ),
        ] {
            let e = AuditConfig::default()
                .with_limits(limits)
                .validate()
                .unwrap_err();
            assert_eq!(e.key, key);
        }
        // The older key still sets the params cap.
        let cfg = AuditConfig {
            max_params_bytes: Some(999),
            ..AuditConfig::default()
        };
        assert_eq!(cfg.effective_limits().params_bytes, 999);
        assert_eq!(
            AuditConfig::default().effective_limits(),
            LimitsConfig::default()
        );
    }

    #[test]
    fn postgres_url_never_in_debug() {
        let mut c = AuditConfig::default();
        c.database.postgres_url = Some(SecretUrl("postgres://u:hunter2@h/db".into()));
        assert!(!format!("{c:?}").contains("hunter2"));
        let err = ConfigError::new("audit.database.postgresUrl", "x");
        assert!(!err.to_string().contains("hunter2"));
    }
}
