//! The [`Authenticator`] trait: one way of proving who the caller is.
//!
//! [`AuthLayer`](crate::AuthLayer) tries its authenticators in order. Each looks at the
//! request head and answers [`Outcome::NoCredential`] (nothing of its kind is there: try
//! the next), [`Outcome::Authenticated`], or [`Outcome::Failed`] (a credential of its kind
//! was presented and did not verify; the layer still tries the others, and refuses with
//! a 401 if none succeeds).
//!
//! Most authenticators answer at once ([`AuthFuture::Ready`], no allocation); those that
//! must wait (a JWKS fetch, an Argon2 verification on the blocking pool) answer
//! [`AuthFuture::Pending`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::request::Parts;
use mcp_core::Principal;

/// The HTTP authentication scheme an authenticator answers to, used to build the
/// `WWW-Authenticate` challenges of a 401.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `Bearer` (RFC 6750): static tokens and JWTs.
    Bearer,
    /// `Basic` (RFC 7617).
    Basic,
    /// An API key in a header: challenged as `ApiKey realm="..", header="X-API-Key"`
    /// (there is no registered scheme; this one names the header to use).
    ApiKey {
        /// The header name, as configured.
        header: String,
    },
    /// A TLS client certificate: no HTTP challenge (the proof happens in the handshake).
    ClientCertificate,
}

/// Why a presented credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The credential is syntactically broken (RFC 6750 `invalid_request`, 400).
    Malformed,
    /// The credential did not verify, is unknown, expired or revoked
    /// (RFC 6750 `invalid_token`, 401).
    Invalid,
    /// The credential cannot be checked now: the key source is unreachable and no keys are
    /// known (503).
    Unavailable,
}

/// A presented credential that was refused. Its `detail` is safe to record (it names the
/// rule and the credential id, never the credential) and reaches outer layers through
/// [`mcp_core::Denial::detail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The scheme of the credential.
    pub scheme: Scheme,
    /// What went wrong.
    pub kind: FailureKind,
    /// Why, for audit records.
    pub detail: Cow<'static, str>,
}

impl Failure {
    /// An invalid credential.
    pub fn invalid(scheme: Scheme, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            scheme,
            kind: FailureKind::Invalid,
            detail: detail.into(),
        }
    }

    /// A malformed credential.
    pub fn malformed(scheme: Scheme, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            scheme,
            kind: FailureKind::Malformed,
            detail: detail.into(),
        }
    }

    /// A credential that cannot be checked now.
    pub fn unavailable(scheme: Scheme, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            scheme,
            kind: FailureKind::Unavailable,
            detail: detail.into(),
        }
    }
}

/// What an authenticator concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No credential of this authenticator's kind in the request.
    NoCredential,
    /// The credential verified.
    Authenticated(Principal),
    /// A credential was presented and refused.
    Failed(Failure),
}

/// The answer of [`Authenticator::authenticate`]: ready now, or a future.
pub enum AuthFuture<'a> {
    /// The outcome, known without waiting.
    Ready(Outcome),
    /// The outcome, once the future completes.
    Pending(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>),
}

impl fmt::Debug for AuthFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(o) => f.debug_tuple("Ready").field(o).finish(),
            Self::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

impl Future for AuthFuture<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self.get_mut() {
            Self::Ready(o) => Poll::Ready(std::mem::replace(o, Outcome::NoCredential)),
            Self::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

impl From<Outcome> for AuthFuture<'_> {
    fn from(o: Outcome) -> Self {
        Self::Ready(o)
    }
}

/// One way of authenticating a request, from its head (method, URI, headers and the
/// extensions: a [`mcp_core::TlsInfo`] put there by the TLS accept loop, for instance).
///
/// Implementations must not log or return the credential, must compare secrets in
/// constant time, and must not block the executor.
///
/// ```
/// use mcp_auth::{AuthFuture, Authenticator, Outcome, Scheme};
/// use mcp_core::{AuthMethod, Principal};
///
/// /// Trusts a header set by a front proxy that authenticated the caller (example only).
/// #[derive(Debug)]
/// struct FromProxy;
///
/// impl Authenticator for FromProxy {
///     fn scheme(&self) -> Scheme {
///         Scheme::ClientCertificate
///     }
///     fn authenticate<'a>(&'a self, req: &'a http::request::Parts) -> AuthFuture<'a> {
///         match req.headers.get("x-proxy-user").and_then(|v| v.to_str().ok()) {
///             Some(user) => Outcome::Authenticated(Principal::new(user, AuthMethod::ClientCertificate)).into(),
///             None => Outcome::NoCredential.into(),
///         }
///     }
/// }
/// ```
pub trait Authenticator: fmt::Debug + Send + Sync + 'static {
    /// The scheme this authenticator answers to (for the 401 challenges).
    fn scheme(&self) -> Scheme;

    /// Authenticates the request head.
    fn authenticate<'a>(&'a self, req: &'a Parts) -> AuthFuture<'a>;

    /// The request headers this authenticator reads a credential from (lower case).
    /// [`AuthLayer::credential_headers`](crate::AuthLayer::credential_headers) joins
    /// them to the defaults, for stripping, masking and redaction. The default follows
    /// [`Authenticator::scheme`]: `authorization` for Bearer and Basic, the header of an
    /// API key, none for a client certificate. Override it when the credential travels
    /// elsewhere.
    fn credential_headers(&self) -> Vec<http::HeaderName> {
        match self.scheme() {
            Scheme::Bearer | Scheme::Basic => vec![http::header::AUTHORIZATION],
            Scheme::ApiKey { header } => http::HeaderName::from_bytes(header.as_bytes())
                .into_iter()
                .collect(),
            Scheme::ClientCertificate => Vec::new(),
        }
    }
}
