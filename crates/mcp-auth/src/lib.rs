//! Authentication and authorization for MCP servers and gateways, as Tower layers.
//!
//! - [`AuthLayer`] tries one or more [`Authenticator`]s in order and puts the
//!   authenticated [`Principal`](mcp_core::Principal) in the request extensions (and the
//!   response extensions, for the audit layer outside). Failures are 401 with the
//!   challenges the RFCs ask for; a missing required scope is 403 `insufficient_scope`.
//! - Authenticators: [`ApiKeyAuthenticator`] (a header, keys stored as SHA-256 and
//!   compared in constant time, a key policy at build time), [`BearerTokenAuthenticator`]
//!   (static tokens), [`JwtAuthenticator`] (HS/RS/PS/ES/EdDSA with algorithms pinned per
//!   key, JWKS URLs with caching and rotation, a verified-token cache),
//!   [`BasicAuthenticator`] (Argon2id, a verified-credential cache),
//!   [`ClientCertAuthenticator`] (mTLS identities from [`mcp_core::TlsInfo`]).
//! - [`SecretStore`]: API keys and bearer tokens with expiry, rotation with an overlap
//!   window, generation; authenticators can read it live.
//! - [`ProtectedResourceMetadata`]: RFC 9728 metadata for MCP authorization.
//! - [`AuthorizeLayer`] with a [`Policy`]: which principals and scopes may call which
//!   MCP methods, tools, resources and prompts.
//! - [`SessionBindingLayer`]: MCP sessions (`Mcp-Session-Id`) bound to the principal
//!   that created them; another principal, or an unknown id, gets 404. In memory or
//!   shared through Redis (cargo feature `redis`).
//! - [`AuthConfig`]: the gateway's `auth:` configuration section.
//!
//! No credential ever appears in `Debug` output, logs or errors.
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_auth::{ApiKeyAuthenticator, AuthLayer, AuthorizeLayer, CredentialEntry, Policy, Rule};
//! use mcp_core::{ParseLayer, Principal};
//!
//! async fn handler(p: Principal) -> String { format!("hello {}", p.id()) }
//!
//! let auth = AuthLayer::builder()
//!     .authenticator(
//!         ApiKeyAuthenticator::builder()
//!             .key(CredentialEntry::new("ci", "Abc123!@#Xyz789!@#").scopes(["mcp:tools"]))
//!             .build()
//!             .unwrap(),
//!     )
//!     .build()
//!     .unwrap();
//! let policy = Policy::builder()
//!     .allow(Rule::new("tools").methods(["tools/*"]).scopes(["mcp:tools"]))
//!     .build()
//!     .unwrap();
//!
//! // Layers added last run first: auth, then parse, then authorize.
//! let app: Router = Router::new()
//!     .route("/mcp", post(handler))
//!     .layer(AuthorizeLayer::new(policy))
//!     .layer(ParseLayer::new())
//!     .layer(auth);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod api_key;
pub mod authenticator;
pub mod authorize;
pub mod basic;
pub mod bearer;
mod cache;
pub mod config;
pub mod credentials;
pub mod error;
mod future;
pub mod jwt;
pub mod key_policy;
pub mod layer;
pub mod metadata;
pub mod mtls;
pub mod query;
pub mod secret;
pub mod session;
pub mod store;

pub use api_key::{ApiKeyAuthenticator, ApiKeyAuthenticatorBuilder, CredentialEntry};
pub use authenticator::{AuthFuture, Authenticator, Failure, FailureKind, Outcome, Scheme};
pub use authorize::{
    Authorize, AuthorizeLayer, Policy, PolicyBuilder, PolicyConfig, Rule, SessionRequirement,
    SessionRule, Verdict,
};
pub use basic::{BasicAuthenticator, BasicAuthenticatorBuilder, BasicUser};
pub use bearer::{BearerTokenAuthenticator, BearerTokenAuthenticatorBuilder};
pub use config::{
    AuthConfig, BasicConfig, JwtConfig, JwtIssuerConfig, KeyConfig, Mode, Modes, MtlsConfig,
    UserConfig,
};
pub use error::ConfigError;
pub use future::ResponseFuture;
pub use jwt::{JwtAuthenticator, JwtAuthenticatorBuilder, JwtIssuer};
pub use key_policy::{KeyPolicyViolation, generate_api_key, generate_bearer_token};
pub use layer::{Auth, AuthLayer, AuthLayerBuilder};
pub use metadata::{MetadataService, ProtectedResourceMetadata};
pub use mtls::{ClientCertAuthenticator, ClientCertAuthenticatorBuilder};
pub use query::{QueryCredentials, QueryCredentialsLayer};
pub use secret::{SecretBytes, SecretString};
pub use session::{
    EndReason, EndedSession, EndedSessions, SessionBinding, SessionBindingLayer, SessionConfig,
    SessionRedisConfig, SessionRoute, owner_key, session_id_hash,
};
pub use store::{
    NewSecret, SecretInfo, SecretKind, SecretMatch, SecretStore, SecretStoreConfig, StoreError,
};

/// The `jsonwebtoken` crate, for [`jsonwebtoken::Algorithm`].
pub use jsonwebtoken;
