//! The gateway's YAML configuration.
//!
//! The keys of the cloud-native-mcp-server security guide are accepted with the meanings
//! given there (`server.*`, `auth.*`, `ratelimit.*`, `sanitization.*`, `audit.*`,
//! `security.*`, `secrets.*`, `monitoring.*`); the gateway's own keys (`upstreams`,
//! `server.trustedProxies`, `auth.keys`, `auth.jwt`, `policy`, `layers`, ...) are added
//! beside them. `${VAR}` in any string value is replaced by the environment variable
//! (an unset variable is an error naming it); `MCP_AUTH_ENABLED`, `MCP_AUTH_MODE` and
//! `MCP_AUTH_API_KEY` override the file.
//!
//! Errors name the file, the line and the key, and say what is wrong; they never print a
//! secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// A secret string from the configuration: never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

impl Secret {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    /// `auth.*`: the seed keys (and ours: `apiKeys`, `users`, `jwt.issuers`, `mtls`, ...),
    /// as mcp-auth reads them. Unlike mcp-auth's own default, authentication is on
    /// (`enabled: true`, `mode: apikey`) unless the file says otherwise.
    pub auth: mcp_auth::AuthConfig,
    /// `ratelimit.*`: the seed keys, as mcp-ratelimit reads them (applied after
    /// authentication, keyed by principal unless `key` says otherwise).
    pub ratelimit: mcp_ratelimit::RateLimitConfig,
    /// Ours: the per-IP limit applied before authentication (brute-force shield). Default:
    /// twice `ratelimit`'s rate and burst, keyed by client IP, with its lists.
    pub ip_ratelimit: Option<mcp_ratelimit::RateLimitConfig>,
    /// `sanitization.*`: the seed keys (`enabled`, `max_length`, `allowed_protocols`,
    /// `blocked_patterns`) and mcp-sanitize's own (rules, SSRF, limits, overrides).
    pub sanitization: mcp_sanitize::SanitizeConfig,
    /// Ours: redaction of secrets (and optionally PII) in upstream results, JSON and SSE,
    /// event by event. On by default; `result_redaction: {enabled: false}` turns it off.
    pub result_redaction: ResultRedaction,
    /// `audit.*`: the seed keys, as mcp-audit reads them.
    pub audit: mcp_audit::AuditConfig,
    pub security: SecurityConfig,
    pub secrets: SecretsConfig,
    pub monitoring: MonitoringConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// `policy.*`: allow / deny rules (scopes -> methods, tools, resources, prompts).
    /// Without it, any authenticated principal may call anything.
    pub policy: Option<mcp_auth::PolicyConfig>,
    pub layers: LayersConfig,
    /// Seed sections the gateway does not use (e.g. `logging`, `kubernetes`): accepted and
    /// reported once at start.
    #[serde(rename = "logging")]
    pub logging: Option<Value>,
}

/// `server.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Listen address (seed key).
    pub addr: String,
    /// Seed key (`sse`, `http`, `streamable-http`): accepted; the gateway always serves
    /// Streamable HTTP.
    pub mode: Option<String>,
    /// TLS (seed keys).
    pub tls: Option<mcp_tls::TlsConfig>,
    /// Allow authentication off on a non-loopback address.
    pub allow_insecure_no_auth: bool,
    /// Proxies whose forwarding headers are believed (CIDRs). Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which forwarding header the trusted proxies set.
    pub forwarded_header: mcp_core::ForwardedHeader,
    /// `Host` values accepted (DNS rebinding guard). Default: loopback names on a
    /// loopback address, anything otherwise.
    pub allowed_hosts: Option<Vec<String>>,
    /// `Origin` values accepted. Default: loopback origins on a loopback address, none
    /// otherwise (requests without `Origin` always pass this check).
    pub allowed_origins: Option<Vec<String>>,
    /// Maximum request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds given to in-flight requests on SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Most connections open at once (for the whole process, every worker together).
    pub max_connections: usize,
    /// Threads that serve connections, each with a runtime of its own and a socket of its
    /// own on `addr` (one `SO_REUSEPORT` group; like nginx's worker processes). 0: one
    /// per CPU.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            mode: None,
            tls: None,
            allow_insecure_no_auth: false,
            trusted_proxies: Vec::new(),
            forwarded_header: mcp_core::ForwardedHeader::default(),
            allowed_hosts: None,
            allowed_origins: None,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_seconds: 30,
            max_connections: 10_000,
            workers: 0,
        }
    }
}

