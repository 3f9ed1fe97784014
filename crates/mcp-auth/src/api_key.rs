//! API keys from a request header, and the static-credential table shared with static
//! bearer tokens.
//!
//! Keys are stored as SHA-256 digests. A fast hash is the right one here: API keys are
//! high-entropy (the policy asks for 16+ characters of 3+ classes, the generator makes 32
//! characters of 4 classes), so there is nothing for a slow password hash to protect
//! against, and a fast hash keeps the check in the sub-microsecond range.
//!
//! Lookup: the table is a hash map keyed by the digest of the key. Its timing depends
//! only on the digest of what the caller sent: the caller can only learn, at best, how
//! the digests of its own guesses compare with stored digests, which reveals nothing
//! useful (SHA-256 is preimage resistant, the keys are high-entropy). The final match is
//! a constant-time comparison of the two digests (`subtle`). Which key matched, or
//! whether any matched, is not observable beyond that.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;
use http::request::Parts;
use mcp_core::{AuthMethod, Principal};

use crate::authenticator::{AuthFuture, Authenticator, Failure, Outcome, Scheme};
use crate::credentials::{self, MalformedCredential};
use crate::error::ConfigError;
use crate::key_policy;
use crate::secret::{SecretString, ct_eq, parse_sha256_hex, sha256};
use crate::store::{SecretKind, SecretStore};

/// The default API key header.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// The longest API key header value looked at (longer ones are refused unread).
pub const MAX_API_KEY_LEN: usize = 512;

/// The value of a configured key: the key itself, or its SHA-256.
#[derive(Clone)]
enum Material {
    Plain(SecretString),
    Sha256Hex(String),
}

/// One configured API key or static bearer token: an id (recorded, never secret), the
/// key or its SHA-256, the principal it authenticates as, its scopes, and an optional
/// validity window. `Debug` never shows the key.
///
/// ```
/// use mcp_auth::CredentialEntry;
/// let e = CredentialEntry::new("ci", "Abc123!@#Xyz789!@#").principal("ci-bot").scopes(["tools:call"]);
/// assert!(!format!("{e:?}").contains("Abc123"));
/// ```
#[derive(Clone)]
pub struct CredentialEntry {
    id: String,
    material: Material,
    principal: Option<String>,
    scopes: Vec<String>,
    not_before: Option<SystemTime>,
    expires_at: Option<SystemTime>,
}

impl fmt::Debug for CredentialEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialEntry")
            .field("id", &self.id)
            .field("principal", &self.principal)
            .field("scopes", &self.scopes)
            .field("not_before", &self.not_before)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl CredentialEntry {
    /// An entry holding the key itself (hashed at build time, checked against the policy).
    pub fn new(id: impl Into<String>, key: impl Into<SecretString>) -> Self {
        Self {
            id: id.into(),
            material: Material::Plain(key.into()),
            principal: None,
            scopes: Vec::new(),
            not_before: None,
            expires_at: None,
        }
    }

    /// An entry holding only the SHA-256 of the key, as 64 hex digits (so configuration
    /// files need not contain the key; the policy cannot be checked then).
    pub fn sha256_hex(id: impl Into<String>, hex_digest: impl Into<String>) -> Self {
        Self {
            material: Material::Sha256Hex(hex_digest.into()),
            ..Self::new(id, "")
        }
    }

    /// The principal id (default: the entry id).
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// The scopes granted.
    pub fn scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Not valid before this instant.
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Not valid from this instant on.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

struct Record {
    digest: [u8; 32],
    id: String,
    principal: Principal,
    not_before: Option<SystemTime>,
    expires_at: Option<SystemTime>,
}

/// The static table: digest -> record, with precomputed principals.
#[derive(Clone)]
pub(crate) struct KeyTable {
    records: Arc<HashMap<[u8; 32], Record>>,
    store: Option<SecretStore>,
    kind: SecretKind,
    method: AuthMethod,
}

impl fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&str> = self.records.values().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        f.debug_struct("KeyTable")
            .field("ids", &ids)
            .field("store", &self.store)
            .finish()
    }
}

pub(crate) enum Lookup {
    Found(Principal),
    Unknown,
    NotYetValid(String),
    Expired(String),
}

