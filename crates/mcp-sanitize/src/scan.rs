//! [`ResultScanLayer`]: redacts secrets and configured PII patterns from responses before
//! they reach the client.
//!
//! - `text/event-stream` bodies are redacted **event by event** as they stream: only the
//!   current incomplete event is buffered (bounded by `max_event_bytes`), so a secret split
//!   across chunks is still found, and nothing waits for the end of the stream.
//! - Every other body (`application/json` first) is redacted **as it streams**, with
//!   bounded memory: the response head goes on at once, and each chunk goes on as soon as
//!   it arrives except the current *segment* (from the last `"` on, with the built-in
//!   detectors), which is held until its end arrives. What the client receives is what
//!   [`Redactor::redact`] makes of the whole body, whatever the chunk boundaries, as long as
//!   no segment is longer than `max_match_bytes` (4 KiB); a longer one is redacted in
//!   pieces under the window rule, fail closed (see [`stream`]). Secrets written with
//!   JSON escapes (`\u0041KIA...`, `\/`) are found too ([`Redactor::redact_escaped`]).
//! - `Content-Length` is removed from every scanned response (the length may change).
//!
//! Scanning needs identity-encoded bodies: the layer removes `Accept-Encoding` from the
//! request (option `strip_accept_encoding`, on by default). A response still compressed, or
//! an SSE event over `max_event_bytes`, cannot be scanned with bounded memory: with
//! `over_budget: refuse` (default) the first becomes a 502 with a JSON-RPC error (reason
//! `upstream_error`) and the second ends the stream with an error; with `pass` both go on
//! unscanned, with a warning.
//!
//! Redactions replace the match with `[REDACTED:<name>]`, which contains no `"` or `\`, so
//! JSON stays valid when the secret sat inside a JSON string (all built-in patterns stop at
//! `"`).
//!
//! Built-in detectors: PEM private keys, AWS access key ids (`AKIA`, `ASIA`, ...), Google
//! API keys (`AIza...`), GitHub tokens (`ghp_`, `github_pat_`, ...), Slack tokens
//! (`xox?-`), JWTs, and `Bearer` credentials.
//!
//! ```
//! use mcp_sanitize::{ResultScanConfig, ResultScanLayer, Redactor};
//!
//! let redactor = Redactor::new(&ResultScanConfig::default()).unwrap();
//! let out = redactor.redact(b"key AKIAIOSFODNN7EXAMPLE ok");
//! assert_eq!(&*out, &b"key [REDACTED:aws_access_key] ok"[..]);
//! let layer = ResultScanLayer::new(&ResultScanConfig::default()).unwrap();
//! # let _ = layer;
//! ```

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use mcp_core::{JsonRpcId, McpRequest, Rejection, RejectionReason};

use crate::config::ConfigError;

pub mod stream;

pub use stream::{OVER_WINDOW_MARKER, StreamRedactor};

/// Boxed error of [`ScanBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A built-in secret detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// PEM private keys (RSA, EC, OPENSSH, PKCS#8, encrypted).
    PrivateKey,
    /// AWS access key ids.
    AwsAccessKey,
    /// Google API keys.
    GcpApiKey,
    /// GitHub tokens.
    GithubToken,
    /// Slack tokens.
    SlackToken,
    /// JSON Web Tokens.
    Jwt,
    /// `Bearer <token>` credentials.
    BearerToken,
}

impl SecretKind {
    /// All detectors.
    pub const ALL: [SecretKind; 7] = [
        SecretKind::PrivateKey,
        SecretKind::AwsAccessKey,
        SecretKind::GcpApiKey,
        SecretKind::GithubToken,
        SecretKind::SlackToken,
        SecretKind::Jwt,
        SecretKind::BearerToken,
    ];

    /// The name used in `[REDACTED:<name>]`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PrivateKey => "private_key",
            Self::AwsAccessKey => "aws_access_key",
            Self::GcpApiKey => "gcp_api_key",
            Self::GithubToken => "github_token",
            Self::SlackToken => "slack_token",
            Self::Jwt => "jwt",
            Self::BearerToken => "bearer_token",
        }
    }

    const fn pattern(self) -> &'static str {
        match self {
            // A full block (possibly JSON-escaped newlines), or an unterminated one up to
            // the end of the base64 text.
            Self::PrivateKey => {
                r#"-----BEGIN[A-Z0-9 ]{0,32} PRIVATE KEY-----(?:[^"-]|-[^"-])*?-----END[A-Z0-9 ]{0,32} PRIVATE KEY-----|-----BEGIN[A-Z0-9 ]{0,32} PRIVATE KEY-----(?:[A-Za-z0-9+/=:, \r\n-]|\\[rn])*"#
            }
            Self::AwsAccessKey => {
                r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"
            }
            Self::GcpApiKey => r"\bAIza[0-9A-Za-z_\-]{35}",
            Self::GithubToken => {
                r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"
            }
            Self::SlackToken => r"\bxox[abposr]-[A-Za-z0-9-]{10,250}",
            Self::Jwt => r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            Self::BearerToken => r"(?i:\bbearer)\s+[A-Za-z0-9\-._~+/]{16,}=*",
        }
    }
}

/// A named PII or secret pattern from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPattern {
    /// The name used in `[REDACTED:<name>]` (ASCII letters, digits, `_`, `-`).
    pub name: String,
    /// The regex (Rust `regex` syntax, on bytes). Avoid matching `"` or `\` so that JSON
    /// stays valid after redaction.
    pub regex: String,
}

/// Configuration of [`ResultScanLayer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultScanConfig {
    /// Built-in detectors (default: all).
    pub secrets: Vec<SecretKind>,
    /// Extra patterns (PII: e-mail addresses, card numbers, national ids...).
    pub pii_patterns: Vec<NamedPattern>,
    /// Largest SSE event buffered (default 1 MiB).
    pub max_event_bytes: usize,
    /// No longer used: JSON bodies are not collected any more but redacted as they stream
    /// (see `max_match_bytes`). Accepted so that existing configurations still load.
    pub max_json_bytes: usize,
    /// The window of the streamed redaction of non-SSE bodies (default 4 KiB, at least
    /// 16, at most 1 MiB): the longest secret redacted exactly as in the whole body. A
    /// segment of the body (from one `"` to the next with the built-in detectors) longer
    /// than this is redacted in pieces of this size, and from a piece next to a match
    /// that crosses a cut to the end of the segment, replaced by `[REDACTED:over_window]`
    /// (see [`stream`]). Memory per response: about twice this, plus one upstream chunk.
    pub max_match_bytes: usize,
    /// What to do with a response that cannot be scanned with bounded memory (default
    /// `refuse`): a compressed one, or an SSE event over `max_event_bytes`.
    pub over_budget: OverBudget,
    /// Remove `Accept-Encoding` from requests so that responses come uncompressed.
    pub strip_accept_encoding: bool,
}

/// What [`ResultScanLayer`] does with a response it cannot scan with bounded memory: one
/// still compressed (`Content-Encoding` other than `identity`, when the client's
/// `Accept-Encoding` reached the upstream or the upstream ignored its absence), or an SSE
/// event longer than `max_event_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverBudget {
    /// Fail closed (default): a compressed response becomes a 502 with a JSON-RPC error
    /// (reason `upstream_error`); an SSE stream ends with an error at the oversized event
    /// (its head has been sent already).
    #[default]
    Refuse,
    /// Pass it on unscanned, with a warning: a compressed response as it is; an oversized
    /// SSE event from where it went over the bound to its end (scanning resumes at the next
    /// event). Weakens redaction: logged when the layer is built.
    Pass,
}

impl Default for ResultScanConfig {
    fn default() -> Self {
        Self {
            secrets: SecretKind::ALL.to_vec(),
            pii_patterns: Vec::new(),
            max_event_bytes: 1024 * 1024,
            max_json_bytes: 16 * 1024 * 1024,
            max_match_bytes: DEFAULT_MAX_MATCH_BYTES,
            over_budget: OverBudget::Refuse,
            strip_accept_encoding: true,
        }
    }
}