/// `security.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Response headers added to every response (seed key). Our defaults are added when
    /// absent.
    pub headers: BTreeMap<String, String>,
    pub header_filtering: HeaderFiltering,
}

/// `security.header_filtering.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderFiltering {
    pub enabled: bool,
    pub filtered_headers: Vec<String>,
}

impl Default for HeaderFiltering {
    fn default() -> Self {
        Self {
            enabled: true,
            filtered_headers: ["authorization", "cookie", "x-api-key", "x-auth-token"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// `secrets.*` (seed keys; accepted; rotation is the secret manager's job).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    pub rotation_interval: Option<u64>,
    pub max_age: Option<u64>,
    pub keep_expired: Option<bool>,
}

/// `monitoring.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    pub auth_failure_threshold: Option<u64>,
    pub auth_failure_window: Option<u64>,
    pub anomaly_detection: Option<AnomalyDetection>,
    /// Serve `/metrics`.
    pub metrics: bool,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            auth_failure_threshold: None,
            auth_failure_window: None,
            anomaly_detection: None,
            metrics: true,
        }
    }
}

/// `monitoring.anomaly_detection` (seed key; accepted).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyDetection {
    pub enabled: bool,
    pub sensitivity: Option<String>,
}

/// One entry of `upstreams`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    pub name: String,
    /// Path on the gateway.
    pub path: String,
    /// The upstream MCP endpoint.
    pub url: String,
    /// Headers injected into every forwarded request (values may use `${VAR}`).
    pub headers: BTreeMap<String, Secret>,
    pub connect_timeout_ms: Option<u64>,
    pub response_timeout_ms: Option<u64>,
    pub tls: Option<UpstreamTlsConfig>,
}

/// `upstreams[].tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `result_redaction`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ResultRedaction {
    pub enabled: bool,
    /// mcp-sanitize's result scanner settings (`secrets`, `pii_patterns`, limits),
    /// checked by mcp-sanitize when the layer is built.
    #[serde(flatten)]
    pub scan: BTreeMap<String, Value>,
}

impl Default for ResultRedaction {
    fn default() -> Self {
        Self {
            enabled: true,
            scan: BTreeMap::new(),
        }
    }
}

impl ResultRedaction {
    /// The scanner configuration.
    pub fn scan_config(&self) -> Result<mcp_sanitize::ResultScanConfig, String> {
        let map: serde_yaml_ng::Mapping = self
            .scan
            .iter()
            .map(|(k, v)| (Value::String(k.clone()), v.clone()))
            .collect();
        serde_yaml_ng::from_value(Value::Mapping(map)).map_err(|e| e.to_string())
    }
}

/// `layers.*`: master switch for the load test's "every layer off" run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayersConfig {
    /// When false, every security layer is off and the gateway is a plain proxy (only
    /// allowed on a loopback address).
    pub enabled: bool,
}

impl Default for LayersConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A configuration error: where and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax or type error.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    /// Invalid value found when validating.
    #[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Rule {
        file: String,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

const SECRET_KEYS: &[&str] = &[
    "apiKey",
    "bearerToken",
    "password",
    "jwtSecret",
    "key",
    "headers",
];

/// A loaded configuration plus where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: String,
    text: String,
}

impl Loaded {
    /// A rule error at `key` (dotted path), with the line found in the file if any.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Rule {
            file: self.file.clone(),
            line: find_line(&self.text, key),
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Reads and parses a file, expanding `${VAR}` and applying the environment overrides.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file, &|k| std::env::var(k).ok())
}