impl KeyTable {
    pub(crate) fn build(
        entries: Vec<CredentialEntry>,
        store: Option<SecretStore>,
        kind: SecretKind,
        config_key: &str,
    ) -> Result<Self, ConfigError> {
        let method = match kind {
            SecretKind::ApiKey => AuthMethod::ApiKey,
            SecretKind::BearerToken => AuthMethod::BearerToken,
        };
        if entries.is_empty() && store.is_none() {
            return Err(ConfigError::invalid(
                config_key,
                "at least one key (or a secret store) is required",
            ));
        }
        let mut records = HashMap::with_capacity(entries.len());
        let mut ids = std::collections::HashSet::new();
        for (i, e) in entries.into_iter().enumerate() {
            let key = format!("{config_key}[{i}]");
            if e.id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.id"),
                    "must not be empty",
                ));
            }
            if !ids.insert(e.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("{key}.id"),
                    format!("duplicate id {:?}", e.id),
                ));
            }
            let digest = match &e.material {
                Material::Plain(k) => {
                    match kind {
                        SecretKind::ApiKey => {
                            key_policy::check_api_key(k.expose()).map_err(|violation| {
                                ConfigError::WeakApiKey {
                                    key: format!("{key}.key"),
                                    violation,
                                }
                            })?
                        }
                        SecretKind::BearerToken => key_policy::check_bearer_token(k.expose())
                            .map_err(|rule| ConfigError::invalid(format!("{key}.token"), rule))?,
                    }
                    sha256(k.expose().as_bytes())
                }
                Material::Sha256Hex(h) => parse_sha256_hex(h).ok_or_else(|| {
                    ConfigError::invalid(format!("{key}.sha256"), "must be 64 hex digits")
                })?,
            };
            if let (Some(nb), Some(exp)) = (e.not_before, e.expires_at)
                && nb >= exp
            {
                return Err(ConfigError::invalid(
                    format!("{key}.notBefore"),
                    "must be before expiresAt",
                ));
            }
            let principal = Principal::new(e.principal.unwrap_or_else(|| e.id.clone()), method)
                .with_credential_id(e.id.clone())
                .with_scopes(e.scopes);
            let record = Record {
                digest,
                id: e.id,
                principal,
                not_before: e.not_before,
                expires_at: e.expires_at,
            };
            if records.insert(digest, record).is_some() {
                return Err(ConfigError::invalid(
                    format!("{key}.key"),
                    "the same key is configured twice",
                ));
            }
        }
        Ok(Self {
            records: Arc::new(records),
            store,
            kind,
            method,
        })
    }

    pub(crate) fn lookup(&self, presented: &str) -> Lookup {
        let digest = sha256(presented.as_bytes());
        if let Some(r) = self.records.get(&digest)
            && ct_eq(&r.digest, &digest)
        {
            let needs_clock = r.not_before.is_some() || r.expires_at.is_some();
            if needs_clock {
                let now = SystemTime::now();
                if r.not_before.is_some_and(|nb| now < nb) {
                    return Lookup::NotYetValid(r.id.clone());
                }
                if r.expires_at.is_some_and(|e| now >= e) {
                    return Lookup::Expired(r.id.clone());
                }
            }
            return Lookup::Found(r.principal.clone());
        }
        if let Some(store) = &self.store
            && let Some(m) = store.verify_digest(self.kind, &digest)
        {
            return Lookup::Found(
                Principal::new(m.principal, self.method)
                    .with_credential_id(m.id)
                    .with_scopes(m.scopes),
            );
        }
        Lookup::Unknown
    }
}

pub(crate) fn lookup_outcome(lookup: Lookup, scheme: &Scheme, what: &'static str) -> Outcome {
    let scheme = scheme.clone();
    match lookup {
        Lookup::Found(p) => Outcome::Authenticated(p),
        Lookup::Unknown => Outcome::Failed(Failure::invalid(scheme, format!("unknown {what}"))),
        Lookup::NotYetValid(id) => Outcome::Failed(Failure::invalid(
            scheme,
            format!("{what} {id:?} not yet valid"),
        )),
        Lookup::Expired(id) => {
            Outcome::Failed(Failure::invalid(scheme, format!("{what} {id:?} expired")))
        }
    }
}

