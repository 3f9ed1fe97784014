//! [`SecretStore`]: in-memory API keys and bearer tokens with expiry, rotation with an
//! overlap window, and generation.
//!
//! What the seeds' secret manager does, done safer:
//!
//! - the store keeps only the SHA-256 of each value; a generated or rotated value is
//!   returned once, to be handed to its owner, and cannot be read back;
//! - an expired secret (or an expired version of a rotated secret) never authenticates
//!   and is left out of [`SecretStore::list`];
//! - [`SecretStore::rotate`] issues a new value and keeps the old one valid for an overlap
//!   window, so clients can switch without an outage;
//! - authenticators built with [`ApiKeyAuthenticator::builder().store(..)`](crate::ApiKeyAuthenticatorBuilder::store)
//!   or [`BearerTokenAuthenticator::builder().store(..)`](crate::BearerTokenAuthenticatorBuilder::store)
//!   read the store on every request, so a rotation or a revocation takes effect without
//!   rebuilding the layer.
//!
//! ```
//! use std::time::Duration;
//! use mcp_auth::{NewSecret, SecretKind, SecretStore};
//!
//! let store = SecretStore::new();
//! let (info, key) = store.generate(NewSecret::api_key("ci").principal("ci-bot")).unwrap();
//! assert!(store.verify(SecretKind::ApiKey, key.expose()).is_some());
//!
//! let (_, new_key) = store.rotate(&info.id, Duration::from_secs(3600)).unwrap();
//! // both work during the overlap window
//! assert!(store.verify(SecretKind::ApiKey, key.expose()).is_some());
//! assert!(store.verify(SecretKind::ApiKey, new_key.expose()).is_some());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::key_policy::{self, KeyPolicyViolation};
use crate::secret::{SecretString, ct_eq, sha256};

/// What a secret is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// An API key (checked against the key policy).
    ApiKey,
    /// An opaque bearer token.
    BearerToken,
}

/// A secret to add to the store: its kind, name, owner, scopes, lifetime and, optionally,
/// its value (generated when absent).
#[derive(Debug, Clone)]
pub struct NewSecret {
    kind: SecretKind,
    name: String,
    value: Option<SecretString>,
    principal: Option<String>,
    scopes: Vec<String>,
    expires_at: Option<SystemTime>,
    ttl: Option<Duration>,
}

impl NewSecret {
    /// An API key named `name`.
    pub fn api_key(name: impl Into<String>) -> Self {
        Self::new(SecretKind::ApiKey, name)
    }

    /// A bearer token named `name`.
    pub fn bearer_token(name: impl Into<String>) -> Self {
        Self::new(SecretKind::BearerToken, name)
    }

    /// A secret of `kind` named `name`.
    pub fn new(kind: SecretKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            value: None,
            principal: None,
            scopes: Vec::new(),
            expires_at: None,
            ttl: None,
        }
    }

    /// Uses this value instead of generating one (checked against the policy).
    pub fn value(mut self, value: impl Into<SecretString>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// The principal id the secret authenticates as (default: its name).
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

    /// Expires at this instant.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Expires this long after it is stored.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// What the store tells about a secret: everything but its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// The store's id for the secret (`sec_` and 16 hex digits).
    pub id: String,
    /// The name given when it was stored.
    pub name: String,
    /// Its kind.
    pub kind: SecretKind,
    /// The principal id it authenticates as.
    pub principal: String,
    /// The scopes it grants.
    pub scopes: Vec<String>,
    /// When it was stored.
    pub created_at: SystemTime,
    /// When its current value was issued (creation or last rotation).
    pub rotated_at: SystemTime,
    /// When it expires.
    pub expires_at: Option<SystemTime>,
    /// How many values currently verify (2 during a rotation overlap).
    pub live_versions: usize,
}

/// What [`SecretStore::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMatch {
    /// The secret's id.
    pub id: String,
    /// The secret's name.
    pub name: String,
    /// The principal id.
    pub principal: String,
    /// The scopes.
    pub scopes: Vec<String>,
}