/// Parses configuration text (`file` names it in errors; `env` reads variables).
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut value: Value = if text.trim().is_empty() {
        Value::Mapping(Default::default())
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let line = e.location().map_or(0, |l| l.line());
            ConfigError::Invalid {
                file: file.to_owned(),
                line,
                key: "(syntax)".into(),
                message: scrub_message(&e.to_string()),
            }
        })?
    };
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    expand(&mut value, &mut Vec::new(), text, file, env)?;
    apply_env_overrides(&mut value, env, file)?;
    let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let last = key.rsplit('.').next().unwrap_or("");
        let last = last.split('[').next().unwrap_or(last);
        let inner = e.into_inner().to_string();
        let message = if SECRET_KEYS.contains(&last) || key.contains(".headers.") {
            "invalid value (not shown: it may be a secret); expected a string".to_owned()
        } else {
            scrub_message(&inner)
        };
        ConfigError::Invalid {
            file: file.to_owned(),
            line: find_line(text, &key).unwrap_or(0),
            key,
            message,
        }
    })?;
    Ok(Loaded {
        config,
        file: file.to_owned(),
        text: text.to_owned(),
    })
}

/// serde_yaml_ng messages may carry "at line X column Y": keep them, they are not values.
fn scrub_message(m: &str) -> String {
    m.to_owned()
}

fn path_string(path: &[String]) -> String {
    path.join(".")
}

