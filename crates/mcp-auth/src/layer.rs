//! [`AuthLayer`]: authenticate every request with one or more [`Authenticator`]s.
//!
//! - The authenticators are tried in order; the first that authenticates wins. A
//!   credential that fails one authenticator is still offered to the next (a bearer
//!   token that is not a static token may be a JWT).
//! - Success: the [`Principal`] goes into the request extensions (for the handler, the
//!   rate limiter, the authorization policy) and into the response extensions (for the
//!   audit layer outside).
//! - No credential, or none that verified: 401 with one `WWW-Authenticate` challenge
//!   per configured scheme: `Bearer realm=".."` (RFC 6750, with `error="invalid_token"`
//!   only when a token was presented, and `scope` / `resource_metadata` when configured,
//!   as MCP authorization asks), `Basic realm="..", charset="UTF-8"` (RFC 7617), and
//!   `ApiKey realm="..", header=".."` for API keys.
//! - Authenticated without a required scope: 403 with `error="insufficient_scope"` and
//!   `scope=".."` (RFC 6750 §3.1).
//! - When only TLS client certificates are configured there is no HTTP challenge to
//!   send, so a refusal is 403 (reason still `auth_failed`).
//! - Credentials in the query string (`?access_token=`, `?api_key=`, ...) are refused with
//!   400 `invalid_request`, never read: URLs end up in logs, histories and Referer
//!   headers.
//!
//! Every refusal is a [`Rejection`]: a JSON-RPC error body and a [`mcp_core::Denial`] in
//! the response extensions whose detail says why (never the credential).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderName;
use http::header::WWW_AUTHENTICATE;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use mcp_core::headers::default_credential_headers;
use mcp_core::{AuthMethod, Principal, Rejection, RejectionReason};
use tower_layer::Layer;
use tower_service::Service;

use crate::api_key::{ApiKeyAuthenticator, CredentialEntry};
use crate::authenticator::{AuthFuture, Authenticator, Failure, FailureKind, Outcome, Scheme};
use crate::credentials::{DEFAULT_REFUSED_QUERY_PARAMS, refused_query_param};
use crate::error::ConfigError;
use crate::future::ResponseFuture;

/// The default realm.
pub const DEFAULT_REALM: &str = "mcp";

struct State {
    authenticators: Vec<Arc<dyn Authenticator>>,
    schemes: Vec<Scheme>,
    realm: String,
    required_scopes: Vec<String>,
    challenge_scope: Option<String>,
    resource_metadata: Option<String>,
    refused_query: Vec<String>,
    credential_headers: Vec<HeaderName>,
    anonymous: bool,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("authenticators", &self.authenticators)
            .field("realm", &self.realm)
            .field("required_scopes", &self.required_scopes)
            .field("challenge_scope", &self.challenge_scope)
            .field("resource_metadata", &self.resource_metadata)
            .field("refused_query", &self.refused_query)
            .field("credential_headers", &self.credential_headers)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// Authenticates requests (see the [module documentation](self)).
///
/// ```
/// use axum::{Router, routing::post};
/// use mcp_auth::{AuthLayer, CredentialEntry};
/// use mcp_core::Principal;
///
/// async fn whoami(p: Principal) -> String { p.id().to_owned() }
///
/// let app: Router = Router::new()
///     .route("/mcp", post(whoami))
///     .layer(AuthLayer::api_keys([CredentialEntry::new("ci", "Abc123!@#Xyz789!@#")]).unwrap());
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<State>,
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state.fmt(f)
    }
}

/// Builder of [`AuthLayer`].
#[derive(Debug)]
pub struct AuthLayerBuilder {
    authenticators: Vec<Arc<dyn Authenticator>>,
    realm: String,
    required_scopes: Vec<String>,
    challenge_scopes: Option<Vec<String>>,
    resource_metadata: Option<String>,
    refused_query: Vec<String>,
    credential_headers: Vec<HeaderName>,
}

impl Default for AuthLayerBuilder {
    fn default() -> Self {
        Self {
            authenticators: Vec::new(),
            realm: DEFAULT_REALM.to_owned(),
            required_scopes: Vec::new(),
            challenge_scopes: None,
            resource_metadata: None,
            refused_query: DEFAULT_REFUSED_QUERY_PARAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            credential_headers: Vec::new(),
        }
    }
}

/// Whether `s` can go in a quoted-string of a header value as is: visible ASCII or
/// space, no quote, no backslash.
fn quoted_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