/// The default window of streamed redaction (`max_match_bytes`): 4 KiB.
pub const DEFAULT_MAX_MATCH_BYTES: usize = 4096;

/// How many redaction passes [`Redactor::redact`] makes at most: a pass repeats while
/// a detector still matches what the previous one wrote.
pub const MAX_REDACTION_PASSES: usize = 8;

/// The compiled detectors: one regex set to tell whether anything matches, then one regex
/// per detector to replace. In front of the set, a byte scan that tells when no built-in
/// detector can match (a search for the bytes every built-in pattern needs, checked
/// against the full set by property tests) and the set of the configured PII patterns
/// alone.
#[derive(Debug)]
pub struct Redactor {
    set: Option<RegexSet>,
    each: Vec<(String, Regex)>,
    gate: Option<Gate>,
    pii: Option<RegexSet>,
    barriers: stream::Barriers,
    window: usize,
}

/// A necessary condition for the built-in detectors, checked with vector byte searches:
/// every match of a built-in pattern contains one of these literals, so a body without any
/// of them has no match and skips the regex set.
///
/// | detector | every match contains | searched at |
/// |---|---|---|
/// | private key | `-----BEGIN` | `-` |
/// | AWS access key | `A` then one of `KSGIRNBC` (`AKIA`, `ASIA`, `AGPA`, `AIDA`, `AROA`, `AIPA`, `ANPA`, `ANVA`, `ABIA`, `ACCA`) | `A` |
/// | Google API key | `AI` (`AIza`) | `A` |
/// | GitHub token | `gh` (`gh?_`) or `github_pat_` | `g` |
/// | Slack token | `xox` | `x` |
/// | JWT | `eyJ` | `J` |
/// | Bearer | `bearer` in any ASCII case (none of these letters has a non-ASCII case fold) | `b`, `B` |
///
/// The literals of every detector are looked for whichever are enabled (a superset is still
/// a necessary condition). Tested against each detector's regex on generated bodies
/// (`scan::tests::gate_*`).
#[derive(Debug)]
struct Gate;

const SIZE_LIMIT: usize = 32 * 1024 * 1024;

/// A pattern's syntax, read as `regex::bytes::Regex` reads it (Unicode on, any bytes).
fn parse_hir(pattern: &str) -> Option<regex_syntax::hir::Hir> {
    regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()
}

impl Gate {
    fn new(kinds: &[SecretKind]) -> Option<Self> {
        (!kinds.is_empty()).then_some(Self)
    }

    /// Whether a built-in detector may match `input` (false: certainly none does).
    fn may_match(&self, input: &[u8]) -> bool {
        memchr::memchr3_iter(b'-', b'A', b'g', input).any(|i| Self::literal_at(input, i))
            || memchr::memchr3_iter(b'x', b'J', b'b', input).any(|i| Self::literal_at(input, i))
            || memchr::memchr_iter(b'B', input).any(|i| Self::literal_at(input, i))
    }

    /// Whether one of the literals sits at the search byte `input[i]`.
    fn literal_at(input: &[u8], i: usize) -> bool {
        let rest = input.get(i + 1..).unwrap_or_default();
        match input.get(i) {
            Some(b'-') => rest.starts_with(b"----BEGIN"),
            Some(b'A') => matches!(
                rest.first(),
                Some(b'K' | b'S' | b'G' | b'I' | b'R' | b'N' | b'B' | b'C')
            ),
            Some(b'g') => rest.first() == Some(&b'h') || rest.starts_with(b"ithub_pat_"),
            Some(b'x') => rest.starts_with(b"ox"),
            Some(b'J') => i >= 2 && input.get(i - 2..i) == Some(b"ey"),
            Some(b'b' | b'B') => rest
                .get(..5)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"earer")),
            _ => true,
        }
    }
}

impl Redactor {
    /// Compiles the detectors.
    pub fn new(config: &ResultScanConfig) -> Result<Self, ConfigError> {
        let mut each = Vec::new();
        let mut hirs = Vec::new();
        for k in &config.secrets {
            hirs.push(parse_hir(k.pattern()).ok_or_else(|| {
                ConfigError::invalid("result_scan.secrets", "built-in pattern failed")
            })?);
            let re = RegexBuilder::new(k.pattern())
                .size_limit(SIZE_LIMIT)
                .build()
                .map_err(|_| {
                    ConfigError::invalid("result_scan.secrets", "built-in pattern failed")
                })?;
            each.push((k.name().to_owned(), re));
        }
        for (i, p) in config.pii_patterns.iter().enumerate() {
            let key = format!("result_scan.pii_patterns[{i}]");
            if p.name.is_empty()
                || p.name.len() > 64
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "must be 1 to 64 of A-Z a-z 0-9 _ -",
                ));
            }
            let re = RegexBuilder::new(&p.regex)
                .size_limit(SIZE_LIMIT)
                .build()
                .map_err(|_| ConfigError::invalid(format!("{key}.regex"), "not a valid regex"))?;
            if re.is_match(b"") {
                return Err(ConfigError::invalid(
                    format!("{key}.regex"),
                    "must not match the empty string",
                ));
            }
            let hir = parse_hir(&p.regex)
                .ok_or_else(|| ConfigError::invalid(format!("{key}.regex"), "not a valid regex"))?;
            if stream::has_text_anchor(&hir) {
                return Err(ConfigError::invalid(
                    format!("{key}.regex"),
                    "must not anchor to the start or end of the text or of a line \
                     (^, $, \\A, \\z): bodies are scanned in pieces",
                ));
            }
            hirs.push(hir);
            each.push((p.name.clone(), re));
        }
        if config.max_event_bytes == 0 {
            return Err(ConfigError::invalid(
                "result_scan.max_event_bytes",
                "must be greater than 0",
            ));
        }
        if !(16..=1024 * 1024).contains(&config.max_match_bytes) {
            return Err(ConfigError::invalid(
                "result_scan.max_match_bytes",
                "must be from 16 to 1048576",
            ));
        }
        // Every match a cut can split must fit in two pieces of the window: a bounded
        // pattern whole, an unbounded one with its shortest match.
        for ((name, _), hir) in each.iter().zip(&hirs) {
            let props = hir.properties();
            let need = props
                .maximum_len()
                .unwrap_or_else(|| props.minimum_len().unwrap_or(0));
            if need > config.max_match_bytes {
                return Err(ConfigError::invalid(
                    "result_scan.max_match_bytes",
                    format!("must be at least {need}, the longest match of `{name}`"),
                ));
            }
        }
        let set = if each.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(each.iter().map(|(_, r)| r.as_str()))
                    .size_limit(SIZE_LIMIT)
                    .build()
                    .map_err(|_| {
                        ConfigError::invalid("result_scan", "patterns together too large")
                    })?,
            )
        };
        let pii = if config.pii_patterns.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(config.pii_patterns.iter().map(|p| p.regex.as_str()))
                    .size_limit(SIZE_LIMIT)
                    .build()
                    .map_err(|_| {
                        ConfigError::invalid(
                            "result_scan.pii_patterns",
                            "patterns together too large",
                        )
                    })?,
            )
        };
        Ok(Self {
            set,
            each,
            gate: Gate::new(&config.secrets),
            pii,
            barriers: stream::Barriers::new(&hirs),
            window: config.max_match_bytes,
        })
    }

    /// Redacts every match; borrows the input when nothing matched.
    pub fn redact<'a>(&self, input: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(set) = &self.set else {
            return Cow::Borrowed(input);
        };
        // The usual answer is "nothing", found with one scan at most: when the byte scan
        // rules out every built-in detector, only the PII patterns' own set can match;
        // otherwise the whole set's `is_match` (it may stop at the first match and does
        // not allocate the set of matching patterns).
        let any = if self.gate.as_ref().is_some_and(|g| g.may_match(input)) {
            set.is_match(input)
        } else {
            self.pii.as_ref().is_some_and(|p| p.is_match(input))
        };
        if !any {
            return Cow::Borrowed(input);
        }
        // One pass per detector can leave a match: a replacement gives a secret glued to
        // another one the boundary its pattern needs. Passes repeat until no detector
        // matches (bounded; each pass replaces at least one match).
        let mut cur: Cow<'a, [u8]> = Cow::Borrowed(input);
        for _ in 0..MAX_REDACTION_PASSES {
            let matched = set.matches(&cur);
            if !matched.matched_any() {
                break;
            }
            for i in matched.iter() {
                if let Some((name, re)) = self.each.get(i) {
                    let replacement = format!("[REDACTED:{name}]");
                    let next = re.replace_all(&cur, replacement.as_bytes()).into_owned();
                    cur = Cow::Owned(next);
                }
            }
        }
        cur
    }
}