fn expand(
    v: &mut Value,
    path: &mut Vec<String>,
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match v {
        Value::String(s) if s.contains("${") => {
            let whole = s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
            let expanded = expand_str(s, env).map_err(|var| {
                let key = path_string(path);
                ConfigError::Rule {
                    file: file.to_owned(),
                    line: find_line(text, &key),
                    key,
                    message: format!("environment variable {var} is not set"),
                }
            })?;
            // `${RPS}` alone may stand for a number or a boolean.
            let last = path.last().map(String::as_str).unwrap_or("");
            if whole
                && !SECRET_KEYS.contains(&last)
                && let Ok(parsed) = serde_yaml_ng::from_str::<Value>(&expanded)
                && matches!(parsed, Value::Number(_) | Value::Bool(_))
            {
                *v = parsed;
                return Ok(());
            }
            *s = expanded;
        }
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                path.push(name);
                expand(val, path, text, file, env)?;
                path.pop();
            }
        }
        Value::Sequence(seq) => {
            for (i, val) in seq.iter_mut().enumerate() {
                let last = path.pop().unwrap_or_default();
                path.push(format!("{last}[{i}]"));
                expand(val, path, text, file, env)?;
                path.pop();
                path.push(last);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}`; `$${` is a literal `${`. Returns the name of an unset variable.
fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let name = &after[..end];
        match env(name) {
            Some(val) => out.push_str(&val),
            None => return Err(name.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn apply_env_overrides(
    v: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    file: &str,
) -> Result<(), ConfigError> {
    let Value::Mapping(root) = v else {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            line: 1,
            key: "(root)".into(),
            message: "the configuration must be a mapping".into(),
        });
    };
    let auth = root
        .entry(Value::String("auth".into()))
        .or_insert_with(|| Value::Mapping(Default::default()));
    if auth.is_null() {
        *auth = Value::Mapping(Default::default());
    }
    let Value::Mapping(auth) = auth else {
        return Ok(());
    };
    // Secure defaults: authentication on, API keys.
    auth.entry(Value::String("enabled".into()))
        .or_insert(Value::Bool(true));
    auth.entry(Value::String("mode".into()))
        .or_insert(Value::String("apikey".into()));
    if let Some(enabled) = env("MCP_AUTH_ENABLED") {
        let b = match enabled.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::Rule {
                    file: "environment".into(),
                    line: None,
                    key: "MCP_AUTH_ENABLED".into(),
                    message: "must be true or false".into(),
                });
            }
        };
        auth.insert(Value::String("enabled".into()), Value::Bool(b));
    }
    if let Some(mode) = env("MCP_AUTH_MODE") {
        auth.insert(Value::String("mode".into()), Value::String(mode));
    }
    if let Some(key) = env("MCP_AUTH_API_KEY") {
        auth.insert(Value::String("apiKey".into()), Value::String(key));
    }
    Ok(())
}

/// Finds the line of a dotted key (`ratelimit.client_limits.default`, `upstreams[1].url`)
/// by walking the file's indentation. Best effort: `None` when not found.
pub fn find_line(text: &str, key: &str) -> Option<usize> {
    let segments: Vec<(String, Option<usize>)> = key
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('[') {
            Some((name, idx)) => (
                name.to_owned(),
                idx.trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (s.to_owned(), None),
        })
        .collect();
    if segments.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut min_indent = 0usize;
    let mut found = None;
    for (name, idx) in &segments {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if indent < min_indent && i > start {
                break;
            }
            let body = trimmed.trim_start_matches("- ");
            let bare = body.trim_start_matches(['"', '\'']);
            if bare.starts_with(name.as_str()) {
                let after = &bare[name.len()..];
                let after = after.trim_start_matches(['"', '\'']);
                if after.starts_with(':') {
                    hit = Some((i, indent));
                    break;
                }
            }
        }
        let (line_idx, indent) = hit?;
        found = Some(line_idx + 1);
        start = line_idx + 1;
        min_indent = indent + 1;
        if let Some(n) = idx {
            // Walk to the n-th "- " item below.
            let mut count = 0usize;
            let mut item = None;
            for (i, line) in lines.iter().enumerate().skip(start) {
                let trimmed = line.trim_start();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let ind = line.len() - trimmed.len();
                if ind < min_indent.saturating_sub(1) && !trimmed.starts_with("- ") {
                    break;
                }
                if trimmed.starts_with("- ") || trimmed == "-" {
                    if count == *n {
                        item = Some((i, ind));
                        break;
                    }
                    count += 1;
                }
            }
            let (i, ind) = item?;
            found = Some(i + 1);
            start = i;
            min_indent = ind;
        }
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn seed_example_parses() {
        let text = r#"
server:
  mode: "sse"
  addr: "0.0.0.0:8443"
  tls:
    certFile: "/path/to/cert.pem"
    keyFile: "/path/to/key.pem"
    minVersion: "TLS1.2"
    maxVersion: "TLS1.3"
    clientAuth: "RequireAndVerifyClientCert"
    caFile: "/path/to/ca-cert.pem"
auth:
  enabled: true
  mode: "apikey"
  apiKey: "${MCP_AUTH_API_KEY}"
  bearerToken: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."
  username: "admin"
  password: "secret-password"
  jwtSecret: "your-jwt-secret-key"
  jwtAlgorithm: "HS256"
secrets:
  rotation_interval: 168
  max_age: 30
  keep_expired: true
sanitization:
  enabled: true
  max_length: 1000
  allowed_protocols: [http, https]
  blocked_patterns: ["';", "DROP TABLE", "rm -rf", "<script>"]
audit:
  enabled: true
  level: "info"
  storage: "database"
  format: "json"
  masking:
    enabled: true
    fields: [password, token, apiKey, secret, authorization]
    maskValue: "***REDACTED***"
  database:
    type: "sqlite"
    sqlitePath: "/var/lib/cloud-native-mcp-server/audit.db"
    maxRecords: 100000
monitoring:
  auth_failure_threshold: 5
  auth_failure_window: 300
  anomaly_detection:
    enabled: true
    sensitivity: "medium"
ratelimit:
  enabled: true
  requests_per_second: 100
  burst: 200
  cleanup_interval: 60
  client_limits:
    default:
      requests_per_second: 100
    authenticated:
      requests_per_second: 200
  whitelist: ["10.0.0.0/8", "192.168.0.0/16"]
  blacklist: ["malicious.example.com"]
security:
  headers:
    X-Frame-Options: "DENY"
    Strict-Transport-Security: "max-age=31536000; includeSubDomains"
  header_filtering:
    enabled: true
    filtered_headers: [authorization, cookie, x-api-key, x-auth-token]
"#;
        let l = parse(
            text,
            "seed.yaml",
            &env_of(&[("MCP_AUTH_API_KEY", "Abc123!@#Xyz789!@#")]),
        )
        .unwrap();
        assert_eq!(
            l.config.auth.api_key.as_ref().unwrap().expose(),
            "Abc123!@#Xyz789!@#"
        );
        assert_eq!(l.config.ratelimit.burst, Some(200));
        assert_eq!(
            l.config.audit.database.sqlite_path,
            PathBuf::from("/var/lib/cloud-native-mcp-server/audit.db")
        );
        assert_eq!(l.config.security.headers["X-Frame-Options"], "DENY");
        assert!(!format!("{:?}", l.config).contains("secret-password"));
        assert!(!format!("{:?}", l.config).contains("Xyz789"));
    }

    #[test]
    fn unset_variable_is_named_with_line() {
        let text = "server:\n  addr: 127.0.0.1:1\nauth:\n  apiKey: ${NOPE_NOT_SET}\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("NOPE_NOT_SET"), "{e}");
        assert!(e.contains("f.yaml:4"), "{e}");
        assert!(e.contains("auth.apiKey"), "{e}");
    }

    #[test]
    fn type_error_names_file_line_key() {
        let text = "ratelimit:\n  enabled: true\n  burst: lots\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(e.starts_with("f.yaml:3: ratelimit.burst:"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let text = "auth:\n  enabled: true\n  apikey: x\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("apikey"), "{e}");
        assert!(e.contains("f.yaml:3"), "{e}");
    }

    #[test]
    fn secret_type_error_does_not_show_value() {
        let text = "auth:\n  apiKey: 1234567890123456789\n";
        // A number is accepted as a string by serde_yaml_ng? Either way, never printed.
        if let Err(e) = parse(text, "f.yaml", &env_of(&[])) {
            assert!(!e.to_string().contains("1234567890123456789"), "{e}");
        }
        let text = "auth:\n  apiKey: [1234567890123456789]\n";
        let e = parse(text, "f.yaml", &env_of(&[])).unwrap_err().to_string();
        assert!(!e.contains("1234567890123456789"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let l = parse(
            "auth:\n  enabled: true\n  mode: basic\n",
            "f",
            &env_of(&[
                ("MCP_AUTH_ENABLED", "false"),
                ("MCP_AUTH_MODE", "apikey"),
                ("MCP_AUTH_API_KEY", "Abc123!@#Xyz789!@#"),
            ]),
        )
        .unwrap();
        assert!(!l.config.auth.enabled);
        assert_eq!(l.config.auth.mode.0, vec![mcp_auth::Mode::ApiKey]);
        assert_eq!(
            l.config.auth.api_key.as_ref().unwrap().expose(),
            "Abc123!@#Xyz789!@#"
        );
    }

    #[test]
    fn numeric_variable() {
        let l = parse("ratelimit:\n  burst: ${B}\n", "f", &env_of(&[("B", "7")])).unwrap();
        assert_eq!(l.config.ratelimit.burst, Some(7));
    }

    #[test]
    fn dollar_escape_and_special_chars_survive() {
        let l = parse(
            "auth:\n  apiKey: \"${K}\"\n  username: \"$${literal}\"\n",
            "f",
            &env_of(&[("K", "a: b # c !d")]),
        )
        .unwrap();
        assert_eq!(
            l.config.auth.api_key.as_ref().unwrap().expose(),
            "a: b # c !d"
        );
        assert_eq!(l.config.auth.username.as_deref(), Some("${literal}"));
    }

    #[test]
    fn find_line_walks_nesting_and_lists() {
        let text = "a:\n  b: 1\n  c:\n    d: 2\nups:\n  - name: x\n    url: u1\n  - name: y\n    url: u2\n";
        assert_eq!(find_line(text, "a.c.d"), Some(4));
        assert_eq!(find_line(text, "ups[1].url"), Some(9));
        assert_eq!(find_line(text, "ups[0].url"), Some(7));
        assert_eq!(find_line(text, "zz"), None);
    }
}
