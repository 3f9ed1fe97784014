//! [`ResultScanLayer`]: redacts secrets and configured PII patterns from responses before
//! they reach the client.
//!
//! - `application/json` bodies are collected before the response head is passed on
//!   (bounded by `max_json_bytes`), redacted, and sent in one piece with their exact new
//!   `Content-Length`. A JSON body over the bound, or one whose upstream body fails, is
//!   replaced by a 502 with a JSON-RPC error (reason `upstream_error`): never passed on
//!   unscanned.
//! - `text/event-stream` bodies are redacted **event by event** as they stream: only the
//!   current incomplete event is buffered (bounded by `max_event_bytes`), so a secret split
//!   across chunks is still found, and nothing waits for the end of the stream. An event
//!   over its bound ends the stream with an error (fail closed). Their `Content-Length` is
//!   removed (the length may change).
//! - Other content types pass through untouched.
//!
//! Scanning needs identity-encoded bodies: the layer removes `Accept-Encoding` from the
//! request (option `strip_accept_encoding`, on by default), and passes a response that is
//! still compressed through unscanned, with a warning.
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

use mcp_core::{Rejection, RejectionReason};

use crate::config::ConfigError;

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
    /// Largest JSON body buffered (default 16 MiB).
    pub max_json_bytes: usize,
    /// Remove `Accept-Encoding` from requests so that responses come uncompressed.
    pub strip_accept_encoding: bool,
}

impl Default for ResultScanConfig {
    fn default() -> Self {
        Self {
            secrets: SecretKind::ALL.to_vec(),
            pii_patterns: Vec::new(),
            max_event_bytes: 1024 * 1024,
            max_json_bytes: 16 * 1024 * 1024,
            strip_accept_encoding: true,
        }
    }
}

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
        for k in &config.secrets {
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
            each.push((p.name.clone(), re));
        }
        if config.max_event_bytes == 0 {
            return Err(ConfigError::invalid(
                "result_scan.max_event_bytes",
                "must be greater than 0",
            ));
        }
        if config.max_json_bytes == 0 {
            return Err(ConfigError::invalid(
                "result_scan.max_json_bytes",
                "must be greater than 0",
            ));
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
    max_json: usize,
    strip_accept_encoding: bool,
}

impl ResultScanLayer {
    /// Builds the layer, compiling the detectors.
    pub fn new(config: &ResultScanConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            redactor: Arc::new(Redactor::new(config)?),
            max_event: config.max_event_bytes,
            max_json: config.max_json_bytes,
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
        ScanFuture {
            future: self.inner.call(req),
            layer: self.layer.clone(),
            collect: None,
        }
    }
}

pin_project! {
    /// Response future of [`ResultScan`].
    ///
    /// A JSON response is collected here, before its head is handed on, so that the
    /// redacted body goes out with its exact `Content-Length` in one piece; an SSE
    /// response is handed on at once and redacted as it streams.
    pub struct ScanFuture<F, B> {
        #[pin]
        future: F,
        layer: ResultScanLayer,
        collect: Option<Collect<B>>,
    }
}

/// A JSON response being collected by [`ScanFuture`].
struct Collect<B> {
    parts: http::response::Parts,
    body: Pin<Box<B>>,
    /// The first data frame, kept as it came (no copy) until a second one arrives.
    first: Option<Bytes>,
    /// The frames joined, from the second data frame on.
    buf: Option<BytesMut>,
    /// Bytes received so far.
    len: usize,
    trailers: Option<HeaderMap>,
}

impl<B> Collect<B> {
    /// Adds a data frame; `len` has been checked against the bound already.
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if let Some(buf) = self.buf.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(first) = self.first.take() {
            let mut buf = BytesMut::with_capacity(first.len() + data.len());
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&data);
            self.buf = Some(buf);
        } else {
            self.first = Some(data);
        }
    }

    fn take_body(&mut self) -> Bytes {
        match (self.buf.take(), self.first.take()) {
            (Some(buf), _) => buf.freeze(),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
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

/// The answer when an upstream JSON result cannot be scanned (over the bound, or its
/// body failed): a 502 with a JSON-RPC error, never the unscanned bytes.
fn unscannable<B>(message: &'static str) -> Response<ScanBody<B>> {
    let resp: Response<Bytes> = Rejection::new(RejectionReason::UpstreamError)
        .with_message(message)
        .into_response();
    resp.map(|b| ScanBody::ready(b, None))
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
            let mode = match media_type(&parts.headers) {
                _ if encoded => {
                    tracing::warn!("mcp-sanitize: compressed response passed through unscanned");
                    Mode::Pass
                }
                Media::EventStream => Mode::Sse,
                Media::Json => Mode::Ready,
                Media::Other => Mode::Pass,
            };
            if mode == Mode::Pass {
                return Poll::Ready(Ok(Response::from_parts(parts, ScanBody::pass(body))));
            }
            // The length may change; a JSON body gets its new exact length from the
            // body's size hint.
            parts.headers.remove(CONTENT_LENGTH);
            if mode == Mode::Sse {
                let body = ScanBody::sse(body, this.layer.redactor.clone(), this.layer.max_event);
                return Poll::Ready(Ok(Response::from_parts(parts, body)));
            }
            if body
                .size_hint()
                .lower()
                .try_into()
                .map_or(true, |n: usize| n > this.layer.max_json)
            {
                return Poll::Ready(Ok(unscannable(
                    "upstream result larger than the scanning limit",
                )));
            }
            *this.collect = Some(Collect {
                parts,
                body: Box::pin(body),
                first: None,
                buf: None,
                len: 0,
                trailers: None,
            });
        }
        let Some(c) = this.collect.as_mut() else {
            return Poll::Pending;
        };
        loop {
            match c.body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        match c.len.checked_add(data.len()) {
                            Some(n) if n <= this.layer.max_json => c.len = n,
                            _ => {
                                *this.collect = None;
                                return Poll::Ready(Ok(unscannable(
                                    "upstream result larger than the scanning limit",
                                )));
                            }
                        }
                        c.push(data);
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            c.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    tracing::warn!(error = %e, "mcp-sanitize: upstream JSON body failed");
                    *this.collect = None;
                    return Poll::Ready(Ok(unscannable("upstream result body failed")));
                }
                Poll::Ready(None) => break,
            }
        }
        let Some(mut c) = this.collect.take() else {
            return Poll::Pending;
        };
        let raw = c.take_body();
        let out = match this.layer.redactor.redact(&raw) {
            Cow::Borrowed(_) => raw,
            Cow::Owned(v) => Bytes::from(v),
        };
        Poll::Ready(Ok(Response::from_parts(
            c.parts,
            ScanBody::ready(out, c.trailers),
        )))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not scanned: passed through as it comes.
    Pass,
    /// Redacted event by event.
    Sse,
    /// Collected and redacted already: `buf` holds the whole body.
    Ready,
}