/// The result scanning layer.
#[derive(Debug, Clone)]
pub struct ResultScanLayer {
    redactor: Arc<Redactor>,
    max_event: usize,
    over_budget: OverBudget,
    strip_accept_encoding: bool,
}

impl ResultScanLayer {
    /// Builds the layer, compiling the detectors. Logs a warning when `over_budget` is
    /// `pass` (responses that cannot be scanned are passed on unscanned).
    pub fn new(config: &ResultScanConfig) -> Result<Self, ConfigError> {
        if config.over_budget == OverBudget::Pass {
            tracing::warn!(
                "mcp-sanitize: result_scan.over_budget is `pass`: compressed responses and \
                 SSE events over max_event_bytes are passed on unscanned"
            );
        }
        Ok(Self {
            redactor: Arc::new(Redactor::new(config)?),
            max_event: config.max_event_bytes,
            over_budget: config.over_budget,
            strip_accept_encoding: config.strip_accept_encoding,
        })
    }
}

impl<S> Layer<S> for ResultScanLayer {
    type Service = ResultScan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResultScan {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ResultScanLayer`].
#[derive(Debug, Clone)]
pub struct ResultScan<S> {
    inner: S,
    layer: ResultScanLayer,
}

impl<S, B, ResBody> Service<Request<B>> for ResultScan<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ScanBody<ResBody>>;
    type Error = S::Error;
    type Future = ScanFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.layer.strip_accept_encoding {
            req.headers_mut().remove(ACCEPT_ENCODING);
        }
        let id = req
            .extensions()
            .get::<McpRequest>()
            .and_then(|m| m.id().cloned());
        ScanFuture {
            future: self.inner.call(req),
            layer: self.layer.clone(),
            id,
            collect: None,
        }
    }
}

pin_project! {
    /// Response future of [`ResultScan`]: hands the response head on as soon as it comes,
    /// with a body that is redacted as it streams (or a 502 when the response cannot be
    /// scanned and `over_budget` is `refuse`). A body whose upstream announced an exact
    /// length of at most `max_match_bytes` is collected first, so that it goes out in one
    /// piece with its exact new length.
    pub struct ScanFuture<F, B> {
        #[pin]
        future: F,
        layer: ResultScanLayer,
        // The JSON-RPC id of the request, echoed by a refusal.
        id: Option<JsonRpcId>,
        collect: Option<Collect<B>>,
    }
}

/// A small body being collected by [`ScanFuture`].
struct Collect<B> {
    parts: http::response::Parts,
    body: Pin<Box<B>>,
    /// The first data frame, kept as it came (no copy) until a second one arrives.
    first: Option<Bytes>,
    /// The frames joined, from the second data frame on.
    buf: BytesMut,
    trailers: Option<HeaderMap>,
}

impl<B> Collect<B> {
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if let Some(first) = self.first.take() {
            self.buf.extend_from_slice(&first);
        }
        if self.buf.is_empty() {
            self.first = Some(data);
        } else {
            self.buf.extend_from_slice(&data);
        }
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.buf.len()
    }

    fn take(&mut self) -> Bytes {
        match self.first.take() {
            Some(first) => first,
            None => self.buf.split().freeze(),
        }
    }
}

/// The media types the layer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Json,
    EventStream,
    Other,
}

/// The media type of `Content-Type` (parameters ignored, ASCII case-insensitive):
/// `application/json` or any `+json` type, `text/event-stream`, or something else.
fn media_type(headers: &HeaderMap) -> Media {
    let Some(v) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Media::Other;
    };
    let essence = v.split(';').next().unwrap_or("").trim().as_bytes();
    if essence.eq_ignore_ascii_case(b"text/event-stream") {
        Media::EventStream
    } else if essence.eq_ignore_ascii_case(b"application/json")
        || essence.len() >= 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
    {
        Media::Json
    } else {
        Media::Other
    }
}

/// The answer when an upstream result cannot be scanned and `over_budget` is `refuse`: a
/// 502 with a JSON-RPC error (reason `upstream_error`), never the unscanned bytes.
fn unscannable<B>(id: Option<JsonRpcId>, message: &'static str) -> Response<ScanBody<B>> {
    let resp: Response<Bytes> = Rejection::new(RejectionReason::UpstreamError)
        .with_id(id)
        .with_message(message)
        .into_response();
    resp.map(ScanBody::ready)
}

impl<F, ResBody, E> Future for ScanFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<ScanBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.collect.is_none() {
            let response = match this.future.poll(cx) {
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let (mut parts, body) = response.into_parts();
            let encoded = parts
                .headers
                .get(CONTENT_ENCODING)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
            if encoded {
                if this.layer.over_budget == OverBudget::Refuse {
                    tracing::warn!("mcp-sanitize: compressed response refused (cannot be scanned)");
                    return Poll::Ready(Ok(unscannable(
                        this.id.take(),
                        "upstream result compressed: cannot be scanned",
                    )));
                }
                tracing::warn!("mcp-sanitize: compressed response passed through unscanned");
                return Poll::Ready(Ok(Response::from_parts(parts, ScanBody::pass(body))));
            }
            // The length may change.
            parts.headers.remove(CONTENT_LENGTH);
            let redactor = this.layer.redactor.clone();
            let media = media_type(&parts.headers);
            if media == Media::EventStream {
                let body =
                    ScanBody::sse(body, redactor, this.layer.max_event, this.layer.over_budget);
                return Poll::Ready(Ok(Response::from_parts(parts, body)));
            }
            let small = body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= redactor.window as u64);
            if !small {
                let body = ScanBody::stream(body, redactor);
                return Poll::Ready(Ok(Response::from_parts(parts, body)));
            }
            *this.collect = Some(Collect {
                parts,
                body: Box::pin(body),
                first: None,
                buf: BytesMut::new(),
                trailers: None,
            });
        }
        let Some(c) = this.collect.as_mut() else {
            return Poll::Pending;
        };
        let redactor = &this.layer.redactor;
        loop {
            match c.body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        c.push(data);
                        if c.len() > redactor.window {
                            // Longer than announced: streamed from here on.
                            let Some(mut c) = this.collect.take() else {
                                return Poll::Pending;
                            };
                            let prefix = c.take();
                            let mut body = ScanBody::stream_boxed(c.body, redactor.clone());
                            if let Some(s) = body.stream.as_mut() {
                                s.push(prefix, &mut body.out);
                            }
                            return Poll::Ready(Ok(Response::from_parts(c.parts, body)));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            c.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    tracing::warn!(error = %e, "mcp-sanitize: upstream body failed");
                    *this.collect = None;
                    return Poll::Ready(Ok(unscannable(
                        this.id.take(),
                        "upstream result body failed",
                    )));
                }
                Poll::Ready(None) => break,
            }
        }
        let Some(mut c) = this.collect.take() else {
            return Poll::Pending;
        };
        let raw = c.take();
        let out = match redactor.redact_escaped(&raw) {
            Cow::Borrowed(_) => raw,
            Cow::Owned(v) => Bytes::from(v),
        };
        let mut body = ScanBody::ready(out);
        body.trailers = c.trailers;
        Poll::Ready(Ok(Response::from_parts(c.parts, body)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not scanned: passed through as it comes.
    Pass,
    /// Redacted event by event.
    Sse,
    /// Redacted as it streams, segment by segment (see [`stream`]).
    Stream,
}

/// The response body was over a scanning bound, so it was cut rather than passed unscanned.
#[derive(Debug, thiserror::Error)]
#[error("response {what} larger than {limit} bytes: not scanned, stream ended")]
pub struct ScanLimitExceeded {
    what: &'static str,
    limit: usize,
}

/// A response body after [`ResultScanLayer`]: passed through, redacted event by event
/// (SSE), or redacted as it streams with bounded memory (see the module docs).
pub struct ScanBody<B> {
    inner: Option<Pin<Box<B>>>,
    mode: Mode,
    redactor: Option<Arc<Redactor>>,
    stream: Option<StreamRedactor>,
    // Output ready to be handed on.
    out: VecDeque<Bytes>,
    // SSE: the current incomplete event.
    buf: BytesMut,
    searched: usize,
    limit: usize,
    over_budget: OverBudget,
    // SSE, `over_budget: pass`: inside an oversized event, passed on unscanned; the last
    // bytes passed (an event end may be split across chunks).
    raw: Option<Vec<u8>>,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> std::fmt::Debug for ScanBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanBody")
            .field("mode", &self.mode)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<B> ScanBody<B> {
    fn with(inner: Option<Pin<Box<B>>>, mode: Mode, redactor: Option<Arc<Redactor>>) -> Self {
        Self {
            inner,
            mode,
            redactor,
            stream: None,
            out: VecDeque::new(),
            buf: BytesMut::new(),
            searched: 0,
            limit: 0,
            over_budget: OverBudget::Refuse,
            raw: None,
            trailers: None,
            done: false,
        }
    }

    fn pass(inner: B) -> Self {
        Self::with(Some(Box::pin(inner)), Mode::Pass, None)
    }

    fn sse(inner: B, redactor: Arc<Redactor>, limit: usize, over_budget: OverBudget) -> Self {
        let mut b = Self::with(Some(Box::pin(inner)), Mode::Sse, Some(redactor));
        b.limit = limit;
        b.over_budget = over_budget;
        b
    }

    fn stream(inner: B, redactor: Arc<Redactor>) -> Self {
        Self::stream_boxed(Box::pin(inner), redactor)
    }

    fn stream_boxed(inner: Pin<Box<B>>, redactor: Arc<Redactor>) -> Self {
        let mut b = Self::with(Some(inner), Mode::Stream, None);
        b.stream = Some(redactor.stream());
        b
    }

    fn ready(body: Bytes) -> Self {
        let mut b = Self::with(None, Mode::Stream, None);
        if !body.is_empty() {
            b.out.push_back(body);
        }
        b.done = true;
        b
    }
}

/// The end of the last complete SSE event in `buf` (after its blank line), searching from
/// `from` (a little before, so that a separator split across chunks is found).
fn last_event_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut end = None;
    let mut i = start;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') | (b'\r', b'\r') => {
                end = Some(i + 2);
                i += 2;
            }
            (b'\r', b'\n') if buf.get(i + 2..i + 4) == Some(b"\r\n") => {
                end = Some(i + 4);
                i += 4;
            }
            _ => i += 1,
        }
    }
    end
}

/// Redacts SSE text event by event. A run of line ends that holds an empty line (two line
/// terminators or more: `\n\n`, `\r\r`, `\r\n\r\n`, `\n\r\n`, ...) ends an event: it is
/// passed as it is and no match spans it, as does a run of line ends at the start of
/// `text` (the rest of the one that ended the previous events). So what the client
/// receives does not depend on how the upstream cut the stream into chunks (the scanner
/// hands the redactor whatever complete events it has).
fn redact_events(redactor: &Redactor, text: Bytes) -> Bytes {
    let is_eol = |b: u8| b == b'\r' || b == b'\n';
    let mut out: Option<Vec<u8>> = None;
    let mut segment = 0;
    let mut i = 0;
    while i < text.len() {
        if !text.get(i).copied().is_some_and(is_eol) {
            i += 1;
            continue;
        }
        let run = i;
        let mut terminators = 0;
        while let Some(&b) = text.get(i).filter(|b| is_eol(**b)) {
            // CR LF is one terminator; a lone CR or LF is one.
            if b == b'\n' || text.get(i + 1) != Some(&b'\n') {
                terminators += 1;
            }
            i += 1;
        }
        if terminators >= 2 || run == 0 {
            let seg = text.get(segment..run).unwrap_or_default();
            match redactor.redact_escaped(seg) {
                Cow::Owned(v) => out
                    .get_or_insert_with(|| text.get(..segment).unwrap_or_default().to_vec())
                    .extend_from_slice(&v),
                Cow::Borrowed(b) => {
                    if let Some(o) = out.as_mut() {
                        o.extend_from_slice(b);
                    }
                }
            }
            if let Some(o) = out.as_mut() {
                o.extend_from_slice(text.get(run..i).unwrap_or_default());
            }
            segment = i;
        }
    }
    let seg = text.get(segment..).unwrap_or_default();
    match redactor.redact_escaped(seg) {
        Cow::Owned(v) => {
            let mut o = out.unwrap_or_else(|| text.get(..segment).unwrap_or_default().to_vec());
            o.extend_from_slice(&v);
            Bytes::from(o)
        }
        Cow::Borrowed(b) => match out {
            Some(mut o) => {
                o.extend_from_slice(b);
                Bytes::from(o)
            }
            None => text,
        },
    }
}

/// The end of the first complete SSE event in `buf` (after its blank line).
fn first_event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') | (b'\r', b'\r') => return Some(i + 2),
            (b'\r', b'\n') if buf.get(i + 2..i + 4) == Some(b"\r\n") => return Some(i + 4),
            _ => i += 1,
        }
    }
    None
}

/// The last bytes of `s`, enough to find an event end split across chunks.
fn tail_of(s: &[u8]) -> Vec<u8> {
    s.get(s.len().saturating_sub(3)..)
        .unwrap_or_default()
        .to_vec()
}

/// The SSE state of a [`ScanBody`].
struct Sse<'a> {
    buf: &'a mut BytesMut,
    searched: &'a mut usize,
    limit: usize,
    over_budget: OverBudget,
    raw: &'a mut Option<Vec<u8>>,
    redactor: &'a Redactor,
}

impl Sse<'_> {
    /// Takes one chunk; what can be handed on goes to `out`.
    fn push(&mut self, mut data: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BoxError> {
        if let Some(tail) = self.raw.as_mut() {
            // Inside an oversized event passed on unscanned (`over_budget: pass`): up to
            // its end.
            let mut joined = tail.clone();
            joined.extend_from_slice(&data);
            match first_event_end(&joined) {
                Some(end) => {
                    let cut = end.saturating_sub(tail.len()).min(data.len());
                    let passed = data.split_to(cut);
                    if !passed.is_empty() {
                        out.push_back(passed);
                    }
                    *self.raw = None;
                }
                None => {
                    *tail = tail_of(&joined);
                    out.push_back(data);
                    return Ok(());
                }
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        self.buf.extend_from_slice(&data);
        match last_event_end(self.buf, *self.searched) {
            Some(end) => {
                let events = self.buf.split_to(end).freeze();
                *self.searched = 0;
                let redacted = redact_events(self.redactor, events);
                if !redacted.is_empty() {
                    out.push_back(redacted);
                }
            }
            None => *self.searched = self.buf.len(),
        }
        if self.buf.len() > self.limit {
            if self.over_budget == OverBudget::Refuse {
                return Err(Box::new(ScanLimitExceeded {
                    what: "event",
                    limit: self.limit,
                }));
            }
            tracing::warn!(
                limit = self.limit,
                "mcp-sanitize: SSE event over max_event_bytes passed on unscanned"
            );
            let rest = self.buf.split().freeze();
            *self.searched = 0;
            *self.raw = Some(tail_of(&rest));
            out.push_back(rest);
        }
        Ok(())
    }

    /// The end of the stream: the last (incomplete) event.
    fn finish(&mut self, out: &mut VecDeque<Bytes>) {
        if !self.buf.is_empty() {
            let rest = self.buf.split().freeze();
            let redacted = redact_events(self.redactor, rest);
            if !redacted.is_empty() {
                out.push_back(redacted);
            }
        }
    }
}

impl<B> Body for ScanBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(inner) = this.inner.as_mut() else {
                this.done = true;
                continue;
            };
            let frame = match inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => None,
                Poll::Ready(Some(Err(e))) => {
                    // What is held back is dropped: never handed on unscanned.
                    this.done = true;
                    this.out.clear();
                    this.trailers = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(f))) => Some(f),
            };
            if this.mode == Mode::Pass {
                if frame.is_none() {
                    this.done = true;
                }
                return Poll::Ready(frame.map(Ok));
            }
            let data = match frame.map(Frame::into_data) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(f)) => {
                    if let Ok(t) = f.into_trailers() {
                        this.trailers = Some(t);
                    }
                    None
                }
            };
            if let Some(stream) = this.stream.as_mut() {
                match data {
                    Some(d) => stream.push(d, &mut this.out),
                    None => {
                        stream.finish(&mut this.out);
                        this.done = true;
                    }
                }
                continue;
            }
            let Some(redactor) = this.redactor.as_deref() else {
                this.done = true;
                continue;
            };
            let mut sse = Sse {
                buf: &mut this.buf,
                searched: &mut this.searched,
                limit: this.limit,
                over_budget: this.over_budget,
                raw: &mut this.raw,
                redactor,
            };
            match data {
                Some(d) => {
                    if let Err(e) = sse.push(d, &mut this.out) {
                        this.done = true;
                        this.out.clear();
                        this.trailers = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                None => {
                    sse.finish(&mut this.out);
                    this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match (self.mode, &self.inner) {
            (Mode::Pass, Some(inner)) if !self.done => inner.as_ref().is_end_stream(),
            _ => self.done && self.out.is_empty() && self.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (self.mode, &self.inner) {
            (Mode::Pass, Some(inner)) if !self.done => inner.as_ref().size_hint(),
            _ if self.done && self.trailers.is_none() => {
                SizeHint::with_exact(self.out.iter().map(|b| b.len() as u64).sum())
            }
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {

    /// A replacement can give a secret glued to another one the boundary its detector
    /// needs: redaction repeats until no detector matches, so what leaves holds no match
    /// and redacting it again changes nothing. Found by the `result_redactor` fuzz target
    /// (a Slack token followed by a byte that is not UTF-8 and a Google API key).
    #[test]
    fn redaction_leaves_no_match_behind() {
        let r = Redactor::new(&ResultScanConfig::default()).unwrap();
        let set = RegexSet::new(SecretKind::ALL.iter().map(|k| k.pattern())).unwrap();
        for text in [
            &b" xoxb-2469135780-abc\xa9AIzaBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBz01234="[..],
            b"xoxb-2469135780-abcAIzaBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            b"AKIAABCDEFGHIJKLMNOPghp_abcdefghijklmnopqrstuvwxyz0123456789",
        ] {
            let once = r.redact(text).into_owned();
            assert!(!set.is_match(&once), "{:?}", String::from_utf8_lossy(&once));
            assert_eq!(r.redact(&once).as_ref(), &once[..]);
        }
    }

    /// A detector match never spans the end of an SSE event, so the output does not
    /// depend on the chunk boundaries: `bearer` ended one event and the token-like text
    /// began the next; redacted when both came in one chunk, not when cut between them.
    /// Found by the `result_redactor` fuzz target.
    #[test]
    fn sse_redaction_does_not_depend_on_chunks() {
        let r = Redactor::new(&ResultScanConfig::default()).unwrap();
        for text in [
            &b": comment\n\ndata: bearer\n\n\ndat23456789abcdef\n\n"[..],
            b"data: Bearer\r\rabcdefghijklmnopqrstuvwxyz\r\r",
            b"data: Bearer\r\n\r\nabcdefghijklmnopqrstuvwxyz",
            b"data: Bearer\n\r\nabcdefghijklmnopqrstuvwxyz\n\n",
        ] {
            let whole = redact_events(&r, Bytes::copy_from_slice(text));
            assert_eq!(&whole[..], text, "{}", String::from_utf8_lossy(text));
        }
        // Within one event, as before.
        let one = redact_events(
            &r,
            Bytes::from_static(b"data: Bearer abcdefghijklmnopqrstuvwxyz\n\n"),
        );
        assert_eq!(&one[..], b"data: [REDACTED:bearer_token]\n\n");
    }
    use super::*;

    fn r() -> Redactor {
        Redactor::new(&ResultScanConfig {
            pii_patterns: vec![NamedPattern {
                name: "email".into(),
                regex: r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}".into(),
            }],
            ..Default::default()
        })
        .unwrap()
    }

    fn red(s: &str) -> String {
        String::from_utf8(r().redact(s.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn detectors() {
        assert_eq!(
            red("k=AKIAIOSFODNN7EXAMPLE."),
            "k=[REDACTED:aws_access_key]."
        );
        assert_eq!(red("ASIAABCDEFGHIJKLMNOP"), "[REDACTED:aws_access_key]");
        assert_eq!(red("AKIAshort"), "AKIAshort");
        assert_eq!(
            red("x AIzaSyA-1234567890abcdefghijklmnopqrstu y"),
            "x [REDACTED:gcp_api_key] y"
        );
        assert_eq!(
            red(&format!("t ghp_{} e", "a".repeat(36))),
            "t [REDACTED:github_token] e"
        );
        assert_eq!(red("xoxb-1234567890-abcdef"), "[REDACTED:slack_token]");
        assert_eq!(
            red(
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end"
            ),
            "jwt [REDACTED:jwt] end"
        );
        assert_eq!(
            red("Authorization: Bearer abcdefghijklmnop1234=="),
            "Authorization: [REDACTED:bearer_token]"
        );
        assert_eq!(red("mail bob@example.com now"), "mail [REDACTED:email] now");
        assert_eq!(red("nothing here"), "nothing here");
    }

    #[test]
    fn pem_in_text_and_json() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nabc+/=\n-----END RSA PRIVATE KEY-----";
        assert_eq!(red(&format!("a {pem} b")), "a [REDACTED:private_key] b");
        let json =
            serde_json::to_string(&serde_json::json!({"text": format!("key: {pem}!")})).unwrap();
        let out = red(&json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], "key: [REDACTED:private_key]!");
        // Unterminated key: redacted to the end of the base64 text.
        let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0";
        assert_eq!(red(&format!("{cut}\"")), "[REDACTED:private_key]\"");
    }

    /// The media type as it was read before `media_type` stopped allocating.
    fn media_type_reference(v: &str) -> Media {
        let t = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match t.as_str() {
            "text/event-stream" => Media::EventStream,
            "application/json" => Media::Json,
            t if t.ends_with("+json") => Media::Json,
            _ => Media::Other,
        }
    }

    fn media_of(v: &str) -> Option<Media> {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, http::HeaderValue::from_str(v).ok()?);
        Some(media_type(&h))
    }

    #[test]
    fn media_types() {
        for (v, m) in [
            ("application/json", Media::Json),
            ("Application/JSON; charset=utf-8", Media::Json),
            ("application/vnd.api+JSON", Media::Json),
            ("+json", Media::Json),
            ("json", Media::Other),
            ("application/jsonx", Media::Other),
            (" TEXT/Event-Stream ;x", Media::EventStream),
            ("text/plain", Media::Other),
            ("", Media::Other),
        ] {
            assert_eq!(media_of(v), Some(m), "{v}");
            assert_eq!(media_type_reference(v), m, "{v}");
        }
        assert_eq!(media_type(&HeaderMap::new()), Media::Other);
    }

    proptest::proptest! {
        #[test]
        fn media_type_agrees_with_the_lowercasing_reference(
            v in "[ ;+a-zA-Z/\\-]{0,8}(application/json|text/event-stream|\\+json|[+]JSON|JSON)?[ ;a-zA-Z=-]{0,6}"
        ) {
            if let Some(m) = media_of(&v) {
                proptest::prop_assert_eq!(m, media_type_reference(&v));
            }
        }

        #[test]
        fn media_type_agrees_on_any_visible_ascii(v in "[ -~]{0,30}") {
            if let Some(m) = media_of(&v) {
                proptest::prop_assert_eq!(m, media_type_reference(&v));
            }
        }
    }

    /// Redaction as it was before the gate: the whole set, then each matching detector.
    fn redact_reference(r: &Redactor, input: &[u8]) -> Vec<u8> {
        let Some(set) = &r.set else {
            return input.to_vec();
        };
        let mut cur = input.to_vec();
        for _ in 0..MAX_REDACTION_PASSES {
            let matched = set.matches(&cur);
            if !matched.matched_any() {
                break;
            }
            for i in matched.iter() {
                let (name, re) = &r.each[i];
                cur = re
                    .replace_all(&cur, format!("[REDACTED:{name}]").as_bytes())
                    .into_owned();
            }
        }
        cur
    }

    /// Pieces that make up generated bodies: every literal of the gate, near misses, case
    /// variants, whole secrets, Unicode case-fold look-alikes, JSON punctuation.
    const SOUP: &[&str] = &[
        "-----BEGIN",
        "----BEGIN",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END RSA PRIVATE KEY-----",
        " PRIVATE KEY-----",
        "MIIEpAIBAAKCAQEA7",
        "\\n",
        "\n",
        "-",
        "A",
        "AKIA",
        "ASIA",
        "AGPA",
        "AIDA",
        "AROA",
        "AIPA",
        "ANPA",
        "ANVA",
        "ABIA",
        "ACCA",
        "AKIAIOSFODNN7EXAMPLE",
        "akia",
        "AIza",
        "AIzaSyA-1234567890abcdefghijklmnopqrstu",
        "aiza",
        "IOSFODNN7EXAMPLE",
        "gh",
        "ghp_",
        "gho_",
        "github_pat_",
        "Gh",
        "GHP_",
        "xox",
        "xoxb-",
        "xoxb-1234567890-abcdef",
        "XOXB-",
        "eyJ",
        "EYJ",
        "eyj",
        "eyJhbGciOiJIUzI1NiJ9",
        ".",
        "bearer",
        "Bearer ",
        "BEARER",
        "bEaReR",
        "beare",
        "bearer\t",
        "abcdefghijklmnop1234==",
        "ſ",
        "K",
        "ß",
        "İ",
        "é",
        " ",
        "\"",
        ":",
        "{",
        "}",
        "0123456789",
        "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "_",
        "=",
        "\u{0}",
    ];

    fn soup() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(SOUP).prop_map(str::to_owned),
                1 => "\\PC{0,4}",
            ],
            0..24,
        )
        .prop_map(|v| v.concat())
    }

    /// One regex and one gate per built-in detector, compiled once for the property tests.
    static KINDS: std::sync::LazyLock<Vec<(SecretKind, Regex, Gate)>> =
        std::sync::LazyLock::new(|| {
            SecretKind::ALL
                .into_iter()
                .map(|k| {
                    (
                        k,
                        Regex::new(k.pattern()).unwrap(),
                        Gate::new(&[k]).unwrap(),
                    )
                })
                .collect()
        });

    /// Redactors with every detector, each detector alone, some, and with a PII pattern.
    static REDACTORS: std::sync::LazyLock<Vec<Redactor>> = std::sync::LazyLock::new(|| {
        let digits = || NamedPattern {
            name: "digits".into(),
            regex: "[0-9]{6}".into(),
        };
        let mut configs = vec![
            ResultScanConfig::default(),
            ResultScanConfig {
                pii_patterns: vec![digits()],
                ..Default::default()
            },
            ResultScanConfig {
                secrets: Vec::new(),
                pii_patterns: vec![digits()],
                ..Default::default()
            },
            ResultScanConfig {
                secrets: vec![SecretKind::Jwt, SecretKind::BearerToken],
                pii_patterns: vec![digits()],
                ..Default::default()
            },
        ];
        for k in SecretKind::ALL {
            configs.push(ResultScanConfig {
                secrets: vec![k],
                ..Default::default()
            });
        }
        configs.iter().map(|c| Redactor::new(c).unwrap()).collect()
    });

    static ALL: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(r);

    fn gate_check(input: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        for (k, re, gate) in KINDS.iter() {
            if re.is_match(input) {
                proptest::prop_assert!(gate.may_match(input), "{:?} {:?}", k, input);
            }
        }
        if KINDS.iter().any(|(_, re, _)| re.is_match(input)) {
            proptest::prop_assert!(ALL.gate.as_ref().unwrap().may_match(input));
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// No built-in detector matches where its gate says none can.
        #[test]
        fn gate_never_hides_a_match(s in soup()) {
            gate_check(s.as_bytes())?;
        }

        #[test]
        fn gate_never_hides_a_match_in_any_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            gate_check(&b)?;
            proptest::prop_assert_eq!(ALL.redact(&b).into_owned(), redact_reference(&ALL, &b));
        }

        /// `redact` (gate, PII set, `is_match`, then the set) gives exactly what the plain
        /// set gives, with every detector, with some, with and without PII patterns.
        #[test]
        fn redact_agrees_with_the_plain_set(s in soup(), which in proptest::prelude::any::<proptest::sample::Index>()) {
            let red = &REDACTORS[which.index(REDACTORS.len())];
            proptest::prop_assert_eq!(red.redact(s.as_bytes()).into_owned(), redact_reference(red, s.as_bytes()));
        }
    }

    #[test]
    fn gate_lets_every_detector_example_through_and_skips_plain_text() {
        let g = Gate::new(&SecretKind::ALL).unwrap();
        for s in [
            "-----BEGIN PRIVATE KEY-----",
            "AKIAIOSFODNN7EXAMPLE",
            "AIzaSyA-1234567890abcdefghijklmnopqrstu",
            "ghp_x",
            "github_pat_",
            "xoxb-",
            "eyJ",
            "BeArEr x",
        ] {
            assert!(g.may_match(s.as_bytes()), "{s}");
        }
        let clean = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello from wrk"}],"isError":false}}"#;
        assert!(!g.may_match(clean));
        assert!(matches!(r().redact(clean), Cow::Borrowed(_)));
        assert!(Gate::new(&[]).is_none());
    }

    // ---- Streamed redaction (`stream`) ----

    /// The window rule, written plainly over the whole input: segments from one barrier
    /// to the next; a segment over the window in pieces of the window, withheld from the
    /// piece before the first hot cut on.
    fn windowed_reference(r: &Redactor, input: &[u8]) -> Vec<u8> {
        let w = r.window;
        let mut starts = vec![0];
        starts.extend(
            input
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, b)| r.barriers.is(**b))
                .map(|(i, _)| i),
        );
        let mut out = Vec::new();
        for (k, &s) in starts.iter().enumerate() {
            let e = starts.get(k + 1).copied().unwrap_or(input.len());
            let seg = &input[s..e];
            if seg.len() <= w {
                out.extend_from_slice(&r.redact_unit(seg));
                continue;
            }
            let pieces: Vec<&[u8]> = seg.chunks(w).collect();
            let hot = (0..pieces.len() - 1).find(|&k| r.cut_is_hot(pieces[k], pieces[k + 1]));
            for p in &pieces[..hot.unwrap_or(pieces.len())] {
                out.extend_from_slice(&r.redact_unit(p));
            }
            if let Some(k) = hot {
                if k == 0 && r.barriers.is(seg[0]) {
                    out.push(seg[0]);
                }
                out.extend_from_slice(stream::OVER_WINDOW_MARKER);
            }
        }
        out
    }

    /// The input cut at the given sizes (cycled; 0 stands for 1), streamed.
    fn streamed(r: &Arc<Redactor>, input: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        let mut i = 0;
        let mut k = 0;
        while i < input.len() {
            let n = sizes
                .get(k % sizes.len().max(1))
                .copied()
                .unwrap_or(7)
                .max(1);
            let end = (i + n).min(input.len());
            s.push(Bytes::copy_from_slice(&input[i..end]), &mut out);
            // What is held back stays within two windows and the last chunk.
            assert!(
                s.held_back() <= 2 * r.window + n + 1,
                "{} held",
                s.held_back()
            );
            i = end;
            k += 1;
        }
        s.finish(&mut out);
        assert!(out.iter().all(|b| !b.is_empty()));
        out.concat()
    }

    fn arc(c: ResultScanConfig) -> Arc<Redactor> {
        Arc::new(Redactor::new(&c).unwrap())
    }

    /// Redactors for the streaming tests: the built-in detectors (default window and the
    /// smallest they allow), with PII, and a PII pattern alone with a tiny window (many
    /// barriers, many long segments).
    static STREAMERS: std::sync::LazyLock<Vec<Arc<Redactor>>> = std::sync::LazyLock::new(|| {
        let digits = || NamedPattern {
            name: "digits".into(),
            regex: "[0-9]{6}".into(),
        };
        vec![
            arc(ResultScanConfig::default()),
            arc(ResultScanConfig {
                max_match_bytes: 266,
                ..Default::default()
            }),
            arc(ResultScanConfig {
                pii_patterns: vec![digits()],
                max_match_bytes: 300,
                ..Default::default()
            }),
            arc(ResultScanConfig {
                secrets: vec![SecretKind::Jwt, SecretKind::BearerToken],
                pii_patterns: vec![digits()],
                max_match_bytes: 64,
                ..Default::default()
            }),
            arc(ResultScanConfig {
                secrets: Vec::new(),
                pii_patterns: vec![digits()],
                max_match_bytes: 16,
                ..Default::default()
            }),
            arc(ResultScanConfig {
                secrets: vec![SecretKind::AwsAccessKey, SecretKind::BearerToken],
                // Can hold `"`: no barrier at all, the body is one long segment.
                pii_patterns: vec![NamedPattern {
                    name: "quoted".into(),
                    regex: "'[^']{1,20}'".into(),
                }],
                max_match_bytes: 96,
                ..Default::default()
            }),
        ]
    });

    /// A larger soup, with JSON quotes and escapes, for long segments.
    fn big_soup() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop::collection::vec(
            prop_oneof![
                6 => prop::sample::select(SOUP).prop_map(|s| s.as_bytes().to_vec()),
                2 => prop::sample::select(&[
                    "\"", "\\\"", "\\u0041", "\\u0041KIA", "\\/", "\\\\u0041", "\\ud83d\\ude00",
                    "\\u00e9", "'", "AKIA\\u0049OSFODNN7EXAMPLE", "ghp_",
                    "Bearer abcdefghijklmnopqrstuvwxyz0123456789",
                ][..]).prop_map(|s| s.as_bytes().to_vec()),
                1 => prop::collection::vec(any::<u8>(), 0..4),
                1 => (1usize..200).prop_map(|n| vec![b'a'; n]),
            ],
            0..80,
        )
        .prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// Streamed, at any chunk boundaries, the body comes out as the window rule says.
        #[test]
        fn stream_equals_the_window_rule_at_any_chunking(
            input in big_soup(),
            sizes in proptest::collection::vec(0usize..40, 1..6),
            which in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let r = &STREAMERS[which.index(STREAMERS.len())];
            let reference = windowed_reference(r, &input);
            proptest::prop_assert_eq!(&streamed(r, &input, &sizes), &reference);
            proptest::prop_assert_eq!(&streamed(r, &input, &[1]), &reference);
            proptest::prop_assert_eq!(&streamed(r, &input, &[input.len().max(1)]), &reference);
        }

        /// With no segment over the window and no JSON escape, the window rule is the
        /// whole-body redaction, multi-pass cases included (`soup` holds glued secrets).
        #[test]
        fn stream_equals_whole_body_redaction(
            parts in proptest::collection::vec(soup(), 1..6),
            sizes in proptest::collection::vec(0usize..40, 1..6),
            which in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let r = &STREAMERS[which.index(3)];
            // JSON-like: the parts as strings, so that segments stay short.
            let input = parts.join("\",\"").into_bytes();
            proptest::prop_assume!(!stream::has_escape(&input));
            let longest = {
                let mut cur = 0usize;
                let mut max = 0usize;
                for (i, b) in input.iter().enumerate() {
                    if i > 0 && r.barriers.is(*b) { cur = 0; }
                    cur += 1;
                    max = max.max(cur);
                }
                max
            };
            proptest::prop_assume!(longest <= r.window);
            let whole = r.redact(&input).into_owned();
            proptest::prop_assert_eq!(&streamed(r, &input, &sizes), &whole);
            proptest::prop_assert_eq!(&streamed(r, &input, &[1]), &whole);
        }

        /// Whatever the input, no detector match is left in what the stream hands on (the
        /// window rule fails closed), read as written or through the JSON escapes.
        #[test]
        fn stream_leaves_no_match(
            input in big_soup(),
            sizes in proptest::collection::vec(0usize..40, 1..6),
            which in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let r = &STREAMERS[which.index(STREAMERS.len())];
            let out = streamed(r, &input, &sizes);
            let set = r.set.as_ref().unwrap();
            proptest::prop_assert!(!set.is_match(&out), "{:?}", String::from_utf8_lossy(&out));
            if let Some(view) = stream::View::of(&out, r.barriers.sentinel()) {
                proptest::prop_assert!(!set.is_match(&view.text), "{:?}", String::from_utf8_lossy(&view.text));
            }
        }

        /// A secret split across chunks at every possible point is redacted as in the
        /// whole body.
        #[test]
        fn secret_at_every_cut(cut in 0usize..60, pad in 0usize..300) {
            let r = &STREAMERS[0];
            let body = format!(
                "{{\"a\":\"{}\",\"k\":\"x AKIAIOSFODNN7EXAMPLE ghp_{} y\"}}",
                "p".repeat(pad),
                "b".repeat(36)
            );
            let cut = (pad + 12 + cut).min(body.len());
            let mut s = r.stream();
            let mut out = Vec::new();
            s.push(Bytes::copy_from_slice(&body.as_bytes()[..cut]), &mut out);
            s.push(Bytes::copy_from_slice(&body.as_bytes()[cut..]), &mut out);
            s.finish(&mut out);
            proptest::prop_assert_eq!(out.concat(), r.redact(body.as_bytes()).into_owned());
        }
    }

    #[test]
    fn barriers_of_the_built_in_detectors() {
        let r = Redactor::new(&ResultScanConfig::default()).unwrap();
        let all: Vec<u8> = (0u8..=255).filter(|b| r.barriers.is(*b)).collect();
        assert_eq!(all, b"\"");
        // Without the private key detector (which takes any byte but `"`), more.
        let r = Redactor::new(&ResultScanConfig {
            secrets: vec![SecretKind::AwsAccessKey, SecretKind::GcpApiKey],
            ..Default::default()
        })
        .unwrap();
        for b in b"\" ,{}[]:\n\t!" {
            assert!(r.barriers.is(*b), "{}", *b as char);
        }
        for b in b"-_aZ0\xc3" {
            assert!(!r.barriers.is(*b), "{}", *b as char);
        }
        // A pattern that can match anything: no barrier.
        let r = Redactor::new(&ResultScanConfig {
            pii_patterns: vec![NamedPattern {
                name: "any".into(),
                regex: r"(?s)x.{1,8}x".into(),
            }],
            ..Default::default()
        })
        .unwrap();
        assert!((0u8..=255).all(|b| !r.barriers.is(b)));
    }

    #[test]
    fn window_and_anchor_configuration_errors() {
        for regex in ["^abc", "abc$", r"\Aabc", r"abc\z", "(?m)^abc", "(?m)abc$"] {
            let bad = ResultScanConfig {
                pii_patterns: vec![NamedPattern {
                    name: "x".into(),
                    regex: regex.into(),
                }],
                ..Default::default()
            };
            assert_eq!(
                Redactor::new(&bad).unwrap_err().key,
                "result_scan.pii_patterns[0].regex",
                "{regex}"
            );
        }
        // Word boundaries are fine.
        assert!(
            Redactor::new(&ResultScanConfig {
                pii_patterns: vec![NamedPattern {
                    name: "x".into(),
                    regex: r"\bab\B".into(),
                }],
                ..Default::default()
            })
            .is_ok()
        );
        for (window, ok) in [
            (0, false),
            (15, false),
            (265, false),
            (266, true),
            (1 << 20, true),
            ((1 << 20) + 1, false),
        ] {
            let c = ResultScanConfig {
                max_match_bytes: window,
                ..Default::default()
            };
            match Redactor::new(&c) {
                Ok(_) => assert!(ok, "{window}"),
                Err(e) => {
                    assert!(!ok, "{window}");
                    assert_eq!(e.key, "result_scan.max_match_bytes");
                }
            }
        }
        // A bounded PII pattern longer than the window.
        let c = ResultScanConfig {
            secrets: Vec::new(),
            pii_patterns: vec![NamedPattern {
                name: "long".into(),
                regex: "[0-9]{100}".into(),
            }],
            max_match_bytes: 64,
            ..Default::default()
        };
        assert_eq!(
            Redactor::new(&c).unwrap_err().key,
            "result_scan.max_match_bytes"
        );
    }

    #[test]
    fn json_escapes_are_seen_through() {
        let r = r();
        for (input, want) in [
            (
                r#"{"k":"AKIA\u0049OSFODNN7EXAMPLE"}"#,
                r#"{"k":"[REDACTED:aws_access_key]"}"#,
            ),
            (
                r#"{"k":"\u0041\u004b\u0049\u0041IOSFODNN7EXAMPLE"}"#,
                r#"{"k":"[REDACTED:aws_access_key]"}"#,
            ),
            (
                r#"{"k":"x ghp_\u0061bcdefghijklmnopqrstuvwxyz0123456789 y"}"#,
                r#"{"k":"x [REDACTED:github_token] y"}"#,
            ),
            (
                r#"{"m":"bob\u0040example.com"}"#,
                r#"{"m":"[REDACTED:email]"}"#,
            ),
            // An escaped key name holds a secret too.
            (
                r#"{"AKIA\u0049OSFODNN7EXAMPLE":1}"#,
                r#"{"[REDACTED:aws_access_key]":1}"#,
            ),
            // Written and escaped secrets side by side; the other escapes in the segment
            // are decoded with it, the JSON means the same.
            (
                r#"{"k":"AKIAIOSFODNN7EXAMPLE AKIA\u0049OSFODNN7EXAMPLE \u00e9\/"}"#,
                r#"{"k":"[REDACTED:aws_access_key] [REDACTED:aws_access_key] é/"}"#,
            ),
            // Nothing found: the escapes are left as written.
            (
                r#"{"k":"\u0041\/\u00e9\ud83d\ude00"}"#,
                r#"{"k":"\u0041\/\u00e9\ud83d\ude00"}"#,
            ),
            // An escaped backslash before `u0041` is not an escape of `A`.
            (
                r#"{"k":"\\u0041KIAIOSFODNN7EXAMPLE"}"#,
                r#"{"k":"\\u0041KIAIOSFODNN7EXAMPLE"}"#,
            ),
            // Escapes that stand for a boundary (`"`, `\`, control characters) are read as
            // one and written back as they were.
            (
                r#"{"k":"\u0022AKIA\u0049OSFODNN7EXAMPLE\u005c\u0000"}"#,
                r#"{"k":"\u0022[REDACTED:aws_access_key]\u005c\u0000"}"#,
            ),
            (
                r#"{"k":"\u000aAKIA\u0049OSFODNN7EXAMPLE"}"#,
                r#"{"k":"\u000a[REDACTED:aws_access_key]"}"#,
            ),
            // A secret at the start of a line of a JSON string: `\n` is not a word
            // character before it (the bytes as written hold `nA`, no word boundary).
            (
                r#"{"log":"line 1\nAKIAIOSFODNN7EXAMPLE\n\tghp_abcdefghijklmnopqrstuvwxyz0123456789\r\nok"}"#,
                r#"{"log":"line 1\n[REDACTED:aws_access_key]\n\t[REDACTED:github_token]\r\nok"}"#,
            ),
            (
                r#"["a\\AKIAIOSFODNN7EXAMPLE","\"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig\""]"#,
                r#"["a\\[REDACTED:aws_access_key]","\"[REDACTED:jwt]\""]"#,
            ),
        ] {
            let out = r.redact_escaped(input.as_bytes()).into_owned();
            assert_eq!(String::from_utf8_lossy(&out), want, "{input}");
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let _ = v;
        }
        // Known limit: control-character escapes are not decoded (`\t` is not whitespace
        // to the bearer detector).
        let tab = r#"{"h":"Bearer\tabcdefghijklmnopqrstuvwxyz"}"#;
        assert_eq!(r.redact_escaped(tab.as_bytes()).as_ref(), tab.as_bytes());
    }

    #[test]
    fn long_segments_fail_closed() {
        let r = arc(ResultScanConfig {
            max_match_bytes: 266,
            ..Default::default()
        });
        // A clean long string passes whole; its pieces are sent as they come.
        let clean = format!("{{\"t\":\"{}\"}}", "lorem ipsum ".repeat(200));
        assert_eq!(streamed(&r, clean.as_bytes(), &[100]), clean.as_bytes());
        // A secret across a cut: the rest of the string is withheld.
        for at in [250usize, 260, 266, 270] {
            let text = format!(
                "{}AKIAIOSFODNN7EXAMPLE{}",
                "a ".repeat(at / 2),
                " b".repeat(400)
            );
            let body = format!("{{\"t\":\"{text}\",\"u\":\"after\"}}");
            let out = String::from_utf8(streamed(&r, body.as_bytes(), &[33])).unwrap();
            assert!(
                !out.contains("AKIA") && !out.contains("IOSFODNN7EXAMPLE"),
                "{at}: {out}"
            );
            assert!(out.ends_with(",\"u\":\"after\"}"), "{out}");
        }
        // A bearer token longer than the window is withheld whole, not sent in part.
        let token = "x".repeat(2000);
        let body = format!("{{\"h\":\"Bearer {token}\",\"z\":1}}");
        let out = String::from_utf8(streamed(&r, body.as_bytes(), &[64])).unwrap();
        assert!(!out.contains("xxxxxxxxxxxxxxxx"), "{out}");
        assert_eq!(out, "{\"h\":\"[REDACTED:over_window]\",\"z\":1}");
        // A private key longer than the window.
        let pem = format!(
            "-----BEGIN RSA PRIVATE KEY-----\\n{}\\n-----END RSA PRIVATE KEY-----",
            "MIIEpAIBAAKCAQEA7abc+/=".repeat(100)
        );
        let body = format!("{{\"k\":\"{pem}\"}}");
        let out = String::from_utf8(streamed(&r, body.as_bytes(), &[1000])).unwrap();
        assert!(!out.contains("MIIEpAIB"), "{out}");
        assert_eq!(out, "{\"k\":\"[REDACTED:over_window]\"}");
    }

    #[test]
    fn sse_boundaries() {
        assert_eq!(last_event_end(b"data: a\n\ndata: b", 0), Some(9));
        assert_eq!(last_event_end(b"data: a\r\n\r\nx", 0), Some(11));
        assert_eq!(last_event_end(b"data: a\n", 0), None);
        assert_eq!(last_event_end(b"a\n\nb\n\nc", 0), Some(6));
    }

    #[test]
    fn config_errors() {
        let bad = ResultScanConfig {
            pii_patterns: vec![NamedPattern {
                name: "x".into(),
                regex: "(".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            Redactor::new(&bad).unwrap_err().key,
            "result_scan.pii_patterns[0].regex"
        );
        let bad = ResultScanConfig {
            pii_patterns: vec![NamedPattern {
                name: "has space".into(),
                regex: "x".into(),
            }],
            ..Default::default()
        };
        assert!(Redactor::new(&bad).is_err());
    }
}