impl AuthLayerBuilder {
    /// Adds an authenticator (tried after those added before).
    pub fn authenticator(mut self, a: impl Authenticator) -> Self {
        self.authenticators.push(Arc::new(a));
        self
    }

    /// Adds a shared authenticator.
    pub fn authenticator_arc(mut self, a: Arc<dyn Authenticator>) -> Self {
        self.authenticators.push(a);
        self
    }

    /// The realm of the challenges (default `mcp`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// Scopes every principal must hold (403 `insufficient_scope` otherwise).
    pub fn require_scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.required_scopes
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// The `scope` parameter of the 401 Bearer challenge (default: the required scopes).
    pub fn challenge_scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.challenge_scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// The URL of the OAuth Protected Resource Metadata (RFC 9728), sent as
    /// `resource_metadata` in the Bearer challenges.
    /// [`ProtectedResourceMetadata::metadata_url`](crate::ProtectedResourceMetadata::metadata_url)
    /// gives it.
    pub fn resource_metadata(mut self, url: impl Into<String>) -> Self {
        self.resource_metadata = Some(url.into());
        self
    }

    /// Also refuses these query parameter names (case-insensitive).
    pub fn refuse_query_params<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.refused_query.extend(names.into_iter().map(Into::into));
        self
    }

    /// Also treats these headers as carrying credentials (a header a custom
    /// authenticator or the upstream reads): they join
    /// [`AuthLayer::credential_headers`].
    pub fn credential_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.credential_headers.extend(names);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<AuthLayer, ConfigError> {
        if self.authenticators.is_empty() {
            return Err(ConfigError::invalid(
                "auth.mode",
                "at least one authenticator is required (use AuthLayer::disabled() to switch authentication off)",
            ));
        }
        if self.realm.is_empty() || !quoted_ok(&self.realm) {
            return Err(ConfigError::invalid(
                "auth.realm",
                "must be non-empty printable ASCII, without quotes or backslashes",
            ));
        }
        let scope_ok = |s: &String| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        };
        if !self.required_scopes.iter().all(scope_ok)
            || !self
                .challenge_scopes
                .as_ref()
                .is_none_or(|c| c.iter().all(scope_ok))
        {
            return Err(ConfigError::invalid(
                "auth.requiredScopes",
                "scopes must be non-empty RFC 6749 scope tokens (visible ASCII, no space, quote or backslash)",
            ));
        }
        if let Some(u) = &self.resource_metadata
            && (url::Url::parse(u).is_err() || !quoted_ok(u))
        {
            return Err(ConfigError::invalid(
                "auth.resourceMetadata",
                "must be an absolute URL",
            ));
        }
        let mut schemes = Vec::new();
        for a in &self.authenticators {
            let s = a.scheme();
            if s != Scheme::ClientCertificate && !schemes.contains(&s) {
                schemes.push(s);
            }
        }
        let credential_headers = credential_list(
            self.authenticators
                .iter()
                .flat_map(|a| a.credential_headers())
                .chain(self.credential_headers),
        );
        let refused = refused_list(self.refused_query, &credential_headers);
        let challenge = self
            .challenge_scopes
            .unwrap_or_else(|| self.required_scopes.clone());
        Ok(AuthLayer {
            state: Arc::new(State {
                authenticators: self.authenticators,
                schemes,
                realm: self.realm,
                required_scopes: self.required_scopes,
                challenge_scope: (!challenge.is_empty()).then(|| challenge.join(" ")),
                resource_metadata: self.resource_metadata,
                refused_query: refused,
                credential_headers,
                anonymous: false,
            }),
        })
    }
}