pub(crate) fn malformed(scheme: Scheme, e: MalformedCredential) -> Outcome {
    Outcome::Failed(Failure::malformed(scheme, e.to_string()))
}

/// Authenticates an API key sent in a header (default `X-API-Key`; header names are
/// matched in any case). Keys in the query string are never read: the
/// [`AuthLayer`](crate::AuthLayer) refuses them.
///
/// ```
/// use mcp_auth::{ApiKeyAuthenticator, CredentialEntry};
/// let auth = ApiKeyAuthenticator::builder()
///     .header("X-API-Key")
///     .key(CredentialEntry::new("ci", "Abc123!@#Xyz789!@#").scopes(["tools:call"]))
///     .build()
///     .unwrap();
/// # let _ = auth;
/// // a key that breaks the policy is refused at build time, without being named
/// let err = ApiKeyAuthenticator::builder().key(CredentialEntry::new("weak", "abcdefgh12345678")).build().unwrap_err();
/// assert!(!err.to_string().contains("abcdefgh"));
/// ```
#[derive(Clone, Debug)]
pub struct ApiKeyAuthenticator {
    header: HeaderName,
    scheme: Scheme,
    table: KeyTable,
}

/// Builder of [`ApiKeyAuthenticator`].
#[derive(Debug, Default)]
pub struct ApiKeyAuthenticatorBuilder {
    header: Option<String>,
    entries: Vec<CredentialEntry>,
    store: Option<SecretStore>,
}

impl ApiKeyAuthenticatorBuilder {
    /// The header to read (default `X-API-Key`).
    pub fn header(mut self, name: impl Into<String>) -> Self {
        self.header = Some(name.into());
        self
    }