/// Why a store operation failed. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No live secret has this id.
    #[error("no secret with id {0}")]
    NotFound(String),
    /// A given API key breaks the key policy.
    #[error("API key policy: {0}")]
    Policy(KeyPolicyViolation),
    /// A given bearer token breaks the token rule.
    #[error("bearer token: {0}")]
    BadToken(&'static str),
    /// The value is already stored (under another secret or version).
    #[error("this value is already stored")]
    Duplicate,
    /// The name is empty.
    #[error("a secret needs a non-empty name")]
    EmptyName,
}

/// Store settings, with the seeds' keys (`secrets.rotation_interval` in hours,
/// `secrets.max_age` in days, `secrets.keep_expired`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SecretStoreConfig {
    /// After how many hours a secret is reported by [`SecretStore::due_for_rotation`].
    pub rotation_interval: Option<u64>,
    /// Default lifetime in days of secrets stored without an expiry.
    pub max_age: Option<u64>,
    /// Keep expired secrets (they never authenticate) for [`SecretStore::list_expired`];
    /// otherwise [`SecretStore::purge_expired`] drops them.
    pub keep_expired: bool,
}

struct Version {
    digest: [u8; 32],
    retire_at: Option<SystemTime>,
}

struct Record {
    info: SecretInfo,
    versions: Vec<Version>,
}

impl Record {
    fn expired(&self, now: SystemTime) -> bool {
        self.info.expires_at.is_some_and(|e| now >= e)
    }

    fn live_versions(&self, now: SystemTime) -> usize {
        self.versions
            .iter()
            .filter(|v| v.retire_at.is_none_or(|r| now < r))
            .count()
    }

    fn snapshot(&self, now: SystemTime) -> SecretInfo {
        let mut info = self.info.clone();
        info.live_versions = self.live_versions(now);
        info
    }
}

#[derive(Default)]
struct Inner {
    secrets: HashMap<String, Record>,
    index: HashMap<[u8; 32], String>,
    config: SecretStoreConfig,
}

/// In-memory secrets (see the [module documentation](self)). Cheap to clone: clones share
/// the same secrets.
#[derive(Clone, Default)]
pub struct SecretStore {
    inner: Arc<RwLock<Inner>>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.read();
        f.debug_struct("SecretStore")
            .field("secrets", &inner.secrets.len())
            .field("config", &inner.config)
            .finish()
    }
}

fn new_id() -> String {
    use rand::Rng;
    let mut b = [0u8; 8];
    rand::rng().fill(&mut b);
    format!("sec_{}", hex::encode(b))
}