/// The response body was over a scanning bound, so it was cut rather than passed unscanned.
#[derive(Debug, thiserror::Error)]
#[error("response {what} larger than {limit} bytes: not scanned, stream ended")]
pub struct ScanLimitExceeded {
    what: &'static str,
    limit: usize,
}

pin_project! {
    /// A response body after [`ResultScanLayer`]: passed through, redacted event by event
    /// as it streams, or (JSON) already collected and redacted (see the module docs).
    pub struct ScanBody<B> {
        #[pin]
        inner: Option<B>,
        mode: Mode,
        redactor: Option<Arc<Redactor>>,
        // The whole body (JSON), collected and redacted already.
        ready: Bytes,
        buf: BytesMut,
        searched: usize,
        limit: usize,
        trailers: Option<HeaderMap>,
        done: bool,
    }
}

impl<B> ScanBody<B> {
    fn pass(inner: B) -> Self {
        Self {
            inner: Some(inner),
            mode: Mode::Pass,
            redactor: None,
            ready: Bytes::new(),
            buf: BytesMut::new(),
            searched: 0,
            limit: 0,
            trailers: None,
            done: false,
        }
    }

    fn sse(inner: B, redactor: Arc<Redactor>, limit: usize) -> Self {
        Self {
            inner: Some(inner),
            mode: Mode::Sse,
            redactor: Some(redactor),
            ready: Bytes::new(),
            buf: BytesMut::new(),
            searched: 0,
            limit,
            trailers: None,
            done: false,
        }
    }

    fn ready(body: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            inner: None,
            mode: Mode::Ready,
            redactor: None,
            ready: body,
            buf: BytesMut::new(),
            searched: 0,
            limit: 0,
            trailers,
            done: true,
        }
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
            match redactor.redact(seg) {
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
    match redactor.redact(seg) {
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

/// The end of an SSE stream: the last (incomplete) event redacted, then the trailers.
fn finish_sse(
    buf: &mut BytesMut,
    trailers: &mut Option<HeaderMap>,
    redactor: &Redactor,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if !buf.is_empty() {
        let rest = buf.split().freeze();
        return Poll::Ready(Some(Ok(Frame::data(redact_events(redactor, rest)))));
    }
    Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
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
        let this = self.project();
        let Some(mut inner) = this.inner.as_pin_mut().filter(|_| !*this.done) else {
            // Collected and redacted already (JSON), or the SSE stream ended (its last
            // event was redacted when it ended): what is left, then the trailers.
            if !this.ready.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(std::mem::take(this.ready)))));
            }
            if !this.buf.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
            }
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        };
        if *this.mode == Mode::Pass {
            return match inner.poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
        let Some(redactor) = this.redactor.as_ref() else {
            return Poll::Ready(None);
        };
        loop {
            match inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    *this.done = true;
                    return finish_sse(this.buf, this.trailers, redactor);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        let from = *this.searched;
                        match last_event_end(this.buf, from) {
                            Some(end) => {
                                let events = this.buf.split_to(end).freeze();
                                *this.searched = 0;
                                let out = redact_events(redactor, events);
                                if this.buf.len() > *this.limit {
                                    return Poll::Ready(Some(Err(Box::new(ScanLimitExceeded {
                                        what: "event",
                                        limit: *this.limit,
                                    }))));
                                }
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            None => *this.searched = this.buf.len(),
                        }
                        if this.buf.len() > *this.limit {
                            return Poll::Ready(Some(Err(Box::new(ScanLimitExceeded {
                                what: "event",
                                limit: *this.limit,
                            }))));
                        }
                    }
                    Err(frame) => {
                        // Trailers: flush what is buffered first, then send them.
                        if let Ok(t) = frame.into_trailers() {
                            *this.trailers = Some(t);
                        }
                        *this.done = true;
                        return finish_sse(this.buf, this.trailers, redactor);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match (self.mode, &self.inner) {
            (Mode::Pass, Some(inner)) => inner.is_end_stream(),
            _ => {
                self.done && self.ready.is_empty() && self.buf.is_empty() && self.trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (self.mode, &self.inner) {
            (Mode::Pass, Some(inner)) => inner.size_hint(),
            (Mode::Ready, _) if self.trailers.is_none() => {
                SizeHint::with_exact((self.ready.len() + self.buf.len()) as u64)
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
