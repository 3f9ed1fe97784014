//! [`Principal`]: who the caller is and how that was proven.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

/// How a principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthMethod {
    /// An API key from a request header.
    ApiKey,
    /// A static bearer token.
    BearerToken,
    /// A verified JSON Web Token.
    Jwt,
    /// HTTP Basic (RFC 7617).
    Basic,
    /// A TLS client certificate verified during the handshake.
    ClientCertificate,
    /// No authentication (authentication switched off by configuration).
    Anonymous,
}

impl AuthMethod {
    /// The stable snake_case name (`"api_key"`, `"jwt"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::BearerToken => "bearer_token",
            Self::Jwt => "jwt",
            Self::Basic => "basic",
            Self::ClientCertificate => "client_certificate",
            Self::Anonymous => "anonymous",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize)]
struct Inner {
    id: String,
    method: AuthMethod,
    credential_id: Option<String>,
    scopes: BTreeSet<String>,
    claims: Map<String, Value>,
}

/// Who the caller is and how that was proven: put in the request extensions by the
/// authentication layer (and in the response extensions, for outer layers), read by the
/// rate limiter, the authorization policy and the audit layer. Cheap to clone.
///
/// It never holds a credential: `credential_id` names the API key or token that matched
/// (its configured id), never its value.
///
/// ```
/// use mcp_core::{AuthMethod, Principal};
///
/// let p = Principal::new("alice", AuthMethod::ApiKey)
///     .with_credential_id("ci-key-1")
///     .with_scopes(["tools:call", "audit:read"]);
/// assert!(p.has_scope("audit:read"));
/// assert_eq!(p.credential_id(), Some("ci-key-1"));
/// ```
#[derive(Clone, Serialize)]
pub struct Principal(Arc<Inner>);

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claims may hold personal data; Debug lists their names only.
        f.debug_struct("Principal")
            .field("id", &self.0.id)
            .field("method", &self.0.method)
            .field("credential_id", &self.0.credential_id)
            .field("scopes", &self.0.scopes)
            .field("claims", &self.0.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
            && self.0.method == other.0.method
            && self.0.credential_id == other.0.credential_id
            && self.0.scopes == other.0.scopes
            && self.0.claims == other.0.claims
    }
}

impl Principal {
    /// A principal with an id and the way it was authenticated, no scopes, no claims.
    pub fn new(id: impl Into<String>, method: AuthMethod) -> Self {
        Self(Arc::new(Inner {
            id: id.into(),
            method,
            credential_id: None,
            scopes: BTreeSet::new(),
            claims: Map::new(),
        }))
    }

    /// The anonymous principal, used when authentication is switched off.
    pub fn anonymous() -> Self {
        Self::new("anonymous", AuthMethod::Anonymous)
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // Builders run before the principal is shared; make_mut would need Clone on Inner,
        // so rebuild instead when shared.
        if Arc::get_mut(&mut self.0).is_none() {
            let i = &*self.0;
            self.0 = Arc::new(Inner {
                id: i.id.clone(),
                method: i.method,
                credential_id: i.credential_id.clone(),
                scopes: i.scopes.clone(),
                claims: i.claims.clone(),
            });
        }
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner,
            None => unreachable!("a freshly made Arc is unique"),
        }
    }

    /// Sets the id of the credential that matched (an API key id, a token id, a `kid`).
    pub fn with_credential_id(mut self, id: impl Into<String>) -> Self {
        self.inner_mut().credential_id = Some(id.into());
        self
    }

    /// Adds scopes.
    pub fn with_scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.inner_mut()
            .scopes
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Sets the verified claims (JWT claims, certificate names).
    pub fn with_claims(mut self, claims: Map<String, Value>) -> Self {
        self.inner_mut().claims = claims;
        self
    }

    /// The principal's id: the API key's owner, the JWT `sub`, the Basic user name, the
    /// certificate's SPIFFE ID or common name.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// How the principal was authenticated.
    pub fn method(&self) -> AuthMethod {
        self.0.method
    }

    /// The configured id of the credential that matched, never its value.
    pub fn credential_id(&self) -> Option<&str> {
        self.0.credential_id.as_deref()
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.0.scopes
    }

    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.contains(scope)
    }

    /// The verified claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.0.claims
    }

    /// Whether this is an authenticated principal (not [`AuthMethod::Anonymous`]).
    pub fn is_authenticated(&self) -> bool {
        self.0.method != AuthMethod::Anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_accessors() {
        let mut claims = Map::new();
        claims.insert("email".into(), "a@example.com".into());
        let p = Principal::new("alice", AuthMethod::Jwt)
            .with_scopes(["a", "b"])
            .with_claims(claims);
        assert_eq!(p.id(), "alice");
        assert_eq!(p.method(), AuthMethod::Jwt);
        assert!(p.has_scope("a") && !p.has_scope("c"));
        assert!(p.is_authenticated());
        assert!(!Principal::anonymous().is_authenticated());
        let dbg = format!("{p:?}");
        assert!(dbg.contains("email") && !dbg.contains("a@example.com"));
    }

    #[test]
    fn builder_on_shared_principal_does_not_affect_clone() {
        let p = Principal::new("x", AuthMethod::Basic);
        let q = p.clone().with_scopes(["s"]);
        assert!(!p.has_scope("s"));
        assert!(q.has_scope("s"));
    }
}