impl SecretStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with settings.
    pub fn with_config(config: SecretStoreConfig) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner {
                config,
                ..Inner::default()
            })),
        }
    }

    // A poisoned lock only means a writer panicked; the maps are still consistent
    // (every mutation is a single insert/remove), so keep serving.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn check_value(kind: SecretKind, value: &str) -> Result<(), StoreError> {
        match kind {
            SecretKind::ApiKey => key_policy::check_api_key(value).map_err(StoreError::Policy),
            SecretKind::BearerToken => {
                key_policy::check_bearer_token(value).map_err(StoreError::BadToken)
            }
        }
    }

    fn generate_value(kind: SecretKind) -> SecretString {
        SecretString::new(match kind {
            SecretKind::ApiKey => key_policy::generate_api_key(),
            SecretKind::BearerToken => key_policy::generate_bearer_token(),
        })
    }

    /// Stores a secret with the value given by [`NewSecret::value`]; returns its info.
    /// A secret without a value gets a generated one, which is then lost: use
    /// [`SecretStore::generate`] to receive it.
    pub fn insert(&self, secret: NewSecret) -> Result<SecretInfo, StoreError> {
        self.generate(secret).map(|(info, _)| info)
    }

    /// Stores a secret, generating its value unless one was given; returns its info and
    /// its value (to hand to its owner: the store keeps only a hash).
    pub fn generate(&self, secret: NewSecret) -> Result<(SecretInfo, SecretString), StoreError> {
        if secret.name.trim().is_empty() {
            return Err(StoreError::EmptyName);
        }
        let value = match secret.value {
            Some(v) => {
                Self::check_value(secret.kind, v.expose())?;
                v
            }
            None => Self::generate_value(secret.kind),
        };
        let digest = sha256(value.expose().as_bytes());
        let now = SystemTime::now();
        let mut inner = self.write();
        if inner.index.contains_key(&digest) {
            return Err(StoreError::Duplicate);
        }
        let default_ttl = inner
            .config
            .max_age
            .map(|days| Duration::from_secs(days.saturating_mul(86_400)));
        let expires_at = secret
            .expires_at
            .or_else(|| secret.ttl.or(default_ttl).and_then(|t| now.checked_add(t)));
        let id = new_id();
        let info = SecretInfo {
            id: id.clone(),
            principal: secret.principal.unwrap_or_else(|| secret.name.clone()),
            name: secret.name,
            kind: secret.kind,
            scopes: secret.scopes,
            created_at: now,
            rotated_at: now,
            expires_at,
            live_versions: 1,
        };
        inner.index.insert(digest, id.clone());
        inner.secrets.insert(
            id,
            Record {
                info: info.clone(),
                versions: vec![Version {
                    digest,
                    retire_at: None,
                }],
            },
        );
        Ok((info, value))
    }

    /// Generates and stores an API key named `name` (the seeds' `GenerateAPIKey`).
    pub fn generate_api_key(
        &self,
        name: impl Into<String>,
    ) -> Result<(SecretInfo, SecretString), StoreError> {
        self.generate(NewSecret::api_key(name))
    }

    /// Generates and stores a bearer token named `name` (the seeds' `GenerateBearerToken`).
    pub fn generate_bearer_token(
        &self,
        name: impl Into<String>,
    ) -> Result<(SecretInfo, SecretString), StoreError> {
        self.generate(NewSecret::bearer_token(name))
    }

    /// Rotates a secret to a newly generated value. The previous values keep working for
    /// `overlap` (zero: they stop at once); returns the new value.
    pub fn rotate(
        &self,
        id: &str,
        overlap: Duration,
    ) -> Result<(SecretInfo, SecretString), StoreError> {
        let kind = self
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?
            .kind;
        self.rotate_to(id, Self::generate_value(kind), overlap)
    }

    /// Rotates a secret to `value` (checked against the policy), keeping the previous
    /// values valid for `overlap`.
    pub fn rotate_to(
        &self,
        id: &str,
        value: SecretString,
        overlap: Duration,
    ) -> Result<(SecretInfo, SecretString), StoreError> {
        let now = SystemTime::now();
        let digest = sha256(value.expose().as_bytes());
        let mut inner = self.write();
        let kind = match inner.secrets.get(id) {
            Some(r) if !r.expired(now) => r.info.kind,
            _ => return Err(StoreError::NotFound(id.to_owned())),
        };
        Self::check_value(kind, value.expose())?;
        if inner.index.contains_key(&digest) {
            return Err(StoreError::Duplicate);
        }
        let retire = now.checked_add(overlap).unwrap_or(now);
        let Inner { secrets, index, .. } = &mut *inner;
        let Some(record) = secrets.get_mut(id) else {
            return Err(StoreError::NotFound(id.to_owned()));
        };
        for v in &mut record.versions {
            v.retire_at = Some(v.retire_at.map_or(retire, |r| r.min(retire)));
        }
        // Drop versions that no longer verify.
        record.versions.retain(|v| {
            let live = v.retire_at.is_none_or(|r| now < r);
            if !live {
                index.remove(&v.digest);
            }
            live
        });
        record.versions.push(Version {
            digest,
            retire_at: None,
        });
        record.info.rotated_at = now;
        index.insert(digest, id.to_owned());
        Ok((record.snapshot(now), value))
    }

    /// Revokes a secret at once (all its values). Returns whether it existed.
    pub fn revoke(&self, id: &str) -> bool {
        let mut inner = self.write();
        match inner.secrets.remove(id) {
            Some(record) => {
                for v in record.versions {
                    inner.index.remove(&v.digest);
                }
                true
            }
            None => false,
        }
    }

    /// The info of a live (not expired) secret.
    pub fn get(&self, id: &str) -> Option<SecretInfo> {
        let now = SystemTime::now();
        let inner = self.read();
        inner
            .secrets
            .get(id)
            .filter(|r| !r.expired(now))
            .map(|r| r.snapshot(now))
    }

    /// The live secrets (expired ones are left out).
    pub fn list(&self) -> Vec<SecretInfo> {
        let now = SystemTime::now();
        let inner = self.read();
        let mut v: Vec<_> = inner
            .secrets
            .values()
            .filter(|r| !r.expired(now))
            .map(|r| r.snapshot(now))
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// The expired secrets still kept (they never authenticate).
    pub fn list_expired(&self) -> Vec<SecretInfo> {
        let now = SystemTime::now();
        let inner = self.read();
        inner
            .secrets
            .values()
            .filter(|r| r.expired(now))
            .map(|r| r.snapshot(now))
            .collect()
    }

    /// Live secrets whose current value is older than the configured
    /// `rotation_interval` (or `interval` when given).
    pub fn due_for_rotation(&self, interval: Option<Duration>) -> Vec<SecretInfo> {
        let now = SystemTime::now();
        let inner = self.read();
        let Some(interval) = interval.or_else(|| {
            inner
                .config
                .rotation_interval
                .map(|h| Duration::from_secs(h.saturating_mul(3600)))
        }) else {
            return Vec::new();
        };
        inner
            .secrets
            .values()
            .filter(|r| !r.expired(now))
            .filter(|r| {
                now.duration_since(r.info.rotated_at)
                    .is_ok_and(|age| age >= interval)
            })
            .map(|r| r.snapshot(now))
            .collect()
    }

    /// Drops retired versions and, unless `keep_expired` is set, expired secrets.
    /// Returns how many secrets were dropped.
    pub fn purge_expired(&self) -> usize {
        let now = SystemTime::now();
        let mut inner = self.write();
        let keep_expired = inner.config.keep_expired;
        let Inner { secrets, index, .. } = &mut *inner;
        let mut dropped = 0;
        secrets.retain(|_, r| {
            r.versions.retain(|v| {
                let live = v.retire_at.is_none_or(|t| now < t);
                if !live {
                    index.remove(&v.digest);
                }
                live
            });
            if r.expired(now) && !keep_expired {
                for v in &r.versions {
                    index.remove(&v.digest);
                }
                dropped += 1;
                false
            } else {
                true
            }
        });
        dropped
    }

    /// Checks a presented value: the matching live secret of `kind`, if any.
    pub fn verify(&self, kind: SecretKind, presented: &str) -> Option<SecretMatch> {
        self.verify_digest(kind, &sha256(presented.as_bytes()))
    }

    /// Checks the SHA-256 of a presented value (see [`SecretStore::verify`]).
    ///
    /// The lookup is an index keyed by the digest: its timing depends only on the digest
    /// of what the caller sent, which reveals nothing about stored values (they are
    /// high-entropy, and SHA-256 is preimage resistant); the final check compares the
    /// digests in constant time.
    pub fn verify_digest(&self, kind: SecretKind, digest: &[u8; 32]) -> Option<SecretMatch> {
        let now = SystemTime::now();
        let inner = self.read();
        let id = inner.index.get(digest)?;
        let record = inner.secrets.get(id)?;
        if record.info.kind != kind || record.expired(now) {
            return None;
        }
        let version = record.versions.iter().find(|v| ct_eq(&v.digest, digest))?;
        if version.retire_at.is_some_and(|r| now >= r) {
            return None;
        }
        Some(SecretMatch {
            id: record.info.id.clone(),
            name: record.info.name.clone(),
            principal: record.info.principal.clone(),
            scopes: record.info.scopes.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_generate_verify_expire() {
        let store = SecretStore::new();
        let (info, key) = store.generate_api_key("a").unwrap();
        assert!(key_policy::check_api_key(key.expose()).is_ok());
        let m = store.verify(SecretKind::ApiKey, key.expose()).unwrap();
        assert_eq!(m.id, info.id);
        assert_eq!(m.principal, "a");
        // wrong kind
        assert!(
            store
                .verify(SecretKind::BearerToken, key.expose())
                .is_none()
        );
        // expired secrets never authenticate and are not listed
        let past = SystemTime::now() - Duration::from_secs(1);
        let (old, old_key) = store
            .generate(NewSecret::api_key("old").expires_at(past))
            .unwrap();
        assert!(store.verify(SecretKind::ApiKey, old_key.expose()).is_none());
        assert!(store.get(&old.id).is_none());
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.list_expired().len(), 1);
        assert_eq!(store.purge_expired(), 1);
        assert!(store.list_expired().is_empty());
        assert!(format!("{store:?}").contains("secrets"));
    }

    #[test]
    fn rotation_overlap() {
        let store = SecretStore::new();
        let (info, t1) = store.generate_bearer_token("t").unwrap();
        let (i2, t2) = store.rotate(&info.id, Duration::from_secs(600)).unwrap();
        assert_eq!(i2.live_versions, 2);
        assert!(store.verify(SecretKind::BearerToken, t1.expose()).is_some());
        assert!(store.verify(SecretKind::BearerToken, t2.expose()).is_some());
        // a zero overlap retires all previous values at once
        let (i3, t3) = store.rotate(&info.id, Duration::ZERO).unwrap();
        assert_eq!(i3.live_versions, 1);
        assert!(store.verify(SecretKind::BearerToken, t1.expose()).is_none());
        assert!(store.verify(SecretKind::BearerToken, t2.expose()).is_none());
        assert!(store.verify(SecretKind::BearerToken, t3.expose()).is_some());
        assert!(store.revoke(&info.id));
        assert!(store.verify(SecretKind::BearerToken, t3.expose()).is_none());
        assert_eq!(
            store.rotate(&info.id, Duration::ZERO).unwrap_err(),
            StoreError::NotFound(info.id.clone())
        );
    }

    #[test]
    fn policy_and_duplicates() {
        let store = SecretStore::new();
        assert_eq!(
            store
                .insert(NewSecret::api_key("w").value("short"))
                .unwrap_err(),
            StoreError::Policy(KeyPolicyViolation::TooShort { min: 16 })
        );
        store
            .insert(NewSecret::api_key("k").value("Abc123!@#Xyz789!@#"))
            .unwrap();
        let e = store
            .insert(NewSecret::api_key("k2").value("Abc123!@#Xyz789!@#"))
            .unwrap_err();
        assert_eq!(e, StoreError::Duplicate);
        assert!(!e.to_string().contains("Abc123"));
        assert_eq!(
            store.insert(NewSecret::api_key(" ")).unwrap_err(),
            StoreError::EmptyName
        );
    }

    #[test]
    fn config_max_age_and_rotation_due() {
        let store = SecretStore::with_config(SecretStoreConfig {
            rotation_interval: Some(168),
            max_age: Some(30),
            keep_expired: true,
        });
        let info = store.insert(NewSecret::api_key("x")).unwrap();
        let exp = info.expires_at.unwrap();
        let days = exp.duration_since(info.created_at).unwrap().as_secs() / 86_400;
        assert_eq!(days, 30);
        assert!(store.due_for_rotation(None).is_empty());
        assert_eq!(store.due_for_rotation(Some(Duration::ZERO)).len(), 1);
        let cfg: SecretStoreConfig =
            serde_json::from_str(r#"{"rotation_interval":168,"max_age":30,"keep_expired":true}"#)
                .unwrap();
        assert_eq!(cfg.max_age, Some(30));
    }
}