/// The default credential headers plus `extra`, lower case, each once.
fn credential_list(extra: impl IntoIterator<Item = HeaderName>) -> Vec<HeaderName> {
    let mut out = default_credential_headers();
    for h in extra {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// The refused query parameters plus every credential header name: a credential is
/// refused in the query under its header's name too (`?x-mcp-key=`).
fn refused_list(mut refused: Vec<String>, credential_headers: &[HeaderName]) -> Vec<String> {
    for h in credential_headers {
        if !refused.iter().any(|r| r.eq_ignore_ascii_case(h.as_str())) {
            refused.push(h.as_str().to_owned());
        }
    }
    refused
}

impl AuthLayer {
    /// A builder.
    pub fn builder() -> AuthLayerBuilder {
        AuthLayerBuilder::default()
    }

    /// API keys in `X-API-Key`.
    pub fn api_keys(keys: impl IntoIterator<Item = CredentialEntry>) -> Result<Self, ConfigError> {
        Self::builder()
            .authenticator(ApiKeyAuthenticator::builder().keys(keys).build()?)
            .build()
    }

    /// Static bearer tokens.
    pub fn bearer_tokens(
        tokens: impl IntoIterator<Item = CredentialEntry>,
    ) -> Result<Self, ConfigError> {
        Self::builder()
            .authenticator(
                crate::BearerTokenAuthenticator::builder()
                    .tokens(tokens)
                    .build()?,
            )
            .build()
    }

    /// One authenticator.
    pub fn new(a: impl Authenticator) -> Self {
        let scheme = a.scheme();
        let schemes = if scheme == Scheme::ClientCertificate {
            Vec::new()
        } else {
            vec![scheme]
        };
        let credential_headers = credential_list(a.credential_headers());
        let refused = refused_list(
            DEFAULT_REFUSED_QUERY_PARAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            &credential_headers,
        );
        Self {
            state: Arc::new(State {
                authenticators: vec![Arc::new(a)],
                schemes,
                realm: DEFAULT_REALM.to_owned(),
                required_scopes: Vec::new(),
                challenge_scope: None,
                resource_metadata: None,
                refused_query: refused,
                credential_headers,
                anonymous: false,
            }),
        }
    }

    /// Every request header that carries a credential, lower case, each once: the
    /// defaults ([`mcp_core::headers::DEFAULT_CREDENTIAL_HEADERS`]: `authorization`,
    /// `proxy-authorization`, `cookie`, `x-api-key`, `x-auth-token`), the header of each
    /// authenticator ([`Authenticator::credential_headers`]: a configured API key
    /// header, say) and those given to [`AuthLayerBuilder::credential_headers`].
    ///
    /// This one list is meant to drive everything that must treat a credential
    /// specially: a proxy strips these headers before forwarding, an audit trail masks
    /// them, a trace layer marks them sensitive. The layer itself also refuses each of
    /// these names as a query parameter.
    ///
    /// ```
    /// use mcp_auth::{AuthLayer, ApiKeyAuthenticator, CredentialEntry};
    /// let layer = AuthLayer::new(
    ///     ApiKeyAuthenticator::builder()
    ///         .header("X-MCP-Key")
    ///         .key(CredentialEntry::new("ci", "Abc123!@#Xyz789!@#"))
    ///         .build()
    ///         .unwrap(),
    /// );
    /// let names: Vec<&str> = layer.credential_headers().iter().map(|h| h.as_str()).collect();
    /// assert!(names.contains(&"x-mcp-key") && names.contains(&"authorization"));
    /// ```
    pub fn credential_headers(&self) -> &[HeaderName] {
        &self.state.credential_headers
    }

    /// Authentication switched off: every request gets [`Principal::anonymous`] (so
    /// later layers still find a principal). Credentials in the query are still refused
    /// (the defaults, as [`QueryCredentialsLayer::new`](crate::QueryCredentialsLayer::new)
    /// does). Logs a warning.
    pub fn disabled() -> Self {
        tracing::warn!("authentication is disabled: every request is anonymous");
        Self {
            state: Arc::new(State {
                authenticators: Vec::new(),
                schemes: Vec::new(),
                realm: DEFAULT_REALM.to_owned(),
                required_scopes: Vec::new(),
                challenge_scope: None,
                resource_metadata: None,
                refused_query: crate::QueryCredentialsLayer::new().refused().to_vec(),
                credential_headers: default_credential_headers(),
                anonymous: true,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    state: Arc<State>,
}

impl<S: fmt::Debug> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .field("config", &self.state)
            .finish()
    }
}

enum Decision {
    Allow(Principal),
    Reject(Rejection, Option<Principal>),
    Wait(usize, Vec<Failure>),
}

fn escape_free(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

impl State {
    fn decide_now(&self, parts: &Parts) -> Decision {
        if let Some(q) = parts.uri.query()
            && let Some(name) = refused_query_param(q, &self.refused_query)
        {
            return Decision::Reject(self.query_rejection(name), None);
        }
        if self.anonymous {
            return Decision::Allow(Principal::anonymous());
        }
        let mut failures = Vec::new();
        for (i, a) in self.authenticators.iter().enumerate() {
            match a.authenticate(parts) {
                AuthFuture::Ready(Outcome::NoCredential) => {}
                AuthFuture::Ready(Outcome::Authenticated(p)) => return self.authorized(p),
                AuthFuture::Ready(Outcome::Failed(f)) => failures.push(f),
                AuthFuture::Pending(_) => return Decision::Wait(i, failures),
            }
        }
        Decision::Reject(self.unauthorized(&failures), None)
    }

    async fn decide_later(
        &self,
        parts: &Parts,
        start: usize,
        mut failures: Vec<Failure>,
    ) -> Decision {
        for a in &self.authenticators[start..] {
            match a.authenticate(parts).await {
                Outcome::NoCredential => {}
                Outcome::Authenticated(p) => return self.authorized(p),
                Outcome::Failed(f) => failures.push(f),
            }
        }
        Decision::Reject(self.unauthorized(&failures), None)
    }

    fn authorized(&self, p: Principal) -> Decision {
        let missing: Vec<&str> = self
            .required_scopes
            .iter()
            .filter(|s| !p.has_scope(s))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Decision::Allow(p);
        }
        let scheme = match p.method() {
            AuthMethod::ApiKey => self
                .schemes
                .iter()
                .find(|s| matches!(s, Scheme::ApiKey { .. }))
                .cloned()
                .unwrap_or(Scheme::Bearer),
            AuthMethod::Basic => Scheme::Basic,
            _ => Scheme::Bearer,
        };
        let scope = self.required_scopes.join(" ");
        let challenge = self.challenge(&scheme, Some("insufficient_scope"), Some(&scope));
        let rejection = Rejection::new(RejectionReason::InsufficientScope)
            .with_detail(format!("missing scope {}", missing.join(" ")))
            .with_header(WWW_AUTHENTICATE, challenge);
        Decision::Reject(rejection, Some(p))
    }

    fn challenge(&self, scheme: &Scheme, error: Option<&str>, scope: Option<&str>) -> String {
        let realm = &self.realm;
        match scheme {
            Scheme::Bearer => {
                let mut c = format!("Bearer realm=\"{realm}\"");
                if let Some(e) = error {
                    c.push_str(&format!(", error=\"{e}\""));
                }
                if let Some(s) = scope.or(self.challenge_scope.as_deref()) {
                    c.push_str(&format!(", scope=\"{s}\""));
                }
                if let Some(u) = &self.resource_metadata {
                    c.push_str(&format!(", resource_metadata=\"{u}\""));
                }
                c
            }
            Scheme::Basic => {
                let mut c = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
                if let (Some(e), Some(s)) = (error, scope) {
                    c.push_str(&format!(", error=\"{e}\", scope=\"{s}\""));
                }
                c
            }
            Scheme::ApiKey { header } => {
                let mut c = format!(
                    "ApiKey realm=\"{realm}\", header=\"{}\"",
                    escape_free(header)
                );
                if let Some(e) = error {
                    c.push_str(&format!(", error=\"{e}\""));
                }
                if let Some(s) = scope {
                    c.push_str(&format!(", scope=\"{s}\""));
                }
                c
            }
            Scheme::ClientCertificate => String::new(),
        }
    }

    fn unauthorized(&self, failures: &[Failure]) -> Rejection {
        if !failures.is_empty() && failures.iter().all(|f| f.kind == FailureKind::Unavailable) {
            return Rejection::new(RejectionReason::Unavailable)
                .with_detail(join_details(failures))
                .with_header(http::header::RETRY_AFTER, "5");
        }
        let all_malformed =
            !failures.is_empty() && failures.iter().all(|f| f.kind == FailureKind::Malformed);
        let mut r = if failures.is_empty() {
            Rejection::new(RejectionReason::AuthFailed).with_detail("no credentials")
        } else if all_malformed {
            Rejection::new(RejectionReason::AuthFailed)
                .with_status(StatusCode::BAD_REQUEST)
                .with_message("Malformed credentials")
                .with_detail(join_details(failures))
        } else {
            Rejection::new(RejectionReason::AuthFailed)
                .with_message("Invalid credentials")
                .with_detail(join_details(failures))
        };
        if self.schemes.is_empty() {
            // Only TLS client certificates are configured: there is no HTTP challenge to
            // send, and a 401 without WWW-Authenticate would break RFC 9110 section 15.5.2.
            r = r.with_status(StatusCode::FORBIDDEN);
        }
        for scheme in &self.schemes {
            let presented = failures.iter().any(|f| &f.scheme == scheme);
            let error = match scheme {
                Scheme::Bearer if presented && all_malformed => Some("invalid_request"),
                Scheme::Bearer if presented => Some("invalid_token"),
                Scheme::ApiKey { .. } if presented => Some("invalid_key"),
                _ => None,
            };
            r = r.with_header(WWW_AUTHENTICATE, self.challenge(scheme, error, None));
        }
        r
    }

    fn query_rejection(&self, name: &str) -> Rejection {
        let mut r = crate::query::query_rejection(name);
        for scheme in &self.schemes {
            let mut c = self.challenge(scheme, None, None);
            if *scheme == Scheme::Bearer {
                c = self.challenge(scheme, Some("invalid_request"), None);
                c.push_str(", error_description=\"credentials in the URL query are not accepted\"");
            }
            r = r.with_header(WWW_AUTHENTICATE, c);
        }
        r
    }
}

fn join_details(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(|f| f.detail.as_ref())
        .collect::<Vec<_>>()
        .join("; ")
}

fn reject<B: From<Bytes>>(rejection: Rejection, principal: Option<Principal>) -> Response<B> {
    let mut response = rejection.into_response::<B>();
    if let Some(p) = principal {
        response.extensions_mut().insert(p);
    }
    response
}

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        match self.state.decide_now(&parts) {
            Decision::Allow(p) => {
                mcp_core::RequestFacts::note_principal(&parts.extensions, &p);
                parts.extensions.insert(p.clone());
                let fut = self.inner.call(Request::from_parts(parts, body));
                ResponseFuture::inner(fut, Some(p))
            }
            Decision::Reject(r, p) => ResponseFuture::ready(reject(r, p)),
            Decision::Wait(start, failures) => {
                // Take the service that was driven to readiness, leave a clone in its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let state = Arc::clone(&self.state);
                ResponseFuture::boxed(Box::pin(async move {
                    let decision = state.decide_later(&parts, start, failures).await;
                    match decision {
                        Decision::Allow(p) => {
                            mcp_core::RequestFacts::note_principal(&parts.extensions, &p);
                            parts.extensions.insert(p.clone());
                            let mut response = inner.call(Request::from_parts(parts, body)).await?;
                            response.extensions_mut().insert(p);
                            Ok(response)
                        }
                        Decision::Reject(r, p) => Ok(reject(r, p)),
                        Decision::Wait(..) => {
                            Ok(reject(Rejection::new(RejectionReason::Internal), None))
                        }
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BearerTokenAuthenticator;

    fn bearer() -> BearerTokenAuthenticator {
        BearerTokenAuthenticator::builder()
            .token(CredentialEntry::new(
                "t",
                "q8Jx2mV7pL0sN4tR9wY3zB6cF1hK5dG8aE2uI7oP0",
            ))
            .build()
            .unwrap()
    }

    #[test]
    fn realm_and_scopes_must_fit_in_a_header() {
        for realm in ["", "a\"b", "a\\b", "mçp", "a\nb"] {
            let e = AuthLayer::builder()
                .authenticator(bearer())
                .realm(realm)
                .build()
                .unwrap_err();
            assert_eq!(e.key(), "auth.realm", "{realm:?}");
        }
        let e = AuthLayer::builder()
            .authenticator(bearer())
            .require_scopes(["a b"])
            .build()
            .unwrap_err();
        assert_eq!(e.key(), "auth.requiredScopes");
        let e = AuthLayer::builder()
            .authenticator(bearer())
            .resource_metadata("not a url")
            .build()
            .unwrap_err();
        assert_eq!(e.key(), "auth.resourceMetadata");
        assert_eq!(AuthLayer::builder().build().unwrap_err().key(), "auth.mode");
        AuthLayer::builder()
            .authenticator(bearer())
            .realm("My MCP server")
            .build()
            .unwrap();
    }

    #[tokio::test]
    async fn an_accepted_principal_is_noted_in_the_request_facts() {
        use tower::ServiceExt;
        let svc = AuthLayer::builder()
            .authenticator(bearer())
            .build()
            .unwrap()
            .layer(tower::service_fn(|_req: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Bytes::new()))
            }));
        let facts = mcp_core::RequestFacts::new();
        let mut req = Request::builder()
            .header(
                "authorization",
                "Bearer q8Jx2mV7pL0sN4tR9wY3zB6cF1hK5dG8aE2uI7oP0",
            )
            .body(())
            .unwrap();
        req.extensions_mut().insert(facts.clone());
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(facts.principal().unwrap().id(), "t");
        // A refused request notes nothing.
        let facts = mcp_core::RequestFacts::new();
        let mut req = Request::builder()
            .header("authorization", "Bearer wrong-token-wrong-token-wrong")
            .body(())
            .unwrap();
        req.extensions_mut().insert(facts.clone());
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(facts.principal().is_none());
    }
}