    /// Adds a key.
    pub fn key(mut self, entry: CredentialEntry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Adds keys.
    pub fn keys(mut self, entries: impl IntoIterator<Item = CredentialEntry>) -> Self {
        self.entries.extend(entries);
        self
    }

    /// Also accepts the live API keys of `store` (read at each request).
    pub fn store(mut self, store: SecretStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<ApiKeyAuthenticator, ConfigError> {
        let header_name = self.header.as_deref().unwrap_or(DEFAULT_API_KEY_HEADER);
        // Written as is: a name with spaces would be read by one component and missed by
        // another (stripping, masking), so it is refused, not trimmed.
        let header = crate::config::header_name(header_name, "auth.apiKeyHeader")?;
        if header == http::header::AUTHORIZATION
            || header == http::header::COOKIE
            || header == http::header::PROXY_AUTHORIZATION
        {
            return Err(ConfigError::invalid(
                "auth.apiKeyHeader",
                "must not be Authorization, Proxy-Authorization or Cookie",
            ));
        }
        let table = KeyTable::build(self.entries, self.store, SecretKind::ApiKey, "auth.apiKeys")?;
        let scheme = Scheme::ApiKey {
            header: canonical_header(header.as_str()),
        };
        Ok(ApiKeyAuthenticator {
            header,
            scheme,
            table,
        })
    }
}

impl ApiKeyAuthenticator {
    /// A builder.
    pub fn builder() -> ApiKeyAuthenticatorBuilder {
        ApiKeyAuthenticatorBuilder::default()
    }

    /// The header read.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Authenticates a header map (what [`Authenticator::authenticate`] does, without
    /// the request around it).
    pub fn check(&self, headers: &http::HeaderMap) -> Outcome {
        match credentials::api_key(headers, &self.header, MAX_API_KEY_LEN) {
            Ok(None) => Outcome::NoCredential,
            Err(e) => malformed(self.scheme.clone(), e),
            Ok(Some(key)) => match self.table.lookup(key) {
                Lookup::Found(p) => Outcome::Authenticated(p),
                other => lookup_outcome(other, &self.scheme, "api key"),
            },
        }
    }
}

impl Authenticator for ApiKeyAuthenticator {
    fn scheme(&self) -> Scheme {
        self.scheme.clone()
    }

    fn authenticate<'a>(&'a self, req: &'a Parts) -> AuthFuture<'a> {
        AuthFuture::Ready(self.check(&req.headers))
    }

    fn credential_headers(&self) -> Vec<HeaderName> {
        vec![self.header.clone()]
    }
}

/// `x-api-key` -> `X-Api-Key`, for challenges.
fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const K1: &str = "Abc123!@#Xyz789!@#";
    const K2: &str = "Zyx987!@#Cba321!@#";

    fn headers(k: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("X-API-KEY", k.parse().unwrap());
        h
    }

    #[test]
    fn accepts_known_keys_and_refuses_others() {
        let a = ApiKeyAuthenticator::builder()
            .key(
                CredentialEntry::new("k1", K1)
                    .principal("alice")
                    .scopes(["s1"]),
            )
            .key(CredentialEntry::sha256_hex(
                "k2",
                hex::encode(sha256(K2.as_bytes())),
            ))
            .build()
            .unwrap();
        match a.check(&headers(K1)) {
            Outcome::Authenticated(p) => {
                assert_eq!(p.id(), "alice");
                assert_eq!(p.credential_id(), Some("k1"));
                assert!(p.has_scope("s1"));
                assert_eq!(p.method(), AuthMethod::ApiKey);
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(a.check(&headers(K2)), Outcome::Authenticated(p) if p.id() == "k2"));
        assert!(matches!(
            a.check(&headers("Abc123!@#Xyz789!@?")),
            Outcome::Failed(_)
        ));
        assert_eq!(a.check(&http::HeaderMap::new()), Outcome::NoCredential);
        let dbg = format!("{a:?}");
        assert!(!dbg.contains(K1) && !dbg.contains(K2) && dbg.contains("k1"));
    }

    #[test]
    fn validity_window() {
        let now = SystemTime::now();
        let a = ApiKeyAuthenticator::builder()
            .key(CredentialEntry::new("old", K1).expires_at(now - Duration::from_secs(1)))
            .key(CredentialEntry::new("future", K2).not_before(now + Duration::from_secs(3600)))
            .build()
            .unwrap();
        match a.check(&headers(K1)) {
            Outcome::Failed(f) => assert!(f.detail.contains("expired") && !f.detail.contains(K1)),
            o => panic!("{o:?}"),
        }
        match a.check(&headers(K2)) {
            Outcome::Failed(f) => assert!(f.detail.contains("not yet valid")),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn build_errors_name_rule_not_key() {
        let cases = [
            (CredentialEntry::new("w", "abcdefgh12345678"), "3 of"),
            (CredentialEntry::new("w", "Ab1!"), "at least 16"),
            (CredentialEntry::new("", K1), "must not be empty"),
            (CredentialEntry::sha256_hex("h", "nothex"), "64 hex"),
        ];
        for (entry, rule) in cases {
            let e = ApiKeyAuthenticator::builder()
                .key(entry)
                .build()
                .unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(rule), "{msg}");
            assert!(
                !msg.contains("abcdefgh12345678") && !msg.contains("Ab1!"),
                "{msg}"
            );
        }
        let dup = ApiKeyAuthenticator::builder()
            .key(CredentialEntry::new("a", K1))
            .key(CredentialEntry::new("b", K1))
            .build()
            .unwrap_err();
        assert!(dup.to_string().contains("twice"));
        assert!(ApiKeyAuthenticator::builder().build().is_err());
        assert!(
            ApiKeyAuthenticator::builder()
                .header("Authorization")
                .key(CredentialEntry::new("a", K1))
                .build()
                .is_err()
        );
    }

    #[test]
    fn store_backed_keys_follow_rotation() {
        let store = SecretStore::new();
        let (info, key) = store.generate_api_key("svc").unwrap();
        let a = ApiKeyAuthenticator::builder()
            .store(store.clone())
            .build()
            .unwrap();
        assert!(
            matches!(a.check(&headers(key.expose())), Outcome::Authenticated(p) if p.credential_id() == Some(info.id.as_str()))
        );
        let (_, new) = store.rotate(&info.id, Duration::ZERO).unwrap();
        assert!(matches!(
            a.check(&headers(key.expose())),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            a.check(&headers(new.expose())),
            Outcome::Authenticated(_)
        ));
    }

    #[test]
    fn canonical_header_names() {
        assert_eq!(canonical_header("x-api-key"), "X-Api-Key");
    }
}
