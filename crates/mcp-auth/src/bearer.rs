//! Static bearer tokens (RFC 6750), compared by digest in constant time.

use http::request::Parts;

use crate::api_key::{CredentialEntry, KeyTable, lookup_outcome, malformed};
use crate::authenticator::{AuthFuture, Authenticator, Outcome, Scheme};
use crate::credentials;
use crate::error::ConfigError;
use crate::store::{SecretKind, SecretStore};

/// Authenticates static bearer tokens from `Authorization: Bearer <token>`.
///
/// Tokens are stored as SHA-256 digests and matched like API keys (see
/// [`crate::api_key`]). A token that is not one of them is a failure of this
/// authenticator, and the layer goes on to the next one (a JWT authenticator, say).
///
/// ```
/// use mcp_auth::{BearerTokenAuthenticator, CredentialEntry};
/// let auth = BearerTokenAuthenticator::builder()
///     .token(CredentialEntry::new("deploy", "q8Jx2mV7pL0sN4tR9wY3zB6cF1hK5dG8aE2uI7oP0"))
///     .build()
///     .unwrap();
/// # let _ = auth;
/// ```
#[derive(Clone, Debug)]
pub struct BearerTokenAuthenticator {
    table: KeyTable,
}

/// Builder of [`BearerTokenAuthenticator`].
#[derive(Debug, Default)]
pub struct BearerTokenAuthenticatorBuilder {
    entries: Vec<CredentialEntry>,
    store: Option<SecretStore>,
}

impl BearerTokenAuthenticatorBuilder {
    /// Adds a token (at least 32 characters of the RFC 6750 token alphabet).
    pub fn token(mut self, entry: CredentialEntry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Adds tokens.
    pub fn tokens(mut self, entries: impl IntoIterator<Item = CredentialEntry>) -> Self {
        self.entries.extend(entries);
        self
    }

    /// Also accepts the live bearer tokens of `store` (read at each request).
    pub fn store(mut self, store: SecretStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<BearerTokenAuthenticator, ConfigError> {
        Ok(BearerTokenAuthenticator {
            table: KeyTable::build(
                self.entries,
                self.store,
                SecretKind::BearerToken,
                "auth.bearerTokens",
            )?,
        })
    }
}

impl BearerTokenAuthenticator {
    /// A builder.
    pub fn builder() -> BearerTokenAuthenticatorBuilder {
        BearerTokenAuthenticatorBuilder::default()
    }

    /// Authenticates a header map.
    pub fn check(&self, headers: &http::HeaderMap) -> Outcome {
        match credentials::bearer_token(headers) {
            Ok(None) => Outcome::NoCredential,
            Err(e) => malformed(Scheme::Bearer, e),
            Ok(Some(token)) => {
                lookup_outcome(self.table.lookup(token), &Scheme::Bearer, "bearer token")
            }
        }
    }
}

impl Authenticator for BearerTokenAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::Bearer
    }

    fn authenticate<'a>(&'a self, req: &'a Parts) -> AuthFuture<'a> {
        AuthFuture::Ready(self.check(&req.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "q8Jx2mV7pL0sN4tR9wY3zB6cF1hK5dG8aE2uI7oP0";

    #[test]
    fn static_tokens() {
        let a = BearerTokenAuthenticator::builder()
            .token(CredentialEntry::new("t1", T).scopes(["x"]))
            .build()
            .unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {T}").parse().unwrap());
        assert!(matches!(a.check(&h), Outcome::Authenticated(p) if p.has_scope("x")));
        h.insert("authorization", format!("Bearer {T}x").parse().unwrap());
        assert!(matches!(a.check(&h), Outcome::Failed(_)));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(a.check(&h), Outcome::NoCredential);
        assert!(!format!("{a:?}").contains(T));
        let short = BearerTokenAuthenticator::builder()
            .token(CredentialEntry::new("s", "short"))
            .build()
            .unwrap_err();
        assert!(short.to_string().contains("32"));
    }
}
